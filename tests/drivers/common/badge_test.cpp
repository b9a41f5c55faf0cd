// SPDX-License-Identifier: AGPL-3.0-or-later
// Badge readers and "badge then use": the EM4100 (RDM6300) frame decoder fed through a real
// pseudo-terminal and agent::SerialPort, the `badge` sub-table's errors, and the attribution
// window on explicit times (no clock, no sleeps).
#include <poll.h>
#include <pty.h>
#include <termios.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <reflow/core/logger.hpp>
#include <reflow/device/config.hpp>
#include <reflow/drivers/badge.hpp>
#include <reflow/drivers/serial_port.hpp>

#include "files.hpp"
#include "replay_key_source.hpp"
#include "temp_dir.hpp"

namespace {

using namespace std::chrono_literals;
using namespace agent;

constexpr std::int64_t k_t0 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z

// An RDM6300 frame of the 5 bytes `card` (10 hex digits), with a right or wrong checksum.
std::string frame(std::string_view card, bool good_checksum = true) {
  std::uint8_t x = 0;
  for (std::size_t i = 0; i < 10; i += 2)
    x ^= static_cast<std::uint8_t>(std::stoi(std::string(card.substr(i, 2)), nullptr, 16));
  if (!good_checksum) x ^= 0x01;
  return fmt::format("\x02{}{:02X}\x03", card, x);
}

// A keyboard-mode reader typing `text` (digits, lowercase letters, '\n' for Enter) from `at_ms`,
// 4 ms a key, as a recording for parse_key_recording (`evtest`'s names).
std::string typed(std::string_view text, std::int64_t at_ms) {
  std::string out;
  std::int64_t us = at_ms * 1000;
  for (char c : text) {
    const std::string key = c == '\n' ? std::string("KEY_ENTER")
                                      : fmt::format("KEY_{}", static_cast<char>(std::toupper(c)));
    for (int value : {1, 0}) {
      out += fmt::format("{}.{:06} EV_KEY {} {}\n{}.{:06} EV_SYN SYN_REPORT 0\n", us / 1'000'000,
                         us % 1'000'000, key, value, us / 1'000'000, us % 1'000'000);
      us += 2000;
    }
  }
  return out;
}

// Polls a state another thread changes, with a bound (no timing is asserted).
template <class Predicate>
bool wait_until(Predicate predicate) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!predicate()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

std::vector<std::string> decode(Em4100Decoder& d, std::string_view bytes) {
  std::vector<std::string> out;
  for (char c : bytes)
    if (auto id = d.feed(static_cast<std::uint8_t>(c))) out.push_back(*id);
  return out;
}

TEST(Em4100DecoderTest, DecodesFramesAndResynchronisesAfterGarbage) {
  Em4100Decoder d;
  EXPECT_EQ(decode(d, frame("0415A3B2C1")), std::vector<std::string>{"0415A3B2C1"});
  EXPECT_EQ(d.frames(), 1U);
  EXPECT_EQ(d.bad_frames(), 0U);
  // Noise, a bad checksum, a frame torn by the next STX, non-hex digits, a long frame: each
  // counted once and skipped; the valid frames around them decode.
  const std::string torn = frame("0000000001").substr(0, 7);
  const std::string nonhex =
      "\x02"
      "0415A3B2ZZ99\x03";
  const std::string longer =
      "\x02"
      "0415A3B2C1C1C1\x03";
  const auto ids = decode(d, "line noise" + frame("0415A3B2C1", false) + torn +
                                 frame("1122334455") + nonhex + longer + frame("0415A3B2C1"));
  EXPECT_EQ(ids, (std::vector<std::string>{"1122334455", "0415A3B2C1"}));
  EXPECT_EQ(d.frames(), 3U);
  EXPECT_EQ(d.bad_frames(), 5U);
}

TEST(Em4100DecoderTest, ReadsFramesFromAPseudoTerminal) {
  int master = -1;
  int slave = -1;
  std::array<char, 128> name{};
  ASSERT_EQ(::openpty(&master, &slave, name.data(), nullptr, nullptr), 0);
  auto port =
      SerialPort::open(name.data(), SerialSettings{9600, 8, SerialSettings::Parity::none, 1});
  ASSERT_TRUE(port) << port.error().message;
  // Two reads of one card (a reader repeats while the card is held) with noise between them,
  // written in pieces as a UART delivers them.
  const std::string bytes = frame("0415A3B2C1") + "\xff\xfe" + frame("0415A3B2C1");
  for (std::size_t i = 0; i < bytes.size(); i += 5) {
    const std::string piece = bytes.substr(i, 5);
    ASSERT_EQ(::write(master, piece.data(), piece.size()), static_cast<ssize_t>(piece.size()));
  }
  Em4100Decoder d;
  std::vector<std::string> ids;
  const auto deadline = std::chrono::steady_clock::now() + 10s;  // a bound, not a timing
  while (ids.size() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::array<std::byte, 64> buf{};
    auto n = (*port)->read(buf, deadline, std::stop_token{});
    ASSERT_TRUE(n) << n.error().message;
    for (std::size_t i = 0; i < *n; ++i)
      if (auto id = d.feed(static_cast<std::uint8_t>(buf[i]))) ids.push_back(*id);
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"0415A3B2C1", "0415A3B2C1"}));
  EXPECT_EQ(d.bad_frames(), 1U);
  ::close(master);
  ::close(slave);
}

class BadgeTest : public ::testing::Test {
 protected:
  Result<AgentConfig> config(const std::string& badge_table, bool with_members = true) {
    return parse_config(
        fmt::format("[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = "
                    "\"{}\"\n{}[[driver]]\nkind = \"mcu\"\nname = \"laser\"\n{}",
                    m_dir.path().string(),
                    with_members ? fmt::format("[members]\nfile = \"{}\"\nprovider = "
                                               "\"org:fablab\"\n",
                                               (m_dir / "members.toml").string())
                                 : "",
                    badge_table),
        "agent.toml");
  }

  std::string error_of(const std::string& badge_table, bool with_members = true) {
    auto c = config(badge_table, with_members);
    EXPECT_TRUE(c) << c.error().message;
    if (!c) return "";
    auto b = parse_badge_config(c->drivers.at(0), {"mcu", "serial", "evdev"});
    EXPECT_FALSE(b);
    return b ? "" : b.error().message;
  }

  // Enrols ada with card 0415A3B2C1 and opens the attribution of machine "laser".
  std::unique_ptr<BadgeAttribution> open(std::chrono::milliseconds window = 2min) {
    auto c = config(
        fmt::format("[driver.badge]\nsource = \"mcu\"\nwindow = \"{}ms\"\n", window.count()));
    EXPECT_TRUE(c) << c.error().message;
    auto b = parse_badge_config(c->drivers.at(0), {"mcu"});
    EXPECT_TRUE(b && *b) << (b ? "absent" : b.error().message);
    auto secret = load_or_create_site_secret(site_secret_path(m_dir.path()));
    EXPECT_TRUE(secret);
    m_ada = badge_hash(*secret, "0415A3B2C1");
    std::ofstream(m_dir / "members.toml")
        << "[[member]]\nhandle = \"ada\"\nagent = \"person:ada\"\nbadges = [\"" << m_ada << "\"]\n";
    std::filesystem::create_directories(m_dir / "state");
    auto a = BadgeAttribution::open(**b, "laser", m_dir / "state", m_log, "driver mcu/laser");
    EXPECT_TRUE(a) << a.error().message;
    return a ? std::move(*a) : nullptr;
  }

  reflow_test::TempDir m_dir;
  Logger m_log{LogLevel::debug};
  std::string m_ada;
};

TEST_F(BadgeTest, TableIsOptionalAndItsErrorsNameFileLineAndKey) {
  auto none = config("");
  ASSERT_TRUE(none);
  auto absent = parse_badge_config(none->drivers.at(0), {"mcu"});
  ASSERT_TRUE(absent);
  EXPECT_FALSE(*absent);
  EXPECT_NE(error_of("[driver.badge]\nsource = \"nfc\"\n").find("driver.laser.badge.source"),
            std::string::npos);
  EXPECT_NE(error_of("[driver.badge]\nsource = \"serial\"\n")
                .find("agent.toml:11: driver.laser.badge.device: is required"),
            std::string::npos);
  EXPECT_NE(error_of("[driver.badge]\nsource = \"mcu\"\nwindow = 5\n")
                .find("agent.toml:13: driver.laser.badge.window: expected a duration"),
            std::string::npos);
  EXPECT_NE(error_of("[driver.badge]\nsource = \"mcu\"\ncolour = 1\n")
                .find("driver.laser.badge.colour: unknown key"),
            std::string::npos);
  EXPECT_NE(error_of("[driver.badge]\nsource = \"mcu\"\n", false).find("needs [members] file"),
            std::string::npos);
  EXPECT_NE(error_of("badge = \"mcu\"\n").find("driver.laser.badge: expected a table"),
            std::string::npos);
  auto serial = config("[driver.badge]\nsource = \"serial\"\ndevice = \"/dev/ttyUSB0\"\n");
  ASSERT_TRUE(serial);
  auto ok = parse_badge_config(serial->drivers.at(0), {"mcu", "serial"});
  ASSERT_TRUE(ok && *ok);
  EXPECT_EQ((*ok)->source, BadgeConfig::Source::serial);
  EXPECT_EQ((*ok)->device, "/dev/ttyUSB0");
  EXPECT_EQ((*ok)->window, 2min);
  EXPECT_EQ((*ok)->provider, "org:fablab");
  EXPECT_EQ((*ok)->secret_file, m_dir / "site-secret");
}

TEST_F(BadgeTest, RecentBadgesSurviveARestartUntilForgotten) {
  {
    auto a = open(2min);
    ASSERT_TRUE(a);
    a->on_card("0415A3B2C1", k_t0);
  }
  // The agent restarts: the badge just before still makes the next session ada's.
  {
    auto a = open(2min);
    ASSERT_TRUE(a);
    auto who = a->for_session(k_t0 + 60'000);
    ASSERT_TRUE(who);
    EXPECT_EQ(who->handle, "ada");
    // The kept file names the member, not the card.
    const std::string kept = reflow_test::read_text(m_dir / "state" / "badges.json");
    EXPECT_NE(kept.find("\"handle\":\"ada\""), std::string::npos) << kept;
    EXPECT_EQ(kept.find(m_ada), std::string::npos) << kept;
    EXPECT_EQ(kept.find("0415"), std::string::npos) << kept;
    a->forget_badges();  // the board rebooted: its clock starts again
  }
  auto a = open(2min);
  ASSERT_TRUE(a);
  EXPECT_FALSE(a->for_session(k_t0 + 60'000));
}

TEST_F(BadgeTest, SessionWithinTheWindowAfterAKnownBadgeIsTheMembers) {
  ::testing::internal::CaptureStderr();  // the log, checked for the raw id
  auto a = open(2min);
  ASSERT_TRUE(a);
  a->on_card("0415A3B2C1", k_t0);
  // Before the badge, or more than the window after it: nobody's.
  EXPECT_FALSE(a->for_session(k_t0 - 1));
  EXPECT_FALSE(a->for_session(k_t0 + 120'001));
  auto who = a->for_session(k_t0 + 120'000);
  ASSERT_TRUE(who);
  EXPECT_EQ(who->handle, "ada");
  EXPECT_EQ(who->receiver, "person:ada");
  EXPECT_EQ(who->provider, "org:fablab");
  // Handover: ada's badge inside a session that had nobody starts her part; inside her own
  // session it changes nothing; at the session's very start or end it is not inside.
  const auto into_nobodys = a->handovers(k_t0 - 1000, k_t0 + 1000, std::nullopt);
  ASSERT_EQ(into_nobodys.size(), 1U);
  EXPECT_EQ(into_nobodys[0].first, k_t0);
  EXPECT_EQ(into_nobodys[0].second.receiver, "person:ada");
  EXPECT_TRUE(a->handovers(k_t0 - 1000, k_t0 + 1000, who).empty());
  EXPECT_TRUE(a->handovers(k_t0, k_t0 + 1000, std::nullopt).empty());
  // Asked again (a resent session): the same answer.
  EXPECT_EQ(a->for_session(k_t0 + 30'000)->receiver, "person:ada");

  nlohmann::ordered_json use = {{"action", "use"}};
  nlohmann::ordered_json consume = {{"action", "consume"}};
  attribute(use, *who);
  attribute(consume, *who);
  EXPECT_EQ(use["provider"], "org:fablab");
  EXPECT_EQ(use["receiver"], "person:ada");
  EXPECT_EQ(consume["receiver"], "person:ada");
  EXPECT_FALSE(consume.contains("provider"));
  EXPECT_EQ(a->known_badges(), 1U);
  EXPECT_NE(a->status().find("known 1, unknown 0"), std::string::npos) << a->status();
  // The raw id is in no log line.
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("badge of ada at laser"), std::string::npos) << log;
  EXPECT_EQ(log.find("0415A3B2C1"), std::string::npos) << log;
  EXPECT_EQ(log.find("0415a3b2c1"), std::string::npos) << log;
}

TEST_F(BadgeTest, UnknownCardIsLoggedByHashCountedAndKeptAsLastUnknown) {
  ::testing::internal::CaptureStderr();
  auto a = open();
  ASSERT_TRUE(a);
  a->on_card("DEADBEEF01", k_t0);
  EXPECT_FALSE(a->for_session(k_t0 + 1000));
  a->count_unbadged_session();
  EXPECT_EQ(a->unknown_badges(), 1U);
  EXPECT_EQ(a->unbadged_sessions(), 1U);
  EXPECT_NE(a->status().find("unknown 1), sessions without badge 1"), std::string::npos)
      << a->status();
  auto last = load_last_unknown(m_dir / "state");
  ASSERT_TRUE(last && *last);
  auto secret = load_or_create_site_secret(site_secret_path(m_dir.path()));
  ASSERT_TRUE(secret);
  EXPECT_EQ((*last)->hash, badge_hash(*secret, "DEADBEEF01"));
  EXPECT_EQ((*last)->seen_at, "2026-01-01T00:00:00.000Z");
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find((*last)->hash), std::string::npos) << log;
  EXPECT_EQ(log.find("DEADBEEF01"), std::string::npos) << log;
  EXPECT_EQ(log.find("deadbeef01"), std::string::npos) << log;
}

TEST_F(BadgeTest, KeyboardReaderTypesCardsThatBecomeBadgesAndOtherCodesAreBadFrames) {
  ::testing::internal::CaptureStderr();
  auto a = open();
  ASSERT_TRUE(a);
  // ada's card typed (lowercase hex: one hash whatever the case), typed again while held, a
  // code that is no card number, ada again later, and a number cut off before its Enter.
  auto events = parse_key_recording(typed("0415a3b2c1\n", 0) + typed("0415a3b2c1\n", 500) +
                                        typed("hello\n", 1500) + typed("0415a3b2c1\n", 3500) +
                                        typed("12", 6000),
                                    "typed");
  ASSERT_TRUE(events) << events.error().message;
  FakeEnv env;
  std::atomic<std::size_t> delivered{0};
  std::atomic<int> opens{0};
  EvdevBadgeReader reader(
      "/dev/input/by-id/usb-Reader-event-kbd", *a, env, m_log, "driver mcu/laser",
      [&](const std::filesystem::path& path, bool grab) -> Result<std::unique_ptr<KeyEventSource>> {
        EXPECT_EQ(path, "/dev/input/by-id/usb-Reader-event-kbd");
        EXPECT_TRUE(grab);  // the number must reach no console
        ++opens;
        return std::make_unique<ReplayKeySource>(*events, env, false, &delivered);
      });
  reader.start();
  ASSERT_TRUE(env.wait_for_sleepers(1));
  const auto at = [&](std::int64_t ms) {
    ASSERT_TRUE(env.wait_for_sleepers(1));
    env.advance_ms(ms);
  };
  at(200);
  ASSERT_TRUE(wait_until([&] { return a->known_badges() == 1; }));
  at(400);  // 0.6 s: the repeat while the card is held
  ASSERT_TRUE(wait_until([&] { return reader.status().find("cards 2") != std::string::npos; }));
  at(1000);  // 1.6 s: "hello"
  ASSERT_TRUE(wait_until([&] { return reader.bad_frames() == 1; }));
  at(2000);  // 3.6 s: ada again, 3 s after the last typing of her card
  ASSERT_TRUE(wait_until([&] { return a->known_badges() == 2; }));
  at(2500);  // 6.1 s: "12" and no Enter
  ASSERT_TRUE(wait_until([&] { return delivered == events->size(); }));
  at(300);  // longer than a gap between keys
  ASSERT_TRUE(wait_until([&] { return reader.bad_frames() == 2; }));
  reader.stop();
  EXPECT_EQ(opens.load(), 1);
  EXPECT_EQ(a->known_badges(), 2U);
  EXPECT_EQ(a->unknown_badges(), 0U);
  EXPECT_EQ(a->for_session(k_t0 + 3'600 + 60'000)->handle, "ada");
  EXPECT_NE(reader.status().find("reader stopped, cards 3, bad codes 2"), std::string::npos)
      << reader.status();
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(log.find("0415a3b2c1"), std::string::npos) << log;
  EXPECT_EQ(log.find("hello"), std::string::npos) << log;
}

TEST_F(BadgeTest, KeyboardReaderNeedsItsInputDevice) {
  EXPECT_NE(error_of("[driver.badge]\nsource = \"evdev\"\n").find("driver.laser.badge.device"),
            std::string::npos);
  auto c = config("[driver.badge]\nsource = \"evdev\"\ndevice = \"/dev/input/event3\"\n");
  ASSERT_TRUE(c) << c.error().message;
  auto b = parse_badge_config(c->drivers.at(0), {"mcu", "serial", "evdev"});
  ASSERT_TRUE(b && *b) << (b ? "absent" : b.error().message);
  EXPECT_EQ((*b)->source, BadgeConfig::Source::evdev);
  EXPECT_EQ((*b)->device, "/dev/input/event3");
  // A kind without keyboard readers names the sources it has.
  auto power_like = parse_badge_config(c->drivers.at(0), {"mcu", "serial"});
  ASSERT_FALSE(power_like);
  EXPECT_NE(power_like.error().message.find("evdev"), std::string::npos)
      << power_like.error().message;
}

}  // namespace
