// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-ingest members publish`: the members list signed with the node's real key (PROTOCOL
// §5.3), checked as any JOSE library would; bad sites, versions and TOML refused.
#include <reflow/node/members_list.hpp>

#include <gtest/gtest.h>
#include <sodium.h>
#include <nlohmann/json.hpp>

#include <reflow/core/jose.hpp>

#include "temp_dir.hpp"

namespace ingest {
namespace {

class MembersListTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GE(sodium_init(), 0);
    m_config.data_dir = m_dir / "data";
    ASSERT_TRUE(create_node_key(m_config));
    auto loaded = NodeSigner::load(m_config);
    ASSERT_TRUE(loaded && *loaded);
    m_signer.emplace(std::move(**loaded));
  }

  reflow_test::TempDir m_dir;
  IngestConfig m_config;
  std::optional<NodeSigner> m_signer;
};

TEST_F(MembersListTest, SignsTheListWithTheNodesKeyAndTheMembersTyp) {
  const std::string toml = "[[member]]\nhandle = \"ada\"\nagent = \"person:ada\"\n";
  auto envelope = sign_members_list(*m_signer, {"fablab", 3, 1'796'000'000'000, toml});
  ASSERT_TRUE(envelope) << envelope.error().message;
  auto verified = agent::jws_verify(*envelope, m_signer->public_jwk(), agent::k_members_typ);
  ASSERT_TRUE(verified) << verified.error().message;
  EXPECT_EQ(verified->payload, nlohmann::ordered_json({{"site", "fablab"},
                                                       {"version", 3},
                                                       {"issued", "2026-11-30T00:53:20.000Z"},
                                                       {"members", toml}})
                                   .dump());
  // An ack's typ is not a members list's: one signed statement cannot pass for the other.
  EXPECT_FALSE(agent::jws_verify(*envelope, m_signer->public_jwk(), agent::k_ack_typ));
  EXPECT_EQ(members_topic(m_config, "fablab"), "reflow/v1/_node/members/fablab");
}

TEST_F(MembersListTest, RefusesABadSiteVersionOrToml) {
  auto bad_site = sign_members_list(*m_signer, {"fab/lab", 1, 0, ""});
  ASSERT_FALSE(bad_site);
  EXPECT_NE(bad_site.error().message.find("--site \"fab/lab\""), std::string::npos);
  auto bad_version = sign_members_list(*m_signer, {"fablab", 0, 0, ""});
  ASSERT_FALSE(bad_version);
  EXPECT_NE(bad_version.error().message.find("--version"), std::string::npos);
  auto bad_toml = sign_members_list(*m_signer, {"fablab", 1, 0, "[[member]\nhandle = 1\n"});
  ASSERT_FALSE(bad_toml);
  EXPECT_NE(bad_toml.error().message.find("line 1"), std::string::npos) << bad_toml.error().message;
}

}  // namespace
}  // namespace ingest
