// SPDX-License-Identifier: AGPL-3.0-or-later
// The ValueFlows builders every driver makes its events with (reflow/drivers/valueflows.hpp).
#include <gtest/gtest.h>

#include <reflow/drivers/valueflows.hpp>

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
  EXPECT_EQ(produce("benchy.gcode", quantity(1, "one"), "t", "p").dump(),
            R"({"action":"produce","resourceConformsTo":"benchy.gcode",)"
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

}  // namespace
}  // namespace agent::vf
