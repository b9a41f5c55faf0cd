// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/result.hpp>
#include <reflow/device/ack_verifier.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/outbox.hpp>

namespace agent {

/// What the forwarder reports for `status`.
struct ForwarderStats {
  bool connected = false;
  std::int64_t state_since_unix_ms = 0;  ///< when it last connected or lost the connection
  std::string broker_url;
  std::string last_error;         ///< the current fault; "" once it clears (connected again)
  std::int64_t next_seq = 0;      ///< the next seq to publish
  std::uint64_t published = 0;    ///< PUBACKed publishes since start
  std::uint64_t republished = 0;  ///< of which republishes (reconnect or resend_after)
  std::uint64_t acks = 0;         ///< ack messages applied
  /// Acks refused, nothing pruned: a seq beyond the outbox's last committed seq, and with a
  /// pinned node key every ack that does not verify (PROTOCOL §5.1).
  std::uint64_t refused_acks = 0;
  /// The pinned node key's kid (mqtt.node_jwk); nullopt: acks are not verified.
  std::optional<std::string> node_kid;
  /// With a pinned key: refused acks per reason, indexed by AckRefusal.
  std::array<std::uint64_t, k_ack_refusal_kinds> refused_by_reason{};
  /// The last failed proof (bad_inclusion), "" once an ack verifies again.
  std::string ack_error;
  /// The node's log as the last verified ack stated it (0: none verified since start).
  std::uint64_t verified_tree_size = 0;
  /// Whether the node proved its log's growth (PROTOCOL §5.1): true once a consistency proof
  /// verified, false when a grown log was accepted without one (a node that sends none),
  /// nullopt before either since start.
  std::optional<bool> consistency_proven;
  std::uint64_t connects = 0;
};

/// A node's ack (PROTOCOL §5): the node holds `stream` contiguously up to `seq`.
struct Ack {
  std::string stream;    ///< the outbox stream it acknowledges (a ULID, not checked here)
  std::int64_t seq = 0;  ///< ≥ 0
};

/// Parses the payload of a message on `PREFIX/DEVICE/ack` (PROTOCOL §5): a JSON object with a
/// string `stream` and an integer `seq` ≥ 0; other members are ignored. The forwarder logs and
/// ignores anything else. Errors: invalid_argument saying what is wrong (never the payload).
Result<Ack> parse_ack(std::string_view payload);

/// The forwarder stage: publishes the outbox to the node over MQTT and prunes on the node's ack.
///
/// Paho MQTT C++ async client with Paho persistence off (the outbox is the one source of truth).
/// Each event goes to `PREFIX/DEVICE/events`, QoS 1, not retained, in seq order, with at most
/// `max_inflight` unPUBACKed at once. On connect it subscribes to the retained
/// `PREFIX/DEVICE/ack`, publishes the retained §6 status (will: `{"state":"offline"}`, retained)
/// and (re)publishes from acked+1; it republishes from acked+1 again when the ack has not
/// advanced for `resend_after` while events are outstanding (PROTOCOL §5). Acks are applied to the
/// outbox, which prunes what they cover. With `mqtt.node_jwk` set, an ack prunes only once
/// verify_signed_ack accepts it (PROTOCOL §5.1); others are counted per reason and logged at most
/// once a minute per reason. Reconnects back off exponentially with full jitter
/// between `reconnect_min` and `reconnect_max`. The status is refreshed every `status_interval`.
///
/// Owns one thread and the Paho client; borrows the outbox, env and logger.
/// notify_committed(), reload() and stats() are thread-safe.
class Forwarder {
 public:
  Forwarder(const AgentConfig& config, Outbox& outbox, Env& env, Logger& log, std::string version);
  ~Forwarder();  ///< stop()s

  /// Starts the thread; connecting happens in the background, so this fails only on a bad
  /// configuration (invalid_config: URL, unreadable password or TLS files).
  Status start();

  /// Wakes the forwarder: events up to `last_seq` are committed.
  void notify_committed(std::int64_t last_seq);

  /// From any thread (SIGHUP): reads mqtt.password_file again. While connected, a changed
  /// password ends the session and the forwarder reconnects with it; an unchanged one, or a file
  /// that cannot be used (unreadable, readable by others), is logged and the session goes on.
  /// Every connect attempt reads the file anyway, so a changed password is used at the next
  /// reconnect without this too.
  void reload();

  /// Publishes the offline status, disconnects and joins, within `deadline_ms` in all.
  void stop(std::int64_t deadline_ms = 3000);

  ForwarderStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace agent
