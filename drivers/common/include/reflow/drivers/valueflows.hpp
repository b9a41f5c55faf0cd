// SPDX-License-Identifier: AGPL-3.0-or-later
// The ValueFlows pieces every driver's events are made of (docs/reference/valueflows.md §2;
// PROTOCOL §4): measures, and the `use`, `consume` and `produce` events of a process. Each builder
// returns the event's fields in one order (action, resource, quantity, time, process), so that
// every driver's events read alike; the caller adds `meta` and anything else the event needs.
// zenflows' per-action rules that these events must pass are agent/core's
// (reflow/core/zenflows_rules.hpp, included here): the drivers' tests run every event they emit
// through check_zenflows_rules.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include <reflow/core/result.hpp>
#include <reflow/core/zenflows_rules.hpp>

namespace agent::vf {

/// A ValueFlows Measure: {"hasNumericalValue": value, "hasUnit": unit}, `unit` an OM2 unit name
/// (units.hpp: "hour", "gram", "kilowattHour", "one" …).
nlohmann::ordered_json quantity(double value, std::string_view unit);

/// `value` rounded to `decimals` decimal places: value × 10ⁿ rounded, then divided, gives the
/// double nearest the decimal (2.416, not 2.4160000000000004), so that events and golden files
/// compare exactly. `decimals` from 0 to 15.
double round_to(double value, int decimals);

/// What an event is about: one inventoried resource (`resourceInventoriedAs`, e.g. "spool:pla-01"),
/// or, when the driver knows only its kind, a resource specification (`resourceConformsTo`,
/// e.g. "PLA"). When both are set, both are written, the inventoried one first.
struct ResourceRef {
  std::string_view inventoried_as;
  std::string_view conforms_to;

  static ResourceRef inventoried(std::string_view resource) { return {resource, {}}; }
  static ResourceRef conforming(std::string_view specification) { return {{}, specification}; }
};

/// A machine's `use` for a time: {"action":"use", "resourceInventoriedAs": machine,
/// "effortQuantity": `hours` hour, "hasBeginning": begin, "hasEnd": end, "inputOf": process}.
/// Times are RFC 3339 (units.hpp format_rfc3339_ms).
nlohmann::ordered_json use(std::string_view machine, double hours, std::string_view begin,
                           std::string_view end, std::string_view process);

/// A `consume` of `resource` at one time: {"action":"consume", resource, "resourceQuantity":
/// quantity, "hasPointInTime": at, "inputOf": process}.
nlohmann::ordered_json consume(const ResourceRef& resource, nlohmann::ordered_json quantity,
                               std::string_view at, std::string_view process);

/// A `produce` of a new resource: {"action":"produce", "resourceInventoriedAs": new_resource,
/// "resourceConformsTo": conforms_to, "resourceQuantity": quantity, "hasPointInTime": at,
/// "outputOf": process}. `new_resource` is the new resource's reference and, in zenflows, its
/// name: the node's vf-graphql export creates it as `newInventoriedResource {name,
/// trackingIdentifier}` of the `conforms_to` specification (zenflows requires the name,
/// valueflows.md §2d). Make it with part_reference.
nlohmann::ordered_json produce(std::string_view new_resource, std::string_view conforms_to,
                               nlohmann::ordered_json quantity, std::string_view at,
                               std::string_view process);

/// The reference (and name) of the part a print job produces: "<file>, job <job> on <printer>",
/// e.g. "benchy.gcode, job 12 on printer:sim-01": readable where zenflows shows it, and unique
/// as long as the printer's job numbers are (`job` is the same job token as in the job's process
/// reference "<driver>:<name>:job-<job>"). A file name that would make the reference longer
/// than an event's strings may be (k_max_string_bytes, PROTOCOL §4 Limits) is cut at a
/// character boundary and marked "…", before the job and printer that keep it unique.
std::string part_reference(std::string_view file, std::string_view job, std::string_view printer);

/// The process of a metering period that belongs to no known machine session:
/// "<driver>:<name>:period-<begin_unix_ms>" (the period's first millisecond, Unix time).
std::string period_process(std::string_view driver, std::string_view name,
                           std::int64_t begin_unix_ms);

}  // namespace agent::vf
