// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/result.hpp>
#include <reflow/node/store.hpp>

/// `reflow-ingest report usage`: who used which machine, for how long, with what material, per
/// day, week or month — what a makerspace bills by. Reads the confirmed events through the Store
/// interface only; writes nothing.
///
/// How events are attributed (ValueFlows, valueflows.md §2 and §4):
/// - an event's time is hasPointInTime, else hasBeginning, else hasEnd, else `recorded`;
/// - `use` of a machine: the machine is its resourceInventoriedAs, the member its receiver (the
///   makerspace is the provider), the time of use its effortQuantity (hour, minute-Time or
///   second-Time, OM2), counted as one session;
/// - `work`: the member is its provider (who did the work), its effortQuantity counts as hours;
/// - `consume`: the material is its resourceInventoriedAs, else its resourceConformsTo; its
///   resourceQuantity is summed per material and unit;
/// - an event without its own member or machine takes those of the `use` events of its process
///   (inputOf or outputOf): the filament a print job consumed is the printer's and the member's
///   who used the printer for that job. `produce` is counted per resource and unit like consume.
/// Members are ValueFlows agent references as the events carry them; none → "".
namespace ingest::report {

/// What the rows are grouped by (`--by`).
enum class By {
  member,    ///< the event's member (see above), "" when none
  machine,   ///< the machine of the event or of its process, "" when none
  resource,  ///< the event's own resource (the machine of a use, the material of a consume)
};

/// The period of a row (`--period`): a UTC day "2026-11-21", an ISO 8601 week "2026-W47", a
/// month "2026-11", or "all" for one period over everything.
enum class Period { day, week, month, all };

/// Parse `--by` and `--period`; errors: invalid_argument naming the text and the choices.
Result<By> parse_by(std::string_view text);
Result<Period> parse_period(std::string_view text);

/// The period holding `unix_ms`, in the form of `period` (above). ISO weeks start on Monday; the
/// first week of a year holds its first Thursday (ISO 8601 §3.2.2), so 2027-01-01 is in
/// "2026-W53".
std::string period_of(std::int64_t unix_ms, Period period);

/// What `usage` counts.
struct UsageOptions {
  By by = By::machine;
  Period period = Period::month;
  std::optional<std::int64_t> from_unix_ms;  ///< events at or after (by their time, above)
  std::optional<std::int64_t> to_unix_ms;    ///< events before
};

/// A material or product and its unit: {"spoolman:spool-7", "gram"}.
using ResourceUnit = std::pair<std::string, std::string>;

/// One row of the report: one period and one member, machine or resource.
struct UsageRow {
  std::string period;
  std::string key;            ///< the member, machine or resource; "" when the events had none
  double use_hours = 0;       ///< effortQuantity of use and work, in hours
  std::int64_t sessions = 0;  ///< use and work events
  std::int64_t events = 0;    ///< every event counted in the row
  std::map<ResourceUnit, double> consumed;
  std::map<ResourceUnit, double> produced;
  std::map<std::string, std::int64_t> members;   ///< by machine or resource: sessions per member
  std::map<std::string, std::int64_t> machines;  ///< by member: sessions per machine
};

/// The rows over `events` (as Store::for_each_event gives them), sorted by period, then key.
/// Events whose payload is not a JSON object, or whose quantities are not numbers, are skipped
/// (the node verified every stored payload against PROTOCOL §4, so this is only a guard).
std::vector<UsageRow> usage(const std::vector<StoredEvent>& events, const UsageOptions& options);

/// The same over the store's confirmed events. Errors: those of Store::for_each_event.
Result<std::vector<UsageRow>> usage(Store& store, const UsageOptions& options);

/// An aligned table: PERIOD, MEMBER|MACHINE|RESOURCE, HOURS (3 decimals), SESSIONS, CONSUMED
/// ("1234.5 gram spoolman:spool-7; 0.8 kilowattHour plug:laser", or "-"), and MACHINES (by member)
/// or MEMBERS (otherwise) with their session counts. "" as key prints "(none)". "no events in
/// the period" when `rows` is empty.
std::string format_usage_table(const std::vector<UsageRow>& rows, By by);

/// RFC 4180 CSV, one record per row and consumed or produced material (a row without any has one
/// record with empty material columns): period,KEY,hours,sessions,events,flow,resource,quantity,
/// unit — flow is "consume", "produce" or "". KEY is member, machine or resource. CRLF line ends.
std::string format_usage_csv(const std::vector<UsageRow>& rows, By by);

/// One JSON object per row: {"period","member"|"machine"|"resource","hours","sessions","events",
/// "consumed":[{"resource","quantity","unit"}],"produced":[…],"machines"|"members":{ref: n}}.
nlohmann::ordered_json usage_json(const UsageRow& row, By by);

/// `report maintenance`: the hours each machine was used since it was last serviced, against
/// its interval. A machine is a `use` event's resourceInventoriedAs or a machine with a
/// configured interval. Its service is a `modify` event of it (resourceInventoriedAs = the
/// machine): in ValueFlows a repair or service is a process whose output is the modified
/// resource (valueflows.md §1: modify, output, pairs with accept); the event's `note` says what
/// was done. The use since a service is that of the `use` events whose time (above) is at or
/// after the last service's.
struct MaintenanceOptions {
  std::chrono::milliseconds default_interval{0};               ///< [maintenance] interval; 0: none
  std::map<std::string, std::chrono::milliseconds> intervals;  ///< [maintenance.intervals]
};

/// One machine.
struct MaintenanceRow {
  std::string machine;
  double hours_since = 0;  ///< use since the last service (all use when never serviced)
  std::int64_t sessions_since = 0;
  double hours_total = 0;                       ///< all stored use
  std::optional<std::int64_t> last_service_ms;  ///< the last modify's time; nullopt: never
  std::string last_service_note;                ///< its `note`, "" when it has none
  std::optional<double> interval_hours;         ///< nullopt: no interval configured
  std::optional<double> hours_left;             ///< interval − hours_since; < 0: overdue
  bool overdue() const { return hours_left && *hours_left < 0; }
};

/// The machines of `events`: those with an interval first, least hours left first (the most
/// overdue at the top), then those without, each group by machine.
std::vector<MaintenanceRow> maintenance(const std::vector<StoredEvent>& events,
                                        const MaintenanceOptions& options);

/// The same over the store's confirmed events. Errors: those of Store::for_each_event.
Result<std::vector<MaintenanceRow>> maintenance(Store& store, const MaintenanceOptions& options);

/// An aligned table: MACHINE, USE SINCE (hours since the last service, 2 decimals), SESSIONS,
/// LAST SERVICE (UTC date and note, or "never"), INTERVAL ("200 h" or "-"), STATUS ("overdue
/// by 12.50 h", "due in 37.50 h" or "-"). "no machines" when `rows` is empty.
std::string format_maintenance_table(const std::vector<MaintenanceRow>& rows);

/// RFC 4180 CSV with a header: machine,hours_since_service,sessions_since_service,hours_total,
/// last_service,last_service_note,interval_hours,hours_left,overdue (last_service RFC 3339;
/// empty fields for what is not known). CRLF line ends.
std::string format_maintenance_csv(const std::vector<MaintenanceRow>& rows);

/// {"machine","hours_since_service","sessions_since_service","hours_total","last_service":
/// {"time","note"}|null,"interval_hours"|null,"hours_left"|null,"overdue"}.
nlohmann::ordered_json maintenance_json(const MaintenanceRow& row);

/// `reflow-ingest members`: the unknown cards machines saw recently, for enrolment (issue 17).
/// An unknown card is the event a badge driver emits when a card's keyed hash is in no member's
/// badges (PROTOCOL §4.1): a `cite` of the machine (resourceInventoriedAs) at hasPointInTime with
/// meta {"badge": "unknown", "badge_hash": HASH}. The hash is the agent's keyed hash (43
/// base64url characters; the raw card id never leaves the device): `reflow-agent members add
/// HANDLE --badge HASH` on that device enrols it. The node does not know the device's members
/// file, so a card enrolled since it was seen is still listed until it falls out of `since`.
struct UnknownCardRow {
  std::string device;
  std::string machine;  ///< the cited resource (the machine's resource reference)
  std::string hash;     ///< the keyed badge hash
  std::int64_t times = 0;
  std::int64_t first_seen_ms = 0;  ///< event time (hasPointInTime, else recorded), Unix ms
  std::int64_t last_seen_ms = 0;
};

/// The unknown cards of `events` whose time is at or after `since_unix_ms`, one row per device,
/// machine and hash: the most recently seen first, then by device, machine and hash. Events
/// other than unknown-card cites, or whose hash is not 43 base64url characters, are skipped.
std::vector<UnknownCardRow> unknown_cards(const std::vector<StoredEvent>& events,
                                          std::int64_t since_unix_ms);

/// The same over the store's confirmed `cite` events. Errors: those of Store::for_each_event.
Result<std::vector<UnknownCardRow>> unknown_cards(Store& store, std::int64_t since_unix_ms);

/// An aligned table: LAST SEEN (RFC 3339), DEVICE, MACHINE, TIMES, BADGE (the hash). "no unknown
/// cards in the period" when `rows` is empty.
std::string format_unknown_cards_table(const std::vector<UnknownCardRow>& rows);

/// {"device","machine","badge","times","first_seen","last_seen"} (times RFC 3339).
nlohmann::ordered_json unknown_card_json(const UnknownCardRow& row);

}  // namespace ingest::report
