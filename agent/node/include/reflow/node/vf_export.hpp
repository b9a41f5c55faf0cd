// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/jose.hpp>
#include <reflow/core/result.hpp>
#include <reflow/node/config.hpp>
#include <reflow/node/store.hpp>

/// `reflow-ingest export --format vf-graphql`: the stored events as zenflows GraphQL mutations
/// (valueflows.md §2b), and their signed delivery to a zenflows server (valueflows.md §3).
///
/// Mapping (build_vf_export):
/// - events that share an `inputOf`/`outputOf` reference are one Process: one `createProcess`
///   (name = the reference; hasBeginning/hasEnd = the earliest begin / latest end of the exported
///   events of that process), sent before its first event. A process reference listed in
///   [export.ids] is an existing server Process: no createProcess, its id is used.
/// - each event becomes one `createEconomicEvent`: action as is (zenflows takes camelCase);
///   provider/receiver, resources, specifications and locations through [export.ids] (local
///   reference → server id); provider/receiver default to [export] default_agent (a server id,
///   used as is); quantities' OM2 unit names through [export.units]; times as is;
///   resourceClassifiedAs as is (URIs, not ids).
/// - produce/raise of a resource that has no [export.ids] entry but names resourceConformsTo
///   creates it (zenflows' `newInventoriedResource`, name and trackingIdentifier = the local
///   reference); later events of the same export that name it use the id the server returns.
///   For use/cite/produce/raise zenflows wants resourceInventoriedAs XOR resourceConformsTo: when
///   the resource is known, the specification is left out.
/// - `note` = the event's note followed by its provenance
///   `(reflow event ULID, device D, stream S seq N, source DRIVER/INSTANCE REF)`. The event's own
///   id goes there because zenflows has no field for an external id and NO dedupe: exporting the
///   same events twice records them twice. `export --post` sends each once through the export
///   ledger (export_ledger.hpp), which also finds an event on the server by this note.
///
/// Missing ids: a reference with no [export.ids] / [export.units] entry is left as the local
/// reference in the printed mutation and listed in VfExport::missing (the CLI warns on stderr);
/// post_vf_export refuses to send anything while any is missing (zenflows would refuse the event,
/// after earlier ones were already recorded).
namespace ingest {

// --- zenflows request signing (zenflows.cpp) ---

/// zenflows' body normalisation before signing: Zenroom `OCTET:compact_ascii` (zen_octet.c).
/// Byte by byte: drop every byte below 0x21; when the previous kept-or-dropped byte was a
/// backslash, drop a/b/t/n/v/f/r; drop every backslash. And: Zenroom compares `char` values, and
/// `char` is signed on x86-64 where zenflows runs, so every byte >= 0x80 (all of UTF-8 beyond
/// ASCII) also counts as "below 0x21" and is dropped. We emulate that on every architecture (a
/// Raspberry Pi's `char` is unsigned) so our signatures verify on the real server. Our own
/// bodies are pure ASCII anyway (vf_request_body escapes non-ASCII as \uXXXX).
std::string zenflows_compact_ascii(std::string_view body);

/// The signature headers of one request.
struct ZenflowsSignature {
  std::string sign_b64;  ///< `zenflows-sign`: standard padded base64 of the 64-byte Ed25519
                         ///< signature over zenflows_compact_ascii(body)
  std::string hash_hex;  ///< `zenflows-hash`: lowercase hex SHA-256 of the same bytes (the server
                         ///< does not check it; clients send it)
};

/// Signs `body` (the exact HTTP body) as zenflows clients do (interfacer-client sign.ts).
ZenflowsSignature zenflows_sign(const agent::DeviceKey& key, std::string_view body);

// --- the mutations (vf_export.cpp) ---

enum class VfRequestKind { create_process, create_economic_event };

/// A reference with no server id in the config.
struct MissingReference {
  std::string kind;         ///< "agent", "resource", "resource specification", "location", "unit"
  std::string reference;    ///< the local reference (OM2 name for units)
  std::string first_event;  ///< the first event that names it (in VfRequest::missing: that event)
  std::string field;        ///< where: "provider", "resourceInventoriedAs",
                            ///< "resourceQuantity.hasUnit" …
};

/// One GraphQL request of an export. `variables` are final except the fields named in `pending`.
struct VfRequest {
  VfRequestKind kind = VfRequestKind::create_economic_event;
  std::string process;   ///< create_process: the local process reference it records
  std::string event_id;  ///< create_economic_event: the reflow event ULID
  std::string device;    ///< create_economic_event: the device that signed it
  std::string stream;    ///< create_economic_event: the event's stream (ULID)
  std::int64_t seq = 0;  ///< create_economic_event: the event's seq in its stream
  /// Local reference this request creates on the server (a process, or a resource through
  /// newInventoriedResource); empty when none. Later requests name it in `pending`.
  std::string creates;
  /// Fields of `variables.event` (inputOf, outputOf, resourceInventoriedAs,
  /// toResourceInventoriedAs) that hold a local reference created by an earlier request of this
  /// export: the reference until the server's id is known (post_vf_export fills it in;
  /// inputOf/outputOf name processes, the others resources).
  std::map<std::string, std::string> pending;
  nlohmann::ordered_json variables;
  /// create_economic_event: each reference of this event with no server id in the config (see
  /// VfExport::missing), every time it occurs.
  std::vector<MissingReference> missing;
};

struct VfExport {
  std::vector<VfRequest> requests;        ///< in sending order
  std::vector<MissingReference> missing;  ///< unique by (kind, reference), in order found
};

/// The constant GraphQL document of each kind (variables `$process`, resp. `$event` and
/// `$newInventoriedResource`); nothing is ever pasted into it.
std::string_view vf_mutation_text(VfRequestKind kind);

/// The HTTP body `{"query":…,"variables":…}`: compact JSON, non-ASCII escaped (\uXXXX).
std::string vf_request_body(const VfRequest& request);

/// Builds the export of `events` (any order; sent in event time order). Payloads that are not
/// JSON objects are skipped (the store holds verified events only), and so are unknown badges'
/// sightings (`meta.badge` "unknown", PROTOCOL §4.1): they are for enrolment at the node, not
/// economic activity, and their keyed hash names the card only to its agent.
VfExport build_vf_export(const std::vector<StoredEvent>& events, const IngestConfig& config);

/// The same over the store's events matching `filter`. Errors: those of Store::for_each_event.
Result<VfExport> build_vf_export(Store& store, const EventFilter& filter,
                                 const IngestConfig& config);

/// "resource \"spool-7\" (first in event 01J…)", one per line, then the TOML lines to add.
std::string describe_missing(const std::vector<MissingReference>& missing);

// --- the check before sending (vf_export.cpp): `export --check` ---

/// One reason zenflows would refuse an event of the export.
struct VfProblem {
  std::string field;    ///< "inputOf", "resourceQuantity.hasUnit", "provider, receiver" …
  std::string rule;     ///< `required for action "consume"`, `no server id in [export.ids]` …
  std::string section;  ///< where the rule is written down: "valueflows.md §2c" …
  std::string message;  ///< the whole sentence, field first, as the text output prints it
};

/// One event of the export and what zenflows would refuse it for (nothing: it would pass).
struct VfEventCheck {
  std::string id;      ///< the reflow event ULID
  std::string device;  ///< the device that signed it
  std::string action;
  std::vector<VfProblem> problems;
  /// The zenflows EconomicEvent id the export ledger recorded for it: posted already, so not
  /// checked again (no problems). Empty: not posted, checked.
  std::string posted_id;
};

struct VfCheck {
  std::vector<VfEventCheck> events;  ///< in sending order (event time), posted ones included
  std::size_t refused = 0;           ///< events with at least one problem
  std::size_t problems = 0;          ///< all problems of all events
  std::size_t posted = 0;            ///< events the export ledger recorded (not checked)
};

/// The zenflows id of an event that an earlier `--post` recorded (the export ledger), or "" for
/// an event still to be sent.
using VfPostedId = std::function<std::string(const StoredEvent& event)>;

/// What build_vf_export would send for `events`, checked without sending anything. Per event,
/// every problem of:
/// - zenflows' per-action rules on the stored event (agent::vf::zenflows_problems; section
///   valueflows.md §2c/§2d);
/// - the mapping: a reference with no [export.ids] / [export.units] entry or a provider/receiver
///   with neither a value nor [export] default_agent (zenflows requires both and takes only
///   server ids: valueflows.md §2b/§2c); provider ≠ receiver after default_agent filled one
///   in, for the actions that keep one agent (§2c). The config's ids themselves are ULIDs
///   (load_ingest_config refuses others, valueflows.md §2d).
VfCheck check_vf_export(const std::vector<StoredEvent>& events, const IngestConfig& config);

/// The same, leaving out of the check each event for which `posted_id` gives an id: it is listed
/// as posted (VfEventCheck::posted_id, VfCheck::posted), the rules and the mapping are not applied
/// to it again. export_ledger.hpp's check_ledger_export passes the ledger's ids.
VfCheck check_vf_export(const std::vector<StoredEvent>& events, const IngestConfig& config,
                        const VfPostedId& posted_id);

/// The same over the store's events matching `filter`. Errors: those of Store::for_each_event.
Result<VfCheck> check_vf_export(Store& store, const EventFilter& filter,
                                const IngestConfig& config);

/// The check for people: per event a line `ID ACTION (device D): ok`, `… N problem(s)` and an
/// indented line per problem (`field: rule (zenflows, section: why)`), or `… posted already as
/// ZENFLOWS-ID`, then the summary `checked N events: M would be refused by zenflows (K
/// problems), P pass`, N not counting the posted ones, and with any: `; Q already posted (export
/// ledger), not checked again`.
std::string format_vf_check_text(const VfCheck& check);

/// The check for programs: {"checked":N,"refused":M,"problems":K,"posted":Q,"events":[{"id",
/// "device","action","problems":[{"field","rule","section","message"}]}]}, a posted event with
/// "posted_id" (its zenflows id) instead of "problems"; N does not count the posted ones.
nlohmann::ordered_json vf_check_json(const VfCheck& check);

// --- delivery (zenflows.cpp) ---

/// What the server answered to one request.
struct VfPosted {
  const VfRequest* request = nullptr;
  std::string server_id;            ///< the created Process or EconomicEvent id
  std::string created_resource_id;  ///< when the request created a resource
};

struct ZenflowsPostOptions {
  std::string url;    ///< [export] zenflows_url
  std::string user;   ///< [export] zenflows_user
  std::string proxy;  ///< [export] proxy (CURLOPT_PROXY, http://HOST:PORT); empty: none
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};  ///< per request
};

/// POSTs one body with the signature headers (`zenflows-user`, `zenflows-sign`, `zenflows-hash`,
/// Content-Type application/json) through libcurl and returns the parsed JSON response.
/// Errors: device_unavailable (cannot connect, timeout), rejected (HTTP status not 2xx, or a
/// GraphQL `errors` array: the message quotes the server's messages), invalid_argument (the
/// response is not JSON).
Result<nlohmann::json> zenflows_post(const ZenflowsPostOptions& options,
                                     const agent::DeviceKey& key, std::string_view body);

/// What post_vf_export tells its caller around each request, so that the export ledger
/// (export_ledger.hpp) can write an intent before a request leaves and its answer after. An error
/// returned by a hook stops the post there (before the request, for before_send). Unset hooks
/// are skipped.
struct VfPostHooks {
  /// Just before `request` is sent, with its `pending` fields filled in; may add to the note of
  /// a createProcess (variables.process.note), which is then sent as changed.
  std::function<agent::Status(VfRequest& request)> before_send;
  /// The server answered with the id(s).
  std::function<agent::Status(const VfPosted& posted)> on_posted;
  /// The server answered the request with a GraphQL `errors` array: zenflows ran nothing of it
  /// (its mutations run in one database transaction), so nothing was created.
  std::function<agent::Status(const VfRequest& request)> on_refused;
};

/// Sends the export's requests in order, filling `pending` fields with the ids earlier responses
/// returned, and calls the hooks around each. Refuses up front (invalid_config, listing
/// them) when `export_.missing` is not empty or the URL/user is not set; stops at the first
/// failure with a message saying which request failed and how many were already recorded (those
/// are not rolled back).
agent::Status post_vf_export(const VfExport& export_, const ZenflowsPostOptions& options,
                             const agent::DeviceKey& key, const VfPostHooks& hooks);

/// The same with only an on_posted hook that cannot fail.
agent::Status post_vf_export(const VfExport& export_, const ZenflowsPostOptions& options,
                             const agent::DeviceKey& key,
                             const std::function<void(const VfPosted&)>& on_posted);

}  // namespace ingest
