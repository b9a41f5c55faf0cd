// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <array>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <reflow/core/jose.hpp>
#include <reflow/core/merkle.hpp>
#include <reflow/core/result.hpp>

namespace agent {

/// Why an ack was refused by an agent that pins the node's key (PROTOCOL §5.1). Each reason has
/// its own counter in `status` (`refused_acks_by_reason`, named by to_string()).
enum class AckRefusal : std::uint8_t {
  malformed,         ///< not the §5 object, or `signed` not a JWS of the §5.1 form
  unsigned_ack,      ///< no `signed` member (a 1.0 node, a node without a key, or a forger)
  wrong_key,         ///< signed by a key other than the pinned one (header `kid`)
  bad_signature,     ///< the Ed25519 signature does not verify with the pinned key
  misrouted,         ///< payload device/stream/seq not this device's stream or not the outer ones
  beyond_committed,  ///< seq beyond the last seq this agent committed (PROTOCOL §5)
  replayed,          ///< seq older than the last ack this agent verified
  bad_inclusion,     ///< the inclusion proof does not put this agent's envelope under `root`
  inconsistent,      ///< the log shrank, has another root at the size last verified, or its
                     ///< consistency proof from that size fails
  /// the log grew, the node sent consistency proofs before, and this ack has none from the size
  /// this agent verified (none, or from another size): the node had not yet read that size from
  /// the agent's status (PROTOCOL §6), as after its restart. No evidence against the node, so no
  /// ack_error; it signs the ack again once it reads the status
  no_consistency_proof,
};
inline constexpr std::size_t k_ack_refusal_kinds = 10;

/// "malformed", "unsigned", "wrong_key", "bad_signature", "misrouted", "beyond_committed",
/// "replayed", "bad_inclusion", "inconsistent", "no_consistency_proof": the names `status` counts
/// them under.
std::string_view to_string(AckRefusal reason);

/// A refused ack: the reason and a message saying what failed (never the payload's bytes).
struct AckRefused {
  AckRefusal reason = AckRefusal::malformed;
  std::string message;
};

/// What a verified signed ack states (PROTOCOL §5.1): the node stored events 1..`seq` of
/// `stream`, and event `seq` is leaf `leaf_index` of its log of `tree_size` leaves with root
/// `root`.
struct VerifiedAck {
  std::string stream;
  std::int64_t seq = 0;
  std::uint64_t tree_size = 0;
  merkle::Hash root{};
  std::uint64_t leaf_index = 0;
  /// True when `seq` equals the last verified ack's: the retained ack read again on reconnect.
  /// Nothing is left to prune and the inclusion proof is not checked (the envelope is gone).
  bool repeat = false;
  /// The payload carried `consistency_from` and `consistency` (and they verified): the node
  /// sends consistency proofs, so a grown log without one is refused from now on.
  bool carried_consistency = false;
  /// False only when the log grew from the verified one and no consistency proof came (accepted
  /// because this node never sent one, PROTOCOL §5.1's compatibility rule): not proven.
  bool consistency_proven = true;
};

/// What the agent knows when an ack comes.
struct AckContext {
  std::string device;               ///< this agent's device id (the topic's DEVICE)
  std::string stream;               ///< this outbox's stream
  std::int64_t last_committed = 0;  ///< the last seq committed in the outbox
  std::int64_t last_verified = 0;   ///< the seq of the last verified ack (the outbox's acked seq)
  /// This agent's own envelope of `seq`, exactly as it published it; nullopt when the outbox no
  /// longer (or never) held it.
  std::function<Result<std::optional<std::string>>(std::int64_t seq)> envelope_of;
  /// The node's log (tree_size, root) as the last verified ack stated it; nullopt: none yet.
  std::optional<std::pair<std::uint64_t, merkle::Hash>> verified_log;
  /// The node sent a consistency proof in an ack this agent verified before: from then on a
  /// grown log needs one (PROTOCOL §5.1).
  bool consistency_seen = false;
};

/// Checks an ack payload from `PREFIX/DEVICE/ack` against the pinned node key, in the order of
/// PROTOCOL §5.1: the outer `{"stream","seq"}`, the `signed` JWS (RFC 7515 §7.2.2) with header
/// `{"alg":"EdDSA","kid":<node_key.kid>,"typ":"reflow-ack+json"}` and a valid Ed25519
/// signature, a payload whose `device`, `stream` and `seq` equal context.device,
/// context.stream and the outer members, `seq` ≤ last_committed and ≥ last_verified, and an
/// inclusion proof (standard base64 hashes, RFC 9162 §2.1.3.2) that puts
/// SHA-256(0x00 ‖ envelope_of(seq)) at `leaf_index` of the tree of `tree_size` leaves whose
/// root is `root`, and a log no smaller than `verified_log` with the same root at the same size.
/// A log larger than `verified_log` (old_size, old_root) needs `consistency_from` == old_size
/// and `consistency` (standard base64 hashes, RFC 9162 §2.1.4.1) that verifies by
/// merkle::verify_consistency (RFC 9162 §2.1.4.2); a payload without them is accepted, not
/// proven (VerifiedAck::consistency_proven false), only while !consistency_seen, else refused as
/// no_consistency_proof, as is a proof from another size. Returns the statement, or the first check
/// that failed with its reason (an envelope that cannot be read is bad_inclusion: nothing was
/// proven).
std::expected<VerifiedAck, AckRefused> verify_signed_ack(std::string_view payload,
                                                         const PublicJwk& node_key,
                                                         const AckContext& context);

/// Reads the pinned node key of `[mqtt] node_jwk` (the `node_ack_jwk` of the enrolment bundle,
/// as `reflow-ingest key show` prints its `jwk`): a public Ed25519 JWK (RFC 8037 §2), `kid`
/// optional but checked. Errors: invalid_config naming the file and `mqtt.node_jwk`.
Result<PublicJwk> load_node_jwk(const std::filesystem::path& path, std::string_view config_file);

}  // namespace agent
