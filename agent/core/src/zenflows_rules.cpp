// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/zenflows_rules.hpp>

#include <algorithm>
#include <initializer_list>

#include <fmt/format.h>

namespace agent::vf {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::string_view k_per_action = "valueflows.md §2c";
constexpr std::string_view k_checked_source = "valueflows.md §2d";

bool has_text(const Json& fields, std::string_view name) {
  const auto it = fields.find(name);
  return it != fields.end() && it->is_string() && !it->get_ref<const std::string&>().empty();
}

bool has(const Json& fields, std::string_view name) {
  return fields.find(name) != fields.end();
}

bool is_one_of(std::string_view action, std::initializer_list<std::string_view> set) {
  return std::find(set.begin(), set.end(), action) != set.end();
}

// One rule: `field` must be there for the action, because `why`.
struct Rule {
  std::string_view field;
  bool text;  // a non-empty string (a reference), not just present (a quantity)
  std::string_view why;
  std::string_view section = k_per_action;
};

class Checker {
 public:
  Checker(const Json& fields, std::string_view action) : m_fields(fields), m_action(action) {}

  void require(std::initializer_list<Rule> rules) {
    for (const Rule& rule : rules)
      if (rule.text ? !has_text(m_fields, rule.field) : !has(m_fields, rule.field))
        add(rule.field, rule.why, rule.section);
  }

  // A resource or, when the event is about a kind of resource only, its specification.
  void require_resource_or_specification(std::string_view why) {
    if (!has_text(m_fields, "resourceInventoriedAs") && !has_text(m_fields, "resourceConformsTo"))
      add("resourceInventoriedAs or resourceConformsTo", why, k_per_action);
  }

  void add(std::string_view field, std::string_view why, std::string_view section) {
    m_problems.push_back(RuleProblem{std::string(field),
                                     fmt::format("required for action \"{}\"", m_action),
                                     std::string(why), section});
  }

  void add_rule(std::string_view field, std::string rule, std::string_view why) {
    m_problems.push_back(
        RuleProblem{std::string(field), std::move(rule), std::string(why), k_per_action});
  }

  std::vector<RuleProblem> take() { return std::move(m_problems); }

 private:
  const Json& m_fields;
  std::string_view m_action;
  std::vector<RuleProblem> m_problems;
};

// The process link an action's event needs: inputOf for what goes into a process, outputOf for
// what comes out of it.
Rule process_rule(std::string_view action) {
  if (action == "use") return {"inputOf", true, "a use is an input of a process"};
  if (action == "work") return {"inputOf", true, "work is an input of a process"};
  if (action == "cite") return {"inputOf", true, "a cite is an input of a process"};
  if (action == "consume") return {"inputOf", true, "a consume is an input of a process"};
  if (action == "accept")
    return {"inputOf", true, "an accept is the input of the process that repairs or tests it"};
  if (action == "pickup") return {"inputOf", true, "a pickup is an input of a process"};
  if (action == "produce") return {"outputOf", true, "a produce is an output of a process"};
  if (action == "modify")
    return {"outputOf", true, "a modify is the output of the process that accepted it"};
  return {"outputOf", true, "a dropoff is an output of a process"};  // dropoff
}

}  // namespace

bool keeps_one_agent(std::string_view action) noexcept {
  return is_one_of(
      action, {"consume", "produce", "raise", "accept", "modify", "pickup", "dropoff", "move"});
}

std::string RuleProblem::message() const {
  return fmt::format("{}: {} (zenflows, {}: {})", field, rule, section, why);
}

std::vector<RuleProblem> zenflows_problems(const Json& fields) {
  if (!fields.is_object() || !has_text(fields, "action")) return {};
  const std::string& action = fields["action"].get_ref<const std::string&>();
  Checker c(fields, action);
  constexpr Rule k_effort{"effortQuantity", false, "the time the resource was used"};
  constexpr Rule k_inventoried{"resourceInventoriedAs", true,
                               "the resource it changes; a specification alone is not enough"};

  if (action == "use") {
    c.require({process_rule(action), k_effort});
    c.require_resource_or_specification("the resource used, or its kind");
  } else if (action == "work") {
    c.require({process_rule(action),
               {"effortQuantity", false, "the time worked"},
               {"resourceConformsTo", true, "the kind of work"}});
  } else if (action == "cite") {
    c.require({process_rule(action), {"resourceQuantity", false, "how much is cited"}});
    c.require_resource_or_specification("the resource cited, or its kind");
  } else if (action == "consume") {
    c.require({process_rule(action),
               {"resourceInventoriedAs", true,
                "the resource it decrements; a specification alone is not enough"},
               {"resourceQuantity", false, "how much was consumed"}});
  } else if (action == "produce" || action == "raise") {
    if (action == "produce") c.require({process_rule(action)});
    c.require({{"resourceInventoriedAs", true,
                "the resource it increments, or with resourceConformsTo the name of the new "
                "resource it creates (newInventoriedResource.name)",
                k_checked_source},
               {"resourceQuantity", false,
                action == "produce" ? "how much was produced" : "how much is added"}});
  } else if (action == "lower") {
    c.require({k_inventoried, {"resourceQuantity", false, "how much is taken off"}});
  } else if (is_one_of(action, {"accept", "modify", "pickup", "dropoff"})) {
    c.require({process_rule(action),
               k_inventoried,
               {"resourceQuantity", false, "the resource's whole onhand quantity"}});
  } else if (is_one_of(action, {"transfer", "transferCustody", "transferAllRights", "move"})) {
    c.require({{"resourceInventoriedAs", true,
                "the provider's resource it takes from; a specification alone is not enough"},
               {"resourceQuantity", false, "how much is handed over"}});
  } else if (action == "deliverService") {
    c.require({{"resourceConformsTo", true, "the kind of service"},
               {"resourceQuantity", false, "how much service was delivered"}});
    if (has_text(fields, "inputOf") && fields["inputOf"] == fields["outputOf"])
      c.add_rule("inputOf, outputOf", "must differ for action \"deliverService\"",
                 "a service delivered by one process goes into another");
  } else {
    return {};
  }

  if (keeps_one_agent(action) && has_text(fields, "provider") && has_text(fields, "receiver") &&
      fields["provider"] != fields["receiver"])
    c.add_rule("provider, receiver",
               fmt::format("must be the same agent for action \"{}\"", action),
               "the agent changes its own resource");
  return c.take();
}

Status check_zenflows_rules(const Json& fields) {
  const std::vector<RuleProblem> problems = zenflows_problems(fields);
  if (problems.empty()) return {};
  return fail(ErrorCode::rejected, problems.front().message());
}

}  // namespace agent::vf
