// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/printer_keys.hpp>

namespace agent::spoolman {

Result<PrinterKeys> read_printer_keys(const DriverTable& table) {
  auto resource = table.string("resource", "");
  if (!resource) return std::unexpected(resource.error());
  auto filament = table.string("filament", "");
  if (!filament) return std::unexpected(filament.error());
  auto diameter = table.positive_number("filament_diameter_mm", 1.75, k_max_diameter_mm);
  if (!diameter) return std::unexpected(diameter.error());
  auto density = table.positive_number("filament_density_g_cm3", 1.24, k_max_density_g_cm3);
  if (!density) return std::unexpected(density.error());
  auto url = table.string("spoolman_url", "");
  if (!url) return std::unexpected(url.error());
  auto spool_id = table.integer("spool_id", 0, 0, 1'000'000'000);
  if (!spool_id) return std::unexpected(spool_id.error());
  auto report = table.choice("spoolman_report", "off", {"off", "length", "weight"});
  if (!report) return std::unexpected(report.error());
  return PrinterKeys{
      .resource = std::move(*resource),
      .filament = std::move(*filament),
      .diameter_mm = *diameter,
      .density_g_cm3 = *density,
      .spoolman_url = std::move(*url),
      .spool_id = *spool_id,
      .report = *report == "length"   ? Report::length
                : *report == "weight" ? Report::weight
                                      : Report::off,
  };
}

std::vector<DriverKeyInfo> filament_constant_key_rows() {
  return {
      {"filament_diameter_mm", "number", "1.75",
       "filament diameter in mm, at most 10 (when not from Spoolman)"},
      {"filament_density_g_cm3", "number", "1.24",
       "filament density in g/cm³, at most 25 (when not from Spoolman); PLA 1.24, PETG 1.27, "
       "ABS 1.04"},
  };
}

std::vector<DriverKeyInfo> spoolman_key_rows() {
  return {
      {"spoolman_url", "string", "(none)",
       "Spoolman's base URL, e.g. \"http://spoolman.local:7912\""},
      {"spool_id", "integer", "0",
       "Spoolman spool loaded in the printer: gives the consumed resource "
       "(\"spoolman:spool-<id>\"), its density and diameter; 0: none"},
      {"spoolman_report", "string", "\"off\"",
       "\"length\" or \"weight\": report each job's filament to Spoolman (PUT "
       "/api/v1/spool/{id}/use); \"off\": don't (the printer's own Spoolman integration may do "
       "it already)"},
  };
}

}  // namespace agent::spoolman
