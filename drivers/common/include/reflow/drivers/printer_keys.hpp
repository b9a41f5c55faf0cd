// SPDX-License-Identifier: AGPL-3.0-or-later
// The `[[driver]]` keys that the printer drivers (moonraker, octoprint) share: the printer's
// resource, the filament it consumes, and the Spoolman spool that can stand in for the filament.
// Each driver keeps its own checks between them (octoprint requires a filament or a spool;
// moonraker falls back to the G-code's filament type).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/result.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/device/driver_table.hpp>
#include <reflow/drivers/spoolman.hpp>

namespace agent::spoolman {

/// What the shared keys say, with their defaults.
struct PrinterKeys {
  std::string resource;         ///< `resource`: the printer (the `use`); "" when missing
  std::string filament;         ///< `filament`: the consumed resource; "" when not set
  double diameter_mm = 1.75;    ///< `filament_diameter_mm`, > 0
  double density_g_cm3 = 1.24;  ///< `filament_density_g_cm3`, > 0 (PLA)
  std::string spoolman_url;     ///< `spoolman_url` as written (the driver checks its scheme)
  std::int64_t spool_id = 0;    ///< `spool_id`, 0 … 10⁹; 0 = none
  Report report = Report::off;  ///< `spoolman_report`
};

/// Reads the shared keys from `table`, each with its type and bounds. Errors: invalid_config for
/// the first key that is wrong, naming file, line and key (DriverTable's messages).
Result<PrinterKeys> read_printer_keys(const DriverTable& table);

/// The rows `drivers describe` shows for the Spoolman keys (`spoolman_url`, `spool_id`,
/// `spoolman_report`) and for the filament's constants (`filament_diameter_mm`,
/// `filament_density_g_cm3`), the same in every printer driver.
std::vector<DriverKeyInfo> filament_constant_key_rows();
std::vector<DriverKeyInfo> spoolman_key_rows();

}  // namespace agent::spoolman
