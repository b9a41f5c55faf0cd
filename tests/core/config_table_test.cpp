// SPDX-License-Identifier: AGPL-3.0-or-later
// The [mqtt] key rows both programs' configs are built from (config_table.hpp add_mqtt_keys and
// check_mqtt_combinations), on a config struct of the test's own.
#include <chrono>
#include <filesystem>
#include <string>
#include <variant>

#include <gtest/gtest.h>

#include <reflow/core/config_table.hpp>

namespace agent::config_keys {
namespace {

using namespace std::chrono_literals;

struct MqttOnly {
  std::string url = "mqtt://127.0.0.1:1883";
  std::string topic_prefix = "reflow/v1";
  std::string client_id = "test";
  std::string username;
  std::filesystem::path password_file;
  std::filesystem::path ca_file;
  std::filesystem::path cert_file;
  std::filesystem::path tls_key_file;
  std::chrono::milliseconds keepalive{30s};
  std::chrono::milliseconds connect_timeout{10s};
  std::chrono::milliseconds reconnect_min{1s};
  std::chrono::milliseconds reconnect_max{60s};
};

const Schema<MqttOnly>& schema() {
  static const Schema<MqttOnly> schema = [] {
    Schema<MqttOnly> s;
    s.sections = {"mqtt"};
    s.known_tables = "known tables: [mqtt]";
    add_mqtt_keys(s, {.who = "the test",
                      .topics = "test topics.",
                      .client_id_default = "\"test\"",
                      .client_id = "the test's client id.",
                      .username = "the test's user.",
                      .password_file = "the test's password file.",
                      .cert_file = "the test's certificate.",
                      .key_file = "the test's key."});
    return s;
  }();
  return schema;
}

// Parses `text` as test.toml in /etc/test; returns the config, or the problems' message.
std::variant<MqttOnly, std::string> parse(std::string_view text) {
  auto root = parse_toml(text, "test.toml");
  if (!root) return root.error().message;
  MqttOnly config;
  Problems problems("test.toml");
  const auto seen = apply_schema(*root, schema(), ParseContext{"/etc/test"}, config, problems);
  if (problems.empty())
    check_mqtt_combinations(seen, config.url, config.reconnect_min, config.reconnect_max, problems);
  if (!problems.empty()) return problems.error().message;
  return config;
}

TEST(MqttKeysTest, ReadsEverySharedKey) {
  const auto parsed = parse(R"([mqtt]
url = "mqtts://node.example.org"
topic_prefix = "coop/v1"
client_id = "c1"
username = "u1"
password_file = "password"
ca_file = "ca.pem"
cert_file = "/etc/tls/c.pem"
key_file = "/etc/tls/c.key"
keepalive = "45s"
connect_timeout = "5s"
reconnect_min = "500ms"
reconnect_max = "5m"
)");
  ASSERT_TRUE(std::holds_alternative<MqttOnly>(parsed)) << std::get<std::string>(parsed);
  const auto& config = std::get<MqttOnly>(parsed);
  EXPECT_EQ(config.url, "mqtts://node.example.org");
  EXPECT_EQ(config.topic_prefix, "coop/v1");
  EXPECT_EQ(config.client_id, "c1");
  EXPECT_EQ(config.username, "u1");
  EXPECT_EQ(config.password_file, "/etc/test/password");
  EXPECT_EQ(config.ca_file, "/etc/test/ca.pem");
  EXPECT_EQ(config.cert_file, "/etc/tls/c.pem");
  EXPECT_EQ(config.tls_key_file, "/etc/tls/c.key");
  EXPECT_EQ(config.keepalive, 45s);
  EXPECT_EQ(config.connect_timeout, 5s);
  EXPECT_EQ(config.reconnect_min, 500ms);
  EXPECT_EQ(config.reconnect_max, 5min);
}

TEST(MqttKeysTest, ProblemsNameFileLineAndKey) {
  const auto parsed = parse(R"([mqtt]
url = "http://node"
keepalive = "30"
)");
  ASSERT_TRUE(std::holds_alternative<std::string>(parsed));
  const auto& message = std::get<std::string>(parsed);
  EXPECT_NE(message.find("test.toml:2: mqtt.url: expected mqtt://HOST[:PORT]"), std::string::npos)
      << message;
  EXPECT_NE(message.find("test.toml:3: mqtt.keepalive: "), std::string::npos) << message;
}

TEST(MqttKeysTest, CombinationsAreChecked) {
  const auto parsed = parse(R"([mqtt]
url = "mqtt://node"
cert_file = "c.pem"
password_file = "p"
)");
  ASSERT_TRUE(std::holds_alternative<std::string>(parsed));
  const auto& message = std::get<std::string>(parsed);
  EXPECT_NE(message.find("test.toml:3: mqtt.cert_file: expected only with an mqtts:// url"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("test.toml:4: mqtt.password_file: expected mqtt.username"),
            std::string::npos)
      << message;
}

// The messages of the shared keys, once for both programs (their config tests show that each
// runs these checks).
std::string error_of(std::string_view text) {
  const auto parsed = parse(text);
  return std::holds_alternative<std::string>(parsed) ? std::get<std::string>(parsed) : "";
}

TEST(MqttKeysTest, BrokerUrlIsMqttOrMqttsWithAHostAndAPort) {
  EXPECT_EQ(error_of("[mqtt]\nurl = \"htp://node\"\n"),
            "test.toml:2: mqtt.url: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], e.g. "
            "\"mqtts://node.example.org:8883\"; got \"htp://node\"");
  for (const char* url :
       {"tcp://node:1883", "mqtt://", "mqtt://:1883", "mqtt://node:", "mqtt://node:0",
        "mqtt://node:65536", "mqtt://node:18a3", "mqtt://node/path", "mqtt://user@node",
        "ws://node", "mqtt://[::1", "MQTT://node", "mqtt://no de"}) {
    SCOPED_TRACE(url);
    EXPECT_NE(error_of(std::string("[mqtt]\nurl = \"") + url + "\"\n").find("mqtt.url"),
              std::string::npos);
  }
  for (const char* url : {"mqtt://node", "mqtt://node.example.org:1883", "mqtts://10.0.0.2:8883",
                          "mqtts://[::1]:8883", "mqtt://[fe80::1]", "mqtt://my-node_1:65535"}) {
    SCOPED_TRACE(url);
    const auto parsed = parse(std::string("[mqtt]\nurl = \"") + url + "\"\n");
    ASSERT_TRUE(std::holds_alternative<MqttOnly>(parsed)) << std::get<std::string>(parsed);
    EXPECT_EQ(std::get<MqttOnly>(parsed).url, url);
  }
}

TEST(MqttKeysTest, TopicPrefixIsPlainLevelsAndClientIdIsNotEmpty) {
  for (const char* prefix : {"", "reflow/+", "reflow/#", "/reflow/v1", "reflow/v1/"}) {
    SCOPED_TRACE(prefix);
    EXPECT_EQ(error_of(std::string("[mqtt]\ntopic_prefix = \"") + prefix + "\"\n")
                  .rfind("test.toml:2: mqtt.topic_prefix: expected topic levels", 0),
              0u);
  }
  EXPECT_EQ(error_of("[mqtt]\nclient_id = \"\"\n"),
            "test.toml:2: mqtt.client_id: expected a non-empty MQTT client id; got \"\"");
  EXPECT_EQ(error_of("[mqtt]\nkeepalive = \"1500ms\"\n")
                .rfind("test.toml:2: mqtt.keepalive: expected a duration from \"1s\" to "
                       "\"65535s\" in whole seconds",
                       0),
            0u);
}

TEST(MqttKeysTest, TlsFilesNeedMqttsAndEachOther) {
  EXPECT_EQ(error_of("[mqtt]\nca_file = \"/etc/ca.pem\"\n"),
            "test.toml:2: mqtt.ca_file: expected only with an mqtts:// url (mqtt.url is "
            "\"mqtt://127.0.0.1:1883\"); remove it or use mqtts://; got \"/etc/ca.pem\"");
  EXPECT_EQ(error_of("[mqtt]\nurl = \"mqtts://node\"\ncert_file = \"/c.pem\"\n"),
            "test.toml:3: mqtt.cert_file: expected mqtt.key_file to be set too (mutual TLS "
            "needs both); got \"/c.pem\"");
  EXPECT_EQ(error_of("[mqtt]\nurl = \"mqtts://node\"\nkey_file = \"/c.key\"\n"),
            "test.toml:3: mqtt.key_file: expected mqtt.cert_file to be set too (mutual TLS "
            "needs both); got \"/c.key\"");
}

TEST(MqttKeysTest, PasswordNeedsAUserNameAndReconnectMinAtMostMax) {
  EXPECT_EQ(error_of("[mqtt]\npassword_file = \"/p\"\n")
                .rfind("test.toml:2: mqtt.password_file: expected mqtt.username to be set too", 0),
            0u);
  EXPECT_EQ(error_of("[mqtt]\nreconnect_min = \"2m\"\nreconnect_max = \"1m\"\n"),
            "test.toml:3: mqtt.reconnect_max: expected reconnect_min (\"2m\") to be at most "
            "reconnect_max (\"1m\"); got \"1m\"");
  EXPECT_EQ(error_of("[mqtt]\nreconnect_min = \"2m\"\n"),
            "test.toml:2: mqtt.reconnect_min: expected reconnect_min (\"2m\") to be at most "
            "reconnect_max (\"1m\"); got \"2m\"");
}

TEST(MqttKeysTest, ReferenceUsesEachProgramsWords) {
  const auto rows = schema().reference();
  ASSERT_EQ(rows.size(), 12u);
  EXPECT_EQ(rows[0].key, "mqtt.url");
  EXPECT_EQ(rows[1].description, "First topic levels (PROTOCOL §2): test topics.");
  EXPECT_EQ(rows[2].default_text, "\"test\"");
  EXPECT_EQ(rows[7].key, "mqtt.key_file");
  EXPECT_EQ(rows[7].description, "the test's key.");
  EXPECT_EQ(rows[8].description,
            "MQTT keep alive: the broker drops the test after 1.5 times this without traffic.");
  EXPECT_EQ(rows[11].key, "mqtt.reconnect_max");
}

TEST(CheckDurationTest, AcceptsADurationWithinItsBoundsAndSaysWhyNotOtherwise) {
  const toml::table t = toml::parse(
      "ok = \"90s\"\nlow = \"500ms\"\nhigh = \"2h\"\nfraction = \"1500ms\"\n"
      "number = 90\nword = \"soon\"\n");
  EXPECT_EQ(check_duration(*t.get("ok"), 1s, 1h), 90s);
  EXPECT_EQ(check_duration(*t.get("ok"), 90s, 90s, true), 90s);  // the bounds are inclusive
  EXPECT_EQ(check_duration(*t.get("low"), 1s, 1h).error(), DurationProblem::out_of_range);
  EXPECT_EQ(check_duration(*t.get("high"), 1s, 1h).error(), DurationProblem::out_of_range);
  EXPECT_EQ(check_duration(*t.get("fraction"), 1s, 1h), 1500ms);
  EXPECT_EQ(check_duration(*t.get("fraction"), 1s, 1h, true).error(),
            DurationProblem::out_of_range);
  EXPECT_EQ(check_duration(*t.get("number"), 1s, 1h).error(), DurationProblem::not_a_duration);
  EXPECT_EQ(check_duration(*t.get("word"), 1s, 1h).error(), DurationProblem::not_a_duration);
}

// Issue 14 item 14: a config file size limit. /dev/zero given as the config used to be read
// until memory ran out.
TEST(ReadConfigFileTest, RefusesWhatCannotBeAConfigFile) {
  auto zero = read_config_file("/dev/zero");
  ASSERT_FALSE(zero.has_value());
  EXPECT_EQ(zero.error().code, ErrorCode::invalid_config);
  EXPECT_NE(zero.error().message.find("/dev/zero: more than 1024 KiB"), std::string::npos)
      << zero.error().message;
  auto missing = read_config_file("/nonexistent/agent.toml");
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message.find("cannot read /nonexistent/agent.toml"), std::string::npos);
}

}  // namespace
}  // namespace agent::config_keys
