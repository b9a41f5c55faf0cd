// SPDX-License-Identifier: AGPL-3.0-or-later
// The power driver end to end: a real Mosquitto, recorded plug payloads published with a Paho
// client as the plug would, the driver's MQTT subscription, its thread and its state file, events
// into a capturing sink. Message times come from a FakeEnv that the test advances between
// publishes, after the driver has seen each message (its health counts them).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <regex>
#include <thread>

#include <mqtt/async_client.h>

#include <reflow/core/env.hpp>
#include <reflow/device/driver.hpp>

#include "capturing_sink.hpp"
#include "mosquitto.hpp"
#include "power_cases.hpp"
#include "temp_dir.hpp"

namespace agent::power {
namespace {

using namespace std::chrono_literals;
using reflow_test::CapturingSink;
using testing::GoldenCase;
using testing::k_case_start_ms;
using testing::load_case;

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds bound = 30s) {
  const auto until = std::chrono::steady_clock::now() + bound;
  while (std::chrono::steady_clock::now() < until) {
    if (condition()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return condition();
}

// Publishes as the plug does.
class PlugPublisher {
 public:
  explicit PlugPublisher(int port)
      : m_client("tcp://127.0.0.1:" + std::to_string(port), "plug-under-test",
                 static_cast<mqtt::iclient_persistence*>(nullptr)) {
    mqtt::connect_options options;
    options.set_clean_session(true);
    m_client.connect(options)->wait();
  }
  ~PlugPublisher() {
    try {
      m_client.disconnect()->wait_for(2s);
    } catch (const std::exception&) {
    }
  }
  void publish(const std::string& topic, const std::string& payload, bool retained) {
    m_client.publish(mqtt::make_message(topic, payload, 1, retained))->wait();
  }

 private:
  mqtt::async_client m_client;
};

// Messages the driver has received, from its status line "… (N messages)".
std::uint64_t messages_seen(const Driver& driver) {
  static const std::regex k_count(R"(\((\d+) messages\)$)");
  const std::string state = driver.health().state;
  std::smatch match;
  if (!std::regex_search(state, match, k_count)) return 0;
  return std::stoull(match[1].str());
}

const DriverKind& power_kind() {
  for (const DriverKind* kind : builtin_driver_kinds())
    if (kind->kind() == "power") return *kind;
  throw std::logic_error("the power driver is not built");
}

class PowerDriverTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    m_broker.start();
    m_plug = std::make_unique<PlugPublisher>(m_broker.port());
  }

  GoldenCase load(const std::string& name) {
    return load_case(name, fmt::format("url = \"{}\"\n", m_broker.url()));
  }

  std::unique_ptr<Driver> start(const GoldenCase& golden, EventSink& sink) {
    auto driver = power_kind().create(golden.driver, m_env, m_log);
    EXPECT_TRUE(driver) << driver.error().message;
    if (!driver) return nullptr;
    Status started = (*driver)->start(sink, m_dir.path());
    EXPECT_TRUE(started) << started.error().message;
    return started ? std::move(*driver) : nullptr;
  }

  // Publishes messages [from, to) at their recorded times; returns once the driver has seen
  // each. The first one published must be retained (as an LWT / `online` is): it reaches the
  // driver whether its subscription is already made or made afterwards.
  void replay(Driver& driver, const GoldenCase& golden, std::size_t from, std::size_t to) {
    for (std::size_t i = from; i < to; ++i) {
      const testing::CaseMessage& message = golden.messages[i];
      const std::int64_t at = k_case_start_ms + message.at_ms;
      if (at > m_env.now_unix_ms()) m_env.advance_ms(at - m_env.now_unix_ms());
      if (!message.topic) continue;
      const std::uint64_t before = messages_seen(driver);
      m_plug->publish(*message.topic, message.payload, message.retained);
      // What the plug publishes on topics the driver does not subscribe never reaches it.
      const auto topics = plug_topics(golden.config.plug);
      if (std::find(topics.begin(), topics.end(), *message.topic) == topics.end()) continue;
      ASSERT_TRUE(eventually([&] { return messages_seen(driver) > before; }))
          << "the driver did not receive message " << i << " on " << *message.topic
          << "; status: " << driver.health().state;
    }
  }

  reflow_test::TempDir m_dir;
  reflow_test::MosquittoProcess m_broker{m_dir.path()};
  std::unique_ptr<PlugPublisher> m_plug;
  FakeEnv m_env;
  Logger m_log{LogLevel::error};
};

TEST_P(PowerDriverTest, RecordedPayloadsThroughTheBrokerGiveTheExpectedEvents) {
  const GoldenCase golden = load(GetParam());
  ASSERT_TRUE(golden.messages.front().retained);
  CapturingSink sink;
  auto driver = start(golden, sink);
  ASSERT_TRUE(driver);
  replay(*driver, golden, 0, golden.messages.size());
  sink.wait_for(golden.expected.size());
  // The sink answers right after it recorded an event: the driver counts it then.
  EXPECT_TRUE(eventually([&] { return driver->health().events >= golden.expected.size(); }));
  const DriverHealth health = driver->health();
  driver->stop();
  testing::expect_events(sink.fields(), golden.expected);
  for (const CapturingSink::Event& event : sink.events()) {
    EXPECT_EQ(event.source.driver, "power");
    EXPECT_EQ(event.source.instance, golden.config.name);
    EXPECT_TRUE(event.source.ref.starts_with("session ")) << event.source.ref;
  }
  EXPECT_EQ(health.events, golden.expected.size());
  EXPECT_EQ(health.malformed, std::string(GetParam()) == "garbage_skipped" ? 6u : 0u);
  EXPECT_NE(health.state.find("connected; plug "), std::string::npos) << health.state;
}

INSTANTIATE_TEST_SUITE_P(Cases, PowerDriverTest,
                         ::testing::Values("shelly_gen1_session", "shelly_gen2_session",
                                           "tasmota_session", "lwt_offline", "garbage_skipped"),
                         [](const auto& info) { return std::string(info.param); });

class PowerDriverRestartTest : public PowerDriverTest {};

TEST_F(PowerDriverRestartTest, RestartMidSessionRecordsTheSessionOnceFromItsFirstStart) {
  const GoldenCase golden = load("lwt_offline");
  const std::size_t split = 4;  // after the 120 s reading: the session runs since 60 s
  CapturingSink first_sink;
  {
    auto driver = start(golden, first_sink);
    ASSERT_TRUE(driver);
    replay(*driver, golden, 0, split);
    EXPECT_NE(driver->health().state.find("running since 2026-01-01T00:01:00.000Z"),
              std::string::npos)
        << driver->health().state;
    driver->stop();
  }
  CapturingSink sink;
  auto driver = start(golden, sink);
  ASSERT_TRUE(driver);
  EXPECT_NE(driver->health().state.find("running since 2026-01-01T00:01:00.000Z"),
            std::string::npos)
      << driver->health().state;
  // The retained LWT reaches the new subscription: from then on it receives what is published.
  ASSERT_TRUE(eventually([&] { return messages_seen(*driver) >= 1; }));
  replay(*driver, golden, split, golden.messages.size());
  sink.wait_for(golden.expected.size());
  driver->stop();
  EXPECT_TRUE(first_sink.events().empty());
  testing::expect_events(sink.fields(), golden.expected);
}

TEST_F(PowerDriverRestartTest, EventsNotCommittedBeforeStopAreSubmittedOnceAfterRestart) {
  const GoldenCase golden = load("tasmota_session");
  ASSERT_EQ(golden.expected.size(), 2u);
  {
    CapturingSink holding(/*hold_answers=*/true);
    auto driver = start(golden, holding);
    ASSERT_TRUE(driver);
    replay(*driver, golden, 0, golden.messages.size());
    ASSERT_EQ(holding.wait_for(2).size(), 2u);
    driver->stop();  // the agent stops before the commit: nothing was recorded
  }
  {
    CapturingSink sink;
    auto driver = start(golden, sink);
    ASSERT_TRUE(driver);
    sink.wait_for(2);
    driver->stop();
    testing::expect_events(sink.fields(), golden.expected);
  }
  CapturingSink sink;
  auto driver = start(golden, sink);
  ASSERT_TRUE(driver);
  // What remains to record comes from the state file, read by start().
  EXPECT_NE(driver->health().state.find("; 0 to record"), std::string::npos)
      << driver->health().state;
  driver->stop();
  EXPECT_TRUE(sink.events().empty());
}

TEST_F(PowerDriverRestartTest, CorruptStateFileRefusesToStart) {
  const GoldenCase golden = load("tasmota_session");
  {
    std::ofstream out(m_dir / "state.json");
    out << R"({"version":1,"session":{"phase":"running"}})";
  }
  auto driver = power_kind().create(golden.driver, m_env, m_log);
  ASSERT_TRUE(driver);
  CapturingSink sink;
  Status started = (*driver)->start(sink, m_dir.path());
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, ErrorCode::corruption);
  EXPECT_NE(started.error().message.find("state.json"), std::string::npos)
      << started.error().message;
}

}  // namespace
}  // namespace agent::power
