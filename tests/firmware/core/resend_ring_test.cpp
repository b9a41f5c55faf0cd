// SPDX-License-Identifier: AGPL-3.0-or-later
// The resend ring (docs/firmware-link.md §5): cumulative acks, and a full ring dropping its oldest
// message and counting it.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "reflow/fw/resend_ring.hpp"

namespace {

using reflow::fw::k_max_payload_bytes;
using reflow::fw::k_ring_slots;
using reflow::fw::ResendRing;
using Bytes = std::vector<std::uint8_t>;

Bytes payload(std::uint32_t seq) {
  return Bytes(10 + seq % 20, static_cast<std::uint8_t>(seq));
}

TEST(ResendRingTest, KeepsMessagesUntilACumulativeAck) {
  ResendRing ring;
  for (std::uint32_t seq = 1; seq <= 5; ++seq)
    ASSERT_TRUE(ring.push(seq, payload(seq)));
  EXPECT_EQ(ring.size(), 5U);
  EXPECT_EQ(ring.ack(3), 3U);
  ASSERT_EQ(ring.size(), 2U);
  EXPECT_EQ(ring.seq_at(0), 4U);
  const auto p = ring.payload_at(0);
  EXPECT_EQ(Bytes(p.begin(), p.end()), payload(4));
  EXPECT_EQ(ring.ack(3), 0U);  // a repeated ack forgets nothing more
  EXPECT_EQ(ring.ack(100), 2U);
  EXPECT_TRUE(ring.empty());
  EXPECT_EQ(ring.dropped(), 0U);
}

TEST(ResendRingTest, FullRingDropsTheOldestAndCountsIt) {
  ResendRing ring;
  const std::uint32_t pushed = k_ring_slots + 5;
  for (std::uint32_t seq = 1; seq <= pushed; ++seq)
    ASSERT_TRUE(ring.push(seq, payload(seq)));
  EXPECT_EQ(ring.size(), k_ring_slots);
  EXPECT_EQ(ring.dropped(), 5U);
  EXPECT_EQ(ring.seq_at(0), 6U);  // 1–5 are gone: the agent sees the gap in seq
  EXPECT_EQ(ring.seq_at(k_ring_slots - 1), pushed);
  for (std::size_t i = 0; i < ring.size(); ++i) {
    const auto p = ring.payload_at(i);
    ASSERT_EQ(Bytes(p.begin(), p.end()), payload(ring.seq_at(i))) << "slot " << i;
  }
  // Acks and pushes keep working across the wrap.
  EXPECT_EQ(ring.ack(pushed - 2), k_ring_slots - 2);
  ASSERT_TRUE(ring.push(pushed + 1, payload(pushed + 1)));
  EXPECT_EQ(ring.size(), 3U);
  EXPECT_EQ(ring.seq_at(2), pushed + 1);
}

TEST(ResendRingTest, RefusesOutOfOrderSeqAndOversizedPayloads) {
  ResendRing ring;
  ASSERT_TRUE(ring.push(5, payload(5)));
  EXPECT_FALSE(ring.push(5, payload(5)));
  EXPECT_FALSE(ring.push(4, payload(4)));
  EXPECT_FALSE(ring.push(6, Bytes(k_max_payload_bytes + 1, 1)));
  EXPECT_TRUE(ring.push(6, Bytes(k_max_payload_bytes, 1)));
  EXPECT_EQ(ring.size(), 2U);
}

TEST(ResendRingTest, ClearKeepsTheDroppedCount) {
  ResendRing ring;
  for (std::uint32_t seq = 1; seq <= k_ring_slots + 1; ++seq)
    ASSERT_TRUE(ring.push(seq, payload(seq)));
  ring.clear();
  EXPECT_TRUE(ring.empty());
  EXPECT_EQ(ring.dropped(), 1U);
  EXPECT_TRUE(ring.push(1, payload(1)));  // a new boot numbers from 1 again
}

}  // namespace
