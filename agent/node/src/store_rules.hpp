// SPDX-License-Identifier: AGPL-3.0-or-later
// What every Store implementation decides the same way, whatever it keeps its rows in
// (sqlite_store.cpp, postgres_store.cpp): the names of reject reasons, which rejections are
// capped (RejectionLimits) and how counts saturate.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>

#include <reflow/node/store.hpp>

namespace ingest::store_rules {

/// a + b, clamped to the int64 range instead of overflowing.
inline std::int64_t saturating_add(std::int64_t a, std::int64_t b) {
  std::int64_t sum = 0;
  if (__builtin_add_overflow(a, b, &sum))
    return b > 0 ? std::numeric_limits<std::int64_t>::max()
                 : std::numeric_limits<std::int64_t>::min();
  return sum;
}

/// The reason whose to_string() is `name`, or nullopt.
inline std::optional<RejectReason> reason_from_name(std::string_view name) {
  for (RejectReason reason :
       {RejectReason::oversized, RejectReason::malformed_jws, RejectReason::unknown_kid,
        RejectReason::bad_signature, RejectReason::device_mismatch, RejectReason::invalid_event,
        RejectReason::key_revoked, RejectReason::equivocation, RejectReason::chain_break,
        RejectReason::recorded_backwards}) {
    if (to_string(reason) == name) return reason;
  }
  return std::nullopt;
}

/// Rejections whose sender nothing authenticates: RejectionLimits caps what they keep.
inline constexpr std::array k_unauthenticated_reasons{
    RejectReason::oversized, RejectReason::malformed_jws, RejectReason::unknown_kid,
    RejectReason::bad_signature};

inline bool unauthenticated(RejectReason reason) {
  return std::ranges::find(k_unauthenticated_reasons, reason) != k_unauthenticated_reasons.end();
}

/// The not-kept counts beyond the total cap go under this device, which no device id can be
/// (PROTOCOL §1), so that a sender varying the topic's DEVICE adds no rows.
inline constexpr std::string_view k_all_unauthenticated = "*";

}  // namespace ingest::store_rules
