// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/node_key.hpp>

#include <gtest/gtest.h>
#include <sodium.h>
#include <nlohmann/json.hpp>

#include <reflow/core/jose.hpp>
#include <reflow/core/merkle.hpp>
#include <reflow/core/signed_note.hpp>

#include "files.hpp"
#include "temp_dir.hpp"

namespace ingest {
namespace {

class NodeKeyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GE(sodium_init(), 0);
    m_config.data_dir = m_dir / "data";
    m_config.log_origin = "fablab.example/reflow";
  }

  NodeSigner signer() {
    auto jwk = create_node_key(m_config);
    EXPECT_TRUE(jwk.has_value()) << jwk.error().message;
    auto loaded = NodeSigner::load(m_config);
    EXPECT_TRUE(loaded.has_value() && loaded->has_value());
    return std::move(**loaded);
  }

  reflow_test::TempDir m_dir;
  IngestConfig m_config;
};

TEST_F(NodeKeyTest, InitWritesAPrivateKeyAndItsPublicJwkAndRefusesToOverwrite) {
  auto jwk = create_node_key(m_config);
  ASSERT_TRUE(jwk.has_value()) << jwk.error().message;
  const auto key_path = m_config.data_dir / "node.key";
  EXPECT_EQ(m_config.effective_node_key_file(), key_path);
  EXPECT_EQ(reflow_test::file_mode(key_path), 0600);
  EXPECT_EQ(reflow_test::file_mode(m_config.data_dir / "node.jwk"), 0644);
  auto pinned = agent::parse_public_jwk(reflow_test::read_text(m_config.data_dir / "node.jwk"));
  ASSERT_TRUE(pinned.has_value()) << pinned.error().message;
  EXPECT_EQ(pinned->kid, jwk->kid);
  EXPECT_EQ(pinned->kid, agent::jwk_thumbprint(jwk->x));

  const std::string before = reflow_test::read_text(key_path);
  auto again = create_node_key(m_config);
  ASSERT_FALSE(again.has_value());
  EXPECT_NE(again.error().message.find("already exists"), std::string::npos);
  EXPECT_EQ(reflow_test::read_text(key_path), before);
}

TEST_F(NodeKeyTest, WithoutTheKeyFileTheNodeRunsUnsigned) {
  auto loaded = NodeSigner::load(m_config);
  ASSERT_TRUE(loaded.has_value()) << loaded.error().message;
  EXPECT_FALSE(loaded->has_value());
}

TEST_F(NodeKeyTest, CheckpointsVerifyWithThePublicKeyUnderTheOrigin) {
  const NodeSigner node = signer();
  agent::merkle::MemoryTree tree;
  for (int i = 0; i < 5; ++i)
    tree.append(agent::merkle::leaf_hash(std::to_string(i)));
  const LogCheckpoint checkpoint{5, tree.root(5)};
  const std::string note = node.checkpoint_note(checkpoint);
  EXPECT_TRUE(note.starts_with("fablab.example/reflow\n5\n")) << note;
  auto verified = agent::note::verify_checkpoint(note, "fablab.example/reflow", node.public_jwk());
  ASSERT_TRUE(verified.has_value()) << verified.error().message;
  EXPECT_EQ(verified->size, 5u);
  EXPECT_EQ(verified->root, checkpoint.root);
}

TEST_F(NodeKeyTest, ASignedAckVerifiesAndItsInclusionProofHolds) {
  const NodeSigner node = signer();
  agent::merkle::MemoryTree tree;
  for (int i = 0; i < 7; ++i)
    tree.append(agent::merkle::leaf_hash("envelope " + std::to_string(i)));
  auto proof = agent::merkle::inclusion_proof(4, 7, tree.subtrees());
  ASSERT_TRUE(proof.has_value());
  const AckStatement statement{
      "printer-01", {"01JSTREAM", 12}, 1'765'000'000'000, 7, tree.root(7), 4, *proof, {}, {}};
  const nlohmann::ordered_json signed_ack = node.sign_ack(statement);
  const std::string body = ack_body(statement.point, &signed_ack);

  // An old agent reads stream and seq as before (PROTOCOL §5).
  const auto parsed = nlohmann::json::parse(body);
  EXPECT_EQ(parsed.at("stream"), "01JSTREAM");
  EXPECT_EQ(parsed.at("seq"), 12);

  // The signed member is a flattened JWS by the node's key, header typ reflow-ack+json.
  const auto& jws = parsed.at("signed");
  const std::string protected_b64 = jws.at("protected");
  const std::string payload_b64 = jws.at("payload");
  auto header = agent::base64url_decode(protected_b64);
  ASSERT_TRUE(header.has_value());
  EXPECT_EQ(nlohmann::json::parse(*header),
            (nlohmann::json{
                {"alg", "EdDSA"}, {"kid", node.public_jwk().kid}, {"typ", "reflow-ack+json"}}));
  auto signature = agent::base64url_decode(jws.at("signature").get<std::string>());
  ASSERT_TRUE(signature.has_value());
  ASSERT_EQ(signature->size(), 64u);
  const std::string signing_input = protected_b64 + "." + payload_b64;
  EXPECT_EQ(
      crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(signature->data()),
                                  reinterpret_cast<const unsigned char*>(signing_input.data()),
                                  signing_input.size(), node.public_jwk().x.data()),
      0);

  auto payload_bytes = agent::base64url_decode(payload_b64);
  ASSERT_TRUE(payload_bytes.has_value());
  const auto payload = nlohmann::json::parse(*payload_bytes);
  EXPECT_EQ(payload.at("device"), "printer-01");
  EXPECT_EQ(payload.at("stream"), "01JSTREAM");
  EXPECT_EQ(payload.at("seq"), 12);
  EXPECT_EQ(payload.at("node"), node.public_jwk().kid);
  EXPECT_EQ(payload.at("origin"), "fablab.example/reflow");
  EXPECT_EQ(payload.at("time"), "2025-12-06T05:46:40.000Z");
  EXPECT_EQ(payload.at("tree_size"), 7);
  EXPECT_EQ(payload.at("leaf_index"), 4);
  // The proof as carried verifies the leaf against the root as carried.
  auto root = agent::note::base64_decode(payload.at("root").get<std::string>());
  ASSERT_TRUE(root.has_value());
  agent::merkle::Hash root_hash{};
  std::copy(root->begin(), root->end(), root_hash.begin());
  std::vector<agent::merkle::Hash> carried;
  for (const auto& hash : payload.at("inclusion")) {
    auto bytes = agent::note::base64_decode(hash.get<std::string>());
    ASSERT_TRUE(bytes.has_value() && bytes->size() == 32);
    carried.emplace_back();
    std::copy(bytes->begin(), bytes->end(), carried.back().begin());
  }
  EXPECT_TRUE(agent::merkle::verify_inclusion(4, 7, agent::merkle::leaf_hash("envelope 4"), carried,
                                              root_hash));
  EXPECT_FALSE(agent::merkle::verify_inclusion(4, 7, agent::merkle::leaf_hash("envelope 3"),
                                               carried, root_hash));
}

TEST_F(NodeKeyTest, ASignedAckCarriesAConsistencyProofThatVerifies) {
  const NodeSigner node = signer();
  agent::merkle::MemoryTree tree;
  for (int i = 0; i < 11; ++i)
    tree.append(agent::merkle::leaf_hash("envelope " + std::to_string(i)));
  auto inclusion = agent::merkle::inclusion_proof(9, 11, tree.subtrees());
  auto consistency = agent::merkle::consistency_proof(6, 11, tree.subtrees());
  ASSERT_TRUE(inclusion.has_value() && consistency.has_value());
  AckStatement statement{
      "printer-01", {"01JSTREAM", 12}, 1'765'000'000'000, 11, tree.root(11), 9, *inclusion, 6,
      *consistency};
  const nlohmann::ordered_json signed_ack = node.sign_ack(statement);
  auto verified = agent::jws_verify(signed_ack.dump(), node.public_jwk(), k_ack_typ);
  ASSERT_TRUE(verified.has_value()) << verified.error().message;
  const auto payload = nlohmann::json::parse(verified->payload);
  EXPECT_EQ(payload.at("consistency_from"), 6);
  auto decode = [](const nlohmann::json& value) {
    auto bytes = agent::note::base64_decode(value.get<std::string>());
    EXPECT_TRUE(bytes.has_value() && bytes->size() == 32);
    agent::merkle::Hash hash{};
    if (bytes && bytes->size() == 32) std::copy(bytes->begin(), bytes->end(), hash.begin());
    return hash;
  };
  std::vector<agent::merkle::Hash> carried;
  for (const auto& hash : payload.at("consistency"))
    carried.push_back(decode(hash));
  ASSERT_FALSE(carried.empty());
  const auto root = decode(payload.at("root"));
  // The log of 11 leaves as carried extends the one of 6 leaves the device verified, and not
  // another history of 6 leaves.
  EXPECT_TRUE(agent::merkle::verify_consistency(6, 11, tree.root(6), root, carried));
  EXPECT_FALSE(agent::merkle::verify_consistency(6, 11, tree.root(5), root, carried));

  // Without consistency_from, no consistency members (what a device that verified nothing
  // yet, or the same size, gets).
  statement.consistency_from.reset();
  auto plain = agent::jws_verify(node.sign_ack(statement).dump(), node.public_jwk(), k_ack_typ);
  ASSERT_TRUE(plain.has_value());
  const auto plain_payload = nlohmann::json::parse(plain->payload);
  EXPECT_FALSE(plain_payload.contains("consistency_from"));
  EXPECT_FALSE(plain_payload.contains("consistency"));
}

TEST_F(NodeKeyTest, AnAckWithoutAKeyIsTheProtocolOneAck) {
  EXPECT_EQ(ack_body({"01JSTREAM", 3}, nullptr), R"({"stream":"01JSTREAM","seq":3})");
}

}  // namespace
}  // namespace ingest
