// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/mqtt_subscriber.hpp>

#include <mqtt/async_client.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/mqtt_connect.hpp>

namespace agent {
namespace {

constexpr int k_qos = 1;

}  // namespace

struct MqttSubscriber::Impl {
  enum class Kind { connect_ok, connect_failed, subscribe_ok, subscribe_failed, lost, message };

  // What a Paho thread hands to the subscriber's thread; Paho threads do nothing else, so that
  // the driver's callbacks run on one thread, in arrival order.
  struct Event {
    Kind kind;
    std::uint64_t generation = 0;
    MqttMessage message;
    std::string reason;
  };

  // A listener whose answers reach the subscriber's thread as `ok` and `failed` events.
  mqtt_connect::Listener listener(Kind ok, Kind failed) {
    return {
        [this, ok](const mqtt::token& token) {
          post({ok, mqtt_connect::generation_of(token), {}, {}});
        },
        [this, failed](const mqtt::token& token) {
          post({failed, mqtt_connect::generation_of(token), {}, mqtt_connect::paho_error(token)});
        }};
  }

  Impl(MqttSubscriberOptions options_in, Env& env_in, Logger& log_in)
      : options(std::move(options_in)),
        env(env_in),
        log(log_in),
        component(fmt::format("mqtt subscriber {}", options.client_id)),
        backoff(options.reconnect_min, options.reconnect_max) {}

  void post(Event event) { queue.post(std::move(event)); }

  // Reports the connection only when it changes, so that a driver counts outages, not retries.
  void report(bool connected, const std::string& reason) {
    if (reported == connected) return;
    reported = connected;
    if (connected)
      log.info(component, "subscribed at {}", options.url);
    else
      log.warning(component, "not connected to {}: {}; retrying with backoff", options.url, reason);
    on_connection(connected, reason);
  }

  // One connection attempt, then its session until the connection is lost. True when it got as
  // far as subscribing (the backoff starts again from reconnect_min).
  bool connect_and_serve(std::stop_token stop) {
    const std::uint64_t attempt = ++generation;
    try {
      client->connect(connect_options, mqtt_connect::context_of(attempt), connect_listener);
    } catch (const std::exception& e) {
      report(false, e.what());
      return false;
    }
    bool subscribed = false;
    while (auto event = queue.next(stop)) {
      // Answers to an older attempt, and its messages' losses, are of no concern now.
      const bool current = event->generation == attempt;
      switch (event->kind) {
        case Kind::message:
          on_message(event->message);
          break;
        case Kind::connect_ok:
          if (!current) break;
          try {
            if (options.topics.empty()) {
              subscribed = true;
              report(true, "");
            } else {
              client->subscribe(mqtt::string_collection::create(options.topics),
                                std::vector<int>(options.topics.size(), k_qos),
                                mqtt_connect::context_of(attempt), subscribe_listener);
            }
          } catch (const std::exception& e) {
            report(false, fmt::format("subscribing failed: {}", e.what()));
            disconnect();
            return false;
          }
          break;
        case Kind::subscribe_ok:
          if (!current) break;
          subscribed = true;
          report(true, "");
          break;
        case Kind::connect_failed:
          if (!current) break;
          report(false, mqtt_connect::connect_failure_cause(options.url, credentials, event->reason,
                                                            connect_timeout, stop));
          return false;
        case Kind::subscribe_failed:
          if (!current) break;
          report(false, fmt::format("subscribing failed: {}", event->reason));
          disconnect();
          return false;
        case Kind::lost:
          report(false, event->reason.empty() ? "connection lost" : event->reason);
          return subscribed;
      }
    }
    return subscribed;  // stop requested
  }

  void disconnect() {
    try {
      if (client->is_connected()) client->disconnect(0)->wait_for(std::chrono::seconds(5));
    } catch (const std::exception&) {
      // Already gone; the next connect or the end is what matters.
    }
  }

  void run(std::stop_token stop) {
    mqtt_connect::reconnect_loop(stop, env, backoff,
                                 [this](std::stop_token s) { return connect_and_serve(s); });
  }

  MqttSubscriberOptions options;
  Env& env;
  Logger& log;
  std::string component;
  mqtt_connect::Backoff backoff;
  OnMessage on_message;
  OnConnection on_connection;
  std::optional<bool> reported;
  std::uint64_t generation = 0;

  mqtt_connect::EventQueue<Event> queue;

  mqtt_connect::Listener connect_listener = listener(Kind::connect_ok, Kind::connect_failed);
  mqtt_connect::Listener subscribe_listener = listener(Kind::subscribe_ok, Kind::subscribe_failed);
  mqtt::connect_options connect_options;
  mqtt_connect::Credentials credentials;  ///< for connect_failure_cause's TLS probe
  std::chrono::milliseconds connect_timeout{0};
  std::unique_ptr<mqtt::async_client> client;
  std::jthread thread;
};

MqttSubscriber::MqttSubscriber(MqttSubscriberOptions options, Env& env, Logger& log)
    : m_impl(std::make_unique<Impl>(std::move(options), env, log)) {}

MqttSubscriber::~MqttSubscriber() {
  stop();
}

Status MqttSubscriber::start(OnMessage on_message, OnConnection on_connection) {
  Impl& impl = *m_impl;
  if (impl.thread.joinable()) return {};
  const MqttSubscriberOptions& options = impl.options;
  auto address = mqtt_connect::broker_address(options.url, "MQTT subscriber");
  if (!address) return std::unexpected(address.error());
  if (options.client_id.empty())
    return fail(ErrorCode::invalid_config,
                fmt::format("MQTT subscriber for {}: client_id is empty; it must be unique on that "
                            "broker",
                            options.url));

  mqtt::connect_options connect;
  // Nothing is kept at the broker between connections: every connect subscribes again, and the
  // retained messages tell the driver the current state.
  connect.set_clean_session(true);
  connect.set_keep_alive_interval(mqtt_connect::whole_seconds(options.keepalive));
  connect.set_connect_timeout(mqtt_connect::whole_seconds(options.keepalive, 30));
  impl.connect_timeout = connect.get_connect_timeout();
  connect.set_automatic_reconnect(false);  // the backoff with jitter is ours
  mqtt_connect::Credentials credentials;
  credentials.username = options.username;
  credentials.password_file = options.password_file;
  credentials.ca_file = options.ca_file;
  if (auto ok = mqtt_connect::set_credentials(connect, credentials, address->tls, "MQTT 3.1.1");
      !ok)
    return ok;
  impl.connect_options = std::move(connect);
  impl.credentials = std::move(credentials);

  try {
    // No persistence: a null iclient_persistence means none in Paho (async_client.h).
    impl.client = std::make_unique<mqtt::async_client>(
        address->paho_uri, options.client_id, static_cast<mqtt::iclient_persistence*>(nullptr));
  } catch (const std::exception& e) {
    return fail(
        ErrorCode::invalid_config,
        fmt::format("MQTT subscriber: the MQTT client rejected \"{}\": {}", options.url, e.what()));
  }
  impl.client->set_message_callback([&impl](mqtt::const_message_ptr message) {
    impl.post({Impl::Kind::message,
               0,
               {message->get_topic(), message->to_string(), message->is_retained()},
               {}});
  });
  impl.client->set_connection_lost_handler([&impl](const std::string& cause) {
    impl.post({Impl::Kind::lost, 0, {}, cause});
  });
  impl.on_message = std::move(on_message);
  impl.on_connection = std::move(on_connection);
  impl.reported.reset();
  impl.thread = std::jthread([&impl](std::stop_token stop) { impl.run(stop); });
  return {};
}

void MqttSubscriber::stop() {
  Impl& impl = *m_impl;
  if (!impl.thread.joinable()) return;
  impl.thread.request_stop();
  impl.thread.join();
  impl.disconnect();
  try {
    impl.client->disable_callbacks();
  } catch (const std::exception&) {
    // Paho refuses while its connection is being torn down; the client is dropped anyway.
  }
  impl.client.reset();
  impl.queue.clear();
}

}  // namespace agent
