// SPDX-License-Identifier: AGPL-3.0-or-later
// The node service's verify/store pipeline: the bounded queue from Paho's callback, the worker
// that verifies batches and the store thread that stores them and decides the acks. Private to
// reflow_node; IngestService is its only user.
#pragma once

#include <memory>
#include <string>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/node/config.hpp>
#include <reflow/node/node_key.hpp>
#include <reflow/node/store.hpp>

#include "ack_publisher.hpp"
#include "service_common.hpp"

namespace ingest {

/// Envelopes in, stored events and acks out (PROTOCOL §5, §7).
///
/// enqueue() puts an envelope in a bounded queue (2 × max_batch, at least 64); when the queue is
/// full it waits, which holds back Paho's reading and so the broker, instead of dropping
/// anything. The worker thread takes up to `max_batch` envelopes and verifies them
/// (verify_envelope_with, on up to min(4, hardware threads) threads per batch, each registry key
/// looked up once per batch), then hands the batch to the store thread, which stores it with one
/// Store::put() and only then decides the acks, while the worker verifies the next batch (at most
/// one verified batch waits between them). A failed key lookup or put acks nothing of the batch:
/// it is verified and stored again with exponential backoff (100 ms to 10 s) until it is stored
/// or the stop deadline passes. Acks: per device at most one per `ack_interval` (the Env's steady
/// clock), a trailing one once the interval has passed after a burst, a duplicate forcing a
/// republish, never for seq 0; each goes to the AckPublisher. Rejections are logged at most 10 per
/// topic DEVICE per minute (LogLimits), the rest counted and summed up.
///
/// Writes `received`, `queued`, `stored`, `duplicates`, the rejection counters, `store_errors`
/// and `last_error` of `stats`. Borrows everything it is given, which must outlive it. enqueue()
/// is thread-safe (Paho's thread); start() and stop() are for the thread that owns the service.
class IngestPipeline {
 public:
  IngestPipeline(const IngestConfig& config, Store& store, agent::Env& env, agent::Logger& log,
                 ServiceStats& stats, const StopDeadline& stop_deadline, AckPublisher& acks);
  ~IngestPipeline();  ///< stop()s

  IngestPipeline(const IngestPipeline&) = delete;
  IngestPipeline& operator=(const IngestPipeline&) = delete;

  /// Before start(): with a signer, each ack carries the node's signed statement and the log's
  /// signed checkpoint is published (PROTOCOL §5.1); null (the default): unsigned acks (§5).
  /// The signer must outlive the pipeline.
  void set_signer(const NodeSigner* signer);

  /// Starts the store thread, then the worker. Throws std::system_error when no thread can be
  /// had (stop() then ends the one started).
  void start();

  /// From Paho's thread: queues one envelope as it arrived on `topic`, waiting while the queue is
  /// full. After stop() (or close_intake()) the envelope is dropped: not acked, so its agent
  /// republishes it.
  void enqueue(std::string topic, std::string payload);

  /// From Paho's thread: the retained status of `topic` (PREFIX/DEVICE/status, PROTOCOL §6).
  /// With a signer, its `verified_tree_size` (the size of the log the device verified last) is
  /// kept in memory per device, and the device's next ack carries the consistency proof from it
  /// (PROTOCOL §5.1); a changed size makes the store thread sign the device's ack again. A
  /// status without it (a 1.0 agent, an agent without a pinned key, the offline will) changes
  /// nothing; a payload that is not the §6 object is ignored. Never waits for the store.
  void note_status(std::string_view topic, std::string_view payload);

  /// From Paho's thread: a device's audit request from `topic` (PREFIX/DEVICE/audit, PROTOCOL
  /// §5.2). The store thread answers it (AckPublisher::hand_answer) with the proofs of the
  /// device's events in the log of the asked size; at most 16 requests wait, later ones are
  /// dropped (the auditor asks again). Never waits for the store.
  void note_audit_request(std::string_view topic, std::string_view payload);

  /// Takes no more envelopes; what is queued is still verified and stored by stop().
  void close_intake();

  /// Closes the intake, lets the worker verify what is queued and the store thread store it and
  /// hand its acks to the AckPublisher (each bounded by the stop deadline), then joins both.
  /// What is left is not acked (logged).
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace ingest
