// SPDX-License-Identifier: AGPL-3.0-or-later
// The site secret (a real file, its mode), the keyed badge hash and the members file.
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include <reflow/drivers/members.hpp>

#include "temp_dir.hpp"

namespace {

using namespace agent;

std::string slurp(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write(const std::filesystem::path& file, std::string_view text) {
  std::ofstream(file, std::ios::binary) << text;
}

class MembersTest : public ::testing::Test {
 protected:
  SiteSecret secret() {
    auto s = load_or_create_site_secret(site_secret_path(m_dir.path()));
    EXPECT_TRUE(s) << s.error().message;
    return s ? *s : SiteSecret{};
  }
  reflow_test::TempDir m_dir;
};

TEST_F(MembersTest, SecretIsMadeOnceWithMode0600AndReusedAfter) {
  const auto file = site_secret_path(m_dir.path());
  ASSERT_FALSE(std::filesystem::exists(file));
  const SiteSecret first = secret();
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600U);
  EXPECT_EQ(st.st_size, 32);
  EXPECT_NE(first.key, SiteSecret{}.key);  // random, not zeros
  // A restart: the same file, the same secret, the same hashes.
  const SiteSecret again = secret();
  EXPECT_EQ(first.key, again.key);
  EXPECT_EQ(badge_hash(first, "0415A3B2C1"), badge_hash(again, "0415A3B2C1"));
}

TEST_F(MembersTest, HashIsNotTheRawIdAndDependsOnTheSecret) {
  const SiteSecret s = secret();
  const std::string id = "0415A3B2C1";
  const std::string h = badge_hash(s, id);
  EXPECT_EQ(h.size(), 43U);
  EXPECT_TRUE(is_badge_hash(h));
  EXPECT_NE(h, id);
  EXPECT_EQ(h.find("0415"), std::string::npos);
  EXPECT_FALSE(is_badge_hash(id));
  // One card read in either case (the mcu board's bytes as lowercase hex, an RDM6300's
  // uppercase digits) is one badge.
  EXPECT_EQ(badge_hash(s, "0415a3b2c1"), h);
  EXPECT_NE(badge_hash(s, "0415A3B2C2"), h);
  // Another site's secret gives another hash for the same card.
  reflow_test::TempDir other;
  auto s2 = load_or_create_site_secret(site_secret_path(other.path()));
  ASSERT_TRUE(s2);
  EXPECT_NE(badge_hash(*s2, id), h);
}

TEST_F(MembersTest, RefusesASecretOthersCanReadOrOfTheWrongSize) {
  const auto file = site_secret_path(m_dir.path());
  (void)secret();
  ASSERT_EQ(::chmod(file.c_str(), 0644), 0);
  auto bad = load_or_create_site_secret(file);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::corruption);
  EXPECT_NE(bad.error().message.find("chmod 600"), std::string::npos) << bad.error().message;
  ASSERT_EQ(::chmod(file.c_str(), 0600), 0);
  std::filesystem::resize_file(file, 16);
  bad = load_or_create_site_secret(file);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("16 bytes, not 32"), std::string::npos) << bad.error().message;
}

TEST_F(MembersTest, LoadsMembersAndFindsThemByBadge) {
  const SiteSecret s = secret();
  const std::string a = badge_hash(s, "0000000001");
  const std::string b = badge_hash(s, "0000000002");
  const auto file = m_dir / "members.toml";
  write(file,
        "# the lab's members\n[[member]]\nhandle = \"ada\"\nagent = \"person:ada\"\n"
        "badges = [\"" +
            a +
            "\"]\nmachines = [\"laser\"]\n\n[[member]]\nhandle = \"bob\"\n"
            "agent = \"person:bob\"\nbadges = [\"" +
            b + "\"]\n");
  auto m = Members::load(file);
  ASSERT_TRUE(m) << m.error().message;
  ASSERT_EQ(m->all().size(), 2U);
  ASSERT_NE(m->by_badge(a), nullptr);
  EXPECT_EQ(m->by_badge(a)->handle, "ada");
  EXPECT_EQ(m->by_badge(a)->machines, std::vector<std::string>{"laser"});
  EXPECT_EQ(m->by_badge(b)->agent, "person:bob");
  EXPECT_EQ(m->by_badge(badge_hash(s, "0000000003")), nullptr);
  EXPECT_EQ(m->by_handle("bob")->line, 8U);  // its [[member]] line
}

TEST_F(MembersTest, BadMembersFilesNameFileLineAndKey) {
  const SiteSecret s = secret();
  const std::string a = badge_hash(s, "0000000001");
  auto error_of = [](const std::string& text) {
    auto m = Members::parse(text, "members.toml");
    EXPECT_FALSE(m);
    return m ? std::string() : m.error().message;
  };
  // A raw card id where a keyed hash belongs.
  EXPECT_NE(error_of("[[member]]\nhandle = \"ada\"\nagent = \"p:ada\"\nbadges = [\"0415A3B2C1\"]\n")
                .find("members.toml:4: member[0].badges[0]: expected a keyed badge hash"),
            std::string::npos);
  EXPECT_NE(error_of("[[member]]\nhandle = \"ada\"\n").find("member[0].agent: required key"),
            std::string::npos);
  EXPECT_NE(error_of("[[member]]\nhandle = \"ada\"\nagent = \"p\"\ncolour = 1\n")
                .find("members.toml:4: member[0].colour: unknown key"),
            std::string::npos);
  EXPECT_NE(error_of("[[member]]\nhandle = \"ada\"\nagent = \"p\"\n[[member]]\nhandle = \"ada\"\n"
                     "agent = \"q\"\n")
                .find("members.toml:5: member[1].handle: handle \"ada\" is used"),
            std::string::npos);
  EXPECT_NE(error_of("[[member]]\nhandle = \"ada\"\nagent = \"p\"\nbadges = [\"" + a +
                     "\"]\n[[member]]\nhandle = \"bob\"\nagent = \"q\"\nbadges = [\"" + a + "\"]\n")
                .find("members.toml:8: member[1].badges[0]: this badge is already \"ada\"'s"),
            std::string::npos);
  EXPECT_NE(error_of("[[member]\n").find("members.toml:1: TOML syntax error"), std::string::npos);
  EXPECT_NE(error_of("[member]\nhandle = 1\n").find("expected [[member]] tables"),
            std::string::npos);
  auto missing = Members::load(m_dir / "none.toml");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::invalid_config);
}

TEST_F(MembersTest, AddKeepsCommentsAndExtendsAnExistingMember) {
  const SiteSecret s = secret();
  const std::string a = badge_hash(s, "0000000001");
  const std::string b = badge_hash(s, "0000000002");
  const std::string c = badge_hash(s, "0000000003");
  const auto file = m_dir / "members.toml";
  write(file,
        "# the lab's members\n[[member]]\nhandle = \"ada\"  # since 2025\n"
        "agent = \"person:ada\"\nbadges = [\"" +
            a + "\"]  # her key fob\n");
  ASSERT_TRUE(add_member_badge(file, "bob", "person:bob", b, "laser"));
  ASSERT_TRUE(add_member_badge(file, "ada", "person:ada", c, "laser"));
  const std::string text = slurp(file);
  EXPECT_NE(text.find("# the lab's members\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# since 2025"), std::string::npos) << text;
  EXPECT_NE(text.find("  # her key fob"), std::string::npos) << text;
  auto m = Members::load(file);
  ASSERT_TRUE(m) << m.error().message << "\n" << text;
  EXPECT_EQ(m->by_badge(c)->handle, "ada");
  EXPECT_EQ(m->by_badge(a)->handle, "ada");
  EXPECT_EQ(m->by_handle("ada")->machines, std::vector<std::string>{"laser"});
  EXPECT_EQ(m->by_badge(b)->handle, "bob");
  EXPECT_EQ(m->by_badge(b)->agent, "person:bob");
  // Adding the same badge again changes nothing; another member's badge or agent is refused.
  ASSERT_TRUE(add_member_badge(file, "ada", "person:ada", c, std::nullopt));
  EXPECT_EQ(Members::load(file)->by_handle("ada")->badges.size(), 2U);
  EXPECT_FALSE(add_member_badge(file, "bob", "person:bob", a, std::nullopt));
  EXPECT_FALSE(add_member_badge(file, "ada", "person:eve", b, std::nullopt));
  EXPECT_FALSE(add_member_badge(file, "eve", "person:eve", "0415A3B2C1", std::nullopt));
}

TEST_F(MembersTest, LastUnknownIsKeptPerMachine) {
  auto none = load_last_unknown(m_dir.path());
  ASSERT_TRUE(none);
  EXPECT_FALSE(*none);
  const std::string h = badge_hash(secret(), "0000000009");
  ASSERT_TRUE(save_last_unknown(m_dir.path(), {h, "2026-01-01T00:00:00.000Z"}));
  auto got = load_last_unknown(m_dir.path());
  ASSERT_TRUE(got && *got);
  EXPECT_EQ((*got)->hash, h);
  EXPECT_EQ((*got)->seen_at, "2026-01-01T00:00:00.000Z");
}

}  // namespace
