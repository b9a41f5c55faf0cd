// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/log_limiter.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace ingest {
namespace {

using std::chrono::milliseconds;
using TimePoint = RejectionLogLimiter::TimePoint;

const TimePoint k_limiter_t0{std::chrono::hours(1)};

// Issue 14 item 13: every rejection was logged, so garbage filled the log as fast as it came.
TEST(RejectionLogLimiterTest, LogsTheFirstFewPerSenderThenSummarisesTheRest) {
  RejectionLogLimiter limiter(LogLimits{3, milliseconds(60'000), 16});
  int logged = 0;
  for (int i = 0; i < 1000; ++i)
    logged += limiter.admit("junk", k_limiter_t0 + milliseconds(i)) ? 1 : 0;
  EXPECT_EQ(logged, 3);
  EXPECT_TRUE(limiter.admit("fablab-mk4-01", k_limiter_t0 + milliseconds(5)));  // its own budget
  EXPECT_EQ(limiter.suppressed_total(), 997u);

  EXPECT_TRUE(limiter.take_summaries(k_limiter_t0 + milliseconds(59'999)).empty());
  auto summaries = limiter.take_summaries(k_limiter_t0 + milliseconds(60'000));
  ASSERT_EQ(summaries.size(), 1u);
  EXPECT_EQ(summaries[0].sender, "junk");
  EXPECT_EQ(summaries[0].suppressed, 997u);
  EXPECT_TRUE(limiter.take_summaries(k_limiter_t0 + milliseconds(60'001)).empty());

  // A new window logs again.
  EXPECT_TRUE(limiter.admit("junk", k_limiter_t0 + milliseconds(60'010)));
}

TEST(RejectionLogLimiterTest, AWindowEndedByANewRejectionIsStillSummarised) {
  RejectionLogLimiter limiter(LogLimits{1, milliseconds(1000), 16});
  EXPECT_TRUE(limiter.admit("junk", k_limiter_t0));
  EXPECT_FALSE(limiter.admit("junk", k_limiter_t0 + milliseconds(10)));
  EXPECT_TRUE(limiter.admit("junk", k_limiter_t0 + milliseconds(1000)));
  EXPECT_FALSE(limiter.admit("junk", k_limiter_t0 + milliseconds(1001)));
  auto summaries = limiter.take_summaries(k_limiter_t0 + milliseconds(1500));
  ASSERT_EQ(summaries.size(), 1u);
  EXPECT_EQ(summaries[0].suppressed, 1u);
  summaries = limiter.take_summaries(k_limiter_t0 + milliseconds(2000));
  ASSERT_EQ(summaries.size(), 1u);
  EXPECT_EQ(summaries[0].suppressed, 1u);
}

TEST(RejectionLogLimiterTest, SendersBeyondTheTrackedNumberShareOneBucket) {
  RejectionLogLimiter limiter(LogLimits{2, milliseconds(1000), 4});
  int logged = 0;
  for (int i = 0; i < 10'000; ++i)
    logged += limiter.admit(fmt::format("dev-{}", i), k_limiter_t0) ? 1 : 0;
  EXPECT_EQ(logged, 4 + 2);  // one each for the 4 tracked, 2 for the rest
  auto summaries = limiter.take_summaries(k_limiter_t0 + milliseconds(1000));
  ASSERT_EQ(summaries.size(), 1u);
  EXPECT_EQ(summaries[0].sender, "*");
  EXPECT_EQ(summaries[0].suppressed, 10'000u - 6u);
}

}  // namespace
}  // namespace ingest
