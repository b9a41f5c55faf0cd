// SPDX-License-Identifier: AGPL-3.0-or-later
#include "events_connection.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/audit_proofs.hpp>
#include <reflow/core/units.hpp>

namespace ingest {
namespace {

constexpr int k_qos = k_service_qos;
constexpr auto k_connect_grace = k_service_connect_grace;

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

}  // namespace

struct EventsConnection::Impl {
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

  Impl(const IngestConfig& config_in, agent::Env& env_in, agent::Logger& log_in,
       ServiceStats& stats_in, IngestPipeline& pipeline_in)
      : config(config_in),
        env(env_in),
        log(log_in),
        stats_mutex(stats_in.mutex),
        stats(stats_in.counters),
        faults(stats_in.faults),
        pipeline(pipeline_in),
        events_filter(
            config.share_group.empty()
                ? config.topic_prefix + "/+/events"
                : fmt::format("$share/{}/{}/+/events", config.share_group, config.topic_prefix)),
        status_filter(config.topic_prefix + "/+/status"),
        audit_filter(
            config.share_group.empty()
                ? config.topic_prefix + "/+/audit"
                : fmt::format("$share/{}/{}/+/audit", config.share_group, config.topic_prefix)),
        backoff(config.reconnect_min, config.reconnect_max) {}

  Status configure(const agent::mqtt_connect::BrokerAddress& address) {
    // The options are a member built in place: Paho C++ 1.2's move assignment of connect_options
    // leaves the C struct's pointer to the connect properties dangling (paho.mqtt.cpp #444, fixed
    // in 1.3).
    //
    // MQTT 5 with a session kept by the broker: QoS 1 events published while the service is
    // down wait at the broker instead of only in the agents' outboxes.
    tls = address.tls;
    if (auto ok = set_service_options(config, connect_options, /*clean_start=*/false, address.tls);
        !ok)
      return ok;
    mqtt::properties properties;
    properties.add(mqtt::property(mqtt::property::SESSION_EXPIRY_INTERVAL,
                                  whole_seconds(config.session_expiry, INT32_MAX)));
    connect_options.set_properties(properties);
    auto made = make_service_client(config, address.paho_uri, config.client_id);
    if (!made) return std::unexpected(made.error());
    client = std::move(*made);
    client->set_message_callback([this](mqtt::const_message_ptr message) {
      const std::string& topic = message->get_topic();
      if (topic.ends_with("/status")) {
        pipeline.note_status(topic, message->to_string());
        return;
      }
      if (topic.ends_with(agent::audit::k_request_suffix)) {
        pipeline.note_audit_request(topic, message->to_string());
        return;
      }
      pipeline.enqueue(topic, message->to_string());
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

  // ---- the connection thread ----

  void post(Event event) { events.post(std::move(event)); }

  std::deque<Event> wait_events(std::stop_token stop, Clock::duration timeout) {
    return events.wait(
        stop, std::clamp<Clock::duration>(timeout, Clock::duration::zero(), k_service_max_wait));
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
    agent::mqtt_connect::reconnect_loop(
        stop, env, backoff,
        [this](std::stop_token s) {
          if (!connect(s)) return false;
          session(s);
          return true;
        },
        [this](milliseconds delay) {
          log.debug(k_service_component, "reconnecting to {} in {} ms", config.url, delay.count());
        });
  }

  bool connect(std::stop_token stop) {
    ++generation;
    // The password file may have changed since the last connect (a rotated password); a file
    // that became unreadable is this attempt's failure.
    if (auto ok = refresh_credentials(config, connect_options, tls); !ok) {
      connect_failed(ok.error().message);
      return false;
    }
    try {
      client->connect(connect_options, context_of(generation), connect_listener);
    } catch (const std::exception& e) {
      connect_failed(e.what());
      return false;
    }
    // Paho's connect timeout runs on the real clock, so the margin does too (not on env's, which
    // tests move at their own pace).
    const auto answer = agent::mqtt_connect::await_connect(
        events, generation, Kind::connect_ok, Kind::connect_failed, Kind::connection_lost,
        std::chrono::steady_clock::now() + config.connect_timeout + k_connect_grace, stop,
        [] { return std::chrono::steady_clock::now(); },
        [&](Clock::duration left) {
          return wait_events(stop, std::chrono::duration_cast<milliseconds>(left));
        });
    if (answer.state == agent::mqtt_connect::ConnectOutcome::State::connected) {
      connected();
      return true;
    }
    if (answer.state == agent::mqtt_connect::ConnectOutcome::State::failed)
      // Paho's "MQTT error [-1]: Failure" told apart here, on this connection's thread.
      connect_failed(agent::mqtt_connect::connect_failure_cause(
          config.url, agent::mqtt_connect::credentials_of(config), answer.failure,
          config.connect_timeout, stop));
    return false;
  }

  void connect_failed(const std::string& why) {
    auto message = fmt::format("cannot connect to {}: {}", config.url, why);
    log.warning(k_service_component, "{}; retrying with backoff", message);
    std::lock_guard lock(stats_mutex);
    faults.set(stats, k_fault, std::move(message));
  }

  void connected() {
    log.info(k_service_component, "connected to {} as {}", config.url, config.client_id);
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
    // The devices' status, for the size of the log each verified last (PROTOCOL §5.1, §6):
    // every instance reads all of them (no $share), QoS 0 (the retained one comes with each
    // subscribe; none is queued in the session). A broker that refuses it (an ACL without
    // `topic read PREFIX/+/status`) only costs the consistency proofs, so it is not waited for.
    try {
      client->subscribe(status_filter, 0);
    } catch (const std::exception& e) {
      log.warning(k_service_component,
                  "subscribing to {} failed: {}; acks carry no consistency proofs", status_filter,
                  e.what());
    }
    // The devices' audit requests (PROTOCOL §5.2), QoS 0: an auditor waits for its answer and
    // asks again, so nothing is queued for a stopped service. One instance of a share group
    // answers each. A broker that refuses it only costs the audits.
    try {
      client->subscribe(audit_filter, 0);
    } catch (const std::exception& e) {
      log.warning(k_service_component, "subscribing to {} failed: {}; audits are not answered",
                  audit_filter, e.what());
    }
  }

  // Runs one connection until it is lost or stop is requested.
  void session(std::stop_token stop) {
    while (!stop.stop_requested()) {
      for (const Event& event : wait_events(stop, k_service_max_wait)) {
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
            log.error(k_service_component, "subscribing to {} failed: {}; reconnecting",
                      events_filter, event.text);
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
      log.info(k_service_component,
               "ready: subscribed to {} at {} (QoS 1, session kept {} by the broker)",
               events_filter, config.url, agent::format_duration(config.session_expiry));
    } else {
      log.info(k_service_component, "subscribed to {} again", events_filter);
    }
    ever_subscribed = true;
    std::lock_guard lock(stats_mutex);
    stats.subscribed = true;
    faults.clear(stats, k_fault);
  }

  void lost(const std::string& why) {
    log.warning(k_service_component, "disconnected from {}: {}", config.url, why);
    std::lock_guard lock(stats_mutex);
    stats.connected = false;
    stats.subscribed = false;
    faults.set(stats, k_fault, fmt::format("{}: {}", config.url, why));
  }

  void disconnect(milliseconds wait) {
    if (client->is_connected()) {
      try {
        // Keeps the broker session (session_expiry): events published while the service is
        // down are queued for it.
        if (!client->disconnect(0)->wait_for(wait))
          log.warning(k_service_component,
                      "disconnecting from {} did not finish before the deadline", config.url);
      } catch (const std::exception& e) {
        log.warning(k_service_component, "disconnecting from {}: {}", config.url, e.what());
      }
    }
    try {
      client->disable_callbacks();
    } catch (const std::exception&) {
      // Paho refuses while a connection is being torn down; nothing more is handled anyway.
    }
  }

  const IngestConfig& config;
  agent::Env& env;
  agent::Logger& log;
  std::mutex& stats_mutex;
  IngestCounters& stats;
  FaultBoard& faults;  // under stats_mutex
  static constexpr std::string_view k_fault = "events connection";
  IngestPipeline& pipeline;
  const std::string events_filter;
  const std::string status_filter;
  const std::string audit_filter;

  // Declared before the client: Paho may call into them until the client is destroyed.
  agent::mqtt_connect::EventQueue<Event> events;
  agent::mqtt_connect::Listener connect_listener = listener(Kind::connect_ok, Kind::connect_failed);
  agent::mqtt_connect::Listener subscribe_listener =
      listener(Kind::subscribe_ok, Kind::subscribe_failed);

  // Owned by the connection thread.
  agent::mqtt_connect::Backoff backoff;
  std::uint64_t generation = 0;  ///< one per connect attempt; tags Paho answers
  bool ever_subscribed = false;

  mqtt::connect_options connect_options;
  bool tls = false;  ///< mqtts: the broker address of configure()
  std::unique_ptr<mqtt::async_client> client;
  std::jthread thread;
};

EventsConnection::EventsConnection(const IngestConfig& config, agent::Env& env, agent::Logger& log,
                                   ServiceStats& stats, IngestPipeline& pipeline)
    : m_impl(std::make_unique<Impl>(config, env, log, stats, pipeline)) {}

EventsConnection::~EventsConnection() {
  stop();
}

Status EventsConnection::configure(const agent::mqtt_connect::BrokerAddress& address) {
  return m_impl->configure(address);
}

void EventsConnection::start() {
  m_impl->thread =
      std::jthread([impl = m_impl.get()](std::stop_token stop) { impl->connection(stop); });
}

void EventsConnection::stop() {
  if (!m_impl->thread.joinable()) return;
  m_impl->thread.request_stop();
  m_impl->thread.join();
}

void EventsConnection::disconnect(milliseconds wait) {
  if (m_impl->client) m_impl->disconnect(wait);
}

const std::string& EventsConnection::events_filter() const {
  return m_impl->events_filter;
}

}  // namespace ingest
