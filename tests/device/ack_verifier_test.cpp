// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/ack_verifier.hpp>

#include <sys/stat.h>

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <sodium.h>
#include <nlohmann/json.hpp>

#include <reflow/core/signed_note.hpp>

#include "temp_dir.hpp"

namespace agent {
namespace {

constexpr std::string_view k_verifier_device = "dev-a";
constexpr std::string_view k_stream = "01KDX3G000STREAMSTREAM0000";

// Hand-built signed acks (PROTOCOL §5.1) over a log held in memory: this device's envelopes of
// seq 1..5 interleaved with another device's, as a node stores them.
class AckVerifierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GE(sodium_init(), 0);
    m_node.emplace(make_key("node.key"));
    for (std::int64_t seq = 1; seq <= 5; ++seq) {
      m_tree.append(merkle::leaf_hash("other device's event " + std::to_string(seq)));
      m_envelopes[seq] =
          R"({"protected":"p","payload":"event )" + std::to_string(seq) + R"(","signature":"s"})";
      m_index[seq] = m_tree.append(merkle::leaf_hash(m_envelopes[seq]));
    }
  }

  DeviceKey make_key(const std::string& name) {
    auto key = DeviceKey::generate(m_dir / name);
    EXPECT_TRUE(key.has_value()) << key.error().message;
    return std::move(*key);
  }

  // The statement of PROTOCOL §5.1 for `seq` in the whole tree, as the node signs it.
  nlohmann::ordered_json statement(std::int64_t seq) const {
    const auto size = m_tree.size();
    auto proof = merkle::inclusion_proof(m_index.at(seq), size, m_tree.subtrees());
    EXPECT_TRUE(proof.has_value());
    auto inclusion = nlohmann::ordered_json::array();
    for (const auto& hash : *proof)
      inclusion.push_back(note::base64_encode(hash));
    return {{"device", std::string(k_verifier_device)},
            {"stream", std::string(k_stream)},
            {"seq", seq},
            {"node", m_node->public_jwk().kid},
            {"origin", "example.org/reflow"},
            {"time", "2026-12-07T15:00:00.000Z"},
            {"tree_size", size},
            {"root", note::base64_encode(m_tree.root(size))},
            {"leaf_index", m_index.at(seq)},
            {"inclusion", std::move(inclusion)}};
  }

  // `payload` with the consistency proof from the tree's first `from` leaves (PROTOCOL §5.1).
  nlohmann::ordered_json with_consistency(nlohmann::ordered_json payload,
                                          std::uint64_t from) const {
    auto proof = merkle::consistency_proof(from, m_tree.size(), m_tree.subtrees());
    EXPECT_TRUE(proof.has_value());
    auto hashes = nlohmann::ordered_json::array();
    for (const auto& hash : *proof)
      hashes.push_back(note::base64_encode(hash));
    payload["consistency_from"] = from;
    payload["consistency"] = std::move(hashes);
    return payload;
  }

  static std::string ack(const DeviceKey& key, const nlohmann::ordered_json& payload,
                         std::int64_t outer_seq, std::string_view typ = k_ack_typ) {
    const nlohmann::ordered_json header = {
        {"alg", "EdDSA"}, {"kid", key.public_jwk().kid}, {"typ", std::string(typ)}};
    const Jws jws = jws_sign(key, base64url_encode(header.dump()), payload.dump());
    nlohmann::ordered_json body = {{"stream", std::string(k_stream)}, {"seq", outer_seq}};
    body["signed"] = {{"protected", jws.protected_b64},
                      {"payload", jws.payload_b64},
                      {"signature", jws.signature_b64}};
    return body.dump();
  }

  std::string ack(std::int64_t seq) const { return ack(*m_node, statement(seq), seq); }

  AckContext context(std::int64_t last_committed = 5, std::int64_t last_verified = 0) const {
    AckContext out;
    out.device = std::string(k_verifier_device);
    out.stream = std::string(k_stream);
    out.last_committed = last_committed;
    out.last_verified = last_verified;
    out.envelope_of = [this](std::int64_t seq) -> Result<std::optional<std::string>> {
      auto it = m_envelopes.find(seq);
      if (it == m_envelopes.end()) return std::optional<std::string>{};
      return std::optional<std::string>(it->second);
    };
    return out;
  }

  AckRefusal refusal(const std::string& payload, const AckContext& ctx) const {
    auto verified = verify_signed_ack(payload, m_node->public_jwk(), ctx);
    EXPECT_FALSE(verified.has_value()) << payload;
    if (verified) return AckRefusal::malformed;
    EXPECT_FALSE(verified.error().message.empty());
    return verified.error().reason;
  }
  AckRefusal refusal(const std::string& payload) const { return refusal(payload, context()); }

  reflow_test::TempDir m_dir;
  std::optional<DeviceKey> m_node;
  merkle::MemoryTree m_tree;
  std::map<std::int64_t, std::string> m_envelopes;  // this device's, by seq
  std::map<std::int64_t, std::uint64_t> m_index;    // their leaf indices
};

TEST_F(AckVerifierTest, AcceptsAValidAckAndReturnsItsStatement) {
  auto verified = verify_signed_ack(ack(3), m_node->public_jwk(), context());
  ASSERT_TRUE(verified.has_value()) << verified.error().message;
  EXPECT_EQ(verified->stream, k_stream);
  EXPECT_EQ(verified->seq, 3);
  EXPECT_EQ(verified->tree_size, m_tree.size());
  EXPECT_EQ(verified->root, m_tree.root(m_tree.size()));
  EXPECT_EQ(verified->leaf_index, m_index[3]);
  EXPECT_FALSE(verified->repeat);
}

TEST_F(AckVerifierTest, RefusesAnUnsignedAck) {
  EXPECT_EQ(refusal(R"({"stream":"01KDX3G000STREAMSTREAM0000","seq":3})"),
            AckRefusal::unsigned_ack);
}

TEST_F(AckVerifierTest, RefusesWhatIsNotAnAck) {
  EXPECT_EQ(refusal("not json"), AckRefusal::malformed);
  EXPECT_EQ(refusal(R"({"stream":"01KDX3G000STREAMSTREAM0000"})"), AckRefusal::malformed);
  EXPECT_EQ(refusal(R"({"stream":"01KDX3G000STREAMSTREAM0000","seq":3,"signed":"x"})"),
            AckRefusal::malformed);
  // A device's event signature type is not an ack's.
  EXPECT_EQ(refusal(ack(*m_node, statement(3), 3, k_event_typ)), AckRefusal::malformed);
  auto no_proof = statement(3);
  no_proof.erase("inclusion");
  EXPECT_EQ(refusal(ack(*m_node, no_proof, 3)), AckRefusal::malformed);
}

TEST_F(AckVerifierTest, RefusesAnAckSignedByAnotherKey) {
  const DeviceKey forger = make_key("forger.key");
  EXPECT_EQ(refusal(ack(forger, statement(3), 3)), AckRefusal::wrong_key);
}

TEST_F(AckVerifierTest, RefusesAForgedSignature) {
  // The pinned key's header, but a payload it never signed: the forger changed the seq.
  auto body = nlohmann::ordered_json::parse(ack(3));
  auto forged = statement(3);
  forged["seq"] = 4;
  body["signed"]["payload"] = base64url_encode(forged.dump());
  body["seq"] = 4;
  EXPECT_EQ(refusal(body.dump()), AckRefusal::bad_signature);
}

TEST_F(AckVerifierTest, RefusesAnAckForAnotherDeviceStreamOrSeq) {
  auto other_device = statement(3);
  other_device["device"] = "dev-b";
  EXPECT_EQ(refusal(ack(*m_node, other_device, 3)), AckRefusal::misrouted);
  auto other_stream = statement(3);
  other_stream["stream"] = "01KDX3G000OTHEROTHEROTHER0";
  EXPECT_EQ(refusal(ack(*m_node, other_stream, 3)), AckRefusal::misrouted);
  // The outer seq says more than the signed one.
  EXPECT_EQ(refusal(ack(*m_node, statement(3), 5)), AckRefusal::misrouted);
}

TEST_F(AckVerifierTest, RefusesASeqBeyondWhatWasCommitted) {
  EXPECT_EQ(refusal(ack(5), context(/*last_committed=*/4)), AckRefusal::beyond_committed);
}

TEST_F(AckVerifierTest, RefusesAnOlderAckAndMarksTheLastOneAsARepeat) {
  EXPECT_EQ(refusal(ack(2), context(5, /*last_verified=*/3)), AckRefusal::replayed);
  // The retained ack read again after a reconnect: verified, nothing to prune, no proof needed.
  auto ctx = context(5, 3);
  ctx.envelope_of = [](std::int64_t) -> Result<std::optional<std::string>> {
    return std::optional<std::string>{};
  };
  auto repeat = verify_signed_ack(ack(3), m_node->public_jwk(), ctx);
  ASSERT_TRUE(repeat.has_value()) << repeat.error().message;
  EXPECT_TRUE(repeat->repeat);
}

TEST_F(AckVerifierTest, RefusesAProofThatDoesNotHoldThisDevicesEnvelope) {
  // The node's copy of event 4 differs from what this device sent by one byte.
  std::string altered = m_envelopes[4];
  altered[altered.size() - 3] ^= 1;
  merkle::MemoryTree tree;
  for (std::int64_t seq = 1; seq <= 5; ++seq) {
    tree.append(merkle::leaf_hash("other device's event " + std::to_string(seq)));
    tree.append(merkle::leaf_hash(seq == 4 ? altered : m_envelopes[seq]));
  }
  std::swap(tree, m_tree);
  EXPECT_EQ(refusal(ack(4)), AckRefusal::bad_inclusion);
  std::swap(tree, m_tree);

  // The right root but another leaf's index or a changed sibling.
  auto wrong_index = statement(4);
  wrong_index["leaf_index"] = m_index[3];
  EXPECT_EQ(refusal(ack(*m_node, wrong_index, 4)), AckRefusal::bad_inclusion);
  auto wrong_sibling = statement(4);
  wrong_sibling["inclusion"][0] = note::base64_encode(merkle::leaf_hash("x"));
  EXPECT_EQ(refusal(ack(*m_node, wrong_sibling, 4)), AckRefusal::bad_inclusion);
  // An event deleted from the node's log: a smaller tree whose root misses it.
  auto smaller = statement(4);
  smaller["tree_size"] = m_index[4];
  smaller["root"] = note::base64_encode(m_tree.root(m_index[4]));
  EXPECT_EQ(refusal(ack(*m_node, smaller, 4)), AckRefusal::bad_inclusion);
}

TEST_F(AckVerifierTest, RefusesALogThatShrankOrChangedItsRootAtTheSameSize) {
  const std::uint64_t size = m_tree.size();
  auto ctx = context();
  ctx.verified_log = std::pair{size + 1, m_tree.root(size)};
  EXPECT_EQ(refusal(ack(4), ctx), AckRefusal::inconsistent);
  ctx.verified_log = std::pair{size, merkle::leaf_hash("another history")};
  EXPECT_EQ(refusal(ack(4), ctx), AckRefusal::inconsistent);
  // The same log, or a smaller one it grew from, is accepted.
  ctx.verified_log = std::pair{size, m_tree.root(size)};
  EXPECT_TRUE(verify_signed_ack(ack(4), m_node->public_jwk(), ctx).has_value());
  ctx.verified_log = std::pair{std::uint64_t{2}, m_tree.root(2)};
  EXPECT_TRUE(verify_signed_ack(ack(4), m_node->public_jwk(), ctx).has_value());
}

TEST_F(AckVerifierTest, AcceptsAGrownLogWithAValidConsistencyProof) {
  auto ctx = context();
  ctx.verified_log = std::pair{std::uint64_t{3}, m_tree.root(3)};
  for (const bool seen : {false, true}) {
    ctx.consistency_seen = seen;
    auto verified = verify_signed_ack(ack(*m_node, with_consistency(statement(4), 3), 4),
                                      m_node->public_jwk(), ctx);
    ASSERT_TRUE(verified.has_value()) << verified.error().message;
    EXPECT_TRUE(verified->carried_consistency);
    EXPECT_TRUE(verified->consistency_proven);
    EXPECT_EQ(verified->tree_size, m_tree.size());
  }
}

TEST_F(AckVerifierTest, RefusesAConsistencyProofThatFails) {
  auto ctx = context();
  ctx.verified_log = std::pair{std::uint64_t{3}, m_tree.root(3)};
  // A proof with one hash changed.
  auto payload = with_consistency(statement(4), 3);
  ASSERT_FALSE(payload["consistency"].empty());
  payload["consistency"][0] = note::base64_encode(merkle::leaf_hash("not in the log"));
  EXPECT_EQ(refusal(ack(*m_node, payload, 4), ctx), AckRefusal::inconsistent);
  // A valid proof of this log, but the agent verified another history at size 3 (a node that
  // rewrote its first leaves): the log it shows now does not extend the one it showed before.
  ctx.verified_log = std::pair{std::uint64_t{3}, merkle::leaf_hash("another history")};
  EXPECT_EQ(refusal(ack(*m_node, with_consistency(statement(4), 3), 4), ctx),
            AckRefusal::inconsistent);
}

TEST_F(AckVerifierTest, RefusesAConsistencyProofFromAnotherSize) {
  auto ctx = context();
  ctx.verified_log = std::pair{std::uint64_t{3}, m_tree.root(3)};
  ctx.consistency_seen = true;
  // A valid proof, but from a size the agent does not hold the root of: nothing is proven.
  EXPECT_EQ(refusal(ack(*m_node, with_consistency(statement(4), 2), 4), ctx),
            AckRefusal::no_consistency_proof);
  EXPECT_EQ(refusal(ack(*m_node, with_consistency(statement(4), 5), 4), ctx),
            AckRefusal::no_consistency_proof);
}

TEST_F(AckVerifierTest, RefusesAGrownLogWithoutAProofOnceTheNodeSentOne) {
  auto ctx = context();
  ctx.verified_log = std::pair{std::uint64_t{3}, m_tree.root(3)};
  // Before any proof from this node: accepted, not proven (PROTOCOL §5.1 compatibility).
  auto verified = verify_signed_ack(ack(4), m_node->public_jwk(), ctx);
  ASSERT_TRUE(verified.has_value()) << verified.error().message;
  EXPECT_FALSE(verified->carried_consistency);
  EXPECT_FALSE(verified->consistency_proven);
  // After one: refused (the node will sign again once it reads this agent's status).
  ctx.consistency_seen = true;
  EXPECT_EQ(refusal(ack(4), ctx), AckRefusal::no_consistency_proof);
  // The same log as verified needs no proof.
  ctx.verified_log = std::pair{m_tree.size(), m_tree.root(m_tree.size())};
  verified = verify_signed_ack(ack(4), m_node->public_jwk(), ctx);
  ASSERT_TRUE(verified.has_value()) << verified.error().message;
  EXPECT_TRUE(verified->consistency_proven);
}

TEST_F(AckVerifierTest, RefusesAHalfOrBadlyTypedConsistencyProofAsMalformed) {
  auto ctx = context();
  ctx.verified_log = std::pair{std::uint64_t{3}, m_tree.root(3)};
  auto only_from = statement(4);
  only_from["consistency_from"] = 3;
  EXPECT_EQ(refusal(ack(*m_node, only_from, 4), ctx), AckRefusal::malformed);
  auto only_proof = with_consistency(statement(4), 3);
  only_proof.erase("consistency_from");
  EXPECT_EQ(refusal(ack(*m_node, only_proof, 4), ctx), AckRefusal::malformed);
  auto not_hashes = with_consistency(statement(4), 3);
  not_hashes["consistency"] = {"not base64!"};
  EXPECT_EQ(refusal(ack(*m_node, not_hashes, 4), ctx), AckRefusal::malformed);
  auto negative = with_consistency(statement(4), 3);
  negative["consistency_from"] = -3;
  EXPECT_EQ(refusal(ack(*m_node, negative, 4), ctx), AckRefusal::malformed);
}

TEST_F(AckVerifierTest, RefusesWhenTheOutboxNoLongerHoldsTheEnvelope) {
  m_envelopes.erase(4);
  EXPECT_EQ(refusal(ack(4)), AckRefusal::bad_inclusion);
}

TEST_F(AckVerifierTest, LoadsThePinnedKeyAndNamesTheFileAndKeyWhenItIsBad) {
  const auto good = m_dir / "node.jwk";
  std::ofstream(good) << m_node->public_jwk().to_json() << "\n";
  auto loaded = load_node_jwk(good, "agent.toml");
  ASSERT_TRUE(loaded.has_value()) << loaded.error().message;
  EXPECT_EQ(loaded->kid, m_node->public_jwk().kid);

  for (const auto& [name, text] :
       {std::pair{"garbage.jwk", std::string("{\"kty\":\"RSA\"}")},
        std::pair{"private.jwk", std::string("AAECAwQFBgcICQoLDA0ODx"
                                             "AREhMUFRYXGBkaGxwdHh8")}}) {
    const auto path = m_dir / name;
    std::ofstream(path) << text << "\n";
    auto bad = load_node_jwk(path, "agent.toml");
    ASSERT_FALSE(bad.has_value()) << name;
    EXPECT_EQ(bad.error().code, ErrorCode::invalid_config);
    EXPECT_NE(bad.error().message.find("mqtt.node_jwk"), std::string::npos);
    EXPECT_NE(bad.error().message.find(path.string()), std::string::npos);
  }
  auto missing = load_node_jwk(m_dir / "missing.jwk", "agent.toml");
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message.find("missing.jwk"), std::string::npos);
}

}  // namespace
}  // namespace agent
