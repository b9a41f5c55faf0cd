// SPDX-License-Identifier: AGPL-3.0-or-later
// The digital inputs: a bouncing contact, S0 pulses and glitches, and RDM6300 (EM4100) frames with
// good and bad checksums.
#include <gtest/gtest.h>

#include <cstdint>
#include <string_view>

#include "reflow/fw/inputs.hpp"

namespace {

using namespace reflow::fw;

TEST(DebouncerTest, IgnoresBounceAndDatesTheEdgeAtTheSwitch) {
  Debouncer d(20);
  // The contact closes at 100 ms and bounces for 5 ms.
  const bool bounce[] = {true, false, true, false, true};
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(d.feed(bounce[i], 100 + i), Edge::none);
  for (int ms = 105; ms < 124; ++ms)
    EXPECT_EQ(d.feed(true, ms), Edge::none) << ms;
  EXPECT_EQ(d.feed(true, 124), Edge::rising);
  EXPECT_EQ(d.edge_ms(), 104U);
  EXPECT_TRUE(d.level());
  // A 10 ms dropout is not an edge.
  for (int ms = 200; ms < 210; ++ms)
    EXPECT_EQ(d.feed(false, ms), Edge::none);
  EXPECT_EQ(d.feed(true, 210), Edge::none);
  EXPECT_EQ(d.feed(true, 400), Edge::none);
  EXPECT_EQ(d.feed(false, 500), Edge::none);
  EXPECT_EQ(d.feed(false, 520), Edge::falling);
  EXPECT_EQ(d.edge_ms(), 500U);
  EXPECT_FALSE(d.level());
}

TEST(S0CounterTest, CountsPulsesOfTheMinimumWidthOnce) {
  S0Counter s0(30);
  std::uint64_t ms = 0;
  const auto pulse = [&](int width_ms) {
    bool counted = false;
    for (int i = 0; i < width_ms; ++i)
      counted |= s0.feed(true, ms++);
    for (int i = 0; i < 50; ++i)
      counted |= s0.feed(false, ms++);
    return counted;
  };
  EXPECT_TRUE(pulse(30));   // exactly the EN 62053-31 minimum
  EXPECT_TRUE(pulse(90));   // a long pulse counts once
  EXPECT_FALSE(pulse(5));   // a glitch
  EXPECT_FALSE(pulse(29));  // just short
  EXPECT_TRUE(pulse(31));
  EXPECT_EQ(s0.total(), 3U);
  EXPECT_EQ(s0.last_pulse_ms(), ms - 50 - 31);
}

bool feed(Em4100Parser& p, std::string_view bytes) {
  bool got = false;
  for (const char c : bytes)
    got = p.feed(static_cast<std::uint8_t>(c)) || got;
  return got;
}

TEST(Em4100ParserTest, ReadsAFrameWithAGoodChecksum) {
  // Data 62 E3 08 6C ED; checksum 62 ^ E3 ^ 08 ^ 6C ^ ED = 08.
  Em4100Parser p;
  EXPECT_TRUE(feed(p,
                   "\x02"
                   "62E3086CED08"
                   "\x03"));
  EXPECT_EQ(p.tag(), (TagId{0x62, 0xE3, 0x08, 0x6C, 0xED}));
  EXPECT_EQ(p.bad_frames(), 0U);
  // Lower case too.
  EXPECT_TRUE(feed(p,
                   "\x02"
                   "0a00112233"
                   "0a"
                   "\x03"));
  EXPECT_EQ(p.tag(), (TagId{0x0A, 0x00, 0x11, 0x22, 0x33}));
}

TEST(Em4100ParserTest, DropsABadChecksum) {
  Em4100Parser p;
  EXPECT_FALSE(feed(p,
                    "\x02"
                    "62E3086CED09"
                    "\x03"));
  EXPECT_EQ(p.bad_frames(), 1U);
  EXPECT_EQ(p.tag(), TagId{});
}

TEST(Em4100ParserTest, ResynchronisesAfterNoiseAndCutFrames) {
  Em4100Parser p;
  // Noise, a frame cut by a new STX, a bad character, a frame too short, then a good one.
  EXPECT_TRUE(feed(p,
                   "zz\x03"
                   "\x02"
                   "62E30"
                   "\x02"
                   "62E3086CED08"
                   "\x03"));
  EXPECT_EQ(p.bad_frames(), 1U);
  EXPECT_FALSE(feed(p,
                    "\x02"
                    "62G3086CED08"
                    "\x03"));
  EXPECT_FALSE(feed(p,
                    "\x02"
                    "62E3086CED"
                    "\x03"));
  EXPECT_FALSE(feed(p,
                    "\x02"
                    "62E3086CED0808"
                    "\x03"));
  EXPECT_EQ(p.bad_frames(), 4U);
  EXPECT_TRUE(feed(p,
                   "\x02"
                   "62E3086CED08"
                   "\x03"));
}

}  // namespace
