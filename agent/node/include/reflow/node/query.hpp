// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/result.hpp>
#include <reflow/node/store.hpp>

/// The node's queries (`reflow-ingest events | rejections | stats | trace`): formatting of what the
/// Store holds. Everything here reads through the Store interface only, so it works on any
/// implementation; nothing writes.
namespace ingest {

/// Parses the TIME of `--since`: RFC 3339 (`2026-11-01T00:00:00Z`, any offset) or a date
/// (`2026-11-01`, midnight UTC). Returns Unix milliseconds. Errors: invalid_argument naming the
/// text and both accepted forms.
Result<std::int64_t> parse_since(std::string_view text);

// --- events ---

/// Every stored event matching `filter`, in the store's order, read into memory (trace and the
/// export sort them by event time). Errors: those of Store::for_each_event.
Result<std::vector<StoredEvent>> collect_events(Store& store, const EventFilter& filter);

enum class EventFormat {
  jsonl,  ///< the stored payload bytes, one event per line
  csv,    ///< RFC 4180: header row, CRLF line ends, fields quoted when needed
};

/// The CSV columns, in order (also the header row).
const std::vector<std::string>& event_csv_columns();

/// One CSV record of `event` (without the line end): device, stream, seq, id and recorded from the
/// store, the rest from the payload; missing fields are empty, quantities are split into value
/// and unit, a non-string where a string belongs is written as its JSON text.
std::string event_csv_row(const StoredEvent& event);

/// One jsonl line of `event` without the line end: the stored payload bytes. A payload holding
/// CR or LF (JSON whitespace between tokens: a raw one can never be inside a JSON string) gets
/// them replaced by spaces so that one event stays one line; otherwise the bytes are untouched.
std::string event_jsonl_line(const StoredEvent& event);

/// Writes every event matching `filter` to `out` in `format` (csv: the header first, even when
/// no event matches). Errors: those of Store::for_each_event; io when `out` fails.
agent::Status write_events(Store& store, const EventFilter& filter, EventFormat format,
                           std::ostream& out);

// --- rejections ---

/// `{"received","last_seen","count","device","topic","reason","detail","stream","seq","envelope"}`
/// on one line; received (first arrival) and last_seen are RFC 3339, count the arrivals of these
/// bytes on this topic, stream/seq null when unknown. Bytes that are not UTF-8 (a client may send
/// anything) are replaced by U+FFFD rather than failing.
std::string rejection_json_line(const StoredRejection& rejection);

/// Writes the rejections (of one device, or all) as JSON lines, oldest first.
agent::Status write_rejections(Store& store, std::optional<std::string_view> device,
                               std::ostream& out);

// --- stats ---

/// One JSON object per device: {"device","registered","revoked","last_seen" (RFC 3339|null),
/// "events","gaps","chain" ("intact"|"broken"),"rejections":{reason: n} (since the device was
/// registered; all for an unregistered one),"rejections_before_registration":{reason: n},
/// "rejections_not_kept":n (of both, counted only: over RejectionLimits),"streams":[{"stream",
/// "events","contiguous","max_seq","gaps","chain","first_seen","last_seen"}]}.
nlohmann::ordered_json device_stats_json(const DeviceStats& stats);

/// An aligned table, one row per device: DEVICE, STATUS (registered|revoked|unregistered),
/// LAST SEEN, EVENTS, GAPS, CHAIN, STREAMS, REJECTIONS (`reason=n,…` since registration, then
/// `; reason=n,… before registration` when there were any, or `-`; then ` (n not kept)` when
/// the caps only counted some). "no devices" when empty.
std::string format_stats_text(const std::vector<DeviceStats>& stats);

// --- trace (material passport) ---

/// One node of a trace tree.
struct TraceNode {
  enum class Kind { resource, event, process };
  Kind kind = Kind::resource;
  std::string id;  ///< resource reference, event ULID, or process reference
  /// event nodes: the parsed payload (action, times, quantities, references …) and where it
  /// came from.
  nlohmann::ordered_json event;
  std::string device;
  /// true when this resource or process was already expanded elsewhere in the tree (a shared
  /// input, or a cycle): it is shown once, later mentions have no children.
  bool repeated = false;
  std::vector<TraceNode> children;
};

/// The ValueFlows trace of `resource` (valueflows.md §4, VF `algorithms/track.md`), extended into
/// a material passport. From a resource, the events that name it (as resourceInventoriedAs or
/// toResourceInventoriedAs): the VF "previous" events (outputs of a process, transfers/moves into
/// it, raise/lower) and also every other event of its life (use, consume, move, transfer*,
/// accept, cite …). From an event: an output (outputOf) leads to its process; a transfer/move
/// into this resource from another one leads to that source resource. From a process: its input
/// events (inputOf = the process). From an input that consumed or accepted a resource: that
/// resource, recursively. Children are ordered by event time (hasPointInTime, else hasBeginning,
/// else hasEnd, else recorded), then recorded, then id. Each resource and process is expanded at
/// most once (TraceNode::repeated), so cycles end.
///
/// All events are read once into memory: fine for a community node's volumes (the SQLite store
/// has no per-reference index to walk instead).
/// Errors: not_found when no stored event names `resource`; those of Store::for_each_event.
Result<TraceNode> trace_resource(Store& store, std::string_view resource);

/// The same, over events already read (tests, and other front ends).
Result<TraceNode> trace_resource(const std::vector<StoredEvent>& events, std::string_view resource);

/// An indented tree, two spaces per level, one node per line:
///   `resource REF`, `process REF`, and for events
///   `TIME ACTION [QUANTITY UNIT] [effort QUANTITY UNIT] [provider AGENT] [receiver AGENT]
///    device DEVICE event ID`
/// where TIME is hasPointInTime or `BEGIN..END`; `(see above)` marks a repeated node.
std::string format_trace_text(const TraceNode& root);

/// Nested JSON: {"type":"resource"|"event"|"process","id":…, events: "device", "action",
/// "hasPointInTime"/"hasBeginning"/"hasEnd", "resourceQuantity", "effortQuantity",
/// "resourceInventoriedAs", "toResourceInventoriedAs", "inputOf", "outputOf", "provider",
/// "receiver", "atLocation", "toLocation", "note" as far as present; "repeated":true on repeated
/// nodes; "children":[…]}.
nlohmann::ordered_json trace_to_json(const TraceNode& root);

}  // namespace ingest
