// SPDX-License-Identifier: AGPL-3.0-or-later
// The firmware's main logic (firmware/app) with a test clock, a UART that decodes what the app
// sends with the core's FrameDecoder, and a boot counter in memory: hello until configured,
// config applied or refused, sessions from a synthesised 50 Hz clamp waveform, acks, resending,
// the badge reader.
#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "reflow/fw/app.hpp"

namespace {

using namespace reflow::fw;

class TestClock final : public Clock {
 public:
  std::uint64_t now_ms() override { return now; }
  std::uint64_t now = 0;
};

struct Received {
  Header header;
  std::vector<std::uint8_t> body;
};

class TestUart final : public ByteSink {
 public:
  void write(std::span<const std::uint8_t> bytes) override {
    for (const std::uint8_t b : bytes) {
      if (!m_decoder.feed(b)) continue;
      Received r;
      const auto p = m_decoder.payload();
      EXPECT_TRUE(decode_header(p, r.header));
      const auto body = body_of(p);
      r.body.assign(body.begin(), body.end());
      frames.push_back(r);
    }
  }
  std::vector<Received> take() {
    std::vector<Received> out;
    out.swap(frames);
    return out;
  }
  std::vector<Received> frames;

 private:
  FrameDecoder m_decoder;
};

class TestBootCounter final : public BootCounter {
 public:
  std::uint32_t increment(bool& ok) override {
    ok = true;
    return ++value;
  }
  std::uint32_t value = 6;
};

Config test_config() {
  Config c;
  c.ua_per_count = 10'000;  // 10 mA per count
  c.sample_rate_hz = 1000;
  c.window_samples = 200;  // 200 ms windows
  c.on_threshold_ma = 1000;
  c.off_threshold_ma = 500;
  c.min_on_ms = 1000;
  c.gap_merge_ms = 2000;
  c.voltage_mv = 230'000;
  c.power_factor_permille = 1000;
  c.debounce_ms = 20;
  c.s0_min_pulse_ms = 30;
  return c;
}

class AppTest : public ::testing::Test {
 protected:
  AppTest() { app.begin(); }

  // Sends an agent frame to the app.
  template <typename Body>
  void send(std::uint32_t boot, const Body& body) {
    PayloadBuffer p{};
    const std::size_t n = encode(Header{k_link_version, MessageType::hello, boot, 0}, body, p);
    std::array<std::uint8_t, k_max_frame_bytes> frame{};
    const std::size_t f = encode_frame({p.data(), n}, frame);
    for (std::size_t i = 0; i < f; ++i)
      app.on_rx_byte(frame[i]);
  }

  // Runs the board for `ms` with a 50 Hz load of `amps` RMS (1 sample per ms).
  void run(std::uint64_t ms, double amps) {
    for (std::uint64_t i = 0; i < ms; ++i) {
      const double t = static_cast<double>(clock.now) / 1000.0;
      const double peak_counts = amps * std::numbers::sqrt2 * 1000.0 / 10.0;
      app.on_sample(static_cast<std::uint16_t>(
          std::lround(2048 + peak_counts * std::sin(2 * std::numbers::pi * 50 * t))));
      app.poll();
      ++clock.now;
    }
  }

  static std::vector<Received> of_type(const std::vector<Received>& frames, MessageType type) {
    std::vector<Received> out;
    for (const auto& f : frames)
      if (f.header.type == type) out.push_back(f);
    return out;
  }

  TestClock clock;
  TestUart uart;
  TestBootCounter boot;
  App app{clock, uart, boot, Hello{0x000100, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, 1, 0}};
};

TEST_F(AppTest, HelloAtStartAndEverySecondUntilConfigured) {
  EXPECT_EQ(app.boot(), 7U);
  auto frames = uart.take();
  ASSERT_EQ(frames.size(), 1U);
  EXPECT_EQ(frames[0].header.type, MessageType::hello);
  EXPECT_EQ(frames[0].header.boot, 7U);
  EXPECT_EQ(frames[0].header.seq, 0U);
  Hello h;
  ASSERT_TRUE(decode(frames[0].body, h));
  EXPECT_EQ(h.fw_version, 0x000100U);
  EXPECT_EQ(h.board_id[11], 12);

  run(2500, 0);
  EXPECT_EQ(of_type(uart.take(), MessageType::hello).size(), 2U);

  send(0, test_config());  // the agent has not seen a boot yet: config is taken anyway
  EXPECT_TRUE(app.configured());
  auto after = uart.take();
  ASSERT_EQ(after.size(), 1U);
  ASSERT_EQ(after[0].header.type, MessageType::heartbeat);
  Heartbeat hb;
  ASSERT_TRUE(decode(after[0].body, hb));
  PayloadBuffer p{};
  encode(Header{}, test_config(), p);
  EXPECT_EQ(hb.config_crc, crc32({p.data() + k_header_bytes, k_config_body_bytes}));
  run(3000, 0);
  EXPECT_TRUE(of_type(uart.take(), MessageType::hello).empty());
}

TEST_F(AppTest, RefusedConfigIsAnErrorAndKeepsTheOldOne) {
  send(7, test_config());
  uart.take();
  Config bad = test_config();
  bad.off_threshold_ma = 2000;  // off above on
  send(7, bad);
  auto frames = uart.take();
  ASSERT_EQ(frames.size(), 1U);
  EXPECT_EQ(frames[0].header.type, MessageType::error);
  EXPECT_EQ(frames[0].header.seq, 1U);
  Error e;
  ASSERT_TRUE(decode(frames[0].body, e));
  EXPECT_EQ(e.code, ErrorCode::config_refused);
  EXPECT_EQ(e.detail, 13U);  // 1 + offset 12 (off_threshold_ma)
  EXPECT_EQ(app.config().off_threshold_ma, 500U);
}

TEST_F(AppTest, SessionFromTheClampIsSequencedResentAndAcked) {
  send(7, test_config());
  uart.take();
  run(1000, 0);
  run(5000, 4.0);  // 4 A for 5 s
  run(4000, 0);
  auto frames = uart.take();
  const auto starts = of_type(frames, MessageType::session_start);
  const auto ends = of_type(frames, MessageType::session_end);
  ASSERT_GE(starts.size(), 1U);
  ASSERT_GE(ends.size(), 1U);
  EXPECT_EQ(starts[0].header.seq, 1U);
  EXPECT_EQ(ends[0].header.seq, 2U);
  SessionEnd end;
  ASSERT_TRUE(decode(ends[0].body, end));
  EXPECT_EQ(end.source, SessionSource::current);
  EXPECT_EQ(end.start_ms, 1000U);
  EXPECT_EQ(end.end_ms, 6000U);
  EXPECT_NEAR(static_cast<double>(end.charge_mc), 20'000.0, 200.0);        // 4 A × 5 s
  EXPECT_NEAR(static_cast<double>(end.energy_mj), 4'600'000.0, 46'000.0);  // × 230 V
  EXPECT_NEAR(end.peak_ma, 4000.0, 40.0);
  // No ack: the oldest is resent every 2 s.
  EXPECT_GE(starts.size(), 2U);
  EXPECT_EQ(app.unacked(), 2U);

  send(6, Ack{2});  // a stale ack for an earlier boot changes nothing
  EXPECT_EQ(app.unacked(), 2U);
  send(7, Ack{1});
  EXPECT_EQ(app.unacked(), 1U);
  run(2001, 0);  // the ack was progress: the next resend is 2 s after it
  const auto resent = uart.take();
  ASSERT_EQ(of_type(resent, MessageType::session_end).size(), 1U);
  EXPECT_TRUE(of_type(resent, MessageType::session_start).empty());
  send(7, Ack{2});
  EXPECT_EQ(app.unacked(), 0U);
  run(10'000, 0);
  EXPECT_TRUE(of_type(uart.take(), MessageType::session_end).empty());
}

TEST_F(AppTest, ConfigAgainResendsEveryUnackedMessage) {
  send(7, test_config());
  run(1000, 0);
  run(3000, 4.0);
  run(2500, 0);
  uart.take();
  ASSERT_EQ(app.unacked(), 2U);
  send(7, test_config());  // the agent restarted
  const auto frames = uart.take();
  ASSERT_EQ(frames.size(), 3U);
  EXPECT_EQ(frames[0].header.type, MessageType::heartbeat);
  EXPECT_EQ(frames[1].header.seq, 1U);
  EXPECT_EQ(frames[2].header.seq, 2U);
}

TEST_F(AppTest, GarbageFromTheAgentIsCountedInTheHeartbeat) {
  send(7, test_config());
  for (const std::uint8_t b : {0x11, 0x22, 0x33, 0x00})
    app.on_rx_byte(b);
  uart.take();
  run(5001, 0);  // the config's heartbeat, then the next 5 s later
  const auto hbs = of_type(uart.take(), MessageType::heartbeat);
  ASSERT_EQ(hbs.size(), 1U);
  Heartbeat hb;
  ASSERT_TRUE(decode(hbs[0].body, hb));
  EXPECT_EQ(hb.bad_frames, 1U);
  EXPECT_EQ(hb.uptime_ms, clock.now - 1);
}

TEST_F(AppTest, BadgeIsReportedOncePerPresentation) {
  send(7, test_config());
  uart.take();
  const std::string frame =
      "\x02"
      "0A1B2C3D4E"
      "00"
      "\x03";  // checksum filled below
  unsigned x = 0x0A ^ 0x1B ^ 0x2C ^ 0x3D ^ 0x4E;
  std::string f = frame;
  const char* hex = "0123456789ABCDEF";
  f[11] = hex[x >> 4];
  f[12] = hex[x & 0xF];
  for (int i = 0; i < 3; ++i) {  // the reader repeats while the tag stays
    for (const char c : f)
      app.on_badge_byte(static_cast<std::uint8_t>(c));
    clock.now += 200;
  }
  const auto badges = of_type(uart.take(), MessageType::badge);
  ASSERT_EQ(badges.size(), 1U);
  Badge b;
  ASSERT_TRUE(decode(badges[0].body, b));
  EXPECT_EQ(b.tag, (TagId{0x0A, 0x1B, 0x2C, 0x3D, 0x4E}));
}

TEST_F(AppTest, RunningInputGivesDebouncedSessionsOfSource2) {
  send(7, test_config());  // debounce 20 ms
  uart.take();
  const auto level = [&](bool on, int ms) {
    for (int i = 0; i < ms; ++i) {
      app.on_running(on);
      app.poll();
      ++clock.now;
    }
  };
  level(false, 100);
  const std::uint64_t on_at = clock.now;
  level(true, 5);  // bounce
  level(false, 3);
  level(true, 1000);
  const std::uint64_t off_at = clock.now;
  level(false, 100);
  const auto frames = uart.take();
  const auto starts = of_type(frames, MessageType::session_start);
  const auto ends = of_type(frames, MessageType::session_end);
  ASSERT_EQ(starts.size(), 1U);
  ASSERT_EQ(ends.size(), 1U);
  SessionEnd end;
  ASSERT_TRUE(decode(ends[0].body, end));
  EXPECT_EQ(end.source, SessionSource::running_input);
  EXPECT_EQ(end.start_ms, on_at + 8);  // the level that then held
  EXPECT_EQ(end.end_ms, off_at);
  EXPECT_EQ(end.charge_mc, 0U);
}

}  // namespace
