// SPDX-License-Identifier: AGPL-3.0-or-later
// The ValueFlows pieces every driver's events are made of (docs/reference/valueflows.md §2;
// PROTOCOL §4): measures, and the `use`, `consume` and `produce` events of a process. Each builder
// returns the event's fields in one order (action, resource, quantity, time, process), so that
// every driver's events read alike; the caller adds `meta` and anything else the event needs.
#pragma once

#include <string_view>

#include <nlohmann/json.hpp>

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

/// A `produce` of something conforming to `conforms_to`: {"action":"produce",
/// "resourceConformsTo": conforms_to, "resourceQuantity": quantity, "hasPointInTime": at,
/// "outputOf": process}.
nlohmann::ordered_json produce(std::string_view conforms_to, nlohmann::ordered_json quantity,
                               std::string_view at, std::string_view process);

}  // namespace agent::vf
