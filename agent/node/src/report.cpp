// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/report.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <functional>
#include <tuple>
#include <unordered_map>

#include <fmt/format.h>

#include <reflow/core/text.hpp>
#include <reflow/core/units.hpp>
#include <reflow/node/query.hpp>

namespace ingest::report {
namespace {

using agent::ErrorCode;
using agent::fail;
using Json = nlohmann::ordered_json;

// What the report needs of one event, read once.
struct Record {
  std::int64_t time_ms = 0;
  std::string action;
  std::string process;   // inputOf, else outputOf
  std::string machine;   // a use's resourceInventoriedAs
  std::string member;    // a work's provider, else the receiver
  std::string resource;  // resourceInventoriedAs, else resourceConformsTo
  std::string serviced;  // a modify's resourceInventoriedAs
  std::string note;      // a modify's note
  std::optional<double> hours;
  std::optional<std::pair<double, std::string>> quantity;  // resourceQuantity
  bool unknown_card = false;  // an unknown badge's cite (PROTOCOL §4.1): no use, no material
};

std::string string_of(const nlohmann::json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// {"hasNumericalValue": n, "hasUnit": "…"} (PROTOCOL §4), or nullopt.
std::optional<std::pair<double, std::string>> measure_of(const nlohmann::json& object,
                                                         const char* key) {
  const auto it = object.find(key);
  if (it == object.end() || !it->is_object()) return std::nullopt;
  const auto value = it->find("hasNumericalValue");
  const auto unit = it->find("hasUnit");
  if (value == it->end() || !value->is_number() || unit == it->end() || !unit->is_string())
    return std::nullopt;
  return std::pair{value->get<double>(), unit->get<std::string>()};
}

// Hours in one `unit` of time (OM2 names, PROTOCOL §4); nullopt for any other unit.
std::optional<double> hours_per(std::string_view unit) {
  if (unit == "hour") return 1.0;
  if (unit == "minute-Time") return 1.0 / 60;
  if (unit == "second-Time") return 1.0 / 3600;
  if (unit == "day") return 24.0;
  return std::nullopt;
}

std::optional<Record> record_of(const StoredEvent& event) {
  const auto payload = nlohmann::json::parse(event.payload, nullptr, false);
  if (payload.is_discarded() || !payload.is_object()) return std::nullopt;
  Record r;
  r.action = event.action;
  r.time_ms = event.recorded_unix_ms;
  for (const char* field : {"hasPointInTime", "hasBeginning", "hasEnd"})
    if (auto text = string_of(payload, field); !text.empty()) {
      if (auto ms = agent::parse_rfc3339(text)) {
        r.time_ms = *ms;
        break;
      }
    }
  r.process = string_of(payload, "inputOf");
  if (r.process.empty()) r.process = string_of(payload, "outputOf");
  r.resource = string_of(payload, "resourceInventoriedAs");
  if (r.resource.empty()) r.resource = string_of(payload, "resourceConformsTo");
  if (r.action == "use") r.machine = string_of(payload, "resourceInventoriedAs");
  if (r.action == "modify") {
    r.serviced = string_of(payload, "resourceInventoriedAs");
    r.note = string_of(payload, "note");
  }
  r.member = string_of(payload, r.action == "work" ? "provider" : "receiver");
  if (r.action == "use" || r.action == "work")
    if (auto effort = measure_of(payload, "effortQuantity"))
      if (auto per = hours_per(effort->second)) r.hours = effort->first * *per;
  r.quantity = measure_of(payload, "resourceQuantity");
  if (r.action == "cite")
    if (const auto meta = payload.find("meta"); meta != payload.end() && meta->is_object())
      r.unknown_card = string_of(*meta, "badge") == "unknown";
  return r;
}

// 43 base64url characters: the shape of the agent's keyed badge hash (drivers/common members.hpp).
bool is_badge_hash(std::string_view text) {
  return text.size() == 43 && std::ranges::all_of(text, [](unsigned char c) {
           return std::isalnum(c) != 0 || c == '-' || c == '_';
         });
}

const char* key_name(By by) {
  switch (by) {
    case By::member:
      return "member";
    case By::machine:
      return "machine";
    case By::resource:
      return "resource";
  }
  return "";
}

std::string shown_key(const std::string& key) {
  return key.empty() ? "(none)" : agent::printable_text(key);
}

// "1234.5 gram spoolman:spool-7; 0.8 kilowattHour plug:laser", or "-".
std::string flows_text(const std::map<ResourceUnit, double>& flows) {
  std::string out;
  for (const auto& [what, quantity] : flows)
    out += fmt::format("{}{:.6g} {} {}", out.empty() ? "" : "; ", quantity, what.second,
                       agent::printable_text(what.first));
  return out.empty() ? "-" : out;
}

std::string counts_text(const std::map<std::string, std::int64_t>& counts) {
  std::string out;
  for (const auto& [ref, n] : counts)
    out += fmt::format("{}{}×{}", out.empty() ? "" : ", ", agent::printable_text(ref), n);
  return out.empty() ? "-" : out;
}

Json flows_json(const std::map<ResourceUnit, double>& flows) {
  Json out = Json::array();
  for (const auto& [what, quantity] : flows)
    out.push_back({{"resource", what.first}, {"quantity", quantity}, {"unit", what.second}});
  return out;
}

}  // namespace

Result<By> parse_by(std::string_view text) {
  if (text == "member") return By::member;
  if (text == "machine") return By::machine;
  if (text == "resource") return By::resource;
  return fail(ErrorCode::invalid_argument,
              fmt::format("--by \"{}\": expected member, machine or resource",
                          agent::printable_text(text)));
}

Result<Period> parse_period(std::string_view text) {
  if (text == "day") return Period::day;
  if (text == "week") return Period::week;
  if (text == "month") return Period::month;
  if (text == "all") return Period::all;
  return fail(ErrorCode::invalid_argument,
              fmt::format("--period \"{}\": expected day, week, month or all",
                          agent::printable_text(text)));
}

std::string period_of(std::int64_t unix_ms, Period period) {
  using namespace std::chrono;
  const sys_days day = floor<days>(sys_time<milliseconds>(milliseconds(unix_ms)));
  const year_month_day ymd{day};
  switch (period) {
    case Period::day:
      return fmt::format("{:04}-{:02}-{:02}", static_cast<int>(ymd.year()),
                         static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()));
    case Period::month:
      return fmt::format("{:04}-{:02}", static_cast<int>(ymd.year()),
                         static_cast<unsigned>(ymd.month()));
    case Period::week: {
      // ISO 8601: the week belongs to the year of its Thursday.
      const auto iso_weekday = static_cast<int>(weekday{day}.iso_encoding());  // Monday 1
      const sys_days thursday = day + days(4 - iso_weekday);
      const year week_year = year_month_day{thursday}.year();
      const auto week = (thursday - sys_days{week_year / January / 1}).count() / 7 + 1;
      return fmt::format("{:04}-W{:02}", static_cast<int>(week_year), week);
    }
    case Period::all:
      break;
  }
  return "all";
}

std::vector<UsageRow> usage(const std::vector<StoredEvent>& events, const UsageOptions& options) {
  std::vector<Record> records;
  records.reserve(events.size());
  // The machine and member of each process, from its first use event.
  std::unordered_map<std::string, std::pair<std::string, std::string>> process_use;
  for (const auto& event : events) {
    auto record = record_of(event);
    if (!record || record->unknown_card) continue;  // a card seen, not a use or a material
    if (record->action == "use" && !record->process.empty())
      process_use.try_emplace(record->process, record->machine, record->member);
    records.push_back(std::move(*record));
  }

  std::map<std::pair<std::string, std::string>, UsageRow> rows;
  for (auto& r : records) {
    if (options.from_unix_ms && r.time_ms < *options.from_unix_ms) continue;
    if (options.to_unix_ms && r.time_ms >= *options.to_unix_ms) continue;
    if (const auto use = process_use.find(r.process);
        !r.process.empty() && use != process_use.end()) {
      if (r.machine.empty()) r.machine = use->second.first;
      if (r.member.empty()) r.member = use->second.second;
    }
    const std::string& key = options.by == By::member    ? r.member
                             : options.by == By::machine ? r.machine
                                                         : r.resource;
    const std::string period = period_of(r.time_ms, options.period);
    UsageRow& row = rows[{period, key}];
    row.period = period;
    row.key = key;
    ++row.events;
    if (r.action == "use" || r.action == "work") {
      ++row.sessions;
      row.use_hours += r.hours.value_or(0);
      if (options.by == By::member) {
        if (!r.machine.empty()) ++row.machines[r.machine];
      } else if (!r.member.empty()) {
        ++row.members[r.member];
      }
    } else if (r.quantity && (r.action == "consume" || r.action == "produce")) {
      auto& flows = r.action == "consume" ? row.consumed : row.produced;
      flows[{r.resource, r.quantity->second}] += r.quantity->first;
    }
  }
  std::vector<UsageRow> out;
  out.reserve(rows.size());
  for (auto& [_, row] : rows)
    out.push_back(std::move(row));
  return out;
}

Result<std::vector<UsageRow>> usage(Store& store, const UsageOptions& options) {
  auto events = collect_events(store, EventFilter{});
  if (!events) return std::unexpected(events.error());
  return usage(*events, options);
}

std::string format_usage_table(const std::vector<UsageRow>& rows, By by) {
  if (rows.empty()) return "no events in the period\n";
  std::string key = key_name(by);
  std::ranges::transform(key, key.begin(), [](unsigned char c) { return std::toupper(c); });
  std::vector<std::vector<std::string>> table;
  table.push_back({"PERIOD", key, "HOURS", "SESSIONS", "CONSUMED", "PRODUCED",
                   by == By::member ? "MACHINES" : "MEMBERS"});
  for (const auto& row : rows)
    table.push_back({row.period, shown_key(row.key), fmt::format("{:.3f}", row.use_hours),
                     std::to_string(row.sessions), flows_text(row.consumed),
                     flows_text(row.produced),
                     counts_text(by == By::member ? row.machines : row.members)});
  return agent::aligned_table(table);
}

std::string format_usage_csv(const std::vector<UsageRow>& rows, By by) {
  std::string out =
      fmt::format("period,{},hours,sessions,events,flow,resource,quantity,unit\r\n", key_name(by));
  for (const auto& row : rows) {
    const std::string head =
        fmt::format("{},{},{},{},{}", agent::csv_field(row.period), agent::csv_field(row.key),
                    row.use_hours, row.sessions, row.events);
    bool any = false;
    for (const auto& [flow, flows] :
         {std::pair{"consume", &row.consumed}, std::pair{"produce", &row.produced}})
      for (const auto& [what, quantity] : *flows) {
        out += fmt::format("{},{},{},{},{}\r\n", head, flow, agent::csv_field(what.first), quantity,
                           agent::csv_field(what.second));
        any = true;
      }
    if (!any) out += head + ",,,,\r\n";
  }
  return out;
}

nlohmann::ordered_json usage_json(const UsageRow& row, By by) {
  Json out;
  out["period"] = row.period;
  out[key_name(by)] = row.key.empty() ? Json() : Json(row.key);
  out["hours"] = row.use_hours;
  out["sessions"] = row.sessions;
  out["events"] = row.events;
  out["consumed"] = flows_json(row.consumed);
  out["produced"] = flows_json(row.produced);
  Json counts = Json::object();
  for (const auto& [ref, n] : by == By::member ? row.machines : row.members)
    counts[ref] = n;
  out[by == By::member ? "machines" : "members"] = std::move(counts);
  return out;
}

std::vector<MaintenanceRow> maintenance(const std::vector<StoredEvent>& events,
                                        const MaintenanceOptions& options) {
  std::vector<Record> records;
  records.reserve(events.size());
  std::map<std::string, MaintenanceRow> rows;
  for (const auto& [machine, interval] : options.intervals)
    rows[machine].machine = machine;
  for (const auto& event : events) {
    auto record = record_of(event);
    if (!record) continue;
    if (record->action == "use" && !record->machine.empty())
      rows[record->machine].machine = record->machine;
    records.push_back(std::move(*record));
  }
  // The last service of each machine: the latest modify by its time; the later stored of two at
  // the same time.
  for (const auto& r : records) {
    if (r.action != "modify") continue;
    const auto row = rows.find(r.serviced);
    if (row == rows.end()) continue;  // a modified part or batch, not a machine
    if (!row->second.last_service_ms || r.time_ms >= *row->second.last_service_ms) {
      row->second.last_service_ms = r.time_ms;
      row->second.last_service_note = r.note;
    }
  }
  for (const auto& r : records) {
    if (r.action != "use" || r.machine.empty()) continue;
    MaintenanceRow& row = rows[r.machine];
    const double hours = r.hours.value_or(0);
    row.hours_total += hours;
    if (row.last_service_ms && r.time_ms < *row.last_service_ms) continue;
    row.hours_since += hours;
    ++row.sessions_since;
  }
  std::vector<MaintenanceRow> out;
  out.reserve(rows.size());
  for (auto& [machine, row] : rows) {
    const auto own = options.intervals.find(machine);
    const auto interval = own != options.intervals.end() ? own->second : options.default_interval;
    if (interval.count() > 0) {
      row.interval_hours = std::chrono::duration<double, std::ratio<3600>>(interval).count();
      row.hours_left = *row.interval_hours - row.hours_since;
    }
    out.push_back(std::move(row));
  }
  std::ranges::stable_sort(out, [](const MaintenanceRow& a, const MaintenanceRow& b) {
    if (a.hours_left.has_value() != b.hours_left.has_value()) return a.hours_left.has_value();
    return a.hours_left && *a.hours_left < *b.hours_left;
  });
  return out;
}

Result<std::vector<MaintenanceRow>> maintenance(Store& store, const MaintenanceOptions& options) {
  auto events = collect_events(store, EventFilter{});
  if (!events) return std::unexpected(events.error());
  return maintenance(*events, options);
}

std::string format_maintenance_table(const std::vector<MaintenanceRow>& rows) {
  if (rows.empty()) return "no machines\n";
  std::vector<std::vector<std::string>> table;
  table.push_back({"MACHINE", "USE SINCE", "SESSIONS", "LAST SERVICE", "INTERVAL", "STATUS"});
  for (const auto& row : rows) {
    std::string last = "never";
    if (row.last_service_ms) {
      last = agent::format_rfc3339_s(*row.last_service_ms / 1000).substr(0, 10);
      if (!row.last_service_note.empty())
        last += " " + agent::printable_text(row.last_service_note);
    }
    std::string status = "-";
    if (row.hours_left)
      status = row.overdue() ? fmt::format("overdue by {:.2f} h", -*row.hours_left)
                             : fmt::format("due in {:.2f} h", *row.hours_left);
    table.push_back({shown_key(row.machine), fmt::format("{:.2f} h", row.hours_since),
                     std::to_string(row.sessions_since), last,
                     row.interval_hours ? fmt::format("{:.4g} h", *row.interval_hours) : "-",
                     status});
  }
  return agent::aligned_table(table);
}

std::string format_maintenance_csv(const std::vector<MaintenanceRow>& rows) {
  std::string out =
      "machine,hours_since_service,sessions_since_service,hours_total,last_service,"
      "last_service_note,interval_hours,hours_left,overdue\r\n";
  for (const auto& row : rows)
    out += fmt::format("{},{},{},{},{},{},{},{},{}\r\n", agent::csv_field(row.machine),
                       row.hours_since, row.sessions_since, row.hours_total,
                       row.last_service_ms ? agent::format_rfc3339_ms(*row.last_service_ms) : "",
                       agent::csv_field(row.last_service_note),
                       row.interval_hours ? fmt::format("{}", *row.interval_hours) : "",
                       row.hours_left ? fmt::format("{}", *row.hours_left) : "", row.overdue());
  return out;
}

nlohmann::ordered_json maintenance_json(const MaintenanceRow& row) {
  Json out;
  out["machine"] = row.machine;
  out["hours_since_service"] = row.hours_since;
  out["sessions_since_service"] = row.sessions_since;
  out["hours_total"] = row.hours_total;
  out["last_service"] = row.last_service_ms
                            ? Json{{"time", agent::format_rfc3339_ms(*row.last_service_ms)},
                                   {"note", row.last_service_note}}
                            : Json();
  out["interval_hours"] = row.interval_hours ? Json(*row.interval_hours) : Json();
  out["hours_left"] = row.hours_left ? Json(*row.hours_left) : Json();
  out["overdue"] = row.overdue();
  return out;
}

std::vector<UnknownCardRow> unknown_cards(const std::vector<StoredEvent>& events,
                                          std::int64_t since_unix_ms) {
  std::map<std::tuple<std::string, std::string, std::string>, UnknownCardRow> rows;
  for (const auto& event : events) {
    if (event.action != "cite") continue;
    auto record = record_of(event);
    if (!record || !record->unknown_card || record->time_ms < since_unix_ms) continue;
    const auto payload = nlohmann::json::parse(event.payload, nullptr, false);
    const std::string hash = string_of(payload.at("meta"), "badge_hash");
    if (!is_badge_hash(hash)) continue;
    UnknownCardRow& row = rows[{event.device, record->resource, hash}];
    if (row.times == 0) {
      row.device = event.device;
      row.machine = record->resource;
      row.hash = hash;
      row.first_seen_ms = record->time_ms;
      row.last_seen_ms = record->time_ms;
    }
    ++row.times;
    row.first_seen_ms = std::min(row.first_seen_ms, record->time_ms);
    row.last_seen_ms = std::max(row.last_seen_ms, record->time_ms);
  }
  std::vector<UnknownCardRow> out;
  out.reserve(rows.size());
  for (auto& [_, row] : rows)
    out.push_back(std::move(row));
  // Most recent first: the card just badged at the machine is the one an operator enrols.
  std::ranges::stable_sort(out, std::greater<>(), &UnknownCardRow::last_seen_ms);
  return out;
}

Result<std::vector<UnknownCardRow>> unknown_cards(Store& store, std::int64_t since_unix_ms) {
  EventFilter filter;
  filter.action = "cite";
  auto events = collect_events(store, filter);
  if (!events) return std::unexpected(events.error());
  return unknown_cards(*events, since_unix_ms);
}

std::string format_unknown_cards_table(const std::vector<UnknownCardRow>& rows) {
  if (rows.empty()) return "no unknown cards in the period\n";
  std::vector<std::vector<std::string>> table;
  table.push_back({"LAST SEEN", "DEVICE", "MACHINE", "TIMES", "BADGE"});
  for (const auto& row : rows)
    table.push_back({agent::format_rfc3339_ms(row.last_seen_ms), agent::printable_text(row.device),
                     shown_key(row.machine), std::to_string(row.times), row.hash});
  return agent::aligned_table(table);
}

nlohmann::ordered_json unknown_card_json(const UnknownCardRow& row) {
  Json out;
  out["device"] = row.device;
  out["machine"] = row.machine;
  out["badge"] = row.hash;
  out["times"] = row.times;
  out["first_seen"] = agent::format_rfc3339_ms(row.first_seen_ms);
  out["last_seen"] = agent::format_rfc3339_ms(row.last_seen_ms);
  return out;
}

}  // namespace ingest::report
