// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace agent {

/// Makes ULIDs (github.com/ulid/spec): 48-bit millisecond time + 80 random bits (libsodium
/// randombytes), Crockford base32, 26 characters. Monotonic: within one millisecond, or when the
/// clock goes backwards, the previous value plus one is returned, so ids from one generator
/// always sort in creation order. Thread-safe.
class UlidGenerator {
 public:
  /// `unix_ms` is the time to encode (the caller's Env clock).
  std::string next(std::int64_t unix_ms);

 private:
  std::mutex m_mutex;
  std::int64_t m_last_ms = -1;
  std::uint8_t m_last[16] = {};
};

/// The smallest ULID of millisecond `unix_ms` (clamped to 0 … 2^48 − 1): its time, then 80 zero
/// bits. Every ULID made at that millisecond or later sorts at or after it, so it serves as a
/// cursor "created since" over ids that sort by creation (zenflows' paging, `after`).
std::string ulid_floor(std::int64_t unix_ms);

/// The millisecond time in the first 48 bits of `ulid`; nullopt when it is not a valid ULID.
std::optional<std::int64_t> ulid_time(std::string_view ulid) noexcept;

/// True when `text` is 26 Crockford base32 characters (upper case) whose first is 0–7.
bool is_valid_ulid(std::string_view text) noexcept;

}  // namespace agent
