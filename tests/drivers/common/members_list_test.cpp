// SPDX-License-Identifier: AGPL-3.0-or-later
// The node-signed members list on the agent's side: lists signed with a real Ed25519 key (as the
// node signs them, PROTOCOL §5.3), then tampered with, signed by another key, for another site,
// replaced by a newer one and by an older one; the kept file and its mode.
#include <reflow/drivers/members_list.hpp>

#include <sys/stat.h>

#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "temp_dir.hpp"

namespace agent {
namespace {

const std::string k_hash_a(43, 'A');
const std::string k_hash_b = std::string(42, 'B') + "A";

std::string members_toml(const std::string& handle, const std::string& hash) {
  return "[[member]]\nhandle = \"" + handle + "\"\nagent = \"person:" + handle +
         "\"\nbadges = [\"" + hash + "\"]\n";
}

class MembersListTest : public ::testing::Test {
 protected:
  MembersListTest()
      : m_node(*DeviceKey::generate(m_dir.path() / "node.key")),
        m_other(*DeviceKey::generate(m_dir.path() / "other.key")) {}

  // A list signed as the node signs it: header {"alg","kid","typ"}, payload the object.
  static std::string sign(const DeviceKey& key, const nlohmann::ordered_json& payload) {
    const nlohmann::ordered_json header = {
        {"alg", "EdDSA"}, {"kid", key.public_jwk().kid}, {"typ", std::string(k_members_typ)}};
    return jws_sign(key, base64url_encode(header.dump()), payload.dump()).to_envelope();
  }

  std::string list(std::uint64_t version, const std::string& issued, const std::string& toml,
                   const std::string& site = "fablab") const {
    return sign(m_node,
                {{"site", site}, {"version", version}, {"issued", issued}, {"members", toml}});
  }

  std::filesystem::path kept() const { return m_dir.path() / "members-list.jws"; }

  reflow_test::TempDir m_dir;
  DeviceKey m_node;
  DeviceKey m_other;
};

TEST_F(MembersListTest, AcceptsTheNodesListAndKeepsItOwnerOnly) {
  const std::string envelope = list(1, "2026-12-01T10:00:00Z", members_toml("ada", k_hash_a));
  auto outcome = accept_members_list(envelope, kept(), m_node.public_jwk(), "fablab");
  ASSERT_TRUE(outcome) << outcome.error().message;
  EXPECT_EQ(*outcome, MembersListOutcome::accepted);
  struct stat st {};
  ASSERT_EQ(::stat(kept().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600U);
  // Offline: the kept list loads and verifies again, with its members.
  auto loaded = load_members_list(kept(), m_node.public_jwk(), "fablab");
  ASSERT_TRUE(loaded && *loaded);
  EXPECT_EQ((*loaded)->version, 1U);
  ASSERT_NE((*loaded)->members.by_badge(k_hash_a), nullptr);
  EXPECT_EQ((*loaded)->members.by_badge(k_hash_a)->handle, "ada");
  // The same retained message again is no change.
  outcome = accept_members_list(envelope, kept(), m_node.public_jwk(), "fablab");
  ASSERT_TRUE(outcome);
  EXPECT_EQ(*outcome, MembersListOutcome::unchanged);
}

TEST_F(MembersListTest, RefusesATamperedListAndKeepsThePreviousOne) {
  const std::string good = list(1, "2026-12-01T10:00:00Z", members_toml("ada", k_hash_a));
  ASSERT_TRUE(accept_members_list(good, kept(), m_node.public_jwk(), "fablab"));
  // Another member's badge put into a newer list's payload, the node's signature kept.
  auto envelope =
      nlohmann::json::parse(list(2, "2026-12-02T10:00:00Z", members_toml("ada", k_hash_a)));
  envelope["payload"] = base64url_encode(nlohmann::ordered_json{
      {"site", "fablab"},
      {"version", 2},
      {"issued", "2026-12-02T10:00:00Z"},
      {"members",
       members_toml("eve", k_hash_b)}}.dump());
  auto outcome = accept_members_list(envelope.dump(), kept(), m_node.public_jwk(), "fablab");
  ASSERT_FALSE(outcome);
  EXPECT_EQ(outcome.error().code, ErrorCode::crypto);
  EXPECT_NE(outcome.error().message.find("tampered"), std::string::npos) << outcome.error().message;
  // Signed by a key that is not the pinned node's.
  const std::string foreign = sign(m_other, {{"site", "fablab"},
                                             {"version", 3},
                                             {"issued", "2026-12-03T10:00:00Z"},
                                             {"members", members_toml("eve", k_hash_b)}});
  outcome = accept_members_list(foreign, kept(), m_node.public_jwk(), "fablab");
  ASSERT_FALSE(outcome);
  EXPECT_EQ(outcome.error().code, ErrorCode::crypto);
  auto loaded = load_members_list(kept(), m_node.public_jwk(), "fablab");
  ASSERT_TRUE(loaded && *loaded);
  EXPECT_EQ((*loaded)->envelope, good);
  EXPECT_EQ((*loaded)->members.by_badge(k_hash_b), nullptr);
}

TEST_F(MembersListTest, ANewerListReplacesTheKeptOne) {
  ASSERT_TRUE(accept_members_list(list(1, "2026-12-01T10:00:00Z", members_toml("ada", k_hash_a)),
                                  kept(), m_node.public_jwk(), "fablab"));
  // Same version, later issued: newer.
  const std::string same_version = list(1, "2026-12-01T11:00:00Z", members_toml("ben", k_hash_b));
  auto outcome = accept_members_list(same_version, kept(), m_node.public_jwk(), "fablab");
  ASSERT_TRUE(outcome) << outcome.error().message;
  EXPECT_EQ(*outcome, MembersListOutcome::accepted);
  const std::string next = list(2, "2026-12-01T09:00:00Z", members_toml("eve", k_hash_b));
  ASSERT_TRUE(accept_members_list(next, kept(), m_node.public_jwk(), "fablab"));
  auto loaded = load_members_list(kept(), m_node.public_jwk(), "fablab");
  ASSERT_TRUE(loaded && *loaded);
  EXPECT_EQ((*loaded)->version, 2U);
  EXPECT_EQ((*loaded)->members.by_badge(k_hash_b)->handle, "eve");
  EXPECT_EQ((*loaded)->members.by_badge(k_hash_a), nullptr);
}

TEST_F(MembersListTest, RefusesAnOlderOrAnotherSitesList) {
  const std::string kept_list = list(5, "2026-12-05T10:00:00Z", members_toml("ada", k_hash_a));
  ASSERT_TRUE(accept_members_list(kept_list, kept(), m_node.public_jwk(), "fablab"));
  for (const auto& older : {list(4, "2026-12-06T10:00:00Z", members_toml("eve", k_hash_b)),
                            list(5, "2026-12-05T10:00:00Z", members_toml("eve", k_hash_b)),
                            list(5, "2026-12-04T10:00:00Z", members_toml("eve", k_hash_b))}) {
    auto outcome = accept_members_list(older, kept(), m_node.public_jwk(), "fablab");
    ASSERT_FALSE(outcome);
    EXPECT_EQ(outcome.error().code, ErrorCode::rejected);
    EXPECT_NE(outcome.error().message.find("not newer than the one kept (version 5"),
              std::string::npos)
        << outcome.error().message;
  }
  auto outcome = accept_members_list(
      list(6, "2026-12-06T10:00:00Z", members_toml("eve", k_hash_b), "hackerspace"), kept(),
      m_node.public_jwk(), "fablab");
  ASSERT_FALSE(outcome);
  EXPECT_EQ(outcome.error().code, ErrorCode::rejected);
  EXPECT_NE(outcome.error().message.find("another site (\"hackerspace\""), std::string::npos)
      << outcome.error().message;
  auto loaded = load_members_list(kept(), m_node.public_jwk(), "fablab");
  ASSERT_TRUE(loaded && *loaded);
  EXPECT_EQ((*loaded)->envelope, kept_list);
}

TEST_F(MembersListTest, AKeptFileChangedOnDiskIsRefusedOnLoad) {
  ASSERT_TRUE(accept_members_list(list(1, "2026-12-01T10:00:00Z", members_toml("ada", k_hash_a)),
                                  kept(), m_node.public_jwk(), "fablab"));
  std::ifstream in(kept());
  auto envelope = nlohmann::json::parse(in);
  in.close();
  std::string signature = envelope["signature"];
  signature[0] = signature[0] == 'A' ? 'B' : 'A';
  envelope["signature"] = signature;
  std::ofstream(kept()) << envelope.dump() << "\n";
  auto loaded = load_members_list(kept(), m_node.public_jwk(), "fablab");
  ASSERT_FALSE(loaded);
  EXPECT_EQ(loaded.error().code, ErrorCode::crypto);
  EXPECT_NE(loaded.error().message.find(kept().string()), std::string::npos);
  EXPECT_FALSE(*load_members_list(m_dir.path() / "none.jws", m_node.public_jwk(), "fablab"));
}

TEST_F(MembersListTest, RefusesAPayloadOfAnotherShape) {
  for (const auto& payload :
       {nlohmann::ordered_json{{"site", "fablab"},
                               {"version", 0},
                               {"issued", "2026-12-01T10:00:00Z"},
                               {"members", ""}},
        nlohmann::ordered_json{
            {"site", "fablab"}, {"version", 1}, {"issued", "yesterday"}, {"members", ""}},
        nlohmann::ordered_json{
            {"site", "fablab"}, {"version", 1}, {"issued", "2026-12-01T10:00:00Z"}},
        nlohmann::ordered_json{{"site", "fablab"},
                               {"version", 1},
                               {"issued", "2026-12-01T10:00:00Z"},
                               {"members", ""},
                               {"extra", 1}}}) {
    auto list = verify_members_list(sign(m_node, payload), m_node.public_jwk(), "fablab");
    ASSERT_FALSE(list) << payload.dump();
    EXPECT_EQ(list.error().code, ErrorCode::invalid_argument) << list.error().message;
  }
  // A members TOML that does not load is the members file's error.
  auto list = verify_members_list(sign(m_node, {{"site", "fablab"},
                                                {"version", 1},
                                                {"issued", "2026-12-01T10:00:00Z"},
                                                {"members", "[[member]]\nhandle = \"ada\"\n"}}),
                                  m_node.public_jwk(), "fablab");
  ASSERT_FALSE(list);
  EXPECT_EQ(list.error().code, ErrorCode::invalid_config);
}

}  // namespace
}  // namespace agent
