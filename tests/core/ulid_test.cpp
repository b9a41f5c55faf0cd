// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/ulid.hpp>

#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace agent {
namespace {

class UlidTest : public ::testing::Test {
 protected:
  UlidGenerator m_gen;
};

TEST_F(UlidTest, EncodesTimeAsTheFirstTenCharacters) {
  // The example of github.com/ulid/spec: 1469918176385 ms → "01ARYZ6S41".
  const std::string id = m_gen.next(1'469'918'176'385);
  ASSERT_EQ(id.size(), 26u);
  EXPECT_EQ(id.substr(0, 10), "01ARYZ6S41");
  EXPECT_TRUE(is_valid_ulid(id)) << id;
}

TEST_F(UlidTest, FloorIsTheSmallestIdOfItsMillisecondAndTimeReadsItBack) {
  EXPECT_EQ(ulid_floor(1'469'918'176'385), "01ARYZ6S410000000000000000");
  EXPECT_EQ(ulid_time("01ARYZ6S410000000000000000"), 1'469'918'176'385);
  const std::string id = m_gen.next(1'469'918'176'385);
  EXPECT_EQ(ulid_time(id), 1'469'918'176'385);
  EXPECT_LE(ulid_floor(1'469'918'176'385), id);
  EXPECT_LT(id, ulid_floor(1'469'918'176'386));
  EXPECT_EQ(ulid_floor(-5), "00000000000000000000000000");
  EXPECT_EQ(ulid_time("7ZZZZZZZZZZZZZZZZZZZZZZZZZ"), (std::int64_t{1} << 48) - 1);
  EXPECT_EQ(ulid_time("01ARYZ6S41"), std::nullopt);
  EXPECT_EQ(ulid_time("01ARYZ6S41000000000000000U"), std::nullopt);
}

TEST_F(UlidTest, IsMonotonicWithinOneMillisecond) {
  std::vector<std::string> ids;
  for (int i = 0; i < 1000; ++i)
    ids.push_back(m_gen.next(1'767'225'600'000));
  for (std::size_t i = 1; i < ids.size(); ++i) {
    EXPECT_LT(ids[i - 1], ids[i]);
    EXPECT_EQ(ids[i].substr(0, 10), ids[0].substr(0, 10));
  }
}

TEST_F(UlidTest, StaysMonotonicWhenTheClockGoesBackwards) {
  const std::string before = m_gen.next(1'767'225'600'000);
  const std::string after = m_gen.next(1'767'225'500'000);
  EXPECT_LT(before, after);
  EXPECT_EQ(after.substr(0, 10), before.substr(0, 10));
  // Once the clock passes the old time again, the new time is used.
  const std::string later = m_gen.next(1'767'225'600'001);
  EXPECT_LT(after, later);
  EXPECT_NE(later.substr(0, 10), before.substr(0, 10));
}

TEST_F(UlidTest, SortsByCreationTimeAcrossMilliseconds) {
  std::vector<std::string> ids;
  for (std::int64_t ms = 1'000; ms < 1'000'000'000'000; ms = ms * 3 + 7)
    ids.push_back(m_gen.next(ms));
  for (std::size_t i = 1; i < ids.size(); ++i)
    EXPECT_LT(ids[i - 1], ids[i]);
}

TEST_F(UlidTest, RandomPartDiffersBetweenGenerators) {
  UlidGenerator other;
  std::set<std::string> ids{m_gen.next(5), other.next(5)};
  EXPECT_EQ(ids.size(), 2u);
}

TEST_F(UlidTest, ValidatesForm) {
  EXPECT_TRUE(is_valid_ulid("01ARYZ6S41TSV4RRFFQ69G5FAV"));
  EXPECT_TRUE(is_valid_ulid("7ZZZZZZZZZZZZZZZZZZZZZZZZZ"));
  EXPECT_FALSE(is_valid_ulid("8ZZZZZZZZZZZZZZZZZZZZZZZZZ"));  // over 128 bits
  EXPECT_FALSE(is_valid_ulid("01ARYZ6S41TSV4RRFFQ69G5FA"));   // 25 characters
  EXPECT_FALSE(is_valid_ulid("01ARYZ6S41TSV4RRFFQ69G5FAVX"));
  EXPECT_FALSE(is_valid_ulid("01aryz6s41tsv4rrffq69g5fav"));  // lower case
  EXPECT_FALSE(is_valid_ulid("01ARYZ6S41TSV4RRFFQ69G5FAU"));  // U is not Crockford
  EXPECT_FALSE(is_valid_ulid("01ARYZ6S41TSV4RRFFQ69G5FAI"));
  EXPECT_FALSE(is_valid_ulid(""));
}

}  // namespace
}  // namespace agent
