// SPDX-License-Identifier: AGPL-3.0-or-later
// The export ledger: exactly once into zenflows (export_ledger.hpp).
#include <reflow/node/export_ledger.hpp>

#include <algorithm>
#include <optional>
#include <set>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/json_strict.hpp>
#include <reflow/node/query.hpp>

namespace ingest {
namespace {

using agent::ErrorCode;
using agent::fail;
using agent::string_at;
using Json = nlohmann::ordered_json;

// zenflows caps a page at max_page_size (GQL_MAX_PAGE_SIZE, default 100: conf/runtime.exs).
constexpr int k_page_size = 100;
// Pages settling reads at most, per kind (100 000 objects created on the server since the
// cursor): a bound, so that a wrong cursor cannot make it read forever.
constexpr int k_max_pages = 1000;

// zenflows src/zenflows/gql/type.ex (page_info), economic_event/type.ex, process/type.ex.
constexpr std::string_view k_settle_events =
    "query($first: Int, $after: ID) { economicEvents(first: $first, after: $after) "
    "{ edges { node { id note resourceInventoriedAs { id } } } "
    "pageInfo { hasNextPage endCursor } } }";
constexpr std::string_view k_settle_processes =
    "query($first: Int, $after: ID) { processes(first: $first, after: $after) "
    "{ edges { node { id note } } pageInfo { hasNextPage endCursor } } }";

LedgerKind kind_of(const VfRequest& request) {
  return request.kind == VfRequestKind::create_process ? LedgerKind::process : LedgerKind::event;
}

std::string ref_of(const VfRequest& request) {
  return request.kind == VfRequestKind::create_process
             ? request.process
             : ledger_event_ref(request.device, request.stream, request.seq);
}

std::string note_of(const VfRequest& request) {
  const char* object = request.kind == VfRequestKind::create_process ? "process" : "event";
  auto it = request.variables.find(object);
  if (it == request.variables.end() || !it->is_object()) return {};
  auto note = it->find("note");
  return note != it->end() && note->is_string() ? note->get<std::string>() : std::string();
}

// The missing references of the remaining requests, each once, in order.
std::vector<MissingReference> missing_of(const std::vector<VfRequest>& requests) {
  std::vector<MissingReference> out;
  std::set<std::pair<std::string, std::string>> seen;
  for (const VfRequest& r : requests)
    for (const MissingReference& m : r.missing)
      if (seen.insert({m.kind, m.reference}).second) out.push_back(m);
  return out;
}

// What one settle lookup found: note → (id, resource id).
using Found = std::map<std::string, std::pair<std::string, std::string>>;

// Pages `kind`'s objects from `cursor` and collects those whose note is one of `notes`.
Result<Found> look_up(LedgerKind kind, const std::set<std::string>& notes, std::string cursor,
                      const ZenflowsPostOptions& options, const agent::DeviceKey& key) {
  Found found;
  const char* connection = kind == LedgerKind::process ? "processes" : "economicEvents";
  for (int page = 0; page < k_max_pages && found.size() < notes.size(); ++page) {
    Json body;
    body["query"] = settle_query_text(kind);
    body["variables"] = {{"first", k_page_size}, {"after", cursor}};
    auto answer = zenflows_post(options, key, body.dump(-1, ' ', true));
    if (!answer)
      return fail(answer.error().code,
                  fmt::format("looking up unsettled export intents: {}", answer.error().message));
    const nlohmann::json* data = &*answer;
    for (const char* step : {"data", connection})
      if (data) data = data->is_object() && data->contains(step) ? &(*data)[step] : nullptr;
    if (!data || !data->is_object() || !data->contains("edges") || !(*data)["edges"].is_array())
      return fail(ErrorCode::invalid_argument,
                  fmt::format("looking up unsettled export intents: zenflows at {} answered "
                              "{} without edges",
                              options.url, connection));
    for (const auto& edge : (*data)["edges"]) {
      const std::string note = string_at(edge, {"node", "note"});
      if (!notes.contains(note)) continue;
      found[note] = {string_at(edge, {"node", "id"}),
                     string_at(edge, {"node", "resourceInventoriedAs", "id"})};
    }
    const std::string end = string_at(*data, {"pageInfo", "endCursor"});
    const auto info = data->find("pageInfo");
    const bool has_next = info != data->end() && info->is_object() &&
                          info->value("hasNextPage", nlohmann::json()).is_boolean() &&
                          (*info)["hasNextPage"].get<bool>();
    if (!has_next || end.empty()) return found;
    cursor = end;
  }
  if (found.size() < notes.size())
    // Not having seen the end, "not found" would be a guess, and a wrong one sends a request
    // twice: the intents stay.
    return fail(ErrorCode::busy,
                fmt::format("looking up unsettled export intents: zenflows at {} listed {} {} "
                            "from the cursor without reaching the end (at most {} pages are "
                            "read); the intents stay unsettled",
                            options.url, k_max_pages * k_page_size, connection, k_max_pages));
  return found;
}

}  // namespace

std::string ledger_event_ref(std::string_view device, std::string_view stream, std::int64_t seq) {
  return fmt::format("{}/{}/{}", device, stream, seq);
}

std::string_view settle_query_text(LedgerKind kind) {
  return kind == LedgerKind::process ? k_settle_processes : k_settle_events;
}

Result<ExportLedger> read_export_ledger(Store& store, std::string_view server) {
  auto entries = store.ledger_entries(server);
  if (!entries) return std::unexpected(entries.error());
  ExportLedger ledger;
  ledger.server = std::string(server);
  for (LedgerEntry& e : *entries) {
    if (!e.recorded) {
      ledger.intents.push_back(std::move(e));
      continue;
    }
    auto& ids = e.kind == LedgerKind::process    ? ledger.processes
                : e.kind == LedgerKind::resource ? ledger.resources
                                                 : ledger.events;
    ids[e.ref] = e.server_id;
  }
  return ledger;
}

namespace {

// `config` with the ledger's processes and resources as server ids.
IngestConfig with_ledger_ids(const IngestConfig& config, const ExportLedger& ledger) {
  IngestConfig with_ledger = config;
  for (const auto* ids : {&ledger.processes, &ledger.resources})
    for (const auto& [reference, id] : *ids)
      with_ledger.ids.emplace(reference, id);  // the config's own entry wins
  return with_ledger;
}

}  // namespace

LedgerPlan plan_ledger_export(const std::vector<StoredEvent>& events, const IngestConfig& config,
                              const ExportLedger& ledger) {
  VfExport all = build_vf_export(events, with_ledger_ids(config, ledger));

  LedgerPlan plan;
  std::vector<VfRequest> remaining;
  std::set<std::string> processes_needed;
  for (VfRequest& r : all.requests) {
    if (r.kind != VfRequestKind::create_economic_event) continue;
    ++plan.events_total;
    if (ledger.events.contains(ledger_event_ref(r.device, r.stream, r.seq))) {
      ++plan.events_recorded;
      continue;
    }
    for (const auto& [field, reference] : r.pending)
      if (field == "inputOf" || field == "outputOf") processes_needed.insert(reference);
  }
  for (VfRequest& r : all.requests) {
    if (r.kind == VfRequestKind::create_process) {
      if (processes_needed.contains(r.process)) remaining.push_back(std::move(r));
    } else if (!ledger.events.contains(ledger_event_ref(r.device, r.stream, r.seq))) {
      remaining.push_back(std::move(r));
    }
  }
  plan.export_.missing = missing_of(remaining);
  plan.export_.requests = std::move(remaining);
  return plan;
}

Result<LedgerPlan> plan_ledger_export(Store& store, const EventFilter& filter,
                                      const IngestConfig& config, const ExportLedger& ledger) {
  auto events = collect_events(store, filter);
  if (!events) return std::unexpected(events.error());
  return plan_ledger_export(*events, config, ledger);
}

VfCheck check_ledger_export(const std::vector<StoredEvent>& events, const IngestConfig& config,
                            const ExportLedger& ledger) {
  return check_vf_export(
      events, with_ledger_ids(config, ledger), [&ledger](const StoredEvent& e) -> std::string {
        auto it = ledger.events.find(ledger_event_ref(e.device, e.stream, e.seq));
        return it == ledger.events.end() ? std::string() : it->second;
      });
}

Result<VfCheck> check_ledger_export(Store& store, const EventFilter& filter,
                                    const IngestConfig& config, const ExportLedger& ledger) {
  auto events = collect_events(store, filter);
  if (!events) return std::unexpected(events.error());
  return check_ledger_export(*events, config, ledger);
}

VfPostHooks ledger_post_hooks(Store& store, std::string server, std::function<std::int64_t()> now,
                              agent::UlidGenerator& ulids,
                              std::function<void(const VfPosted&)> on_posted) {
  VfPostHooks hooks;
  hooks.before_send = [&store, server, now, &ulids](VfRequest& request) -> agent::Status {
    const std::int64_t t = now();
    if (request.kind == VfRequestKind::create_process) {
      // A process's name and note repeat across exports; the marker makes its note unique.
      auto& note = request.variables["process"]["note"];
      const std::string base = note.is_string() ? note.get<std::string>() : std::string();
      note = fmt::format("{}{}(reflow export {})", base, base.empty() ? "" : " ", ulids.next(t));
    }
    LedgerEntry intent;
    intent.server = server;
    intent.kind = kind_of(request);
    intent.ref = ref_of(request);
    intent.note = note_of(request);
    intent.event_id = request.event_id;
    intent.creates = request.kind == VfRequestKind::create_economic_event ? request.creates : "";
    return store.ledger_intent(intent, t);
  };
  hooks.on_posted = [&store, server, now, on_posted](const VfPosted& posted) -> agent::Status {
    const VfRequest& r = *posted.request;
    if (auto s = store.ledger_record(server, kind_of(r), ref_of(r), posted.server_id,
                                     posted.created_resource_id, now());
        !s)
      return s;
    if (on_posted) on_posted(posted);
    return {};
  };
  hooks.on_refused = [&store, server](const VfRequest& request) -> agent::Status {
    return store.ledger_forget(server, kind_of(request), ref_of(request));
  };
  return hooks;
}

Result<std::vector<SettledIntent>> settle_export_intents(Store& store,
                                                         const ZenflowsPostOptions& options,
                                                         const agent::DeviceKey& key) {
  auto entries = store.ledger_entries(options.url);
  if (!entries) return std::unexpected(entries.error());
  std::vector<LedgerEntry> intents;
  std::optional<std::int64_t> from_ms;
  std::string latest_id;
  for (LedgerEntry& e : *entries) {
    if (e.recorded) {
      // zenflows' ids are ULIDs, whose text sorts by time; anything else says nothing of it.
      if (agent::ulid_time(e.server_id)) latest_id = std::max(latest_id, e.server_id);
    } else {
      const std::int64_t t = e.intent_unix_ms - k_settle_margin_ms;
      from_ms = from_ms ? std::min(*from_ms, t) : t;
      intents.push_back(std::move(e));
    }
  }
  std::vector<SettledIntent> out;
  if (intents.empty()) return out;
  // The server's own clock where the ledger has one of its ids: objects it made after that one
  // have larger ids, less a margin for a server clock that stepped back. Without one, the
  // node's clock says nothing about the server's (it may be behind by more than the margin):
  // from the server's first object.
  if (auto t = agent::ulid_time(latest_id))
    from_ms = std::min(*from_ms, *t - k_settle_margin_ms);
  else
    from_ms = 0;
  const std::string cursor = agent::ulid_floor(*from_ms);

  for (LedgerKind kind : {LedgerKind::process, LedgerKind::event}) {
    std::set<std::string> notes;
    for (const LedgerEntry& e : intents)
      if (e.kind == kind) notes.insert(e.note);
    if (notes.empty()) continue;
    auto found = look_up(kind, notes, cursor, options, key);
    if (!found) return std::unexpected(found.error());
    for (const LedgerEntry& e : intents) {
      if (e.kind != kind) continue;
      SettledIntent settled;
      settled.intent = e;
      if (auto it = found->find(e.note); it != found->end() && !it->second.first.empty()) {
        settled.created = true;
        settled.server_id = it->second.first;
        if (!e.creates.empty()) settled.created_resource_id = it->second.second;
        if (auto s = store.ledger_record(options.url, kind, e.ref, settled.server_id,
                                         settled.created_resource_id, e.intent_unix_ms);
            !s)
          return std::unexpected(s.error());
      } else if (auto s = store.ledger_forget(options.url, kind, e.ref); !s) {
        return std::unexpected(s.error());
      }
      out.push_back(std::move(settled));
    }
  }
  return out;
}

}  // namespace ingest
