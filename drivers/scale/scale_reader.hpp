// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/result.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/drivers/serial_port.hpp>

namespace agent::scale {

/// The scale's protocol (docs/reference/drivers.md §6).
enum class Protocol {
  and_standard,  ///< A&D `ST,+00123.45  g`
  st_gs,         ///< generic indicators `ST,GS,+  1.234,kg`
  mt_sics,       ///< Mettler Toledo MT-SICS; the reader polls with `SI` (or `S`)
  ohaus,         ///< `     192.21 g  `, `?` when unstable
  toledo,        ///< Toledo continuous, STX + status words + 6+6 digits + CR [+ checksum]
  hid,           ///< USB HID POS scale (Dymo M5/M10/M25 …) on /dev/hidrawN, 6-byte reports
};

/// One parsed frame. Only `stable` readings with status `ok` ever become a weight.
struct Reading {
  enum class Status { ok, motion, overload, underload, error };
  Status status = Status::error;
  double kilograms = 0;  ///< the value converted to kilograms (gram, pound, ounce converted)
  bool net = false;      ///< the scale reported a net (tared) value
};

/// The scale part of a config (the scale kind's keys; the station's with a `scale_` prefix).
struct ScaleConfig {
  std::string path;
  Protocol protocol = Protocol::st_gs;
  SerialSettings serial;
  int stable_readings = 3;  ///< consecutive stable frames with the same value that make a weight
  std::chrono::milliseconds poll_interval{500};  ///< MT-SICS: how often `SI` is sent
  double resolution_kg = 0;  ///< values within this count as "the same" (0: exact)
};

/// A stable weight: `stable_readings` consecutive stable frames, the first of a new value (the
/// reader reports a weight again only after the value changed or went through motion/zero).
struct Weight {
  double kilograms = 0;
  bool net = false;
  std::int64_t unix_ms = 0;
  std::chrono::steady_clock::time_point at{};  ///< Env steady clock
};

struct ScaleHealth {
  std::string state;  ///< "connected", "waiting for device" …
  std::uint64_t weights = 0;
  std::uint64_t frames = 0;
  std::uint64_t malformed = 0;  ///< garbage frames, bad checksums: logged (once per burst), skipped
  std::uint64_t overloads = 0;  ///< overload and underload frames
  std::uint64_t errors = 0;     ///< open/read failures
  std::string last_error;
  std::int64_t last_error_unix_ms = 0;  ///< when last_error happened; 0 when none
  double last_kilograms = 0;            ///< the last stable weight reported
};

/// Runs one scale: opens it, polls if the protocol needs it, parses frames, decides stability,
/// reconnects after unplug (backoff 1 s … 30 s, Env clock), and calls `on_weight` from its own
/// thread for each stable weight (including stable zero: the station needs to see the pan
/// emptied). Thread-safe health().
class ScaleReader {
 public:
  virtual ~ScaleReader() = default;
  virtual Status start(std::function<void(const Weight&)> on_weight) = 0;
  virtual void stop() = 0;
  virtual ScaleHealth health() const = 0;
};

/// Keys of the scale part, named `prefix + key` ("" for the scale kind, "scale_" for the station;
/// with the prefix, `path` is spelled `scale` alone). Documented in drivers/scale/README.md.
const std::vector<DriverKeyInfo>& scale_keys(std::string_view prefix);

/// Reads and validates the scale part. Errors: invalid_config naming file, line and key.
Result<ScaleConfig> parse_scale_config(const DriverTable& table, std::string_view prefix);

/// The real reader (SerialPort, or hidraw for Protocol::hid).
std::unique_ptr<ScaleReader> make_scale_reader(ScaleConfig config, Env& env, Logger& log,
                                               std::string log_name);

}  // namespace agent::scale
