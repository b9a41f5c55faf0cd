// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/forwarder.hpp>

#include <mqtt/async_client.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <reflow/core/mqtt_connect.hpp>

namespace agent {
namespace {

constexpr std::string_view k_component = "forwarder";
constexpr std::size_t k_read_batch = 64;
// Bounds one wait of the forwarder thread, so that a clock that is not the real one (FakeEnv) is
// looked at again within this time even when nothing else wakes the thread.
constexpr auto k_max_wait = std::chrono::seconds(1);
// Paho enforces connect_timeout itself; this is only the extra margin before the forwarder stops
// waiting for an answer that Paho should already have given.
constexpr auto k_connect_grace = std::chrono::seconds(5);
constexpr int k_qos = 1;

using Clock = std::chrono::steady_clock;
using mqtt_connect::context_of;
using mqtt_connect::generation_of;
using mqtt_connect::paho_error;
using mqtt_connect::whole_seconds;

}  // namespace

struct Forwarder::Impl {
  enum class Kind {
    connect_ok,
    connect_failed,
    connection_lost,
    message,
    publish_ok,
    publish_failed,
    subscribe_ok,
    subscribe_failed,
    reload,  ///< SIGHUP: read mqtt.password_file again
  };

  // What a Paho thread hands to the forwarder thread; Paho threads do nothing else.
  struct Event {
    Kind kind;
    std::uint64_t generation = 0;
    const mqtt::token* token = nullptr;
    std::string topic;
    std::string text;  ///< payload, cause or error
  };

  struct Inflight {
    mqtt::delivery_token_ptr token;
    std::int64_t seq = 0;
    bool republish = false;
  };

  Impl(const AgentConfig& config_in, Outbox& outbox_in, Env& env_in, Logger& log_in,
       std::string version_in)
      : config(config_in),
        outbox(outbox_in),
        env(env_in),
        log(log_in),
        version(std::move(version_in)),
        device_topic(config.topic_prefix + "/" + config.device_id),
        events_topic(device_topic + "/events"),
        ack_topic(device_topic + "/ack"),
        status_topic(device_topic + "/status"),
        backoff(config.reconnect_min, config.reconnect_max) {
    std::lock_guard lock(stats_mutex);
    stats.broker_url = config.url;
    stats.state_since_unix_ms = env.now_unix_ms();
  }

  // ---- configuration and start ----

  Status configure() {
    auto address = mqtt_connect::broker_address(config.url, config.source_file);
    if (!address) return std::unexpected(address.error());
    if (config.device_id.empty())
      return fail(ErrorCode::invalid_config, "agent.device_id is empty; set it in the config");
    if (config.max_inflight == 0)
      return fail(ErrorCode::invalid_config, "mqtt.max_inflight is 0; it must be at least 1");

    mqtt::connect_options options;
    // The outbox is the one record of what is unacknowledged, so nothing is kept at the broker
    // or in Paho between connections: every connect republishes from acked+1.
    options.set_clean_session(true);
    options.set_keep_alive_interval(whole_seconds(config.keepalive));
    options.set_connect_timeout(whole_seconds(config.connect_timeout));
    options.set_max_inflight(static_cast<int>(config.max_inflight));
    // The forwarder reconnects itself with backoff and jitter, and republishes on each connect.
    options.set_automatic_reconnect(false);
    if (auto ok = mqtt_connect::set_credentials(options, mqtt_connect::credentials_of(config),
                                                address->tls, "MQTT 3.1.1");
        !ok)
      return ok;
    if (auto ok = mqtt_connect::set_proxy(options, config.proxy); !ok) return ok;
    const std::string offline = R"({"state":"offline"})";
    options.set_will(mqtt::will_options(status_topic, offline, k_qos, true));
    connect_options = std::move(options);
    tls = address->tls;

    paho_uri = address->paho_uri;
    client_id = config.client_id.empty() ? "reflow-agent-" + config.device_id : config.client_id;
    if (!config.node_jwk.empty()) {
      auto jwk = load_node_jwk(config.node_jwk, config.source_file);
      if (!jwk) return std::unexpected(jwk.error());
      node_key = std::move(*jwk);
      log.info(k_component, "acks are verified: pruning only on acks signed by node key {} ({})",
               node_key->kid, config.node_jwk.string());
    } else {
      log.warning(k_component,
                  "acks are NOT verified (no mqtt.node_jwk): any client that can write {} can "
                  "make this agent prune events (PROTOCOL §5.1)",
                  ack_topic);
    }
    {
      std::lock_guard lock(stats_mutex);
      if (node_key) stats.node_kid = node_key->kid;
    }
    if (auto made = make_client(); !made) return made;
    stream = outbox.stats().stream;
    return {};
  }

  // A new Paho client for every connection: Paho keeps the publishes it had not yet sent when a
  // connection dropped and sends them first on the next one, ahead of the republish from acked+1,
  // which would break the seq order of PROTOCOL §5. The outbox, not Paho, says what to send.
  Status make_client() {
    if (client) {
      try {
        client->disable_callbacks();
      } catch (const std::exception&) {
        // Paho refuses while its connection is being torn down; the client is dropped anyway.
      }
      client.reset();
    }
    try {
      // No persistence: a null iclient_persistence means none in Paho (async_client.h).
      client = std::make_unique<mqtt::async_client>(
          paho_uri, client_id, static_cast<mqtt::iclient_persistence*>(nullptr));
    } catch (const std::exception& e) {
      return fail(
          ErrorCode::invalid_config,
          fmt::format("mqtt.url \"{}\": the MQTT client rejected it: {}", config.url, e.what()));
    }
    client->set_message_callback([this](mqtt::const_message_ptr message) {
      post({Kind::message, 0, nullptr, message->get_topic(), message->to_string()});
    });
    client->set_connection_lost_handler([this](const std::string& cause) {
      post({Kind::connection_lost, 0, nullptr, {}, cause});
    });
    client_used = false;
    return {};
  }

  // ---- the queue between Paho threads and the forwarder thread ----

  void post(Event event) { queue.post(std::move(event)); }
  void wake() { queue.wake(); }

  // Waits up to `timeout` (at most k_max_wait) for an event, a wake-up or stop; returns what was
  // queued.
  std::deque<Event> wait_events(std::stop_token stop, Clock::duration timeout) {
    return queue.wait(stop,
                      std::clamp<Clock::duration>(timeout, Clock::duration::zero(), k_max_wait));
  }

  // A listener whose answers reach the forwarder thread as `ok` and `failed` events.
  mqtt_connect::Listener listener(Kind ok, Kind failed) {
    return {[this, ok](const mqtt::token& token) {
              post({ok, generation_of(token), &token, {}, {}});
            },
            [this, failed](const mqtt::token& token) {
              post({failed, generation_of(token), &token, {}, paho_error(token)});
            }};
  }

  // ---- the forwarder thread ----

  void run(std::stop_token stop) {
    mqtt_connect::reconnect_loop(
        stop, env, backoff,
        [this](std::stop_token s) {
          if (!connect(s)) return false;
          session(s);
          return true;
        },
        [this](std::chrono::milliseconds delay) {
          log.debug(k_component, "reconnecting to {} in {} ms", config.url, delay.count());
        });
    shutdown();
  }

  bool connect(std::stop_token stop) {
    ++generation;
    if (client_used) {
      if (auto made = make_client(); !made) {
        connect_failed(made.error().message);
        return false;
      }
    }
    client_used = true;
    // The password file may have changed since the last connect (a rotated password): each
    // connect reads it again, and a file that became unreadable is this attempt's failure.
    if (auto ok = refresh_credentials(); !ok) {
      connect_failed(ok.error().message);
      return false;
    }
    try {
      client->connect(connect_options, context_of(generation), connect_listener);
    } catch (const std::exception& e) {
      connect_failed(e.what());
      return false;
    }
    const auto answer = mqtt_connect::await_connect(
        queue, generation, Kind::connect_ok, Kind::connect_failed, Kind::connection_lost,
        env.steady_now() + config.connect_timeout + k_connect_grace, stop,
        [this] { return env.steady_now(); },
        [&](Clock::duration left) { return wait_events(stop, left); });
    if (answer.state == mqtt_connect::ConnectOutcome::State::connected) {
      connected();
      return true;
    }
    if (answer.state == mqtt_connect::ConnectOutcome::State::failed)
      // Paho's "MQTT error [-1]: Failure" told apart here, on the forwarder thread.
      connect_failed(mqtt_connect::connect_failure_cause(
          config.url, mqtt_connect::credentials_of(config), answer.failure, config.connect_timeout,
          stop, config.proxy));
    return false;
  }

  // " through proxy http://…" for the log when mqtt.proxy is set.
  std::string via_proxy() const {
    return config.proxy.empty() ? std::string() : " through proxy " + config.proxy;
  }

  Status refresh_credentials() {
    return mqtt_connect::set_credentials(connect_options, mqtt_connect::credentials_of(config), tls,
                                         "MQTT 3.1.1");
  }

  // SIGHUP during a session: a changed password takes effect at once, by reconnecting with it;
  // an unchanged or unreadable one leaves the session as it is. Returns false to reconnect.
  bool reload_password() {
    if (config.password_file.empty()) {
      log.info(k_component, "SIGHUP: no mqtt.password_file to read again");
      return true;
    }
    auto password = mqtt_connect::read_password_file(config.password_file);
    if (!password) {
      log.error(k_component, "SIGHUP: {}; keeping the current connection",
                password.error().message);
      return true;
    }
    if (*password == connect_options.get_password_str()) {
      log.info(k_component, "SIGHUP: mqtt.password_file {} unchanged",
               config.password_file.string());
      return true;
    }
    log.info(k_component, "SIGHUP: mqtt.password_file {} changed; reconnecting with it",
             config.password_file.string());
    try {
      client->disconnect(0);
    } catch (const std::exception&) {
      // Already gone; the reconnect is what matters.
    }
    lost("reconnecting with the new mqtt.password_file");
    return false;
  }

  void connect_failed(const std::string& why) {
    auto message = fmt::format("cannot connect to {}: {}", config.url, why);
    log.warning(k_component, "{}; retrying with backoff", message);
    std::lock_guard lock(stats_mutex);
    stats.last_error = std::move(message);
  }

  void connected() {
    auto outbox_stats = outbox.stats();
    acked = std::max(outbox_stats.acked_seq, unrecorded_ack.value_or(0));
    known_last.store(std::max(known_last.load(), outbox_stats.last_seq));
    cursor = acked + 1;
    sent_through = acked;
    pending.clear();
    inflight.clear();
    progress_at = env.steady_now();
    log.info(k_component, "connected to {}{}; publishing from seq {}", config.url, via_proxy(),
             cursor);
    {
      std::lock_guard lock(stats_mutex);
      stats.connected = true;
      stats.state_since_unix_ms = env.now_unix_ms();
      stats.next_seq = cursor;
      ++stats.connects;
      // The connection fault is over; an ack the disk could not record is not, and stays shown.
      if (!unrecorded_ack) stats.last_error.clear();
    }
    try {
      client->subscribe(ack_topic, k_qos, context_of(generation), subscribe_listener);
    } catch (const std::exception& e) {
      post({Kind::subscribe_failed, generation, nullptr, {}, e.what()});
    }
    publish_status();
  }

  // Runs one connection until it is lost or stop is requested.
  void session(std::stop_token stop) {
    while (!stop.stop_requested()) {
      auto now = env.steady_now();
      if (outstanding() && now >= progress_at + config.resend_after) {
        log.info(k_component,
                 "no ack beyond seq {} for {} ms; republishing from seq {} (PROTOCOL §5)", acked,
                 config.resend_after.count(), acked + 1);
        move_cursor(acked + 1);
        progress_at = now;
      }
      retry_unrecorded_ack();
      pump();
      if (now >= next_status_at) publish_status();
      Clock::time_point next = next_status_at;
      if (outstanding()) next = std::min(next, progress_at + config.resend_after);
      for (auto& event : wait_events(stop, next - env.steady_now())) {
        if (!handle(event)) return;
      }
    }
  }

  // Returns false when the connection is gone.
  bool handle(const Event& event) {
    switch (event.kind) {
      case Kind::connection_lost:
        lost(event.text.empty() ? "connection lost" : "connection lost: " + event.text);
        return false;
      case Kind::subscribe_failed:
        if (event.generation != generation) return true;
        log.error(k_component, "subscribing to {} failed: {}; reconnecting", ack_topic, event.text);
        try {
          client->disconnect(0);
        } catch (const std::exception&) {
          // Already gone; the reconnect below is what matters.
        }
        lost("subscribe to " + ack_topic + " failed: " + event.text);
        return false;
      case Kind::message:
        if (event.topic == ack_topic) handle_ack(event.text);
        return true;
      case Kind::publish_ok:
      case Kind::publish_failed: {
        if (event.generation != generation) return true;
        auto it = inflight.find(event.token);
        if (it == inflight.end()) return true;
        if (event.kind == Kind::publish_ok) {
          std::lock_guard lock(stats_mutex);
          ++stats.published;
          if (it->second.republish) ++stats.republished;
        } else {
          // resend_after republishes it if the node never gets it.
          log.warning(k_component, "publishing seq {} failed: {}", it->second.seq, event.text);
        }
        inflight.erase(it);
        return true;
      }
      case Kind::reload:
        return reload_password();
      case Kind::connect_ok:
      case Kind::connect_failed:
      case Kind::subscribe_ok:
        return true;
    }
    return true;
  }

  void lost(const std::string& why) {
    log.warning(k_component, "disconnected from {}: {}", config.url, why);
    inflight.clear();
    pending.clear();
    std::lock_guard lock(stats_mutex);
    stats.connected = false;
    stats.state_since_unix_ms = env.now_unix_ms();
    stats.last_error = fmt::format("{}: {}", config.url, why);
  }

  // With a pinned node key: the statement the ack makes once verify_signed_ack accepts it, or
  // nullopt after counting and logging why not. A repeat of the last verified ack (the retained
  // ack on reconnect) is neither counted nor applied.
  std::optional<VerifiedAck> verify_ack(const std::string& payload) {
    const auto outbox_stats = outbox.stats();
    AckContext context;
    context.device = config.device_id;
    context.stream = stream;
    context.last_committed = std::max(outbox_stats.last_seq, known_last.load());
    context.last_verified = std::max(outbox_stats.acked_seq, unrecorded_ack.value_or(0));
    context.verified_log = outbox.verified_log();
    context.consistency_seen = outbox.node_sends_consistency();
    context.envelope_of = [this](std::int64_t seq) -> Result<std::optional<std::string>> {
      auto events = outbox.read_from(seq, 1);
      if (!events) return std::unexpected(events.error());
      if (events->empty() || events->front().seq != seq) return std::optional<std::string>{};
      return std::optional<std::string>(std::move(events->front().envelope));
    };
    auto verified = verify_signed_ack(payload, *node_key, context);
    if (verified) {
      if (verified->repeat) return std::nullopt;
      if (auto recorded =
              outbox.record_verified_log(verified->tree_size, verified->root,
                                         context.consistency_seen || verified->carried_consistency);
          !recorded) {
        // Pruning without the log recorded would let a restarted agent accept a shrunk log.
        log.warning(k_component, "not applying the verified ack of seq {}: {}", verified->seq,
                    recorded.error().message);
        return std::nullopt;
      }
      // The leaves of the events it covers, kept for `reflow-agent audit` before they are
      // pruned: an event pruned without its leaf could never be audited.
      if (auto kept = outbox.record_acked_leaves(verified->seq, verified->leaf_index); !kept) {
        log.warning(k_component, "not applying the verified ack of seq {}: {}", verified->seq,
                    kept.error().message);
        return std::nullopt;
      }
      std::lock_guard lock(stats_mutex);
      stats.ack_error.clear();
      stats.verified_tree_size = verified->tree_size;
      // Proven once a proof of growth verified; unproven when a log grew without one (a node
      // that sends none, PROTOCOL §5.1); the same log again changes nothing.
      if (verified->carried_consistency && context.verified_log &&
          verified->tree_size > context.verified_log->first)
        stats.consistency_proven = true;
      else if (!verified->consistency_proven)
        stats.consistency_proven = false;
      return std::move(*verified);
    }
    const auto reason = verified.error().reason;
    const auto index = static_cast<std::size_t>(reason);
    {
      std::lock_guard lock(stats_mutex);
      ++stats.refused_acks;
      ++stats.refused_by_reason[index];
      if (reason == AckRefusal::bad_inclusion || reason == AckRefusal::inconsistent)
        stats.ack_error = verified.error().message;
    }
    // A hostile client can publish acks as fast as the broker takes them: one line per reason
    // a minute, saying how many were not logged.
    auto& limit = refusal_log[index];
    const auto now = env.steady_now();
    if (limit.logged_at && now < *limit.logged_at + std::chrono::minutes(1)) {
      ++limit.suppressed;
      return std::nullopt;
    }
    log.error(k_component, "refusing an ack on {} ({}): {}; nothing pruned{}", ack_topic,
              to_string(reason), verified.error().message,
              limit.suppressed == 0
                  ? std::string()
                  : fmt::format(" ({} more refused for this reason in the last minute)",
                                limit.suppressed));
    limit.logged_at = now;
    limit.suppressed = 0;
    return std::nullopt;
  }

  void handle_ack(const std::string& payload) {
    if (node_key) {
      const auto before = outbox.verified_log();
      auto verified = verify_ack(payload);
      if (!verified) return;
      apply_ack(payload, Ack{verified->stream, verified->seq});
      // The node proves its next log from the size in the status: it should learn it now, not
      // at the next status interval (PROTOCOL §5.1).
      if (!before || before->first != verified->tree_size) publish_status();
      return;
    }
    auto ack = parse_ack(payload);
    if (!ack) {
      log.warning(k_component,
                  "ignoring a malformed ack on {}: expected {{\"stream\":\"…\",\"seq\":N}}; got {}",
                  ack_topic, payload.substr(0, 200));
      return;
    }
    if (ack->stream != stream) {
      log.info(k_component, "ignoring an ack for stream {}: this outbox's stream is {}",
               ack->stream, stream);
      return;
    }
    apply_ack(payload, *ack);
  }

  // Applies an ack that passed the checks: the outbox prunes what it covers.
  void apply_ack(const std::string& payload, const Ack& ack) {
    auto applied = outbox.apply_ack(ack.stream, ack.seq);
    if (!applied && applied.error().code == ErrorCode::rejected) {
      log.error(k_component, "refusing the ack on {}: {}", ack_topic, applied.error().message);
      std::lock_guard lock(stats_mutex);
      ++stats.refused_acks;
      return;
    }
    if (!applied) {
      // The node has the events even though the outbox cannot record it (a full disk): take the
      // ack as progress so the backlog is not republished every resend_after, and record it
      // later (retry_unrecorded_ack).
      const std::int64_t seq = ack.seq;
      if (!unrecorded_ack) {
        log.warning(k_component, "applying the ack {} failed: {}; retrying", payload.substr(0, 200),
                    applied.error().message);
        std::lock_guard lock(stats_mutex);
        stats.last_error = applied.error().message;
      }
      unrecorded_ack = std::max(unrecorded_ack.value_or(0), seq);
      retry_ack_at = env.steady_now() + k_max_wait;
      if (seq > acked) {
        acked = seq;
        progress_at = env.steady_now();
      }
      if (cursor <= acked) move_cursor(acked + 1);
      return;
    }
    {
      std::lock_guard lock(stats_mutex);
      ++stats.acks;
    }
    if (*applied > acked) {
      acked = *applied;
      progress_at = env.steady_now();
    }
    if (cursor <= acked) move_cursor(acked + 1);
  }

  void move_cursor(std::int64_t seq) {
    if (seq > cursor) {
      while (!pending.empty() && pending.front().seq < seq)
        pending.pop_front();
    } else {
      pending.clear();
    }
    if (!pending.empty() && pending.front().seq != seq) pending.clear();
    cursor = seq;
    std::lock_guard lock(stats_mutex);
    stats.next_seq = cursor;
  }

  bool outstanding() const { return sent_through > acked; }

  // Records an ack that the outbox could not record when it came (see handle_ack).
  void retry_unrecorded_ack() {
    if (!unrecorded_ack || env.steady_now() < retry_ack_at) return;
    retry_ack_at = env.steady_now() + k_max_wait;
    auto applied = outbox.apply_ack(stream, *unrecorded_ack);
    if (!applied && applied.error().code != ErrorCode::rejected) return;
    if (applied) log.info(k_component, "recorded the node's ack of seq {}", *applied);
    unrecorded_ack.reset();
    std::lock_guard lock(stats_mutex);
    if (stats.last_error.find("cannot record the node's ack") != std::string::npos)
      stats.last_error.clear();
  }

  // Publishes in seq order while fewer than max_inflight publishes await their PUBACK.
  void pump() {
    while (inflight.size() < config.max_inflight) {
      if (pending.empty()) {
        if (cursor > known_last.load()) break;
        auto events = outbox.read_from(cursor, k_read_batch);
        if (!events) {
          // pump() runs on every wake-up; one warning per failure streak is enough.
          if (!read_failing)
            log.warning(k_component, "reading the outbox from seq {} failed: {}; retrying", cursor,
                        events.error().message);
          read_failing = true;
          break;
        }
        read_failing = false;
        if (events->empty()) break;
        // Rows below the cursor's seq were pruned by an ack in the meantime.
        if (events->front().seq > cursor) move_cursor(events->front().seq);
        pending.assign(std::make_move_iterator(events->begin()),
                       std::make_move_iterator(events->end()));
      }
      const OutboxEvent& event = pending.front();
      mqtt::delivery_token_ptr token;
      try {
        auto message = mqtt::make_message(events_topic, event.envelope, k_qos, false);
        token = client->publish(message, context_of(generation), publish_listener);
      } catch (const std::exception& e) {
        // The connection is going; connection_lost follows and the next connect republishes.
        log.warning(k_component, "publishing seq {} failed: {}", event.seq, e.what());
        break;
      }
      if (!outstanding()) progress_at = env.steady_now();
      bool republish = event.seq <= highest_sent;
      highest_sent = std::max(highest_sent, event.seq);
      sent_through = std::max(sent_through, event.seq);
      inflight.emplace(token.get(), Inflight{token, event.seq, republish});
      cursor = event.seq + 1;
      pending.pop_front();
    }
    std::lock_guard lock(stats_mutex);
    stats.next_seq = cursor;
  }

  std::string status_json(const OutboxStats& s) {
    std::int64_t oldest_s = 0;
    if (s.oldest_unacked_recorded_ms)
      oldest_s =
          std::max<std::int64_t>(0, (env.now_unix_ms() - *s.oldest_unacked_recorded_ms) / 1000);
    nlohmann::ordered_json status;
    status["state"] = "online";
    status["version"] = version;
    status["stream"] = s.stream;
    status["seq"] = s.last_seq;
    status["acked"] = s.acked_seq;
    status["backlog"] = s.backlog_events;
    status["oldest_unacked_s"] = oldest_s;
    status["clock"] = env.clock_sync() == ClockSync::synced ? "synced" : "unsynced";
    // With a pinned node key: the size of the node's log this agent verified last, which the
    // node proves its next log consistent with (PROTOCOL §5.1, §6). Public; nothing secret.
    if (node_key)
      if (auto verified_log = outbox.verified_log())
        status["verified_tree_size"] = verified_log->first;
    return status.dump();
  }

  void publish_status() {
    next_status_at = env.steady_now() + config.status_interval;
    try {
      client->publish(mqtt::make_message(status_topic, status_json(outbox.stats()), k_qos, true));
    } catch (const std::exception& e) {
      log.warning(k_component, "publishing the status on {} failed: {}", status_topic, e.what());
    }
  }

  // Says goodbye within the stop deadline; a dead broker costs at most that deadline.
  void shutdown() {
    auto remaining = [&] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(stop_deadline -
                                                                   env.steady_now());
    };
    auto at_least_zero = [](std::chrono::milliseconds ms) {
      return std::max(ms, std::chrono::milliseconds(0));
    };
    if (client->is_connected()) {
      try {
        auto token = client->publish(
            mqtt::make_message(status_topic, R"({"state":"offline"})", k_qos, true));
        if (!token->wait_for(at_least_zero(remaining() / 2)))
          log.warning(k_component, "the offline status was not acknowledged before the deadline");
      } catch (const std::exception& e) {
        log.warning(k_component, "publishing the offline status failed: {}", e.what());
      }
      try {
        auto done = client->disconnect(0);
        if (!done->wait_for(at_least_zero(remaining())))
          log.warning(k_component, "disconnecting from {} did not finish before the deadline",
                      config.url);
      } catch (const std::exception& e) {
        log.warning(k_component, "disconnecting from {}: {}", config.url, e.what());
      }
      log.info(k_component, "disconnected from {}", config.url);
    }
    try {
      client->disable_callbacks();
    } catch (const std::exception&) {
      // See make_client(): nothing more will be handled either way.
    }
    std::lock_guard lock(stats_mutex);
    if (stats.connected) {
      stats.connected = false;
      stats.state_since_unix_ms = env.now_unix_ms();
    }
  }

  const AgentConfig config;
  Outbox& outbox;
  Env& env;
  Logger& log;
  const std::string version;
  const std::string device_topic;
  const std::string events_topic;
  const std::string ack_topic;
  const std::string status_topic;
  std::string stream;

  // Declared before the client: Paho may call them until the client is destroyed.
  mqtt_connect::EventQueue<Event> queue;
  mqtt_connect::Listener connect_listener = listener(Kind::connect_ok, Kind::connect_failed);
  mqtt_connect::Listener publish_listener = listener(Kind::publish_ok, Kind::publish_failed);
  mqtt_connect::Listener subscribe_listener = listener(Kind::subscribe_ok, Kind::subscribe_failed);

  mutable std::mutex stats_mutex;
  ForwarderStats stats;

  std::atomic<std::int64_t> known_last{0};
  Clock::time_point stop_deadline{};

  // Owned by the forwarder thread.
  mqtt_connect::Backoff backoff;
  std::uint64_t generation = 0;  ///< one per connect attempt; tags Paho answers
  std::int64_t acked = 0;
  std::int64_t cursor = 1;          ///< the next seq to publish
  std::int64_t sent_through = 0;    ///< highest seq published on this connection
  std::int64_t highest_sent = 0;    ///< highest seq published since start
  Clock::time_point progress_at{};  ///< when the ack last advanced (or publishing began)
  Clock::time_point next_status_at{};
  std::deque<OutboxEvent> pending;  ///< read from the outbox, starting at `cursor`
  std::map<const mqtt::token*, Inflight> inflight;
  bool read_failing = false;
  std::optional<PublicJwk> node_key;  ///< mqtt.node_jwk, when set
  struct RefusalLog {
    std::optional<Clock::time_point> logged_at;
    std::uint64_t suppressed = 0;
  };
  std::array<RefusalLog, k_ack_refusal_kinds> refusal_log{};
  std::optional<std::int64_t> unrecorded_ack;  ///< the node's ack the outbox could not record yet
  Clock::time_point retry_ack_at{};

  mqtt::connect_options connect_options;
  bool tls = false;  ///< mqtts://
  std::string paho_uri;
  std::string client_id;
  std::unique_ptr<mqtt::async_client> client;
  bool client_used = false;  // connect() was called on `client`
  std::jthread thread;
  bool started = false;
};

Result<Ack> parse_ack(std::string_view payload) {
  auto ack = nlohmann::json::parse(payload, nullptr, false);
  if (ack.is_discarded()) return fail(ErrorCode::invalid_argument, "ack: not JSON");
  if (!ack.is_object()) return fail(ErrorCode::invalid_argument, "ack: not a JSON object");
  auto stream = ack.find("stream");
  if (stream == ack.end() || !stream->is_string())
    return fail(ErrorCode::invalid_argument, "ack: stream: expected a string");
  auto seq = ack.find("seq");
  if (seq == ack.end() || !seq->is_number_integer() || seq->get<std::int64_t>() < 0)
    return fail(ErrorCode::invalid_argument, "ack: seq: expected an integer ≥ 0");
  return Ack{stream->get<std::string>(), seq->get<std::int64_t>()};
}

Forwarder::Forwarder(const AgentConfig& config, Outbox& outbox, Env& env, Logger& log,
                     std::string version)
    : m_impl(std::make_unique<Impl>(config, outbox, env, log, std::move(version))) {}

Forwarder::~Forwarder() {
  stop();
}

Status Forwarder::start() {
  if (m_impl->started) return {};
  if (auto ok = m_impl->configure(); !ok) return ok;
  try {
    m_impl->thread = std::jthread([impl = m_impl.get()](std::stop_token stop) { impl->run(stop); });
  } catch (const std::exception& e) {
    return fail(ErrorCode::internal,
                fmt::format("cannot start the forwarder thread: {}", e.what()));
  }
  m_impl->started = true;
  m_impl->log.info(k_component, "forwarding {} to {}{}", m_impl->events_topic, m_impl->config.url,
                   m_impl->via_proxy());
  return {};
}

void Forwarder::notify_committed(std::int64_t last_seq) {
  auto& known = m_impl->known_last;
  auto current = known.load();
  while (current < last_seq && !known.compare_exchange_weak(current, last_seq)) {
  }
  m_impl->wake();
}

void Forwarder::reload() {
  m_impl->post({Impl::Kind::reload, 0, nullptr, {}, {}});
}

void Forwarder::stop(std::int64_t deadline_ms) {
  if (!m_impl->thread.joinable()) return;
  m_impl->stop_deadline = m_impl->env.steady_now() + std::chrono::milliseconds(deadline_ms);
  m_impl->thread.request_stop();
  m_impl->thread.join();
}

ForwarderStats Forwarder::stats() const {
  std::lock_guard lock(m_impl->stats_mutex);
  return m_impl->stats;
}

}  // namespace agent
