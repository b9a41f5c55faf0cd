// SPDX-License-Identifier: AGPL-3.0-or-later
// agent::MqttSubscriber against a real Mosquitto on loopback, with a Paho client publishing.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <mqtt/async_client.h>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/drivers/mqtt_subscriber.hpp>

#include "mosquitto.hpp"
#include "temp_dir.hpp"

namespace agent {
namespace {

constexpr auto k_bound = std::chrono::seconds(20);

// What the subscriber's callbacks saw, for the test thread to wait on.
class Received {
 public:
  void message(const MqttMessage& m) {
    std::lock_guard lock(m_mutex);
    m_messages.push_back(m);
    m_cv.notify_all();
  }
  void connection(bool up) {
    std::lock_guard lock(m_mutex);
    m_connections.push_back(up);
    m_cv.notify_all();
  }
  bool wait(const std::function<bool()>& done) {
    std::unique_lock lock(m_mutex);
    return m_cv.wait_for(lock, k_bound, done);
  }
  bool wait_messages(std::size_t n) {
    return wait([&] { return m_messages.size() >= n; });
  }
  // Waits for the `n`th connection report and says whether it is `up`.
  // The report is read under the lock: the subscriber's thread may be appending the next one.
  bool wait_connection(std::size_t n, bool up) {
    std::unique_lock lock(m_mutex);
    return m_cv.wait_for(lock, k_bound, [&] { return m_connections.size() >= n; }) &&
           m_connections[n - 1] == up;
  }
  std::vector<MqttMessage> messages() {
    std::lock_guard lock(m_mutex);
    return m_messages;
  }
  std::vector<bool> connections() {
    std::lock_guard lock(m_mutex);
    return m_connections;
  }

 private:
  std::mutex m_mutex;
  std::condition_variable m_cv;
  std::vector<MqttMessage> m_messages;
  std::vector<bool> m_connections;
};

class MqttSubscriberTest : public ::testing::Test {
 protected:
  void SetUp() override { m_broker.start(); }

  MqttSubscriberOptions options(const std::string& client_id) {
    MqttSubscriberOptions o;
    o.url = m_broker.url();
    o.client_id = client_id;
    o.reconnect_min = std::chrono::milliseconds(20);
    o.reconnect_max = std::chrono::milliseconds(200);
    o.topics = {"shellies/plug-1/#", "tele/plug-2/SENSOR"};
    return o;
  }

  Status start(MqttSubscriber& subscriber, Received& received) {
    return subscriber.start([&received](const MqttMessage& m) { received.message(m); },
                            [&received](bool up, const std::string&) { received.connection(up); });
  }

  // A Paho client standing in for the smart plugs.
  std::unique_ptr<mqtt::async_client> publisher() {
    auto client = std::make_unique<mqtt::async_client>(
        "tcp://127.0.0.1:" + std::to_string(m_broker.port()), "test-publisher",
        static_cast<mqtt::iclient_persistence*>(nullptr));
    client->connect()->wait();
    return client;
  }

  reflow_test::TempDir m_dir;
  reflow_test::MosquittoProcess m_broker{m_dir.path()};
  Logger m_log{LogLevel::error};
};

TEST_F(MqttSubscriberTest, DeliversMessagesInOrderWithTheRetainedFlag) {
  auto pub = publisher();
  pub->publish("shellies/plug-1/relay/0/power", "12.5", 1, true)->wait();

  MqttSubscriber subscriber(options("sub-order"), Env::real(), m_log);
  Received received;
  ASSERT_TRUE(start(subscriber, received));
  ASSERT_TRUE(received.wait_connection(1, true));
  ASSERT_TRUE(received.wait_messages(1));

  for (int i = 0; i < 50; ++i)
    pub->publish(i % 2 ? "tele/plug-2/SENSOR" : "shellies/plug-1/relay/0/energy", std::to_string(i),
                 1, false)
        ->wait();
  pub->publish("other/topic", "ignored", 1, false)->wait();
  ASSERT_TRUE(received.wait_messages(51));
  subscriber.stop();

  auto messages = received.messages();
  ASSERT_EQ(messages.size(), 51u);
  EXPECT_EQ(messages[0].topic, "shellies/plug-1/relay/0/power");
  EXPECT_EQ(messages[0].payload, "12.5");
  EXPECT_TRUE(messages[0].retained);
  for (int i = 0; i < 50; ++i) {
    const MqttMessage& m = messages[static_cast<std::size_t>(i) + 1];
    EXPECT_EQ(m.payload, std::to_string(i));
    EXPECT_EQ(m.topic, i % 2 ? "tele/plug-2/SENSOR" : "shellies/plug-1/relay/0/energy");
    EXPECT_FALSE(m.retained);
  }
  pub->disconnect()->wait();
}

TEST_F(MqttSubscriberTest, ResubscribesAfterTheBrokerRestarts) {
  MqttSubscriber subscriber(options("sub-restart"), Env::real(), m_log);
  Received received;
  ASSERT_TRUE(start(subscriber, received));
  ASSERT_TRUE(received.wait_connection(1, true));

  m_broker.stop();
  ASSERT_TRUE(received.wait_connection(2, false));
  m_broker.start();
  ASSERT_TRUE(received.wait_connection(3, true));

  auto pub = publisher();
  pub->publish("tele/plug-2/SENSOR", "after restart", 1, false)->wait();
  ASSERT_TRUE(received.wait_messages(1));
  EXPECT_EQ(received.messages().at(0).payload, "after restart");
  EXPECT_EQ(received.connections(), (std::vector<bool>{true, false, true}));
  subscriber.stop();
  pub->disconnect()->wait();
}

TEST_F(MqttSubscriberTest, NoCallbackRunsAfterStopReturns) {
  MqttSubscriber subscriber(options("sub-stop"), Env::real(), m_log);
  std::atomic<bool> stopped{false};
  std::atomic<int> late{0};
  Received received;
  ASSERT_TRUE(subscriber.start(
      [&](const MqttMessage& m) {
        if (stopped) ++late;
        received.message(m);
      },
      [&](bool up, const std::string&) {
        if (stopped) ++late;
        received.connection(up);
      }));
  ASSERT_TRUE(received.wait_connection(1, true));

  // A second subscriber proves the broker delivered what the stopped one must not see.
  MqttSubscriber witness(options("sub-witness"), Env::real(), m_log);
  Received witnessed;
  ASSERT_TRUE(start(witness, witnessed));
  ASSERT_TRUE(witnessed.wait_connection(1, true));

  auto pub = publisher();
  pub->publish("tele/plug-2/SENSOR", "before", 1, false)->wait();
  ASSERT_TRUE(received.wait_messages(1));
  subscriber.stop();
  stopped = true;
  subscriber.stop();  // idempotent
  pub->publish("tele/plug-2/SENSOR", "after", 1, false)->wait();
  ASSERT_TRUE(witnessed.wait_messages(2));
  witness.stop();
  EXPECT_EQ(late.load(), 0);
  EXPECT_EQ(received.messages().size(), 1u);
  pub->disconnect()->wait();
}

// Issue 15: the driver's connection report names the cause, not "MQTT error [-1]: Failure".
TEST_F(MqttSubscriberTest, AHostThatDoesNotResolveIsReportedAsDns) {
  auto o = options("sub-dns");
  o.url = "mqtt://no-such-plug-broker.invalid:1883";  // RFC 6761 §6.4: never resolves
  MqttSubscriber subscriber(o, Env::real(), m_log);
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::string> reasons;
  ASSERT_TRUE(subscriber.start([](const MqttMessage&) {},
                               [&](bool, const std::string& reason) {
                                 std::lock_guard lock(mutex);
                                 reasons.push_back(reason);
                                 changed.notify_all();
                               }));
  std::unique_lock lock(mutex);
  ASSERT_TRUE(changed.wait_for(lock, k_bound, [&] { return !reasons.empty(); }));
  EXPECT_EQ(reasons.front().rfind("DNS: cannot resolve the host name "
                                  "\"no-such-plug-broker.invalid\" (",
                                  0),
            0u)
      << reasons.front();
  lock.unlock();
  subscriber.stop();
}

TEST_F(MqttSubscriberTest, BadUrlOrMissingClientIdIsInvalidConfig) {
  auto bad_url = options("sub-bad");
  bad_url.url = "http://127.0.0.1:1883";
  MqttSubscriber a(bad_url, Env::real(), m_log);
  Received received;
  auto started = start(a, received);
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, ErrorCode::invalid_config);

  MqttSubscriber b(options(""), Env::real(), m_log);
  started = start(b, received);
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, ErrorCode::invalid_config);

  auto no_password = options("sub-password");
  no_password.username = "plug";
  no_password.password_file = m_dir / "missing-password";
  MqttSubscriber c(no_password, Env::real(), m_log);
  started = start(c, received);
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, ErrorCode::invalid_config);
}

}  // namespace
}  // namespace agent
