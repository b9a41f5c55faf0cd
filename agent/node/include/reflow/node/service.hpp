// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/result.hpp>
#include <reflow/node/config.hpp>
#include <reflow/node/store.hpp>

namespace ingest {

/// What the service has done since start(), for the `run` summary line and systemd STATUS.
struct IngestCounters {
  bool connected = false;        ///< to the broker, now
  bool subscribed = false;       ///< the events subscription is in place, now
  bool acks_connected = false;   ///< the acks' own connection (CLIENT_ID-acks) is up, now
  std::uint64_t connects = 0;    ///< successful connections since start
  std::uint64_t received = 0;    ///< envelopes taken from MQTT
  std::uint64_t stored = 0;      ///< new events stored
  std::uint64_t duplicates = 0;  ///< envelopes already stored with the same bytes
  std::uint64_t rejected = 0;    ///< envelopes rejected (kept, repeated or counted only)
  std::map<std::string, std::uint64_t> rejected_by_reason;  ///< to_string(RejectReason) → count
  std::uint64_t rejections_repeated = 0;  ///< of `rejected`: same bytes already kept (count + 1)
  std::uint64_t rejections_not_kept = 0;  ///< of `rejected`: over RejectionLimits, counted only
  std::uint64_t rejection_logs_suppressed = 0;  ///< rejections not logged (over LogLimits; each
                                                ///< sender's count is logged when its minute ends)
  std::uint64_t acks_published = 0;             ///< retained acks handed to the MQTT client
  std::uint64_t store_errors = 0;  ///< failed store attempts (key lookup or put); each retried
  std::uint64_t queued = 0;        ///< envelopes received and waiting for the worker, now
  std::uint64_t ack_window = 0;    ///< acks awaiting the broker's PUBACK, at most: 64, or one
                                   ///< below the Receive Maximum of the acks connection's MQTT 5
                                   ///< CONNACK when lower; 0 before that connection's first
                                   ///< connect
  /// The kid (RFC 7638) of the node's key that signs acks and checkpoints; "" when the node has
  /// none and acks are unsigned (PROTOCOL §5.1)
  std::string node_kid;
  /// The current fault (a connection down, the store failing): "" when none, and again once
  /// the same thing works (subscribed, the acks connection up, a batch stored)
  std::string last_error;
};

/// The node's receiving service (`reflow-ingest run`): MQTT → verify → store → ack
/// (PROTOCOL §5, §7; operating it: docs/node-guide.md).
///
/// Two Paho MQTT C++ async clients, MQTT 5, with the same credentials. The events client
/// (`client_id`) has clean_start=false with `session_expiry`, so that the broker queues QoS 1
/// events while the service is down. It subscribes QoS 1 to
/// `PREFIX/+/events`, or `$share/GROUP/PREFIX/+/events` with `share_group` (several instances,
/// each with its own client id, on one store). Paho's callback only puts each message in a
/// bounded queue (2 × max_batch; when it is full the callback waits, which holds back the
/// broker). One worker thread takes up to `max_batch` envelopes and verifies them
/// (verify_envelope; on up to min(4, hardware threads) threads per batch, each registry key
/// looked up once per batch), then hands the batch to a store thread, which stores it with one
/// Store::put() and only then decides the acks, while the worker verifies the next batch (at most
/// one verified batch waits between them). Acks: retained, QoS 1, on
/// `PREFIX/DEVICE/ack`, `{"stream":"…","seq":N}` from Store::ack_point(), never for seq 0. Per
/// device at most one ack per `ack_interval` (time from the Env), with a trailing ack once the
/// interval has passed after a burst; a duplicate forces a republish (the agent may have missed
/// the ack). Neither the worker nor the store thread calls Paho (Paho's receiving thread may be
/// waiting for them in the callback while holding a lock that publishing needs): the store
/// thread hands each ack to an ack publisher
/// thread, through a map holding the latest ack per device. That thread owns the acks client
/// (`client_id` + "-acks", clean start, no session; connected at start and again when lost, with
/// the same backoff): on the events connection the broker's PUBACK to an ack would wait behind
/// every event queued for the service, which held the acks back for a whole backlog's drain. It
/// publishes the acks with at most `ack_window` awaiting the broker's PUBACK (64, or one below
/// the Receive Maximum of the broker's MQTT 5 CONNACK when lower), counts `acks_published`, and
/// retries a failed publish (not connected) after 100 ms unless a newer ack of the device
/// replaced it. A store error acks nothing of the batch: the store thread verifies and stores the
/// same batch again with exponential backoff (100 ms to 10 s) until it is stored or the service
/// stops (a failed key lookup is retried the same way by the worker); nothing is dropped. Lost
/// connections are retried with full-jitter backoff between `reconnect_min` and
/// `reconnect_max`, like the agent's forwarder. Rejections are logged at most 10 per topic DEVICE
/// per minute of the Env's steady clock (LogLimits); the rest are counted
/// (`rejection_logs_suppressed`) and summed up in one line per DEVICE once its minute is over and
/// the next batch is stored.
///
/// Owns four threads (connection, worker, store, ack publisher), the worker's short-lived verifying
/// threads and the two Paho clients; borrows the store, env and logger, which must outlive it.
/// counters() is thread-safe; start() and stop() are for one thread.
class IngestService {
 public:
  IngestService(const IngestConfig& config, Store& store, agent::Env& env, agent::Logger& log);
  ~IngestService();  ///< stop()s

  /// Starts the threads; connecting happens in the background, so this fails only on a bad
  /// configuration (invalid_config: URL, unreadable password or TLS files).
  Status start();

  /// Stops taking envelopes, stores those already queued and publishes their acks (when
  /// connected), then disconnects and joins,
  /// within about `deadline_ms` (a store that keeps failing is abandoned at the deadline; what
  /// it held is not acked, so the agents republish it).
  void stop(std::int64_t deadline_ms = 3000);

  IngestCounters counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace ingest
