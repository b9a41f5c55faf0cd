// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/service.hpp>

#include <mqtt/async_client.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/units.hpp>
#include <reflow/node/verifier.hpp>

#include <reflow/core/mqtt_connect.hpp>
#include <reflow/node/key_lookup.hpp>
#include <reflow/node/log_limiter.hpp>

namespace ingest {
namespace {

constexpr std::string_view k_component = "ingest";
constexpr int k_qos = 1;
// Rejections logged per sender (topic DEVICE) and minute; the rest get one summary line.
constexpr LogLimits k_log_limits{};
// Bounds one wait of a service thread, so that a clock that is not the real one (FakeEnv) is
// looked at again within this time even when nothing else wakes the thread.
constexpr auto k_max_wait = std::chrono::milliseconds(200);
// Paho enforces connect_timeout itself; this is only the margin before the service stops waiting
// for an answer Paho should already have given.
constexpr auto k_connect_grace = std::chrono::seconds(5);
constexpr auto k_store_retry_min = std::chrono::milliseconds(100);
constexpr auto k_store_retry_max = std::chrono::seconds(10);
// Envelopes waiting for the worker, per envelope of max_batch: one batch being stored while the
// next one fills.
constexpr std::size_t k_queue_batches = 2;
// A failed ack publish (not connected) is tried again after this, unless a newer ack of the same
// device replaced it meanwhile.
constexpr auto k_ack_retry = std::chrono::milliseconds(100);
// Acks handed to Paho and not yet confirmed by the broker, at most; more wait in the coalescing
// map. Lowered below the broker's Receive Maximum (its CONNACK; Mosquitto's max_inflight_messages,
// 20 by default): Paho holds a publish beyond that until its send thread next wakes, which only a
// new publish or a 1 s timer does, so a larger window stalled the acks a second at a time.
constexpr std::size_t k_acks_in_flight = 64;
// MQTT 5 §3.2.2.3.3: a CONNACK without Receive Maximum means 65,535.
constexpr std::size_t k_default_receive_maximum = 65'535;
// Appended to mqtt.client_id for the connection that publishes the acks.
constexpr std::string_view k_acks_client_suffix = "-acks";
// How long the ack publisher waits for one confirmation before it stops counting that ack.
constexpr auto k_ack_delivery_wait = std::chrono::seconds(1);
// Threads verifying one batch, at most (the worker is one of them): Ed25519 verification is most of
// the CPU an envelope costs, and envelopes verify independently.
constexpr unsigned k_max_verifiers = 4;
// Envelopes per verifying thread, at least: a thread for fewer costs more than it saves.
constexpr std::size_t k_envelopes_per_verifier = 8;
// Paho refuses a publish when this many are waiting in its own queue, connected or not (its
// default, 100, is less than a burst of acks to many devices).
constexpr int k_max_buffered = 10'000;

using Clock = std::chrono::steady_clock;
using agent::mqtt_connect::context_of;
using agent::mqtt_connect::generation_of;
using agent::mqtt_connect::paho_error;
using agent::mqtt_connect::whole_seconds;
using std::chrono::milliseconds;

// An MQTT 5 SUBACK says per filter whether it was granted; a code from 0x80 up is a refusal.
std::optional<std::string> subscribe_refusal(const mqtt::token& token) {
  try {
    const auto response = token.get_subscribe_response();
    for (auto code : response.get_reason_codes()) {
      if (static_cast<int>(code) >= 0x80)
        return fmt::format("the broker refused the subscription: MQTT 5 reason code {}",
                           agent::mqtt_connect::reason_code_text(static_cast<int>(code)));
    }
  } catch (const std::exception&) {
    // No SUBACK details (not an MQTT 5 answer): success is success.
  }
  return std::nullopt;
}

// The broker's Receive Maximum from a CONNACK (MQTT 5 §3.2.2.3.3): how many QoS 1 publishes it
// takes before their PUBACKs.
std::size_t receive_maximum_of(const mqtt::token& token) {
  try {
    const mqtt::connect_response response = token.get_connect_response();  // a copy, not a view
    const mqtt::properties& properties = response.get_properties();
    if (properties.contains(mqtt::property::RECEIVE_MAXIMUM))
      return mqtt::get<std::uint16_t>(properties, mqtt::property::RECEIVE_MAXIMUM);
  } catch (const std::exception&) {
    // No CONNACK properties (not an MQTT 5 answer): the protocol's default.
  }
  return k_default_receive_maximum;
}

// The registry keys of one batch, each looked up once however many envelopes it signed and
// whichever verifying thread asks first. Per batch, so a revocation is seen by the next one.
class BatchKeys {
 public:
  explicit BatchKeys(Store& store) : m_store(store) {}

  Result<std::optional<DeviceKeyRecord>> find(std::string_view kid) {
    {
      std::lock_guard lock(m_mutex);
      if (auto it = m_keys.find(kid); it != m_keys.end()) return it->second;
    }
    // Outside the lock: two threads may both ask the store for a new kid, which is harmless,
    // while the others go on with the kids already known.
    auto key = m_store.find_key(kid);
    if (key) {
      std::lock_guard lock(m_mutex);
      m_keys.emplace(std::string(kid), *key);
    }
    return key;  // an error is not kept: the batch is retried and asks again
  }

 private:
  Store& m_store;
  std::mutex m_mutex;
  std::map<std::string, std::optional<DeviceKeyRecord>, std::less<>> m_keys;
};

}  // namespace

struct IngestService::Impl {
  enum class Kind {
    connect_ok,
    connect_failed,
    connection_lost,
    subscribe_ok,
    subscribe_failed,
  };

  // What a Paho thread hands to the connection thread; Paho threads do nothing else.
  struct Event {
    Kind kind;
    std::uint64_t generation = 0;
    std::string text;
  };

  // One envelope as it arrived.
  struct Message {
    std::string topic;
    std::string payload;
  };

  // One envelope of a batch on its way through verification.
  struct Check {
    const Message* message = nullptr;
    std::string device;  ///< the topic's DEVICE
    std::optional<Result<std::expected<VerifiedEvent, Rejection>>> outcome;
  };

  // A batch verified by the worker, for the store thread.
  struct Pending {
    std::vector<Message> messages;
    std::vector<Check> checks;  ///< point into `messages`
  };

  // An ack handed from the store thread to the ack publisher.
  struct PendingAck {
    std::string topic;
    std::string body;
  };

  // The ack state of one device, owned by the store thread.
  struct DeviceAck {
    bool dirty = false;  ///< something was stored or duplicated since the last ack
    bool force = false;  ///< publish even when the ack point did not change
    std::optional<Clock::time_point> last_sent;
    std::optional<AckPoint> last_published;
  };

  Impl(const IngestConfig& config_in, Store& store_in, agent::Env& env_in, agent::Logger& log_in)
      : config(config_in),
        store(store_in),
        env(env_in),
        log(log_in),
        events_filter(
            config.share_group.empty()
                ? config.topic_prefix + "/+/events"
                : fmt::format("$share/{}/{}/+/events", config.share_group, config.topic_prefix)),
        queue_capacity(std::max<std::size_t>(64, k_queue_batches * config.max_batch)),
        verifiers(std::clamp(std::thread::hardware_concurrency(), 1u, k_max_verifiers)),
        rng(std::random_device{}()) {}

  // ---- configuration ----

  Status configure() {
    auto address = agent::mqtt_connect::broker_address(config.url, config.source_file);
    if (!address) return std::unexpected(address.error());

    // Both options are members built in place: Paho C++ 1.2's move assignment of connect_options
    // leaves the C struct's pointer to the connect properties dangling (paho.mqtt.cpp #444, fixed
    // in 1.3).
    //
    // Events: MQTT 5 with a session kept by the broker: QoS 1 events published while the service is
    // down wait at the broker instead of only in the agents' outboxes.
    if (auto ok = set_shared_options(connect_options, /*clean_start=*/false, address->tls); !ok)
      return ok;
    mqtt::properties properties;
    properties.add(mqtt::property(mqtt::property::SESSION_EXPIRY_INTERVAL,
                                  whole_seconds(config.session_expiry, INT32_MAX)));
    connect_options.set_properties(properties);
    // The acks' own connection: clean start, no session (it subscribes to nothing, and an ack
    // lost with a connection is replaced by the device's next one or republished for the
    // agent's duplicate).
    if (auto ok = set_shared_options(acks_connect_options, /*clean_start=*/true, address->tls); !ok)
      return ok;

    auto events_client = make_client(address->paho_uri, config.client_id);
    if (!events_client) return std::unexpected(events_client.error());
    client = std::move(*events_client);
    auto ack_client = make_client(address->paho_uri, acks_client_id);
    if (!ack_client) return std::unexpected(ack_client.error());
    acks_client = std::move(*ack_client);
    // A lost acks connection wakes the ack publisher, which reconnects at once.
    acks_client->set_connection_lost_handler([this](const std::string&) { acks_lost(); });
    acks_client->set_disconnected_handler(
        [this](const mqtt::properties&, mqtt::ReasonCode) { acks_lost(); });
    client->set_message_callback([this](mqtt::const_message_ptr message) {
      enqueue(Message{message->get_topic(), message->to_string()});
    });
    client->set_connection_lost_handler([this](const std::string& cause) {
      post({Kind::connection_lost, 0, cause});
    });
    client->set_disconnected_handler([this](const mqtt::properties&, mqtt::ReasonCode reason) {
      post({Kind::connection_lost, 0,
            fmt::format("the broker disconnected (MQTT 5 reason code {:#x})",
                        static_cast<int>(reason))});
    });
    return {};
  }

  // What both connections share: MQTT 5, keep alive, connect timeout and credentials. The service
  // re-establishes each connection itself, with backoff and jitter, so Paho's automatic reconnect
  // is off.
  Status set_shared_options(mqtt::connect_options& options, bool clean_start, bool tls) const {
    options.set_mqtt_version(MQTTVERSION_5);
    options.set_clean_start(clean_start);
    options.set_keep_alive_interval(whole_seconds(config.keepalive));
    options.set_connect_timeout(whole_seconds(config.connect_timeout));
    options.set_automatic_reconnect(false);
    return agent::mqtt_connect::set_credentials(
        options, agent::mqtt_connect::credentials_of(config), tls, "MQTT");
  }

  // A Paho client without persistence: the store is the record of what arrived; what is not
  // acked the agents republish.
  Result<std::unique_ptr<mqtt::async_client>> make_client(const std::string& uri,
                                                          const std::string& client_id) const {
    try {
      return std::make_unique<mqtt::async_client>(
          uri, client_id, mqtt::create_options(MQTTVERSION_5, k_max_buffered),
          static_cast<mqtt::iclient_persistence*>(nullptr));
    } catch (const std::exception& e) {
      return agent::fail(agent::ErrorCode::invalid_config,
                         fmt::format("mqtt.url \"{}\": the MQTT client rejected it (client id "
                                     "\"{}\"): {}",
                                     config.url, client_id, e.what()));
    }
  }

  // ---- the bounded queue from Paho's callback to the worker ----

  // Runs on a Paho thread. Waiting here when the queue is full holds back Paho's reading, and so
  // the broker, instead of dropping anything.
  void enqueue(Message message) {
    std::unique_lock lock(messages_mutex);
    not_full.wait(lock, [&] { return messages.size() < queue_capacity || intake_closed; });
    if (intake_closed) return;  // stopping: not acked, so the agent republishes it
    messages.push_back(std::move(message));
    const std::size_t queued = messages.size();
    lock.unlock();
    not_empty.notify_one();
    std::lock_guard stats_lock(stats_mutex);
    ++stats.received;
    stats.queued = queued;
  }

  void close_intake() {
    {
      std::lock_guard lock(messages_mutex);
      intake_closed = true;
    }
    not_full.notify_all();
    not_empty.notify_all();
  }

  // ---- the worker thread: verification ----

  // Takes batches from the queue and verifies them, then hands each to the store thread. The two
  // overlap: while one batch waits for its commit (fsync), the next one is being verified.
  void work(std::stop_token stop) {
    while (!stop.stop_requested()) {
      std::vector<Message> batch;
      {
        std::unique_lock lock(messages_mutex);
        not_empty.wait_for(lock, stop, k_max_wait, [&] { return !messages.empty(); });
        take(batch);
      }
      if (batch.empty()) continue;
      not_full.notify_all();
      if (!verify_and_hand_over(std::move(batch), stop)) break;
    }
    // Stopping: what was queued before the intake closed is stored and acked, within the
    // deadline.
    for (;;) {
      std::vector<Message> batch;
      {
        std::lock_guard lock(messages_mutex);
        take(batch);
      }
      if (batch.empty() || env.steady_now() >= stop_deadline.load()) break;
      if (!verify_and_hand_over(std::move(batch), std::stop_token{})) break;
    }
    {
      std::lock_guard lock(handoff_mutex);
      handoff_done = true;
    }
    handoff_cv.notify_all();
    std::size_t left = 0;
    {
      std::lock_guard lock(messages_mutex);
      left = messages.size();
      messages.clear();
    }
    if (left > 0)
      log.warning(k_component,
                  "stopping with {} envelopes received but not stored; they are not acked, so "
                  "their agents republish them",
                  left);
  }

  // Moves up to max_batch queued messages into `batch` (messages_mutex held).
  void take(std::vector<Message>& batch) {
    const std::size_t n = std::min<std::size_t>(messages.size(), config.max_batch);
    batch.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      batch.push_back(std::move(messages.front()));
      messages.pop_front();
    }
    std::lock_guard stats_lock(stats_mutex);
    stats.queued = messages.size();
  }

  // Verifies `messages` (retrying while the registry cannot be read) and hands the batch to the
  // store thread, waiting while the one before it is still waiting there. False: given up (stop
  // requested, stop deadline passed, or the store thread has ended); nothing of it is acked.
  bool verify_and_hand_over(std::vector<Message> messages, std::stop_token stop) {
    Pending pending;
    pending.messages = std::move(messages);
    pending.checks.reserve(pending.messages.size());
    // The vector's elements stay where they are when `pending` moves: the checks point at them.
    for (const Message& message : pending.messages) {
      auto device = device_of_events_topic(message.topic, config.topic_prefix);
      if (!device) {
        // The subscription only matches PREFIX/+/events; anything else is not ours.
        log.warning(k_component, "ignoring a message on {}: not {}/DEVICE/events", message.topic,
                    config.topic_prefix);
        continue;
      }
      pending.checks.push_back(Check{&message, std::move(*device), std::nullopt});
    }
    if (pending.checks.empty()) return true;
    std::uint32_t attempt = 0;
    for (;;) {
      verify_all(pending.checks);
      std::optional<agent::Error> error = first_error(pending.checks);
      if (!error) break;
      if (!retry_after_error(*error, pending.messages.size(), attempt, stop)) return false;
    }
    std::unique_lock lock(handoff_mutex);
    handoff_cv.wait(lock, [&] { return !handoff || store_ended; });
    if (store_ended) {
      log.warning(k_component,
                  "stopping with {} envelopes not stored; they are not acked, so their agents "
                  "republish them",
                  pending.messages.size());
      return false;
    }
    handoff = std::move(pending);
    lock.unlock();
    handoff_cv.notify_all();
    return true;
  }

  static std::optional<agent::Error> first_error(const std::vector<Check>& checks) {
    for (const Check& check : checks) {
      if (!*check.outcome) return check.outcome->error();
    }
    return std::nullopt;
  }

  // Logs and counts a failed store attempt (key lookup or put) and sleeps its backoff. False when
  // the retries must end: stop requested, or the stop deadline passed.
  bool retry_after_error(const agent::Error& error, std::size_t envelopes, std::uint32_t& attempt,
                         std::stop_token stop) {
    const auto delay = store_backoff(attempt);
    if (attempt < 62) ++attempt;
    const std::string message =
        fmt::format("storing {} envelopes failed: {}", envelopes, error.message);
    log.error(k_component, "{}; nothing of them is acked; retrying in {}", message,
              agent::format_duration(delay));
    {
      std::lock_guard lock(stats_mutex);
      ++stats.store_errors;
      stats.last_error = message;
    }
    // stop_deadline is max() until stop() sets it; from then on it bounds every retry.
    const auto deadline = stop_deadline.load();
    const auto until = std::min(env.steady_now() + Clock::duration(delay), deadline);
    const bool slept = env.steady_now() < deadline && env.sleep_until(until, stop) &&
                       env.steady_now() < stop_deadline.load();
    if (!slept)
      log.warning(k_component,
                  "stopping with {} envelopes not stored; they are not acked, so their agents "
                  "republish them",
                  envelopes);
    return slept;
  }

  // ---- the store thread: commit and acks ----

  // Stores the verified batches one transaction each and decides the acks. Ends once the worker
  // has handed over its last batch and that is stored (or abandoned at the stop deadline).
  void store_batches(std::stop_token stop) {
    for (;;) {
      std::optional<Pending> pending;
      bool done = false;
      {
        std::unique_lock lock(handoff_mutex);
        const auto timeout = std::clamp<Clock::duration>(next_ack_due - env.steady_now(),
                                                         Clock::duration::zero(), k_max_wait);
        handoff_cv.wait_for(lock, timeout, [&] { return handoff.has_value() || handoff_done; });
        if (handoff) {
          pending = std::move(handoff);
          handoff.reset();
        } else {
          done = handoff_done;
        }
      }
      if (pending) {
        handoff_cv.notify_all();
        if (!store_pending(*pending, stop)) break;
      }
      if (done) break;
      publish_due_acks();
    }
    publish_due_acks(/*final=*/true);
    {
      std::lock_guard lock(handoff_mutex);
      store_ended = true;
      handoff.reset();
    }
    handoff_cv.notify_all();
  }

  // Stores one verified batch in one transaction, retrying (verifying again first: a revocation
  // may have come meanwhile) until it is stored. False: given up; nothing of it is acked.
  bool store_pending(Pending& pending, std::stop_token stop) {
    std::uint32_t attempt = 0;
    for (;;) {
      std::optional<agent::Error> error = first_error(pending.checks);
      if (!error) {
        std::vector<Incoming> incoming;
        incoming.reserve(pending.checks.size());
        for (Check& check : pending.checks) {
          auto& verified = *check.outcome;
          Incoming item;
          if (verified->has_value())
            item.event = std::move(verified->value());
          else
            item.rejection = std::move(verified->error());
          incoming.push_back(std::move(item));
        }
        auto results = store.put(incoming, env.now_unix_ms());
        if (results) {
          apply_results(incoming, *results);
          return true;
        }
        error = results.error();
      }
      if (!retry_after_error(*error, pending.messages.size(), attempt, stop)) return false;
      verify_all(pending.checks);
    }
  }

  // Verifies every check (again, on a retry: a key lookup may have failed) on up to `verifiers`
  // threads, the worker included; each registry key is looked up once for the batch.
  void verify_all(std::vector<Check>& checks) {
    BatchKeys keys(store);
    const KeyLookup find_key = [&keys](std::string_view kid) { return keys.find(kid); };
    std::atomic<std::size_t> next{0};
    auto run = [&] {
      for (std::size_t i = next.fetch_add(1, std::memory_order_relaxed); i < checks.size();
           i = next.fetch_add(1, std::memory_order_relaxed)) {
        Check& check = checks[i];
        check.outcome = verify_envelope_with(find_key, check.message->topic, check.device,
                                             check.message->payload);
      }
    };
    const std::size_t helpers =
        std::min<std::size_t>(verifiers - 1, checks.size() / k_envelopes_per_verifier);
    std::vector<std::jthread> threads;
    threads.reserve(helpers);
    for (std::size_t i = 0; i < helpers; ++i) {
      try {
        threads.emplace_back(run);
      } catch (const std::system_error&) {
        break;  // no thread to be had: the others, or the worker alone, verify the rest
      }
    }
    run();
  }  // joins the helpers

  milliseconds store_backoff(std::uint32_t attempt) const {
    milliseconds delay = k_store_retry_min;
    for (std::uint32_t i = 0; i < attempt && delay < k_store_retry_max; ++i)
      delay *= 2;
    return std::min<milliseconds>(delay, k_store_retry_max);
  }

  void apply_results(const std::vector<Incoming>& incoming, const std::vector<PutResult>& results) {
    std::uint64_t stored = 0;
    std::uint64_t duplicates = 0;
    std::uint64_t repeated = 0;
    std::uint64_t not_kept = 0;
    std::vector<std::string> reasons;
    const auto now = env.steady_now();
    for (std::size_t i = 0; i < incoming.size() && i < results.size(); ++i) {
      const Incoming& item = incoming[i];
      const PutResult& result = results[i];
      switch (result.outcome) {
        case PutOutcome::stored:
          ++stored;
          log.debug(k_component, "stored {} seq {} {}", item.event->device, item.event->seq,
                    item.event->action);
          // Storing it proved a held successor wrong: that one is a rejection now.
          if (!result.detail.empty() && log_limiter.admit(item.event->device, now))
            log.warning(k_component, "stored {} stream {} seq {}; {}", item.event->device,
                        item.event->stream, item.event->seq, result.detail);
          mark(item.event->device, false);
          break;
        case PutOutcome::duplicate:
          ++duplicates;
          log.debug(k_component, "duplicate {} seq {}", item.event->device, item.event->seq);
          mark(item.event->device, true);
          break;
        case PutOutcome::rejected:
          reasons.push_back(std::string(to_string(log_rejection(item, result, now))));
          if (result.kept == RejectionKept::repeat) ++repeated;
          if (result.kept == RejectionKept::counted) ++not_kept;
          break;
      }
    }
    for (const auto& summary : log_limiter.take_summaries(now))
      log.warning(k_component,
                  "{} more rejections of {} in {} were not logged; `reflow-ingest rejections` and "
                  "`reflow-ingest stats` have them",
                  summary.suppressed, summary.sender, agent::format_duration(k_log_limits.window));
    std::lock_guard lock(stats_mutex);
    stats.stored += stored;
    stats.duplicates += duplicates;
    stats.rejected += reasons.size();
    stats.rejections_repeated += repeated;
    stats.rejections_not_kept += not_kept;
    stats.rejection_logs_suppressed = log_limiter.suppressed_total();
    for (const auto& reason : reasons)
      ++stats.rejected_by_reason[reason];
  }

  RejectReason log_rejection(const Incoming& item, const PutResult& result,
                             RejectionLogLimiter::TimePoint now) {
    std::string device;
    std::optional<std::string> stream;
    std::optional<std::int64_t> seq;
    RejectReason reason = result.reason.value_or(RejectReason::malformed_jws);
    std::string detail = result.detail;
    if (item.event) {
      device = item.event->device;
      stream = item.event->stream;
      seq = item.event->seq;
    } else if (item.rejection) {
      device = item.rejection->device;
      stream = item.rejection->stream;
      seq = item.rejection->seq;
      if (!result.reason) reason = item.rejection->reason;
      if (detail.empty()) detail = item.rejection->detail;
    }
    if (log_limiter.admit(device, now))
      log.warning(k_component, "rejected {} stream {} seq {}: {}: {}{}", device,
                  stream.value_or("?"), seq ? std::to_string(*seq) : std::string("?"),
                  to_string(reason), detail,
                  result.kept == RejectionKept::repeat    ? " (a repeat: counted on its row)"
                  : result.kept == RejectionKept::counted ? " (over the sender's cap: counted only)"
                                                          : "");
    return reason;
  }

  void mark(const std::string& device, bool force) {
    DeviceAck& ack = acks[device];
    ack.dirty = true;
    ack.force = ack.force || force;
  }

  // Publishes the acks that are due; the others set next_ack_due. `final` ignores the interval:
  // the service is stopping and the last ack must not wait for a next time.
  void publish_due_acks(bool final = false) {
    const auto now = env.steady_now();
    next_ack_due = Clock::time_point::max();
    for (auto& [device, ack] : acks) {
      if (!ack.dirty) continue;
      if (!final && ack.last_sent && now < *ack.last_sent + config.ack_interval) {
        next_ack_due = std::min(next_ack_due, *ack.last_sent + config.ack_interval);
        continue;
      }
      auto point = store.ack_point(device);
      if (!point) {
        log.warning(k_component, "reading the ack point of {} failed: {}; retrying", device,
                    point.error().message);
        next_ack_due = std::min(next_ack_due, now + k_max_wait);
        continue;
      }
      if (!*point || (*point)->seq == 0) {
        ack.dirty = ack.force = false;
        continue;
      }
      const AckPoint& current = **point;
      if (!ack.force && ack.last_published && ack.last_published->stream == current.stream &&
          ack.last_published->seq == current.seq) {
        ack.dirty = false;
        continue;
      }
      hand_ack(device, current);
      ack.dirty = ack.force = false;
      ack.last_sent = now;
      ack.last_published = current;
    }
  }

  // ---- the ack publisher thread ----

  // The worker never calls Paho: Paho's receiving thread may be waiting in enqueue() for the
  // worker to make room, holding a lock that Paho's publish() needs. So acks go to their own
  // thread, through a map that keeps only the latest ack per device (bounded by the devices).
  void hand_ack(const std::string& device, const AckPoint& point) {
    nlohmann::ordered_json body;
    body["stream"] = point.stream;
    body["seq"] = point.seq;
    PendingAck ack{fmt::format("{}/{}/ack", config.topic_prefix, device), body.dump()};
    {
      std::lock_guard lock(acks_out_mutex);
      acks_out.insert_or_assign(device, std::move(ack));
    }
    acks_out_cv.notify_one();
  }

  // Publishes the acks handed over until stop is requested and none is left; stop() requests it
  // after the worker has handed over its last ones, so those go out before the disconnect.
  void publish_acks(std::stop_token stop) {
    std::deque<mqtt::delivery_token_ptr> in_flight;
    std::string cursor;  // the device after which the next round starts, so that none starves
    for (;;) {
      // Paho queues whatever it is handed and works through a long queue slowly (while a flood
      // holds its lock, tens of thousands of stale acks would pile up there); an ack waiting in
      // acks_out instead is replaced by its device's next one.
      settle(in_flight, ack_window - 1, stop);
      // Connected before the first ack is due (connecting a second client takes Paho a second or
      // two), and again after a lost connection.
      if (!acks_client->is_connected() && !connect_acks(stop)) {
        if (!stop.stop_requested()) continue;  // connect_acks() waited its backoff
        if (std::lock_guard lock(acks_out_mutex); acks_out.empty()) break;
        drop_unpublished_acks("not connected");
        break;
      }
      const std::size_t window = ack_window;
      std::map<std::string, PendingAck> round;
      {
        std::unique_lock lock(acks_out_mutex);
        acks_out_cv.wait(lock, stop, [&] { return !acks_out.empty() || acks_down; });
        if (acks_out.empty()) {
          if (stop.stop_requested()) break;  // stopping, all handed to Paho
          continue;                          // the acks connection was lost: reconnect
        }
        auto it = acks_out.upper_bound(cursor);
        while (round.size() + in_flight.size() < window && !acks_out.empty()) {
          if (it == acks_out.end()) it = acks_out.begin();
          auto next = std::next(it);
          cursor = it->first;
          round.insert(acks_out.extract(it));
          it = next;
        }
      }
      std::uint64_t published = 0;
      std::string failure;
      for (auto it = round.begin(); it != round.end();) {
        try {
          in_flight.push_back(acks_client->publish(
              mqtt::make_message(it->second.topic, it->second.body, k_qos, true)));
          ++published;
          it = round.erase(it);
        } catch (const std::exception& e) {
          failure = fmt::format("publishing the ack on {} failed: {}", it->second.topic, e.what());
          ++it;
        }
      }
      if (published > 0) {
        std::lock_guard lock(stats_mutex);
        stats.acks_published += published;
      }
      if (round.empty()) continue;
      const std::size_t failed = round.size();
      // Not connected: try again shortly, except where the worker has handed over a newer ack
      // meanwhile (merge keeps that one).
      {
        std::lock_guard lock(acks_out_mutex);
        acks_out.merge(round);
      }
      if (!stop.stop_requested()) {
        log.debug(k_component, "{} ({} acks not published); retrying", failure, failed);
        std::unique_lock lock(acks_out_mutex);
        acks_out_cv.wait_for(lock, stop, k_ack_retry, [] { return false; });
        continue;
      }
      if (!acks_client->is_connected() || env.steady_now() >= stop_deadline.load()) {
        drop_unpublished_acks(failure);
        break;
      }
      std::this_thread::sleep_for(k_ack_retry);
    }
    // The last acks reach the broker before stop() disconnects, unless the deadline passes.
    settle(in_flight, 0, stop);
  }

  // Forgets the acks the broker has confirmed, waiting (each at most k_ack_delivery_wait, and
  // when stopping only while connected and before the deadline) until at most `keep` are left.
  void settle(std::deque<mqtt::delivery_token_ptr>& in_flight, std::size_t keep,
              std::stop_token stop) {
    while (!in_flight.empty()) {
      const mqtt::delivery_token_ptr& token = in_flight.front();
      if (!token->is_complete()) {
        if (in_flight.size() <= keep) return;
        if (stop.stop_requested() &&
            (!acks_client->is_connected() || env.steady_now() >= stop_deadline.load())) {
          in_flight.clear();  // Paho still has them; nobody waits for them any more
          return;
        }
        try {
          token->wait_for(k_ack_delivery_wait);
        } catch (const std::exception&) {
          // Failed (connection lost): a later ack of the device replaces it, and the agent
          // republishes what it has not seen acked.
        }
      }
      in_flight.pop_front();  // confirmed, failed, or not confirmed within the wait: Paho's now
    }
  }

  // Runs on a Paho thread when the acks connection is lost.
  void acks_lost() {
    {
      std::lock_guard lock(acks_out_mutex);
      acks_down = true;
    }
    acks_out_cv.notify_all();
  }

  // Stopping: forgets the acks not handed to Paho, which the agents make up for.
  void drop_unpublished_acks(std::string_view why) {
    std::size_t left = 0;
    {
      std::lock_guard lock(acks_out_mutex);
      left = std::exchange(acks_out, {}).size();
    }
    log.warning(k_component,
                "stopping with {} acks not published ({}); the agents keep those events and "
                "republish them",
                left, why);
  }

  // Connects the acks' connection (on the ack publisher thread). The acks have a connection of
  // their own because on the events connection the broker's PUBACK to an ack waits behind every
  // event it has queued for the service: draining a backlog of 500 000 events, no ack was
  // confirmed for 25 s, so the agents would have started republishing. False: not connected
  // (stop requested, or the attempt failed and its backoff has been waited out).
  bool connect_acks(std::stop_token stop) {
    bool was_connected = false;
    {
      std::lock_guard lock(stats_mutex);
      was_connected = std::exchange(stats.acks_connected, false);
    }
    if (was_connected)
      log.warning(k_component, "acks connection to {} lost; reconnecting", config.url);
    {
      std::lock_guard lock(acks_out_mutex);
      acks_down = false;  // this attempt sees the loss; a later one sets it again
    }
    std::string failure;
    mqtt::token_ptr token;
    try {
      token = acks_client->connect(acks_connect_options);
      // Paho enforces connect_timeout; the margin only bounds a missing answer.
      const auto give_up =
          std::chrono::steady_clock::now() + config.connect_timeout + k_connect_grace;
      while (!token->wait_for(k_max_wait)) {
        if (stop.stop_requested()) return false;
        if (std::chrono::steady_clock::now() >= give_up)
          throw std::runtime_error("no answer within mqtt.connect_timeout");
      }
      const std::size_t receive_maximum = receive_maximum_of(*token);
      // One below the Receive Maximum: a window of exactly the maximum still stalls now and then
      // (`reflow-ingest-bench --backlog`: 12 100-13 800 events/s, against 14 500-15 600 one
      // below), as if Paho completed a token before taking its publish out of its own count.
      const std::size_t window =
          std::min(k_acks_in_flight, std::max<std::size_t>(receive_maximum, 2) - 1);
      ack_window = window;
      acks_attempt = 0;
      log.info(k_component, "acks connection: connected to {} as {}", config.url, acks_client_id);
      log.debug(k_component, "the broker's Receive Maximum is {}: at most {} acks in flight",
                receive_maximum, window);
      std::lock_guard lock(stats_mutex);
      stats.acks_connected = true;
      stats.ack_window = window;
      return true;
    } catch (const std::exception& e) {
      // A refused connect: the broker's reason, worded as for the events connection.
      failure = agent::mqtt_connect::connect_failure_cause(
          config.url, agent::mqtt_connect::credentials_of(config),
          token && token->is_complete() ? paho_error(*token) : e.what(), config.connect_timeout,
          stop);
    }
    const auto delay = agent::mqtt_connect::reconnect_backoff(
        config.reconnect_min, config.reconnect_max, acks_attempt, acks_rng);
    if (acks_attempt < 62) ++acks_attempt;
    const auto message = fmt::format("acks connection: cannot connect to {} as {}: {}", config.url,
                                     acks_client_id, failure);
    log.warning(k_component, "{}; retrying in {}", message, agent::format_duration(delay));
    {
      std::lock_guard lock(stats_mutex);
      stats.acks_connected = false;
      stats.last_error = message;
    }
    // Real time, like Paho's own timeouts; stop() ends the wait.
    std::unique_lock lock(acks_out_mutex);
    acks_out_cv.wait_for(lock, stop, delay, [] { return false; });
    return false;
  }

  // ---- the connection thread ----

  void post(Event event) { events.post(std::move(event)); }

  std::deque<Event> wait_events(std::stop_token stop, Clock::duration timeout) {
    return events.wait(stop,
                       std::clamp<Clock::duration>(timeout, Clock::duration::zero(), k_max_wait));
  }

  // A listener whose answers reach the connection thread as `ok` and `failed` events; a SUBACK
  // that refuses a filter is a failure.
  agent::mqtt_connect::Listener listener(Kind ok, Kind failed) {
    return {[this, ok, failed](const mqtt::token& token) {
              if (ok == Kind::subscribe_ok) {
                if (auto refused = subscribe_refusal(token)) {
                  post({failed, generation_of(token), *refused});
                  return;
                }
              }
              post({ok, generation_of(token), {}});
            },
            [this, failed](const mqtt::token& token) {
              post({failed, generation_of(token), paho_error(token)});
            }};
  }

  void connection(std::stop_token stop) {
    std::uint32_t attempt = 0;
    while (!stop.stop_requested()) {
      if (connect(stop)) {
        attempt = 0;
        session(stop);
        if (stop.stop_requested()) break;
      }
      const auto delay = agent::mqtt_connect::reconnect_backoff(config.reconnect_min,
                                                                config.reconnect_max, attempt, rng);
      if (attempt < 62) ++attempt;
      log.debug(k_component, "reconnecting to {} in {} ms", config.url, delay.count());
      if (!env.sleep_until(env.steady_now() + delay, stop)) break;
    }
  }

  bool connect(std::stop_token stop) {
    ++generation;
    try {
      client->connect(connect_options, context_of(generation), connect_listener);
    } catch (const std::exception& e) {
      connect_failed(e.what());
      return false;
    }
    // Paho's connect timeout runs on the real clock, so the margin does too (not on env's, which
    // tests move at their own pace).
    const auto give_up =
        std::chrono::steady_clock::now() + config.connect_timeout + k_connect_grace;
    while (!stop.stop_requested()) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          give_up - std::chrono::steady_clock::now());
      for (const Event& event : wait_events(stop, left)) {
        // A lost connection reported late belongs to the previous one.
        if (event.kind == Kind::connection_lost || event.generation != generation) continue;
        if (event.kind == Kind::connect_ok) {
          connected();
          return true;
        }
        if (event.kind == Kind::connect_failed) {
          connect_failed(agent::mqtt_connect::connect_failure_cause(
              config.url, agent::mqtt_connect::credentials_of(config), event.text,
              config.connect_timeout, stop));
          return false;
        }
      }
      if (std::chrono::steady_clock::now() >= give_up) {
        connect_failed("no answer within mqtt.connect_timeout");
        return false;
      }
    }
    return false;
  }

  void connect_failed(const std::string& why) {
    auto message = fmt::format("cannot connect to {}: {}", config.url, why);
    log.warning(k_component, "{}; retrying with backoff", message);
    std::lock_guard lock(stats_mutex);
    stats.last_error = std::move(message);
  }

  void connected() {
    log.info(k_component, "connected to {} as {}", config.url, config.client_id);
    {
      std::lock_guard lock(stats_mutex);
      stats.connected = true;
      ++stats.connects;
    }
    try {
      client->subscribe(events_filter, k_qos, context_of(generation), subscribe_listener);
    } catch (const std::exception& e) {
      post({Kind::subscribe_failed, generation, e.what()});
    }
  }

  // Runs one connection until it is lost or stop is requested.
  void session(std::stop_token stop) {
    while (!stop.stop_requested()) {
      for (const Event& event : wait_events(stop, k_max_wait)) {
        switch (event.kind) {
          case Kind::connection_lost:
            lost(event.text.empty() ? "connection lost" : "connection lost: " + event.text);
            return;
          case Kind::subscribe_ok:
            if (event.generation != generation) break;
            subscribed();
            break;
          case Kind::subscribe_failed:
            if (event.generation != generation) break;
            log.error(k_component, "subscribing to {} failed: {}; reconnecting", events_filter,
                      event.text);
            try {
              client->disconnect(0)->wait_for(std::chrono::seconds(1));
            } catch (const std::exception&) {
              // Already gone; the reconnect is what matters.
            }
            lost("subscribing to " + events_filter + " failed: " + event.text);
            return;
          case Kind::connect_ok:
          case Kind::connect_failed:
            break;
        }
      }
    }
  }

  void subscribed() {
    if (!ever_subscribed) {
      log.info(k_component, "ready: subscribed to {} at {} (QoS 1, session kept {} by the broker)",
               events_filter, config.url, agent::format_duration(config.session_expiry));
    } else {
      log.info(k_component, "subscribed to {} again", events_filter);
    }
    ever_subscribed = true;
    std::lock_guard lock(stats_mutex);
    stats.subscribed = true;
  }

  void lost(const std::string& why) {
    log.warning(k_component, "disconnected from {}: {}", config.url, why);
    std::lock_guard lock(stats_mutex);
    stats.connected = false;
    stats.subscribed = false;
    stats.last_error = fmt::format("{}: {}", config.url, why);
  }

  // Disconnects within the stop deadline; a dead broker costs at most that deadline.
  void shutdown() {
    const auto remaining = [&] {
      return std::max(
          std::chrono::duration_cast<milliseconds>(stop_deadline.load() - env.steady_now()),
          milliseconds(0));
    };
    if (acks_client && acks_client->is_connected()) {
      try {
        acks_client->disconnect(0)->wait_for(remaining());
      } catch (const std::exception& e) {
        log.warning(k_component, "disconnecting the acks connection: {}", e.what());
      }
    }
    if (client->is_connected()) {
      try {
        // Keeps the broker session (session_expiry): events published while the service is
        // down are queued for it.
        if (!client->disconnect(0)->wait_for(remaining()))
          log.warning(k_component, "disconnecting from {} did not finish before the deadline",
                      config.url);
      } catch (const std::exception& e) {
        log.warning(k_component, "disconnecting from {}: {}", config.url, e.what());
      }
    }
    try {
      client->disable_callbacks();
    } catch (const std::exception&) {
      // Paho refuses while a connection is being torn down; nothing more is handled anyway.
    }
    std::lock_guard lock(stats_mutex);
    stats.connected = false;
    stats.subscribed = false;
    stats.acks_connected = false;
  }

  const IngestConfig config;
  Store& store;
  agent::Env& env;
  agent::Logger& log;
  const std::string events_filter;
  const std::size_t queue_capacity;
  const unsigned verifiers;  ///< threads verifying a batch, the worker included

  // Declared before the client: Paho may call into them until the client is destroyed.
  agent::mqtt_connect::EventQueue<Event> events;
  agent::mqtt_connect::Listener connect_listener = listener(Kind::connect_ok, Kind::connect_failed);
  agent::mqtt_connect::Listener subscribe_listener =
      listener(Kind::subscribe_ok, Kind::subscribe_failed);

  std::mutex messages_mutex;
  std::condition_variable_any not_empty;
  std::condition_variable not_full;
  std::deque<Message> messages;
  bool intake_closed = false;

  mutable std::mutex stats_mutex;
  IngestCounters stats;
  RejectionLogLimiter log_limiter{k_log_limits};  ///< the store thread's

  // Set by stop(), read by the worker and store threads while they run.
  std::atomic<Clock::time_point> stop_deadline{Clock::time_point::max()};

  // From the worker to the store thread: one verified batch at a time, so that verifying the
  // next batch overlaps committing this one while memory stays bounded.
  std::mutex handoff_mutex;
  std::condition_variable handoff_cv;
  std::optional<Pending> handoff;
  bool handoff_done = false;  ///< the worker has handed over its last batch
  bool store_ended = false;   ///< the store thread takes nothing more

  // Owned by the connection thread.
  std::mt19937_64 rng;
  std::uint64_t generation = 0;  ///< one per connect attempt; tags Paho answers
  bool ever_subscribed = false;

  // Owned by the ack publisher thread (the acks' connection). ack_window: acks in flight at most,
  // k_acks_in_flight or one below the broker's Receive Maximum; set on each connect.
  std::size_t ack_window = k_acks_in_flight;
  std::uint32_t acks_attempt = 0;
  std::mt19937_64 acks_rng{std::random_device{}()};

  // From the worker to the ack publisher: the latest ack per device.
  std::mutex acks_out_mutex;
  std::condition_variable_any acks_out_cv;
  std::map<std::string, PendingAck> acks_out;
  bool acks_down = false;  ///< the acks connection was lost since the last connect attempt

  // Owned by the store thread.
  std::map<std::string, DeviceAck> acks;
  Clock::time_point next_ack_due = Clock::time_point::max();

  mqtt::connect_options connect_options;
  std::unique_ptr<mqtt::async_client> client;
  const std::string acks_client_id = config.client_id + std::string(k_acks_client_suffix);
  mqtt::connect_options acks_connect_options;
  std::unique_ptr<mqtt::async_client> acks_client;
  std::jthread connection_thread;
  std::jthread ack_thread;
  std::jthread store_thread;
  std::jthread worker_thread;
  bool started = false;
};

IngestService::IngestService(const IngestConfig& config, Store& store, agent::Env& env,
                             agent::Logger& log)
    : m_impl(std::make_unique<Impl>(config, store, env, log)) {}

IngestService::~IngestService() {
  stop();
}

Status IngestService::start() {
  if (m_impl->started) return {};
  if (auto ok = m_impl->configure(); !ok) return ok;
  try {
    m_impl->ack_thread =
        std::jthread([impl = m_impl.get()](std::stop_token stop) { impl->publish_acks(stop); });
    m_impl->store_thread =
        std::jthread([impl = m_impl.get()](std::stop_token stop) { impl->store_batches(stop); });
    m_impl->worker_thread =
        std::jthread([impl = m_impl.get()](std::stop_token stop) { impl->work(stop); });
    m_impl->connection_thread =
        std::jthread([impl = m_impl.get()](std::stop_token stop) { impl->connection(stop); });
  } catch (const std::exception& e) {
    m_impl->worker_thread = {};
    m_impl->close_intake();
    {
      std::lock_guard lock(m_impl->handoff_mutex);
      m_impl->handoff_done = true;
    }
    m_impl->handoff_cv.notify_all();
    m_impl->store_thread = {};
    m_impl->ack_thread = {};
    return agent::fail(agent::ErrorCode::internal,
                       fmt::format("cannot start the ingest threads: {}", e.what()));
  }
  m_impl->started = true;
  m_impl->log.info(k_component, "receiving {} from {} into the store", m_impl->events_filter,
                   m_impl->config.url);
  return {};
}

void IngestService::stop(std::int64_t deadline_ms) {
  if (!m_impl->started) return;
  m_impl->started = false;
  m_impl->stop_deadline = m_impl->env.steady_now() + milliseconds(deadline_ms);
  // Order: no new envelopes; the worker verifies what is queued and the store thread stores it
  // and hands over its acks; the ack publisher publishes them while still connected; then the
  // connection goes.
  m_impl->close_intake();
  m_impl->worker_thread.request_stop();
  m_impl->worker_thread.join();
  m_impl->store_thread.request_stop();
  m_impl->store_thread.join();
  m_impl->ack_thread.request_stop();
  m_impl->ack_thread.join();
  m_impl->connection_thread.request_stop();
  m_impl->connection_thread.join();
  m_impl->shutdown();
}

IngestCounters IngestService::counters() const {
  std::lock_guard lock(m_impl->stats_mutex);
  return m_impl->stats;
}

}  // namespace ingest
