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

// What each builder makes passes zenflows' rules (reflow/core/zenflows_rules.hpp, whose own tests
// are tests/core/zenflows_rules_test.cpp).
TEST(ValueFlowsTest, WhatTheBuildersMakePassesZenflowsRules) {
  const char* at = "2026-01-01T00:30:00.000Z";
  EXPECT_TRUE(check_zenflows_rules(use("printer:mk4", 0.5, "2026-01-01T00:00:00.000Z", at, "j")));
  EXPECT_TRUE(check_zenflows_rules(
      consume(ResourceRef::inventoried("spool:pla-01"), quantity(3, "gram"), at, "j")));
  EXPECT_TRUE(check_zenflows_rules(produce(part_reference("benchy.gcode", "1", "printer:mk4"),
                                           "benchy.gcode", quantity(1, "one"), at, "j")));
  // A consume of a kind only (what moonraker sent without a spool) is not one zenflows records.
  EXPECT_FALSE(
      check_zenflows_rules(consume(ResourceRef::conforming("PLA"), quantity(3, "gram"), at, "j")));
}

}  // namespace
}  // namespace agent::vf
