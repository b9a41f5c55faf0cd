// SPDX-License-Identifier: AGPL-3.0-or-later
#include "reflow/fw/resend_ring.hpp"

namespace reflow::fw {

bool ResendRing::push(std::uint32_t seq, std::span<const std::uint8_t> payload) {
  if (payload.size() > k_max_payload_bytes) return false;
  if (m_count > 0 && seq <= seq_at(m_count - 1)) return false;
  if (m_count == k_ring_slots) {  // LINK §5: newer data wins, the loss is counted
    m_head = index(1);
    --m_count;
    ++m_dropped;
  }
  Slot& s = m_slots[index(m_count)];
  s.seq = seq;
  s.size = static_cast<std::uint8_t>(payload.size());
  for (std::size_t k = 0; k < payload.size(); ++k)
    s.bytes[k] = payload[k];
  ++m_count;
  return true;
}

std::size_t ResendRing::ack(std::uint32_t seq) {
  std::size_t n = 0;
  while (m_count > 0 && seq_at(0) <= seq) {
    m_head = index(1);
    --m_count;
    ++n;
  }
  return n;
}

}  // namespace reflow::fw
