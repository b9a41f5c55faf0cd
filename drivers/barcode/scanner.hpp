// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <regex>
#include <stop_token>
#include <string>
#include <vector>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/result.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/drivers/serial_port.hpp>

namespace agent::barcode {

/// How the scanner talks to the Pi (docs/reference/drivers.md §5).
enum class ScannerMode {
  evdev,  ///< USB HID keyboard emulation, /dev/input/by-id/…-event-kbd (libevdev, exclusive grab)
  serial,  ///< USB CDC-ACM or RS-232, /dev/serial/by-id/…, codes end with CR, LF or CRLF
  hidraw,  ///< "simple COM" HID reports on /dev/hidrawN (first byte length, data NUL-padded)
};

/// A configured label pattern: scans are classified by the first pattern that matches (ECMAScript
/// regex, whole code). `WEB+SPOOLMAN:S-<id>` and `urn:<org>:batch:<id>` are the usual ones.
struct CodePattern {
  std::string name;    ///< "batch", "spool", "location" …
  std::string source;  ///< the regex as configured, for messages
  std::regex regex;
};

/// The scanner part of a config (the barcode kind's keys; the station's with a `scanner_` prefix).
struct ScannerConfig {
  std::string path;  ///< device path, a stable by-id name
  ScannerMode mode = ScannerMode::evdev;
  bool grab = true;                                  ///< evdev: exclusive grab (EVIOCGRAB)
  std::chrono::milliseconds inter_key_timeout{200};  ///< evdev: a pause this long drops a fragment
  SerialSettings serial;                             ///< serial mode
  std::vector<CodePattern> patterns;                 ///< empty: every code is of class "code"
};

/// One complete scan.
struct Scan {
  std::string code;   ///< the decoded text, terminator removed
  std::string label;  ///< name of the first matching pattern; "" when none matched
  std::int64_t unix_ms = 0;
  std::chrono::steady_clock::time_point at{};  ///< Env steady clock, when the terminator arrived
};

/// What a scanner reader reports about itself (merged into the owning driver's health).
struct ScannerHealth {
  std::string state;  ///< "connected", "waiting for device" …
  std::uint64_t scans = 0;
  std::uint64_t fragments = 0;  ///< partial codes dropped by the inter-key timeout
  std::uint64_t unmatched = 0;  ///< codes no pattern matched (still reported to the callback)
  std::uint64_t malformed = 0;  ///< unknown keys, overlong lines, bad hidraw reports (code dropped)
  std::uint64_t errors = 0;     ///< open/read failures (unplugged …)
  std::string last_error;
  std::int64_t last_error_unix_ms = 0;  ///< when last_error happened; 0 when none
};

/// Runs one scanner: opens the device, decodes, reconnects after unplug (backoff 1 s … 30 s, on
/// the Env clock) and calls `on_scan` from its own thread for every complete code. Used by the
/// `barcode` kind (which logs scans) and by the `station` kind. Thread-safe health().
class ScannerReader {
 public:
  virtual ~ScannerReader() = default;
  /// Starts the reader thread. Errors: none at start for a missing device (it waits for it).
  virtual Status start(std::function<void(const Scan&)> on_scan) = 0;
  /// Stops and joins; no callback runs after it returns. Idempotent.
  virtual void stop() = 0;
  virtual ScannerHealth health() const = 0;
};

/// Keys of the scanner part, named `prefix + key` ("" for the barcode kind, "scanner_" for the
/// station; with the prefix, `path` is spelled `scanner` alone). Documented in
/// drivers/barcode/README.md.
const std::vector<DriverKeyInfo>& scanner_keys(std::string_view prefix);

/// Reads and validates the scanner part. Errors: invalid_config naming file, line and key (a bad
/// regex names the pattern and std::regex's reason).
Result<ScannerConfig> parse_scanner_config(const DriverTable& table, std::string_view prefix);

/// The real reader (libevdev, SerialPort or hidraw by mode). `log` gets one line per scan at
/// debug, and state changes at warning/info.
std::unique_ptr<ScannerReader> make_scanner_reader(ScannerConfig config, Env& env, Logger& log,
                                                   std::string log_name);

}  // namespace agent::barcode
