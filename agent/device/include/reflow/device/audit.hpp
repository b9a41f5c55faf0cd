// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <reflow/core/merkle.hpp>
#include <reflow/core/result.hpp>
#include <reflow/device/config.hpp>

namespace agent {

/// One event of this device that the node's log no longer proves.
struct AuditFinding {
  std::int64_t seq = 0;
  std::string id;       ///< event id (ULID)
  std::string problem;  ///< "missing", "altered" or "not_proven"
  std::string detail;   ///< what the node answered, in words
};

/// The check of a checkpoint another party holds against the audited one (C2SP tlog-witness's
/// question: are they views of one append-only log?).
struct WitnessCheck {
  std::uint64_t tree_size = 0;  ///< the witness checkpoint's
  merkle::Hash root{};
  bool consistent = false;
  std::string detail;  ///< why not, in words; empty when consistent
};

/// What `reflow-agent audit` found (audit_node).
struct AuditReport {
  std::string origin;           ///< the checkpoint's origin (the node's ingest.log_origin)
  std::uint64_t tree_size = 0;  ///< the node's signed checkpoint audited against
  merkle::Hash root{};
  /// The size of the log this agent verified last, when the checkpoint was checked against it
  /// (RFC 9162 §2.1.4); 0 when none was verified yet.
  std::uint64_t consistency_from = 0;
  std::optional<std::string> inconsistent;  ///< why the checkpoint does not extend that log
  /// The checkpoint's size when it was proven to extend that log and saved in the outbox as the
  /// log this agent verified (Outbox::save_audited_log); 0 when nothing was saved.
  std::uint64_t saved_tree_size = 0;
  std::uint64_t checked = 0;  ///< kept leaves checked
  std::vector<AuditFinding> findings;
  std::optional<WitnessCheck> witness;  ///< when a witness checkpoint was given
  bool ok() const { return !inconsistent && findings.empty() && (!witness || witness->consistent); }
};

/// Called after each answer: leaves checked so far and in all.
using AuditProgress = std::function<void(std::uint64_t checked, std::uint64_t total)>;

/// Audits the node from this device's side (PROTOCOL §5.2): reads, read-only, the leaves the
/// outbox kept of every event a verified signed ack covered and the last log it verified
/// (Outbox::read_audit_state), connects to the broker as `client_id` (or "reflow-agent-" +
/// device_id) + "-audit" with the config's credentials, takes the node's retained signed
/// checkpoint on PREFIX/_node/checkpoint and verifies it with the pinned key (mqtt.node_jwk,
/// C2SP signed note), then asks on PREFIX/DEVICE/audit for the proofs, up to 256 events a
/// request, and checks each answer: the consistency of the checkpoint with the last verified
/// log (RFC 9162 §2.1.4.2), and per event that the node holds it (else "missing"), that the
/// envelope it holds hashes to the kept leaf and sits at the index the ack proved (else
/// "altered"), and that the inclusion proof puts the kept leaf under the checkpoint's root
/// (RFC 9162 §2.1.3.2, else "not_proven"; an event the node answers it cannot prove, its log
/// lacking a hash the proof needs, is "not_proven" too, with the node's words). A consistency
/// proof that verifies makes the checkpoint the log this agent verified, saved durably in the
/// outbox (Outbox::save_audited_log, saved_tree_size) for the next audit and the daemon's ack
/// verifier. With `witness_note` (a C2SP tlog-checkpoint signed note another party got from
/// the node, e.g. by `reflow-ingest log checkpoint --signed` or from the retained topic) it
/// also checks that the note verifies with the pinned key for the same origin and that the two
/// checkpoints are views of one log: equal roots at equal sizes, else the node's consistency
/// proof from the smaller to the larger (report.witness). `timeout` bounds the wait for the
/// connection, the checkpoint and each answer.
/// Errors: invalid_config (no mqtt.node_jwk, bad credentials), io (the outbox cannot be read or
/// written), timeout (no checkpoint or no answer), crypto (the checkpoint or the witness note
/// does not verify with the pinned key), rejected (the node cannot read the request at all).
Result<AuditReport> audit_node(const AgentConfig& config, std::chrono::milliseconds timeout,
                               const AuditProgress& progress,
                               const std::optional<std::string>& witness_note = std::nullopt);

}  // namespace agent
