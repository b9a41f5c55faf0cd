// SPDX-License-Identifier: AGPL-3.0-or-later
#include "history.hpp"

#include <array>
#include <cmath>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/event.hpp>
#include <reflow/core/text.hpp>
#include <reflow/core/units.hpp>
#include <reflow/drivers/spoolman.hpp>
#include <reflow/drivers/valueflows.hpp>

namespace agent::moonraker {
namespace {

constexpr std::array k_statuses = {"in_progress",     "completed",         "cancelled",  "error",
                                   "klippy_shutdown", "klippy_disconnect", "interrupted"};

std::int64_t unix_ms(double unix_s) {
  return static_cast<std::int64_t>(std::llround(unix_s * 1000));
}

}  // namespace

Result<HistoryPage> parse_history_page(std::string_view body) {
  const auto json = nlohmann::json::parse(body, nullptr, false);
  if (json.is_discarded()) return fail(ErrorCode::invalid_argument, "the answer is not JSON");
  const auto result = json.is_object() ? json.find("result") : json.end();
  if (result == json.end() || !result->is_object())
    return fail(ErrorCode::invalid_argument, "the answer has no \"result\" object");
  const auto jobs = result->find("jobs");
  if (jobs == result->end() || !jobs->is_array())
    return fail(ErrorCode::invalid_argument, "the answer has no \"result.jobs\" array");
  HistoryPage page;
  if (auto count = result->find("count"); count != result->end() && count->is_number_integer())
    page.count = count->get<std::int64_t>();
  page.jobs.assign(jobs->begin(), jobs->end());
  return page;
}

bool is_known_status(std::string_view status) {
  for (std::string_view known : k_statuses)
    if (status == known) return true;
  return false;
}

Result<HistoryJob> parse_job(const nlohmann::json& entry) {
  if (!entry.is_object()) return fail(ErrorCode::invalid_argument, "a job entry is not an object");
  HistoryJob job;
  const auto id = entry.find("job_id");
  if (id == entry.end() || !id->is_string() || id->get<std::string>().empty())
    return fail(ErrorCode::invalid_argument, "a job entry has no \"job_id\" string");
  job.job_id = id->get<std::string>();
  const auto bad = [&](std::string_view field, std::string_view what) {
    return fail(ErrorCode::invalid_argument,
                fmt::format("job {}: \"{}\" {}", shortened_text(printable_text(job.job_id), 64),
                            field, what));
  };
  // The job's strings go into its events, so they must be strings PROTOCOL §4 Limits takes, or
  // the writer would refuse the events of a job that passed here.
  const auto protocol_text = [&](std::string_view field, std::string_view text) -> Status {
    if (text.size() > k_max_string_bytes)
      return bad(field, fmt::format("is {} bytes; an event's strings hold at most {} "
                                    "(PROTOCOL §4 Limits)",
                                    text.size(), k_max_string_bytes));
    if (const auto at = find_control_character(text, /*allow_tab_lf=*/true);
        at != std::string_view::npos)
      return bad(field, fmt::format("holds a control character at byte {}; an event's strings "
                                    "may hold TAB and LF but no other (PROTOCOL §4 Limits)",
                                    at + 1));
    return {};
  };
  const auto string_field = [&](const char* field, std::string& out, bool nullable) -> Status {
    const auto it = entry.find(field);
    if (it != entry.end() && it->is_string()) {
      out = it->get<std::string>();
      return protocol_text(field, out);
    }
    if (nullable && (it == entry.end() || it->is_null())) return {};
    return bad(field, "is not a string");
  };
  const auto number_field = [&](const char* field, double& out) -> Status {
    const auto it = entry.find(field);
    if (it == entry.end() || !it->is_number() || !std::isfinite(it->get<double>()) ||
        it->get<double>() < 0)
      return bad(field, "is not a number ≥ 0");
    out = it->get<double>();
    return {};
  };
  // Moonraker's ids are 6 hex digits; the id goes into the job's process and part references,
  // which must stay within the protocol's string limit.
  constexpr std::size_t k_max_job_id_bytes = 64;
  if (job.job_id.size() > k_max_job_id_bytes)
    return bad("job_id", fmt::format("is {} bytes; Moonraker's job ids are 6 hex digits and this "
                                     "driver takes at most {}",
                                     job.job_id.size(), k_max_job_id_bytes));
  if (Status s = protocol_text("job_id", job.job_id); !s) return std::unexpected(s.error());
  for (Status s :
       {string_field("filename", job.filename, false), string_field("status", job.status, false),
        string_field("user", job.user, true), number_field("start_time", job.start_time),
        number_field("print_duration", job.print_duration_s),
        number_field("total_duration", job.total_duration_s),
        number_field("filament_used", job.filament_used_mm)})
    if (!s) return std::unexpected(s.error());
  if (!is_known_status(job.status))
    return bad("status", fmt::format("\"{}\" is not a status Moonraker documents", job.status));
  if (job.start_time <= 0) return bad("start_time", "is not a Unix time");
  if (const auto end = entry.find("end_time"); end != entry.end() && !end->is_null()) {
    if (!end->is_number() || !std::isfinite(end->get<double>()))
      return bad("end_time", "is neither a number nor null");
    job.end_time = end->get<double>();
    if (*job.end_time < job.start_time) return bad("end_time", "is before start_time");
  }
  // The events' times must be ones PROTOCOL §4 accepts, or the writer refuses them and the job is
  // lost instead of reported: a job is malformed when its start or end lies beyond them.
  const double last_s = job.end_time ? *job.end_time : job.start_time + job.total_duration_s;
  if (job.start_time * 1000.0 >= static_cast<double>(k_max_time_ms))
    return bad("start_time", "is after 2099 (PROTOCOL §4 Limits)");
  if (last_s * 1000.0 >= static_cast<double>(k_max_time_ms))
    return bad(job.end_time ? "end_time" : "total_duration",
               "puts the job's end after 2099 (PROTOCOL §4 Limits)");
  // Nor can a job have lasted longer than from its start to 2099, and its filament must be a
  // length whose weight is a quantity PROTOCOL §4 takes (found by tests/fuzz: a print_duration of
  // 1.8e103 s gave a `use` of 5e99 hours, which the writer refuses).
  const double longest_s = static_cast<double>(k_max_time_ms) / 1000.0 - job.start_time;
  for (const auto& [field, seconds] : {std::pair{"print_duration", job.print_duration_s},
                                       std::pair{"total_duration", job.total_duration_s}})
    if (seconds > longest_s)
      return bad(field, fmt::format("is {} s, longer than from start_time to 2099 "
                                    "(PROTOCOL §4 Limits)",
                                    seconds));
  if (job.filament_used_mm > spoolman::k_max_filament_mm)
    return bad("filament_used", fmt::format("is {} mm; a job uses at most {} mm (1000 km)",
                                            job.filament_used_mm, spoolman::k_max_filament_mm));
  if (const auto meta = entry.find("metadata"); meta != entry.end() && meta->is_object())
    if (const auto type = meta->find("filament_type"); type != meta->end() && type->is_string())
      job.filament_type = type->get<std::string>();
  if (Status s = protocol_text("metadata.filament_type", job.filament_type); !s)
    return std::unexpected(s.error());
  if (const auto aux = entry.find("auxiliary_data"); aux != entry.end() && aux->is_array())
    for (const auto& item : *aux)
      if (item.is_object() && item.value("units", nlohmann::json()) == "kWh" &&
          item.contains("value") && item["value"].is_number()) {
        job.energy_kwh = item["value"].get<double>();
        break;
      }
  return job;
}

std::string process_ref(std::string_view name, std::string_view job_id) {
  return fmt::format("moonraker:{}:job-{}", name, job_id);
}

std::vector<nlohmann::ordered_json> job_events(const HistoryJob& job, const JobContext& context) {
  const std::string process = process_ref(context.name, job.job_id);
  const double end_s = job.end_time ? *job.end_time : job.start_time + job.total_duration_s;
  const std::string begin = format_rfc3339_ms(unix_ms(job.start_time));
  const std::string end = format_rfc3339_ms(unix_ms(end_s));
  std::vector<nlohmann::ordered_json> events;

  const double hours = vf::round_to(job.print_duration_s / 3600.0, 6);
  if (hours > 0) {
    auto use = vf::use(context.printer, hours, begin, end, process);
    auto& meta = use["meta"];
    meta["job_id"] = job.job_id;
    meta["file"] = job.filename;
    meta["status"] = job.status;
    meta["print_duration_s"] = job.print_duration_s;
    meta["total_duration_s"] = job.total_duration_s;
    if (!job.user.empty()) meta["user"] = job.user;
    if (job.energy_kwh) meta["energy_kWh"] = *job.energy_kwh;
    events.push_back(std::move(use));
  }

  const double grams = vf::round_to(
      spoolman::filament_grams(job.filament_used_mm, context.diameter_mm, context.density_g_cm3),
      3);
  if (grams > 0) {
    // zenflows decrements an inventoried resource: the spool, or else the printer's filament
    // stock; the kind alone (the G-code's filament type) cannot be consumed.
    const std::string& reference =
        context.filament.empty() ? context.filament_stock : context.filament;
    const std::string_view kind =
        job.filament_type.empty() ? std::string_view("filament") : job.filament_type;
    const auto filament = reference.empty() ? vf::ResourceRef::conforming(kind)
                                            : vf::ResourceRef::inventoried(reference);
    auto consume = vf::consume(filament, vf::quantity(grams, "gram"), end, process);
    auto& meta = consume["meta"];
    meta["job_id"] = job.job_id;
    meta["file"] = job.filename;
    meta["status"] = job.status;
    meta["filament_mm"] = job.filament_used_mm;
    meta["method"] = "measured";
    meta["diameter_mm"] = context.diameter_mm;
    meta["density_g_cm3"] = context.density_g_cm3;
    if (context.spool_id > 0) meta["spool_id"] = context.spool_id;
    if (!job.filament_type.empty()) meta["filament_type"] = job.filament_type;
    events.push_back(std::move(consume));
  }

  if (job.status == "completed") {
    auto produce = vf::produce(vf::part_reference(job.filename, job.job_id, context.printer),
                               job.filename, vf::quantity(1, "one"), end, process);
    produce["meta"]["job_id"] = job.job_id;
    produce["meta"]["file"] = job.filename;
    events.push_back(std::move(produce));
  }
  return events;
}

}  // namespace agent::moonraker
