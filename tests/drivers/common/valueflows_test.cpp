// SPDX-License-Identifier: AGPL-3.0-or-later
// The ValueFlows builders every driver makes its events with (reflow/drivers/valueflows.hpp).
#include <gtest/gtest.h>

#include <reflow/drivers/valueflows.hpp>

#include <reflow/core/event.hpp>

namespace agent::vf {
namespace {

TEST(ValueFlowsTest, QuantityIsAMeasureWithAnOm2Unit) {
  EXPECT_EQ(quantity(2.5, "gram").dump(), R"({"hasNumericalValue":2.5,"hasUnit":"gram"})");
}

TEST(ValueFlowsTest, RoundToGivesTheNearestDecimal) {
  EXPECT_EQ(round_to(2.4160000000000004, 3), 2.416);
  EXPECT_EQ(round_to(0.1234565, 6), 0.123457);
  EXPECT_EQ(round_to(7.5, 0), 8.0);
}

TEST(ValueFlowsTest, UseConsumeAndProduceWriteTheirFieldsInOneOrder) {
  EXPECT_EQ(
      use("printer:mk4", 0.5, "2026-01-01T00:00:00.000Z", "2026-01-01T00:30:00.000Z", "sim:a:job-1")
          .dump(),
      R"({"action":"use","resourceInventoriedAs":"printer:mk4",)"
      R"("effortQuantity":{"hasNumericalValue":0.5,"hasUnit":"hour"},)"
      R"("hasBeginning":"2026-01-01T00:00:00.000Z","hasEnd":"2026-01-01T00:30:00.000Z",)"
      R"("inputOf":"sim:a:job-1"})");
  EXPECT_EQ(consume(ResourceRef::inventoried("spool:pla-01"), quantity(3, "gram"),
                    "2026-01-01T00:30:00.000Z", "sim:a:job-1")
                .dump(),
            R"({"action":"consume","resourceInventoriedAs":"spool:pla-01",)"
            R"("resourceQuantity":{"hasNumericalValue":3.0,"hasUnit":"gram"},)"
            R"("hasPointInTime":"2026-01-01T00:30:00.000Z","inputOf":"sim:a:job-1"})");
  EXPECT_EQ(consume(ResourceRef::conforming("PLA"), quantity(3, "gram"), "t", "p").dump(),
            R"({"action":"consume","resourceConformsTo":"PLA",)"
            R"("resourceQuantity":{"hasNumericalValue":3.0,"hasUnit":"gram"},)"
            R"("hasPointInTime":"t","inputOf":"p"})");
  EXPECT_EQ(
      produce("benchy.gcode, job 1 on printer:mk4", "benchy.gcode", quantity(1, "one"), "t", "p")
          .dump(),
      R"({"action":"produce","resourceInventoriedAs":"benchy.gcode, job 1 on printer:mk4",)"
      R"("resourceConformsTo":"benchy.gcode",)"
      R"("resourceQuantity":{"hasNumericalValue":1.0,"hasUnit":"one"},)"
      R"("hasPointInTime":"t","outputOf":"p"})");
}

TEST(ValueFlowsTest, BothResourceReferencesAreWrittenInventoriedFirst) {
  const auto fields = consume({"meter:1", "electricity"}, quantity(1, "kilowattHour"), "t", "p");
  EXPECT_EQ(fields.dump(),
            R"({"action":"consume","resourceInventoriedAs":"meter:1",)"
            R"("resourceConformsTo":"electricity",)"
            R"("resourceQuantity":{"hasNumericalValue":1.0,"hasUnit":"kilowattHour"},)"
            R"("hasPointInTime":"t","inputOf":"p"})");
}

TEST(ValueFlowsTest, PartAndPeriodReferencesNameTheirJobAndPeriod) {
  EXPECT_EQ(part_reference("benchy.gcode", "12", "printer:sim-01"),
            "benchy.gcode, job 12 on printer:sim-01");
  EXPECT_EQ(period_process("gpio", "meter", 1767225600000), "gpio:meter:period-1767225600000");
}

// A file name near the protocol's string limit must not make the part's reference one the writer
// refuses: the file name is cut, at a character boundary, and the job and printer kept.
TEST(ValueFlowsTest, APartReferenceStaysWithinTheProtocolsStringLimit) {
  std::string file;
  while (file.size() < k_max_string_bytes)
    file += "ü";  // 2 bytes each: a cut could split one
  const std::string reference = part_reference(file, "000016", "printer:prusa-mk4");
  EXPECT_LE(reference.size(), k_max_string_bytes);
  EXPECT_TRUE(reference.ends_with("…, job 000016 on printer:prusa-mk4")) << reference;
  EXPECT_TRUE(nlohmann::json::accept(nlohmann::json(reference).dump()));  // valid UTF-8
  const std::string exact(k_max_string_bytes - std::string(", job 1 on p").size(), 'a');
  EXPECT_EQ(part_reference(exact, "1", "p"), exact + ", job 1 on p");
}

// What each builder makes passes zenflows' rules; the same event without its process link, or
// without what the action needs, does not, and the error names the field and the rule.
const char* k_at = "2026-01-01T00:30:00.000Z";

nlohmann::ordered_json without(nlohmann::ordered_json fields, const char* field) {
  fields.erase(field);
  return fields;
}

void expect_refused(const nlohmann::ordered_json& fields, const std::string& message) {
  Status s = check_zenflows_rules(fields);
  ASSERT_FALSE(s) << fields.dump();
  EXPECT_EQ(s.error().code, ErrorCode::rejected);
  EXPECT_EQ(s.error().message, message);
}

TEST(ValueFlowsTest, UseWithoutItsProcessIsRefused) {
  const auto use_fields = use("printer:mk4", 0.5, "2026-01-01T00:00:00.000Z", k_at, "sim:a:job-1");
  EXPECT_TRUE(check_zenflows_rules(use_fields));
  expect_refused(
      without(use_fields, "inputOf"),
      R"(inputOf: required for action "use" (zenflows: a use is an input of a process))");
  expect_refused(without(use_fields, "effortQuantity"),
                 R"(effortQuantity: required for action "use" (zenflows: the time the resource )"
                 R"(was used))");
  expect_refused(without(use_fields, "resourceInventoriedAs"),
                 R"(resourceInventoriedAs or resourceConformsTo: required for action "use" )"
                 R"((zenflows: the resource used, or its kind))");
  auto empty_process = use_fields;
  empty_process["inputOf"] = "";
  EXPECT_FALSE(check_zenflows_rules(empty_process));
}

TEST(ValueFlowsTest, ConsumeWithoutItsProcessOrItsResourceIsRefused) {
  const auto fields =
      consume(ResourceRef::inventoried("spool:pla-01"), quantity(3, "gram"), k_at, "sim:a:job-1");
  EXPECT_TRUE(check_zenflows_rules(fields));
  expect_refused(
      without(fields, "inputOf"),
      R"(inputOf: required for action "consume" (zenflows: a consume is an input of a process))");
  // A specification alone (what moonraker sent without a spool) is not a resource to decrement.
  expect_refused(consume(ResourceRef::conforming("PLA"), quantity(3, "gram"), k_at, "p"),
                 R"(resourceInventoriedAs: required for action "consume" (zenflows: the )"
                 R"(resource it decrements; a specification alone is not enough))");
  expect_refused(without(fields, "resourceQuantity"),
                 R"(resourceQuantity: required for action "consume" (zenflows: how much was )"
                 R"(consumed))");
}

TEST(ValueFlowsTest, ProduceWithoutItsProcessOrANameForTheNewResourceIsRefused) {
  const auto fields = produce("benchy.gcode, job 1 on printer:mk4", "benchy.gcode",
                              quantity(1, "one"), k_at, "sim:a:job-1");
  EXPECT_TRUE(check_zenflows_rules(fields));
  expect_refused(
      without(fields, "outputOf"),
      R"(outputOf: required for action "produce" (zenflows: a produce is an output of a process))");
  // Only a specification (what the printer drivers sent before): zenflows cannot name the part.
  expect_refused(without(fields, "resourceInventoriedAs"),
                 R"(resourceInventoriedAs: required for action "produce" (zenflows: the resource )"
                 R"(it increments, or with resourceConformsTo the name of the new resource it )"
                 R"(creates (newInventoriedResource.name)))");
  expect_refused(without(fields, "resourceQuantity"),
                 R"(resourceQuantity: required for action "produce" (zenflows: how much was )"
                 R"(produced))");
}

TEST(ValueFlowsTest, WorkNeedsItsProcessAndItsKind) {
  nlohmann::ordered_json work = {{"action", "work"},
                                 {"effortQuantity", quantity(1, "hour")},
                                 {"resourceConformsTo", "sorting"},
                                 {"hasPointInTime", k_at},
                                 {"inputOf", "station:a:run-1"}};
  EXPECT_TRUE(check_zenflows_rules(work));
  expect_refused(
      without(work, "inputOf"),
      R"(inputOf: required for action "work" (zenflows: work is an input of a process))");
  EXPECT_FALSE(check_zenflows_rules(without(work, "resourceConformsTo")));
}

TEST(ValueFlowsTest, OtherActionsAreLeftToTheAgentsChecks) {
  EXPECT_TRUE(check_zenflows_rules({{"action", "transferCustody"}}));
  EXPECT_TRUE(check_zenflows_rules(nlohmann::ordered_json::array()));
}

}  // namespace
}  // namespace agent::vf
