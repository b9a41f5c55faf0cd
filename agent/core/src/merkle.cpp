// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/merkle.hpp>

#include <bit>

#include <fmt/format.h>
#include <sodium.h>

namespace agent::merkle {
namespace {

constexpr std::uint8_t k_leaf_prefix = 0x00;
constexpr std::uint8_t k_node_prefix = 0x01;

// The largest power of two smaller than n (n ≥ 2): the k of RFC 9162 §2.1.1.
std::uint64_t split_point(std::uint64_t n) {
  return std::bit_floor(n - 1);
}

Hash sha256(std::span<const std::span<const std::uint8_t>> parts) {
  crypto_hash_sha256_state state;
  crypto_hash_sha256_init(&state);
  for (const auto part : parts)
    crypto_hash_sha256_update(&state, part.data(), part.size());
  Hash out;
  crypto_hash_sha256_final(&state, out.data());
  return out;
}

// MTH(D[begin:begin+n]) for n ≥ 1, with begin a multiple of the largest power of two ≤ n, as
// every subtree of the RFC's recursion is.
Hash range_hash(std::uint64_t begin, std::uint64_t n, const PerfectSubtree& subtree) {
  if (std::has_single_bit(n)) return subtree(static_cast<unsigned>(std::countr_zero(n)), begin / n);
  const std::uint64_t k = split_point(n);
  return node_hash(range_hash(begin, k, subtree), range_hash(begin + k, n - k, subtree));
}

// PATH(m, D[begin:begin+n]) of RFC 9162 §2.1.3.1, appended to `out` from the leaf up.
void path(std::uint64_t m, std::uint64_t begin, std::uint64_t n, const PerfectSubtree& subtree,
          std::vector<Hash>& out) {
  if (n <= 1) return;
  const std::uint64_t k = split_point(n);
  if (m < k) {
    path(m, begin, k, subtree, out);
    out.push_back(range_hash(begin + k, n - k, subtree));
  } else {
    path(m - k, begin + k, n - k, subtree, out);
    out.push_back(range_hash(begin, k, subtree));
  }
}

// SUBPROOF(m, D[begin:begin+n], b) of RFC 9162 §2.1.4.1, appended to `out`.
void subproof(std::uint64_t m, std::uint64_t begin, std::uint64_t n, bool complete,
              const PerfectSubtree& subtree, std::vector<Hash>& out) {
  if (m == n) {
    if (!complete) out.push_back(range_hash(begin, n, subtree));
    return;
  }
  const std::uint64_t k = split_point(n);
  if (m <= k) {
    subproof(m, begin, k, complete, subtree, out);
    out.push_back(range_hash(begin + k, n - k, subtree));
  } else {
    subproof(m - k, begin + k, n - k, false, subtree, out);
    out.push_back(range_hash(begin, k, subtree));
  }
}

// Shifts fn and sn right together until fn's lowest bit is set or fn is 0 (RFC 9162 §2.1.3.2
// step 4.b.ii, §2.1.4.2 step 6.b.ii).
void shift_to_set_bit(std::uint64_t& fn, std::uint64_t& sn) {
  while (fn != 0 && (fn & 1U) == 0) {
    fn >>= 1U;
    sn >>= 1U;
  }
}

}  // namespace

Hash empty_root() {
  return sha256({});
}

Hash leaf_hash(std::string_view entry) {
  const std::uint8_t prefix = k_leaf_prefix;
  const std::span<const std::uint8_t> parts[] = {
      {&prefix, 1}, {reinterpret_cast<const std::uint8_t*>(entry.data()), entry.size()}};
  return sha256(parts);
}

Hash node_hash(const Hash& left, const Hash& right) {
  const std::uint8_t prefix = k_node_prefix;
  const std::span<const std::uint8_t> parts[] = {{&prefix, 1}, left, right};
  return sha256(parts);
}

std::string to_hex(const Hash& hash) {
  std::string hex(hash.size() * 2 + 1, '\0');
  sodium_bin2hex(hex.data(), hex.size(), hash.data(), hash.size());
  hex.pop_back();
  return hex;
}

Result<Hash> hash_from_hex(std::string_view hex) {
  Hash hash;
  std::size_t length = 0;
  const char* end = nullptr;
  if (hex.size() != hash.size() * 2 ||
      sodium_hex2bin(hash.data(), hash.size(), hex.data(), hex.size(), nullptr, &length, &end) !=
          0 ||
      length != hash.size() || end != hex.data() + hex.size())
    return fail(ErrorCode::invalid_argument,
                fmt::format("expected a SHA-256 hash as 64 hex digits; got {} characters that "
                            "are not",
                            hex.size()));
  return hash;
}

Hash root(std::uint64_t size, const PerfectSubtree& subtree) {
  return size == 0 ? empty_root() : range_hash(0, size, subtree);
}

Result<std::vector<Hash>> inclusion_proof(std::uint64_t index, std::uint64_t size,
                                          const PerfectSubtree& subtree) {
  if (index >= size)
    return fail(ErrorCode::invalid_argument,
                fmt::format("leaf {} is not in a tree of {} leaves", index, size));
  std::vector<Hash> proof;
  path(index, 0, size, subtree, proof);
  return proof;
}

Result<std::vector<Hash>> consistency_proof(std::uint64_t old_size, std::uint64_t size,
                                            const PerfectSubtree& subtree) {
  if (old_size > size)
    return fail(ErrorCode::invalid_argument,
                fmt::format("a tree of {} leaves cannot grow from one of {}", size, old_size));
  std::vector<Hash> proof;
  if (old_size > 0 && old_size < size) subproof(old_size, 0, size, true, subtree, proof);
  return proof;
}

bool verify_inclusion(std::uint64_t index, std::uint64_t size, const Hash& leaf,
                      std::span<const Hash> proof, const Hash& root) {
  if (index >= size) return false;
  std::uint64_t fn = index;
  std::uint64_t sn = size - 1;
  Hash r = leaf;
  for (const Hash& p : proof) {
    if (sn == 0) return false;
    if ((fn & 1U) != 0 || fn == sn) {
      r = node_hash(p, r);
      if ((fn & 1U) == 0) shift_to_set_bit(fn, sn);
    } else {
      r = node_hash(r, p);
    }
    fn >>= 1U;
    sn >>= 1U;
  }
  return sn == 0 && r == root;
}

bool verify_consistency(std::uint64_t old_size, std::uint64_t size, const Hash& old_root,
                        const Hash& root, std::span<const Hash> proof) {
  if (old_size > size) return false;
  if (old_size == size) return proof.empty() && old_root == root;
  if (old_size == 0) return proof.empty();
  if (proof.empty()) return false;
  std::vector<Hash> path(proof.begin(), proof.end());
  if (std::has_single_bit(old_size)) path.insert(path.begin(), old_root);
  std::uint64_t fn = old_size - 1;
  std::uint64_t sn = size - 1;
  while ((fn & 1U) != 0) {
    fn >>= 1U;
    sn >>= 1U;
  }
  Hash fr = path.front();
  Hash sr = path.front();
  for (std::size_t i = 1; i < path.size(); ++i) {
    const Hash& c = path[i];
    if (sn == 0) return false;
    if ((fn & 1U) != 0 || fn == sn) {
      fr = node_hash(c, fr);
      sr = node_hash(c, sr);
      if ((fn & 1U) == 0) shift_to_set_bit(fn, sn);
    } else {
      sr = node_hash(sr, c);
    }
    fn >>= 1U;
    sn >>= 1U;
  }
  return fr == old_root && sr == root && sn == 0;
}

std::uint64_t MemoryTree::append(const Hash& leaf) {
  if (m_levels.empty()) m_levels.emplace_back();
  const std::uint64_t index = m_levels[0].size();
  m_levels[0].push_back(leaf);
  // Each completed pair of perfect subtrees completes one a level up.
  for (std::size_t level = 0; m_levels[level].size() % 2 == 0; ++level) {
    if (level + 1 == m_levels.size()) m_levels.emplace_back();
    const auto& below = m_levels[level];
    m_levels[level + 1].push_back(node_hash(below[below.size() - 2], below.back()));
  }
  return index;
}

PerfectSubtree MemoryTree::subtrees() const {
  return [this](unsigned level, std::uint64_t index) { return m_levels.at(level).at(index); };
}

Hash MemoryTree::root(std::uint64_t size) const {
  return merkle::root(size, subtrees());
}

}  // namespace agent::merkle
