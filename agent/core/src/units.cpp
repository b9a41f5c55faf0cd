// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/units.hpp>

#include <charconv>

#include <fmt/format.h>

namespace agent {
namespace {

// Splits "256MiB" into 256 and "MiB". Only whole, non-negative numbers.
bool split_number_unit(std::string_view text, std::uint64_t& number, std::string_view& unit) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, number);
  if (ec != std::errc() || ptr == text.data()) return false;
  unit = std::string_view(ptr, static_cast<std::size_t>(end - ptr));
  return true;
}

// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

// RFC 3339 §5.7: the day must exist in its month (Gregorian leap years).
int days_in_month(int year, int month) {
  static constexpr int k_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  return month == 2 && leap ? 29 : k_days[month - 1];
}

}  // namespace

Result<std::chrono::milliseconds> parse_duration(std::string_view text) {
  std::uint64_t n = 0;
  std::string_view unit;
  if (split_number_unit(text, n, unit)) {
    std::uint64_t factor = 0;
    if (unit == "ms")
      factor = 1;
    else if (unit == "s")
      factor = 1000;
    else if (unit == "m")
      factor = 60'000;
    else if (unit == "h")
      factor = 3'600'000;
    else if (unit == "d")
      factor = 86'400'000;
    if (factor != 0 && n <= (1ull << 53) / factor)
      return std::chrono::milliseconds(static_cast<std::int64_t>(n * factor));
  }
  return fail(
      ErrorCode::invalid_argument,
      fmt::format("expected a duration such as \"30s\" (units ms, s, m, h, d); got \"{}\"", text));
}

Result<std::uint64_t> parse_size_bytes(std::string_view text) {
  std::uint64_t n = 0;
  std::string_view unit;
  if (split_number_unit(text, n, unit)) {
    std::uint64_t factor = 0;
    if (unit == "B")
      factor = 1;
    else if (unit == "KiB")
      factor = 1ull << 10;
    else if (unit == "MiB")
      factor = 1ull << 20;
    else if (unit == "GiB")
      factor = 1ull << 30;
    else if (unit == "kB")
      factor = 1000;
    else if (unit == "MB")
      factor = 1000'000;
    else if (unit == "GB")
      factor = 1000'000'000;
    if (factor != 0 && n <= (1ull << 62) / factor) return n * factor;
  }
  return fail(
      ErrorCode::invalid_argument,
      fmt::format(
          "expected a size such as \"256MiB\" (units B, KiB, MiB, GiB, kB, MB, GB); got \"{}\"",
          text));
}

std::string format_duration(std::chrono::milliseconds d) {
  const auto ms = d.count();
  if (ms < 1000) return fmt::format("{}ms", ms);
  if (ms < 60'000) return fmt::format("{:.1f}s", static_cast<double>(ms) / 1000.0);
  if (ms < 3'600'000) return fmt::format("{}m{}s", ms / 60'000, (ms / 1000) % 60);
  if (ms < 86'400'000) return fmt::format("{}h{}m", ms / 3'600'000, (ms / 60'000) % 60);
  return fmt::format("{}d{}h", ms / 86'400'000, (ms / 3'600'000) % 24);
}

std::string format_size(std::uint64_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes) / 1024.0;
  int i = 0;
  while (value >= 1024.0 && i < 3) {
    value /= 1024.0;
    ++i;
  }
  return fmt::format("{:.1f} {}", value, units[i]);
}

UtcTime utc_from_unix_ms(std::int64_t unix_ms) {
  using namespace std::chrono;
  const sys_time<milliseconds> time{milliseconds{unix_ms}};
  const sys_days day = floor<days>(time);
  const year_month_day date{day};
  const hh_mm_ss<milliseconds> clock{time - day};
  return UtcTime{static_cast<int>(date.year()),
                 static_cast<int>(static_cast<unsigned>(date.month())),
                 static_cast<int>(static_cast<unsigned>(date.day())),
                 static_cast<int>(clock.hours().count()),
                 static_cast<int>(clock.minutes().count()),
                 static_cast<int>(clock.seconds().count()),
                 static_cast<int>(clock.subseconds().count())};
}

std::int64_t unix_ms_from_utc(const UtcTime& t) {
  const std::int64_t days = days_from_civil(t.year, static_cast<unsigned>(t.month), 1) + t.day - 1;
  return ((days * 24 + t.hour) * 60 + t.minute) * 60'000 + t.second * 1000 + t.millisecond;
}

std::string format_rfc3339_ms(std::int64_t unix_ms) {
  const UtcTime t = utc_from_unix_ms(unix_ms);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", t.year, t.month, t.day, t.hour,
                     t.minute, t.second, t.millisecond);
}

std::string format_rfc3339_s(std::int64_t unix_s) {
  const UtcTime t = utc_from_unix_ms(unix_s * 1000);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year, t.month, t.day, t.hour,
                     t.minute, t.second);
}

Result<std::int64_t> parse_rfc3339(std::string_view text) {
  // RFC 3339 §5.6: date-time = full-date "T" full-time; time-offset = "Z" / ("+" / "-") hh:mm.
  auto bad = [&] {
    return fail(
        ErrorCode::invalid_argument,
        fmt::format("expected an RFC 3339 time such as \"2026-11-21T09:40:19Z\"; got \"{}\"",
                    text));
  };
  auto digits = [&](std::size_t pos, std::size_t count, int& out) {
    if (pos + count > text.size()) return false;
    out = 0;
    for (std::size_t i = pos; i < pos + count; ++i) {
      if (text[i] < '0' || text[i] > '9') return false;
      out = out * 10 + (text[i] - '0');
    }
    return true;
  };
  int year, month, day, hour, minute, second;
  if (!digits(0, 4, year) || text.size() < 20 || text[4] != '-' || !digits(5, 2, month) ||
      text[7] != '-' || !digits(8, 2, day) || (text[10] != 'T' && text[10] != 't') ||
      !digits(11, 2, hour) || text[13] != ':' || !digits(14, 2, minute) || text[16] != ':' ||
      !digits(17, 2, second))
    return bad();
  if (month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) || hour > 23 ||
      minute > 59 || second > 60)
    return bad();
  std::size_t pos = 19;
  int millis = 0;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    int scale = 100;
    std::size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      millis += (text[pos] - '0') * scale;
      scale /= 10;
      ++pos;
    }
    if (pos == start) return bad();
  }
  int offset_min = 0;
  if (pos < text.size() && (text[pos] == 'Z' || text[pos] == 'z')) {
    ++pos;
  } else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
    int oh, om;
    if (!digits(pos + 1, 2, oh) || pos + 3 >= text.size() || text[pos + 3] != ':' ||
        !digits(pos + 4, 2, om) || oh > 23 || om > 59)
      return bad();
    offset_min = (oh * 60 + om) * (text[pos] == '+' ? 1 : -1);
    pos += 6;
  } else {
    return bad();
  }
  if (pos != text.size()) return bad();
  // A leap second (60) counts as the last second of its minute, as Unix time has none.
  return unix_ms_from_utc({year, month, day, hour, minute, std::min(second, 59), millis}) -
         std::int64_t{offset_min} * 60'000;
}

}  // namespace agent
