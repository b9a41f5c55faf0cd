// SPDX-License-Identifier: AGPL-3.0-or-later
// What reflow-bench (the agent) and reflow-ingest-bench (the node) share: a Mosquitto tuned for
// measuring, child processes and their /proc figures, the work directory, a publish window, the
// event fields and the figures table. Benchmarks only; not part of any product target.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <mqtt/async_client.h>
#include <nlohmann/json.hpp>

namespace reflow_bench {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

inline constexpr auto k_poll = 20ms;

// What ends a run early; main prints it, the destructors clean up.
struct BenchError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// SIGINT/SIGTERM set a flag that check_interrupted() turns into a BenchError, so that destructors
// stop the children; SIGPIPE is ignored. Also makes stdout line-buffered, so progress lines show
// up when piped to a file.
void install_signal_handlers();
void check_interrupted();

inline double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Polls `done` every k_poll until it holds; false after `bound`. Throws when interrupted.
template <class Condition>
bool wait_for(Condition&& done, std::chrono::milliseconds bound) {
  const auto deadline = Clock::now() + bound;
  for (;;) {
    if (done()) return true;
    check_interrupted();
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(k_poll);
  }
}

// ---- processes and /proc ----

// The directory of the running benchmark binary (bin/, where the daemons are built too).
fs::path self_directory();

// One "Key:   123 kB" line of /proc/PID/status, in bytes.
std::optional<std::uint64_t> proc_status_bytes(pid_t pid, std::string_view key);

// write_bytes of /proc/PID/io: bytes this process caused to be sent to the storage layer.
std::uint64_t proc_write_bytes(pid_t pid);

// Resets VmHWM to the current RSS (proc(5), clear_refs value 5).
void reset_peak_rss(pid_t pid);

// VmHWM of /proc/PID/status, in bytes.
std::uint64_t peak_rss(pid_t pid);

// Memory of /proc/PID/smaps_rollup (proc(5), Linux 4.14+), in bytes: `pss` is the proportional set
// size (each mapped page divided by the processes sharing it), `private_bytes` the pages only
// this process maps (Private_Clean + Private_Dirty), whether anonymous or file-backed. Zero when
// the file cannot be read.
struct SmapsRollup {
  std::uint64_t pss = 0;
  std::uint64_t private_bytes = 0;
};
SmapsRollup proc_smaps_rollup(pid_t pid);

// fork + exec with stdout and stderr appended to `log_file`.
pid_t spawn(const std::vector<std::string>& argv, const fs::path& log_file);

// spawn and wait; the exit status, or -1 when killed by a signal.
int run_and_wait(const std::vector<std::string>& argv, const fs::path& log_file);

// The last `lines` lines of `file`, indented, for error messages.
std::string tail_of(const fs::path& file, std::size_t lines);

// A daemon the benchmark runs as a child (`reflow-agent run`, `reflow-ingest run`): whether it
// still runs, its memory figures, and the clean SIGTERM stop of the CLI contract. The destructor
// SIGKILLs a daemon that still runs. `what` names it in errors ("the agent", "reflow-ingest").
class BenchDaemon {
 public:
  BenchDaemon(std::string what, fs::path log_file)
      : m_what(std::move(what)), m_log_file(std::move(log_file)) {}
  ~BenchDaemon();
  BenchDaemon(const BenchDaemon&) = delete;
  BenchDaemon& operator=(const BenchDaemon&) = delete;

  pid_t pid() const { return m_pid; }
  const fs::path& log_file() const { return m_log_file; }

  // Reaps the child once it exited; false from then on.
  bool alive();

  // VmHWM has no split into heap and mapped libraries, so the anonymous part (heap, stacks) is
  // sampled at each poll: a lower bound of its true peak.
  void sample_anon();
  void reset_peaks();
  std::uint64_t anon_peak() const { return m_anon_peak; }

  // SIGTERM and wait (the CLI contract: exit 0 within 5 s; 10 s allowed here). Returns the
  // seconds it took; throws when it exits otherwise or not at all.
  double terminate();

  // VmRSS, RssAnon and RssFile once ready, before any event (record_idle_memory()).
  std::uint64_t idle_rss = 0, idle_anon = 0, idle_file = 0;

 protected:
  // Spawns `argv` with its output in log_file().
  void start(const std::vector<std::string>& argv);
  // Throws "WHAT did not get ready" with the log's tail unless `ready` holds within 30 s.
  template <typename Condition>
  void wait_ready(Condition&& ready) {
    if (!wait_for([&] { return !alive() || ready(); }, std::chrono::seconds(30)) || !alive())
      not_ready();
  }
  void record_idle_memory();

 private:
  [[noreturn]] void not_ready() const;

  std::string m_what;
  fs::path m_log_file;
  pid_t m_pid = -1;
  std::uint64_t m_anon_peak = 0;
};

// The run's working directory under $TMPDIR, named PREFIX-XXXXXX: removed with its content
// unless `keep`.
class WorkDir {
 public:
  WorkDir(std::string_view prefix, bool keep);
  ~WorkDir();
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
  const fs::path& path() const { return m_path; }

 private:
  fs::path m_path;
  bool m_keep;
};

// A Mosquitto for the benchmarks on a free loopback port, reused across stop()/start() to play a
// broker outage. Not reflow_test::MosquittoProcess: that one logs every packet (log_type all),
// which costs the broker more than the traffic measured here, and keeps Mosquitto's default of
// 1000 queued messages per subscriber, above which it drops QoS 1 messages to a subscriber that
// falls behind for a moment; the publisher then waits and republishes, and the figures measure
// that stall instead of the daemon.
class Broker {
 public:
  explicit Broker(fs::path dir);
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // Returns once the broker accepts TCP connections (bounded: 10 s).
  void start();
  void stop();

  int port() const { return m_port; }
  std::string url() const;       // mqtt://127.0.0.1:PORT, for the daemons' configs
  std::string paho_url() const;  // tcp://127.0.0.1:PORT, for Paho clients

 private:
  bool accepts_connections() const;

  fs::path m_dir;
  int m_port;
  pid_t m_pid = -1;
};

// ---- MQTT ----

// Counts delivery-token completions (PUBACKs) and keeps at most `window` publishes in flight.
// Pass it as the action listener of each publish after acquire(). Thread-safe.
class Window final : public mqtt::iaction_listener {
 public:
  explicit Window(std::size_t window) : m_window(window) {}

  void acquire();
  // Waits until `count` publishes completed; false after `bound`.
  bool wait_completed(std::uint64_t count, std::chrono::milliseconds bound);
  std::uint64_t failed() const;

  void on_success(const mqtt::token&) override { finish(false); }
  void on_failure(const mqtt::token&) override { finish(true); }

 private:
  void finish(bool failed);

  std::size_t m_window;
  mutable std::mutex m_mutex;
  std::condition_variable m_changed;
  std::size_t m_inflight = 0;
  std::uint64_t m_completed = 0;
  std::uint64_t m_failed = 0;
};

// ---- the events ----

// The producer fields of the sim driver's `consume` event: the size and shape of a real event.
class EventMaker {
 public:
  EventMaker();
  const nlohmann::ordered_json& fields(std::int64_t job);

 private:
  std::string m_when;
  nlohmann::ordered_json m_fields;
};

// ---- the report ----

struct Row {
  std::string figure;
  std::string value;
  std::string target;
  std::string verdict;  // PASS, MISS or "" for figures without a target
};

std::string mib(std::uint64_t bytes);
Row check(std::string figure, std::string value, std::string target, bool pass);
void print_table(const std::vector<Row>& rows);

}  // namespace reflow_bench
