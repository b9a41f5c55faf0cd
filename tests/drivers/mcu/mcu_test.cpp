// SPDX-License-Identifier: AGPL-3.0-or-later
// The `mcu` driver through a real pseudo-terminal: the test holds the master side and plays the
// board, encoding and decoding frames with the firmware's own codec (reflow_fw_core). It covers
// the handshake, a session becoming `use` and `consume`, garbage on the line, a duplicate, a gap,
// a board reboot mid-session and the agent's restart (events committed once: acks only after
// commit). Time stamps are a FakeEnv's; every wait is for observable state, bounded.
#include <array>
#include <chrono>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/units.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/fw/link.hpp>
#include <reflow/fw/messages.hpp>

#include <reflow/core/zenflows_rules.hpp>
#include <reflow/drivers/members.hpp>

#include "capturing_sink.hpp"
#include "mcu_driver.hpp"
#include "pty.hpp"
#include "temp_dir.hpp"

namespace agent {
const DriverKind& mcu_driver_kind();  // what the generated registry calls
}  // namespace agent

namespace {

using namespace std::chrono_literals;
using namespace agent;
namespace fw = reflow::fw;
using reflow_test::CapturingSink;

constexpr auto k_bound = 20s;  // generous: a loaded CI machine, never a timing assertion
constexpr std::int64_t k_start_unix_ms = 1'767'225'600'000;  // FakeEnv's 2026-01-01T00:00:00Z

Result<AgentConfig> agent_config(const std::string& driver_tables) {
  return parse_config(
      "[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"/tmp/d\"\n\n" +
          driver_tables,
      "driver.toml");
}

// The board's side of a pseudo-terminal pair.
class Board {
 public:
  const std::string& name() const { return m_pty.name(); }

  void raw(std::string_view bytes) { m_pty.write(bytes); }

  template <typename Body>
  void send(fw::Header header, const Body& body) {
    fw::PayloadBuffer p{};
    const std::size_t n = fw::encode(header, body, p);
    std::array<std::uint8_t, fw::k_max_frame_bytes> frame{};
    const std::size_t f = fw::encode_frame({p.data(), n}, frame);
    raw({reinterpret_cast<const char*>(frame.data()), f});
  }

  // The next frame from the driver of `type` (others are skipped), within the bound.
  std::optional<std::pair<fw::Header, std::vector<std::uint8_t>>> next(fw::MessageType type) {
    const auto deadline = std::chrono::steady_clock::now() + k_bound;
    while (std::chrono::steady_clock::now() < deadline) {
      for (const char byte : m_pty.read_some()) {
        if (!m_decoder.feed(static_cast<std::uint8_t>(byte))) continue;
        fw::Header h;
        if (!fw::decode_header(m_decoder.payload(), h)) continue;
        const auto body = fw::body_of(m_decoder.payload());
        m_pending.emplace_back(h, std::vector<std::uint8_t>(body.begin(), body.end()));
      }
      for (auto it = m_pending.begin(); it != m_pending.end(); ++it) {
        if (it->first.type != type) continue;
        auto out = *it;
        m_pending.erase(m_pending.begin(), it + 1);
        return out;
      }
    }
    return std::nullopt;
  }

  // Waits for an ack and returns its seq (0 when none came).
  std::uint32_t ack() {
    auto f = next(fw::MessageType::ack);
    fw::Ack a;
    if (!f || !fw::decode(f->second, a)) return 0;
    return a.seq;
  }

 private:
  reflow_test::Pty m_pty{reflow_test::Pty::Termios::raw};
  fw::FrameDecoder m_decoder;
  std::vector<std::pair<fw::Header, std::vector<std::uint8_t>>> m_pending;
};

fw::Header header(fw::MessageType type, std::uint32_t boot, std::uint32_t seq = 0) {
  return fw::Header{fw::k_link_version, type, boot, seq};
}

class McuDriverTest : public ::testing::Test {
 protected:
  std::string table(const std::string& extra = "") {
    return "[[driver]]\nkind = \"mcu\"\nname = \"saw\"\npath = \"" + m_board.name() +
           "\"\nresource = \"machine:saw-01\"\nelectricity = \"electricity:workshop\"\n"
           "ua_per_count = 10000\nsample_rate_hz = 1000\nwindow_samples = 200\n"
           "on_ma = 1000\noff_ma = 500\nmin_on = \"1s\"\ngap_merge = \"2s\"\n" +
           extra;
  }

  std::unique_ptr<Driver> start(CapturingSink& sink, const std::string& extra = "") {
    return start_from(sink, agent_config(table(extra)));
  }

  // Creates the mcu driver of `parsed`'s first table and starts it; returns once its port is
  // open.
  template <typename Parsed>
  std::unique_ptr<Driver> start_from(CapturingSink& sink, const Parsed& parsed) {
    EXPECT_TRUE(parsed) << parsed.error().message;
    auto driver = mcu_driver_kind().create(parsed->drivers.at(0), m_env, m_log);
    EXPECT_TRUE(driver) << driver.error().message;
    EXPECT_TRUE((*driver)->start(sink, m_dir.path()));
    // The port is flushed when it opens: talk only once it is open.
    EXPECT_TRUE(wait_until([&] { return (*driver)->health().state.starts_with("open"); }));
    return std::move(*driver);
  }

  static bool wait_until(const std::function<bool()>& condition) {
    const auto deadline = std::chrono::steady_clock::now() + k_bound;
    while (!condition()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(2ms);  // polling observable state, not a timing
    }
    return true;
  }

  // hello → config (checked) → heartbeat with that config applied, uptime `uptime_ms`.
  void handshake(std::uint32_t boot, std::uint64_t uptime_ms = 10'000) {
    m_board.send(header(fw::MessageType::hello, boot),
                 fw::Hello{0x000100, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, 1, 0});
    auto config = m_board.next(fw::MessageType::config);
    ASSERT_TRUE(config);
    EXPECT_EQ(config->first.boot, boot);
    fw::Config c;
    ASSERT_TRUE(fw::decode(config->second, c));
    EXPECT_EQ(c.ua_per_count, 10'000U);
    EXPECT_EQ(c.on_threshold_ma, 1000U);
    EXPECT_EQ(c.off_threshold_ma, 500U);
    EXPECT_EQ(c.min_on_ms, 1000U);
    EXPECT_EQ(c.gap_merge_ms, 2000U);
    EXPECT_EQ(c.voltage_mv, 230'000U);
    heartbeat(boot, uptime_ms, config->second);
  }

  void heartbeat(std::uint32_t boot, std::uint64_t uptime_ms,
                 const std::vector<std::uint8_t>& config_body) {
    fw::Heartbeat hb;
    hb.uptime_ms = uptime_ms;
    hb.config_crc = fw::crc32({config_body.data(), fw::k_config_body_bytes});
    m_board.send(header(fw::MessageType::heartbeat, boot), hb);
  }

  static fw::SessionEnd session_end(std::uint32_t session, std::uint64_t start_ms,
                                    std::uint64_t end_ms) {
    fw::SessionEnd e;
    e.session = session;
    e.start_ms = start_ms;
    e.end_ms = end_ms;
    e.charge_mc = 4 * (end_ms - start_ms);  // 4 A
    e.energy_mj = e.charge_mc * 230;        // 230 V, power factor 1
    e.peak_ma = 4100;
    return e;
  }

  reflow_test::TempDir m_dir;
  FakeEnv m_env;
  Logger m_log{LogLevel::error};
  Board m_board;
};

TEST_F(McuDriverTest, ConfigErrorsNameFileLineAndKey) {
  std::string text = table();
  text.replace(text.find("off_ma = 500"), 12, "off_ma = 2000");
  auto parsed = agent_config(text);
  ASSERT_TRUE(parsed) << parsed.error().message;
  auto bad = mcu::parse_mcu_config(parsed->drivers.at(0));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("driver.toml:16: driver.saw.off_ma: must be at most on_ma"),
            std::string::npos)
      << bad.error().message;

  parsed = agent_config("[[driver]]\nkind = \"mcu\"\nname = \"saw\"\nresource = \"m\"\n");
  ASSERT_TRUE(parsed);
  bad = mcu::parse_mcu_config(parsed->drivers.at(0));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("driver.saw.path"), std::string::npos) << bad.error().message;

  parsed = agent_config(table("power_factor = 1.5\n"));
  ASSERT_TRUE(parsed);
  EXPECT_FALSE(mcu::parse_mcu_config(parsed->drivers.at(0)));
  parsed = agent_config(table("sample_rate = 5\n"));  // an unknown key
  ASSERT_TRUE(parsed);
  EXPECT_FALSE(mcu::parse_mcu_config(parsed->drivers.at(0)));
}

TEST_F(McuDriverTest, SessionBecomesUseAndConsumeSharingAProcessAckedAfterCommit) {
  CapturingSink sink;
  auto driver = start(sink);
  handshake(3, 10'000);  // board ms 10 000 is "now"
  m_board.send(header(fw::MessageType::session_start, 3, 1),
               fw::SessionStart{1, fw::SessionSource::current, 11'000});
  EXPECT_EQ(m_board.ack(), 1U);
  m_board.send(header(fw::MessageType::session_end, 3, 2), session_end(1, 11'000, 18'200'000));
  EXPECT_EQ(m_board.ack(), 2U);
  const auto events = sink.fields();
  ASSERT_EQ(events.size(), 2U);
  const auto& use = events[0];
  const auto& consume = events[1];
  EXPECT_EQ(use["action"], "use");
  EXPECT_EQ(use["resourceInventoriedAs"], "machine:saw-01");
  EXPECT_EQ(use["hasBeginning"], format_rfc3339_ms(k_start_unix_ms + 1'000));
  EXPECT_EQ(use["hasEnd"], format_rfc3339_ms(k_start_unix_ms + 18'190'000));
  EXPECT_DOUBLE_EQ(use["effortQuantity"]["hasNumericalValue"].get<double>(), 5.0525);  // 18 189 s
  EXPECT_EQ(use["effortQuantity"]["hasUnit"], "hour");
  EXPECT_EQ(consume["action"], "consume");
  EXPECT_EQ(consume["resourceInventoriedAs"], "electricity:workshop");
  EXPECT_EQ(consume["resourceQuantity"]["hasUnit"], "kilowattHour");
  // 4 A × 230 V for 18 189 s = 4.6483 kWh
  EXPECT_NEAR(consume["resourceQuantity"]["hasNumericalValue"].get<double>(), 4.6483, 1e-4);
  EXPECT_EQ(use["inputOf"], consume["inputOf"]);
  EXPECT_EQ(use["inputOf"], "mcu:saw:boot-3-session-1");
  const auto health = driver->health();
  EXPECT_EQ(health.events, 2U);
  EXPECT_NE(health.state.find("firmware 0.1.0"), std::string::npos) << health.state;
  EXPECT_NE(health.state.find("boot 3, uptime 10 s, configured"), std::string::npos)
      << health.state;
}

TEST_F(McuDriverTest, GarbageDuplicateAndGap) {
  CapturingSink sink;
  auto driver = start(sink);
  m_board.raw(std::string("\x13\x37garbage\xff\x00", 11));  // a frame's worth of noise
  handshake(5);
  m_board.send(header(fw::MessageType::session_end, 5, 1), session_end(1, 10'000, 20'000));
  EXPECT_EQ(m_board.ack(), 1U);
  // The ack was lost: the board resends; a duplicate is acked again, not processed again.
  m_board.send(header(fw::MessageType::session_end, 5, 1), session_end(1, 10'000, 20'000));
  EXPECT_EQ(m_board.ack(), 1U);
  EXPECT_EQ(sink.fields().size(), 2U);
  // Seq 2 and 3 fell out of the board's full ring: a gap of 2, and seq 4 is processed.
  m_board.send(header(fw::MessageType::session_end, 5, 4), session_end(4, 30'000, 40'000));
  EXPECT_EQ(m_board.ack(), 4U);
  EXPECT_EQ(sink.fields().size(), 4U);
  const auto h = driver->health();
  EXPECT_EQ(h.malformed, 1U);
  EXPECT_NE(h.state.find("link errors 1"), std::string::npos) << h.state;
  EXPECT_NE(h.state.find("lost 2, duplicates 1"), std::string::npos) << h.state;
}

TEST_F(McuDriverTest, RunningInputSessionIsUseOnlyAndUnknownTypesAreAcked) {
  CapturingSink sink;
  auto driver = start(sink);
  handshake(4);
  fw::SessionEnd e;
  e.session = 1;
  e.source = fw::SessionSource::running_input;
  e.start_ms = 10'000;
  e.end_ms = 1'810'000;
  m_board.send(header(fw::MessageType::session_end, 4, 1), e);
  EXPECT_EQ(m_board.ack(), 1U);
  // A message of a later minor version: acknowledged and ignored (LINK §6).
  fw::PayloadBuffer p{};
  const std::size_t n = fw::encode(header(fw::MessageType::pulses, 4, 2), fw::Pulses{}, p);
  p[1] = 42;
  std::array<std::uint8_t, fw::k_max_frame_bytes> frame{};
  const std::size_t f = fw::encode_frame({p.data(), n}, frame);
  m_board.raw({reinterpret_cast<const char*>(frame.data()), f});
  EXPECT_EQ(m_board.ack(), 2U);
  const auto events = sink.fields();
  ASSERT_EQ(events.size(), 1U);
  EXPECT_EQ(events[0]["action"], "use");
  EXPECT_DOUBLE_EQ(events[0]["effortQuantity"]["hasNumericalValue"].get<double>(), 0.5);
  EXPECT_EQ(events[0]["inputOf"], "mcu:saw:boot-4-input-1");
  EXPECT_EQ(events[0]["meta"]["method"], "measured");
}

TEST_F(McuDriverTest, BoardRebootMidSessionStartsAFreshSequence) {
  CapturingSink sink;
  auto driver = start(sink);
  handshake(8);
  m_board.send(header(fw::MessageType::session_start, 8, 1),
               fw::SessionStart{1, fw::SessionSource::current, 11'000});
  EXPECT_EQ(m_board.ack(), 1U);
  // Reset: boot 9, seq from 1 again; the open session of boot 8 is lost (LINK §5).
  handshake(9, 2'000);
  m_board.send(header(fw::MessageType::session_end, 9, 1), session_end(1, 3'000, 63'000));
  auto ack = m_board.next(fw::MessageType::ack);
  ASSERT_TRUE(ack);
  EXPECT_EQ(ack->first.boot, 9U);
  const auto events = sink.fields();
  ASSERT_EQ(events.size(), 2U);
  EXPECT_EQ(events[0]["inputOf"], "mcu:saw:boot-9-session-1");
  EXPECT_NE(driver->health().state.find("boot 9"), std::string::npos);
}

TEST_F(McuDriverTest, AgentRestartCommitsEachSessionOnce) {
  std::vector<std::uint8_t> config;
  {
    CapturingSink held(/*hold_answers=*/true);  // the agent dies before it commits
    auto driver = start(held);
    m_board.send(header(fw::MessageType::hello, 2), fw::Hello{});
    auto c = m_board.next(fw::MessageType::config);
    ASSERT_TRUE(c);
    config = c->second;
    heartbeat(2, 10'000, config);
    m_board.send(header(fw::MessageType::session_end, 2, 1), session_end(1, 10'000, 20'000));
    ASSERT_EQ(held.wait_for(2).size(), 2U);
    driver->stop();
  }
  {
    // The new agent configures the board on its first heartbeat; the board resends seq 1.
    CapturingSink sink;
    auto driver = start(sink);
    heartbeat(2, 15'000, config);
    ASSERT_TRUE(m_board.next(fw::MessageType::config));
    m_board.send(header(fw::MessageType::session_end, 2, 1), session_end(1, 10'000, 20'000));
    EXPECT_EQ(m_board.ack(), 1U);
    EXPECT_EQ(sink.fields().size(), 2U);
    driver->stop();
  }
  {
    // Committed and acked, but the board missed the ack: resent after a restart, not repeated.
    CapturingSink sink;
    auto driver = start(sink);
    heartbeat(2, 20'000, config);
    ASSERT_TRUE(m_board.next(fw::MessageType::config));
    m_board.send(header(fw::MessageType::session_end, 2, 1), session_end(1, 10'000, 20'000));
    EXPECT_EQ(m_board.ack(), 1U);
    EXPECT_TRUE(sink.fields().empty());
  }
}

// Badges (issue 17): the board's reader and an RDM6300 on its own pseudo-terminal.
class McuBadgeTest : public McuDriverTest {
 protected:
  // ada's card is 0a1b2c3d4e; the badge table and [members] for `source`.
  std::string badge_tables(const std::string& source) {
    auto secret = load_or_create_site_secret(site_secret_path(m_dir.path()));
    EXPECT_TRUE(secret);
    std::ofstream(m_dir / "members.toml")
        << "[[member]]\nhandle = \"ada\"\nagent = \"person:ada\"\nbadges = [\""
        << badge_hash(*secret, "0a1b2c3d4e") << "\"]\n"
        << "[[member]]\nhandle = \"bob\"\nagent = \"person:bob\"\nbadges = [\""
        << badge_hash(*secret, "1122334455") << "\"]\n";
    return "[driver.badge]\n" + source + "window = \"2m\"\n[members]\nfile = \"" +
           (m_dir / "members.toml").string() + "\"\nprovider = \"org:fablab\"\n";
  }
  Result<AgentConfig> badge_config(const std::string& extra) {
    return parse_config("[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"" +
                            m_dir.path().string() + "\"\n\n" + table(extra),
                        "driver.toml");
  }
  std::unique_ptr<Driver> start_badged(CapturingSink& sink, const std::string& source) {
    return start_from(sink, badge_config(badge_tables(source)));
  }
};

TEST_F(McuBadgeTest, BoardBadgeThenUseMakesTheMemberReceiverOfUseAndConsume) {
  CapturingSink sink;
  auto driver = start_badged(sink, "source = \"mcu\"\n");
  handshake(3, 10'000);  // board ms 10 000 is k_start_unix_ms
  m_board.send(header(fw::MessageType::badge, 3, 1),
               fw::Badge{10'500, {0x0a, 0x1b, 0x2c, 0x3d, 0x4e}});
  EXPECT_EQ(m_board.ack(), 1U);
  // Starts 0.5 s after the badge: ada's.
  m_board.send(header(fw::MessageType::session_end, 3, 2), session_end(1, 11'000, 100'000));
  EXPECT_EQ(m_board.ack(), 2U);
  // Starts 10 min after it, beyond the 2 min window: nobody's, counted.
  m_board.send(header(fw::MessageType::session_end, 3, 3), session_end(2, 611'000, 700'000));
  EXPECT_EQ(m_board.ack(), 3U);
  // An unknown card: logged by its hash, kept as the machine's last unknown.
  m_board.send(header(fw::MessageType::badge, 3, 4), fw::Badge{800'000, {1, 2, 3, 4, 5}});
  EXPECT_EQ(m_board.ack(), 4U);

  const auto events = sink.fields();
  ASSERT_EQ(events.size(), 5U);
  EXPECT_EQ(events[0]["action"], "use");
  EXPECT_EQ(events[0]["provider"], "org:fablab");
  EXPECT_EQ(events[0]["receiver"], "person:ada");
  EXPECT_EQ(events[1]["action"], "consume");
  EXPECT_EQ(events[1]["receiver"], "person:ada");
  EXPECT_FALSE(events[1].contains("provider"));
  EXPECT_FALSE(events[2].contains("receiver"));
  EXPECT_FALSE(events[3].contains("receiver"));
  for (const auto& e : events)
    EXPECT_TRUE(vf::check_zenflows_rules(e)) << e.dump();

  const auto state = driver->health().state;
  EXPECT_NE(state.find("badges 2 (known 1, unknown 1), sessions without badge 1, last member ada"),
            std::string::npos)
      << state;
  EXPECT_EQ(state.find("0a1b2c3d4e"), std::string::npos) << state;
  auto unknown = load_last_unknown(m_dir.path());
  ASSERT_TRUE(unknown && *unknown);
  auto secret = load_or_create_site_secret(site_secret_path(m_dir.path()));
  ASSERT_TRUE(secret);
  EXPECT_EQ((*unknown)->hash, badge_hash(*secret, "0102030405"));
  EXPECT_EQ((*unknown)->seen_at, format_rfc3339_ms(k_start_unix_ms + 790'000));
  // …and recorded as an event for the node's `reflow-ingest members` (PROTOCOL §4.1).
  EXPECT_EQ(events[4]["action"], "cite");
  EXPECT_EQ(events[4]["resourceInventoriedAs"], "machine:saw-01");
  EXPECT_EQ(events[4]["hasPointInTime"], (*unknown)->seen_at);
  EXPECT_EQ(events[4]["meta"]["badge"], "unknown");
  EXPECT_EQ(events[4]["meta"]["badge_hash"], (*unknown)->hash);
  EXPECT_FALSE(events[4].contains("receiver"));
  for (const auto& e : events)
    EXPECT_EQ(e.dump().find("0a1b2c3d4e"), std::string::npos);
}

TEST_F(McuBadgeTest, BoardBadgesCompareInBoardTimeWhateverTheUtcMapping) {
  CapturingSink sink;
  auto driver = start_badged(sink, "source = \"mcu\"\n");
  handshake(3, 10'000);
  m_board.send(header(fw::MessageType::badge, 3, 1),
               fw::Badge{10'500, {0x0a, 0x1b, 0x2c, 0x3d, 0x4e}});
  EXPECT_EQ(m_board.ack(), 1U);
  // A heartbeat whose uptime moves the board-to-UTC offset by 50 s (a drifting board clock):
  // mapped to UTC the session would begin before the badge; on the board it is 0.5 s after.
  fw::Heartbeat hb;
  hb.uptime_ms = 60'000;
  m_board.send(header(fw::MessageType::heartbeat, 3), hb);
  m_board.send(header(fw::MessageType::session_end, 3, 2), session_end(1, 11'000, 100'000));
  EXPECT_EQ(m_board.ack(), 2U);
  const auto events = sink.fields();
  ASSERT_EQ(events.size(), 2U);
  EXPECT_LT(events[0]["hasBeginning"].get<std::string>(), format_rfc3339_ms(k_start_unix_ms));
  EXPECT_EQ(events[0]["receiver"], "person:ada");
  // A board reset starts its clock again: the old boot's badges are forgotten.
  m_board.send(header(fw::MessageType::session_end, 4, 1), session_end(1, 11'000, 100'000));
  EXPECT_EQ(m_board.ack(), 1U);
  const auto after = sink.fields();
  ASSERT_EQ(after.size(), 4U);
  EXPECT_FALSE(after[2].contains("receiver"));
}

TEST_F(McuBadgeTest, ANewBadgeDuringASessionHandsItOver) {
  CapturingSink sink;
  auto driver = start_badged(sink, "source = \"mcu\"\n");
  handshake(3, 10'000);
  m_board.send(header(fw::MessageType::badge, 3, 1),
               fw::Badge{10'500, {0x0a, 0x1b, 0x2c, 0x3d, 0x4e}});
  EXPECT_EQ(m_board.ack(), 1U);
  // ada's again (no handover), then bob's at board ms 46 000, during the session.
  m_board.send(header(fw::MessageType::badge, 3, 2),
               fw::Badge{30'000, {0x0a, 0x1b, 0x2c, 0x3d, 0x4e}});
  EXPECT_EQ(m_board.ack(), 2U);
  m_board.send(header(fw::MessageType::badge, 3, 3),
               fw::Badge{46'000, {0x11, 0x22, 0x33, 0x44, 0x55}});
  EXPECT_EQ(m_board.ack(), 3U);
  m_board.send(header(fw::MessageType::session_end, 3, 4), session_end(1, 11'000, 100'000));
  EXPECT_EQ(m_board.ack(), 4U);
  const auto events = sink.fields();
  ASSERT_EQ(events.size(), 4U);
  EXPECT_EQ(events[0]["action"], "use");
  EXPECT_EQ(events[0]["receiver"], "person:ada");
  EXPECT_EQ(events[0]["hasBeginning"], format_rfc3339_ms(k_start_unix_ms + 1'000));
  EXPECT_EQ(events[0]["hasEnd"], format_rfc3339_ms(k_start_unix_ms + 36'000));
  EXPECT_DOUBLE_EQ(events[0]["effortQuantity"]["hasNumericalValue"].get<double>(), 0.009722);
  EXPECT_EQ(events[1]["action"], "consume");
  EXPECT_EQ(events[1]["receiver"], "person:ada");
  EXPECT_EQ(events[2]["action"], "use");
  EXPECT_EQ(events[2]["receiver"], "person:bob");
  EXPECT_EQ(events[2]["provider"], "org:fablab");
  EXPECT_EQ(events[2]["hasBeginning"], format_rfc3339_ms(k_start_unix_ms + 36'000));
  EXPECT_DOUBLE_EQ(events[2]["effortQuantity"]["hasNumericalValue"].get<double>(), 0.015);
  EXPECT_EQ(events[3]["receiver"], "person:bob");
  EXPECT_EQ(events[2]["meta"]["part"], 2);
  EXPECT_EQ(events[2]["meta"]["parts"], 2);
  EXPECT_EQ(events[0]["inputOf"], events[2]["inputOf"]);  // one machine session
  // 4 A × 230 V for 89 s = 0.022744 kWh, shared 35 : 54.
  const double ada = events[1]["resourceQuantity"]["hasNumericalValue"].get<double>();
  const double bob = events[3]["resourceQuantity"]["hasNumericalValue"].get<double>();
  EXPECT_NEAR(ada, 0.008944, 1e-6);
  EXPECT_NEAR(bob, 0.0138, 1e-6);
  for (const auto& e : events)
    EXPECT_TRUE(vf::check_zenflows_rules(e)) << e.dump();
}

TEST_F(McuBadgeTest, SerialReaderBadgeAttributesTheNextSession) {
  reflow_test::Pty reader;  // the RDM6300 module
  ASSERT_TRUE(reader.ok());
  CapturingSink sink;
  auto driver =
      start_badged(sink, fmt::format("source = \"serial\"\ndevice = \"{}\"\n", reader.name()));
  ASSERT_TRUE(
      wait_until([&] { return driver->health().state.find("reader open") != std::string::npos; }));
  // RDM6300 frame of 0A1B2C3D4E (checksum 0A^1B^2C^3D^4E = 0x4E), held: sent twice, one badge.
  const std::string frame =
      "\x02"
      "0A1B2C3D4E4E\x03";
  const std::string twice = "noise" + frame + frame;
  ASSERT_TRUE(reader.write(twice));
  ASSERT_TRUE(wait_until([&] {
    return driver->health().state.find("known 1") != std::string::npos;
  })) << driver->health().state;
  handshake(3, 10'000);
  m_board.send(header(fw::MessageType::session_end, 3, 1), session_end(1, 11'000, 100'000));
  EXPECT_EQ(m_board.ack(), 1U);
  const auto events = sink.fields();
  ASSERT_EQ(events.size(), 2U);
  EXPECT_EQ(events[0]["receiver"], "person:ada");
  EXPECT_EQ(events[1]["receiver"], "person:ada");
  const auto health = driver->health();
  EXPECT_NE(health.state.find("frames 2, bad frames 1"), std::string::npos) << health.state;
  EXPECT_NE(health.state.find("badges 1 (known 1"), std::string::npos) << health.state;
  driver->stop();
}

TEST_F(McuBadgeTest, BadgeTableNeedsMembersAndAKnownSource) {
  auto parsed = agent_config(table("[driver.badge]\nsource = \"mcu\"\n"));
  ASSERT_TRUE(parsed) << parsed.error().message;
  auto bad = mcu::parse_mcu_config(parsed->drivers.at(0));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("driver.saw.badge.source: needs [members]"), std::string::npos)
      << bad.error().message;
  parsed = badge_config(badge_tables("source = \"nfc\"\ndevice = \"/dev/input/event0\"\n"));
  ASSERT_TRUE(parsed) << parsed.error().message;
  bad = mcu::parse_mcu_config(parsed->drivers.at(0));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find(
                "driver.saw.badge.source: expected one of \"mcu\", \"serial\", \"evdev\""),
            std::string::npos)
      << bad.error().message;
}

}  // namespace
