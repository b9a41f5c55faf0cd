// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

// The Merkle tree of a verifiable log, RFC 9162 §2.1 (Certificate Transparency 2.0; the same
// tree as RFC 6962 §2.1): its hashes, inclusion and consistency proofs, and their verification.
// The node appends every accepted envelope as a leaf; a device checks, before it prunes, that the
// events it was acked for are in the node's log and that the log only grew. SHA-256 is
// libsodium's crypto_hash_sha256.
//
// Sizes and indices are counts of leaves; an index is 0-based (leaf_index of RFC 9162 §2.1.3).

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/result.hpp>

namespace agent::merkle {

/// A SHA-256 value: a leaf hash, a node hash or a tree's root hash.
using Hash = std::array<std::uint8_t, 32>;

/// The root of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1).
Hash empty_root();

/// The hash of a leaf: SHA-256(0x00 || entry) (RFC 9162 §2.1.1).
Hash leaf_hash(std::string_view entry);

/// The hash of an interior node: SHA-256(0x01 || left || right) (RFC 9162 §2.1.1).
Hash node_hash(const Hash& left, const Hash& right);

/// Lower-case hex of `hash` (64 characters), as logs and the README's examples show hashes.
std::string to_hex(const Hash& hash);

/// Parses 64 hex digits (either case) into a hash; fails naming what is wrong.
Result<Hash> hash_from_hex(std::string_view hex);

/// Looks up the root hash of a perfect subtree: the 2^level leaves starting at leaf
/// index × 2^level. A store of the log answers this from what it kept at append time; only
/// subtrees wholly inside the tree size being asked about are looked up.
using PerfectSubtree = std::function<Hash(unsigned level, std::uint64_t index)>;

/// The root hash of the first `size` leaves, MTH(D[0:size]) of RFC 9162 §2.1.1, from O(log size)
/// perfect subtrees.
Hash root(std::uint64_t size, const PerfectSubtree& subtree);

/// The inclusion proof of leaf `index` in the tree of `size` leaves, PATH(m, D[n]) of RFC 9162
/// §2.1.3.1: sibling hashes from the leaf up. Fails when index ≥ size.
Result<std::vector<Hash>> inclusion_proof(std::uint64_t index, std::uint64_t size,
                                          const PerfectSubtree& subtree);

/// The consistency proof between the trees of `old_size` and `size` leaves, PROOF(m, D[n]) of
/// RFC 9162 §2.1.4.1. Empty when old_size is 0 or equal to size. Fails when old_size > size.
Result<std::vector<Hash>> consistency_proof(std::uint64_t old_size, std::uint64_t size,
                                            const PerfectSubtree& subtree);

/// Verifies an inclusion proof by the algorithm of RFC 9162 §2.1.3.2: true when `leaf` is leaf
/// `index` of the tree of `size` leaves whose root is `root`.
bool verify_inclusion(std::uint64_t index, std::uint64_t size, const Hash& leaf,
                      std::span<const Hash> proof, const Hash& root);

/// Verifies a consistency proof by the algorithm of RFC 9162 §2.1.4.2: true when the tree of
/// `old_size` leaves with root `old_root` is a prefix of the tree of `size` leaves with root
/// `root`. Equal sizes need equal roots and an empty proof; old_size 0 is consistent with
/// everything (RFC 9162 leaves it undefined; nothing is to be proven).
bool verify_consistency(std::uint64_t old_size, std::uint64_t size, const Hash& old_root,
                        const Hash& root, std::span<const Hash> proof);

/// A whole tree kept in memory: every leaf hash and every perfect subtree above them (about two
/// hashes per leaf). For tests, tools and trees that fit in memory; a store keeps the same
/// hashes in its tables and answers PerfectSubtree from them.
class MemoryTree {
 public:
  /// Appends a leaf by its leaf hash; returns its index.
  std::uint64_t append(const Hash& leaf);
  std::uint64_t size() const noexcept { return m_levels.empty() ? 0 : m_levels[0].size(); }
  /// The perfect subtree lookup over this tree (valid while the tree lives).
  PerfectSubtree subtrees() const;
  /// root(size) of this tree; size must be at most size().
  Hash root(std::uint64_t size) const;

 private:
  std::vector<std::vector<Hash>> m_levels;  // m_levels[l][i]: perfect subtree (l, i)
};

}  // namespace agent::merkle
