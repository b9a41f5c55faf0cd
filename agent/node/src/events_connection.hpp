// SPDX-License-Identifier: AGPL-3.0-or-later
// The node service's Paho event loop: the events connection, its subscription and its
// reconnects. Private to reflow_node; IngestService is its only user.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/mqtt_connect.hpp>
#include <reflow/core/result.hpp>
#include <reflow/node/config.hpp>

#include "pipeline.hpp"
#include "service_common.hpp"

namespace ingest {

/// The events connection (`client_id`, MQTT 5, clean_start=false with `session_expiry`, so that
/// the broker queues QoS 1 events while the service is down) and its thread. It subscribes QoS 1
/// to `PREFIX/+/events`, or `$share/GROUP/PREFIX/+/events` with `share_group`, and hands every
/// message to IngestPipeline::enqueue() on Paho's thread. Paho's other callbacks only post to an
/// EventQueue; the connection thread takes them, and reconnects a lost connection (or one whose
/// subscription the broker refused) with full-jitter backoff between `reconnect_min` and
/// `reconnect_max`.
///
/// Writes `connected`, `subscribed`, `connects` and `last_error` of `stats`. Borrows everything it
/// is given, which must outlive it. All functions are for the thread that owns the service.
class EventsConnection {
 public:
  EventsConnection(const IngestConfig& config, agent::Env& env, agent::Logger& log,
                   ServiceStats& stats, IngestPipeline& pipeline);
  ~EventsConnection();  ///< stop()s

  EventsConnection(const EventsConnection&) = delete;
  EventsConnection& operator=(const EventsConnection&) = delete;

  /// Makes the client, its connect options and callbacks for the broker at `address` (not
  /// connected yet). Errors: invalid_config (credentials files, a client id or URL Paho refuses).
  Status configure(const agent::mqtt_connect::BrokerAddress& address);

  /// Starts the connection thread, which connects at once. After configure(). Throws
  /// std::system_error when no thread can be had.
  void start();

  /// Ends the connection thread (joined); the connection stays until disconnect().
  void stop();

  /// Disconnects within `wait`, keeping the broker session (session_expiry: events published
  /// while the service is down are queued for it), and turns Paho's callbacks off. After stop().
  void disconnect(std::chrono::milliseconds wait);

  /// The subscription's filter: `PREFIX/+/events` or `$share/GROUP/PREFIX/+/events`.
  const std::string& events_filter() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace ingest
