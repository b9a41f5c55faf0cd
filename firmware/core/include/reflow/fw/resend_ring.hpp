// SPDX-License-Identifier: AGPL-3.0-or-later
// The board's resend ring (docs/firmware-link.md §5, "LINK §5"): sequenced messages kept in RAM
// until the agent's cumulative ack covers them.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "reflow/fw/link.hpp"

namespace reflow::fw {

/// Messages the ring holds (LINK §5): 32 × 64 bytes of payload, about 2.3 KiB of RAM.
inline constexpr std::size_t k_ring_slots = 32;

/// A FIFO of unacknowledged payloads, oldest first, each with its seq (ascending: the board
/// numbers its sequenced messages 1, 2, 3 … per boot). When full, push() drops the oldest and
/// counts it in dropped() (reported as the heartbeat's `dropped_frames`). Static storage only; not
/// thread-safe (the board's main loop owns it).
class ResendRing {
 public:
  /// Keeps a copy of `payload` (at most k_max_payload_bytes; longer ones are refused: false) under
  /// `seq`, which must exceed every seq already held (else false). Drops the oldest when full.
  bool push(std::uint32_t seq, std::span<const std::uint8_t> payload);
  /// Forgets every message with seq ≤ `seq` (LINK §4.9). Returns how many were forgotten.
  std::size_t ack(std::uint32_t seq);
  /// Messages held.
  std::size_t size() const { return m_count; }
  bool empty() const { return m_count == 0; }
  /// The i-th oldest message held (i < size()): its seq and payload.
  std::uint32_t seq_at(std::size_t i) const { return m_slots[index(i)].seq; }
  std::span<const std::uint8_t> payload_at(std::size_t i) const {
    const Slot& s = m_slots[index(i)];
    return {s.bytes.data(), s.size};
  }
  /// Messages dropped from a full ring since construction.
  std::uint32_t dropped() const { return m_dropped; }
  /// Forgets everything (a new boot); keeps the dropped count.
  void clear() { m_head = m_count = 0; }

 private:
  struct Slot {
    std::uint32_t seq = 0;
    std::uint8_t size = 0;
    std::array<std::uint8_t, k_max_payload_bytes> bytes{};
  };
  std::size_t index(std::size_t i) const { return (m_head + i) % k_ring_slots; }
  std::array<Slot, k_ring_slots> m_slots{};
  std::size_t m_head = 0;  // the oldest
  std::size_t m_count = 0;
  std::uint32_t m_dropped = 0;
};

}  // namespace reflow::fw
