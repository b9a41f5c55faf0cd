// SPDX-License-Identifier: AGPL-3.0-or-later
#include "http_replay.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "files.hpp"
#include "mosquitto.hpp"

#ifndef REFLOW_TEST_SUPPORT_DIR
#error "REFLOW_TEST_SUPPORT_DIR must name tests/support (set in tests/support/CMakeLists.txt)"
#endif

namespace reflow_test {
namespace {

std::string python_binary() {
  const char* env = std::getenv("REFLOW_PYTHON");
  return env && *env ? env : "/usr/bin/python3";
}

// Replaces `file` in one rename, so that the server never reads half of it.
void replace_file(const std::filesystem::path& file, const std::string& text) {
  const auto tmp = file.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) throw std::runtime_error("http_replay: cannot write " + tmp);
  }
  std::filesystem::rename(tmp, file);
}

std::filesystem::path make_control_dir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "http-replay-XXXXXX").string();
  if (!::mkdtemp(pattern.data()))
    throw std::runtime_error("http_replay: cannot create a directory under " +
                             std::filesystem::temp_directory_path().string());
  return pattern;
}

// Starts the server on `port` (0: a free one) and returns its pid and port once it accepts
// connections.
std::pair<int, int> spawn(const std::filesystem::path& dir, int port) {
  const std::string python = python_binary();
  const std::string script = std::string(REFLOW_TEST_SUPPORT_DIR) + "/http_replay.py";
  const std::string dir_arg = dir.string();
  const std::string port_arg = std::to_string(port);
  const std::string log = (dir / "server.log").string();
  const auto port_file = dir / "port";
  std::filesystem::remove(port_file);
  if (::access(python.c_str(), X_OK) != 0)
    throw std::runtime_error(python + " not found: apt-get install python3");

  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("http_replay: fork failed");
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec. The server dies with the test.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log_fd >= 0) {
      ::dup2(log_fd, 1);
      ::dup2(log_fd, 2);
    }
    ::execl(python.c_str(), python.c_str(), script.c_str(), dir_arg.c_str(), port_arg.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait for the port file and the listener: a condition with a generous bound.
  for (int i = 0; i < 3000; ++i) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid)
      throw std::runtime_error("http_replay: the server exited at start: " + read_text(log));
    if (std::filesystem::exists(port_file)) {
      const int bound = std::atoi(read_text(port_file).c_str());
      if (bound > 0 && accepts_connections(bound)) return {pid, bound};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  throw std::runtime_error("http_replay: the server did not listen within 30 s: " + read_text(log));
}

}  // namespace

HttpReplayServer::HttpReplayServer(const std::filesystem::path& script)
    : m_dir(make_control_dir()) {
  try {
    load(script);
    restart();
  } catch (...) {
    std::filesystem::remove_all(m_dir);
    throw;
  }
}

HttpReplayServer::~HttpReplayServer() {
  stop();
  std::error_code ignored;
  std::filesystem::remove_all(m_dir, ignored);
}

std::string HttpReplayServer::url() const {
  return "http://127.0.0.1:" + std::to_string(m_port);
}

std::vector<nlohmann::json> HttpReplayServer::requests() const {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_text(m_dir / "requests.jsonl"));
  std::string line;
  // A line without its newline is still being written: it belongs to a later call.
  while (std::getline(in, line) && !in.eof())
    out.push_back(nlohmann::json::parse(line));
  return out;
}

void HttpReplayServer::load(const std::filesystem::path& script) {
  m_script = std::filesystem::absolute(script);
  // The counter makes loading the same script again a change too (positions start again).
  const std::string previous = read_text(m_dir / "script");
  const auto newline = previous.find('\n');
  const long generation =
      newline == std::string::npos ? 0 : std::atol(previous.c_str() + newline + 1);
  replace_file(m_dir / "script", m_script.string() + "\n" + std::to_string(generation + 1) + "\n");
}

void HttpReplayServer::stop() {
  if (m_pid <= 0) return;
  ::kill(m_pid, SIGKILL);
  ::waitpid(m_pid, nullptr, 0);
  m_pid = -1;
}

void HttpReplayServer::restart() {
  stop();
  auto [pid, port] = spawn(m_dir, m_port);
  m_pid = pid;
  m_port = port;
}

}  // namespace reflow_test
