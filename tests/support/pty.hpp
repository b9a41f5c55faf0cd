// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

namespace reflow_test {

/// A real pseudo-terminal pair (openpty(3)) standing in for a serial device: the code under test
/// opens name(), the slave side (/dev/pts/N); the test plays the device on the master side.
/// ok() is false when openpty failed. Owns both descriptors; one thread.
class Pty {
 public:
  /// The slave's line settings from the start: as openpty leaves them (canonical, echo) for code
  /// that sets its own (agent::SerialPort), or cfmakeraw(3) for a stand-in of a device whose
  /// reader sets none (a hidraw scale) or that sends binary frames (a board).
  enum class Termios { as_opened, raw };

  explicit Pty(Termios termios = Termios::as_opened);
  ~Pty();
  Pty(const Pty&) = delete;
  Pty& operator=(const Pty&) = delete;

  [[nodiscard]] bool ok() const { return m_master >= 0; }
  /// The slave's path, for the code under test to open.
  [[nodiscard]] const std::string& name() const { return m_name; }
  [[nodiscard]] int master() const { return m_master; }
  [[nodiscard]] int slave() const { return m_slave; }

  /// Writes all of `bytes` on the master side: what the device sends. False when a write fails
  /// (the master is closed, or the slave side is gone).
  bool write(std::string_view bytes);

  /// What the code under test wrote: waits up to `wait` for the master side to be readable and
  /// reads at most 256 bytes; "" when nothing came.
  std::string read_some(std::chrono::milliseconds wait = std::chrono::milliseconds(100));

  /// Reads until `want` bytes came or `bound` passed (a generous bound for a loaded machine, not
  /// a timing assertion); returns what came.
  std::string read(std::size_t want, std::chrono::steady_clock::duration bound);

  /// Waits up to `bound` until `text` came; consumes what came up to and including it, keeping
  /// the rest for the next call. False when it did not come.
  bool expect(std::string_view text, std::chrono::steady_clock::duration bound);

  /// The device keeps the master side only: the code under test holds its own slave descriptor.
  void close_slave();
  /// Unplugs the device: the slave side reads end of file or an error from then on.
  void close_master();
  void close() {
    close_master();
    close_slave();
  }

 private:
  int m_master = -1;
  int m_slave = -1;
  std::string m_name;
  std::string m_input;  ///< read by expect() beyond what it looked for
};

}  // namespace reflow_test
