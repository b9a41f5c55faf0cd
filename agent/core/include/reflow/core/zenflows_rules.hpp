// SPDX-License-Identifier: AGPL-3.0-or-later
// zenflows' per-action rules for an economic event (docs/reference/valueflows.md §2c–2d, zenflows
// `src/zenflows/vf/economic_event.ex` and `economic_event/domain.ex`): which process link, which
// quantity and which resource reference each action needs before zenflows records it. One
// implementation for every side that asks: the drivers' tests (every event a driver emits), the
// agent's writer (a warning at emit, PROTOCOL §4 "zenflows rules") and the node's
// `reflow-ingest export --check`.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/result.hpp>

namespace agent::vf {

/// One zenflows rule an event breaks.
struct RuleProblem {
  std::string field;         ///< the field(s) concerned: "inputOf", "provider, receiver" …
  std::string rule;          ///< what the rule asks: `required for action "consume"`
  std::string why;           ///< zenflows' reason: "a consume is an input of a process"
  std::string_view section;  ///< where the rule is written down: "valueflows.md §2c"

  /// `inputOf: required for action "consume" (zenflows, valueflows.md §2c: a consume is an input
  /// of a process)`.
  std::string message() const;
};

/// Every zenflows rule `fields` (a producer's event, PROTOCOL §4, or a stored payload) breaks, in
/// the order of the rules; empty when it follows them all, when `fields` is not an object or has
/// no action, and for an action zenflows does not know (validate_submission refuses those).
/// Per action (valueflows.md §2c; "reference" = a non-empty string):
/// - `use`: `inputOf`, `effortQuantity`, and `resourceInventoriedAs` or `resourceConformsTo`;
/// - `work`: `inputOf`, `effortQuantity`, `resourceConformsTo` (the kind of work);
/// - `cite`: `inputOf`, `resourceQuantity`, and `resourceInventoriedAs` or `resourceConformsTo`;
/// - `consume`: `inputOf`, `resourceInventoriedAs` (zenflows decrements that resource; a
///   specification alone is not enough), `resourceQuantity`;
/// - `produce`, `raise`: `outputOf` (produce only), `resourceQuantity`, and
///   `resourceInventoriedAs` (an existing resource, or with `resourceConformsTo` a new one whose
///   name the reference gives: zenflows refuses a new resource without a name, §2d);
/// - `lower`: `resourceInventoriedAs`, `resourceQuantity`;
/// - `accept`, `pickup`: `inputOf`; `modify`, `dropoff`: `outputOf`; each with
///   `resourceInventoriedAs` and `resourceQuantity`;
/// - `transfer`, `transferCustody`, `transferAllRights`, `move`: `resourceInventoriedAs`,
///   `resourceQuantity`;
/// - `deliverService`: `resourceConformsTo`, `resourceQuantity`, and `inputOf` ≠ `outputOf`;
/// - `consume`, `produce`, `raise`, `accept`, `modify`, `pickup`, `dropoff`, `move`: `provider` and
///   `receiver`, when both are given, are the same agent.
/// The fields' own form (types, times, units, limits) is validate_submission's; references'
/// server ids are the export's.
std::vector<RuleProblem> zenflows_problems(const nlohmann::ordered_json& fields);

/// True for the actions whose provider and receiver zenflows requires to be one agent (consume,
/// produce, raise, accept, modify, pickup, dropoff, move: valueflows.md §2c).
bool keeps_one_agent(std::string_view action) noexcept;

/// zenflows_problems' first problem as an error: rejected, with RuleProblem::message(); success
/// when there is none.
Status check_zenflows_rules(const nlohmann::ordered_json& fields);

}  // namespace agent::vf
