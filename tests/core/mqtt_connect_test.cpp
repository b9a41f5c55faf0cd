// SPDX-License-Identifier: AGPL-3.0-or-later
// agent::mqtt_connect's Paho helpers: the words of a refused connect (against a real Mosquitto on
// loopback that refuses anonymous clients), and the queue that brings Paho's callbacks onto a
// client's own thread.
#include <chrono>
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

}  // namespace
}  // namespace agent::mqtt_connect
