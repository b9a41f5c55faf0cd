// SPDX-License-Identifier: AGPL-3.0-or-later
// Reading OctoPrint's REST answers (docs/api/job.rst, printer.rst, datamodel.rst, OctoPrint 1.x
// and 2.0) into one observation of the printer, and nothing else: no state, no I/O.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <reflow/core/result.hpp>

namespace agent::octoprint {

/// The file a job prints: OctoPrint has no job id, so (origin, path) plus the start time is the
/// key.
struct JobFile {
  std::string origin;  ///< "local" or "sdcard"
  std::string path;    ///< path inside the origin; the name when OctoPrint sends no path
  std::string name;    ///< file name, e.g. "whistle_v2.gcode"
};

/// One poll: GET /api/printer then GET /api/job.
struct Observation {
  /// From /api/printer state.flags: printing, paused, pausing, resuming, cancelling or finishing.
  bool active = false;
  /// From /api/job `state`: the text names one of those states ("Printing", "Paused" …).
  bool text_active = false;
  bool cancelling = false;  ///< flags.cancelling or "Cancelling"
  bool error = false;  ///< flags.error or flags.closedOrError, or "Error…"/"Offline after error"
  bool connected = true;        ///< false when /api/printer answered 409 (no serial connection)
  std::string state_text;       ///< /api/job `state`, for logs and meta
  std::optional<JobFile> file;  ///< null when no file is selected
  std::optional<double> completion;        ///< progress.completion, percent 0…100
  std::optional<double> print_time_s;      ///< progress.printTime, seconds (excludes pauses)
  std::optional<double> file_filament_mm;  ///< slicer estimate for the whole file, all tools
};

/// Reads GET /api/printer (`status` is its HTTP status): fills active, cancelling, error and
/// connected. 409 means "printer not operational" (printer.rst) and is an answer, not an error.
/// Errors: rejected naming what is malformed (not JSON, state.flags missing or not booleans).
Status parse_printer(long status, std::string_view body, Observation& out);

/// Reads GET /api/job: state text, file, progress and the filament estimate. Nulls are normal
/// (no file selected, analysis not finished). Errors: rejected naming the malformed field
/// (completion outside 0…100, negative printTime, wrong types).
Status parse_job(std::string_view body, Observation& out);

}  // namespace agent::octoprint
