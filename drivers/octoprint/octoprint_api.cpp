// SPDX-License-Identifier: AGPL-3.0-or-later
#include "octoprint_api.hpp"

#include <array>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace agent::octoprint {
namespace {

using nlohmann::json;

Result<json> parse_object(std::string_view body, std::string_view what) {
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded())
    return fail(ErrorCode::rejected, fmt::format("{}: the answer is not JSON", what));
  if (!doc.is_object())
    return fail(ErrorCode::rejected, fmt::format("{}: expected a JSON object", what));
  return doc;
}

// A number or null; anything else is malformed.
Result<std::optional<double>> optional_number(const json& parent, std::string_view key,
                                              std::string_view where) {
  auto it = parent.find(key);
  if (it == parent.end() || it->is_null()) return std::optional<double>{};
  if (!it->is_number())
    return fail(ErrorCode::rejected,
                fmt::format("{}.{}: expected a number or null; got {}", where, key, it->dump()));
  return std::optional<double>{it->get<double>()};
}

std::optional<std::string> optional_string(const json& parent, std::string_view key) {
  auto it = parent.find(key);
  if (it == parent.end() || !it->is_string() || it->get_ref<const std::string&>().empty())
    return std::nullopt;
  return it->get<std::string>();
}

bool text_is_active(std::string_view text) {
  // OctoPrint's state strings (printer/standard.py get_state_string); "Printing from SD" too.
  static constexpr std::array<std::string_view, 7> k_active = {
      "Paused", "Pausing", "Resuming", "Cancelling", "Finishing", "Starting", "Starting print"};
  if (text.starts_with("Printing")) return true;
  for (std::string_view s : k_active)
    if (text.starts_with(s)) return true;
  return false;
}

}  // namespace

Status parse_printer(long status, std::string_view body, Observation& out) {
  if (status == 409) {  // printer.rst: "409 Conflict if the printer is not operational"
    out.active = false;
    out.cancelling = false;
    out.connected = false;
    return {};
  }
  auto doc = parse_object(body, "GET /api/printer");
  if (!doc) return std::unexpected(doc.error());
  auto state = doc->find("state");
  if (state == doc->end() || !state->is_object() || !state->contains("flags") ||
      !(*state)["flags"].is_object())
    return fail(ErrorCode::rejected, "GET /api/printer: state.flags missing or not an object");
  const json& flags = (*state)["flags"];
  auto flag = [&](std::string_view name) -> Result<bool> {
    auto it = flags.find(name);
    if (it == flags.end() || it->is_null()) return false;  // older versions lack some flags
    if (!it->is_boolean())
      return fail(ErrorCode::rejected, fmt::format("GET /api/printer: state.flags.{}: expected a "
                                                   "boolean; got {}",
                                                   name, it->dump()));
    return it->get<bool>();
  };
  bool values[8];
  const std::array<std::string_view, 8> names = {"printing", "paused",       "pausing",
                                                 "resuming", "cancelling",   "finishing",
                                                 "error",    "closedOrError"};
  for (std::size_t i = 0; i < names.size(); ++i) {
    auto v = flag(names[i]);
    if (!v) return std::unexpected(v.error());
    values[i] = *v;
  }
  out.active = values[0] || values[1] || values[2] || values[3] || values[4] || values[5];
  out.cancelling = values[4];
  out.error = values[6] || values[7];
  out.connected = true;
  return {};
}

Status parse_job(std::string_view body, Observation& out) {
  auto doc = parse_object(body, "GET /api/job");
  if (!doc) return std::unexpected(doc.error());
  auto state = doc->find("state");
  if (state == doc->end() || !state->is_string())
    return fail(ErrorCode::rejected, "GET /api/job: `state` missing or not a string");
  out.state_text = state->get<std::string>();
  out.text_active = text_is_active(out.state_text);
  out.cancelling = out.cancelling || out.state_text.starts_with("Cancelling");
  out.error = out.error || out.state_text.starts_with("Error") ||
              out.state_text.starts_with("Offline after error");

  auto job = doc->find("job");
  if (job == doc->end() || !job->is_object())
    return fail(ErrorCode::rejected, "GET /api/job: `job` missing or not an object");
  out.file.reset();
  if (auto file = job->find("file"); file != job->end() && file->is_object()) {
    auto name = optional_string(*file, "name");
    if (name) {
      JobFile f;
      f.name = *name;
      f.origin = optional_string(*file, "origin").value_or("local");
      f.path = optional_string(*file, "path").value_or(*name);
      out.file = std::move(f);
    }
  }

  out.file_filament_mm.reset();
  if (auto filament = job->find("filament"); filament != job->end() && filament->is_object()) {
    // job.rst: one entry per tool ("tool0", "tool1" …), each {length mm, volume cm³}; entries
    // may be null while the analysis runs. Lengths are the slicer's estimate for the whole file.
    double total = 0;
    bool any = false;
    for (const auto& [tool, entry] : filament->items()) {
      if (!entry.is_object()) continue;
      auto length = optional_number(entry, "length", fmt::format("job.filament.{}", tool));
      if (!length) return std::unexpected(length.error());
      if (!*length) continue;
      if (**length < 0)
        return fail(
            ErrorCode::rejected,
            fmt::format("GET /api/job: job.filament.{}.length is negative ({})", tool, **length));
      total += **length;
      any = true;
    }
    if (any) out.file_filament_mm = total;
  }

  out.completion.reset();
  out.print_time_s.reset();
  if (auto progress = doc->find("progress"); progress != doc->end() && progress->is_object()) {
    auto completion = optional_number(*progress, "completion", "progress");
    if (!completion) return std::unexpected(completion.error());
    if (*completion && (**completion < 0 || **completion > 100.0001))
      return fail(
          ErrorCode::rejected,
          fmt::format("GET /api/job: progress.completion {} is outside 0…100", **completion));
    out.completion = *completion;
    auto print_time = optional_number(*progress, "printTime", "progress");
    if (!print_time) return std::unexpected(print_time.error());
    if (*print_time && **print_time < 0)
      return fail(ErrorCode::rejected,
                  fmt::format("GET /api/job: progress.printTime {} is negative", **print_time));
    out.print_time_s = *print_time;
  } else if (progress != doc->end() && !progress->is_null()) {
    return fail(ErrorCode::rejected, "GET /api/job: `progress` is not an object");
  }
  return {};
}

}  // namespace agent::octoprint
