// SPDX-License-Identifier: AGPL-3.0-or-later
#include "mosquitto.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <stdexcept>
#include <thread>
#include <utility>

namespace reflow_test {
namespace {

// The first port of the kernel's ephemeral range (ip_local_port_range), 32768 by default.
int ephemeral_port_floor() {
  std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
  int floor = 0;
  if (range >> floor && floor > 1024) return floor;
  return 32768;
}

bool can_bind(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

bool accepts_connections(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

int free_loopback_port() {
  // Below the ephemeral range, from which the kernel also takes every outgoing connection's
  // source port: a broker stopped and started again on its port must find it free, and any
  // client of a test running in parallel could take an ephemeral one meanwhile (CI saw the
  // restarted Mosquitto exit with "Address already in use").
  const int floor = ephemeral_port_floor();
  const int first = floor > 11000 ? 10000 : 1024;
  std::random_device seed;
  std::mt19937 rng(seed());
  std::uniform_int_distribution<int> pick(first, floor - 1);
  for (int attempt = 0; attempt < 1000; ++attempt)
    if (const int port = pick(rng); can_bind(port)) return port;
  throw std::runtime_error("no free loopback port below the ephemeral range");
}

std::string mosquitto_binary() {
  const char* env = std::getenv("REFLOW_MOSQUITTO");
  return env && *env ? env : "/usr/sbin/mosquitto";
}

MosquittoProcess::MosquittoProcess(std::filesystem::path work_dir) : m_dir(std::move(work_dir)) {}

MosquittoProcess::~MosquittoProcess() {
  if (m_pid > 0) {
    ::kill(m_pid, SIGKILL);
    ::waitpid(m_pid, nullptr, 0);
  }
}

void MosquittoProcess::start() {
  if (m_pid > 0) return;
  if (m_port == 0) m_port = free_loopback_port();
  auto conf = m_dir / "mosquitto.conf";
  {
    std::ofstream out(conf);
    out << "listener " << m_port << " 127.0.0.1\n"
        << "allow_anonymous true\n"
        << "persistence false\n"
        << "log_dest stderr\n"
        << "log_type error\nlog_type warning\nlog_type notice\n"
        // Mosquitto drops QoS 1 messages beyond 1000 queued per client by default; tests want none
        // dropped.
        << "max_queued_messages 0\n"
        << m_extra_config;
    // As root, Mosquitto would switch to the `mosquitto` user, which cannot read the files
    // created in this test's private directory.
    if (m_reads_files && ::geteuid() == 0) out << "user root\n";
  }
  std::string binary = mosquitto_binary();
  if (::access(binary.c_str(), X_OK) != 0)
    throw std::runtime_error(binary + " not found: apt-get install mosquitto");
  pid_t pid = ::fork();
  if (pid == 0) {
    // The broker drops root privileges before it logs, so the log file is opened here.
    int log_fd = ::open((m_dir / "mosquitto.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log_fd >= 0) {
      ::dup2(log_fd, 1);
      ::dup2(log_fd, 2);
    }
    ::execl(binary.c_str(), binary.c_str(), "-c", conf.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  m_pid = pid;
  // Wait for the listener: a condition with a bound, not a timing assumption.
  for (int i = 0; i < 1000; ++i) {
    if (accepts_connections(m_port)) return;
    int status = 0;
    if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
      m_pid = -1;
      throw std::runtime_error("mosquitto exited at start; see " +
                               (m_dir / "mosquitto.log").string());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error("mosquitto did not accept connections on port " +
                           std::to_string(m_port));
}

void MosquittoProcess::enable_tls(const std::filesystem::path& ca,
                                  const std::filesystem::path& cert,
                                  const std::filesystem::path& key) {
  add_config("cafile " + ca.string());
  add_config("certfile " + cert.string());
  add_config("keyfile " + key.string());
  m_reads_files = true;
}

void MosquittoProcess::require_password(const std::string& user, const std::string& password) {
  const auto file = m_dir / "passwords";
  const auto tool = std::filesystem::path(mosquitto_binary()).parent_path().parent_path() / "bin" /
                    "mosquitto_passwd";
  const std::string binary =
      ::access(tool.c_str(), X_OK) == 0 ? tool.string() : std::string("/usr/bin/mosquitto_passwd");
  const pid_t pid = ::fork();
  if (pid == 0) {
    int null_fd = ::open("/dev/null", O_WRONLY);
    if (null_fd >= 0) ::dup2(null_fd, 1);
    ::execl(binary.c_str(), binary.c_str(), "-c", "-b", file.c_str(), user.c_str(),
            password.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0)
    throw std::runtime_error(binary + " failed to write " + file.string());
  if (std::exchange(m_password_required, true)) return;
  add_config("allow_anonymous false");
  add_config("password_file " + file.string());
  m_reads_files = true;
}

void MosquittoProcess::stop() {
  if (m_pid <= 0) return;
  ::kill(m_pid, SIGTERM);
  ::waitpid(m_pid, nullptr, 0);
  m_pid = -1;
}

}  // namespace reflow_test
