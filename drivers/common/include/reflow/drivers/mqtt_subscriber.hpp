// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/result.hpp>

namespace agent {

/// Where and how to subscribe (a driver's own broker: the site's broker the smart plugs publish
/// to, which need not be the node's).
struct MqttSubscriberOptions {
  std::string url = "mqtt://127.0.0.1:1883";  ///< mqtt://HOST[:PORT] or mqtts://HOST[:PORT]
  std::string client_id;                      ///< required; unique on that broker
  std::string username;
  std::filesystem::path password_file;  ///< first line is the password
  std::filesystem::path ca_file;
  std::chrono::milliseconds keepalive{std::chrono::seconds(30)};
  std::chrono::milliseconds reconnect_min{std::chrono::seconds(1)};
  std::chrono::milliseconds reconnect_max{std::chrono::seconds(60)};
  std::vector<std::string> topics;  ///< filters, subscribed QoS 1 after every (re)connect
};

/// One received message. `retained` is true for a retained message delivered on subscribe.
struct MqttMessage {
  std::string topic;
  std::string payload;
  bool retained = false;
};

/// A read-only MQTT client for drivers (Paho MQTT C++ underneath; drivers include only this
/// header). Connects in the background, resubscribes after each reconnect (full-jitter backoff
/// between reconnect_min and reconnect_max), and calls `on_message` for each message from ONE
/// thread, in arrival order. `on_connection` is called with true/false when the connection comes
/// and goes (drivers count and log it). The callbacks must not block for long.
/// Thread safety: start/stop from one thread.
class MqttSubscriber {
 public:
  using OnMessage = std::function<void(const MqttMessage&)>;
  using OnConnection = std::function<void(bool connected, const std::string& reason)>;

  MqttSubscriber(MqttSubscriberOptions options, Env& env, Logger& log);
  ~MqttSubscriber();  ///< stop()s

  /// Starts connecting. Errors: invalid_config (bad URL, unreadable password file).
  Status start(OnMessage on_message, OnConnection on_connection);

  /// Disconnects and joins; no callback runs after it returns. Idempotent.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace agent
