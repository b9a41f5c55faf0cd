// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

// The proof request and answer of an audit (PROTOCOL §5.2, since 1.2): a device's
// `reflow-agent audit` asks the node, on PREFIX/DEVICE/audit, for the inclusion proofs of events
// it was acked for and the consistency proof from the log it verified last, against a checkpoint
// the node signed; the node answers on PREFIX/DEVICE/audit/proofs. Both sides use this one codec.
// Hashes travel as standard base64 with padding (RFC 4648 §4), as in signed acks (§5.1).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include <reflow/core/merkle.hpp>
#include <reflow/core/result.hpp>

namespace agent::audit {

/// The topic suffixes below PREFIX/DEVICE: the request (device → node) and the answer.
inline constexpr std::string_view k_request_suffix = "/audit";
inline constexpr std::string_view k_answer_suffix = "/audit/proofs";
/// At most this many seqs in one request (an answer of 256 proofs of 40 hashes is ~500 KiB).
inline constexpr std::size_t k_max_seqs = 256;
/// A request id is 1 to 64 characters of [A-Za-z0-9._-].
inline constexpr std::size_t k_max_id_chars = 64;

/// `{"id":ID,"stream":S,"seqs":[…],"tree_size":N[,"from_size":M]}`.
struct ProofRequest {
  std::string id;  ///< chosen by the auditor; the answer repeats it
  std::string stream;
  std::vector<std::int64_t> seqs;  ///< events of `stream` to prove, 0 to k_max_seqs of them
  std::uint64_t tree_size = 0;     ///< the size of the signed checkpoint to prove them in
  /// The size of the log the device verified last: the answer proves `tree_size` consistent
  /// with it (RFC 9162 §2.1.4). 0 or absent: no consistency proof is asked.
  std::uint64_t from_size = 0;
};

/// One event's proof in the answer.
struct LeafProof {
  std::int64_t seq = 0;
  std::uint64_t leaf_index = 0;
  /// SHA-256(0x00 || the envelope the node holds for the event now), RFC 9162 §2.1.1.
  merkle::Hash leaf{};
  std::vector<merkle::Hash> inclusion;  ///< RFC 9162 §2.1.3.1, in the tree of tree_size leaves
};

/// One event the node holds but cannot prove (its log lacks a hash the proof needs, the
/// checkpoint is beyond its log): `{"seq":N,"error":TEXT}` in the answer's "unproven".
struct LeafError {
  std::int64_t seq = 0;
  std::string error;  ///< the node's words, at most k_max_error_chars
};

/// At most this many characters of a node's error text are kept by parse_answer.
inline constexpr std::size_t k_max_error_chars = 500;

/// `{"id":ID,"tree_size":N,"consistency_from":M,"consistency":[…]|"consistency_error":TEXT,
/// "proofs":[{"seq","leaf_index","leaf","inclusion"}…],"missing":[seq…],"unproven":[{"seq",
/// "error"}…]}`, or `{"id":ID,"error":TEXT}` when the node cannot read the request at all. Each
/// requested seq is in exactly one of proofs, missing and unproven ("unproven" and
/// "consistency_error" since the per-leaf answers of PROTOCOL 1.2; absent: none).
struct ProofAnswer {
  std::string id;
  std::optional<std::string> error;
  std::uint64_t tree_size = 0;
  std::uint64_t consistency_from = 0;  ///< the request's from_size, 0 when none was asked
  std::vector<merkle::Hash> consistency;
  /// Why the node cannot prove the consistency from consistency_from (then `consistency` is
  /// empty and not sent).
  std::optional<std::string> consistency_error;
  std::vector<LeafProof> proofs;
  std::vector<std::int64_t> missing;  ///< seqs the node holds no event or no leaf for
  std::vector<LeafError> unproven;    ///< seqs the node holds but cannot prove
};

/// At most this many hashes in one proof: one per level of a tree of 2^64 leaves.
inline constexpr std::size_t k_max_proof_hashes = 64;

/// A hash as signed acks (PROTOCOL §5.1) and audit answers (§5.2) carry it: a JSON string of
/// the standard base64 with padding (RFC 4648 §4) of its 32 bytes. nullopt for anything else.
std::optional<merkle::Hash> hash_from_json(const nlohmann::ordered_json& value);

/// An inclusion or consistency proof: a JSON array of at most k_max_proof_hashes such hashes,
/// in order. nullopt when it is not an array, is longer, or any item is not such a hash.
std::optional<std::vector<merkle::Hash>> proof_from_json(const nlohmann::ordered_json& value);

std::string encode(const ProofRequest& request);
std::string encode(const ProofAnswer& answer);

/// Parses a request. Errors: invalid_argument naming the member that is wrong.
Result<ProofRequest> parse_request(std::string_view payload);

/// Parses an answer. Errors: invalid_argument naming the member that is wrong.
Result<ProofAnswer> parse_answer(std::string_view payload);

}  // namespace agent::audit
