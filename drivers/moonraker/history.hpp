// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/result.hpp>

namespace agent::moonraker {

/// One page of `GET /server/history/list` (Moonraker docs/external_api/history.md):
/// `{"result":{"count":N,"jobs":[…]}}`. The job entries are kept raw; parse_job reads each.
struct HistoryPage {
  std::int64_t count = 0;  ///< jobs matching the query in total (all pages)
  std::vector<nlohmann::json> jobs;
};

/// Errors: invalid_argument when `body` is not that shape (the message says what is wrong).
Result<HistoryPage> parse_history_page(std::string_view body);

/// The facts of one job entry the driver uses. Times are Unix seconds (Moonraker's floats).
struct HistoryJob {
  std::string job_id;  ///< "000012"
  std::string filename;
  std::string status;  ///< completed, cancelled, error, klippy_shutdown, klippy_disconnect,
                       ///< interrupted or in_progress
  std::string user;    ///< "" when Moonraker recorded null (started from the printer's display)
  double start_time = 0;
  std::optional<double> end_time;    ///< null while running and for some interrupted jobs
  double print_duration_s = 0;       ///< excludes pauses
  double total_duration_s = 0;       ///< includes pauses
  double filament_used_mm = 0;       ///< measured extrusion
  std::string filament_type;         ///< metadata.filament_type ("PLA"); "" when absent
  std::optional<double> energy_kwh;  ///< an auxiliary_data entry in kWh (a [sensor] history field)

  bool finished() const { return status != "in_progress"; }
};

/// True for the statuses Moonraker writes (history.md), in_progress included.
bool is_known_status(std::string_view status);

/// Reads one job entry. Errors: invalid_argument naming the job and the field (a missing or
/// mistyped field, an unknown status, negative durations or length, an end before the start).
Result<HistoryJob> parse_job(const nlohmann::json& entry);

/// What the events of a job refer to, from the driver's config (and Spoolman).
struct JobContext {
  std::string name;      ///< the [[driver]] name
  std::string printer;   ///< `resource`
  std::string filament;  ///< the spool's resource reference (`filament` or Spoolman); "" = none
  /// The filament stock consumed when no spool is known (`filament_stock`). When both are "",
  /// `consume` names only the G-code's filament type, which zenflows refuses; the driver always
  /// sets it.
  std::string filament_stock;
  double diameter_mm = 1.75;
  double density_g_cm3 = 1.24;
  std::int64_t spool_id = 0;  ///< the Spoolman spool, 0 when none
};

/// "moonraker:<name>:job-<job_id>": the process the job's events share.
std::string process_ref(std::string_view name, std::string_view job_id);

/// The events of one finished job, in submission order, as producer fields (PROTOCOL §4), all of
/// the job's process (process_ref): `use` of the printer when print_duration > 0 (effortQuantity
/// in hours), `consume` of the spool or else the filament stock when filament_used > 0 (grams,
/// spoolman::filament_grams; the G-code's filament type in meta.filament_type), `produce` of one
/// new part (resourceInventoriedAs vf::part_reference(file, job_id, printer), resourceConformsTo
/// the file name) only for completed jobs. Quantities are rounded to micro-hours and milligrams
/// so that the numbers are stable in tests and logs.
std::vector<nlohmann::ordered_json> job_events(const HistoryJob& job, const JobContext& context);

}  // namespace agent::moonraker
