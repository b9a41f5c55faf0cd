// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/query.hpp>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/text.hpp>
#include <reflow/core/units.hpp>

namespace ingest {
namespace {

using agent::ErrorCode;
using agent::fail;
using Json = nlohmann::ordered_json;

// Client-supplied bytes may be anything; a dump must never throw.
std::string dump_safe(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Json parse_payload(std::string_view payload) {
  Json parsed = Json::parse(payload, nullptr, false);
  return parsed.is_object() ? parsed : Json::object();
}

std::string string_field(const Json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || it->is_null()) return {};
  if (it->is_string()) return it->get<std::string>();
  return dump_safe(*it);
}

std::string json_text(const Json& value) {
  if (value.is_null()) return {};
  if (value.is_string()) return value.get<std::string>();
  return dump_safe(value);
}

std::pair<std::string, std::string> quantity_fields(const Json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || !it->is_object()) return {};
  std::string value, unit;
  if (auto v = it->find("hasNumericalValue"); v != it->end()) value = json_text(*v);
  if (auto u = it->find("hasUnit"); u != it->end()) unit = json_text(*u);
  return {value, unit};
}

std::string rfc3339_or_null_text(std::optional<std::int64_t> unix_ms) {
  return unix_ms ? agent::format_rfc3339_ms(*unix_ms) : "-";
}

Json rfc3339_or_null(std::optional<std::int64_t> unix_ms) {
  return unix_ms ? Json(agent::format_rfc3339_ms(*unix_ms)) : Json(nullptr);
}

}  // namespace

Result<std::int64_t> parse_since(std::string_view text) {
  auto is_date = [](std::string_view t) {
    if (t.size() != 10 || t[4] != '-' || t[7] != '-') return false;
    for (std::size_t i : {0, 1, 2, 3, 5, 6, 8, 9})
      if (!std::isdigit(static_cast<unsigned char>(t[i]))) return false;
    return true;
  };
  auto parsed = is_date(text) ? agent::parse_rfc3339(fmt::format("{}T00:00:00Z", text))
                              : agent::parse_rfc3339(text);
  if (!parsed)
    return fail(ErrorCode::invalid_argument,
                fmt::format("--since: expected an RFC 3339 time (2026-11-01T00:00:00Z) or a date "
                            "(2026-11-01, UTC); got \"{}\"",
                            text));
  return *parsed;
}

// --- events ---

const std::vector<std::string>& event_csv_columns() {
  static const std::vector<std::string> k_columns = {"device",
                                                     "stream",
                                                     "seq",
                                                     "id",
                                                     "recorded",
                                                     "action",
                                                     "hasPointInTime",
                                                     "hasBeginning",
                                                     "hasEnd",
                                                     "provider",
                                                     "receiver",
                                                     "resourceInventoriedAs",
                                                     "toResourceInventoriedAs",
                                                     "resourceConformsTo",
                                                     "resourceQuantity",
                                                     "resourceUnit",
                                                     "effortQuantity",
                                                     "effortUnit",
                                                     "inputOf",
                                                     "outputOf",
                                                     "atLocation",
                                                     "toLocation",
                                                     "note"};
  return k_columns;
}

std::string event_csv_row(const StoredEvent& event) {
  const Json payload = parse_payload(event.payload);
  std::string recorded = string_field(payload, "recorded");
  if (recorded.empty()) recorded = agent::format_rfc3339_ms(event.recorded_unix_ms);
  auto [resource_value, resource_unit] = quantity_fields(payload, "resourceQuantity");
  auto [effort_value, effort_unit] = quantity_fields(payload, "effortQuantity");
  const std::vector<std::string> fields = {
      event.device,
      event.stream,
      std::to_string(event.seq),
      event.id,
      recorded,
      event.action.empty() ? string_field(payload, "action") : event.action,
      string_field(payload, "hasPointInTime"),
      string_field(payload, "hasBeginning"),
      string_field(payload, "hasEnd"),
      string_field(payload, "provider"),
      string_field(payload, "receiver"),
      string_field(payload, "resourceInventoriedAs"),
      string_field(payload, "toResourceInventoriedAs"),
      string_field(payload, "resourceConformsTo"),
      resource_value,
      resource_unit,
      effort_value,
      effort_unit,
      string_field(payload, "inputOf"),
      string_field(payload, "outputOf"),
      string_field(payload, "atLocation"),
      string_field(payload, "toLocation"),
      string_field(payload, "note"),
  };
  std::string row;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) row += ',';
    row += agent::csv_field(fields[i]);
  }
  return row;
}

std::string event_jsonl_line(const StoredEvent& event) {
  std::string line = event.payload;
  std::replace(line.begin(), line.end(), '\n', ' ');
  std::replace(line.begin(), line.end(), '\r', ' ');
  return line;
}

agent::Status write_events(Store& store, const EventFilter& filter, EventFormat format,
                           std::ostream& out) {
  if (format == EventFormat::csv) {
    const auto& columns = event_csv_columns();
    for (std::size_t i = 0; i < columns.size(); ++i)
      out << (i > 0 ? "," : "") << columns[i];
    out << "\r\n";
  }
  auto status = store.for_each_event(filter, [&](const StoredEvent& event) {
    if (format == EventFormat::csv)
      out << event_csv_row(event) << "\r\n";
    else
      out << event_jsonl_line(event) << '\n';
    return static_cast<bool>(out);
  });
  if (!status) return status;
  out.flush();
  if (!out)
    return fail(ErrorCode::io, "cannot write the events to the output (disk full or pipe closed?)");
  return {};
}

// --- rejections ---

std::string rejection_json_line(const StoredRejection& rejection) {
  Json line;
  line["received"] = agent::format_rfc3339_ms(rejection.received_unix_ms);
  line["last_seen"] = agent::format_rfc3339_ms(rejection.last_seen_unix_ms);
  line["count"] = rejection.count;
  line["device"] = rejection.device;
  line["topic"] = rejection.topic;
  line["reason"] = std::string(to_string(rejection.reason));
  line["detail"] = rejection.detail;
  line["stream"] = rejection.stream ? Json(*rejection.stream) : Json(nullptr);
  line["seq"] = rejection.seq ? Json(*rejection.seq) : Json(nullptr);
  line["envelope"] = rejection.envelope;
  return dump_safe(line);
}

agent::Status write_rejections(Store& store, std::optional<std::string_view> device,
                               std::ostream& out) {
  auto status = store.for_each_rejection(device, [&](const StoredRejection& rejection) {
    out << rejection_json_line(rejection) << '\n';
    return static_cast<bool>(out);
  });
  if (!status) return status;
  out.flush();
  if (!out) return fail(ErrorCode::io, "cannot write the rejections to the output");
  return {};
}

// --- stats ---

nlohmann::ordered_json device_stats_json(const DeviceStats& stats) {
  Json out;
  out["device"] = stats.device;
  out["registered"] = stats.registered;
  out["revoked"] = stats.revoked;
  out["last_seen"] = rfc3339_or_null(stats.last_seen_unix_ms);
  out["events"] = stats.events;
  out["gaps"] = stats.gaps;
  out["chain"] = stats.chain_intact ? "intact" : "broken";
  out["rejections"] = Json::object();
  for (const auto& [reason, count] : stats.rejections)
    out["rejections"][reason] = count;
  out["rejections_before_registration"] = Json::object();
  for (const auto& [reason, count] : stats.rejections_before_registration)
    out["rejections_before_registration"][reason] = count;
  out["rejections_not_kept"] = stats.rejections_not_kept;
  out["streams"] = Json::array();
  for (const auto& s : stats.streams) {
    Json stream;
    stream["stream"] = s.stream;
    stream["events"] = s.events;
    stream["contiguous"] = s.contiguous;
    stream["max_seq"] = s.max_seq;
    stream["gaps"] = s.gaps;
    stream["chain"] = s.chain_intact ? "intact" : "broken";
    stream["first_seen"] = agent::format_rfc3339_ms(s.first_seen_unix_ms);
    stream["last_seen"] = agent::format_rfc3339_ms(s.last_seen_unix_ms);
    out["streams"].push_back(std::move(stream));
  }
  return out;
}

std::string format_stats_text(const std::vector<DeviceStats>& stats) {
  if (stats.empty()) return "no devices\n";
  std::vector<std::vector<std::string>> rows;
  rows.push_back(
      {"DEVICE", "STATUS", "LAST SEEN", "EVENTS", "GAPS", "CHAIN", "STREAMS", "REJECTIONS"});
  for (const auto& s : stats) {
    std::string rejections;
    for (const auto& [reason, count] : s.rejections)
      rejections += fmt::format("{}{}={}", rejections.empty() ? "" : ",", reason, count);
    std::string before;
    for (const auto& [reason, count] : s.rejections_before_registration)
      before += fmt::format("{}{}={}", before.empty() ? "" : ",", reason, count);
    if (!before.empty())
      rejections += fmt::format("{}{} before registration", rejections.empty() ? "" : "; ", before);
    if (s.rejections_not_kept > 0)
      rejections += fmt::format(" ({} not kept)", s.rejections_not_kept);
    // An unregistered device's name is whatever topic it published on: escaped.
    rows.push_back({agent::printable_text(s.device),
                    s.revoked ? "revoked" : (s.registered ? "registered" : "unregistered"),
                    rfc3339_or_null_text(s.last_seen_unix_ms), std::to_string(s.events),
                    std::to_string(s.gaps), s.chain_intact ? "intact" : "broken",
                    std::to_string(s.streams.size()), rejections.empty() ? "-" : rejections});
  }
  return agent::aligned_table(rows);
}

// --- trace ---

namespace {

struct IndexedEvent {
  const StoredEvent* stored = nullptr;
  Json payload;
  std::int64_t time_unix_ms = 0;  // the ordering key: when it happened
};

bool is_one_of(std::string_view action, std::initializer_list<std::string_view> set) {
  return std::find(set.begin(), set.end(), action) != set.end();
}

// Walks the in-memory indexes; `m_expanded` keeps each resource and process to one expansion.
class Tracer {
 public:
  explicit Tracer(const std::vector<StoredEvent>& events) {
    m_events.reserve(events.size());
    for (const auto& stored : events) {
      IndexedEvent e;
      e.stored = &stored;
      e.payload = parse_payload(stored.payload);
      e.time_unix_ms = stored.recorded_unix_ms;
      for (const char* field : {"hasPointInTime", "hasBeginning", "hasEnd"}) {
        auto text = string_field(e.payload, field);
        if (text.empty()) continue;
        if (auto t = agent::parse_rfc3339(text)) {
          e.time_unix_ms = *t;
          break;
        }
      }
      m_events.push_back(std::move(e));
    }
    std::sort(m_events.begin(), m_events.end(), [](const IndexedEvent& a, const IndexedEvent& b) {
      return std::tuple(a.time_unix_ms, a.stored->recorded_unix_ms, a.stored->id) <
             std::tuple(b.time_unix_ms, b.stored->recorded_unix_ms, b.stored->id);
    });
    // Indexes hold positions in the sorted vector, so each list is in time order.
    for (std::size_t i = 0; i < m_events.size(); ++i) {
      const Json& p = m_events[i].payload;
      auto resource = string_field(p, "resourceInventoriedAs");
      auto to_resource = string_field(p, "toResourceInventoriedAs");
      if (!resource.empty()) m_by_resource[resource].push_back(i);
      if (!to_resource.empty() && to_resource != resource) m_by_resource[to_resource].push_back(i);
      auto input_of = string_field(p, "inputOf");
      if (!input_of.empty()) m_inputs_of[input_of].push_back(i);
    }
    for (auto& [_, list] : m_by_resource)
      std::sort(list.begin(), list.end());
  }

  bool knows_resource(const std::string& resource) const {
    return m_by_resource.contains(resource);
  }

  TraceNode resource_node(const std::string& resource) {
    TraceNode node;
    node.kind = TraceNode::Kind::resource;
    node.id = resource;
    if (!m_expanded_resources.insert(resource).second) {
      node.repeated = true;
      return node;
    }
    if (auto it = m_by_resource.find(resource); it != m_by_resource.end())
      for (std::size_t i : it->second)
        node.children.push_back(event_node(i, resource));
    return node;
  }

 private:
  TraceNode event_leaf(std::size_t index) const {
    const IndexedEvent& e = m_events[index];
    TraceNode node;
    node.kind = TraceNode::Kind::event;
    node.id = e.stored->id;
    node.event = e.payload;
    node.device = e.stored->device;
    return node;
  }

  // An event in the life of `resource`.
  TraceNode event_node(std::size_t index, const std::string& resource) {
    TraceNode node = event_leaf(index);
    const Json& p = m_events[index].payload;
    auto output_of = string_field(p, "outputOf");
    auto source = string_field(p, "resourceInventoriedAs");
    auto target = string_field(p, "toResourceInventoriedAs");
    if (!output_of.empty()) {
      node.children.push_back(process_node(output_of));
    } else if (target == resource && !source.empty() && source != resource) {
      // A transfer or move into this resource from another one: that one's history is ours.
      node.children.push_back(resource_node(source));
    }
    return node;
  }

  TraceNode process_node(const std::string& process) {
    TraceNode node;
    node.kind = TraceNode::Kind::process;
    node.id = process;
    if (!m_expanded_processes.insert(process).second) {
      node.repeated = true;
      return node;
    }
    auto it = m_inputs_of.find(process);
    if (it == m_inputs_of.end()) return node;
    for (std::size_t i : it->second) {
      TraceNode input = event_leaf(i);
      const Json& p = m_events[i].payload;
      auto consumed = string_field(p, "resourceInventoriedAs");
      // Material that went into the output: follow it. A tool that was only used (or a document
      // cited) stays a leaf; its own life is not this product's history.
      if (!consumed.empty() && is_one_of(string_field(p, "action"), {"consume", "accept"}))
        input.children.push_back(resource_node(consumed));
      node.children.push_back(std::move(input));
    }
    return node;
  }

  std::vector<IndexedEvent> m_events;
  std::map<std::string, std::vector<std::size_t>> m_by_resource;
  std::map<std::string, std::vector<std::size_t>> m_inputs_of;
  std::set<std::string> m_expanded_resources;
  std::set<std::string> m_expanded_processes;
};

std::string quantity_text(const Json& event, const char* name) {
  auto [value, unit] = quantity_fields(event, name);
  if (value.empty()) return {};
  return unit.empty() ? value : value + " " + unit;
}

void append_trace_text(const TraceNode& node, int depth, std::string& out) {
  std::string line(static_cast<std::size_t>(depth) * 2, ' ');
  switch (node.kind) {
    case TraceNode::Kind::resource:
      line += "resource " + node.id;
      break;
    case TraceNode::Kind::process:
      line += "process " + node.id;
      break;
    case TraceNode::Kind::event: {
      const Json& e = node.event;
      std::string time = string_field(e, "hasPointInTime");
      if (time.empty())
        time = fmt::format("{}..{}", string_field(e, "hasBeginning"), string_field(e, "hasEnd"));
      line += time + "  " + string_field(e, "action");
      if (auto q = quantity_text(e, "resourceQuantity"); !q.empty()) line += "  " + q;
      if (auto q = quantity_text(e, "effortQuantity"); !q.empty()) line += "  effort " + q;
      // Who handed it over to whom: for an intake, the provider is where the material came from.
      if (auto a = string_field(e, "provider"); !a.empty()) line += "  provider " + a;
      if (auto a = string_field(e, "receiver"); !a.empty()) line += "  receiver " + a;
      line += "  device " + node.device + "  event " + node.id;
      break;
    }
  }
  if (node.repeated) line += "  (see above)";
  // Ids, references and times come from devices: escaped, they cannot forge a line.
  out += agent::printable_text(line) + "\n";
  for (const auto& child : node.children)
    append_trace_text(child, depth + 1, out);
}

}  // namespace

Result<TraceNode> trace_resource(const std::vector<StoredEvent>& events,
                                 std::string_view resource) {
  Tracer tracer(events);
  std::string id(resource);
  if (!tracer.knows_resource(id))
    return fail(ErrorCode::not_found,
                fmt::format("no stored event names resource \"{}\" (as resourceInventoriedAs or "
                            "toResourceInventoriedAs); check the reference with `reflow-ingest "
                            "events --format csv`",
                            resource));
  return tracer.resource_node(id);
}

Result<std::vector<StoredEvent>> collect_events(Store& store, const EventFilter& filter) {
  std::vector<StoredEvent> events;
  auto status = store.for_each_event(filter, [&](const StoredEvent& event) {
    events.push_back(event);
    return true;
  });
  if (!status) return std::unexpected(status.error());
  return events;
}

Result<TraceNode> trace_resource(Store& store, std::string_view resource) {
  auto events = collect_events(store, EventFilter{});
  if (!events) return std::unexpected(events.error());
  return trace_resource(*events, resource);
}

std::string format_trace_text(const TraceNode& root) {
  std::string out;
  append_trace_text(root, 0, out);
  return out;
}

nlohmann::ordered_json trace_to_json(const TraceNode& root) {
  Json out;
  switch (root.kind) {
    case TraceNode::Kind::resource:
      out["type"] = "resource";
      break;
    case TraceNode::Kind::process:
      out["type"] = "process";
      break;
    case TraceNode::Kind::event:
      out["type"] = "event";
      break;
  }
  out["id"] = root.id;
  if (root.kind == TraceNode::Kind::event) {
    out["device"] = root.device;
    for (const char* field :
         {"action", "hasPointInTime", "hasBeginning", "hasEnd", "resourceQuantity",
          "effortQuantity", "resourceInventoriedAs", "toResourceInventoriedAs",
          "resourceConformsTo", "inputOf", "outputOf", "provider", "receiver", "atLocation",
          "toLocation", "note", "recorded"}) {
      if (auto it = root.event.find(field); it != root.event.end()) out[field] = *it;
    }
  }
  if (root.repeated) out["repeated"] = true;
  out["children"] = Json::array();
  for (const auto& child : root.children)
    out["children"].push_back(trace_to_json(child));
  return out;
}

}  // namespace ingest
