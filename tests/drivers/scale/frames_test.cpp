// SPDX-License-Identifier: AGPL-3.0-or-later
// The scale protocols without I/O: one frame of each protocol and status, the frame splitter
// (split frames, garbage, Toledo checksums) and the stability rule.
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "frames.hpp"

namespace {

using agent::scale::FrameSplitter;
using agent::scale::parse_frame;
using agent::scale::Protocol;
using agent::scale::Reading;
using agent::scale::Stability;
using Status = agent::scale::Reading::Status;

Reading parsed(Protocol protocol, std::string_view frame) {
  auto r = parse_frame(protocol, frame);
  EXPECT_TRUE(r) << frame << ": " << (r ? "" : r.error().message);
  return r.value_or(Reading{});
}

bool is_garbage(Protocol protocol, std::string_view frame) {
  auto r = parse_frame(protocol, frame);
  if (r) return false;
  EXPECT_EQ(r.error().code, agent::ErrorCode::invalid_argument);
  return true;
}

std::string toledo(std::uint8_t swa, std::uint8_t swb, std::string digits, bool checksum) {
  std::string f;
  f += '\x02';
  f += static_cast<char>(swa);
  f += static_cast<char>(swb);
  f += ' ';
  f += digits;
  f += '\r';
  if (checksum) {
    unsigned sum = 0;
    for (const char c : f)
      sum += static_cast<unsigned char>(c) & 0x7fU;
    f += static_cast<char>((0x80U - (sum & 0x7fU)) & 0x7fU);
  }
  return f;
}

std::string hid(std::uint8_t status, std::uint8_t unit, std::int8_t exponent, std::uint16_t raw) {
  return std::string{'\x03',
                     static_cast<char>(status),
                     static_cast<char>(unit),
                     static_cast<char>(exponent),
                     static_cast<char>(raw & 0xffU),
                     static_cast<char>(raw >> 8U)};
}

class FramesTest : public ::testing::Test {};

TEST_F(FramesTest, ParsesStGsStatusesAndUnits) {
  Reading r = parsed(Protocol::st_gs, "ST,GS,+  1.234,kg");
  EXPECT_EQ(r.status, Status::ok);
  EXPECT_DOUBLE_EQ(r.kilograms, 1.234);
  EXPECT_FALSE(r.net);

  r = parsed(Protocol::st_gs, "US,NT,-0.010kg");
  EXPECT_EQ(r.status, Status::motion);
  EXPECT_DOUBLE_EQ(r.kilograms, -0.010);
  EXPECT_TRUE(r.net);

  EXPECT_EQ(parsed(Protocol::st_gs, "OL,GS,+  9.999,kg").status, Status::overload);
  EXPECT_EQ(parsed(Protocol::st_gs, "OL,GS,-  9.999,kg").status, Status::underload);
  EXPECT_DOUBLE_EQ(parsed(Protocol::st_gs, "ST,GS,+ 250.0,g").kilograms, 0.25);
  EXPECT_DOUBLE_EQ(parsed(Protocol::st_gs, "ST,GS,+  2.000,lb").kilograms, 0.90718474);

  EXPECT_TRUE(is_garbage(Protocol::st_gs, "ST,G\x85S,+ 1\xff.2"));
  EXPECT_TRUE(is_garbage(Protocol::st_gs, "XX,GS,+  1.234,kg"));
  EXPECT_TRUE(is_garbage(Protocol::st_gs, "ST,GS,+  1.234,pcs"));
  EXPECT_TRUE(is_garbage(Protocol::st_gs, "ST,GS,"));
}

TEST_F(FramesTest, ParsesAndStandardFrames) {
  Reading r = parsed(Protocol::and_standard, "ST,+00123.45  g");
  EXPECT_EQ(r.status, Status::ok);
  EXPECT_DOUBLE_EQ(r.kilograms, 0.12345);
  EXPECT_EQ(parsed(Protocol::and_standard, "US,+00012.30  g").status, Status::motion);
  EXPECT_EQ(parsed(Protocol::and_standard, "OL,+9999999E+19").status, Status::overload);
  EXPECT_EQ(parsed(Protocol::and_standard, "OL,-9999999E+19").status, Status::underload);
  EXPECT_DOUBLE_EQ(parsed(Protocol::and_standard, "ST,OK,+00200.00  g").kilograms, 0.2);
  EXPECT_DOUBLE_EQ(parsed(Protocol::and_standard, "ST,+001.2345 kg").kilograms, 1.2345);
  EXPECT_DOUBLE_EQ(parsed(Protocol::and_standard, "ST,+0012.000 oz").kilograms,
                   0.340194278);  // rounded to a microgram
  EXPECT_TRUE(is_garbage(Protocol::and_standard, "QT,+00000010 PC"));
  EXPECT_TRUE(is_garbage(Protocol::and_standard, "ST,+00#00.00  g"));
}

TEST_F(FramesTest, ParsesMtSicsReplies) {
  Reading r = parsed(Protocol::mt_sics, "S S     100.00 g");
  EXPECT_EQ(r.status, Status::ok);
  EXPECT_DOUBLE_EQ(r.kilograms, 0.1);
  r = parsed(Protocol::mt_sics, "S D      0.512 kg");
  EXPECT_EQ(r.status, Status::motion);
  EXPECT_DOUBLE_EQ(r.kilograms, 0.512);
  EXPECT_EQ(parsed(Protocol::mt_sics, "S I").status, Status::error);
  EXPECT_EQ(parsed(Protocol::mt_sics, "S +").status, Status::overload);
  EXPECT_EQ(parsed(Protocol::mt_sics, "S -").status, Status::underload);
  EXPECT_EQ(parsed(Protocol::mt_sics, "ES").status, Status::error);
  EXPECT_DOUBLE_EQ(parsed(Protocol::mt_sics, "S S    -0.0021 kg").kilograms, -0.0021);
  EXPECT_TRUE(is_garbage(Protocol::mt_sics, "S X 12.0 kg"));
  EXPECT_TRUE(is_garbage(Protocol::mt_sics, "S S"));
  EXPECT_TRUE(is_garbage(Protocol::mt_sics, "I4 A \"0123456789\""));
}

TEST_F(FramesTest, ParsesOhausPrintLines) {
  Reading r = parsed(Protocol::ohaus, "     192.21 g  ");
  EXPECT_EQ(r.status, Status::ok);
  EXPECT_DOUBLE_EQ(r.kilograms, 0.19221);
  r = parsed(Protocol::ohaus, "       0.01 g ?");
  EXPECT_EQ(r.status, Status::motion);
  EXPECT_DOUBLE_EQ(r.kilograms, 0.00001);
  EXPECT_TRUE(parsed(Protocol::ohaus, "    1.234 kg  N").net);
  EXPECT_DOUBLE_EQ(parsed(Protocol::ohaus, "    0.4410 lb  ").kilograms, 0.200034235);
  EXPECT_DOUBLE_EQ(parsed(Protocol::ohaus, "     -0.02 g ?").kilograms, -0.00002);
  EXPECT_EQ(parsed(Protocol::ohaus, "ES").status, Status::error);
  EXPECT_TRUE(is_garbage(Protocol::ohaus, "@@ 1.2 #"));
  EXPECT_TRUE(is_garbage(Protocol::ohaus, "     192.21 g  X"));
}

TEST_F(FramesTest, ParsesToledoStatusWords) {
  // SWA 0x2D: XXX.XXX; SWB 0x30: kg, gross, stable.
  Reading r = parsed(Protocol::toledo, toledo(0x2D, 0x30, "001234000000", true));
  EXPECT_EQ(r.status, Status::ok);
  EXPECT_DOUBLE_EQ(r.kilograms, 1.234);
  EXPECT_FALSE(r.net);
  // Without a checksum, leading zeros as spaces, net (bit 0).
  r = parsed(Protocol::toledo, toledo(0x2D, 0x31, "   750   480", false));
  EXPECT_DOUBLE_EQ(r.kilograms, 0.75);
  EXPECT_TRUE(r.net);
  EXPECT_EQ(parsed(Protocol::toledo, toledo(0x2D, 0x38, "001234000000", true)).status,
            Status::motion);
  EXPECT_EQ(parsed(Protocol::toledo, toledo(0x2D, 0x34, "999999000000", true)).status,
            Status::overload);
  EXPECT_EQ(parsed(Protocol::toledo, toledo(0x2D, 0x36, "999999000000", true)).status,
            Status::underload);
  EXPECT_DOUBLE_EQ(parsed(Protocol::toledo, toledo(0x2D, 0x32, "000010000000", true)).kilograms,
                   -0.01);
  // Pounds (SWB bit 4 clear), one decimal: 1234.5 lb.
  EXPECT_DOUBLE_EQ(parsed(Protocol::toledo, toledo(0x2B, 0x20, "012345000000", true)).kilograms,
                   559.959780765);
  // ×10 display (decimal code 1): 12340 kg.
  EXPECT_DOUBLE_EQ(parsed(Protocol::toledo, toledo(0x29, 0x30, "001234000000", true)).kilograms,
                   12340);

  std::string bad = toledo(0x2D, 0x30, "001234000000", true);
  bad.back() = static_cast<char>(bad.back() ^ 0x01);
  EXPECT_TRUE(is_garbage(Protocol::toledo, bad));
  EXPECT_TRUE(is_garbage(Protocol::toledo, toledo(0x0D, 0x30, "001234000000", true)));
  EXPECT_TRUE(is_garbage(Protocol::toledo, toledo(0x2D, 0x30, "0012a4000000", true)));
  EXPECT_TRUE(is_garbage(Protocol::toledo, toledo(0x2D, 0x30, "00123400000", true)));
}

TEST_F(FramesTest, ParsesHidReportsWithExponentAndUnits) {
  auto h = [](std::string s) { return parsed(Protocol::hid, s); };
  EXPECT_EQ(h(hid(2, 2, 0, 0)).status, Status::ok);
  EXPECT_DOUBLE_EQ(h(hid(2, 2, 0, 0)).kilograms, 0);
  EXPECT_EQ(h(hid(3, 2, 0, 412)).status, Status::motion);
  EXPECT_DOUBLE_EQ(h(hid(4, 2, 0, 1234)).kilograms, 1.234);         // grams
  EXPECT_DOUBLE_EQ(h(hid(4, 3, -2, 1234)).kilograms, 12.34);        // kilograms, 10^-2
  EXPECT_DOUBLE_EQ(h(hid(4, 11, -1, 352)).kilograms, 0.997903214);  // 35.2 oz
  EXPECT_DOUBLE_EQ(h(hid(4, 12, -2, 250)).kilograms, 1.133980925);  // 2.50 lb
  EXPECT_DOUBLE_EQ(h(hid(4, 2, 0, 40000)).kilograms, 40.0);         // little-endian 16 bits
  EXPECT_EQ(h(hid(5, 2, 0, 15)).status, Status::underload);
  EXPECT_EQ(h(hid(6, 2, 0, 0)).status, Status::overload);
  EXPECT_EQ(h(hid(1, 2, 0, 0)).status, Status::error);
  EXPECT_EQ(h(hid(8, 2, 0, 0)).status, Status::error);
  EXPECT_TRUE(is_garbage(Protocol::hid, hid(4, 4, 0, 100)));  // carats
  EXPECT_TRUE(is_garbage(Protocol::hid, hid(9, 2, 0, 100)));
  std::string other = hid(4, 2, 0, 100);
  other[0] = 5;
  EXPECT_TRUE(is_garbage(Protocol::hid, other));
}

TEST_F(FramesTest, JoinsSplitLinesAndCountsGarbageRuns) {
  FrameSplitter splitter(Protocol::st_gs);
  std::vector<std::string> out;
  splitter.feed("ST,GS,+  1.2", out);
  EXPECT_TRUE(out.empty());
  splitter.feed("34,kg\r", out);
  splitter.feed("\nST,GS,+  1.234,kg\r\nUS", out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0], "ST,GS,+  1.234,kg");
  EXPECT_EQ(out[1], "ST,GS,+  1.234,kg");
  // An over-long run without a line end is dropped up to the next line end, counted once.
  splitter.feed(std::string(300, 'x'), out);
  splitter.feed("\r\nST,GS,+  2.000,kg\r\n", out);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[2], "ST,GS,+  2.000,kg");
  EXPECT_EQ(splitter.garbage(), 1u);
}

TEST_F(FramesTest, SplitsToledoFramesWithAndWithoutChecksum) {
  const std::string a = toledo(0x2D, 0x30, "001234000000", true);
  const std::string b = toledo(0x2D, 0x30, "002000000000", true);
  FrameSplitter with(Protocol::toledo);
  std::vector<std::string> out;
  const std::string stream = "\x7fnoise" + a + b + a;
  for (const char c : stream)
    with.feed(std::string(1, c), out);  // byte by byte
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0], a);
  EXPECT_EQ(out[1], b);
  EXPECT_EQ(out[2], a);  // in a checksummed stream each frame comes out with its checksum
  EXPECT_EQ(with.garbage(), 1u);

  const std::string p = toledo(0x2D, 0x30, "001234000000", false);
  FrameSplitter without(Protocol::toledo);
  out.clear();
  without.feed(p + p.substr(0, 5), out);
  without.feed(p.substr(5) + p, out);
  ASSERT_EQ(out.size(), 3u);
  for (const auto& f : out)
    EXPECT_EQ(f, p);
  // A frame cut short by a new STX is dropped and the new one kept.
  without.feed(p.substr(0, 8) + p, out);
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(without.garbage(), 1u);
}

TEST_F(FramesTest, SplitsHidReportsAndSkipsNoise) {
  FrameSplitter splitter(Protocol::hid);
  std::vector<std::string> out;
  const std::string a = hid(4, 2, 0, 1234);
  splitter.feed(std::string("\x00\x00", 2) + a.substr(0, 4), out);
  splitter.feed(a.substr(4) + a, out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0], a);
  EXPECT_EQ(out[1], a);
  EXPECT_EQ(splitter.garbage(), 1u);
}

Reading stable(double kg) {
  return Reading{Status::ok, kg, false};
}
Reading moving(double kg) {
  return Reading{Status::motion, kg, false};
}

TEST_F(FramesTest, StabilityNeedsConsecutiveEqualStableReadings) {
  Stability s(3, 0);
  EXPECT_FALSE(s.add(stable(1.0)));
  EXPECT_FALSE(s.add(stable(1.0)));
  EXPECT_FALSE(s.add(moving(1.0)));  // motion restarts the count
  EXPECT_FALSE(s.add(stable(1.0)));
  EXPECT_FALSE(s.add(stable(1.0)));
  auto w = s.add(stable(1.0));
  ASSERT_TRUE(w);
  EXPECT_DOUBLE_EQ(w->kilograms, 1.0);
  EXPECT_FALSE(s.add(stable(1.0)));  // reported once per settled value
  EXPECT_FALSE(s.add(stable(1.0)));
  // A new value settles after three frames of it.
  EXPECT_FALSE(s.add(stable(2.0)));
  EXPECT_FALSE(s.add(stable(2.0)));
  ASSERT_TRUE(s.add(stable(2.0)));
}

TEST_F(FramesTest, StabilityReportsTheSameValueAgainAfterMotionOrOverload) {
  Stability s(2, 0);
  s.add(stable(1.5));
  ASSERT_TRUE(s.add(stable(1.5)));
  s.add(Reading{Status::overload, 0, false});
  s.add(stable(1.5));
  ASSERT_TRUE(s.add(stable(1.5)));
  s.add(moving(0.2));
  s.add(stable(1.5));
  ASSERT_TRUE(s.add(stable(1.5)));
  // Stable zero is a weight too.
  s.add(stable(0));
  auto zero = s.add(stable(0));
  ASSERT_TRUE(zero);
  EXPECT_EQ(zero->kilograms, 0);
}

TEST_F(FramesTest, StabilityTreatsValuesWithinResolutionAsTheSame) {
  Stability s(3, 0.002);
  s.add(stable(1.000));
  s.add(stable(1.001));
  auto w = s.add(stable(1.002));
  ASSERT_TRUE(w);
  EXPECT_DOUBLE_EQ(w->kilograms, 1.000);
  EXPECT_FALSE(s.add(stable(1.001)));
  EXPECT_FALSE(s.add(stable(1.010)));
  EXPECT_FALSE(s.add(stable(1.004)));  // 1.010 restarted the count
  EXPECT_FALSE(s.add(stable(1.004)));
}

TEST_F(FramesTest, ConvertsUnitsToKilograms) {
  EXPECT_EQ(agent::scale::kilograms_per_unit("g"), 0.001);
  EXPECT_EQ(agent::scale::kilograms_per_unit("KG"), 1.0);
  EXPECT_EQ(agent::scale::kilograms_per_unit("lb"), 0.45359237);
  EXPECT_EQ(agent::scale::kilograms_per_unit("oz"), 0.028349523125);
  EXPECT_FALSE(agent::scale::kilograms_per_unit("pcs"));
  // Conversions are rounded: no 0.30000000000000004.
  EXPECT_EQ(parsed(Protocol::st_gs, "ST,GS,+ 300.0,g").kilograms, 0.3);
}

}  // namespace
