// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstdint>
#include <mutex>
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

/// True when `text` is 26 Crockford base32 characters (upper case) whose first is 0–7.
bool is_valid_ulid(std::string_view text) noexcept;

}  // namespace agent
