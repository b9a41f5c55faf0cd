// SPDX-License-Identifier: AGPL-3.0-or-later
// zenflows' per-action rules (reflow/core/zenflows_rules.hpp, valueflows.md §2c–2d): an event that
// has what its action needs passes; without its process link, quantity or resource it does not,
// and each problem names the field, the rule and where the rule is written down.
#include <reflow/core/zenflows_rules.hpp>

#include <gtest/gtest.h>

namespace agent::vf {
namespace {

using Json = nlohmann::ordered_json;

const char* k_at = "2026-01-01T00:30:00.000Z";

Json quantity(double value, const char* unit) {
  return {{"hasNumericalValue", value}, {"hasUnit", unit}};
}

Json without(Json fields, const char* field) {
  fields.erase(field);
  return fields;
}

Json with(Json fields, const char* field, Json value) {
  fields[field] = std::move(value);
  return fields;
}

void expect_refused(const Json& fields, const std::string& message) {
  Status s = check_zenflows_rules(fields);
  ASSERT_FALSE(s) << fields.dump();
  EXPECT_EQ(s.error().code, ErrorCode::rejected);
  EXPECT_EQ(s.error().message, message);
}

const Json k_use = {{"action", "use"},
                    {"resourceInventoriedAs", "printer:mk4"},
                    {"effortQuantity", quantity(0.5, "hour")},
                    {"hasBeginning", "2026-01-01T00:00:00.000Z"},
                    {"hasEnd", k_at},
                    {"inputOf", "sim:a:job-1"}};
const Json k_consume = {{"action", "consume"},
                        {"resourceInventoriedAs", "spool:pla-01"},
                        {"resourceQuantity", quantity(3, "gram")},
                        {"hasPointInTime", k_at},
                        {"inputOf", "sim:a:job-1"}};
const Json k_produce = {{"action", "produce"},
                        {"resourceInventoriedAs", "benchy.gcode, job 1 on printer:mk4"},
                        {"resourceConformsTo", "benchy.gcode"},
                        {"resourceQuantity", quantity(1, "one")},
                        {"hasPointInTime", k_at},
                        {"outputOf", "sim:a:job-1"}};

TEST(ZenflowsRulesTest, UseWithoutItsProcessIsRefused) {
  EXPECT_TRUE(check_zenflows_rules(k_use));
  expect_refused(without(k_use, "inputOf"),
                 R"(inputOf: required for action "use" (zenflows, valueflows.md §2c: a use is an )"
                 R"(input of a process))");
  expect_refused(without(k_use, "effortQuantity"),
                 R"(effortQuantity: required for action "use" (zenflows, valueflows.md §2c: the )"
                 R"(time the resource was used))");
  expect_refused(without(k_use, "resourceInventoriedAs"),
                 R"(resourceInventoriedAs or resourceConformsTo: required for action "use" )"
                 R"((zenflows, valueflows.md §2c: the resource used, or its kind))");
  EXPECT_FALSE(check_zenflows_rules(with(k_use, "inputOf", "")));
}

TEST(ZenflowsRulesTest, ConsumeWithoutItsProcessOrItsResourceIsRefused) {
  EXPECT_TRUE(check_zenflows_rules(k_consume));
  expect_refused(without(k_consume, "inputOf"),
                 R"(inputOf: required for action "consume" (zenflows, valueflows.md §2c: a )"
                 R"(consume is an input of a process))");
  // A specification alone (what moonraker sent without a spool) is not a resource to decrement.
  expect_refused(with(without(k_consume, "resourceInventoriedAs"), "resourceConformsTo", "PLA"),
                 R"(resourceInventoriedAs: required for action "consume" (zenflows, )"
                 R"(valueflows.md §2c: the resource it decrements; a specification alone is not )"
                 R"(enough))");
  expect_refused(without(k_consume, "resourceQuantity"),
                 R"(resourceQuantity: required for action "consume" (zenflows, valueflows.md )"
                 R"(§2c: how much was consumed))");
}

TEST(ZenflowsRulesTest, ProduceWithoutItsProcessOrANameForTheNewResourceIsRefused) {
  EXPECT_TRUE(check_zenflows_rules(k_produce));
  expect_refused(without(k_produce, "outputOf"),
                 R"(outputOf: required for action "produce" (zenflows, valueflows.md §2c: a )"
                 R"(produce is an output of a process))");
  // Only a specification (what the printer drivers sent before): zenflows cannot name the part.
  expect_refused(without(k_produce, "resourceInventoriedAs"),
                 R"(resourceInventoriedAs: required for action "produce" (zenflows, )"
                 R"(valueflows.md §2d: the resource it increments, or with resourceConformsTo )"
                 R"(the name of the new resource it creates (newInventoriedResource.name)))");
  expect_refused(without(k_produce, "resourceQuantity"),
                 R"(resourceQuantity: required for action "produce" (zenflows, valueflows.md )"
                 R"(§2c: how much was produced))");
}

TEST(ZenflowsRulesTest, EveryProblemOfAnEventIsListedInRuleOrder) {
  const Json bare = {{"action", "consume"}, {"hasPointInTime", k_at}};
  const auto problems = zenflows_problems(bare);
  ASSERT_EQ(problems.size(), 3u);
  EXPECT_EQ(problems[0].field, "inputOf");
  EXPECT_EQ(problems[1].field, "resourceInventoriedAs");
  EXPECT_EQ(problems[2].field, "resourceQuantity");
  for (const auto& p : problems) {
    EXPECT_EQ(p.rule, R"(required for action "consume")");
    EXPECT_EQ(p.section, "valueflows.md §2c");
  }
}

TEST(ZenflowsRulesTest, WorkNeedsItsProcessAndItsKind) {
  const Json work = {{"action", "work"},
                     {"effortQuantity", quantity(1, "hour")},
                     {"resourceConformsTo", "sorting"},
                     {"hasPointInTime", k_at},
                     {"inputOf", "station:a:run-1"}};
  EXPECT_TRUE(check_zenflows_rules(work));
  expect_refused(without(work, "inputOf"),
                 R"(inputOf: required for action "work" (zenflows, valueflows.md §2c: work is )"
                 R"(an input of a process))");
  EXPECT_FALSE(check_zenflows_rules(without(work, "resourceConformsTo")));
}

// What a recycling station records (an intake `accept` of a batch, no process) is one zenflows
// refuses: accept is a resource entering a repair or test process.
TEST(ZenflowsRulesTest, AcceptAndModifyNeedTheirProcessAndTheWholeResource) {
  const Json accept = {{"action", "accept"},
                       {"hasPointInTime", k_at},
                       {"resourceInventoriedAs", "batch:17"},
                       {"resourceQuantity", quantity(2.5, "kilogram")}};
  expect_refused(accept,
                 R"(inputOf: required for action "accept" (zenflows, valueflows.md §2c: an accept )"
                 R"(is the input of the process that repairs or tests it))");
  EXPECT_TRUE(check_zenflows_rules(with(accept, "inputOf", "repair-1")));
  const Json modify = with(with(accept, "action", "modify"), "outputOf", "repair-1");
  EXPECT_TRUE(check_zenflows_rules(modify));
  EXPECT_EQ(zenflows_problems(without(modify, "resourceInventoriedAs")).at(0).field,
            "resourceInventoriedAs");
}

TEST(ZenflowsRulesTest, TransfersNeedTheProvidersResourceAndAQuantity) {
  const Json transfer = {{"action", "transferCustody"},
                         {"hasPointInTime", k_at},
                         {"provider", "alice"},
                         {"receiver", "bob"},
                         {"resourceInventoriedAs", "batch:17"},
                         {"resourceQuantity", quantity(2.5, "kilogram")}};
  EXPECT_TRUE(check_zenflows_rules(transfer));  // two agents: that is what a transfer is
  for (const char* action : {"transfer", "transferAllRights"})
    EXPECT_TRUE(check_zenflows_rules(with(transfer, "action", action))) << action;
  expect_refused(without(transfer, "resourceInventoriedAs"),
                 R"(resourceInventoriedAs: required for action "transferCustody" (zenflows, )"
                 R"(valueflows.md §2c: the provider's resource it takes from; a specification )"
                 R"(alone is not enough))");
  // move stays with one agent.
  expect_refused(with(transfer, "action", "move"),
                 R"(provider, receiver: must be the same agent for action "move" (zenflows, )"
                 R"(valueflows.md §2c: the agent changes its own resource))");
  EXPECT_TRUE(check_zenflows_rules(with(with(transfer, "action", "move"), "receiver", "alice")));
}

TEST(ZenflowsRulesTest, RaiseLowerCiteAndDeliverService) {
  const Json raise = {{"action", "raise"},
                      {"hasPointInTime", k_at},
                      {"resourceConformsTo", "PLA"},
                      {"resourceQuantity", quantity(1000, "gram")}};
  // A new resource without a name: zenflows refuses it (newInventoriedResource.name).
  EXPECT_EQ(zenflows_problems(raise).at(0).section, "valueflows.md §2d");
  EXPECT_TRUE(check_zenflows_rules(with(raise, "resourceInventoriedAs", "spool:pla-01")));
  EXPECT_TRUE(check_zenflows_rules(
      with(with(raise, "action", "lower"), "resourceInventoriedAs", "spool:pla-01")));
  EXPECT_FALSE(check_zenflows_rules(with(raise, "action", "lower")));
  const Json cite = with(with(raise, "action", "cite"), "inputOf", "job-1");
  EXPECT_TRUE(check_zenflows_rules(cite));
  EXPECT_FALSE(check_zenflows_rules(without(cite, "inputOf")));
  const Json service = with(with(raise, "action", "deliverService"), "inputOf", "job-1");
  EXPECT_TRUE(check_zenflows_rules(with(service, "outputOf", "job-2")));
  expect_refused(with(service, "outputOf", "job-1"),
                 R"(inputOf, outputOf: must differ for action "deliverService" (zenflows, )"
                 R"(valueflows.md §2c: a service delivered by one process goes into another))");
}

TEST(ZenflowsRulesTest, ConsumeAndProduceStayWithOneAgent) {
  EXPECT_TRUE(check_zenflows_rules(with(with(k_consume, "provider", "a"), "receiver", "a")));
  EXPECT_FALSE(check_zenflows_rules(with(with(k_consume, "provider", "a"), "receiver", "b")));
  EXPECT_FALSE(check_zenflows_rules(with(with(k_produce, "provider", "a"), "receiver", "b")));
  EXPECT_TRUE(check_zenflows_rules(with(k_produce, "provider", "a")));  // receiver defaults
}

TEST(ZenflowsRulesTest, WhatIsNotAnEventWithAnActionHasNoProblems) {
  EXPECT_TRUE(zenflows_problems(Json::array()).empty());
  EXPECT_TRUE(zenflows_problems({{"hasPointInTime", k_at}}).empty());
  EXPECT_TRUE(zenflows_problems({{"action", "copy"}}).empty());  // validate_submission's
}

}  // namespace
}  // namespace agent::vf
