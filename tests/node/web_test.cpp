// SPDX-License-Identifier: AGPL-3.0-or-later
// The web page's pure parts (reflow/node/web.hpp): escaping, cookies, the listen address,
// password hashing, the accounts file and the metrics text. tests/integration/test_web.py drives
// the server itself.
#include <reflow/node/web.hpp>

#include <sys/stat.h>

#include <fstream>
#include <regex>
#include <sstream>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "temp_dir.hpp"

namespace ingest::web {
namespace {

TEST(HtmlEscapeTest, EscapesTheFiveSpecialCharactersAndNothingElse) {
  EXPECT_EQ(html_escape("<script>alert(\"x\")</script>"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;");
  EXPECT_EQ(html_escape("a & b's"), "a &amp; b&#39;s");
  EXPECT_EQ(html_escape("&amp;"), "&amp;amp;");  // escaped text is escaped again, not trusted
  EXPECT_EQ(html_escape("plain ÄÖ 1.5 kg/m"), "plain ÄÖ 1.5 kg/m");
  EXPECT_EQ(html_escape(""), "");
  EXPECT_EQ(html_escape(std::string_view("a\0b", 3)), std::string("a\0b", 3));
}

TEST(CookieTest, FindsTheNamedCookieAmongOthers) {
  EXPECT_EQ(cookie_value("reflow_session=abc", "reflow_session"), "abc");
  EXPECT_EQ(cookie_value("a=1; reflow_session=abc; b=2", "reflow_session"), "abc");
  EXPECT_EQ(cookie_value("a=1;reflow_session=\"abc\"", "reflow_session"), "abc");
  EXPECT_EQ(cookie_value("  reflow_session = abc  ", "reflow_session"), "abc");
  EXPECT_EQ(cookie_value("reflow_session=first; reflow_session=second", "reflow_session"), "first");
  EXPECT_EQ(cookie_value("reflow_session=", "reflow_session"), "");
}

TEST(CookieTest, OtherNamesAndMalformedPairsAreNotIt) {
  EXPECT_EQ(cookie_value("", "reflow_session"), std::nullopt);
  EXPECT_EQ(cookie_value("xreflow_session=abc", "reflow_session"), std::nullopt);
  EXPECT_EQ(cookie_value("reflow_sessionx=abc", "reflow_session"), std::nullopt);
  EXPECT_EQ(cookie_value("reflow_session", "reflow_session"), std::nullopt);
  EXPECT_EQ(cookie_value("a=reflow_session=abc", "reflow_session"), std::nullopt);
}

TEST(ListenAddressTest, AcceptsIpv4AndBracketedIpv6WithAPort) {
  auto a = parse_listen_address("127.0.0.1:8080");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 8080);
  a = parse_listen_address("[::1]:0");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->host, "::1");
  EXPECT_EQ(a->port, 0);
  EXPECT_TRUE(parse_listen_address("0.0.0.0:65535").has_value());
}

TEST(ListenAddressTest, RefusesEverythingElse) {
  for (const char* bad :
       {"", "127.0.0.1", "127.0.0.1:", ":8080", "localhost:8080", "127.0.0.1:65536", "127.0.0.1:-1",
        "127.0.0.1:80x", "::1:8080", "[127.0.0.1]:80", "256.0.0.1:80", "127.0.0.1: 80"})
    EXPECT_FALSE(parse_listen_address(bad).has_value()) << bad;
}

TEST(PasswordTest, HashVerifiesItsPasswordOnly) {
  const auto hash = hash_password("correct horse");
  ASSERT_TRUE(hash.has_value()) << hash.error().message;
  EXPECT_TRUE(hash->starts_with("$argon2id$")) << *hash;
  EXPECT_TRUE(verify_password(*hash, "correct horse"));
  EXPECT_FALSE(verify_password(*hash, "correct horsf"));
  EXPECT_FALSE(verify_password(*hash, ""));
  EXPECT_FALSE(verify_password("not a hash", "correct horse"));
  EXPECT_FALSE(verify_password("", "correct horse"));
  // Salted: the same password hashes differently each time.
  const auto again = hash_password("correct horse");
  ASSERT_TRUE(again.has_value());
  EXPECT_NE(*hash, *again);
  EXPECT_FALSE(hash_password("").has_value());
}

TEST(UserFileTest, AddsReplacesAndRemovesAccountsInAPrivateFile) {
  reflow_test::TempDir dir;
  const UserFile users(dir / "web-users.json");
  auto loaded = users.load();
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(loaded->empty());
  ASSERT_TRUE(users.put("alice", "h1").has_value());
  ASSERT_TRUE(users.put("bob", "h2").has_value());
  ASSERT_TRUE(users.put("alice", "h3").has_value());
  loaded = users.load();
  ASSERT_TRUE(loaded.has_value());
  EXPECT_EQ(*loaded, (std::map<std::string, std::string>{{"alice", "h3"}, {"bob", "h2"}}));
  struct stat st {};
  ASSERT_EQ(::stat((dir / "web-users.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_TRUE(users.remove("bob").has_value());
  const auto missing = users.remove("bob");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, agent::ErrorCode::not_found);
  EXPECT_FALSE(users.put("a b", "h").has_value());
  EXPECT_FALSE(users.put("", "h").has_value());
}

TEST(UserFileTest, AFileInAnotherFormatIsAnErrorNamingIt) {
  reflow_test::TempDir dir;
  std::ofstream(dir / "web-users.json") << "[\"alice\"]";
  const auto loaded = UserFile(dir / "web-users.json").load();
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().code, agent::ErrorCode::corruption);
  EXPECT_NE(loaded.error().message.find("web-users.json"), std::string::npos);
}

TEST(MetricsTest, EveryFamilyHasHelpAndTypeAndLabelValuesAreEscaped) {
  DeviceStats a;
  a.device = "dev-a";
  a.events = 12;
  a.rejections = {{"bad_signature", 2}};
  a.rejections_before_registration = {{"unknown_kid", 3}, {"bad_signature", 1}};
  DeviceStats b;
  b.device = "we\"ird\\dev\n";
  const std::string text = metrics_text({a, b}, 4096);
  EXPECT_NE(text.find("reflow_events_stored_total{device=\"dev-a\"} 12\n"), std::string::npos);
  EXPECT_NE(text.find("reflow_events_rejected_total{device=\"dev-a\",reason=\"bad_signature\"} "
                      "3\n"),
            std::string::npos);
  EXPECT_NE(text.find("reflow_events_rejected_total{device=\"dev-a\",reason=\"unknown_kid\"} 3\n"),
            std::string::npos);
  EXPECT_NE(text.find("reflow_events_stored_total{device=\"we\\\"ird\\\\dev\\n\"} 0\n"),
            std::string::npos);
  EXPECT_NE(text.find("reflow_devices 2\n"), std::string::npos);
  EXPECT_NE(text.find("reflow_store_size_bytes 4096\n"), std::string::npos);
  // Every sample's family was introduced by # HELP then # TYPE.
  const std::regex sample(R"(^([a-z_]+)(\{.*\})? -?[0-9]+$)");
  std::istringstream lines(text);
  std::string line, help, type;
  int samples = 0;
  while (std::getline(lines, line)) {
    if (line.starts_with("# HELP ")) {
      help = line.substr(7, line.find(' ', 7) - 7);
      continue;
    }
    if (line.starts_with("# TYPE ")) {
      type = line.substr(7, line.find(' ', 7) - 7);
      EXPECT_EQ(type, help);
      continue;
    }
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, sample)) << line;
    EXPECT_EQ(m[1].str(), type) << line;
    ++samples;
  }
  EXPECT_EQ(samples, 2 + 2 + 1 + 1);
}

TEST(VerifyLoginTest, AnUnknownUserIsRefusedAfterTheSameCheckAsAKnownOne) {
  auto alice = hash_password("alice's secret");
  auto dummy = hash_password("the dummy's secret");
  ASSERT_TRUE(alice && dummy);
  const std::map<std::string, std::string> users = {{"alice", *alice}};
  EXPECT_TRUE(verify_login(users, "alice", "alice's secret", *dummy));
  EXPECT_FALSE(verify_login(users, "alice", "wrong", *dummy));
  // The dummy hash is checked for an unknown name, but never lets anyone in, even with the
  // dummy's own password.
  EXPECT_FALSE(verify_login(users, "mallory", "the dummy's secret", *dummy));
  EXPECT_FALSE(verify_login(users, "mallory", "alice's secret", *dummy));
}

class LoginLimiterTest : public ::testing::Test {
 protected:
  agent::FakeEnv m_env;
  LoginLimiter m_limiter{m_env, {.max_failures = 5, .window = std::chrono::minutes(1)}};
};

TEST_F(LoginLimiterTest, FiveFailuresAMinuteThenWaitUntilTheOldestIsAMinuteOld) {
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(m_limiter.retry_after("192.0.2.1", "alice"), std::nullopt) << i;
    m_limiter.failed("192.0.2.1", "alice");
    m_env.advance_ms(1000);
  }
  // The first failure was 5 s ago: 55 s to go.
  EXPECT_EQ(m_limiter.retry_after("192.0.2.1", "alice"), std::chrono::seconds(55));
  m_env.advance_ms(54'500);
  EXPECT_EQ(m_limiter.retry_after("192.0.2.1", "alice"), std::chrono::seconds(1));  // rounded up
  m_env.advance_ms(500);
  EXPECT_EQ(m_limiter.retry_after("192.0.2.1", "alice"), std::nullopt);
  // A sliding window: one more failure, and the next oldest (4 s after the first) is the limit.
  m_limiter.failed("192.0.2.1", "alice");
  EXPECT_EQ(m_limiter.retry_after("192.0.2.1", "alice"), std::chrono::seconds(1));
}

TEST_F(LoginLimiterTest, LimitsEachUserFromAnyAddressAndEachAddressForAnyUser) {
  for (int i = 0; i < 5; ++i)
    m_limiter.failed(fmt::format("192.0.2.{}", i), "alice");
  EXPECT_EQ(m_limiter.retry_after("198.51.100.7", "alice"), std::chrono::seconds(60));
  EXPECT_EQ(m_limiter.retry_after("192.0.2.1", "bob"), std::nullopt);  // one failure there

  for (int i = 0; i < 5; ++i)
    m_limiter.failed("203.0.113.9", fmt::format("user{}", i));
  EXPECT_EQ(m_limiter.retry_after("203.0.113.9", "carol"), std::chrono::seconds(60));
  EXPECT_EQ(m_limiter.retry_after("198.51.100.7", "user1"), std::nullopt);
}

TEST_F(LoginLimiterTest, SuccessForgetsTheFailuresOfItsAddressAndUser) {
  for (int i = 0; i < 4; ++i)
    m_limiter.failed("192.0.2.1", "alice");
  m_limiter.succeeded("192.0.2.1", "alice");
  m_limiter.failed("192.0.2.1", "alice");
  EXPECT_EQ(m_limiter.retry_after("192.0.2.1", "alice"), std::nullopt);
}

TEST_F(LoginLimiterTest, NamesThatCannotBeAccountsShareOneCounter) {
  for (int i = 0; i < 5; ++i)
    m_limiter.failed(fmt::format("192.0.2.{}", i), fmt::format("no such name {}", i));
  EXPECT_EQ(m_limiter.retry_after("198.51.100.7", "<another bad name>"), std::chrono::seconds(60));
  EXPECT_EQ(m_limiter.retry_after("198.51.100.7", "alice"), std::nullopt);
}

}  // namespace
}  // namespace ingest::web
