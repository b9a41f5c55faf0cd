// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/service.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mqtt/async_client.h>
#include <sodium.h>
#include <nlohmann/json.hpp>

#include <reflow/core/env.hpp>
#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/merkle.hpp>
#include <reflow/core/signed_note.hpp>
#include <reflow/core/tls.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/core/units.hpp>
#include <reflow/node/ca.hpp>
#include <reflow/node/config.hpp>
#include <reflow/node/node_key.hpp>
#include <reflow/node/store.hpp>

#include "mosquitto.hpp"
#include "temp_dir.hpp"
#include "verified_events.hpp"

namespace ingest {
namespace {

using namespace std::chrono_literals;

constexpr const char* k_service_device = "dev-1";
constexpr const char* k_events_topic = "reflow/v1/dev-1/events";
constexpr const char* k_ack_topic = "reflow/v1/dev-1/ack";
constexpr const char* k_checkpoint_topic = "reflow/v1/_node/checkpoint";

// Polls a condition with a generous bound; tests wait for what happens, never for time to pass.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds bound = 30s) {
  const auto until = std::chrono::steady_clock::now() + bound;
  while (std::chrono::steady_clock::now() < until) {
    if (condition()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return condition();
}

// Signs a chain of events of one stream as an agent would (PROTOCOL §3, §4).
class SignedStream {
 public:
  SignedStream(const agent::DeviceKey& key, std::string device, agent::Env& env)
      : m_key(key),
        m_device(std::move(device)),
        m_env(env),
        m_protected(agent::jws_protected_header_b64(key.public_jwk().kid)),
        m_stream(m_ulids.next(env.now_unix_ms())) {}

  const std::string& stream() const { return m_stream; }

  // The next envelope of the stream: seq 1, 2, 3 … each linked to the one before.
  std::string next() {
    agent::EventStamp stamp;
    stamp.id = m_ulids.next(m_env.now_unix_ms());
    stamp.device = m_device;
    stamp.stream = m_stream;
    stamp.seq = ++m_seq;
    stamp.prev = m_prev;
    stamp.recorded_unix_ms = m_env.now_unix_ms();
    stamp.clock = agent::ClockSync::synced;
    nlohmann::ordered_json fields;
    fields["action"] = "use";
    fields["hasPointInTime"] = agent::format_rfc3339_ms(m_env.now_unix_ms());
    fields["resourceInventoriedAs"] = "printer:mk4-01";
    fields["effortQuantity"] = {{"hasNumericalValue", 0.5}, {"hasUnit", "hour"}};
    const std::string payload = agent::make_event_payload(
        stamp, fields, agent::EventSource{"sim", "sim-01", "job " + std::to_string(m_seq)});
    const agent::Jws jws = agent::jws_sign(m_key, m_protected, payload);
    m_prev = agent::sha256_b64url(jws.signing_input());
    return jws.to_envelope();
  }

  std::vector<std::string> next(int count) {
    std::vector<std::string> envelopes;
    for (int i = 0; i < count; ++i)
      envelopes.push_back(next());
    return envelopes;
  }

 private:
  const agent::DeviceKey& m_key;
  std::string m_device;
  agent::Env& m_env;
  std::string m_protected;
  agent::UlidGenerator m_ulids;
  std::string m_stream;
  std::int64_t m_seq = 0;
  std::string m_prev;
};

// A Paho client playing the device: publishes envelopes and watches its ack topic.
class DeviceClient {
 public:
  explicit DeviceClient(int port)
      // Room for a whole burst in Paho's queue (its default is 100 messages).
      : m_client("tcp://127.0.0.1:" + std::to_string(port), "test-device",
                 mqtt::create_options(MQTTVERSION_3_1_1, 2000),
                 static_cast<mqtt::iclient_persistence*>(nullptr)) {
    m_client.set_message_callback([this](mqtt::const_message_ptr message) {
      std::lock_guard lock(m_mutex);
      if (message->get_topic() == k_checkpoint_topic) {
        m_checkpoints.push_back(message->to_string());
        return;
      }
      auto ack = nlohmann::json::parse(message->to_string());
      m_acks.push_back({ack.at("stream").get<std::string>(), ack.at("seq").get<std::int64_t>()});
      m_raw_acks.push_back(std::move(ack));
    });
    mqtt::connect_options options;
    options.set_mqtt_version(MQTTVERSION_3_1_1);
    options.set_clean_session(true);
    m_client.connect(options)->wait();
    m_client.subscribe(k_ack_topic, 1)->wait();
    m_client.subscribe(k_checkpoint_topic, 1)->wait();
  }
  ~DeviceClient() {
    try {
      m_client.disconnect()->wait_for(2s);
    } catch (const std::exception&) {
    }
  }

  void publish(const std::string& envelope) {
    m_client.publish(mqtt::make_message(k_events_topic, envelope, 1, false))->wait();
  }

  // Publishes all, then waits for every PUBACK: a burst.
  /// Publishes `payload` retained on the device's status topic (PROTOCOL §6), as its agent does.
  void publish_status(const std::string& payload) {
    m_client.publish(mqtt::make_message("reflow/v1/dev-1/status", payload, 1, true))->wait();
  }

  void publish_all(const std::vector<std::string>& envelopes) {
    std::vector<mqtt::delivery_token_ptr> tokens;
    for (const auto& envelope : envelopes)
      tokens.push_back(m_client.publish(mqtt::make_message(k_events_topic, envelope, 1, false)));
    for (auto& token : tokens)
      token->wait();
  }

  std::vector<AckPoint> acks() const {
    std::lock_guard lock(m_mutex);
    return m_acks;
  }

  // The acks as published (with `signed` when the node has a key), and the log's checkpoints.
  std::vector<nlohmann::json> raw_acks() const {
    std::lock_guard lock(m_mutex);
    return m_raw_acks;
  }
  std::vector<std::string> checkpoints() const {
    std::lock_guard lock(m_mutex);
    return m_checkpoints;
  }

  std::optional<AckPoint> last_ack() const {
    std::lock_guard lock(m_mutex);
    if (m_acks.empty()) return std::nullopt;
    return m_acks.back();
  }

  bool last_ack_is(const std::string& stream, std::int64_t seq) const {
    auto last = last_ack();
    return last && last->stream == stream && last->seq == seq;
  }

 private:
  mqtt::async_client m_client;
  mutable std::mutex m_mutex;
  std::vector<AckPoint> m_acks;
  std::vector<nlohmann::json> m_raw_acks;
  std::vector<std::string> m_checkpoints;
};

// Passes every call to the real store; the test stores below override what they change.
class ForwardingStore : public Store {
 public:
  explicit ForwardingStore(Store& real) : m_real(real) {}

  Status add_device(std::string_view device, const agent::PublicJwk& jwk,
                    std::int64_t now_unix_ms) override {
    return m_real.add_device(device, jwk, now_unix_ms);
  }
  Status revoke_device(std::string_view device, std::int64_t now_unix_ms) override {
    return m_real.revoke_device(device, now_unix_ms);
  }
  Result<std::optional<DeviceKeyRecord>> find_key(std::string_view kid) override {
    return m_real.find_key(kid);
  }
  Result<std::vector<DeviceKeyRecord>> list_keys() override { return m_real.list_keys(); }
  Result<std::vector<PutResult>> put(std::span<const Incoming> batch,
                                     std::int64_t now_unix_ms) override {
    return m_real.put(batch, now_unix_ms);
  }
  Result<std::optional<AckPoint>> ack_point(std::string_view device) override {
    return m_real.ack_point(device);
  }
  Status for_each_event(const EventFilter& filter,
                        const std::function<bool(const StoredEvent&)>& fn) override {
    return m_real.for_each_event(filter, fn);
  }
  Status for_each_rejection(std::optional<std::string_view> device,
                            const std::function<bool(const StoredRejection&)>& fn) override {
    return m_real.for_each_rejection(device, fn);
  }
  Result<std::vector<DeviceStats>> stats() override { return m_real.stats(); }

 private:
  Store& m_real;
};

// The real store, whose put() fails (as on a full disk) while `failures` lasts.
class FailingStore final : public ForwardingStore {
 public:
  FailingStore(Store& real, int failures) : ForwardingStore(real), m_failures(failures) {}

  Result<std::vector<PutResult>> put(std::span<const Incoming> batch,
                                     std::int64_t now_unix_ms) override {
    if (m_failures.load() > 0) {
      --m_failures;
      return agent::fail(agent::ErrorCode::no_space, "database or disk is full");
    }
    return ForwardingStore::put(batch, now_unix_ms);
  }

  int failures_left() const { return m_failures.load(); }

 private:
  std::atomic<int> m_failures;
};

// The real store, whose first put() waits (as on a slow fsync) until released; counts the key
// lookups made meanwhile.
class SlowCommitStore final : public ForwardingStore {
 public:
  explicit SlowCommitStore(Store& real) : ForwardingStore(real) {}

  Result<std::optional<DeviceKeyRecord>> find_key(std::string_view kid) override {
    if (m_in_put.load()) ++m_lookups_during_put;
    return ForwardingStore::find_key(kid);
  }
  Result<std::vector<PutResult>> put(std::span<const Incoming> batch,
                                     std::int64_t now_unix_ms) override {
    if (!m_released.load()) {
      m_in_put = true;
      std::unique_lock lock(m_mutex);
      m_cv.wait(lock, [&] { return m_released.load(); });
    }
    auto result = ForwardingStore::put(batch, now_unix_ms);
    m_in_put = false;
    return result;
  }

  bool in_put() const { return m_in_put.load(); }
  int lookups_during_put() const { return m_lookups_during_put.load(); }
  void release() {
    {
      std::lock_guard lock(m_mutex);
      m_released = true;
    }
    m_cv.notify_all();
  }

 private:
  std::mutex m_mutex;
  std::condition_variable m_cv;
  std::atomic<bool> m_released{false};
  std::atomic<bool> m_in_put{false};
  std::atomic<int> m_lookups_during_put{0};
};

class IngestServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    m_broker.start();
    ASSERT_NO_FATAL_FAILURE(test_store::open_store_and_key(m_dir.path(), m_store, m_key));
    ASSERT_TRUE(m_store->add_device(k_service_device, m_key->public_jwk(), m_env.now_unix_ms()));
    m_config.url = m_broker.url();
    m_config.client_id = "ingest-test";
    m_config.ack_interval = 0ms;
    m_config.connect_timeout = 2s;
    m_config.reconnect_min = 100ms;
    m_config.reconnect_max = 100ms;
  }

  // Starts a service and waits until its subscription is in place.
  std::unique_ptr<IngestService> start_service(const IngestConfig& config) {
    auto service = std::make_unique<IngestService>(config, *m_store, m_env, m_log);
    auto started = service->start();
    EXPECT_TRUE(started.has_value()) << started.error().message;
    EXPECT_TRUE(eventually([&] { return service->counters().subscribed; }));
    return service;
  }

  std::vector<StoredEvent> stored_events() {
    std::vector<StoredEvent> events;
    EXPECT_TRUE(m_store->for_each_event({}, [&](const StoredEvent& event) {
      events.push_back(event);
      return true;
    }));
    return events;
  }

  reflow_test::TempDir m_dir;
  reflow_test::MosquittoProcess m_broker{m_dir.path()};
  agent::FakeEnv m_env;
  agent::Logger m_log{agent::LogLevel::error};
  std::unique_ptr<Store> m_store;
  std::optional<agent::DeviceKey> m_key;
  IngestConfig m_config;
};

TEST_F(IngestServiceTest, StoresEventsAndPublishesTheRetainedAck) {
  auto service = start_service(m_config);
  DeviceClient device(m_broker.port());
  SignedStream stream(*m_key, k_service_device, m_env);
  for (const auto& envelope : stream.next(3))
    device.publish(envelope);

  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 3); }));
  const auto events = stored_events();
  ASSERT_EQ(events.size(), 3u);
  for (std::size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].device, k_service_device);
    EXPECT_EQ(events[i].stream, stream.stream());
    EXPECT_EQ(events[i].seq, static_cast<std::int64_t>(i + 1));
  }
  const auto counters = service->counters();
  EXPECT_EQ(counters.received, 3u);
  EXPECT_EQ(counters.stored, 3u);
  EXPECT_EQ(counters.rejected, 0u);
  EXPECT_TRUE(counters.connected);
  // Mosquitto's CONNACK says Receive Maximum 20 (max_inflight_messages' default).
  EXPECT_EQ(counters.ack_window, 19u);

  // Retained: an agent that connects later reads it at once.
  DeviceClient late(m_broker.port());
  ASSERT_TRUE(eventually([&] { return late.last_ack_is(stream.stream(), 3); }));
}

// Paho holds a QoS 1 publish beyond the broker's Receive Maximum until its send thread next wakes
// (a new publish, or once a second); the ack publisher stays below the maximum of the CONNACK its
// own connection gets.
TEST_F(IngestServiceTest, KeepsItsAcksInFlightBelowTheBrokersReceiveMaximum) {
  m_broker.stop();
  m_broker.add_config("max_inflight_messages 3");
  m_broker.start();
  auto service = start_service(m_config);

  DeviceClient device(m_broker.port());
  SignedStream stream(*m_key, k_service_device, m_env);
  for (const auto& envelope : stream.next(20))
    device.publish(envelope);
  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 20); }));
  const auto counters = service->counters();
  EXPECT_EQ(counters.stored, 20u);
  EXPECT_TRUE(counters.acks_connected);
  EXPECT_EQ(counters.ack_window, 2u);
}

TEST_F(IngestServiceTest, GapHoldsTheAckAndTheFillAdvancesIt) {
  auto service = start_service(m_config);
  DeviceClient device(m_broker.port());
  SignedStream stream(*m_key, k_service_device, m_env);
  const auto envelopes = stream.next(4);
  device.publish(envelopes[0]);
  device.publish(envelopes[1]);
  device.publish(envelopes[3]);
  ASSERT_TRUE(eventually([&] { return service->counters().stored == 3; }));

  // The acks of seq 1 and 2 may still be on their way (they were under qemu-arm): wait for the
  // one at 2, so that what comes after the duplicate is the duplicate's.
  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 2); }));

  // A duplicate makes the node publish its ack again: it must still be 2, seq 4 stands alone.
  const auto acks_before = device.acks().size();
  device.publish(envelopes[1]);
  ASSERT_TRUE(eventually([&] { return service->counters().duplicates == 1; }));
  ASSERT_TRUE(eventually([&] { return device.acks().size() > acks_before; }));
  EXPECT_TRUE(device.last_ack_is(stream.stream(), 2));
  for (const auto& ack : device.acks())
    EXPECT_LE(ack.seq, 2);

  device.publish(envelopes[2]);
  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 4); }));
  EXPECT_EQ(stored_events().size(), 4u);
}

TEST_F(IngestServiceTest, BurstEndsWithTheAckAtItsLastSeqFromFarFewerAckPublishes) {
  m_config.ack_interval = 100ms;
  auto service = start_service(m_config);
  DeviceClient device(m_broker.port());
  SignedStream stream(*m_key, k_service_device, m_env);
  device.publish_all(stream.next(1000));

  ASSERT_TRUE(eventually([&] { return service->counters().stored == 1000; }, 120s))
      << service->counters().stored;
  // The node's clock has not moved during the burst, so every ack after the first waits for
  // the interval; once it passes, the trailing ack covers the whole burst.
  m_env.advance_ms(100);
  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 1000); }))
      << (device.last_ack() ? device.last_ack()->seq : -1);
  ASSERT_TRUE(
      eventually([&] { return device.acks().size() == service->counters().acks_published; }));
  EXPECT_LT(device.acks().size(), 1000u);
  EXPECT_LT(service->counters().acks_published, 1000u);
  EXPECT_EQ(stored_events().size(), 1000u);
}

// With a node key (PROTOCOL §5.1): every ack carries the node's signed statement with the acked
// event's inclusion proof, and the log's signed checkpoint goes out at start, then at most once a
// second: a burst stored one envelope per batch makes no checkpoint until the node's clock has
// passed the second, then exactly one, of the whole burst.
TEST_F(IngestServiceTest, WithANodeKeyAcksAreSignedAndOneCheckpointFollowsABurst) {
  m_config.data_dir = m_dir / "node";
  m_config.log_origin = "test.example/log";
  m_config.max_batch = 1;
  auto jwk = create_node_key(m_config);
  ASSERT_TRUE(jwk.has_value()) << jwk.error().message;
  auto service = start_service(m_config);
  EXPECT_EQ(service->counters().node_kid, jwk->kid);
  DeviceClient device(m_broker.port());
  ASSERT_TRUE(eventually([&] { return device.checkpoints().size() == 1; }));
  auto empty = agent::note::verify_checkpoint(device.checkpoints()[0], "test.example/log", *jwk);
  ASSERT_TRUE(empty.has_value()) << empty.error().message;
  EXPECT_EQ(empty->size, 0u);

  SignedStream stream(*m_key, k_service_device, m_env);
  const auto envelopes = stream.next(30);
  device.publish_all(envelopes);
  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 30); }));
  m_env.advance_ms(1000);
  ASSERT_TRUE(eventually([&] { return device.checkpoints().size() >= 2; }));
  const auto notes = device.checkpoints();
  ASSERT_EQ(notes.size(), 2u);
  auto full = agent::note::verify_checkpoint(notes[1], "test.example/log", *jwk);
  ASSERT_TRUE(full.has_value()) << full.error().message;
  EXPECT_EQ(full->size, 30u);

  const nlohmann::json last = device.raw_acks().back();
  const auto& jws = last.at("signed");
  const std::string signing_input =
      jws.at("protected").get<std::string>() + "." + jws.at("payload").get<std::string>();
  auto signature = agent::base64url_decode(jws.at("signature").get<std::string>());
  ASSERT_TRUE(signature.has_value() && signature->size() == 64);
  EXPECT_EQ(
      crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(signature->data()),
                                  reinterpret_cast<const unsigned char*>(signing_input.data()),
                                  signing_input.size(), jwk->x.data()),
      0);
  const auto payload =
      nlohmann::json::parse(*agent::base64url_decode(jws.at("payload").get<std::string>()));
  EXPECT_EQ(payload.at("seq"), 30);
  EXPECT_EQ(payload.at("leaf_index"), 29);
  EXPECT_EQ(payload.at("tree_size"), 30);
  EXPECT_EQ(payload.at("root"), agent::note::base64_encode(full->root));
  std::vector<agent::merkle::Hash> proof;
  for (const auto& hash : payload.at("inclusion")) {
    auto bytes = agent::note::base64_decode(hash.get<std::string>());
    ASSERT_TRUE(bytes.has_value() && bytes->size() == 32);
    proof.emplace_back();
    std::copy(bytes->begin(), bytes->end(), proof.back().begin());
  }
  EXPECT_TRUE(agent::merkle::verify_inclusion(29, 30, agent::merkle::leaf_hash(envelopes[29]),
                                              proof, full->root));
}

// PROTOCOL §5.1: the node reads the size the device verified from its status and proves the
// next log consistent with it in the signed ack.
TEST_F(IngestServiceTest, ASignedAckProvesTheLogGrewFromTheSizeInTheDevicesStatus) {
  m_config.data_dir = m_dir / "node";
  m_config.max_batch = 1;
  auto jwk = create_node_key(m_config);
  ASSERT_TRUE(jwk.has_value()) << jwk.error().message;
  auto service = start_service(m_config);
  DeviceClient device(m_broker.port());
  auto payload_of = [&](const nlohmann::json& ack) {
    auto verified = agent::jws_verify(ack.at("signed").dump(), *jwk, k_ack_typ);
    EXPECT_TRUE(verified.has_value());
    return verified ? nlohmann::json::parse(verified->payload) : nlohmann::json::object();
  };
  auto hash_of = [](const nlohmann::json& value) {
    auto bytes = agent::note::base64_decode(value.get<std::string>());
    EXPECT_TRUE(bytes.has_value() && bytes->size() == 32);
    agent::merkle::Hash hash{};
    if (bytes && bytes->size() == 32) std::copy(bytes->begin(), bytes->end(), hash.begin());
    return hash;
  };

  SignedStream stream(*m_key, k_service_device, m_env);
  device.publish_all(stream.next(10));
  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 10); }));
  const auto first = payload_of(device.raw_acks().back());
  EXPECT_FALSE(first.contains("consistency")) << "no status read yet: nothing to prove from";
  ASSERT_EQ(first.at("tree_size"), 10);
  const auto old_root = hash_of(first.at("root"));

  // The device verified the log of 10 leaves and says so; then 5 more events.
  device.publish_status(R"({"state":"online","seq":10,"acked":10,"verified_tree_size":10})");
  device.publish_all(stream.next(5));
  m_env.advance_ms(1000);  // past ack_interval, for the trailing ack of the burst
  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 15); }));
  const auto grown = payload_of(device.raw_acks().back());
  ASSERT_EQ(grown.at("tree_size"), 15);
  ASSERT_TRUE(grown.contains("consistency_from")) << grown.dump();
  EXPECT_EQ(grown.at("consistency_from"), 10);
  std::vector<agent::merkle::Hash> proof;
  for (const auto& hash : grown.at("consistency"))
    proof.push_back(hash_of(hash));
  const auto new_root = hash_of(grown.at("root"));
  // RFC 9162 §2.1.4.2, checked here with the core's verifier against the first ack's root.
  EXPECT_TRUE(agent::merkle::verify_consistency(10, 15, old_root, new_root, proof));
  EXPECT_FALSE(agent::merkle::verify_consistency(10, 15, new_root, new_root, proof));
}

// Regression: with a full queue, Paho's receiving thread waits in the message callback (holding
// back the broker) while the worker must still be able to store and ack; when the worker itself
// called Paho to publish an ack, it waited for a lock that receiving thread held, and both stopped
// for good after a few acks.
TEST_F(IngestServiceTest, KeepsStoringAndAckingWhileAFullQueueHoldsBackTheBroker) {
  m_config.max_batch = 1;  // a queue of 64: a flood fills it at once
  auto service = start_service(m_config);
  DeviceClient device(m_broker.port());
  SignedStream stream(*m_key, k_service_device, m_env);
  constexpr int k_events = 3000;
  const auto envelopes = stream.next(k_events);
  // Paho's lock is one per process: while the service's Paho thread holds it, this client's
  // publish waits too. So the flood goes from its own thread, and this one only watches.
  std::atomic<bool> publish_failed{false};
  std::thread publisher([&] {
    try {
      // As fast as the client takes them, in bursts that fit its own queue.
      for (std::size_t first = 0; first < envelopes.size(); first += 1000) {
        const std::size_t last = std::min(first + 1000, envelopes.size());
        device.publish_all(
            std::vector<std::string>(envelopes.begin() + static_cast<std::ptrdiff_t>(first),
                                     envelopes.begin() + static_cast<std::ptrdiff_t>(last)));
      }
    } catch (const std::exception&) {
      publish_failed = true;
    }
  });

  const bool acked =
      eventually([&] { return device.last_ack_is(stream.stream(), k_events); }, 240s);
  const auto counters = service->counters();
  // Stopping also frees a Paho thread stuck behind a full queue, so the publisher can end.
  service->stop();
  publisher.join();
  ASSERT_TRUE(acked) << "stored " << counters.stored << ", last ack "
                     << (device.last_ack() ? device.last_ack()->seq : -1);
  ASSERT_FALSE(publish_failed.load());
  EXPECT_EQ(counters.stored, static_cast<std::uint64_t>(k_events));
  EXPECT_EQ(counters.rejected, 0u);
  EXPECT_GE(counters.acks_published, 1u);
  EXPECT_EQ(stored_events().size(), static_cast<std::size_t>(k_events));
}

TEST_F(IngestServiceTest, KeepsRejectedEnvelopesWithTheirReasonAndAcksValidEventsAfterThem) {
  auto service = start_service(m_config);
  DeviceClient device(m_broker.port());
  SignedStream stream(*m_key, k_service_device, m_env);
  const auto envelopes = stream.next(3);

  // seq 2 with its signature from another message.
  auto forged = nlohmann::json::parse(envelopes[1]);
  forged["signature"] = nlohmann::json::parse(envelopes[0])["signature"];
  // A key the node never registered.
  auto stranger_key = agent::DeviceKey::generate(m_dir / "stranger.key");
  ASSERT_TRUE(stranger_key.has_value());
  SignedStream stranger(*stranger_key, k_service_device, m_env);

  device.publish(envelopes[0]);
  device.publish(forged.dump());
  device.publish(stranger.next());
  device.publish("not a JWS");
  device.publish(envelopes[1]);
  device.publish(envelopes[2]);

  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 3); }));
  ASSERT_TRUE(eventually([&] { return service->counters().rejected == 3; }));
  const auto counters = service->counters();
  EXPECT_EQ(counters.stored, 3u);
  EXPECT_EQ(counters.rejected_by_reason.at("bad_signature"), 1u);
  EXPECT_EQ(counters.rejected_by_reason.at("unknown_kid"), 1u);
  EXPECT_EQ(counters.rejected_by_reason.at("malformed_jws"), 1u);

  std::vector<StoredRejection> rejections;
  ASSERT_TRUE(m_store->for_each_rejection(std::nullopt, [&](const StoredRejection& r) {
    rejections.push_back(r);
    return true;
  }));
  ASSERT_EQ(rejections.size(), 3u);
  EXPECT_EQ(rejections[0].reason, RejectReason::bad_signature);
  EXPECT_EQ(rejections[0].device, k_service_device);
  EXPECT_EQ(rejections[0].topic, k_events_topic);
  EXPECT_EQ(rejections[0].envelope, forged.dump());
  EXPECT_EQ(rejections[0].seq, 2);
  EXPECT_EQ(rejections[1].reason, RejectReason::unknown_kid);
  EXPECT_EQ(rejections[2].reason, RejectReason::malformed_jws);
  EXPECT_EQ(rejections[2].envelope, "not a JWS");
  for (const auto& ack : device.acks())
    EXPECT_EQ(ack.stream, stream.stream());
}

// Issue 14 item 13: a retained or repeated garbage message added a row and a log line each time.
TEST_F(IngestServiceTest, RepeatedGarbageIsOneRowCountedAndLoggedAFewTimes) {
  auto service = start_service(m_config);
  DeviceClient device(m_broker.port());
  SignedStream stream(*m_key, k_service_device, m_env);
  constexpr int k_repeats = 200;
  for (int i = 0; i < k_repeats; ++i)
    device.publish("not a JWS");
  device.publish(stream.next());
  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 1); }));
  ASSERT_TRUE(eventually([&] { return service->counters().rejected == k_repeats; }));
  const auto counters = service->counters();
  EXPECT_EQ(counters.rejected_by_reason.at("malformed_jws"), static_cast<std::uint64_t>(k_repeats));
  EXPECT_EQ(counters.rejections_repeated, static_cast<std::uint64_t>(k_repeats - 1));
  EXPECT_EQ(counters.rejections_not_kept, 0u);
  // The test's clock does not move: all in one window, of which the first 10 are logged.
  EXPECT_EQ(counters.rejection_logs_suppressed, static_cast<std::uint64_t>(k_repeats - 10));

  std::vector<StoredRejection> rejections;
  ASSERT_TRUE(m_store->for_each_rejection(std::nullopt, [&](const StoredRejection& r) {
    rejections.push_back(r);
    return true;
  }));
  ASSERT_EQ(rejections.size(), 1u);
  EXPECT_EQ(rejections[0].count, k_repeats);
}

TEST_F(IngestServiceTest, StoreErrorsAckNothingAndTheBatchIsRetriedUntilStored) {
  FailingStore failing(*m_store, 3);
  IngestService service(m_config, failing, m_env, m_log);
  ASSERT_TRUE(service.start());
  ASSERT_TRUE(eventually([&] { return service.counters().subscribed; }));
  DeviceClient device(m_broker.port());
  SignedStream stream(*m_key, k_service_device, m_env);
  device.publish_all(stream.next(2));

  ASSERT_TRUE(eventually([&] { return service.counters().store_errors >= 1; }));
  EXPECT_TRUE(device.acks().empty());
  EXPECT_EQ(service.counters().stored, 0u);
  EXPECT_NE(service.counters().last_error.find("envelopes failed"), std::string::npos)
      << service.counters().last_error;
  // The retry waits on the service's clock: move it on until the batch is stored.
  ASSERT_TRUE(eventually([&] {
    m_env.advance_ms(1000);
    return device.last_ack_is(stream.stream(), 2);
  }));
  const auto counters = service.counters();
  EXPECT_EQ(failing.failures_left(), 0);
  EXPECT_EQ(counters.store_errors, 3u);
  EXPECT_EQ(counters.stored, 2u);
  // Stored: the fault is over, and status no longer reports it.
  EXPECT_EQ(counters.last_error, "");
  EXPECT_EQ(stored_events().size(), 2u);
  service.stop();
}

TEST_F(IngestServiceTest, VerifiesTheNextBatchDuringACommitAndAcksOnlyWhatIsCommitted) {
  SlowCommitStore slow(*m_store);
  m_config.max_batch = 1;  // one envelope per batch: the second is the next batch
  IngestService service(m_config, slow, m_env, m_log);
  // Destroyed before the service: a failed assertion must not leave its stop() waiting on put().
  struct Release {
    SlowCommitStore& store;
    ~Release() { store.release(); }
  } release{slow};
  ASSERT_TRUE(service.start());
  ASSERT_TRUE(eventually([&] { return service.counters().subscribed; }));
  DeviceClient device(m_broker.port());
  SignedStream stream(*m_key, k_service_device, m_env);
  const auto envelopes = stream.next(2);

  device.publish(envelopes[0]);
  ASSERT_TRUE(eventually([&] { return slow.in_put(); }));
  device.publish(envelopes[1]);
  // The second batch's key is looked up (it is being verified) while the first commit waits.
  ASSERT_TRUE(eventually([&] { return slow.lookups_during_put() >= 1; }));
  EXPECT_TRUE(slow.in_put());
  EXPECT_TRUE(device.acks().empty());
  EXPECT_EQ(service.counters().stored, 0u);

  slow.release();
  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 2); }));
  EXPECT_EQ(service.counters().stored, 2u);
  EXPECT_EQ(stored_events().size(), 2u);
  service.stop();
}

TEST_F(IngestServiceTest, SharedGroupStoresEveryEventExactlyOnce) {
  IngestConfig first = m_config;
  first.share_group = "ingest";
  first.client_id = "ingest-a";
  IngestConfig second = first;
  second.client_id = "ingest-b";
  auto a = start_service(first);
  auto b = start_service(second);
  DeviceClient device(m_broker.port());
  SignedStream stream(*m_key, k_service_device, m_env);
  device.publish_all(stream.next(200));

  ASSERT_TRUE(eventually([&] {
    return a->counters().stored + b->counters().stored + a->counters().duplicates +
               b->counters().duplicates >=
           200;
  }));
  const auto ca = a->counters();
  const auto cb = b->counters();
  EXPECT_EQ(ca.stored + cb.stored, 200u);
  EXPECT_EQ(ca.duplicates + cb.duplicates, 0u);
  EXPECT_EQ(ca.rejected + cb.rejected, 0u);
  // The broker handed events to both instances, not all to each.
  EXPECT_GT(ca.received, 0u);
  EXPECT_GT(cb.received, 0u);
  EXPECT_EQ(ca.received + cb.received, 200u);

  std::set<std::int64_t> seqs;
  for (const auto& event : stored_events())
    EXPECT_TRUE(seqs.insert(event.seq).second) << event.seq;
  EXPECT_EQ(seqs.size(), 200u);
  auto point = m_store->ack_point(k_service_device);
  ASSERT_TRUE(point.has_value());
  ASSERT_TRUE(point->has_value());
  EXPECT_EQ((*point)->seq, 200);
}

TEST_F(IngestServiceTest, ReconnectsAfterABrokerRestartAndKeepsReceiving) {
  auto service = start_service(m_config);
  SignedStream stream(*m_key, k_service_device, m_env);
  {
    DeviceClient device(m_broker.port());
    device.publish(stream.next());
    ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 1); }));
  }
  m_broker.stop();
  ASSERT_TRUE(eventually([&] { return !service->counters().connected; }));
  // The acks' own connection sees the loss too (its handler, not the next publish).
  ASSERT_TRUE(eventually([&] { return !service->counters().acks_connected; }));
  EXPECT_FALSE(service->counters().last_error.empty());
  m_broker.start();
  // The backoff sleeps on the service's clock: move it on until the service is back.
  ASSERT_TRUE(eventually([&] {
    m_env.advance_ms(100);
    return service->counters().subscribed;
  }));
  DeviceClient device(m_broker.port());
  device.publish(stream.next());
  ASSERT_TRUE(eventually([&] { return device.last_ack_is(stream.stream(), 2); }));
  EXPECT_GE(service->counters().connects, 2u);
  EXPECT_TRUE(service->counters().acks_connected);
  // Both connections are back: the fault they reported is over.
  EXPECT_EQ(service->counters().last_error, "");
}

// Issue 15: the node's MQTT password is rotated while it runs: the broker restarts with the new
// one and the file says it. Each connect attempt of both connections reads the file again, so the
// service comes back without a restart (it used to retry the old password for ever).
TEST_F(IngestServiceTest, EachReconnectReadsThePasswordFileAgain) {
  const auto password_file = m_dir / "mqtt.password";
  const auto write_password = [&](const char* password) {
    std::ofstream(password_file) << password << "\n";
    std::filesystem::permissions(
        password_file, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  };
  m_broker.stop();
  m_broker.require_password("ingest", "first-secret");
  m_broker.start();
  write_password("first-secret");
  IngestConfig config = m_config;
  config.username = "ingest";
  config.password_file = password_file;
  auto service = start_service(config);
  ASSERT_TRUE(eventually([&] { return service->counters().acks_connected; }));

  m_broker.stop();
  ASSERT_TRUE(eventually([&] {
    const auto counters = service->counters();
    return !counters.connected && !counters.acks_connected;
  }));
  m_broker.require_password("ingest", "second-secret");
  write_password("second-secret");
  m_broker.start();
  ASSERT_TRUE(eventually([&] {
    m_env.advance_ms(100);
    const auto counters = service->counters();
    return counters.subscribed && counters.acks_connected;
  })) << service->counters().last_error;
  EXPECT_EQ(service->counters().last_error, "");
}

// Issue 15: a broker certificate that does not name the URL's host is named as such, with the
// certificate's names, not as "MQTT error [-1]: Failure".
TEST_F(IngestServiceTest, LastErrorNamesTheCertificatesNamesAndTheUrlsHost) {
  const auto ca_dir = m_dir / "ca";
  ASSERT_TRUE(ingest::ca_init(ca_dir, {}));
  ingest::IssueOptions server;
  server.role = ingest::CertRole::server;
  server.hosts = {"localhost"};
  auto issued = ingest::ca_issue_with_key(ca_dir, m_dir / "server.key", "", server);
  ASSERT_TRUE(issued) << issued.error().message;
  { std::ofstream(m_dir / "server.crt") << issued->pem; }
  std::filesystem::create_directory(m_dir / "tls-broker");
  reflow_test::MosquittoProcess broker(m_dir / "tls-broker");
  broker.enable_tls(ca_dir / "ca.crt", m_dir / "server.crt", m_dir / "server.key");
  broker.start();
  IngestConfig config = m_config;
  config.url = fmt::format("mqtts://127.0.0.1:{}", broker.port());
  config.ca_file = ca_dir / "ca.crt";
  IngestService service(config, *m_store, m_env, m_log);
  ASSERT_TRUE(service.start());
  const std::string cause =
      "TLS: the broker's certificate names DNS:localhost, not the URL's host 127.0.0.1; put one "
      "of its names in mqtt.url, or reissue it with `reflow-ingest ca server --host 127.0.0.1`";
  EXPECT_TRUE(eventually([&] { return service.counters().last_error.ends_with(cause); }))
      << service.counters().last_error;
  service.stop();
}

TEST_F(IngestServiceTest, StopDisconnectsAndKeepsItsCountersReadable) {
  auto service = start_service(m_config);
  ASSERT_TRUE(eventually([&] { return service->counters().acks_connected; }));
  service->stop();
  const auto counters = service->counters();
  EXPECT_FALSE(counters.connected);
  EXPECT_FALSE(counters.subscribed);
  EXPECT_FALSE(counters.acks_connected);
  EXPECT_EQ(counters.connects, 1u);
}

}  // namespace
}  // namespace ingest
