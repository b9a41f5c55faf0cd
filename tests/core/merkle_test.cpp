// SPDX-License-Identifier: AGPL-3.0-or-later
// The Merkle tree of RFC 9162 §2.1: against the reference roots and proofs that the Certificate
// Transparency implementations publish for RFC 6962's tree (the same tree), and against a
// second implementation written here straight from the RFC's definitions over a list of leaves,
// for every tree size, every leaf and every pair of sizes up to 70.
#include <reflow/core/merkle.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace agent::merkle {
namespace {

Hash hex(std::string_view text) {
  auto hash = hash_from_hex(text);
  EXPECT_TRUE(hash) << text;
  return hash ? *hash : Hash{};
}

std::string unhex(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i + 1 < text.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(std::string(text.substr(i, 2)), nullptr, 16)));
  return out;
}

// The eight leaves of the Certificate Transparency test data and the roots of their first
// 0..8 leaves (certificate-transparency's and trillian's RFC 6962 test vectors).
const char* const k_leaves[] = {"",
                                "00",
                                "10",
                                "2021",
                                "3031",
                                "40414243",
                                "5051525354555657",
                                "606162636465666768696a6b6c6d6e6f"};
const char* const k_roots[] = {
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
};

MemoryTree reference_tree() {
  MemoryTree tree;
  for (const char* leaf : k_leaves)
    tree.append(leaf_hash(unhex(leaf)));
  return tree;
}

// RFC 9162 §2.1.1's MTH, §2.1.3.1's PATH and §2.1.4.1's SUBPROOF, over slices of a list.
using Leaves = std::span<const Hash>;

std::size_t k_of(std::size_t n) {
  std::size_t k = 1;
  while (k * 2 < n)
    k *= 2;
  return k;
}

Hash mth(Leaves d) {
  if (d.empty()) return empty_root();
  if (d.size() == 1) return d[0];
  const std::size_t k = k_of(d.size());
  return node_hash(mth(d.subspan(0, k)), mth(d.subspan(k)));
}

std::vector<Hash> naive_path(std::size_t m, Leaves d) {
  if (d.size() <= 1) return {};
  const std::size_t k = k_of(d.size());
  std::vector<Hash> out;
  if (m < k) {
    out = naive_path(m, d.subspan(0, k));
    out.push_back(mth(d.subspan(k)));
  } else {
    out = naive_path(m - k, d.subspan(k));
    out.push_back(mth(d.subspan(0, k)));
  }
  return out;
}

std::vector<Hash> naive_subproof(std::size_t m, Leaves d, bool b) {
  if (m == d.size()) return b ? std::vector<Hash>{} : std::vector<Hash>{mth(d)};
  const std::size_t k = k_of(d.size());
  std::vector<Hash> out;
  if (m <= k) {
    out = naive_subproof(m, d.subspan(0, k), b);
    out.push_back(mth(d.subspan(k)));
  } else {
    out = naive_subproof(m - k, d.subspan(k), false);
    out.push_back(mth(d.subspan(0, k)));
  }
  return out;
}

Hash flipped(Hash hash) {
  hash[7] ^= 0x20;
  return hash;
}

TEST(MerkleTest, RootsMatchTheRfc6962ReferenceVectors) {
  const auto tree = reference_tree();
  EXPECT_EQ(to_hex(empty_root()), k_roots[0]);
  for (std::uint64_t size = 0; size <= 8; ++size)
    EXPECT_EQ(to_hex(tree.root(size)), k_roots[size]) << "size " << size;
}

TEST(MerkleTest, InclusionProofsMatchTheReferenceVectors) {
  const auto tree = reference_tree();
  auto first = inclusion_proof(0, 8, tree.subtrees());
  ASSERT_TRUE(first);
  EXPECT_EQ(*first, (std::vector<Hash>{
                        hex("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                        hex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                        hex("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")}));
  auto sixth = inclusion_proof(5, 8, tree.subtrees());
  ASSERT_TRUE(sixth);
  EXPECT_EQ(*sixth, (std::vector<Hash>{
                        hex("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                        hex("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                        hex("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")}));
  EXPECT_TRUE(verify_inclusion(5, 8, leaf_hash(unhex(k_leaves[5])), *sixth, hex(k_roots[8])));
}

TEST(MerkleTest, EveryProofAgreesWithTheRfcDefinitionsAndVerifies) {
  constexpr std::size_t k_max = 70;
  MemoryTree tree;
  std::vector<Hash> leaves;
  for (std::size_t i = 0; i < k_max; ++i) {
    leaves.push_back(leaf_hash("event " + std::to_string(i)));
    ASSERT_EQ(tree.append(leaves.back()), i);
  }
  const auto subtrees = tree.subtrees();
  for (std::size_t size = 1; size <= k_max; ++size) {
    const Leaves d(leaves.data(), size);
    const Hash root_hash = mth(d);
    ASSERT_EQ(root(size, subtrees), root_hash) << "size " << size;
    for (std::size_t m = 0; m < size; ++m) {
      auto proof = inclusion_proof(m, size, subtrees);
      ASSERT_TRUE(proof);
      ASSERT_EQ(*proof, naive_path(m, d)) << "leaf " << m << " of " << size;
      ASSERT_TRUE(verify_inclusion(m, size, leaves[m], *proof, root_hash));
      // Another leaf, another index, a changed step: none verifies. (The size is the signed
      // checkpoint's to bind: a proof can verify for another size whose path has its shape.)
      EXPECT_FALSE(verify_inclusion(m, size, leaves[(m + 1) % k_max], *proof, root_hash));
      if (size > 1) {
        EXPECT_FALSE(verify_inclusion((m + 1) % size, size, leaves[m], *proof, root_hash));
      }
      for (std::size_t i = 0; i < proof->size(); ++i) {
        auto bad = *proof;
        bad[i] = flipped(bad[i]);
        EXPECT_FALSE(verify_inclusion(m, size, leaves[m], bad, root_hash));
      }
    }
    for (std::size_t old_size = 1; old_size <= size; ++old_size) {
      const Hash old_root = mth(Leaves(leaves.data(), old_size));
      auto proof = consistency_proof(old_size, size, subtrees);
      ASSERT_TRUE(proof);
      ASSERT_EQ(*proof, old_size == size ? std::vector<Hash>{} : naive_subproof(old_size, d, true))
          << old_size << " → " << size;
      ASSERT_TRUE(verify_consistency(old_size, size, old_root, root_hash, *proof))
          << old_size << " → " << size;
      if (old_size == size) continue;
      EXPECT_FALSE(verify_consistency(old_size, size, flipped(old_root), root_hash, *proof));
      EXPECT_FALSE(verify_consistency(old_size, size, old_root, flipped(root_hash), *proof));
      EXPECT_FALSE(verify_consistency(old_size + 1, size, old_root, root_hash, *proof));
      for (std::size_t i = 0; i < proof->size(); ++i) {
        auto bad = *proof;
        bad[i] = flipped(bad[i]);
        EXPECT_FALSE(verify_consistency(old_size, size, old_root, root_hash, bad));
      }
    }
  }
}

TEST(MerkleTest, RefusesWhatIsNotATree) {
  const auto tree = reference_tree();
  EXPECT_FALSE(inclusion_proof(8, 8, tree.subtrees()));
  EXPECT_FALSE(consistency_proof(5, 4, tree.subtrees()));
  const Hash root8 = hex(k_roots[8]);
  const Hash root4 = hex(k_roots[4]);
  EXPECT_FALSE(verify_inclusion(0, 0, leaf_hash(""), {}, empty_root()));
  EXPECT_FALSE(verify_consistency(8, 4, root8, root4, {}));
  EXPECT_FALSE(verify_consistency(4, 8, root4, root8, {}));  // a growth needs a proof
  EXPECT_TRUE(verify_consistency(8, 8, root8, root8, {}));
  EXPECT_FALSE(verify_consistency(8, 8, root8, root4, {}));
  EXPECT_TRUE(verify_consistency(0, 8, empty_root(), root8, {}));
}

TEST(MerkleTest, HexRoundTripsAndRefusesWhatIsNotAHash) {
  const Hash root8 = hex(k_roots[8]);
  EXPECT_EQ(to_hex(root8), k_roots[8]);
  EXPECT_EQ(hash_from_hex("5DC9DA79A70659A9AD559CB701DED9A2AB9D823AAD2F4960CFE370EFF4604328")
                .value_or(Hash{}),
            root8);
  for (std::string_view bad :
       {"", "5dc9", "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff460432",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff46043281",
        "zdc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"}) {
    auto parsed = hash_from_hex(bad);
    ASSERT_FALSE(parsed) << bad;
    EXPECT_EQ(parsed.error().code, ErrorCode::invalid_argument);
  }
}

}  // namespace
}  // namespace agent::merkle
