// SPDX-License-Identifier: AGPL-3.0-or-later
// The link's messages (docs/firmware-link.md §3–§4): every type through encode, a frame, the frame
// decoder and decode; the byte layout of one message pinned; short bodies and bad enums refused.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "reflow/fw/link.hpp"
#include "reflow/fw/messages.hpp"

namespace {

using namespace reflow::fw;
using Bytes = std::vector<std::uint8_t>;

// Encodes `body` under `header`, sends it through a frame and the decoder, and decodes it back.
template <typename Body>
Body round_trip(Header header, const Body& body, MessageType expected_type) {
  PayloadBuffer payload{};
  const std::size_t size = encode(header, body, payload);
  EXPECT_GE(size, k_header_bytes);
  std::array<std::uint8_t, k_max_frame_bytes> line{};
  const std::size_t n = encode_frame(std::span(payload).first(size), line);
  EXPECT_GT(n, 0U);
  FrameDecoder decoder;
  bool got = false;
  for (std::size_t i = 0; i < n; ++i)
    got = decoder.feed(line[i]);
  EXPECT_TRUE(got);
  Header h;
  EXPECT_TRUE(decode_header(decoder.payload(), h));
  EXPECT_EQ(h.type, expected_type);
  EXPECT_EQ(h.boot, header.boot);
  EXPECT_EQ(h.seq, header.seq);
  Body out{};
  EXPECT_TRUE(decode(body_of(decoder.payload()), out));
  // Every shorter body is refused.
  const auto full = body_of(decoder.payload());
  for (std::size_t cut = 0; cut < full.size(); ++cut) {
    Body partial{};
    EXPECT_FALSE(decode(full.first(cut), partial)) << "body cut to " << cut;
  }
  return out;
}

TEST(MessagesTest, HelloRoundTrips) {
  Hello hello;
  hello.fw_version = 0x000102;
  for (std::size_t i = 0; i < hello.board_id.size(); ++i) {
    hello.board_id[i] = static_cast<std::uint8_t>(0xA0 + i);
  }
  hello.capabilities = k_cap_current | k_cap_badge;
  const Hello out = round_trip(Header{.boot = 7}, hello, MessageType::hello);
  EXPECT_EQ(out.fw_version, hello.fw_version);
  EXPECT_EQ(out.board_id, hello.board_id);
  EXPECT_EQ(out.capabilities, hello.capabilities);
  EXPECT_EQ(out.link_minor, k_link_minor);
}

TEST(MessagesTest, ConfigRoundTripsAndHasItsDocumentedSize) {
  Config c{.ua_per_count = 24170,
           .sample_rate_hz = 2000,
           .window_samples = 400,
           .on_threshold_ma = 1000,
           .off_threshold_ma = 500,
           .busy_threshold_ma = 4000,
           .min_on_ms = 3000,
           .gap_merge_ms = 60000,
           .voltage_mv = 230000,
           .power_factor_permille = 950,
           .debounce_ms = 20,
           .s0_min_pulse_ms = 30};
  PayloadBuffer payload{};
  EXPECT_EQ(encode(Header{}, c, payload), k_header_bytes + k_config_body_bytes);
  const Config out = round_trip(Header{.boot = 3}, c, MessageType::config);
  EXPECT_EQ(out.ua_per_count, c.ua_per_count);
  EXPECT_EQ(out.sample_rate_hz, c.sample_rate_hz);
  EXPECT_EQ(out.window_samples, c.window_samples);
  EXPECT_EQ(out.on_threshold_ma, c.on_threshold_ma);
  EXPECT_EQ(out.off_threshold_ma, c.off_threshold_ma);
  EXPECT_EQ(out.busy_threshold_ma, c.busy_threshold_ma);
  EXPECT_EQ(out.min_on_ms, c.min_on_ms);
  EXPECT_EQ(out.gap_merge_ms, c.gap_merge_ms);
  EXPECT_EQ(out.voltage_mv, c.voltage_mv);
  EXPECT_EQ(out.power_factor_permille, c.power_factor_permille);
  EXPECT_EQ(out.debounce_ms, c.debounce_ms);
  EXPECT_EQ(out.s0_min_pulse_ms, c.s0_min_pulse_ms);
  EXPECT_EQ(check_config(c), 0U);
}

TEST(MessagesTest, SessionEndLayoutIsLittleEndianAsDocumented) {
  SessionEnd end{.session = 2,
                 .source = SessionSource::current,
                 .start_ms = 0x0102030405060708ULL,
                 .end_ms = 0x1112131415161718ULL,
                 .charge_mc = 123456,
                 .energy_mj = 28395000,
                 .peak_ma = 30000,
                 .busy_ms = 20000};
  PayloadBuffer p{};
  const std::size_t n = encode(Header{.boot = 0x0A0B0C0D, .seq = 0x01020304}, end, p);
  ASSERT_EQ(n, k_header_bytes + 49);  // LINK §4.4: 49-byte body
  const Bytes head(p.begin(), p.begin() + 19);
  const Bytes expected = {1,    4,    0x0D, 0x0C, 0x0B, 0x0A, 0x04, 0x03, 0x02, 0x01,  // header
                          2,    0,    0,    0,                                         // session
                          1,                                                           // source
                          0x08, 0x07, 0x06, 0x05};  // start_ms, first 4 bytes
  EXPECT_EQ(head, expected);
  const SessionEnd out = round_trip(Header{.boot = 9, .seq = 41}, end, MessageType::session_end);
  EXPECT_EQ(out.session, end.session);
  EXPECT_EQ(out.start_ms, end.start_ms);
  EXPECT_EQ(out.end_ms, end.end_ms);
  EXPECT_EQ(out.charge_mc, end.charge_mc);
  EXPECT_EQ(out.energy_mj, end.energy_mj);
  EXPECT_EQ(out.peak_ma, end.peak_ma);
  EXPECT_EQ(out.busy_ms, end.busy_ms);
}

TEST(MessagesTest, OtherMessagesRoundTrip) {
  const SessionStart start =
      round_trip(Header{.boot = 1, .seq = 1},
                 SessionStart{.session = 5, .source = SessionSource::running_input, .start_ms = 99},
                 MessageType::session_start);
  EXPECT_EQ(start.session, 5U);
  EXPECT_EQ(start.source, SessionSource::running_input);
  EXPECT_EQ(start.start_ms, 99U);

  const Pulses pulses = round_trip(Header{.boot = 1, .seq = 2}, Pulses{.at_ms = 1234, .total = 77},
                                   MessageType::pulses);
  EXPECT_EQ(pulses.at_ms, 1234U);
  EXPECT_EQ(pulses.total, 77U);

  const Badge badge =
      round_trip(Header{.boot = 1, .seq = 3},
                 Badge{.at_ms = 5, .tag = {0x62, 0xE3, 0x08, 0x6C, 0xED}}, MessageType::badge);
  EXPECT_EQ(badge.tag, (std::array<std::uint8_t, 5>{0x62, 0xE3, 0x08, 0x6C, 0xED}));

  const Heartbeat hb = round_trip(Header{.boot = 1},
                                  Heartbeat{.uptime_ms = 5000,
                                            .dropped_samples = 1,
                                            .dropped_frames = 2,
                                            .bad_frames = 3,
                                            .config_crc = 0xDEADBEEF,
                                            .unacked = 4},
                                  MessageType::heartbeat);
  EXPECT_EQ(hb.uptime_ms, 5000U);
  EXPECT_EQ(hb.dropped_frames, 2U);
  EXPECT_EQ(hb.config_crc, 0xDEADBEEFU);
  EXPECT_EQ(hb.unacked, 4U);

  const Error err =
      round_trip(Header{.boot = 1, .seq = 4},
                 Error{.code = ErrorCode::config_refused, .detail = 13}, MessageType::error);
  EXPECT_EQ(err.code, ErrorCode::config_refused);
  EXPECT_EQ(err.detail, 13U);

  const Ack ack = round_trip(Header{.boot = 1}, Ack{.seq = 40}, MessageType::ack);
  EXPECT_EQ(ack.seq, 40U);
}

TEST(MessagesTest, RefusesUnknownEnumValuesAndOtherVersions) {
  PayloadBuffer p{};
  const std::size_t n = encode(Header{}, SessionStart{.session = 1}, p);
  p[k_header_bytes + 4] = 3;  // no such source
  SessionStart start;
  EXPECT_FALSE(decode(body_of(std::span(p).first(n)), start));

  const std::size_t m = encode(Header{}, Error{.code = ErrorCode::flash}, p);
  p[k_header_bytes] = 0;  // error code 0
  Error err;
  EXPECT_FALSE(decode(body_of(std::span(p).first(m)), err));

  Header h;
  p[0] = 2;  // a version 2 frame
  EXPECT_FALSE(decode_header(std::span(p).first(m), h));
  EXPECT_FALSE(decode_header(std::span(p).first(k_header_bytes - 1), h));
}

TEST(MessagesTest, ReadsLongerBodiesUpToTheKnownFields) {
  PayloadBuffer p{};
  const std::size_t n = encode(Header{}, Ack{.seq = 12}, p);
  p[n] = 0xEE;  // a field a later minor version appended
  Ack ack;
  EXPECT_TRUE(decode(body_of(std::span(p).first(n + 1)), ack));
  EXPECT_EQ(ack.seq, 12U);
}

TEST(MessagesTest, ChecksConfigFields) {
  const Config good{.ua_per_count = 24170,
                    .sample_rate_hz = 2000,
                    .window_samples = 400,
                    .on_threshold_ma = 1000,
                    .off_threshold_ma = 500,
                    .voltage_mv = 230000};
  EXPECT_EQ(check_config(good), 0U);
  Config c = good;
  c.off_threshold_ma = 1500;
  EXPECT_EQ(check_config(c), 1U + 12U);
  c = good;
  c.window_samples = 0;
  EXPECT_EQ(check_config(c), 1U + 6U);
  c = good;
  c.power_factor_permille = 1001;
  EXPECT_EQ(check_config(c), 1U + 32U);
  c = good;
  c.busy_threshold_ma = 900;
  EXPECT_EQ(check_config(c), 1U + 16U);
  c = good;
  c.ua_per_count = 0;
  EXPECT_EQ(check_config(c), 1U);
}

}  // namespace
