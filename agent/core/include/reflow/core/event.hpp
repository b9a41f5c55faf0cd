// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include <reflow/core/env.hpp>
#include <reflow/core/result.hpp>

namespace agent {

/// Bounds that keep every envelope under PROTOCOL §3's 64 KiB.
inline constexpr std::size_t k_max_submission_bytes = 16 * 1024;  ///< serialized producer fields
inline constexpr std::size_t k_max_string_bytes = 1024;           ///< any one string value
inline constexpr std::size_t k_max_envelope_bytes = 64 * 1024;    ///< PROTOCOL §3
/// The range of a quantity's hasNumericalValue (PROTOCOL §4 Limits): a nanogram to a million
/// tonnes in grams; anything outside is a driver's unit mistake or an attack on a reader's sums.
inline constexpr double k_min_quantity = 1e-9;
inline constexpr double k_max_quantity = 1e12;
/// Times PROTOCOL §4 Limits accepts, in Unix ms: from the Unix epoch (a device without a clock
/// starts there) up to, not including, 2100-01-01T00:00:00Z, which no honest clock reaches and
/// which keeps every reader's arithmetic small.
inline constexpr std::int64_t k_min_time_ms = 0;
inline constexpr std::int64_t k_max_time_ms = 4'102'444'800'000;

/// Where an event came from (PROTOCOL §4 `source`).
struct EventSource {
  std::string driver;    ///< driver kind: "sim", "emit" …
  std::string instance;  ///< the `[[driver]]` name, or "control" for emit
  std::string ref;       ///< the source's own id ("job 123"); may be empty
};

/// True for the 16 ValueFlows action ids of PROTOCOL §4 (camelCase).
bool is_known_action(std::string_view action) noexcept;

/// True for the OM2 unit names of PROTOCOL §4.
bool is_known_unit(std::string_view unit) noexcept;

/// True when `id` matches PROTOCOL §1 `^[a-z0-9][a-z0-9._-]{0,63}$`.
bool is_valid_device_id(std::string_view id) noexcept;

/// Checks the fields a producer supplies (PROTOCOL §4) before the agent adds its own:
/// - an object; only the producer fields of §4 (`action`, `hasPointInTime`, `hasBeginning`,
///   `hasEnd`, `provider`, `receiver`, `resourceInventoriedAs`, `toResourceInventoriedAs`,
///   `resourceConformsTo`, `resourceClassifiedAs`, `resourceQuantity`, `effortQuantity`,
///   `inputOf`, `outputOf`, `atLocation`, `toLocation`, `note`, `meta`); any field the agent
///   fills (`v`, `id`, `seq` …) or does not know is refused by name;
/// - a known action; one time form (`hasPointInTime`, or `hasBeginning` and/or `hasEnd`, with
///   beginning ≤ end), each RFC 3339 in UTC;
/// - quantities `{"hasNumericalValue": number > 0, "hasUnit": OM2 name}`;
/// - the per-action minimum of §4;
/// - strings at most k_max_string_bytes, the whole object at most k_max_submission_bytes;
/// - PROTOCOL §4 Limits: no control character but TAB and LF in strings and none in member names;
///   integers within ±(2^53 − 1) and numbers finite; nesting at most k_max_json_depth (the event
///   is depth 1); times from 1970 to the end of 2099; quantities from k_min_quantity to
///   k_max_quantity.
/// Errors: rejected, with a message naming the field: `resourceQuantity.hasUnit: unknown OM2 unit
/// "grams" (expected one of one, hour, …)`.
Status validate_submission(const nlohmann::ordered_json& fields);

/// The fields the writer adds to a validated submission.
struct EventStamp {
  std::string id;  ///< ULID
  std::string device;
  std::string stream;  ///< ULID
  std::int64_t seq = 0;
  std::string prev;  ///< b64url SHA-256 of the previous signing input; empty for seq 1 (→ null)
  std::int64_t recorded_unix_ms = 0;
  ClockSync clock = ClockSync::unsynced;
};

/// Serializes the event payload of PROTOCOL §4: the stamp's fields first (`v`, `id`, `device`,
/// `stream`, `seq`, `prev`, `recorded`, `clock`), then the producer's fields in their order, then
/// `source`. The bytes returned are what gets signed; nobody re-serializes them afterwards.
std::string make_event_payload(const EventStamp& stamp, const nlohmann::ordered_json& fields,
                               const EventSource& source);

/// Validates a whole payload as the node does (PROTOCOL §7 step 5): the stamp fields' forms
/// (`seq` from 1 to 2^53 − 1, `recorded` with milliseconds as format_rfc3339_ms writes it) plus
/// validate_submission on the rest. Parse the text with parse_json_strict first, which refuses
/// what a parsed document no longer shows (repeated names, a BOM). Used by the node, `verify`
/// and tests. Errors: rejected.
Status validate_event_payload(const nlohmann::ordered_json& event);

}  // namespace agent
