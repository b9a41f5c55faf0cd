// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include <reflow/core/result.hpp>

namespace agent {

/// Parses a duration with a unit: "250ms", "5s", "2m", "1h", "1d" (whole numbers only).
/// Errors: invalid_argument with a message naming the text and the accepted units.
Result<std::chrono::milliseconds> parse_duration(std::string_view text);

/// Parses a size with a unit: "512B", "64KiB", "256MiB", "1GiB" (IEC, powers of 1024),
/// also "kB", "MB", "GB" (powers of 1000). Errors: invalid_argument as above.
Result<std::uint64_t> parse_size_bytes(std::string_view text);

/// "1.5s", "250ms", "3m20s": a short human form for logs and status.
std::string format_duration(std::chrono::milliseconds d);

/// "1.2 MiB": a short human form for logs and status.
std::string format_size(std::uint64_t bytes);

/// A UTC date and time in the proleptic Gregorian calendar: year, month 1-12, day 1-31, hour
/// 0-23, minute 0-59, second 0-59 (no leap seconds, as Unix time), millisecond 0-999.
struct UtcTime {
  int year = 1970;
  int month = 1;
  int day = 1;
  int hour = 0;
  int minute = 0;
  int second = 0;
  int millisecond = 0;
};

/// The UTC calendar time of a Unix time in milliseconds (negative: before 1970). Computed with
/// std::chrono's calendar, not time_t, which is 32 bits on Debian's armhf and ends in 2038.
UtcTime utc_from_unix_ms(std::int64_t unix_ms);

/// The Unix time in milliseconds of a UTC calendar time; the inverse of utc_from_unix_ms.
/// Fields out of range are not checked (a day 31 in April is May 1st).
std::int64_t unix_ms_from_utc(const UtcTime& t);

/// RFC 3339 UTC with milliseconds: "2026-11-21T09:40:19.123Z" (PROTOCOL §4 `recorded`).
std::string format_rfc3339_ms(std::int64_t unix_ms);

/// RFC 3339 UTC in whole seconds: "2026-11-21T09:40:19Z" (certificate validity in status and
/// `ca` output).
std::string format_rfc3339_s(std::int64_t unix_s);

/// Parses an RFC 3339 timestamp with a `Z` or numeric offset, optional fraction.
/// Returns milliseconds since the Unix epoch. Errors: invalid_argument.
Result<std::int64_t> parse_rfc3339(std::string_view text);

}  // namespace agent
