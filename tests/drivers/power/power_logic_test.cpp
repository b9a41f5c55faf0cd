// SPDX-License-Identifier: AGPL-3.0-or-later
// The power driver's pure logic: recorded plug payloads (drivers/power/testdata/<case>/) through
// the payload parsers and the session tracker, with message times from a FakeEnv.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <reflow/core/env.hpp>
#include <reflow/core/zenflows_rules.hpp>

#include "plug_payload.hpp"
#include "power_cases.hpp"
#include "session_tracker.hpp"

namespace agent::power {
namespace {

using testing::GoldenCase;
using testing::k_case_start_ms;
using testing::load_case;

struct Replay {
  std::vector<nlohmann::ordered_json> events;
  int malformed = 0;
};

// Feeds messages [from, to) of `golden` the way the driver does: the arrival time is the Env's.
void feed(const GoldenCase& golden, SessionTracker& tracker, FakeEnv& env, std::size_t from,
          std::size_t to, Replay& out) {
  for (std::size_t i = from; i < to; ++i) {
    const testing::CaseMessage& message = golden.messages[i];
    const std::int64_t at = k_case_start_ms + message.at_ms;
    if (at > env.now_unix_ms()) env.advance_ms(at - env.now_unix_ms());
    TrackerStep step;
    if (!message.topic) {
      step = tracker.on_time(env.now_unix_ms());
    } else {
      auto reading = parse_plug_message(golden.config.plug, *message.topic, message.payload);
      if (!reading) {
        ++out.malformed;
        continue;
      }
      step = tracker.on_reading(usable_reading(*reading, message.retained), env.now_unix_ms());
    }
    for (const PowerSession& session : step.closed) {
      SessionEvents events = session_events(golden.config, session);
      out.events.push_back(events.use);
      if (events.consume) out.events.push_back(*events.consume);
    }
  }
}

struct CaseSpec {
  const char* name;
  int malformed;
};

class PowerGoldenTest : public ::testing::TestWithParam<CaseSpec> {};

TEST_P(PowerGoldenTest, RecordedPayloadsGiveTheExpectedEvents) {
  const GoldenCase golden = load_case(GetParam().name);
  ASSERT_FALSE(golden.messages.empty());
  FakeEnv env;
  SessionTracker tracker(golden.config.session);
  Replay replay;
  feed(golden, tracker, env, 0, golden.messages.size(), replay);
  testing::expect_events(replay.events, golden.expected);
  EXPECT_EQ(replay.malformed, GetParam().malformed);
  EXPECT_FALSE(tracker.session_open()) << "every case ends with its sessions closed";
}

// A restart at any point where a session is open: the saved state, loaded again, gives the same
// events — the session is neither lost nor recorded twice.
TEST_P(PowerGoldenTest, RestartWithAnOpenSessionGivesTheSameEvents) {
  const GoldenCase golden = load_case(GetParam().name);
  int splits = 0;
  for (std::size_t split = 1; split < golden.messages.size(); ++split) {
    FakeEnv env;
    SessionTracker before(golden.config.session);
    Replay replay;
    feed(golden, before, env, 0, split, replay);
    if (!before.session_open()) continue;
    ++splits;
    // Through text, as the state file holds it.
    const auto saved = nlohmann::json::parse(before.to_json().dump());
    auto after = SessionTracker::from_json(golden.config.session, saved);
    ASSERT_TRUE(after) << after.error().message;
    feed(golden, *after, env, split, golden.messages.size(), replay);
    SCOPED_TRACE(fmt::format("restart after message {}", split));
    testing::expect_events(replay.events, golden.expected);
  }
  if (!golden.expected.empty()) {
    EXPECT_GT(splits, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, PowerGoldenTest,
    ::testing::Values(CaseSpec{"shelly_gen1_session", 0}, CaseSpec{"shelly_gen2_session", 0},
                      CaseSpec{"tasmota_session", 0}, CaseSpec{"bouncing_below_min_on", 0},
                      CaseSpec{"merged_short_gap", 0}, CaseSpec{"counter_reset", 0},
                      CaseSpec{"lwt_offline", 0}, CaseSpec{"garbage_skipped", 6}),
    [](const auto& info) { return std::string(info.param.name); });

class PlugPayloadTest : public ::testing::Test {
 protected:
  PlugAddress gen1{PlugProtocol::shelly_gen1, "shellies/shellyplug-s-C18B12", 0};
  PlugAddress gen2{PlugProtocol::shelly_gen2, "shellyplusplugs-a8032abe54dc", 0};
  PlugAddress tasmota{PlugProtocol::tasmota, "tasmota_5A1B2C", 1};
};

TEST_F(PlugPayloadTest, ShellyGen1EnergyIsWattMinutes) {
  auto r = parse_plug_message(gen1, "shellies/shellyplug-s-C18B12/relay/0/energy", "1200\n");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_DOUBLE_EQ(r->energy_wh.value(), 20.0);
  auto p = parse_plug_message(gen1, "shellies/shellyplug-s-C18B12/relay/0/power", "12.5");
  ASSERT_TRUE(p);
  EXPECT_DOUBLE_EQ(p->watts.value(), 12.5);
  EXPECT_FALSE(parse_plug_message(gen1, "shellies/shellyplug-s-C18B12/relay/0/power", "nan"));
  EXPECT_FALSE(parse_plug_message(gen1, "shellies/shellyplug-s-C18B12/relay/0/energy", "-3"));
  EXPECT_TRUE(parse_plug_message(gen1, "shellies/shellyplug-s-C18B12/relay/1/power", "x")->empty())
      << "another channel's topic is not this plug's";
}

// A refusal quotes the payload, cut and escaped: it ends up in the driver's last_error, which
// `status --json` serializes, so it must be valid UTF-8 whatever the plug sent.
TEST_F(PlugPayloadTest, ARefusalQuotesThePayloadAsValidUtf8) {
  for (const std::string& payload :
       {std::string(58, '1') + "€€€€",
        std::string("\xff\xfe garbage \xe2\x82") + std::string(80, 'x')}) {
    auto r = parse_plug_message(gen1, "shellies/shellyplug-s-C18B12/relay/0/power", payload);
    ASSERT_FALSE(r);
    EXPECT_NO_THROW((void)nlohmann::json(r.error().message).dump()) << r.error().message;
  }
}

TEST_F(PlugPayloadTest, ShellyGen2NotifyEventAndOtherComponentsCarryNothing) {
  auto event = parse_plug_message(
      gen2, "shellyplusplugs-a8032abe54dc/events/rpc",
      R"({"method":"NotifyEvent","params":{"ts":1,"events":[{"component":"input:0"}]}})");
  ASSERT_TRUE(event);
  EXPECT_TRUE(event->empty());
  auto other = parse_plug_message(gen2, "shellyplusplugs-a8032abe54dc/events/rpc",
                                  R"({"method":"NotifyStatus","params":{"ts":1,"sys":{}}})");
  ASSERT_TRUE(other);
  EXPECT_TRUE(other->empty());
  auto off =
      parse_plug_message(gen2, "shellyplusplugs-a8032abe54dc/events/rpc",
                         R"({"method":"NotifyStatus","params":{"switch:0":{"output":false}}})");
  ASSERT_TRUE(off);
  EXPECT_EQ(off->watts, 0.0);
}

TEST_F(PlugPayloadTest, TasmotaTotalIsKilowattHoursAndMultiChannelPowerIsIndexed) {
  auto r = parse_plug_message(
      tasmota, "tele/tasmota_5A1B2C/SENSOR",
      R"({"Time":"2026-01-01T00:00:00","ENERGY":{"TotalStartTime":"2025-11-14T18:39:40","Total":6.294,"Power":[12,2635]}})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_DOUBLE_EQ(r->watts.value(), 2635);
  EXPECT_DOUBLE_EQ(r->energy_wh.value(), 6294);
  EXPECT_EQ(r->counter_epoch, "2025-11-14T18:39:40");
  auto no_energy = parse_plug_message(tasmota, "tele/tasmota_5A1B2C/SENSOR",
                                      R"({"Time":"2026-01-01T00:00:00","AM2301":{}})");
  ASSERT_FALSE(no_energy);
  EXPECT_NE(no_energy.error().message.find("ENERGY"), std::string::npos);
}

TEST_F(PlugPayloadTest, RetainedMessagesGiveOnlyAvailability) {
  PlugReading reading;
  reading.watts = 500;
  reading.energy_wh = 10;
  reading.online = true;
  const PlugReading usable = usable_reading(reading, /*retained=*/true);
  EXPECT_FALSE(usable.watts);
  EXPECT_FALSE(usable.energy_wh);
  EXPECT_EQ(usable.online, true);
}

TEST(SessionTrackerTest, TasmotaCounterEpochChangeIsAResetEvenWhenTheValueRises) {
  SessionTracker tracker(SessionSettings{100, 20, 0, 0});
  auto reading = [](double watts, double wh, const char* epoch) {
    PlugReading r;
    r.watts = watts;
    r.energy_wh = wh;
    r.counter_epoch = epoch;
    return r;
  };
  tracker.on_reading(reading(500, 1000, "a"), 0);
  tracker.on_reading(reading(500, 1100, "a"), 60'000);   // +100
  tracker.on_reading(reading(500, 1500, "b"), 120'000);  // reset to 0, then +1500
  auto step = tracker.on_reading(reading(0, 1500, "b"), 180'000);
  ASSERT_EQ(step.closed.size(), 1u);
  EXPECT_DOUBLE_EQ(step.closed[0].energy_wh.value(), 1600);
  EXPECT_EQ(step.closed[0].counter_resets, 1);
}

TEST(SessionTrackerTest, SessionWithoutCounterHasNoEnergyAndNoConsume) {
  SessionTracker tracker(SessionSettings{100, 20, 0, 0});
  PlugReading on, off;
  on.watts = 500;
  off.watts = 0;
  tracker.on_reading(on, 1'000);
  auto step = tracker.on_reading(off, 61'000);
  ASSERT_EQ(step.closed.size(), 1u);
  EXPECT_FALSE(step.closed[0].energy_wh);
  PowerConfig config;
  config.name = "p";
  config.resource = "machine:a";
  config.electricity = "electricity:grid";
  const SessionEvents events = session_events(config, step.closed[0]);
  EXPECT_FALSE(events.consume);
  EXPECT_FALSE(events.use["meta"].contains("energy_kwh"));
  EXPECT_TRUE(validate_submission(events.use));
}

TEST(SessionTrackerTest, CorruptStateIsRefusedNotGuessed) {
  auto bad = SessionTracker::from_json(SessionSettings{}, nlohmann::json{{"phase", "running"}});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::corruption);
  EXPECT_FALSE(SessionTracker::from_json(SessionSettings{}, nlohmann::json{{"phase", "dancing"}}));
}

class PowerConfigTest : public ::testing::Test {
 protected:
  Result<PowerConfig> read(const std::string& keys) {
    auto driver = testing::driver_config("[[driver]]\nkind = \"power\"\nname = \"p1\"\n" + keys);
    EXPECT_TRUE(driver) << driver.error().message;
    return read_power_config(*driver);
  }
  const std::string k_minimal =
      "protocol = \"tasmota\"\ntopic = \"tasmota_5A1B2C\"\nresource = \"machine:a\"\n";
};

TEST_F(PowerConfigTest, DefaultsAndMinimalKeys) {
  auto config = read(k_minimal);
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->plug.protocol, PlugProtocol::tasmota);
  EXPECT_EQ(config->url, "mqtt://127.0.0.1:1883");
  EXPECT_EQ(config->client_id, "reflow-power-p1");
  EXPECT_EQ(config->electricity, "");
  EXPECT_EQ(config->session.min_on_ms, 60'000);
  EXPECT_EQ(config->session.merge_gap_ms, 300'000);
}

TEST_F(PowerConfigTest, OffWattsNotBelowOnWattsIsRefused) {
  auto config = read(k_minimal + "on_watts = 10\noff_watts = 10\n");
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error().code, ErrorCode::invalid_config);
  EXPECT_NE(config.error().message.find("driver.p1.off_watts"), std::string::npos)
      << config.error().message;
}

TEST_F(PowerConfigTest, MissingOrUnknownProtocolIsRefusedByName) {
  auto missing = read("topic = \"x\"\nresource = \"machine:a\"\n");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("driver.p1.protocol: required"), std::string::npos)
      << missing.error().message;
  auto unknown = read("protocol = \"zigbee\"\ntopic = \"x\"\nresource = \"machine:a\"\n");
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("shelly-gen1, shelly-gen2 or tasmota"), std::string::npos)
      << unknown.error().message;
  auto wildcard = read("protocol = \"tasmota\"\ntopic = \"tele/#\"\nresource = \"machine:a\"\n");
  ASSERT_FALSE(wildcard);
}

}  // namespace
// Badges (issue 17): a power driver takes an RDM6300 badge table; a session decided to be a
// member's carries the member on `use` and `consume`, and keeps it across a restart.
TEST_F(PowerConfigTest, BadgeTableIsASerialReaderAndNeedsMembers) {
  auto no_members =
      read(k_minimal + "[driver.badge]\nsource = \"serial\"\ndevice = \"/dev/ttyUSB0\"\n");
  ASSERT_FALSE(no_members);
  EXPECT_NE(no_members.error().message.find("driver.p1.badge.source: needs [members]"),
            std::string::npos)
      << no_members.error().message;
  auto driver = testing::driver_config(
      "[members]\nfile = \"/etc/m.toml\"\nprovider = \"org:fablab\"\n[[driver]]\nkind = "
      "\"power\"\nname = \"p1\"\n" +
      k_minimal + "[driver.badge]\nsource = \"serial\"\ndevice = \"/dev/ttyUSB0\"\n");
  ASSERT_TRUE(driver) << driver.error().message;
  auto config = read_power_config(*driver);
  ASSERT_TRUE(config) << config.error().message;
  ASSERT_TRUE(config->badge);
  EXPECT_EQ(config->badge->device, "/dev/ttyUSB0");
  EXPECT_EQ(config->badge->provider, "org:fablab");
  // The plug driver owns no board: "mcu" is not a source here.
  driver = testing::driver_config(
      "[members]\nfile = \"/etc/m.toml\"\nprovider = \"org:fablab\"\n[[driver]]\nkind = "
      "\"power\"\nname = \"p1\"\n" +
      k_minimal + "[driver.badge]\nsource = \"mcu\"\n");
  ASSERT_TRUE(driver);
  auto mcu = read_power_config(*driver);
  ASSERT_FALSE(mcu);
  EXPECT_NE(mcu.error().message.find("driver.p1.badge.source: expected one of \"serial\""),
            std::string::npos)
      << mcu.error().message;
}

TEST_F(PowerConfigTest, MembersSessionCarriesTheMemberAndKeepsItAcrossRestart) {
  auto config = read(k_minimal + "electricity = \"electricity:workshop\"\n");
  ASSERT_TRUE(config) << config.error().message;
  PowerSession session;
  session.start_ms = 1'767'225'600'000;
  session.end_ms = session.start_ms + 3'600'000;
  session.energy_wh = 500;
  PendingSession pending;
  pending.session = session;
  pending.who = Attribution{"ada", "person:ada", "org:fablab"};
  auto restored = pending_from_json(to_json(pending));
  ASSERT_TRUE(restored) << restored.error().message;
  ASSERT_TRUE(restored->who);
  EXPECT_EQ(restored->who->receiver, "person:ada");
  const SessionEvents events = session_events(*config, restored->session, restored->who);
  EXPECT_EQ(events.use["provider"], "org:fablab");
  EXPECT_EQ(events.use["receiver"], "person:ada");
  ASSERT_TRUE(events.consume);
  EXPECT_EQ((*events.consume)["receiver"], "person:ada");
  EXPECT_TRUE(vf::check_zenflows_rules(events.use));
  EXPECT_TRUE(vf::check_zenflows_rules(*events.consume));
  // Without a member: neither.
  const SessionEvents nobody = session_events(*config, session);
  EXPECT_FALSE(nobody.use.contains("receiver"));
  EXPECT_FALSE(nobody.consume->contains("receiver"));
  PendingSession plain;
  plain.session = session;
  EXPECT_FALSE(pending_from_json(to_json(plain))->who);
}

}  // namespace agent::power
