// SPDX-License-Identifier: AGPL-3.0-or-later
// The link's framing (docs/firmware-link.md §1): CRC-32 and COBS against published vectors, and
// the frame decoder's resynchronisation after garbage, truncated and over-long frames.
#include <gtest/gtest.h>

#include <cstdint>
#include <string_view>
#include <vector>

#include "reflow/fw/link.hpp"

namespace {

using reflow::fw::cobs_decode;
using reflow::fw::cobs_encode;
using reflow::fw::cobs_max_overhead;
using reflow::fw::crc32;
using reflow::fw::encode_frame;
using reflow::fw::FrameDecoder;
using reflow::fw::k_max_frame_bytes;
using reflow::fw::k_max_payload_bytes;
using Bytes = std::vector<std::uint8_t>;

Bytes bytes_of(std::string_view text) {
  return {text.begin(), text.end()};
}

Bytes range(int first, int last) {
  Bytes out;
  for (int b = first; b <= last; ++b)
    out.push_back(static_cast<std::uint8_t>(b));
  return out;
}

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts)
    out.insert(out.end(), p.begin(), p.end());
  return out;
}

Bytes encode(const Bytes& in) {
  Bytes out(in.size() + cobs_max_overhead(in.size()));
  out.resize(cobs_encode(in, out));
  return out;
}

Bytes frame(const Bytes& payload) {
  Bytes out(k_max_frame_bytes);
  out.resize(encode_frame(payload, out));
  return out;
}

// Feeds bytes and collects the payloads of the valid frames.
std::vector<Bytes> feed(FrameDecoder& decoder, const Bytes& line) {
  std::vector<Bytes> frames;
  for (const std::uint8_t b : line) {
    if (decoder.feed(b)) frames.emplace_back(decoder.payload().begin(), decoder.payload().end());
  }
  return frames;
}

Bytes payload_of(std::uint8_t fill, std::size_t size) {
  Bytes p(size);
  for (std::size_t i = 0; i < size; ++i)
    p[i] = static_cast<std::uint8_t>(fill + i * 7);
  return p;
}

TEST(Crc32Test, MatchesZlibCheckValue) {
  // The check value of CRC-32/ISO-HDLC (zlib, IEEE 802.3) in every CRC catalogue.
  EXPECT_EQ(crc32(bytes_of("123456789")), 0xCBF43926U);
  EXPECT_EQ(crc32(Bytes{}), 0U);
  // python3 -c 'import zlib; print(hex(zlib.crc32(b"The quick brown fox jumps over the lazy
  // dog")))'
  EXPECT_EQ(crc32(bytes_of("The quick brown fox jumps over the lazy dog")), 0x414FA339U);
}

TEST(Crc32Test, ContinuesAcrossCalls) {
  const Bytes all = bytes_of("123456789");
  const std::uint32_t first = crc32(std::span(all).first(4));
  EXPECT_EQ(crc32(std::span(all).subspan(4), first), 0xCBF43926U);
}

// The examples of the COBS paper's encoding as tabulated on Wikipedia ("Consistent Overhead Byte
// Stuffing", Encoding examples 1–11).
TEST(CobsTest, EncodesPublishedExamples) {
  struct Case {
    Bytes in;
    Bytes out;
  };
  const std::vector<Case> cases = {
      {{0x00}, {0x01, 0x01}},
      {{0x00, 0x00}, {0x01, 0x01, 0x01}},
      {{0x00, 0x11, 0x00}, {0x01, 0x02, 0x11, 0x01}},
      {{0x11, 0x22, 0x00, 0x33}, {0x03, 0x11, 0x22, 0x02, 0x33}},
      {{0x11, 0x22, 0x33, 0x44}, {0x05, 0x11, 0x22, 0x33, 0x44}},
      {{0x11, 0x00, 0x00, 0x00}, {0x02, 0x11, 0x01, 0x01, 0x01}},
      {range(0x01, 0xFE), cat({{0xFF}, range(0x01, 0xFE)})},
      {range(0x00, 0xFE), cat({{0x01, 0xFF}, range(0x01, 0xFE)})},
      {range(0x01, 0xFF), cat({{0xFF}, range(0x01, 0xFE), {0x02, 0xFF}})},
      {cat({range(0x02, 0xFF), {0x00}}), cat({{0xFF}, range(0x02, 0xFF), {0x01, 0x01}})},
      {cat({range(0x03, 0xFF), {0x00, 0x01}}), cat({{0xFE}, range(0x03, 0xFF), {0x02, 0x01}})},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "input of " << c.in.size() << " bytes");
    EXPECT_EQ(encode(c.in), c.out);
    Bytes back(c.in.size());
    ASSERT_EQ(cobs_decode(c.out, back), static_cast<std::ptrdiff_t>(c.in.size()));
    EXPECT_EQ(back, c.in);
  }
}

TEST(CobsTest, RefusesInvalidInput) {
  Bytes out(16);
  EXPECT_EQ(cobs_decode(Bytes{}, out), -1);
  EXPECT_EQ(cobs_decode(Bytes{0x03, 0x11, 0x00}, out), -1);  // a zero inside
  EXPECT_EQ(cobs_decode(Bytes{0x05, 0x11, 0x22}, out), -1);  // code points past the end
  EXPECT_EQ(cobs_decode(Bytes{0x00}, out), -1);
  Bytes small(2);
  EXPECT_EQ(cobs_decode(Bytes{0x05, 0x11, 0x22, 0x33, 0x44}, small), -1);  // does not fit
}

TEST(CobsTest, RefusesShortOutputWhenEncoding) {
  Bytes out(4);
  EXPECT_EQ(cobs_encode(Bytes{0x11, 0x22, 0x33, 0x44}, out), 0U);
}

TEST(FrameTest, RoundTripsEverySize) {
  for (std::size_t size = 1; size <= k_max_payload_bytes; ++size) {
    const Bytes payload = payload_of(static_cast<std::uint8_t>(size), size);
    const Bytes line = frame(payload);
    ASSERT_FALSE(line.empty());
    EXPECT_LE(line.size(), k_max_frame_bytes);
    EXPECT_EQ(line.back(), 0);
    for (std::size_t i = 0; i + 1 < line.size(); ++i)
      ASSERT_NE(line[i], 0) << "at " << i;
    FrameDecoder decoder;
    const auto frames = feed(decoder, line);
    if (size < 10) {  // below the header: a frame the decoder refuses
      EXPECT_TRUE(frames.empty());
      EXPECT_EQ(decoder.bad_frames(), 1U);
      continue;
    }
    ASSERT_EQ(frames.size(), 1U) << "size " << size;
    EXPECT_EQ(frames[0], payload);
  }
}

TEST(FrameTest, EncodingRefusesEmptyAndOversizedPayloads) {
  Bytes out(k_max_frame_bytes * 2);
  EXPECT_EQ(encode_frame(Bytes{}, out), 0U);
  EXPECT_EQ(encode_frame(Bytes(k_max_payload_bytes + 1, 0x55), out), 0U);
  Bytes short_out(10);
  EXPECT_EQ(encode_frame(Bytes(20, 0x55), short_out), 0U);
}

TEST(FrameTest, ResynchronisesAfterGarbage) {
  const Bytes a = payload_of(1, 20);
  const Bytes b = payload_of(2, 30);
  const Bytes line =
      cat({{0x13, 0x37, 0xFF, 0x42, 0x00}, frame(a), {0x99, 0x00}, frame(b), {0x01, 0x02}});
  FrameDecoder decoder;
  const auto frames = feed(decoder, line);
  ASSERT_EQ(frames.size(), 2U);
  EXPECT_EQ(frames[0], a);
  EXPECT_EQ(frames[1], b);
  EXPECT_EQ(decoder.frames(), 2U);
  EXPECT_EQ(decoder.bad_frames(), 2U);  // "13 37 FF 42" and "99"; "01 02" waits for its 0x00
}

TEST(FrameTest, DropsGarbageGluedToAFrameAndRecoversAtTheNextDelimiter) {
  const Bytes a = payload_of(1, 20);
  FrameDecoder decoder;
  // Garbage without a leading delimiter spoils the frame it runs into; a sender that writes 0x00
  // before each frame (as the board does after boot) loses nothing.
  auto frames = feed(decoder, cat({{0x13, 0x37}, frame(a)}));
  EXPECT_TRUE(frames.empty());
  EXPECT_EQ(decoder.bad_frames(), 1U);
  frames = feed(decoder, cat({{0x13, 0x37, 0x00}, frame(a)}));
  ASSERT_EQ(frames.size(), 1U);
  EXPECT_EQ(frames[0], a);
  EXPECT_EQ(decoder.bad_frames(), 2U);  // "13 37" alone is not a frame either
}

TEST(FrameTest, DropsATruncatedFrameAndKeepsTheNext) {
  const Bytes a = payload_of(3, 40);
  const Bytes b = payload_of(4, 12);
  const Bytes cut = frame(a);
  const Bytes line =
      cat({Bytes(cut.begin(), cut.begin() + static_cast<std::ptrdiff_t>(cut.size() / 2)),
           {0x00},
           frame(b)});
  FrameDecoder decoder;
  const auto frames = feed(decoder, line);
  ASSERT_EQ(frames.size(), 1U);
  EXPECT_EQ(frames[0], b);
  EXPECT_EQ(decoder.bad_frames(), 1U);
}

TEST(FrameTest, DropsACorruptedFrame) {
  const Bytes a = payload_of(5, 33);
  Bytes line = frame(a);
  line[7] ^= 0x10;  // one bit flipped on the line
  if (line[7] == 0) line[7] = 0x10;
  FrameDecoder decoder;
  EXPECT_TRUE(feed(decoder, line).empty());
  EXPECT_EQ(decoder.bad_frames(), 1U);
  EXPECT_EQ(decoder.frames(), 0U);
  const auto frames = feed(decoder, frame(a));
  ASSERT_EQ(frames.size(), 1U);
  EXPECT_EQ(frames[0], a);
}

TEST(FrameTest, DiscardsOverlongRunsUpToTheNextDelimiter) {
  const Bytes a = payload_of(6, 64);
  FrameDecoder decoder;
  // 500 non-zero bytes: one overrun, however long the run.
  const auto frames = feed(decoder, cat({Bytes(500, 0x41), {0x00}, frame(a)}));
  EXPECT_EQ(decoder.overruns(), 1U);
  ASSERT_EQ(frames.size(), 1U);
  EXPECT_EQ(frames[0], a);
}

TEST(FrameTest, SkipsEmptyFrames) {
  FrameDecoder decoder;
  const Bytes a = payload_of(7, 16);
  const auto frames = feed(decoder, cat({{0x00, 0x00, 0x00}, frame(a), {0x00}}));
  ASSERT_EQ(frames.size(), 1U);
  EXPECT_EQ(decoder.bad_frames(), 0U);
}

TEST(FrameTest, ResetForgetsAPartialFrame) {
  const Bytes a = payload_of(8, 16);
  const Bytes line = frame(a);
  FrameDecoder decoder;
  EXPECT_TRUE(feed(decoder, Bytes(line.begin(), line.begin() + 5)).empty());
  decoder.reset();
  const auto frames = feed(decoder, line);
  ASSERT_EQ(frames.size(), 1U);
  EXPECT_EQ(frames[0], a);
}

}  // namespace
