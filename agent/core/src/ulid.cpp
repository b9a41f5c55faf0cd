// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/ulid.hpp>

#include <algorithm>

#include <sodium.h>

namespace agent {
namespace {

// Crockford base32: no I, L, O, U, so ids survive being read aloud or retyped.
constexpr std::string_view k_alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
// The largest time a ULID's 48-bit field holds (ms since the epoch).
constexpr std::int64_t k_max_ulid_time_ms = (std::int64_t{1} << 48) - 1;

void ensure_sodium() {
  static const int k_init = sodium_init();
  (void)k_init;
}

std::int64_t time_of(const std::uint8_t (&ulid)[16]) {
  std::int64_t ms = 0;
  for (int i = 0; i < 6; ++i)
    ms = (ms << 8) | ulid[i];
  return ms;
}

// 128 bits as 26 base32 digits, most significant first: two zero bits pad them to 130, so the
// first digit is 0-7. Bits are shifted through a small buffer (no 128-bit integer, which 32-bit
// ARM lacks).
std::string encode(const std::uint8_t (&ulid)[16]) {
  std::string out;
  out.reserve(26);
  unsigned buffer = 0;
  int bits = 2;
  for (std::uint8_t byte : ulid) {
    buffer = (buffer << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += k_alphabet[(buffer >> bits) & 31];
    }
  }
  return out;
}

}  // namespace

std::string UlidGenerator::next(std::int64_t unix_ms) {
  unix_ms = std::clamp<std::int64_t>(unix_ms, 0, k_max_ulid_time_ms);
  std::lock_guard lock(m_mutex);
  if (unix_ms > m_last_ms) {
    for (int i = 0; i < 6; ++i)
      m_last[i] = static_cast<std::uint8_t>(unix_ms >> (8 * (5 - i)));
    ensure_sodium();
    randombytes_buf(m_last + 6, 10);
  } else {
    // Same millisecond or the clock went back: keep the previous time and add one, so the id still
    // sorts after the last. The spec would fail on overflow of the 80 random bits; carrying into
    // the time instead keeps the order and cannot happen in practice (2^80 ids in one ms).
    for (int i = 15; i >= 0; --i) {
      if (++m_last[i] != 0) break;
    }
  }
  m_last_ms = time_of(m_last);

  return encode(m_last);
}

std::string ulid_floor(std::int64_t unix_ms) {
  unix_ms = std::clamp<std::int64_t>(unix_ms, 0, k_max_ulid_time_ms);
  std::uint8_t bytes[16] = {};
  for (int i = 0; i < 6; ++i)
    bytes[i] = static_cast<std::uint8_t>(unix_ms >> (8 * (5 - i)));
  return encode(bytes);
}

std::optional<std::int64_t> ulid_time(std::string_view ulid) noexcept {
  if (!is_valid_ulid(ulid)) return std::nullopt;
  // The first 10 digits are 50 bits: two zero pad bits, then the 48-bit time.
  std::int64_t ms = 0;
  for (char c : ulid.substr(0, 10))
    ms = (ms << 5) | static_cast<std::int64_t>(k_alphabet.find(c));
  return ms;
}

bool is_valid_ulid(std::string_view text) noexcept {
  if (text.size() != 26 || text[0] < '0' || text[0] > '7') return false;
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return k_alphabet.find(c) != std::string_view::npos; });
}

}  // namespace agent
