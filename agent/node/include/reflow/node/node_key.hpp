// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

// The node's own Ed25519 key and what it signs (issue 19): the checkpoints of its verifiable log,
// as C2SP signed notes (reflow/core/signed_note.hpp), and its acks, as flattened JWS
// (PROTOCOL §5.1). A device, or an auditor, who pins the node's public key can then check that
// the node stored what it acknowledged and that its log only grows.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/jose.hpp>
#include <reflow/core/merkle.hpp>
#include <reflow/core/result.hpp>
#include <reflow/node/config.hpp>
#include <reflow/node/store.hpp>

namespace ingest {

/// The `typ` of a signed ack's protected header (PROTOCOL §5.1).
using agent::k_ack_typ;

/// What a signed ack states (PROTOCOL §5.1): the node stored `device`'s events 1..`seq` of
/// `stream`, and event `seq` is leaf `leaf_index` of the log whose first `tree_size` leaves have
/// the root hash `root`, as `inclusion` (RFC 9162 §2.1.3.1, leaf to root) proves; with
/// `consistency_from`, that log extends its first `consistency_from` leaves, as `consistency`
/// (RFC 9162 §2.1.4.1) proves.
struct AckStatement {
  std::string device;
  AckPoint point;
  std::int64_t time_unix_ms = 0;  ///< the node's clock when it signed
  std::uint64_t tree_size = 0;
  agent::merkle::Hash root{};
  std::uint64_t leaf_index = 0;
  std::vector<agent::merkle::Hash> inclusion;
  /// The size the device last verified (its status' `verified_tree_size`, PROTOCOL §6), when
  /// 0 < it < tree_size; nullopt: no consistency members in the payload.
  std::optional<std::uint64_t> consistency_from;
  std::vector<agent::merkle::Hash> consistency;  ///< PROOF(consistency_from, D[tree_size])
};

/// The node's key with the log's origin: signs checkpoints and acks. Not copyable (it holds the
/// secret key in locked memory, agent::DeviceKey); signing is thread-safe (const).
class NodeSigner {
 public:
  /// Loads the key at config.effective_node_key_file() (the format and permission rules of
  /// agent::DeviceKey::load: mode 0600, one base64url seed line). nullopt when the file does not
  /// exist: the node then runs unsigned, as protocol 1.0. Errors: io, crypto (a file that exists
  /// but cannot be used is never silently ignored).
  static Result<std::optional<NodeSigner>> load(const IngestConfig& config);

  NodeSigner(agent::DeviceKey key, std::string origin);

  const agent::PublicJwk& public_jwk() const noexcept { return m_key.public_jwk(); }
  const std::string& origin() const noexcept { return m_origin; }

  /// The signed checkpoint of `checkpoint` (c2sp.org/tlog-checkpoint, key name = origin).
  std::string checkpoint_note(const LogCheckpoint& checkpoint) const;

  /// The flattened JWS (RFC 7515 §7.2.2) of `statement`: protected header
  /// `{"alg":"EdDSA","kid":KID,"typ":"reflow-ack+json"}`, payload the JSON object of
  /// PROTOCOL §5.1 (with `consistency_from` and `consistency` when the statement has them), as
  /// one JSON object on one line.
  nlohmann::ordered_json sign_ack(const AckStatement& statement) const;

  /// A JWS of `payload` under the base64url protected header `protected_b64` (which names this
  /// key's kid and a `typ`): for the node's other signed statements (members_list.hpp).
  agent::Jws sign_raw(std::string_view protected_b64, std::string_view payload) const {
    return agent::jws_sign(m_key, protected_b64, payload);
  }

 private:
  agent::DeviceKey m_key;
  std::string m_origin;
  std::string m_protected_b64;
};

/// The payload of PROTOCOL §2's ack topic: `{"stream":S,"seq":N}`, and with `signed`, the
/// member `"signed"` holding the node's JWS (PROTOCOL §5.1), on one line.
std::string ack_body(const AckPoint& point, const nlohmann::ordered_json* signed_ack);

/// Creates the node's key at config.effective_node_key_file() (mode 0600, refusing to overwrite
/// an existing file) and its public JWK beside it (node.jwk, mode 0644), creating the directory
/// when missing. Run as root, both files are given to the owner of the key's directory (the
/// service user, as the CA's files are). Errors: io naming the path.
Result<agent::PublicJwk> create_node_key(const IngestConfig& config);

}  // namespace ingest
