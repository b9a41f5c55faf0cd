// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/forwarder.hpp>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/outbox.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mqtt/async_client.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fault_vfs.hpp"
#include "mosquitto.hpp"
#include "temp_dir.hpp"

namespace {

using namespace std::chrono_literals;

constexpr const char* k_forwarder_device = "dev-1";
constexpr const char* k_prefix = "reflow/v1/dev-1";

// Polls a condition with a generous bound; tests wait for what happens, never for time to pass.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds bound = 15s) {
  auto until = std::chrono::steady_clock::now() + bound;
  while (std::chrono::steady_clock::now() < until) {
    if (condition()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return condition();
}

struct Received {
  std::string topic;
  std::string payload;
  bool retained = false;
};

// A plain Paho client standing in for the node: watches the device's topics and publishes acks.
class TestClient {
 public:
  TestClient(int port, std::string id)
      : m_client("tcp://127.0.0.1:" + std::to_string(port), id,
                 static_cast<mqtt::iclient_persistence*>(nullptr)) {
    m_client.set_message_callback([this](mqtt::const_message_ptr message) {
      std::lock_guard lock(m_mutex);
      m_received.push_back({message->get_topic(), message->to_string(), message->is_retained()});
    });
    mqtt::connect_options options;
    options.set_clean_session(true);
    m_client.connect(options)->wait();
    m_client.subscribe(std::string(k_prefix) + "/#", 1)->wait();
  }
  ~TestClient() {
    try {
      m_client.disconnect()->wait_for(2s);
    } catch (const std::exception&) {
    }
  }

  void publish(const std::string& topic, const std::string& payload, bool retained) {
    m_client.publish(mqtt::make_message(topic, payload, 1, retained))->wait();
  }

  std::vector<Received> received() const {
    std::lock_guard lock(m_mutex);
    return m_received;
  }

  /// seq of each envelope seen on the events topic, in arrival order.
  std::vector<std::int64_t> event_seqs() const {
    std::vector<std::int64_t> seqs;
    for (const auto& r : received())
      if (r.topic == std::string(k_prefix) + "/events")
        seqs.push_back(nlohmann::json::parse(r.payload).at("seq").get<std::int64_t>());
    return seqs;
  }

  std::vector<Received> statuses() const {
    std::vector<Received> out;
    for (const auto& r : received())
      if (r.topic == std::string(k_prefix) + "/status") out.push_back(r);
    return out;
  }

 private:
  mqtt::async_client m_client;
  mutable std::mutex m_mutex;
  std::vector<Received> m_received;
};

class ForwarderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    m_broker.start();
    auto outbox =
        agent::Outbox::open({m_dir / "outbox.db", k_forwarder_device}, agent::Env::real(), m_log);
    ASSERT_TRUE(outbox.has_value()) << outbox.error().message;
    m_outbox = std::move(*outbox);
    m_config.device_id = k_forwarder_device;
    m_config.data_dir = m_dir.path();
    m_config.url = m_broker.url();
    m_config.connect_timeout = 2s;
    m_config.keepalive = 5s;
    m_config.reconnect_min = 20ms;
    m_config.reconnect_max = 100ms;
  }

  void TearDown() override {
    if (m_forwarder) m_forwarder->stop();
  }

  // The envelope only needs to be JSON for the test client: the forwarder never parses it.
  void append(int count) {
    auto head = m_outbox->head();
    std::vector<agent::OutboxEvent> events;
    for (int i = 0; i < count; ++i) {
      ++head.last_seq;
      agent::OutboxEvent event;
      event.seq = head.last_seq;
      event.id = "event-" + std::to_string(head.last_seq);
      event.recorded_unix_ms = agent::Env::real().now_unix_ms();
      event.envelope = nlohmann::json{{"seq", head.last_seq}, {"id", event.id}}.dump();
      events.push_back(std::move(event));
      head.last_hash = "hash-" + std::to_string(head.last_seq);
      head.recorded_floor_ms = events.back().recorded_unix_ms;
    }
    auto ok = m_outbox->append(events, head);
    ASSERT_TRUE(ok.has_value()) << ok.error().message;
  }

  agent::Forwarder& start_forwarder(agent::Env& env = agent::Env::real()) {
    m_forwarder = std::make_unique<agent::Forwarder>(m_config, *m_outbox, env, m_log, "1.2.3-test");
    auto ok = m_forwarder->start();
    EXPECT_TRUE(ok.has_value()) << ok.error().message;
    m_forwarder->notify_committed(m_outbox->head().last_seq);
    return *m_forwarder;
  }

  std::string ack(std::int64_t seq) {
    return nlohmann::json{{"stream", m_outbox->head().stream}, {"seq", seq}}.dump();
  }

  reflow_test::TempDir m_dir;
  reflow_test::MosquittoProcess m_broker{m_dir.path()};
  agent::Logger m_log{agent::LogLevel::warning};
  std::unique_ptr<agent::Outbox> m_outbox;
  agent::AgentConfig m_config;
  agent::FakeEnv m_fake_env;  // outlives the forwarder, which may run on it
  std::unique_ptr<agent::Forwarder> m_forwarder;
};

TEST_F(ForwarderTest, PublishesAllCommittedEventsInSeqOrder) {
  TestClient node(m_broker.port(), "node");
  append(5);
  auto& forwarder = start_forwarder();
  ASSERT_TRUE(eventually([&] { return node.event_seqs().size() >= 5; }));

  append(300);  // more than one outbox read batch
  forwarder.notify_committed(m_outbox->head().last_seq);
  ASSERT_TRUE(eventually([&] { return node.event_seqs().size() >= 305; }));

  std::vector<std::int64_t> expected;
  for (std::int64_t seq = 1; seq <= 305; ++seq)
    expected.push_back(seq);
  EXPECT_EQ(node.event_seqs(), expected);
  ASSERT_TRUE(eventually([&] { return forwarder.stats().published == 305; }));
  auto stats = forwarder.stats();
  EXPECT_TRUE(stats.connected);
  EXPECT_EQ(stats.next_seq, 306);
  EXPECT_EQ(stats.republished, 0u);
  EXPECT_EQ(stats.broker_url, m_broker.url());
}

TEST_F(ForwarderTest, AppliesRetainedAckAndPrunesOutbox) {
  append(5);
  TestClient node(m_broker.port(), "node");
  node.publish(std::string(k_prefix) + "/ack", ack(3), true);
  auto& forwarder = start_forwarder();

  ASSERT_TRUE(eventually([&] { return m_outbox->stats().acked_seq == 3; }));
  auto rest = m_outbox->read_from(1, 10);
  ASSERT_TRUE(rest.has_value());
  ASSERT_FALSE(rest->empty());
  EXPECT_EQ(rest->front().seq, 4);

  // A malformed ack is ignored; the next good one still applies.
  node.publish(std::string(k_prefix) + "/ack", "not json", false);
  node.publish(std::string(k_prefix) + "/ack", R"({"stream":"x"})", false);
  node.publish(std::string(k_prefix) + "/ack", ack(5), true);
  ASSERT_TRUE(eventually([&] { return m_outbox->stats().acked_seq == 5; }));
  EXPECT_EQ(m_outbox->stats().backlog_events, 0);
  // The counter moves just after the outbox does.
  EXPECT_TRUE(eventually([&] { return forwarder.stats().acks == 2; }));
}

TEST_F(ForwarderTest, RefusesRetainedAckBeyondLastSeqAndKeepsEverything) {
  append(5);
  TestClient node(m_broker.port(), "node");
  // A retained ack for events this outbox never committed (a confused or hostile node, or an ack
  // left from an outbox that was replaced with the same stream).
  node.publish(std::string(k_prefix) + "/ack", ack(1000), true);
  auto* forwarder = &start_forwarder();
  ASSERT_TRUE(eventually([&] { return forwarder->stats().refused_acks == 1; }));
  EXPECT_EQ(forwarder->stats().acks, 0u);
  EXPECT_EQ(m_outbox->stats().acked_seq, 0);
  EXPECT_EQ(m_outbox->stats().backlog_events, 5);
  ASSERT_EQ(m_outbox->read_from(1, 10)->size(), 5u);

  // After a restart the broker delivers the retained ack again: still refused, still nothing
  // pruned.
  m_forwarder->stop();
  forwarder = &start_forwarder();
  ASSERT_TRUE(eventually([&] { return forwarder->stats().refused_acks == 1; }));
  EXPECT_EQ(m_outbox->stats().backlog_events, 5);
  // All five are (re)published, and a valid ack then prunes as usual.
  ASSERT_TRUE(eventually([&] { return node.event_seqs().size() >= 10; }));
  node.publish(std::string(k_prefix) + "/ack", ack(3), true);
  ASSERT_TRUE(eventually([&] { return m_outbox->stats().acked_seq == 3; }));
  EXPECT_EQ(m_outbox->read_from(1, 10)->front().seq, 4);
  EXPECT_TRUE(eventually([&] { return forwarder->stats().acks == 1; }));
  EXPECT_EQ(forwarder->stats().refused_acks, 1u);
}

TEST_F(ForwarderTest, AnAckTheFullDiskCannotRecordStopsRepublishingAndIsRecordedLater) {
  // Reopened through the fault VFS, without a reserve: the disk is full to the last block.
  auto& faults = reflow_test::FaultVfs::install();
  m_outbox.reset();
  agent::OutboxOptions options;
  options.path = m_dir / "outbox.db";
  options.device_id = k_forwarder_device;
  options.reserve_bytes = 0;
  options.min_free_bytes = 0;
  auto reopened = agent::Outbox::open(options, agent::Env::real(), m_log);
  ASSERT_TRUE(reopened.has_value()) << reopened.error().message;
  m_outbox = std::move(*reopened);
  append(3);
  m_config.resend_after = 30s;
  TestClient node(m_broker.port(), "node");
  auto& forwarder = start_forwarder(m_fake_env);
  ASSERT_TRUE(eventually([&] { return node.event_seqs().size() == 3; }));

  faults.write_error = SQLITE_FULL;
  node.publish(std::string(k_prefix) + "/ack", ack(3), true);
  ASSERT_TRUE(eventually([&] {
    return forwarder.stats().last_error.find("cannot record the node's ack of seq 3") !=
           std::string::npos;
  }));
  // Past resend_after and status_interval: the status that follows shows the loop has run.
  const auto statuses = node.statuses().size();
  ASSERT_TRUE(eventually([&] {
    m_fake_env.advance_ms(61'000);
    return node.statuses().size() > statuses;
  }));
  EXPECT_EQ(node.event_seqs(), (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(m_outbox->stats().acked_seq, 0);

  // Space again: the ack is recorded without a new one from the node.
  faults.write_error = SQLITE_OK;
  ASSERT_TRUE(eventually([&] {
    m_fake_env.advance_ms(1'000);
    return m_outbox->stats().acked_seq == 3;
  }));
  EXPECT_EQ(m_outbox->stats().backlog_events, 0);
  EXPECT_TRUE(eventually([&] { return forwarder.stats().last_error.empty(); }));
}

TEST_F(ForwarderTest, RepublishesFromAckedPlusOneAfterBrokerRestart) {
  append(5);
  auto& forwarder = start_forwarder();
  ASSERT_TRUE(eventually([&] { return forwarder.stats().published == 5; }));
  {
    TestClient node(m_broker.port(), "node");
    node.publish(std::string(k_prefix) + "/ack", ack(2), true);
    ASSERT_TRUE(eventually([&] { return m_outbox->stats().acked_seq == 2; }));
  }

  m_broker.stop();
  ASSERT_TRUE(eventually([&] { return !forwarder.stats().connected; }));
  EXPECT_FALSE(forwarder.stats().last_error.empty());
  m_broker.start();

  // Seqs 1–2 are acked (and pruned), so exactly 3, 4 and 5 go out again.
  ASSERT_TRUE(eventually([&] { return forwarder.stats().published == 8; }));
  auto stats = forwarder.stats();
  EXPECT_TRUE(stats.connected);
  EXPECT_EQ(stats.connects, 2u);
  EXPECT_EQ(stats.republished, 3u);
  EXPECT_EQ(stats.next_seq, 6);
  // Issue 14 item 14: the fault has cleared, so status no longer shows it as the last error.
  EXPECT_EQ(stats.last_error, "");
}

// The node's subscription must not miss what the forwarder sends after its reconnect, or the
// order seen would say nothing about the order sent. The forwarder sleeps out its reconnect
// backoff on FakeEnv time, so it stays away until the new node is subscribed and the test lets
// it go.
TEST_F(ForwarderTest, RepublishesUnackedBeforeNewerEventsAfterReconnect) {
  agent::FakeEnv& env = m_fake_env;
  m_config.max_inflight = 4;  // most of the backlog waits in the outbox, not in Paho
  append(5);
  auto& forwarder = start_forwarder(env);
  {
    TestClient node(m_broker.port(), "node");
    node.publish(std::string(k_prefix) + "/ack", ack(2), true);
    ASSERT_TRUE(eventually([&] { return m_outbox->stats().acked_seq == 2; }));
  }
  ASSERT_TRUE(eventually([&] { return forwarder.stats().published == 5; }));
  append(20);  // 6..25: some in flight while the broker goes
  forwarder.notify_committed(m_outbox->head().last_seq);
  m_broker.stop();
  ASSERT_TRUE(eventually([&] { return !forwarder.stats().connected; }));
  ASSERT_TRUE(env.wait_for_sleepers(1));  // the forwarder waits out its reconnect backoff

  append(10);  // 26..35, committed while disconnected
  forwarder.notify_committed(m_outbox->head().last_seq);
  m_broker.start();
  TestClient node(m_broker.port(), "node-2");
  // The broker kept nothing; the node publishes its ack again on connecting, as nodes do.
  node.publish(std::string(k_prefix) + "/ack", ack(2), true);

  // More events are committed one by one while the forwarder reconnects (up to 200 before it is
  // back), then 20 more once it is.
  std::atomic<bool> connected_seen{false};
  std::thread committer([&] {
    auto commit_one = [&] {
      append(1);
      forwarder.notify_committed(m_outbox->head().last_seq);
    };
    for (int before = 0; before < 200 && !forwarder.stats().connected; ++before)
      commit_one();
    if (!eventually([&] { return forwarder.stats().connected; })) return;
    for (int after = 0; after < 20; ++after)
      commit_one();
    connected_seen = true;
  });
  env.advance_ms(m_config.reconnect_max.count());
  committer.join();
  ASSERT_TRUE(connected_seen) << "the forwarder did not reconnect";
  const std::int64_t last = m_outbox->head().last_seq;
  ASSERT_TRUE(eventually([&] {
    auto seqs = node.event_seqs();
    return !seqs.empty() && seqs.back() == last;
  }));

  // Exactly from ack+1, in seq order, nothing newer ahead of an older event.
  std::vector<std::int64_t> expected;
  for (std::int64_t seq = 3; seq <= last; ++seq)
    expected.push_back(seq);
  EXPECT_EQ(node.event_seqs(), expected);
  auto stats = forwarder.stats();
  EXPECT_EQ(stats.connects, 2u);
  EXPECT_EQ(stats.next_seq, last + 1);
}

TEST_F(ForwarderTest, RepublishesWhenNoAckComesWithinResendAfter) {
  m_config.resend_after = 1s;
  TestClient node(m_broker.port(), "node");
  append(2);
  auto& forwarder = start_forwarder();

  auto copies_of_seq1 = [&] {
    auto seqs = node.event_seqs();
    return std::count(seqs.begin(), seqs.end(), 1);
  };
  ASSERT_TRUE(eventually([&] { return copies_of_seq1() >= 2; }));
  auto seqs = node.event_seqs();
  ASSERT_GE(seqs.size(), 3u);
  // Each round goes out in seq order from acked+1.
  EXPECT_EQ(std::vector<std::int64_t>(seqs.begin(), seqs.begin() + 3),
            (std::vector<std::int64_t>{1, 2, 1}));
  ASSERT_TRUE(eventually([&] { return forwarder.stats().republished >= 1; }));

  // Once the node acks everything, nothing is outstanding and the republishing stops.
  node.publish(std::string(k_prefix) + "/ack", ack(2), true);
  ASSERT_TRUE(eventually([&] { return m_outbox->stats().acked_seq == 2; }));
  EXPECT_EQ(forwarder.stats().connects, 1u);
}

TEST_F(ForwarderTest, PublishesRetainedOnlineStatusOnConnectAndOfflineOnStop) {
  append(3);
  auto& forwarder = start_forwarder();
  ASSERT_TRUE(eventually([&] { return forwarder.stats().connected; }));

  TestClient observer(m_broker.port(), "observer");
  ASSERT_TRUE(eventually([&] { return !observer.statuses().empty(); }));
  auto online = observer.statuses().front();
  EXPECT_TRUE(online.retained);
  auto status = nlohmann::ordered_json::parse(online.payload);
  EXPECT_EQ(status.at("state"), "online");
  EXPECT_EQ(status.at("version"), "1.2.3-test");
  EXPECT_EQ(status.at("stream"), m_outbox->head().stream);
  EXPECT_EQ(status.at("seq"), 3);
  EXPECT_EQ(status.at("acked"), 0);
  EXPECT_EQ(status.at("backlog"), 3);
  EXPECT_TRUE(status.at("oldest_unacked_s").is_number_integer());
  EXPECT_TRUE(status.at("clock") == "synced" || status.at("clock") == "unsynced");
  std::vector<std::string> keys;
  for (auto& [key, value] : status.items())
    keys.push_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{"state", "version", "stream", "seq", "acked", "backlog",
                                            "oldest_unacked_s", "clock"}));

  forwarder.stop();
  EXPECT_FALSE(forwarder.stats().connected);
  TestClient late(m_broker.port(), "late");
  ASSERT_TRUE(eventually([&] { return !late.statuses().empty(); }));
  auto offline = late.statuses().front();
  EXPECT_TRUE(offline.retained);
  EXPECT_EQ(nlohmann::json::parse(offline.payload), nlohmann::json({{"state", "offline"}}));
}

// Closes, from inside this process, every TCP socket connected to `port`: the forwarder's
// connection dies without an MQTT DISCONNECT, as when a device loses power or network.
int cut_connections_to(int port) {
  int cut = 0;
  for (int fd = 0; fd < 4096; ++fd) {
    sockaddr_in peer{};
    socklen_t len = sizeof peer;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) continue;
    if (peer.sin_family != AF_INET || ntohs(peer.sin_port) != port) continue;
    if (::shutdown(fd, SHUT_RDWR) == 0) ++cut;
  }
  return cut;
}

TEST_F(ForwarderTest, BrokerPublishesRetainedOfflineWillWhenConnectionDies) {
  // A long backoff keeps the forwarder from overwriting the will with "online" before the
  // observer reads it; stop() interrupts the backoff at once.
  m_config.reconnect_min = 60s;
  m_config.reconnect_max = 60s;
  auto& forwarder = start_forwarder();
  ASSERT_TRUE(eventually([&] { return forwarder.stats().connected; }));
  {
    // The observer must not be connected while sockets are cut: it would be cut too.
    TestClient observer(m_broker.port(), "observer");
    ASSERT_TRUE(eventually([&] {
      auto statuses = observer.statuses();
      return !statuses.empty() && statuses.back().payload.find("online") != std::string::npos;
    }));
  }

  ASSERT_GE(cut_connections_to(m_broker.port()), 1);
  ASSERT_TRUE(eventually([&] { return !forwarder.stats().connected; }));

  TestClient observer(m_broker.port(), "observer-2");
  ASSERT_TRUE(eventually([&] { return !observer.statuses().empty(); }));
  auto will = observer.statuses().front();
  EXPECT_TRUE(will.retained);
  EXPECT_EQ(nlohmann::json::parse(will.payload), nlohmann::json({{"state", "offline"}}));

  auto before = std::chrono::steady_clock::now();
  forwarder.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - before, 10s) << "stop() waited out the backoff";
}

TEST_F(ForwarderTest, StartFailsOnUnreadablePasswordFile) {
  m_config.username = "dev-1";
  m_config.password_file = m_dir / "missing-password";
  agent::Forwarder forwarder(m_config, *m_outbox, agent::Env::real(), m_log, "test");
  auto ok = forwarder.start();
  ASSERT_FALSE(ok.has_value());
  EXPECT_EQ(ok.error().code, agent::ErrorCode::invalid_config);
  EXPECT_NE(ok.error().message.find("missing-password"), std::string::npos) << ok.error().message;
}

TEST_F(ForwarderTest, StartFailsOnUrlWithUnknownScheme) {
  m_config.url = "http://127.0.0.1:1883";
  agent::Forwarder forwarder(m_config, *m_outbox, agent::Env::real(), m_log, "test");
  auto ok = forwarder.start();
  ASSERT_FALSE(ok.has_value());
  EXPECT_EQ(ok.error().code, agent::ErrorCode::invalid_config);
  EXPECT_NE(ok.error().message.find("http://127.0.0.1:1883"), std::string::npos);
}

TEST_F(ForwarderTest, StartFailsOnUnreadableTlsCaFile) {
  m_config.url = "mqtts://127.0.0.1";
  m_config.ca_file = m_dir / "missing-ca.pem";
  agent::Forwarder forwarder(m_config, *m_outbox, agent::Env::real(), m_log, "test");
  auto ok = forwarder.start();
  ASSERT_FALSE(ok.has_value());
  EXPECT_EQ(ok.error().code, agent::ErrorCode::invalid_config);
  EXPECT_NE(ok.error().message.find("missing-ca.pem"), std::string::npos) << ok.error().message;
}

// Issue 15: status says why it cannot connect, not "MQTT error [-1]: Failure".
TEST_F(ForwarderTest, StatusSaysAConnectionIsRefusedNamingHostAndPort) {
  m_broker.stop();  // the port stays known, and nothing listens on it
  auto& forwarder = start_forwarder();
  const std::string expected = fmt::format(
      "cannot connect to {}: refused: nothing is listening on 127.0.0.1:{} (TCP connection "
      "refused)",
      m_config.url, m_broker.port());
  EXPECT_TRUE(eventually([&] { return forwarder.stats().last_error == expected; }))
      << forwarder.stats().last_error;
}

TEST_F(ForwarderTest, StatusSaysAWrongPasswordIsNotAuthorised) {
  m_broker.stop();
  m_broker.require_password(k_forwarder_device, "the right one");
  m_broker.start();
  { std::ofstream(m_dir / "password") << "a wrong one\n"; }
  std::filesystem::permissions(
      m_dir / "password", std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  m_config.username = k_forwarder_device;
  m_config.password_file = m_dir / "password";
  auto& forwarder = start_forwarder();
  const std::string expected = fmt::format(
      "cannot connect to {}: not authorised: the broker refused the connection: MQTT 3.1.1 "
      "return code 5 (not authorized)",
      m_config.url);
  EXPECT_TRUE(eventually([&] { return forwarder.stats().last_error == expected; }))
      << forwarder.stats().last_error;
}

TEST_F(ForwarderTest, StopReturnsWithinDeadlineWhenBrokerIsDown) {
  m_broker.stop();
  auto& forwarder = start_forwarder();
  auto before = std::chrono::steady_clock::now();
  forwarder.stop(500);
  EXPECT_LT(std::chrono::steady_clock::now() - before, 5s);
  EXPECT_FALSE(forwarder.stats().connected);
}

TEST(ParseAckTest, ReadsStreamAndSeqAndIgnoresOtherMembers) {
  auto ack =
      agent::parse_ack(R"({"node":"ingest-1","seq":12,"stream":"01KDX3G000STREAMSTREAM0000"})");
  ASSERT_TRUE(ack) << ack.error().message;
  EXPECT_EQ(ack->stream, "01KDX3G000STREAMSTREAM0000");
  EXPECT_EQ(ack->seq, 12);
  auto zero = agent::parse_ack(R"({"stream":"s","seq":0})");
  ASSERT_TRUE(zero) << zero.error().message;
  EXPECT_EQ(zero->seq, 0);
}

TEST(ParseAckTest, RefusesWhatIsNotAnAck) {
  for (const char* payload :
       {"", "not json", "[]", R"({"seq":1})", R"({"stream":"s"})", R"({"stream":1,"seq":1})",
        R"({"stream":"s","seq":-1})", R"({"stream":"s","seq":1.5})", R"({"stream":"s","seq":"1"})",
        R"({"stream":"s","seq":18446744073709551615})"}) {
    auto ack = agent::parse_ack(payload);
    EXPECT_FALSE(ack) << payload;
    if (!ack) {
      EXPECT_EQ(ack.error().code, agent::ErrorCode::invalid_argument) << payload;
    }
  }
}

}  // namespace
