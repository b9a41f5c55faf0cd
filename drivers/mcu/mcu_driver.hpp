// SPDX-License-Identifier: AGPL-3.0-or-later
// The `mcu` driver: a machine-node board (firmware/, issue 18) on a serial port, speaking the
// firmware link (docs/firmware-link.md, "LINK §N") through the firmware's own codec
// (reflow_fw_core).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <reflow/device/driver.hpp>
#include <reflow/drivers/badge.hpp>
#include <reflow/fw/messages.hpp>

namespace agent::mcu {

/// The validated `[[driver]]` table of kind "mcu" (README.md documents every key).
struct McuConfig {
  std::string name;
  std::string path;          ///< the serial device (a /dev/serial/by-id/ name, /dev/ttyAMA0 …)
  std::string resource;      ///< the machine: `use` events' resourceInventoriedAs
  std::string electricity;   ///< the metered supply for `consume`; empty: no consume events
  reflow::fw::Config board;  ///< thresholds and calibration sent to the board (LINK §4.2)
  /// [driver.badge]: the board's own reader ("mcu"), an RDM6300 ("serial") or a keyboard-mode USB
  /// reader ("evdev"); none: badges are
  /// counted only and sessions carry no member.
  std::optional<BadgeConfig> badge;
};

const std::vector<DriverKeyInfo>& mcu_keys();

/// Reads and validates the table; the board config is checked as the board would
/// (reflow::fw::check_config) and between keys (off ≤ on, busy 0 or ≥ on). Errors: invalid_config
/// naming file, line and key.
Result<McuConfig> parse_mcu_config(const DriverConfig& config);

/// The driver. Its state directory keeps the cursor (the board's boot and the last seq whose
/// events are committed), so that a restart neither repeats nor loses an event.
std::unique_ptr<Driver> make_mcu_driver(McuConfig config, Env& env, Logger& log);

}  // namespace agent::mcu
