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
  /// From the next start() on, the listener speaks TLS with the server certificate `cert` and its
  /// `key` (PEM), clients' certificates checked against `ca` when they send one.
  void enable_tls(const std::filesystem::path& ca, const std::filesystem::path& cert,
                  const std::filesystem::path& key);
  /// From the next start() on, only `user` with `password` may connect; called again, it
  /// replaces the user and password (a rotated password) (a password_file made
  /// with mosquitto_passwd, beside the mosquitto binary). Throws std::runtime_error when
  /// mosquitto_passwd fails.
  void require_password(const std::string& user, const std::string& password);
  bool running() const { return m_pid > 0; }

  int port() const { return m_port; }
  std::string url() const { return "mqtt://127.0.0.1:" + std::to_string(m_port); }

 private:
  std::filesystem::path m_dir;
  int m_port = 0;
  pid_t m_pid = -1;
  std::string m_extra_config;
  bool m_password_required = false;  ///< the password_file lines are in the config
  bool m_reads_files = false;        ///< as root, keep root to read the 0600 files in m_dir
};

/// A TCP port on 127.0.0.1 that is free now (bound and released), chosen at random below the
/// kernel's ephemeral range so that no outgoing connection takes it while a test's broker is
/// stopped and started again on it.
int free_loopback_port();

/// True when something accepts TCP connections on 127.0.0.1:`port` now (a connect that succeeds).
bool accepts_connections(int port);

/// The mosquitto binary: $REFLOW_MOSQUITTO, else /usr/sbin/mosquitto.
std::string mosquitto_binary();

}  // namespace reflow_test
