// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>

#include <reflow/core/result.hpp>
#include <reflow/device/driver_table.hpp>

namespace agent {

/// Line settings of a serial device (termios). Scales default to 9600 8N1; CDC-ACM barcode
/// scanners ignore the baud rate.
struct SerialSettings {
  enum class Parity { none, even, odd };
  int baud = 9600;    ///< one of the POSIX rates: 1200 … 230400
  int data_bits = 8;  ///< 7 or 8
  Parity parity = Parity::none;
  int stop_bits = 1;  ///< 1 or 2
};

/// Reads a serial device's line settings from a `[[driver]]` table, the keys named
/// `<prefix>baud` (one of 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400; default
/// 9600), `<prefix>data_bits` (7 or 8; default 8), `<prefix>parity` ("none", "even" or "odd";
/// default "none") and `<prefix>stop_bits` (1 or 2; default 1). The scale and barcode drivers
/// share it, with prefix "" or "scale_" / "scanner_". Errors: invalid_config naming file, line
/// and key.
Result<SerialSettings> read_serial_settings(const DriverTable& table, std::string_view prefix);

/// Parses "none" / "even" / "odd". Errors: invalid_argument naming the value and the choices.
Result<SerialSettings::Parity> parse_parity(std::string_view text);

/// An open serial device (a USB-serial adapter, a CDC-ACM scanner, or in tests a pseudo-terminal)
/// in raw mode (cfmakeraw, no echo, no flow control), with the settings applied. One thread uses an
/// instance; the file descriptor is closed when it is destroyed.
class SerialPort {
 public:
  /// Opens `path` (prefer a stable /dev/serial/by-id/ name: the ttyUSB number changes between
  /// boots) with O_NOCTTY | O_NONBLOCK | O_CLOEXEC and applies `settings`. Errors:
  /// device_unavailable (no such device, or it vanished: ENOENT, ENODEV, ENXIO, EACCES with the
  /// hint to join the `dialout` group), invalid_argument (a baud rate termios does not have), io.
  static Result<std::unique_ptr<SerialPort>> open(const std::filesystem::path& path,
                                                  const SerialSettings& settings);

  ~SerialPort();
  SerialPort(const SerialPort&) = delete;
  SerialPort& operator=(const SerialPort&) = delete;

  /// Waits until bytes arrive, `deadline` (steady clock, real time) passes or `stop` is requested
  /// (checked at least every 100 ms), then reads what is there into `buffer`. Returns the number of
  /// bytes read: 0 on deadline or stop. Errors: device_unavailable when the device went away (EOF,
  /// POLLHUP, EIO, ENODEV: a USB cable pulled, a pty closed); the caller closes and reopens.
  Result<std::size_t> read(std::span<std::byte> buffer,
                           std::chrono::steady_clock::time_point deadline, std::stop_token stop);

  /// Writes all of `bytes` (a scale command such as "SI\r\n"). Errors: device_unavailable, io.
  Status write(std::string_view bytes);

  const std::filesystem::path& path() const { return m_path; }

 private:
  SerialPort(int fd, std::filesystem::path path) : m_fd(fd), m_path(std::move(path)) {}
  int m_fd = -1;
  std::filesystem::path m_path;
};

}  // namespace agent
