// SPDX-License-Identifier: AGPL-3.0-or-later
// The node service's ack publisher: its own MQTT connection and thread that publish the acks the
// store thread decides (PROTOCOL §5). Private to reflow_node; IngestService is its only user.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>

#include <mqtt/async_client.h>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/mqtt_connect.hpp>
#include <reflow/core/result.hpp>
#include <reflow/node/config.hpp>
#include <reflow/node/store.hpp>

#include "service_common.hpp"

namespace ingest {

/// Publishes acks, retained, QoS 1, `{"stream":"…","seq":N}` on `PREFIX/DEVICE/ack` (and the
/// log's signed checkpoint on `PREFIX/_node/checkpoint`, the same way), on a
/// connection of its own (`client_id` + "-acks", MQTT 5, clean start, no session): on the events
/// connection the broker's PUBACK to an ack waits behind every event it has queued for the
/// service, which held the acks back for a whole backlog's drain.
///
/// hand() keeps only the latest ack per device (so what waits is bounded by the devices); the
/// publisher thread hands them to Paho with at most the ack window awaiting the broker's PUBACK
/// (64, or one below the Receive Maximum of the broker's CONNACK when lower), devices taken in
/// turn so that none starves. A failed publish (not connected) is tried again after 100 ms unless
/// a newer ack of the device replaced it. The connection is made when the thread starts and again
/// when lost, with the full-jitter backoff of `reconnect_min`…`reconnect_max`.
///
/// Writes `acks_published`, `acks_connected`, `ack_window` and `last_error` of `stats`. Borrows
/// the config, env, logger, stats and stop deadline, which must outlive it. hand() is
/// thread-safe and never calls Paho (the caller may hold up Paho's receiving thread); the other
/// functions are for the one thread that owns the service.
class AckPublisher {
 public:
  AckPublisher(const IngestConfig& config, agent::Env& env, agent::Logger& log, ServiceStats& stats,
               const StopDeadline& stop_deadline);
  ~AckPublisher();  ///< stop()s

  AckPublisher(const AckPublisher&) = delete;
  AckPublisher& operator=(const AckPublisher&) = delete;

  /// Makes the client and its connect options for the broker at `address` (not connected yet).
  /// Errors: invalid_config (credentials files, a client id or URL Paho refuses).
  Status configure(const agent::mqtt_connect::BrokerAddress& address);

  /// Starts the publisher thread, which connects at once. After configure(). Throws
  /// std::system_error when no thread can be had.
  void start();

  /// From any thread: `body` (ack_body(), PROTOCOL §5) becomes the ack to publish next for
  /// `device`, replacing one of the same device not yet handed to Paho.
  void hand(const std::string& device, std::string body);

  /// From any thread: `note` (the log's signed checkpoint, PROTOCOL §5.1) becomes the checkpoint
  /// to publish next, retained on PREFIX/_node/checkpoint, replacing one not yet handed to Paho.
  /// Not counted in acks_published.
  void hand_checkpoint(std::string note);

  /// From any thread: `body` (an audit answer, PROTOCOL §5.2) is published next, not retained,
  /// on PREFIX/DEVICE/audit/proofs, replacing an answer to `device` not yet handed to Paho (an
  /// auditor waits for one answer at a time). Not counted in acks_published.
  void hand_answer(const std::string& device, std::string body);

  /// Publishes what was handed over (while connected and before the stop deadline), waits for
  /// the broker to confirm it, and joins the thread. Call after the last hand(); what is left is
  /// dropped with a warning (the agents republish those events).
  void stop();

  /// Disconnects the acks connection, waiting at most `wait`. After stop().
  void disconnect(std::chrono::milliseconds wait);

  /// The acks connection's client id: `client_id` + "-acks".
  const std::string& client_id() const { return m_client_id; }

 private:
  struct PendingAck {
    std::string topic;
    std::string body;
    bool retained = true;  ///< acks and checkpoints are; audit answers are not
    bool counted = true;   ///< counted in acks_published
  };

  void run(std::stop_token stop);
  void settle(std::deque<mqtt::delivery_token_ptr>& in_flight, std::size_t keep,
              std::stop_token stop);
  void lost();
  void drop_unpublished(std::string_view why);
  bool connect(std::stop_token stop);

  const IngestConfig& m_config;
  agent::Env& m_env;
  agent::Logger& m_log;
  ServiceStats& m_stats;
  const StopDeadline& m_stop_deadline;
  const std::string m_client_id;

  // Owned by the publisher thread. m_window: acks in flight at most, set on each connect.
  std::size_t m_window;
  agent::mqtt_connect::Backoff m_backoff{m_config.reconnect_min, m_config.reconnect_max};

  // From hand() to the publisher thread: the latest ack per device. Declared before the client:
  // Paho may call lost() until the client is destroyed.
  std::mutex m_out_mutex;
  std::condition_variable_any m_out_cv;
  std::map<std::string, PendingAck> m_out;
  bool m_down = false;  ///< the connection was lost since the last connect attempt

  mqtt::connect_options m_connect_options;
  bool m_tls = false;  ///< mqtts: the broker address of configure()
  std::unique_ptr<mqtt::async_client> m_client;
  std::jthread m_thread;
};

}  // namespace ingest
