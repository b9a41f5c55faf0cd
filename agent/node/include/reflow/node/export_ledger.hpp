// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/jose.hpp>
#include <reflow/core/result.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/node/config.hpp>
#include <reflow/node/store.hpp>
#include <reflow/node/vf_export.hpp>

/// Exactly once into zenflows: the export ledger of `reflow-ingest export --post` (issue 16).
///
/// zenflows does not deduplicate (it has no field for an external id), so the node remembers,
/// per zenflows server (the URL of [export] zenflows_url), what it created there: each exported
/// event's EconomicEvent id, each Process and each new EconomicResource. Rows live in the node's
/// store (Store::ledger_*, table export_ledger).
///
/// Around each request (ledger_post_hooks):
/// 1. an intent row is written and committed BEFORE the request is sent, with the `note` the
///    request carries (an event's note ends with its provenance "(reflow event ULID, device D,
///    stream S seq N …)"; a createProcess note gets "(reflow export ULID)", a fresh ULID);
/// 2. the answer's ids turn it into a recorded row (a produce's new resource gets its own);
/// 3. a GraphQL `errors` answer deletes the intent: zenflows ran nothing of the request.
/// Anything else (no answer, an HTTP error, the exporter killed) leaves the intent.
///
/// The next `--post` settles every intent first (settle_export_intents): zenflows can list its
/// EconomicEvents and Processes in id order from a cursor (`economicEvents(first, after)`,
/// `processes(first, after)`: zenflows src/zenflows/vf/economic_event/type.ex and
/// process/type.ex, paged by Zenflows.DB.Page.all as `id > after` ascending), and its ids are
/// ULIDs of the server's clock at insert (Zenflows.DB.ID.gen). So the node pages from a cursor
/// before the intent (from the server's first object while the ledger holds no id of the
/// server, whose clock may differ from the node's by any amount) and looks for an object whose
/// `note` is exactly the intent's: found, the
/// intent is recorded with that id (and, for an event, its resourceInventoriedAs); not found, it
/// is dropped and the request is sent again. Then plan_ledger_export leaves out what the ledger
/// recorded and refers to recorded processes and resources by their ids.
namespace ingest {

/// The ledger ref of a stored event: "DEVICE/STREAM/SEQ" (device ids have no '/', PROTOCOL §1).
std::string ledger_event_ref(std::string_view device, std::string_view stream, std::int64_t seq);

/// What the ledger recorded for one server, and its unsettled intents.
struct ExportLedger {
  std::string server;
  std::map<std::string, std::string> processes;  ///< local process reference → server id
  std::map<std::string, std::string> resources;  ///< local resource reference → server id
  std::map<std::string, std::string> events;     ///< ledger_event_ref → server id
  std::vector<LedgerEntry> intents;              ///< written, never recorded nor dropped
};

/// The ledger of `server` from the store. Errors: those of Store::ledger_entries.
Result<ExportLedger> read_export_ledger(Store& store, std::string_view server);

/// The requests still to send.
struct LedgerPlan {
  VfExport export_;                 ///< what to send; `missing` only of these requests
  std::size_t events_total = 0;     ///< events matching the filter
  std::size_t events_recorded = 0;  ///< of those, already recorded in the ledger (left out)
};

/// build_vf_export of `events` with the ledger's processes and resources as server ids (after
/// the config's [export.ids], which win), less the events the ledger recorded, and less any
/// createProcess no remaining event needs.
LedgerPlan plan_ledger_export(const std::vector<StoredEvent>& events, const IngestConfig& config,
                              const ExportLedger& ledger);

/// The same over the store's events matching `filter`. Errors: those of Store::for_each_event.
Result<LedgerPlan> plan_ledger_export(Store& store, const EventFilter& filter,
                                      const IngestConfig& config, const ExportLedger& ledger);

/// `export --check` with the ledger: check_vf_export of `events` with the ledger's processes and
/// resources as server ids (after the config's [export.ids], which win), each event the ledger
/// recorded listed as posted with its zenflows id rather than checked again.
VfCheck check_ledger_export(const std::vector<StoredEvent>& events, const IngestConfig& config,
                            const ExportLedger& ledger);

/// The same over the store's events matching `filter`. Errors: those of Store::for_each_event.
Result<VfCheck> check_ledger_export(Store& store, const EventFilter& filter,
                                    const IngestConfig& config, const ExportLedger& ledger);

/// Hooks for post_vf_export that keep the ledger of `server` in `store`: an intent before each
/// request, the ids after, the intent dropped on a GraphQL refusal. `now` gives node time (Unix
/// ms); `ulids` makes createProcess markers; `on_posted` is told of each recorded answer after
/// it is committed.
VfPostHooks ledger_post_hooks(Store& store, std::string server, std::function<std::int64_t()> now,
                              agent::UlidGenerator& ulids,
                              std::function<void(const VfPosted&)> on_posted);

/// How one intent was settled.
struct SettledIntent {
  LedgerEntry intent;
  bool created = false;             ///< the server has it: recorded with server_id
  std::string server_id;            ///< when created
  std::string created_resource_id;  ///< when created and the intent's request created a resource
};

/// Settling pages from this long before the intent, or before the server's latest id the
/// ledger recorded, whichever is earlier, for clocks that differ (node and server); while the
/// ledger holds no id of the server, from its first object.
inline constexpr std::int64_t k_settle_margin_ms = 24LL * 60 * 60 * 1000;

/// Settles every intent of `options.url` in the store's ledger by looking the objects up on
/// the server (signed GraphQL queries, as every zenflows call is): records the found ones and
/// drops the others, and returns what it did. Nothing is created on the server. Errors: those
/// of zenflows_post (the server cannot be asked: the intents stay), busy (1000 pages of 100 read
/// without reaching the end nor finding every intent: the intents stay) and of the store.
Result<std::vector<SettledIntent>> settle_export_intents(Store& store,
                                                         const ZenflowsPostOptions& options,
                                                         const agent::DeviceKey& key);

/// The GraphQL documents settling sends (variables `$first`, the page size, 100, and `$after`,
/// an ID cursor).
std::string_view settle_query_text(LedgerKind kind);

}  // namespace ingest
