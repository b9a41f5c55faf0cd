// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/event.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/jose.hpp>
#include <reflow/core/json_strict.hpp>
#include <reflow/core/text.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/core/units.hpp>

namespace agent {
namespace {

// PROTOCOL §4: ValueFlows action ids, camelCase.
constexpr std::array<std::string_view, 16> k_actions = {
    "use",     "work",     "consume",         "produce",           "cite", "accept",
    "modify",  "transfer", "transferCustody", "transferAllRights", "move", "pickup",
    "dropoff", "raise",    "lower",           "deliverService"};

// PROTOCOL §4: OM2 unit names.
constexpr std::array<std::string_view, 10> k_units = {
    "one",      "hour",       "minute-Time", "second-Time", "gram",
    "kilogram", "millimetre", "metre",       "litre",       "kilowattHour"};

// PROTOCOL §4: what a producer may supply, in the table's order (also the order of the hint in
// the error for an unknown field).
constexpr std::array<std::string_view, 18> k_producer_fields = {"action",
                                                                "hasPointInTime",
                                                                "hasBeginning",
                                                                "hasEnd",
                                                                "provider",
                                                                "receiver",
                                                                "resourceInventoriedAs",
                                                                "toResourceInventoriedAs",
                                                                "resourceConformsTo",
                                                                "resourceClassifiedAs",
                                                                "resourceQuantity",
                                                                "effortQuantity",
                                                                "inputOf",
                                                                "outputOf",
                                                                "atLocation",
                                                                "toLocation",
                                                                "note",
                                                                "meta"};

// References: a name or URI of an agent, resource, process or place. Empty says nothing.
constexpr std::array<std::string_view, 9> k_reference_fields = {"provider",
                                                                "receiver",
                                                                "resourceInventoriedAs",
                                                                "toResourceInventoriedAs",
                                                                "resourceConformsTo",
                                                                "inputOf",
                                                                "outputOf",
                                                                "atLocation",
                                                                "toLocation"};

// Fields the agent fills (PROTOCOL §4); a producer that sends one is confused about who does what.
constexpr std::array<std::string_view, 9> k_agent_fields = {
    "v", "id", "device", "stream", "seq", "prev", "recorded", "clock", "source"};

// PROTOCOL §4 per-action minimum.
constexpr std::array<std::string_view, 2> k_effort_actions = {"use", "work"};
constexpr std::array<std::string_view, 10> k_resource_actions = {
    "consume", "produce", "transfer", "transferCustody", "transferAllRights",
    "move",    "accept",  "modify",   "raise",           "lower"};

using Json = nlohmann::ordered_json;

template <std::size_t N>
bool contains(const std::array<std::string_view, N>& list, std::string_view name) {
  return std::find(list.begin(), list.end(), name) != list.end();
}

template <std::size_t N>
std::string join(const std::array<std::string_view, N>& list) {
  std::string out;
  for (std::string_view item : list) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

std::unexpected<Error> reject(std::string message) {
  return fail(ErrorCode::rejected, std::move(message));
}

// Quotes a value for an error message, shortened so one bad field cannot flood a log line.
std::string shown(const Json& value) {
  // Cut at a character boundary: the message is served as JSON (a rejection's detail).
  constexpr std::size_t k_max = 60;
  return shortened_text(value.dump(-1, ' ', false, Json::error_handler_t::replace), k_max);
}

// A number every reader holds exactly (PROTOCOL §4 Limits, RFC 7493 §2.2): integers within
// ±(2^53 − 1), other numbers finite and not subnormal. parse_json_strict already refuses the rest
// in text; this catches what a driver builds in C++.
bool number_within_limits(const Json& value) {
  if (value.is_number_unsigned())
    return value.get<std::uint64_t>() <= static_cast<std::uint64_t>(k_max_json_integer);
  if (value.is_number_integer()) {
    const auto n = value.get<std::int64_t>();
    return n <= k_max_json_integer && n >= -k_max_json_integer;
  }
  const double x = value.get<double>();
  return std::isfinite(x) && std::fpclassify(x) != FP_SUBNORMAL;
}

// Every string and number, at any depth: strings within k_max_string_bytes, valid UTF-8 (the
// payload is UTF-8 JSON, PROTOCOL §4) and free of control characters; numbers within limits;
// nesting within k_max_json_depth counting the event itself as depth 1. Checked per value so
// the error names the field.
Status check_values(const Json& value, const std::string& path, std::size_t depth) {
  if (value.is_string()) {
    const auto& text = value.get_ref<const std::string&>();
    if (text.size() > k_max_string_bytes)
      return reject(fmt::format("{}: string is {} bytes; at most {} are allowed", path, text.size(),
                                k_max_string_bytes));
    try {
      (void)value.dump();
    } catch (const Json::type_error&) {
      return reject(fmt::format("{}: string is not valid UTF-8", path));
    }
    if (auto at = find_control_character(text, /*allow_tab_lf=*/true); at != std::string_view::npos)
      return reject(
          fmt::format("{}: control character at byte {}; strings may hold TAB and LF but "
                      "no other control character (PROTOCOL §4 Limits)",
                      path, at + 1));
  } else if (value.is_number()) {
    if (!number_within_limits(value))
      return reject(
          fmt::format("{}: {} is beyond what every JSON reader holds exactly: integers "
                      "within ±(2^53 − 1), finite numbers (PROTOCOL §4 Limits)",
                      path, shown(value)));
  } else if (value.is_structured()) {
    if (depth + 1 > k_max_json_depth)
      return reject(fmt::format("{}: nested deeper than {} levels (PROTOCOL §4 Limits)", path,
                                k_max_json_depth));
    if (value.is_object()) {
      for (const auto& [key, member] : value.items()) {
        try {
          (void)Json(key).dump();
        } catch (const Json::type_error&) {
          return reject(fmt::format("{}: a member name is not valid UTF-8", path));
        }
        if (find_control_character(key, /*allow_tab_lf=*/false) != std::string_view::npos)
          return reject(fmt::format(
              "{}: a member name holds a control character (PROTOCOL §4 Limits)", path));
        if (auto s = check_values(member, path + "." + key, depth + 1); !s) return s;
      }
    } else {
      for (std::size_t i = 0; i < value.size(); ++i) {
        if (auto s = check_values(value[i], fmt::format("{}[{}]", path, i), depth + 1); !s)
          return s;
      }
    }
  }
  return {};
}

// True when every value at any depth passes check_values: the same walk without building the
// paths its messages name, for the common case where nothing is wrong. UTF-8 is left to the
// caller's dump().
bool values_within_limits(const Json& value, std::size_t depth) {
  if (value.is_string()) {
    const auto& text = value.get_ref<const std::string&>();
    return text.size() <= k_max_string_bytes &&
           find_control_character(text, /*allow_tab_lf=*/true) == std::string_view::npos;
  }
  if (value.is_number()) return number_within_limits(value);
  if (value.is_object()) {
    if (depth + 1 > k_max_json_depth) return false;
    for (const auto& [key, member] : value.items()) {
      if (find_control_character(key, /*allow_tab_lf=*/false) != std::string_view::npos ||
          !values_within_limits(member, depth + 1))
        return false;
    }
  } else if (value.is_array()) {
    if (depth + 1 > k_max_json_depth) return false;
    for (const Json& member : value) {
      if (!values_within_limits(member, depth + 1)) return false;
    }
  }
  return true;
}

// check_values for one field (a member of the event, depth 2) that also returns its serialized
// size (dump().size()). One dump() checks the UTF-8 of every string and member name in it at
// once (dump() throws on invalid UTF-8); only when that or a limit check fails does check_values
// walk it again for the message. The depth is checked before dump(), whose recursion it bounds.
Result<std::size_t> check_field_values(const Json& value, const std::string& path) {
  constexpr std::size_t k_field_depth = 2;  // the event object is depth 1
  if (!values_within_limits(value, k_field_depth - 1)) {
    if (auto s = check_values(value, path, k_field_depth - 1); !s)
      return std::unexpected(s.error());
  }
  std::optional<std::size_t> size;
  try {
    size = value.dump().size();
  } catch (const Json::type_error&) {
  }
  if (!size) {
    if (auto s = check_values(value, path, k_field_depth - 1); !s)
      return std::unexpected(s.error());
  }
  // check_values found nothing only if dump() did not throw, so size is set here.
  return size.value_or(0);
}

// RFC 3339 in UTC; returns Unix ms.
Result<std::int64_t> check_utc_time(const Json& value, std::string_view name) {
  if (!value.is_string())
    return reject(
        fmt::format("{}: expected an RFC 3339 UTC time string such as "
                    "\"2026-11-21T09:40:19Z\"; got {}",
                    name, shown(value)));
  const auto& text = value.get_ref<const std::string&>();
  // The messages quote the value JSON-escaped (shown), never raw: it may hold control characters.
  auto ms = parse_rfc3339(text);
  if (!ms)
    return reject(
        fmt::format("{}: expected an RFC 3339 time such as \"2026-11-21T09:40:19Z\"; "
                    "got {}",
                    name, shown(value)));
  if (text.back() != 'Z')
    return reject(
        fmt::format("{}: must be in UTC, ending in \"Z\" (e.g. "
                    "\"2026-11-21T09:40:19Z\"); got {}",
                    name, shown(value)));
  if (*ms < k_min_time_ms || *ms >= k_max_time_ms)
    return reject(
        fmt::format("{}: {} is outside 1970-01-01T00:00:00Z … 2099-12-31T23:59:59Z "
                    "(PROTOCOL §4 Limits)",
                    name, shown(value)));
  return ms;
}

Status check_quantity(const Json& value, std::string_view name) {
  if (!value.is_object())
    return reject(
        fmt::format("{}: expected {{\"hasNumericalValue\": number > 0, \"hasUnit\": "
                    "\"<OM2 unit>\"}}; got {}",
                    name, shown(value)));
  for (const auto& [key, member] : value.items()) {
    if (key != "hasNumericalValue" && key != "hasUnit")
      return reject(
          fmt::format("{}.{}: unknown member (expected hasNumericalValue and hasUnit)", name, key));
  }
  auto number = value.find("hasNumericalValue");
  if (number == value.end()) return reject(fmt::format("{}.hasNumericalValue: required", name));
  if (!number->is_number() || !std::isfinite(number->get<double>()) || number->get<double>() <= 0)
    return reject(
        fmt::format("{}.hasNumericalValue: expected a number > 0; got {}", name, shown(*number)));
  if (number->get<double>() < k_min_quantity || number->get<double>() > k_max_quantity)
    return reject(
        fmt::format("{}.hasNumericalValue: {} is outside {:g} … {:g} (PROTOCOL §4 "
                    "Limits)",
                    name, shown(*number), k_min_quantity, k_max_quantity));
  auto unit = value.find("hasUnit");
  if (unit == value.end()) return reject(fmt::format("{}.hasUnit: required", name));
  if (!unit->is_string() || !is_known_unit(unit->get_ref<const std::string&>()))
    return reject(fmt::format("{}.hasUnit: unknown OM2 unit {} (expected one of: {})", name,
                              shown(*unit), join(k_units)));
  return {};
}

Status check_non_empty_string(const Json& event, std::string_view name) {
  auto it = event.find(name);
  if (it == event.end()) return reject(fmt::format("{}: required", name));
  if (!it->is_string() || it->get_ref<const std::string&>().empty())
    return reject(fmt::format("{}: expected a non-empty string; got {}", name, shown(*it)));
  return {};
}

}  // namespace

bool is_known_action(std::string_view action) noexcept {
  return std::find(k_actions.begin(), k_actions.end(), action) != k_actions.end();
}

bool is_known_unit(std::string_view unit) noexcept {
  return std::find(k_units.begin(), k_units.end(), unit) != k_units.end();
}

bool is_valid_device_id(std::string_view id) noexcept {
  // ^[a-z0-9][a-z0-9._-]{0,63}$
  if (id.empty() || id.size() > 64) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(id[0])) return false;
  return std::all_of(id.begin() + 1, id.end(),
                     [&](char c) { return alnum(c) || c == '.' || c == '_' || c == '-'; });
}

namespace {

// validate_submission on `fields`; with skip_agent_fields, on the producer fields of a whole
// payload, so that validate_event_payload need not copy them into an object of their own. Every
// name looked up below is a producer field, so the agent's fields cannot change the outcome.
Status check_producer_fields(const Json& fields, bool skip_agent_fields) {
  if (!fields.is_object())
    return reject(
        fmt::format("event: expected a JSON object of PROTOCOL §4 fields; got {}", shown(fields)));
  // The size of the producer fields' object as dump() would write it: "{", the members
  // `"name":value` joined by ",", "}". The names are those of k_producer_fields, which JSON
  // writes without escapes.
  std::size_t size = 2;
  std::size_t members = 0;
  for (const auto& [key, value] : fields.items()) {
    if (contains(k_agent_fields, key)) {
      if (skip_agent_fields) continue;
      return reject(fmt::format("{}: filled by the agent; remove it", key));
    }
    if (!contains(k_producer_fields, key))
      return reject(
          fmt::format("{}: unknown field (expected one of: {})", key, join(k_producer_fields)));
    auto value_size = check_field_values(value, key);
    if (!value_size) return std::unexpected(value_size.error());
    size += (members++ == 0 ? 0 : 1) + key.size() + 3 + *value_size;
  }
  if (size > k_max_submission_bytes)
    return reject(
        fmt::format("event: {} bytes of fields; at most {} are allowed (move bulk data "
                    "out of meta)",
                    size, k_max_submission_bytes));

  auto action = fields.find("action");
  if (action == fields.end())
    return reject(fmt::format("action: required (one of: {})", join(k_actions)));
  if (!action->is_string() || !is_known_action(action->get_ref<const std::string&>()))
    return reject(fmt::format("action: unknown ValueFlows action {} (expected one of: {})",
                              shown(*action), join(k_actions)));
  const std::string& action_name = action->get_ref<const std::string&>();

  auto point = fields.find("hasPointInTime");
  auto begin = fields.find("hasBeginning");
  auto end = fields.find("hasEnd");
  if (point != fields.end() && (begin != fields.end() || end != fields.end()))
    return reject("hasPointInTime and hasBeginning/hasEnd: use one time form, not both");
  if (point == fields.end() && begin == fields.end() && end == fields.end())
    return reject(
        "hasPointInTime or hasBeginning/hasEnd: required (when the event happened, "
        "RFC 3339 UTC)");
  if (point != fields.end()) {
    if (auto t = check_utc_time(*point, "hasPointInTime"); !t) return std::unexpected(t.error());
  }
  std::int64_t begin_ms = std::numeric_limits<std::int64_t>::min();
  std::int64_t end_ms = std::numeric_limits<std::int64_t>::max();
  if (begin != fields.end()) {
    auto t = check_utc_time(*begin, "hasBeginning");
    if (!t) return std::unexpected(t.error());
    begin_ms = *t;
  }
  if (end != fields.end()) {
    auto t = check_utc_time(*end, "hasEnd");
    if (!t) return std::unexpected(t.error());
    end_ms = *t;
  }
  if (begin_ms > end_ms)
    return reject(fmt::format("hasBeginning: {} is after hasEnd {}", shown(*begin), shown(*end)));

  for (std::string_view name : k_reference_fields) {
    if (fields.contains(name)) {
      if (auto s = check_non_empty_string(fields, name); !s) return s;
    }
  }
  if (auto note = fields.find("note"); note != fields.end() && !note->is_string())
    return reject(fmt::format("note: expected a string; got {}", shown(*note)));
  if (auto classes = fields.find("resourceClassifiedAs"); classes != fields.end()) {
    if (!classes->is_array())
      return reject(fmt::format("resourceClassifiedAs: expected an array of strings; got {}",
                                shown(*classes)));
    for (std::size_t i = 0; i < classes->size(); ++i) {
      const Json& item = (*classes)[i];
      if (!item.is_string() || item.get_ref<const std::string&>().empty())
        return reject(fmt::format("resourceClassifiedAs[{}]: expected a non-empty string; got {}",
                                  i, shown(item)));
    }
  }
  for (std::string_view name : {"resourceQuantity", "effortQuantity"}) {
    if (auto it = fields.find(name); it != fields.end()) {
      if (auto s = check_quantity(*it, name); !s) return s;
    }
  }
  if (auto meta = fields.find("meta"); meta != fields.end() && !meta->is_object())
    return reject(fmt::format("meta: expected an object of driver facts; got {}", shown(*meta)));

  if (contains(k_effort_actions, action_name) && !fields.contains("effortQuantity"))
    return reject(fmt::format("effortQuantity: required for action \"{}\"", action_name));
  if (contains(k_resource_actions, action_name)) {
    if (!fields.contains("resourceQuantity"))
      return reject(fmt::format("resourceQuantity: required for action \"{}\"", action_name));
    if (!fields.contains("resourceInventoriedAs") && !fields.contains("resourceConformsTo"))
      return reject(fmt::format(
          "resourceInventoriedAs or resourceConformsTo: required for action \"{}\"", action_name));
  }
  return {};
}

}  // namespace

Status validate_submission(const nlohmann::ordered_json& fields) {
  return check_producer_fields(fields, /*skip_agent_fields=*/false);
}

std::string make_event_payload(const EventStamp& stamp, const nlohmann::ordered_json& fields,
                               const EventSource& source) {
  Json event = Json::object();
  event["v"] = 1;
  event["id"] = stamp.id;
  event["device"] = stamp.device;
  event["stream"] = stamp.stream;
  event["seq"] = stamp.seq;
  event["prev"] = stamp.prev.empty() ? Json(nullptr) : Json(stamp.prev);
  event["recorded"] = format_rfc3339_ms(stamp.recorded_unix_ms);
  event["clock"] = stamp.clock == ClockSync::synced ? "synced" : "unsynced";
  if (fields.is_object()) {
    for (const auto& [key, value] : fields.items()) {
      // validate_submission refuses these; skipping them here means an unvalidated caller still
      // cannot overwrite a stamp field in place.
      if (contains(k_agent_fields, key)) continue;
      event[key] = value;
    }
  }
  Json src = Json::object();
  src["driver"] = source.driver;
  src["instance"] = source.instance;
  if (!source.ref.empty()) src["ref"] = source.ref;
  event["source"] = std::move(src);
  // `replace` keeps this from throwing on invalid UTF-8 that an unvalidated caller passed in.
  return event.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Status validate_event_payload(const nlohmann::ordered_json& event) {
  if (!event.is_object())
    return reject(fmt::format("event: expected a JSON object; got {}", shown(event)));
  for (std::string_view name : k_agent_fields) {
    if (!event.contains(name)) return reject(fmt::format("{}: required", name));
  }
  const Json& v = event.at("v");
  if (!v.is_number_integer() || v.get<std::int64_t>() != 1)
    return reject(fmt::format("v: expected 1 (protocol version); got {}", shown(v)));
  for (std::string_view name : {"id", "stream"}) {
    const Json& value = event.at(name);
    if (!value.is_string() || !is_valid_ulid(value.get_ref<const std::string&>()))
      return reject(fmt::format("{}: expected a ULID (26 Crockford base32 characters); got {}",
                                name, shown(value)));
  }
  const Json& device = event.at("device");
  if (!device.is_string() || !is_valid_device_id(device.get_ref<const std::string&>()))
    return reject(
        fmt::format("device: expected a device id matching ^[a-z0-9][a-z0-9._-]{{0,63}}$; "
                    "got {}",
                    shown(device)));

  const Json& seq = event.at("seq");
  const bool seq_ok =
      (seq.is_number_unsigned() && seq.get<std::uint64_t>() >= 1 &&
       seq.get<std::uint64_t>() <= static_cast<std::uint64_t>(k_max_json_integer)) ||
      (seq.is_number_integer() && !seq.is_number_unsigned() && seq.get<std::int64_t>() >= 1 &&
       seq.get<std::int64_t>() <= k_max_json_integer);
  if (!seq_ok)
    return reject(fmt::format("seq: expected an integer from 1 to 2^53 − 1; got {}", shown(seq)));
  const std::int64_t seq_value = seq.get<std::int64_t>();

  const Json& prev = event.at("prev");
  if (seq_value == 1) {
    if (!prev.is_null())
      return reject(
          fmt::format("prev: must be null for seq 1 (the start of a stream); got {}", shown(prev)));
  } else {
    bool prev_ok = prev.is_string() && prev.get_ref<const std::string&>().size() == 43;
    if (prev_ok) {
      auto digest = base64url_decode(prev.get_ref<const std::string&>());
      prev_ok = digest && digest->size() == 32;
    }
    if (!prev_ok)
      return reject(
          fmt::format("prev: expected the base64url SHA-256 (43 characters) of seq {}'s "
                      "signing input; got {}",
                      seq_value - 1, shown(prev)));
  }

  if (auto t = check_utc_time(event.at("recorded"), "recorded"); !t)
    return std::unexpected(t.error());
  // The agent writes `recorded` in one form (format_rfc3339_ms): 2026-11-21T09:40:19.123Z.
  if (const auto& text = event.at("recorded").get_ref<const std::string&>();
      text.size() != 24 || text[10] != 'T' || text[19] != '.')
    return reject(
        fmt::format("recorded: expected RFC 3339 UTC with milliseconds, as "
                    "\"2026-11-21T09:40:19.123Z\"; got {}",
                    shown(event.at("recorded"))));
  const Json& clock = event.at("clock");
  if (clock != "synced" && clock != "unsynced")
    return reject(fmt::format("clock: expected \"synced\" or \"unsynced\"; got {}", shown(clock)));

  const Json& source = event.at("source");
  if (!source.is_object())
    return reject(
        fmt::format("source: expected {{\"driver\",\"instance\",\"ref\"}}; got {}", shown(source)));
  for (const auto& [key, value] : source.items()) {
    if (key != "driver" && key != "instance" && key != "ref")
      return reject(fmt::format("source.{}: unknown member (expected driver, instance, ref)", key));
  }
  for (std::string_view name : {"driver", "instance"}) {
    if (auto s = check_non_empty_string(source, name); !s)
      return reject("source." + s.error().message);
  }
  if (auto ref = source.find("ref"); ref != source.end() && !ref->is_string())
    return reject(fmt::format("source.ref: expected a string; got {}", shown(*ref)));
  if (auto s = check_field_values(source, "source"); !s) return std::unexpected(s.error());

  return check_producer_fields(event, /*skip_agent_fields=*/true);
}

}  // namespace agent
