// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <filesystem>
#include <string>

#include <sys/types.h>

namespace reflow_test {

/// A real Mosquitto broker (Debian `mosquitto`) on a free loopback port, anonymous access, no
/// persistence. start() returns once the broker accepts TCP connections; the destructor kills it.
/// The same port can be reused across stop()/start() to simulate a broker outage.
class MosquittoProcess {
 public:
  explicit MosquittoProcess(std::filesystem::path work_dir);
  ~MosquittoProcess();

  /// Starts the broker (on the port chosen at the first start). Throws std::runtime_error when the
  /// binary is missing or the broker does not accept connections within 10 s.
  void start();
  /// SIGTERM, then waits for exit.
  void stop();
  /// A line added to the broker's configuration from the next start() on, e.g.
  /// "max_inflight_messages 3".
  void add_config(std::string line) { m_extra_config += std::move(line) + "\n"; }
  bool running() const { return m_pid > 0; }

  int port() const { return m_port; }
  std::string url() const { return "mqtt://127.0.0.1:" + std::to_string(m_port); }

 private:
  std::filesystem::path m_dir;
  int m_port = 0;
  pid_t m_pid = -1;
  std::string m_extra_config;
};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
int free_loopback_port();

/// The mosquitto binary: $REFLOW_MOSQUITTO, else /usr/sbin/mosquitto.
std::string mosquitto_binary();

}  // namespace reflow_test
