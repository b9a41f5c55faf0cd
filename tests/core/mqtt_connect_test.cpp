// SPDX-License-Identifier: AGPL-3.0-or-later
// agent::mqtt_connect's Paho helpers: the words of a refused connect (against a real Mosquitto on
// loopback that refuses anonymous clients), and the queue that brings Paho's callbacks onto a
// client's own thread, and the wait for a connect's answer on that thread.
#include <chrono>
#include <cstdint>
#include <deque>
#include <stop_token>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mqtt/async_client.h>

#include <reflow/core/mqtt_connect.hpp>

#include "mosquitto.hpp"
#include "temp_dir.hpp"

namespace agent::mqtt_connect {
namespace {

constexpr auto k_bound = std::chrono::seconds(20);

// Connects once with `version` to a broker that refuses anonymous clients; returns what
// paho_error() says of the refusal, or "" when the connect succeeded or nothing came within the
// bound.
std::string refusal_of_anonymous_connect(int version) {
  reflow_test::TempDir dir;
  reflow_test::MosquittoProcess broker(dir.path());
  broker.add_config("allow_anonymous false");
  broker.start();
  EventQueue<std::string> answers;
  Listener listener([&](const mqtt::token&) { answers.post(""); },
                    [&](const mqtt::token& token) { answers.post(paho_error(token)); });
  mqtt::async_client client(fmt::format("tcp://127.0.0.1:{}", broker.port()), "refused-client",
                            mqtt::create_options(version));
  mqtt::connect_options options;
  options.set_mqtt_version(version);
  if (version == MQTTVERSION_5)
    options.set_clean_start(true);
  else
    options.set_clean_session(true);
  options.set_automatic_reconnect(false);
  client.connect(options, nullptr, listener);
  const auto got = answers.wait(std::stop_token{}, k_bound);
  return got.empty() ? std::string("(no answer)") : got.front();
}

TEST(PahoErrorTest, RefusedMqtt5ConnectNamesTheReasonCodeAndItsMeaning) {
  const auto text = refusal_of_anonymous_connect(MQTTVERSION_5);
  EXPECT_NE(text.find("MQTT 5 reason code 0x87 (Not authorized)"), std::string::npos) << text;
  EXPECT_EQ(text.find("Unknown error code"), std::string::npos) << text;
}

TEST(PahoErrorTest, RefusedMqtt311ConnectSaysWhy) {
  const auto text = refusal_of_anonymous_connect(MQTTVERSION_3_1_1);
  EXPECT_NE(text.find("the broker refused the connection"), std::string::npos) << text;
}

TEST(PahoErrorTest, ReasonCodeTextNamesTheCode) {
  EXPECT_EQ(reason_code_text(0x87), "0x87 (Not authorized)");
  EXPECT_EQ(reason_code_text(0x86), "0x86 (Bad User Name or Password)");
}

TEST(EventQueueTest, WaitReturnsEverythingQueuedInOrder) {
  EventQueue<int> queue;
  queue.post(1);
  queue.post(2);
  const auto got = queue.wait(std::stop_token{}, std::chrono::seconds(0));
  EXPECT_EQ(got, (std::deque<int>{1, 2}));
  EXPECT_TRUE(queue.wait(std::stop_token{}, std::chrono::seconds(0)).empty());
}

TEST(EventQueueTest, WakeEndsAWaitWithNothing) {
  EventQueue<int> queue;
  queue.wake();
  // Without the wake this would wait for the whole bound.
  EXPECT_TRUE(queue.wait(std::stop_token{}, k_bound).empty());
  queue.post(3);
  EXPECT_EQ(queue.wait(std::stop_token{}, k_bound), (std::deque<int>{3}));
}

TEST(EventQueueTest, RequeuePutsTheRestAheadOfNewerEvents) {
  EventQueue<int> queue;
  queue.post(1);
  queue.post(2);
  queue.post(3);
  auto got = queue.wait(std::stop_token{}, std::chrono::seconds(0));
  queue.post(4);
  queue.requeue(got, 1);
  EXPECT_EQ(queue.wait(std::stop_token{}, std::chrono::seconds(0)), (std::deque<int>{2, 3, 4}));
}

TEST(EventQueueTest, NextTakesOneAndStopsOnRequest) {
  EventQueue<int> queue;
  queue.post(5);
  queue.post(6);
  std::stop_source stop;
  EXPECT_EQ(queue.next(stop.get_token()), 5);
  queue.clear();
  stop.request_stop();
  EXPECT_EQ(queue.next(stop.get_token()), std::nullopt);
}

// What await_connect() takes: an event of a connect attempt as a client's listener posts it.
enum class TestKind { connect_ok, connect_failed, connection_lost, other };
struct TestEvent {
  TestKind kind;
  std::uint64_t generation = 0;
  std::string text;
};

// A clock the waits move: each wait takes `step` of it, so that the give-up time comes without a
// sleep.
struct SteppingClock {
  std::chrono::steady_clock::time_point now{};
  std::chrono::milliseconds step{100};
};

ConnectOutcome await(EventQueue<TestEvent>& queue, SteppingClock& clock,
                     std::chrono::milliseconds give_up_after, const std::stop_token& stop = {}) {
  return await_connect(
      queue, 7, TestKind::connect_ok, TestKind::connect_failed, TestKind::connection_lost,
      clock.now + give_up_after, stop, [&] { return clock.now; },
      [&](std::chrono::steady_clock::duration) {
        auto events = queue.wait(stop, std::chrono::seconds(0));
        clock.now += clock.step;
        return events;
      });
}

TEST(AwaitConnectTest, SkipsOtherAttemptsAndLateLossesAndRequeuesWhatFollowsTheAnswer) {
  EventQueue<TestEvent> queue;
  SteppingClock clock;
  queue.post({TestKind::connect_failed, 6, "an older attempt"});
  queue.post({TestKind::connection_lost, 0, "the previous connection"});
  queue.post({TestKind::connect_ok, 7, {}});
  queue.post({TestKind::other, 7, "for the session"});
  const ConnectOutcome outcome = await(queue, clock, std::chrono::seconds(5));
  EXPECT_EQ(outcome.state, ConnectOutcome::State::connected);
  const auto rest = queue.wait(std::stop_token{}, std::chrono::seconds(0));
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest.front().text, "for the session");
}

TEST(AwaitConnectTest, AFailedAnswerCarriesItsText) {
  EventQueue<TestEvent> queue;
  SteppingClock clock;
  queue.post({TestKind::connect_failed, 7, "MQTT 5 reason code 0x87 (Not authorized)"});
  const ConnectOutcome outcome = await(queue, clock, std::chrono::seconds(5));
  EXPECT_EQ(outcome.state, ConnectOutcome::State::failed);
  EXPECT_EQ(outcome.failure, "MQTT 5 reason code 0x87 (Not authorized)");
}

TEST(AwaitConnectTest, NoAnswerByTheGiveUpTimeIsAFailureNamingTheTimeout) {
  EventQueue<TestEvent> queue;
  SteppingClock clock;
  const ConnectOutcome outcome = await(queue, clock, std::chrono::seconds(1));
  EXPECT_EQ(outcome.state, ConnectOutcome::State::failed);
  EXPECT_EQ(outcome.failure, "no answer within mqtt.connect_timeout");
  EXPECT_EQ(clock.now, std::chrono::steady_clock::time_point{} + std::chrono::seconds(1));
}

TEST(AwaitConnectTest, AStopRequestEndsTheWaitWithoutAFailure) {
  EventQueue<TestEvent> queue;
  SteppingClock clock;
  std::stop_source stop;
  stop.request_stop();
  const ConnectOutcome outcome = await(queue, clock, std::chrono::seconds(5), stop.get_token());
  EXPECT_EQ(outcome.state, ConnectOutcome::State::stopped);
  EXPECT_EQ(outcome.failure, "");
}

}  // namespace
}  // namespace agent::mqtt_connect
