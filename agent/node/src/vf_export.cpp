// SPDX-License-Identifier: AGPL-3.0-or-later
// The stored events as zenflows createProcess / createEconomicEvent requests (vf_export.hpp).
#include <reflow/node/vf_export.hpp>

#include <algorithm>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/json_strict.hpp>
#include <reflow/core/units.hpp>
#include <reflow/core/zenflows_rules.hpp>
#include <reflow/node/query.hpp>

namespace ingest {
namespace {

using Json = nlohmann::ordered_json;

// zenflows src/zenflows/vf/process/type.ex (ProcessResponse) and economic_event/type.ex.
constexpr std::string_view k_create_process =
    "mutation($process: ProcessCreateParams!) "
    "{ createProcess(process: $process) { process { id } } }";
constexpr std::string_view k_create_economic_event =
    "mutation($event: EconomicEventCreateParams!, "
    "$newInventoriedResource: EconomicResourceCreateParams) "
    "{ createEconomicEvent(event: $event, newInventoriedResource: $newInventoriedResource) "
    "{ economicEvent { id resourceInventoriedAs { id } } } }";

struct ParsedEvent {
  const StoredEvent* stored = nullptr;
  Json payload;
  std::int64_t time_unix_ms = 0;
};

std::int64_t time_of(const std::string& text, std::int64_t fallback) {
  if (text.empty()) return fallback;
  auto t = agent::parse_rfc3339(text);
  return t ? *t : fallback;
}

bool action_is_one_of(std::string_view action, std::initializer_list<std::string_view> set) {
  return std::find(set.begin(), set.end(), action) != set.end();
}

// Collects references without a server id, each once.
class Resolver {
 public:
  explicit Resolver(const IngestConfig& config) : m_config(config) {}

  std::optional<std::string> server_id(const std::string& reference) const {
    auto it = m_config.ids.find(reference);
    if (it == m_config.ids.end()) return std::nullopt;
    return it->second;
  }

  // The server id, or the local reference itself (reported missing).
  std::string id_or_missing(const std::string& kind, const std::string& field,
                            const std::string& reference, const std::string& event_id) {
    if (auto id = server_id(reference)) return *id;
    report(kind, field, reference, event_id);
    return reference;
  }

  std::string unit(const std::string& om2, const std::string& field, const std::string& event_id) {
    auto it = m_config.units.find(om2);
    if (it != m_config.units.end()) return it->second;
    report("unit", field, om2, event_id);
    return om2;
  }

  // Once per export in missing(); every time into the current event's list, when there is one.
  void report(const std::string& kind, const std::string& field, const std::string& reference,
              const std::string& event_id) {
    MissingReference m{kind, reference, event_id, field};
    if (m_event_missing) m_event_missing->push_back(m);
    if (m_reported.insert({kind, reference}).second) m_missing.push_back(std::move(m));
  }

  // Where report() also lists what is missing, for one event's request; nullptr for none.
  void collect_into(std::vector<MissingReference>* event_missing) {
    m_event_missing = event_missing;
  }

  std::vector<MissingReference> take_missing() { return std::move(m_missing); }

 private:
  const IngestConfig& m_config;
  std::set<std::pair<std::string, std::string>> m_reported;
  std::vector<MissingReference> m_missing;
  std::vector<MissingReference>* m_event_missing = nullptr;
};

struct ProcessSpan {
  std::optional<std::pair<std::int64_t, std::string>> begin;
  std::optional<std::pair<std::int64_t, std::string>> end;
  std::vector<std::string> devices;
};

Json measure(const Json& quantity, const std::string& field, Resolver& resolver,
             const std::string& event_id) {
  Json out = Json::object();
  if (auto v = quantity.find("hasNumericalValue"); v != quantity.end())
    out["hasNumericalValue"] = *v;
  if (auto u = quantity.find("hasUnit"); u != quantity.end() && u->is_string())
    out["hasUnit"] = resolver.unit(u->get<std::string>(), field + ".hasUnit", event_id);
  return out;
}

std::string provenance_note(const ParsedEvent& e) {
  const StoredEvent& s = *e.stored;
  std::string source;
  if (auto it = e.payload.find("source"); it != e.payload.end() && it->is_object()) {
    source = fmt::format(", source {}/{}", agent::string_at(*it, {"driver"}),
                         agent::string_at(*it, {"instance"}));
    if (auto ref = agent::string_at(*it, {"ref"}); !ref.empty()) source += " " + ref;
  }
  auto provenance = fmt::format("(reflow event {}, device {}, stream {} seq {}{})", s.id, s.device,
                                s.stream, s.seq, source);
  auto note = agent::string_at(e.payload, {"note"});
  return note.empty() ? provenance : note + " " + provenance;
}

// Pass 1: the events whose payload is a JSON object, each with the time it happened (its point in
// time or beginning, else when it was recorded), in time order: a resource is produced before it
// is consumed, and zenflows checks that.
std::vector<ParsedEvent> parse_in_time_order(const std::vector<StoredEvent>& events) {
  std::vector<ParsedEvent> parsed;
  parsed.reserve(events.size());
  for (const auto& stored : events) {
    ParsedEvent e;
    e.stored = &stored;
    e.payload = Json::parse(stored.payload, nullptr, false);
    if (!e.payload.is_object()) continue;
    // An unknown badge's sighting (PROTOCOL §4.1) stays at the node, for enrolment.
    if (agent::string_at(e.payload, {"meta", "badge"}) == "unknown") continue;
    e.time_unix_ms = stored.recorded_unix_ms;
    for (const char* field : {"hasPointInTime", "hasBeginning", "hasEnd"}) {
      auto text = agent::string_at(e.payload, {field});
      if (!text.empty()) {
        e.time_unix_ms = time_of(text, stored.recorded_unix_ms);
        break;
      }
    }
    parsed.push_back(std::move(e));
  }
  std::sort(parsed.begin(), parsed.end(), [](const ParsedEvent& a, const ParsedEvent& b) {
    return std::tuple(a.time_unix_ms, a.stored->recorded_unix_ms, a.stored->id) <
           std::tuple(b.time_unix_ms, b.stored->recorded_unix_ms, b.stored->id);
  });
  return parsed;
}

// Pass 2: each process the export creates (one the config does not map to a server id), with its
// span over the exported events and the devices that recorded them, for its createProcess.
std::map<std::string, ProcessSpan> process_spans(const std::vector<ParsedEvent>& parsed,
                                                 const Resolver& resolver) {
  std::map<std::string, ProcessSpan> spans;
  for (const auto& e : parsed) {
    for (const char* field : {"inputOf", "outputOf"}) {
      auto process = agent::string_at(e.payload, {field});
      if (process.empty() || resolver.server_id(process)) continue;
      ProcessSpan& span = spans[process];
      auto point = agent::string_at(e.payload, {"hasPointInTime"});
      auto begin = point.empty() ? agent::string_at(e.payload, {"hasBeginning"}) : point;
      auto end = point.empty() ? agent::string_at(e.payload, {"hasEnd"}) : point;
      if (!begin.empty()) {
        auto t = time_of(begin, e.time_unix_ms);
        if (!span.begin || t < span.begin->first) span.begin = {t, begin};
      }
      if (!end.empty()) {
        auto t = time_of(end, e.time_unix_ms);
        if (!span.end || t > span.end->first) span.end = {t, end};
      }
      if (std::find(span.devices.begin(), span.devices.end(), e.stored->device) ==
          span.devices.end())
        span.devices.push_back(e.stored->device);
    }
  }
  return spans;
}

// Pass 3: the requests, one event at a time, in time order. Remembers which processes and
// resources an earlier request of this export creates, so that later events refer to them.
class RequestBuilder {
 public:
  // `parsed`: the events in the order add() will get them.
  RequestBuilder(const IngestConfig& config, const std::vector<ParsedEvent>& parsed)
      : m_config(config), m_resolver(config), m_spans(process_spans(parsed, m_resolver)) {}

  // Appends the createEconomicEvent of `e`, after the createProcess of a process it is the first
  // to name.
  void add(const ParsedEvent& e) {
    const Json& p = e.payload;
    const std::string& event_id = e.stored->id;
    const std::string action = agent::string_at(p, {"action"});
    VfRequest request;
    request.kind = VfRequestKind::create_economic_event;
    request.event_id = event_id;
    request.device = e.stored->device;
    request.stream = e.stored->stream;
    request.seq = e.stored->seq;
    m_resolver.collect_into(&request.missing);
    Json event = Json::object();
    event["action"] = action;

    for (const char* field : {"provider", "receiver"}) {
      auto agent = agent::string_at(p, {field});
      if (!agent.empty())
        event[field] = m_resolver.id_or_missing("agent", field, agent, event_id);
      else if (!m_config.default_agent.empty())
        event[field] = m_config.default_agent;
      else
        m_resolver.report("agent", field, fmt::format("(no {}: set [export] default_agent)", field),
                          event_id);
    }

    resolve_processes(p, event, request);
    std::optional<Json> new_resource = resolve_resources(p, action, event, request);
    if (auto it = p.find("resourceClassifiedAs"); it != p.end() && it->is_array())
      event["resourceClassifiedAs"] = *it;
    for (const char* field : {"resourceQuantity", "effortQuantity"})
      if (auto it = p.find(field); it != p.end() && it->is_object())
        event[field] = measure(*it, field, m_resolver, event_id);
    for (const char* field : {"hasPointInTime", "hasBeginning", "hasEnd"})
      if (auto value = agent::string_at(p, {field}); !value.empty()) event[field] = value;
    for (const char* field : {"atLocation", "toLocation"})
      if (auto location = agent::string_at(p, {field}); !location.empty())
        event[field] = m_resolver.id_or_missing("location", field, location, event_id);
    event["note"] = provenance_note(e);

    m_resolver.collect_into(nullptr);
    request.variables["event"] = std::move(event);
    if (new_resource) request.variables["newInventoriedResource"] = std::move(*new_resource);
    m_out.requests.push_back(std::move(request));
  }

  // The createEconomicEvent of the event add() took last.
  const VfRequest& last_event_request() const { return m_out.requests.back(); }

  VfExport finish() {
    m_out.missing = m_resolver.take_missing();
    return std::move(m_out);
  }

 private:
  // inputOf/outputOf: the server's id, or the local reference of a process this export creates
  // (its createProcess goes first; the poster fills in the server's id).
  void resolve_processes(const Json& p, Json& event, VfRequest& request) {
    for (const char* field : {"inputOf", "outputOf"}) {
      auto process = agent::string_at(p, {field});
      if (process.empty()) continue;
      if (auto id = m_resolver.server_id(process)) {
        event[field] = *id;
        continue;
      }
      if (m_created_processes.insert(process).second) {
        VfRequest create;
        create.kind = VfRequestKind::create_process;
        create.process = process;
        create.creates = process;
        Json params = Json::object();
        params["name"] = process;
        const ProcessSpan& span = m_spans[process];
        params["note"] =
            fmt::format("reflow process {} recorded by {}", process, fmt::join(span.devices, ", "));
        if (span.begin) params["hasBeginning"] = span.begin->second;
        if (span.end) params["hasEnd"] = span.end->second;
        create.variables["process"] = std::move(params);
        m_out.requests.push_back(std::move(create));
      }
      event[field] = process;
      request.pending[field] = process;
    }
  }

  // resourceInventoriedAs, toResourceInventoriedAs and resourceConformsTo. Returns the
  // newInventoriedResource of a produce or raise that creates its resource.
  std::optional<Json> resolve_resources(const Json& p, const std::string& action, Json& event,
                                        VfRequest& request) {
    const std::string& event_id = request.event_id;
    // zenflows: use/cite/produce/raise take resourceInventoriedAs XOR resourceConformsTo.
    const bool exclusive = action_is_one_of(action, {"use", "cite", "produce", "raise"});
    const bool may_create = action_is_one_of(action, {"produce", "raise"});
    auto resource = agent::string_at(p, {"resourceInventoriedAs"});
    auto spec = agent::string_at(p, {"resourceConformsTo"});
    bool resource_known = false;
    std::optional<Json> new_resource;
    if (!resource.empty()) {
      if (auto id = m_resolver.server_id(resource)) {
        event["resourceInventoriedAs"] = *id;
        resource_known = true;
      } else if (m_created_resources.contains(resource)) {
        event["resourceInventoriedAs"] = resource;
        request.pending["resourceInventoriedAs"] = resource;
        resource_known = true;
      } else if (may_create && !spec.empty()) {
        Json params = Json::object();
        params["name"] = resource;
        params["trackingIdentifier"] = resource;
        new_resource = std::move(params);
        request.creates = resource;
        m_created_resources.insert(resource);
      } else {
        event["resourceInventoriedAs"] =
            m_resolver.id_or_missing("resource", "resourceInventoriedAs", resource, event_id);
        resource_known = true;
      }
    }
    auto to_resource = agent::string_at(p, {"toResourceInventoriedAs"});
    if (!to_resource.empty()) {
      if (auto id = m_resolver.server_id(to_resource)) {
        event["toResourceInventoriedAs"] = *id;
      } else if (m_created_resources.contains(to_resource)) {
        event["toResourceInventoriedAs"] = to_resource;
        request.pending["toResourceInventoriedAs"] = to_resource;
      } else {
        event["toResourceInventoriedAs"] =
            m_resolver.id_or_missing("resource", "toResourceInventoriedAs", to_resource, event_id);
      }
    }
    if (!spec.empty() && !(exclusive && resource_known))
      event["resourceConformsTo"] =
          m_resolver.id_or_missing("resource specification", "resourceConformsTo", spec, event_id);
    return new_resource;
  }

  const IngestConfig& m_config;
  Resolver m_resolver;
  std::map<std::string, ProcessSpan> m_spans;
  VfExport m_out;
  // Local references an earlier request of this export creates on the server.
  std::set<std::string> m_created_processes;
  std::set<std::string> m_created_resources;
};

}  // namespace

std::string_view vf_mutation_text(VfRequestKind kind) {
  return kind == VfRequestKind::create_process ? k_create_process : k_create_economic_event;
}

std::string vf_request_body(const VfRequest& request) {
  Json body;
  body["query"] = vf_mutation_text(request.kind);
  body["variables"] = request.variables;
  // ensure_ascii: the body is what gets signed, and zenflows' normalisation mangles non-ASCII
  // bytes (see zenflows_compact_ascii); escaped, every character survives intact.
  return body.dump(-1, ' ', true, Json::error_handler_t::replace);
}

VfExport build_vf_export(const std::vector<StoredEvent>& events, const IngestConfig& config) {
  const std::vector<ParsedEvent> parsed = parse_in_time_order(events);
  RequestBuilder builder(config, parsed);
  for (const auto& e : parsed)
    builder.add(e);
  return builder.finish();
}

Result<VfExport> build_vf_export(Store& store, const EventFilter& filter,
                                 const IngestConfig& config) {
  auto events = collect_events(store, filter);
  if (!events) return std::unexpected(events.error());
  return build_vf_export(*events, config);
}

namespace {

VfProblem problem(std::string field, std::string rule, std::string section, std::string_view why) {
  std::string message = fmt::format("{}: {} (zenflows, {}: {})", field, rule, section, why);
  return VfProblem{std::move(field), std::move(rule), std::move(section), std::move(message)};
}

// The [export] table a missing reference of this kind belongs in.
std::string_view config_table_of(const MissingReference& m) {
  if (m.kind == "unit") return "[export.units]";
  if (m.reference.starts_with("(")) return "[export] default_agent";
  return "[export.ids]";
}

// The mapping's problems of one event's request: references with no server id, and one agent's
// action that default_agent made two agents'. (The config's ids are ULIDs: config.cpp checks them
// at load.)
void check_mapping(const VfRequest& request, const std::string& action, bool agents_checked,
                   std::vector<VfProblem>& out) {
  std::set<std::string> missing_fields;
  for (const MissingReference& m : request.missing) {
    missing_fields.insert(m.field);
    if (m.reference.starts_with("("))
      out.push_back(problem(m.field, "no value and no [export] default_agent", "valueflows.md §2c",
                            "provider and receiver are required for every event"));
    else
      out.push_back(problem(
          m.field,
          fmt::format("{} \"{}\" has no server id in {}", m.kind, m.reference, config_table_of(m)),
          m.kind == "unit" ? "valueflows.md §1f" : "valueflows.md §2b",
          "zenflows references records by their server id"));
  }
  const Json& event = request.variables["event"];
  if (!agents_checked && agent::vf::keeps_one_agent(action) && event.contains("provider") &&
      event.contains("receiver") && event["provider"] != event["receiver"] &&
      !missing_fields.contains("provider") && !missing_fields.contains("receiver"))
    out.push_back(problem(
        "provider, receiver",
        fmt::format("must be the same agent for action \"{}\" ([export] default_agent filled "
                    "in one of them)",
                    action),
        "valueflows.md §2c", "the agent changes its own resource"));
}

}  // namespace

VfCheck check_vf_export(const std::vector<StoredEvent>& events, const IngestConfig& config) {
  return check_vf_export(events, config, VfPostedId());
}

VfCheck check_vf_export(const std::vector<StoredEvent>& events, const IngestConfig& config,
                        const VfPostedId& posted_id) {
  const std::vector<ParsedEvent> parsed = parse_in_time_order(events);
  RequestBuilder builder(config, parsed);
  VfCheck check;
  for (const auto& e : parsed) {
    // Posted events go through the builder too: later events refer to what they created.
    builder.add(e);
    VfEventCheck result;
    result.id = e.stored->id;
    result.device = e.stored->device;
    result.action = agent::string_at(e.payload, {"action"});
    if (posted_id) result.posted_id = posted_id(*e.stored);
    if (!result.posted_id.empty()) {
      ++check.posted;
      check.events.push_back(std::move(result));
      continue;
    }
    bool agents_checked = false;
    for (const agent::vf::RuleProblem& p : agent::vf::zenflows_problems(e.payload)) {
      agents_checked = agents_checked || p.field == "provider, receiver";
      result.problems.push_back(VfProblem{p.field, p.rule, std::string(p.section), p.message()});
    }
    check_mapping(builder.last_event_request(), result.action, agents_checked, result.problems);
    if (!result.problems.empty()) ++check.refused;
    check.problems += result.problems.size();
    check.events.push_back(std::move(result));
  }
  return check;
}

Result<VfCheck> check_vf_export(Store& store, const EventFilter& filter,
                                const IngestConfig& config) {
  auto events = collect_events(store, filter);
  if (!events) return std::unexpected(events.error());
  return check_vf_export(*events, config);
}

std::string format_vf_check_text(const VfCheck& check) {
  std::string out;
  for (const VfEventCheck& e : check.events) {
    if (!e.posted_id.empty()) {
      out += fmt::format("{} {} (device {}): posted already as {}\n", e.id, e.action, e.device,
                         e.posted_id);
      continue;
    }
    if (e.problems.empty()) {
      out += fmt::format("{} {} (device {}): ok\n", e.id, e.action, e.device);
      continue;
    }
    out += fmt::format("{} {} (device {}): {} problem{}\n", e.id, e.action, e.device,
                       e.problems.size(), e.problems.size() == 1 ? "" : "s");
    for (const VfProblem& p : e.problems)
      out += fmt::format("  {}\n", p.message);
  }
  const std::size_t checked = check.events.size() - check.posted;
  out += fmt::format("checked {} event{}: {} would be refused by zenflows ({} problem{}), {} pass",
                     checked, checked == 1 ? "" : "s", check.refused, check.problems,
                     check.problems == 1 ? "" : "s", checked - check.refused);
  if (check.posted > 0)
    out += fmt::format("; {} already posted (export ledger), not checked again", check.posted);
  out += '\n';
  return out;
}

nlohmann::ordered_json vf_check_json(const VfCheck& check) {
  Json out;
  out["checked"] = check.events.size() - check.posted;
  out["refused"] = check.refused;
  out["problems"] = check.problems;
  out["posted"] = check.posted;
  out["events"] = Json::array();
  for (const VfEventCheck& e : check.events) {
    Json event;
    event["id"] = e.id;
    event["device"] = e.device;
    event["action"] = e.action;
    if (!e.posted_id.empty()) {
      event["posted_id"] = e.posted_id;
      out["events"].push_back(std::move(event));
      continue;
    }
    event["problems"] = Json::array();
    for (const VfProblem& p : e.problems)
      event["problems"].push_back(
          {{"field", p.field}, {"rule", p.rule}, {"section", p.section}, {"message", p.message}});
    out["events"].push_back(std::move(event));
  }
  return out;
}

std::string describe_missing(const std::vector<MissingReference>& missing) {
  std::string out;
  std::vector<const MissingReference*> units, ids;
  for (const auto& m : missing) {
    out += fmt::format("  {} \"{}\" (first in event {})\n", m.kind, m.reference, m.first_event);
    if (m.reference.starts_with("(")) continue;  // not a reference: a missing default
    (m.kind == "unit" ? units : ids).push_back(&m);
  }
  // TOML basic strings: the reference is quoted with JSON rules, which TOML shares.
  if (!units.empty()) {
    out += "add to the config:\n  [export.units]\n";
    for (const auto* m : units)
      out += fmt::format("  {} = \"SERVER-UNIT-ID\"\n", Json(m->reference).dump());
  }
  if (!ids.empty()) {
    out += units.empty() ? "add to the config:\n" : "";
    out += "  [export.ids]\n";
    for (const auto* m : ids)
      out += fmt::format("  {} = \"SERVER-ID\"  # {}\n",
                         Json(m->reference).dump(-1, ' ', false, Json::error_handler_t::replace),
                         m->kind);
  }
  return out;
}

}  // namespace ingest
