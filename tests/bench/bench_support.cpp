// SPDX-License-Identifier: AGPL-3.0-or-later
#include "bench_support.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include <reflow/core/env.hpp>
#include <reflow/core/units.hpp>

#include "mosquitto.hpp"

namespace reflow_bench {

namespace {

std::atomic<bool> g_interrupted{false};

extern "C" void on_signal(int) {
  g_interrupted = true;
}

}  // namespace

void install_signal_handlers() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  struct sigaction action {};
  action.sa_handler = on_signal;
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
}

void check_interrupted() {
  if (g_interrupted) throw BenchError("interrupted by a signal");
}

// ---- processes and /proc ----

fs::path self_directory() {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::current_path() : self.parent_path();
}

std::optional<std::uint64_t> proc_status_bytes(pid_t pid, std::string_view key) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with(key) || line.size() <= key.size() || line[key.size()] != ':') continue;
    std::istringstream fields(line.substr(key.size() + 1));
    std::uint64_t kib = 0;
    if (fields >> kib) return kib * 1024;
  }
  return std::nullopt;
}

std::uint64_t proc_write_bytes(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/io", pid));
  std::string key;
  std::uint64_t value = 0;
  while (in >> key >> value)
    if (key == "write_bytes:") return value;
  throw BenchError(fmt::format("cannot read write_bytes from /proc/{}/io", pid));
}

void reset_peak_rss(pid_t pid) {
  std::ofstream out(fmt::format("/proc/{}/clear_refs", pid));
  out << "5\n";
  out.flush();
  if (!out) throw BenchError(fmt::format("cannot write /proc/{}/clear_refs", pid));
}

std::uint64_t peak_rss(pid_t pid) {
  auto bytes = proc_status_bytes(pid, "VmHWM");
  if (!bytes) throw BenchError(fmt::format("no VmHWM in /proc/{}/status", pid));
  return *bytes;
}

SmapsRollup proc_smaps_rollup(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/smaps_rollup", pid));
  SmapsRollup out;
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  // Lines are "Key:   123 kB"; the first line (the address range) does not parse and is skipped.
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    if (!(fields >> key >> kib >> unit) || unit != "kB") continue;
    if (key == "Pss:") out.pss = kib * 1024;
    if (key == "Private_Clean:" || key == "Private_Dirty:") out.private_bytes += kib * 1024;
  }
  return out;
}

pid_t spawn(const std::vector<std::string>& argv, const fs::path& log_file) {
  pid_t pid = ::fork();
  if (pid < 0) throw BenchError(fmt::format("fork: {}", std::strerror(errno)));
  if (pid == 0) {
    int fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    ::signal(SIGPIPE, SIG_DFL);
    std::vector<char*> args;
    for (const std::string& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  return pid;
}

int run_and_wait(const std::vector<std::string>& argv, const fs::path& log_file) {
  pid_t pid = spawn(argv, log_file);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string tail_of(const fs::path& file, std::size_t lines) {
  std::ifstream in(file);
  std::deque<std::string> last;
  for (std::string line; std::getline(in, line);) {
    last.push_back(std::move(line));
    if (last.size() > lines) last.pop_front();
  }
  std::string text;
  for (const auto& l : last)
    text += "    " + l + "\n";
  return text;
}

BenchDaemon::~BenchDaemon() {
  if (m_pid > 0) {
    ::kill(m_pid, SIGKILL);
    ::waitpid(m_pid, nullptr, 0);
  }
}

void BenchDaemon::start(const std::vector<std::string>& argv) {
  m_pid = spawn(argv, m_log_file);
}

bool BenchDaemon::alive() {
  if (m_pid <= 0) return false;
  int status = 0;
  if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
    m_pid = -1;
    return false;
  }
  return true;
}

void BenchDaemon::not_ready() const {
  throw BenchError(fmt::format("{} did not get ready; its log {}:\n{}", m_what, m_log_file.string(),
                               tail_of(m_log_file, 15)));
}

void BenchDaemon::record_idle_memory() {
  idle_rss = proc_status_bytes(m_pid, "VmRSS").value_or(0);
  idle_anon = proc_status_bytes(m_pid, "RssAnon").value_or(0);
  idle_file = proc_status_bytes(m_pid, "RssFile").value_or(0);
}

void BenchDaemon::sample_anon() {
  if (m_pid > 0)
    m_anon_peak = std::max(m_anon_peak, proc_status_bytes(m_pid, "RssAnon").value_or(0));
}

void BenchDaemon::reset_peaks() {
  reset_peak_rss(m_pid);
  m_anon_peak = 0;
  sample_anon();
}

double BenchDaemon::terminate() {
  const auto started = Clock::now();
  ::kill(m_pid, SIGTERM);
  int status = 0;
  while (Clock::now() - started < 10s) {
    if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
      m_pid = -1;
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw BenchError(
            fmt::format("{} did not exit cleanly on SIGTERM; see {}", m_what, m_log_file.string()));
      return seconds_between(started, Clock::now());
    }
    std::this_thread::sleep_for(k_poll);
  }
  throw BenchError(
      fmt::format("{} did not exit within 10 s of SIGTERM; see {}", m_what, m_log_file.string()));
}

WorkDir::WorkDir(std::string_view prefix, bool keep) : m_keep(keep) {
  std::string pattern = (fs::temp_directory_path() / fmt::format("{}-XXXXXX", prefix)).string();
  if (!::mkdtemp(pattern.data())) throw BenchError("cannot create a temporary directory");
  m_path = pattern;
}

WorkDir::~WorkDir() {
  if (m_keep) {
    fmt::print("kept {}\n", m_path.string());
    return;
  }
  std::error_code ec;
  fs::remove_all(m_path, ec);
}

// ---- the broker ----

Broker::Broker(fs::path dir) : m_dir(std::move(dir)), m_port(reflow_test::free_loopback_port()) {}

Broker::~Broker() {
  if (m_pid > 0) {
    ::kill(m_pid, SIGKILL);
    ::waitpid(m_pid, nullptr, 0);
  }
}

void Broker::start() {
  std::ofstream(m_dir / "mosquitto.conf") << fmt::format(
      "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n"
      "max_queued_messages 0\nlog_dest stderr\nlog_type error\n"
      "log_type warning\nlog_type notice\n",
      m_port);
  m_pid = spawn({reflow_test::mosquitto_binary(), "-c", (m_dir / "mosquitto.conf").string()},
                m_dir / "mosquitto.log");
  const bool up = wait_for(
      [&] {
        int status = 0;
        if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
          m_pid = -1;
          throw BenchError(
              fmt::format("mosquitto exited at start; see {}", (m_dir / "mosquitto.log").string()));
        }
        return accepts_connections();
      },
      10s);
  if (!up) throw BenchError(fmt::format("mosquitto does not listen on port {} after 10 s", m_port));
}

void Broker::stop() {
  if (m_pid <= 0) return;
  ::kill(m_pid, SIGTERM);
  ::waitpid(m_pid, nullptr, 0);
  m_pid = -1;
}

std::string Broker::url() const {
  return fmt::format("mqtt://127.0.0.1:{}", m_port);
}

std::string Broker::paho_url() const {
  return fmt::format("tcp://127.0.0.1:{}", m_port);
}

bool Broker::accepts_connections() const {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(m_port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

// ---- MQTT ----

void Window::acquire() {
  std::unique_lock lock(m_mutex);
  m_changed.wait(lock, [&] { return m_inflight < m_window; });
  ++m_inflight;
}

bool Window::wait_completed(std::uint64_t count, std::chrono::milliseconds bound) {
  std::unique_lock lock(m_mutex);
  return m_changed.wait_for(lock, bound, [&] { return m_completed + m_failed >= count; });
}

std::uint64_t Window::failed() const {
  std::lock_guard lock(m_mutex);
  return m_failed;
}

void Window::finish(bool failed) {
  {
    std::lock_guard lock(m_mutex);
    --m_inflight;
    ++(failed ? m_failed : m_completed);
  }
  m_changed.notify_all();
}

// ---- the events ----

EventMaker::EventMaker() : m_when(agent::format_rfc3339_ms(agent::Env::real().now_unix_ms())) {
  m_fields["action"] = "consume";
  m_fields["resourceInventoriedAs"] = "spool:pla-galaxy-black-01";
  m_fields["resourceQuantity"] = {{"hasNumericalValue", 14.2}, {"hasUnit", "gram"}};
  m_fields["hasPointInTime"] = m_when;
  m_fields["inputOf"] = "";
  m_fields["meta"] = {{"job", 0}, {"file", "benchy.gcode"}, {"method", "simulated"}};
}

const nlohmann::ordered_json& EventMaker::fields(std::int64_t job) {
  m_fields["inputOf"] = fmt::format("sim:printer:job-{}", job);
  m_fields["meta"]["job"] = job;
  return m_fields;
}

// ---- the report ----

std::string mib(std::uint64_t bytes) {
  return fmt::format("{:.2f} MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
}

Row check(std::string figure, std::string value, std::string target, bool pass) {
  return Row{std::move(figure), std::move(value), std::move(target), pass ? "PASS" : "MISS"};
}

void print_table(const std::vector<Row>& rows) {
  std::size_t w0 = 6, w1 = 5, w2 = 6;
  for (const Row& r : rows) {
    w0 = std::max(w0, r.figure.size());
    w1 = std::max(w1, r.value.size());
    w2 = std::max(w2, r.target.size());
  }
  fmt::print("\n{:<{}}  {:>{}}  {:<{}}  {}\n", "figure", w0, "value", w1, "target", w2, "result");
  fmt::print("{}\n", std::string(w0 + w1 + w2 + 12, '-'));
  for (const Row& r : rows)
    fmt::print("{:<{}}  {:>{}}  {:<{}}  {}\n", r.figure, w0, r.value, w1, r.target, w2, r.verdict);
}

}  // namespace reflow_bench
