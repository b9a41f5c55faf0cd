// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/units.hpp>

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace agent {
namespace {

using std::chrono::milliseconds;

TEST(UnitsTest, ParsesDurationsInEveryUnit) {
  EXPECT_EQ(parse_duration("250ms").value(), milliseconds(250));
  EXPECT_EQ(parse_duration("30s").value(), milliseconds(30'000));
  EXPECT_EQ(parse_duration("2m").value(), milliseconds(120'000));
  EXPECT_EQ(parse_duration("1h").value(), milliseconds(3'600'000));
  EXPECT_EQ(parse_duration("1d").value(), milliseconds(86'400'000));
  EXPECT_EQ(parse_duration("0s").value(), milliseconds(0));
}

TEST(UnitsTest, RejectsDurationsWithoutAKnownUnitOrWholeNumber) {
  for (const char* text : {"", "30", "s", "-5s", "1.5s", "30 s", "30sec", "5S", "+5s", " 5s", "5s ",
                           "99999999999999999999d", "200000000000d"}) {
    SCOPED_TRACE(text);
    const auto parsed = parse_duration(text);
    ASSERT_FALSE(parsed.has_value());
    EXPECT_EQ(parsed.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(parsed.error().message.find("expected a duration"), std::string::npos);
    EXPECT_NE(parsed.error().message.find('"' + std::string(text) + '"'), std::string::npos)
        << parsed.error().message;
  }
}

TEST(UnitsTest, ParsesSizesInIecAndSiUnits) {
  EXPECT_EQ(parse_size_bytes("512B").value(), 512u);
  EXPECT_EQ(parse_size_bytes("64KiB").value(), 64u * 1024);
  EXPECT_EQ(parse_size_bytes("256MiB").value(), 256ull * 1024 * 1024);
  EXPECT_EQ(parse_size_bytes("1GiB").value(), 1ull << 30);
  EXPECT_EQ(parse_size_bytes("3kB").value(), 3000u);
  EXPECT_EQ(parse_size_bytes("2MB").value(), 2'000'000u);
  EXPECT_EQ(parse_size_bytes("1GB").value(), 1'000'000'000u);
}

TEST(UnitsTest, RejectsSizesWithoutAKnownUnit) {
  for (const char* text : {"", "256", "MiB", "256mib", "1.5MiB", "-1B", "1TiB", "256 MiB",
                           "99999999999999999999B", "9999999999GiB"}) {
    SCOPED_TRACE(text);
    const auto parsed = parse_size_bytes(text);
    ASSERT_FALSE(parsed.has_value());
    EXPECT_EQ(parsed.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(parsed.error().message.find("expected a size"), std::string::npos);
  }
}

TEST(UnitsTest, FormatsRfc3339InUtcWithMilliseconds) {
  EXPECT_EQ(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(format_rfc3339_ms(1'795'254'019'123), "2026-11-21T09:40:19.123Z");
  EXPECT_EQ(format_rfc3339_ms(1'709'164'800'000), "2024-02-29T00:00:00.000Z");
  EXPECT_EQ(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
  EXPECT_EQ(format_rfc3339_ms(7), "1970-01-01T00:00:00.007Z");
  // After 2038-01-19T03:14:07Z, where a 32-bit time_t (Debian's armhf) overflows.
  EXPECT_EQ(format_rfc3339_ms(2'147'483'648'000), "2038-01-19T03:14:08.000Z");
  EXPECT_EQ(format_rfc3339_ms(4'102'444'799'999), "2099-12-31T23:59:59.999Z");
}

TEST(UnitsTest, FormatsRfc3339InWholeSeconds) {
  EXPECT_EQ(format_rfc3339_s(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(format_rfc3339_s(1'795'254'019), "2026-11-21T09:40:19Z");
  EXPECT_EQ(format_rfc3339_s(2'147'483'648), "2038-01-19T03:14:08Z");
  EXPECT_EQ(format_rfc3339_s(-1), "1969-12-31T23:59:59Z");
}

TEST(UnitsTest, ConvertsUtcCalendarTimesBothWaysPast2038) {
  const UtcTime t = utc_from_unix_ms(2'524'608'000'123);  // 2050-01-01T00:00:00.123Z
  EXPECT_EQ(t.year, 2050);
  EXPECT_EQ(t.month, 1);
  EXPECT_EQ(t.day, 1);
  EXPECT_EQ(t.hour, 0);
  EXPECT_EQ(t.millisecond, 123);
  EXPECT_EQ(unix_ms_from_utc(t), 2'524'608'000'123);
  EXPECT_EQ(unix_ms_from_utc({2024, 2, 29, 23, 59, 59, 999}), 1'709'251'199'999);
  EXPECT_EQ(unix_ms_from_utc({1969, 12, 31, 23, 59, 59, 999}), -1);
  for (std::int64_t ms : {std::int64_t{-86'400'001}, std::int64_t{951'782'400'000},
                          std::int64_t{4'102'444'799'999}, std::int64_t{253'402'300'799'999}})
    EXPECT_EQ(unix_ms_from_utc(utc_from_unix_ms(ms)), ms) << ms;
}

TEST(UnitsTest, FormattedTimesParseBackToTheSameMilliseconds) {
  for (std::int64_t ms : {std::int64_t{0}, std::int64_t{1}, std::int64_t{946'684'800'000},
                          std::int64_t{1'709'164'800'000}, std::int64_t{1'795'254'019'123},
                          std::int64_t{4'102'444'799'999}}) {
    SCOPED_TRACE(ms);
    EXPECT_EQ(parse_rfc3339(format_rfc3339_ms(ms)).value(), ms);
  }
}

TEST(UnitsTest, ParsesRfc3339WithZuluOrNumericOffsets) {
  EXPECT_EQ(parse_rfc3339("2026-11-21T09:40:19Z").value(), 1'795'254'019'000);
  EXPECT_EQ(parse_rfc3339("2026-11-21T09:40:19.123Z").value(), 1'795'254'019'123);
  EXPECT_EQ(parse_rfc3339("2026-11-21t09:40:19.123z").value(), 1'795'254'019'123);
  EXPECT_EQ(parse_rfc3339("2026-11-21T10:40:19.123+01:00").value(), 1'795'254'019'123);
  EXPECT_EQ(parse_rfc3339("2026-11-21T04:10:19.123-05:30").value(), 1'795'254'019'123);
  EXPECT_EQ(parse_rfc3339("2026-11-21T09:40:19.123+00:00").value(), 1'795'254'019'123);
  // An offset can move the instant across midnight and a year boundary.
  EXPECT_EQ(parse_rfc3339("1999-12-31T23:00:00-01:00").value(), 946'684'800'000);
  EXPECT_EQ(parse_rfc3339("2024-02-29T00:00:00Z").value(), 1'709'164'800'000);
}

TEST(UnitsTest, TruncatesFractionsToMilliseconds) {
  EXPECT_EQ(parse_rfc3339("2000-01-01T00:00:00.5Z").value(), 946'684'800'500);
  EXPECT_EQ(parse_rfc3339("2000-01-01T00:00:00.12Z").value(), 946'684'800'120);
  EXPECT_EQ(parse_rfc3339("2000-01-01T00:00:00.123456789Z").value(), 946'684'800'123);
  EXPECT_EQ(parse_rfc3339("2000-01-01T00:00:00.999999Z").value(), 946'684'800'999);
}

TEST(UnitsTest, RejectsMalformedRfc3339) {
  const std::vector<std::string> bad = {
      "",
      "2026-11-21",
      "2026-11-21T09:40:19",        // no offset
      "2026-11-21 09:40:19Z",       // space instead of T
      "2026-11-21T09:40Z",          // no seconds
      "2026-13-01T00:00:00Z",       // month 13
      "2026-00-01T00:00:00Z",       // month 0
      "2026-11-00T00:00:00Z",       // day 0
      "2026-11-32T00:00:00Z",       // day 32
      "2026-02-30T00:00:00Z",       // no 30 February
      "2026-02-29T00:00:00Z",       // 2026 is not a leap year
      "2100-02-29T00:00:00Z",       // nor is 2100
      "2026-04-31T00:00:00Z",       // April has 30 days
      "2026-11-21T24:00:00Z",       // hour 24
      "2026-11-21T09:60:00Z",       // minute 60
      "2026-11-21T09:40:19.Z",      // empty fraction
      "2026-11-21T09:40:19+01",     // offset without minutes
      "2026-11-21T09:40:19+01:0",   // short offset
      "2026-11-21T09:40:19+0100",   // offset without colon
      "2026-11-21T09:40:19+24:00",  // offset hour 24
      "2026-11-21T09:40:19Zjunk",   // trailing text
      "2026-11-21T09:40:19.123Z ",  // trailing space
      "26-11-21T09:40:19Z",         // two-digit year
      "2026/11/21T09:40:19Z",       // wrong separators
      "2026-11-21T09:40:19.12a3Z",  // letter in the fraction
  };
  for (const auto& text : bad) {
    SCOPED_TRACE(text);
    const auto parsed = parse_rfc3339(text);
    ASSERT_FALSE(parsed.has_value()) << parsed.value();
    EXPECT_EQ(parsed.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(parsed.error().message.find("RFC 3339"), std::string::npos);
  }
}

}  // namespace
}  // namespace agent
