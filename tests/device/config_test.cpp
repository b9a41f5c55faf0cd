// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/config.hpp>
#include <reflow/device/driver_table.hpp>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <toml++/toml.h>

#include "files.hpp"
#include "temp_dir.hpp"

namespace agent {
namespace {

using namespace std::chrono_literals;

// The three required keys on lines 1-4; tests append their own lines from line 5 on.
constexpr std::string_view k_minimal =
    "[agent]\n"
    "device_id = \"fablab-mk4-01\"\n"
    "key_file = \"/var/lib/reflow-agent/device.key\"\n"
    "data_dir = \"/var/lib/reflow-agent\"\n";

const std::filesystem::path k_example =
    std::filesystem::path(REFLOW_SOURCE_DIR) / "config" / "reflow-agent.example.toml";

using reflow_test::read_text;

void write_text(const std::filesystem::path& path, std::string_view text) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

class ConfigTest : public ::testing::Test {
 protected:
  // Parses and expects failure; returns the message.
  static std::string error_of(std::string_view text) {
    const auto config = parse_config(text, "agent.toml");
    EXPECT_FALSE(config.has_value()) << text;
    if (config.has_value()) return {};
    EXPECT_EQ(config.error().code, ErrorCode::invalid_config);
    return config.error().message;
  }

  static std::string with_minimal(std::string_view tail) {
    return std::string(k_minimal) + std::string(tail);
  }

  reflow_test::TempDir m_dir;
};

TEST_F(ConfigTest, FillsDefaultsForEveryOptionalKey) {
  const auto config = parse_config(k_minimal, "agent.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->device_id, "fablab-mk4-01");
  EXPECT_EQ(config->key_file, "/var/lib/reflow-agent/device.key");
  EXPECT_EQ(config->data_dir, "/var/lib/reflow-agent");
  EXPECT_EQ(config->log_level, LogLevel::info);
  EXPECT_EQ(config->url, "mqtt://127.0.0.1:1883");
  EXPECT_EQ(config->topic_prefix, "reflow/v1");
  EXPECT_EQ(config->client_id, "reflow-agent-fablab-mk4-01");
  EXPECT_TRUE(config->username.empty());
  EXPECT_TRUE(config->password_file.empty());
  EXPECT_TRUE(config->ca_file.empty());
  EXPECT_EQ(config->keepalive, 30s);
  EXPECT_EQ(config->connect_timeout, 10s);
  EXPECT_EQ(config->resend_after, 30s);
  EXPECT_EQ(config->reconnect_min, 1s);
  EXPECT_EQ(config->reconnect_max, 60s);
  EXPECT_EQ(config->status_interval, 60s);
  EXPECT_EQ(config->max_inflight, 64u);
  EXPECT_EQ(config->quota_bytes, 256ull * 1024 * 1024);
  EXPECT_EQ(config->durability, Durability::full);
  EXPECT_EQ(config->queue_capacity, 1024u);
  EXPECT_EQ(config->max_batch, 256u);
  EXPECT_TRUE(config->drivers.empty());
  EXPECT_EQ(config->source_file, "agent.toml");
  EXPECT_EQ(config->outbox_path(), "/var/lib/reflow-agent/outbox.db");
}

TEST_F(ConfigTest, ReadsEveryKey) {
  const auto config = parse_config(with_minimal(R"(log_level = "debug"
[mqtt]
url = "mqtts://node.example.org:8883"
topic_prefix = "coop/reflow/v1"
client_id = "mk4"
username = "fablab-mk4-01"
password_file = "/etc/reflow-agent/password"
ca_file = "/etc/reflow-agent/ca.pem"
cert_file = "/etc/reflow-agent/client.pem"
key_file = "/etc/reflow-agent/client.key"
keepalive = "45s"
connect_timeout = "5s"
resend_after = "2m"
reconnect_min = "500ms"
reconnect_max = "5m"
status_interval = "15s"
max_inflight = 8
[outbox]
quota = "1GiB"
durability = "normal"
queue_capacity = 100
max_batch = 10
)"),
                                   "/etc/reflow-agent/agent.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->log_level, LogLevel::debug);
  EXPECT_EQ(config->url, "mqtts://node.example.org:8883");
  EXPECT_EQ(config->topic_prefix, "coop/reflow/v1");
  EXPECT_EQ(config->client_id, "mk4");
  EXPECT_EQ(config->username, "fablab-mk4-01");
  EXPECT_EQ(config->password_file, "/etc/reflow-agent/password");
  EXPECT_EQ(config->ca_file, "/etc/reflow-agent/ca.pem");
  EXPECT_EQ(config->cert_file, "/etc/reflow-agent/client.pem");
  EXPECT_EQ(config->tls_key_file, "/etc/reflow-agent/client.key");
  EXPECT_EQ(config->key_file, "/var/lib/reflow-agent/device.key");
  EXPECT_EQ(config->keepalive, 45s);
  EXPECT_EQ(config->connect_timeout, 5s);
  EXPECT_EQ(config->resend_after, 2min);
  EXPECT_EQ(config->reconnect_min, 500ms);
  EXPECT_EQ(config->reconnect_max, 5min);
  EXPECT_EQ(config->status_interval, 15s);
  EXPECT_EQ(config->max_inflight, 8u);
  EXPECT_EQ(config->quota_bytes, 1ull << 30);
  EXPECT_EQ(config->durability, Durability::normal);
  EXPECT_EQ(config->queue_capacity, 100u);
  EXPECT_EQ(config->max_batch, 10u);
}

TEST_F(ConfigTest, RejectsUnknownKeyAndListsTheKnownOnes) {
  EXPECT_EQ(error_of(with_minimal("colour = \"red\"\n")),
            "agent.toml:5: agent.colour: unknown key (known keys in [agent]: device_id, key_file, "
            "data_dir, log_level)");
}

TEST_F(ConfigTest, RejectsUnknownTable) {
  const auto message = error_of(with_minimal("[outbx]\nquota = \"1GiB\"\n"));
  EXPECT_EQ(message.rfind("agent.toml:5: outbx: unknown table", 0), 0u) << message;
  EXPECT_NE(message.find("[outbox]"), std::string::npos) << message;
}

TEST_F(ConfigTest, RejectsUnknownTopLevelKey) {
  const auto message = error_of("verbose = true\n" + std::string(k_minimal));
  EXPECT_EQ(message.rfind("agent.toml:1: verbose: unknown key", 0), 0u) << message;
}

TEST_F(ConfigTest, RejectsValueOfTheWrongType) {
  EXPECT_EQ(error_of(with_minimal("[mqtt]\nmax_inflight = \"64\"\n")),
            "agent.toml:6: mqtt.max_inflight: expected an integer from 1 to 65535; got \"64\"");
  EXPECT_EQ(error_of(with_minimal("[outbox]\nmax_batch = 2.5\n")),
            "agent.toml:6: outbox.max_batch: expected an integer from 1 to 100000; got 2.5");
  EXPECT_EQ(error_of(with_minimal("[mqtt]\nurl = 1883\n")).rfind("agent.toml:6: mqtt.url: ", 0),
            0u);
  EXPECT_EQ(error_of("mqtt = \"mqtt://node\"\n" + std::string(k_minimal)),
            "agent.toml:1: mqtt: expected a table [mqtt]; got \"mqtt://node\"");
  // A string is shown as TOML would read it back, escapes included.
  EXPECT_EQ(
      error_of(with_minimal("[outbox]\ndurability = \"f\\\"ull\\n\"\n")),
      "agent.toml:6: outbox.durability: expected \"full\" or \"normal\"; got \"f\\\"ull\\n\"");
}

TEST_F(ConfigTest, ProxyIsAnHttpConnectProxyForMqttOnly) {
  const auto minimal = parse_config(k_minimal, "agent.toml");
  ASSERT_TRUE(minimal) << minimal.error().message;
  EXPECT_EQ(minimal->proxy, "");
  const auto config = parse_config(with_minimal("[mqtt]\nurl = \"mqtts://abc.onion:8883\"\nproxy = "
                                                "\"http://127.0.0.1:9080\"\n"),
                                   "agent.toml");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->proxy, "http://127.0.0.1:9080");
  EXPECT_EQ(error_of(with_minimal("[mqtt]\nproxy = \"https://127.0.0.1:9080\"\n")),
            "agent.toml:6: mqtt.proxy: expected http://HOST:PORT, an HTTP CONNECT proxy such as "
            "\"http://127.0.0.1:9080\"; got \"https://127.0.0.1:9080\"");
}

TEST_F(ConfigTest, RejectsDurationWithoutUnit) {
  EXPECT_EQ(error_of("[agent]\ndevice_id = \"a\"\nkey_file = \"k\"\ndata_dir = \"d\"\n\n[mqtt]\n"
                     "keepalive = 30\n"),
            "agent.toml:7: mqtt.keepalive: expected a duration such as \"30s\" (units ms, s, m, "
            "h, d); got 30");
}

TEST_F(ConfigTest, RejectsBadDurations) {
  EXPECT_EQ(error_of(with_minimal("[mqtt]\nresend_after = \"30 seconds\"\n")),
            "agent.toml:6: mqtt.resend_after: expected a duration such as \"30s\" (units ms, s, "
            "m, h, d); got \"30 seconds\"");
  EXPECT_EQ(error_of(with_minimal("[mqtt]\nresend_after = \"500ms\"\n")),
            "agent.toml:6: mqtt.resend_after: expected a duration from \"1s\" to \"1d\"; got "
            "\"500ms\"");
  const auto status = error_of(with_minimal("[mqtt]\nstatus_interval = \"90s\"\n"));
  EXPECT_EQ(status.rfind("agent.toml:6: mqtt.status_interval: expected a duration from \"1s\" to "
                         "\"1m\"",
                         0),
            0u)
      << status;
  EXPECT_NE(status.find("PROTOCOL §6"), std::string::npos) << status;
  EXPECT_NE(error_of(with_minimal("[mqtt]\nkeepalive = \"1500ms\"\n")).find("whole seconds"),
            std::string::npos);
}

TEST_F(ConfigTest, RejectsBadEnumsSizesAndCounts) {
  EXPECT_EQ(error_of(with_minimal("log_level = \"verbose\"\n")),
            "agent.toml:5: agent.log_level: expected one of \"debug\", \"info\", \"warning\", "
            "\"error\"; got \"verbose\"");
  EXPECT_EQ(error_of(with_minimal("[outbox]\ndurability = \"fast\"\n")),
            "agent.toml:6: outbox.durability: expected \"full\" or \"normal\"; got \"fast\"");
  EXPECT_EQ(error_of(with_minimal("[outbox]\nquota = \"1KiB\"\n")),
            "agent.toml:6: outbox.quota: expected a size of at least \"64KiB\"; got \"1KiB\"");
  EXPECT_NE(error_of(with_minimal("[outbox]\nquota = \"lots\"\n")).find("expected a size such as"),
            std::string::npos);
  EXPECT_EQ(error_of(with_minimal("[outbox]\nqueue_capacity = 0\n")),
            "agent.toml:6: outbox.queue_capacity: expected an integer from 1 to 1000000; got 0");
  EXPECT_EQ(error_of(with_minimal("[mqtt]\nmax_inflight = 65536\n")),
            "agent.toml:6: mqtt.max_inflight: expected an integer from 1 to 65535; got 65536");
}

TEST_F(ConfigTest, RejectsInvalidDeviceId) {
  const auto message =
      error_of("[agent]\ndevice_id = \"Fablab/MK4\"\nkey_file = \"/k\"\ndata_dir = \"/d\"\n");
  EXPECT_EQ(message.rfind("agent.toml:2: agent.device_id: expected a device id matching", 0), 0u)
      << message;
  EXPECT_NE(message.find("got \"Fablab/MK4\""), std::string::npos) << message;
}

TEST_F(ConfigTest, RejectsMissingRequiredKey) {
  EXPECT_EQ(error_of("[agent]\nkey_file = \"/k\"\ndata_dir = \"/d\"\n"),
            "agent.toml:1: agent.device_id: required key is missing");
  EXPECT_EQ(error_of("[mqtt]\nurl = \"mqtt://node\"\n"),
            "agent.toml: agent.device_id: required key is missing\n"
            "agent.toml: agent.key_file: required key is missing\n"
            "agent.toml: agent.data_dir: required key is missing");
}

TEST_F(ConfigTest, ReportsTomlSyntaxErrorWithItsLine) {
  const auto message =
      error_of("[agent]\ndevice_id = \"fablab-mk4-01\"\nkey_file = /var/lib/key\n");
  EXPECT_EQ(message.rfind("agent.toml:3: TOML syntax error", 0), 0u) << message;
  const auto duplicate = error_of(with_minimal("device_id = \"other\"\n"));
  EXPECT_EQ(duplicate.rfind("agent.toml:5: TOML syntax error", 0), 0u) << duplicate;
}

TEST_F(ConfigTest, ReportsAllProblemsInFileOrder) {
  const auto message = error_of(with_minimal("[outbox]\nmax_batch = 0\n[mqtt]\nkeepalive = 30\n"));
  EXPECT_EQ(message,
            "agent.toml:6: outbox.max_batch: expected an integer from 1 to 100000; got 0\n"
            "agent.toml:8: mqtt.keepalive: expected a duration such as \"30s\" (units ms, s, m, "
            "h, d); got 30");
}

// The [mqtt] keys and their checks are the shared table's (tests/core/config_table_test.cpp);
// this shows reflow-agent's config runs them, line numbers and all.
TEST_F(ConfigTest, RejectsTlsFilesWithoutMqtts) {
  EXPECT_EQ(error_of(with_minimal("[mqtt]\nca_file = \"/etc/ca.pem\"\n")),
            "agent.toml:6: mqtt.ca_file: expected only with an mqtts:// url (mqtt.url is "
            "\"mqtt://127.0.0.1:1883\"); remove it or use mqtts://; got \"/etc/ca.pem\"");
}

TEST_F(ConfigTest, KeepsDriverTablesInFileOrderWithTheirSourceLines) {
  const auto config = parse_config(with_minimal(R"(
[[driver]]
kind = "sim"
name = "sim-01"
jobs = 3

[[driver]]
kind = "sim"
name = "sim_02"
part = "benchy.gcode"
)"),
                                   "agent.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  ASSERT_EQ(config->drivers.size(), 2u);
  EXPECT_EQ(config->drivers[0].kind, "sim");
  EXPECT_EQ(config->drivers[0].name, "sim-01");
  EXPECT_EQ(config->drivers[0].file, "agent.toml");
  ASSERT_NE(config->drivers[0].table, nullptr);
  const auto* jobs = config->drivers[0].table->get("jobs");
  ASSERT_NE(jobs, nullptr);
  EXPECT_EQ(jobs->value<std::int64_t>(), 3);
  // The kind reports its own errors by line, so the table must keep its positions.
  EXPECT_EQ(jobs->source().begin.line, 9u);
  EXPECT_EQ(config->drivers[1].name, "sim_02");
  EXPECT_EQ(config->drivers[1].table->get("part")->value<std::string>(), "benchy.gcode");
  EXPECT_EQ(config->drivers[1].table->get("part")->source().begin.line, 14u);
}

TEST_F(ConfigTest, RejectsDuplicateDriverName) {
  EXPECT_EQ(error_of(with_minimal("[[driver]]\nkind = \"sim\"\nname = \"a\"\n"
                                  "[[driver]]\nkind = \"sim\"\nname = \"a\"\n")),
            "agent.toml:10: driver[1].name: expected a name no other [[driver]] uses (line 7 has "
            "it); got \"a\"");
}

TEST_F(ConfigTest, RejectsDriverWithoutKind) {
  EXPECT_EQ(error_of(with_minimal("\n[[driver]]\nname = \"a\"\n")),
            "agent.toml:6: driver[0].kind: required key is missing");
  EXPECT_EQ(error_of(with_minimal("[[driver]]\nkind = 3\nname = \"a\"\n")),
            "agent.toml:6: driver[0].kind: expected a driver kind such as \"sim\"; got 3");
}

TEST_F(ConfigTest, RejectsBadDriverNames) {
  EXPECT_EQ(error_of(with_minimal("[[driver]]\nkind = \"sim\"\n")),
            "agent.toml:5: driver[0].name: required key is missing");
  for (const char* name :
       {"", "Sim", "-sim", "_sim", "sim 1", "sim.1", "a23456789012345678901234567890123"}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(
        error_of(with_minimal(fmt::format("[[driver]]\nkind = \"sim\"\nname = \"{}\"\n", name)))
            .rfind("agent.toml:7: driver[0].name: expected a driver name matching", 0),
        0u);
  }
  EXPECT_EQ(error_of(with_minimal("[driver]\nkind = \"sim\"\nname = \"a\"\n")),
            "agent.toml:5: driver: expected [[driver]] tables (an array of tables); got a table");
}

TEST_F(ConfigTest, ResolvesRelativePathsAgainstTheConfigDirectory) {
  const auto file = m_dir / "etc" / "agent.toml";
  write_text(file, R"([agent]
device_id = "fablab-mk4-01"
key_file = "keys/device.key"
data_dir = "../var/lib/agent"
[mqtt]
url = "mqtts://node"
username = "u"
password_file = "./secret"
ca_file = "/etc/ssl/ca.pem"
)");
  const auto config = load_config(file);
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->key_file, m_dir / "etc" / "keys" / "device.key");
  EXPECT_EQ(config->data_dir, m_dir / "var" / "lib" / "agent");
  EXPECT_EQ(config->password_file, m_dir / "etc" / "secret");
  EXPECT_EQ(config->ca_file, "/etc/ssl/ca.pem");
  EXPECT_EQ(config->source_file, file.string());
}

TEST_F(ConfigTest, ReportsMissingFile) {
  const auto path = m_dir / "x" / "agent.toml";
  const auto config = load_config(path);
  ASSERT_FALSE(config.has_value());
  EXPECT_EQ(config.error().code, ErrorCode::invalid_config);
  EXPECT_EQ(config.error().message,
            fmt::format("cannot read {}: No such file or directory", path.string()));
}

TEST_F(ConfigTest, LoadConfigNamesTheFileInMessages) {
  const auto file = m_dir / "agent.toml";
  write_text(file, with_minimal("[mqtt]\nkeepalive = 30\n"));
  const auto config = load_config(file);
  ASSERT_FALSE(config.has_value());
  EXPECT_EQ(config.error().message.rfind(fmt::format("{}:6: mqtt.keepalive: ", file.string()), 0),
            0u)
      << config.error().message;
}

TEST_F(ConfigTest, EveryErrorNamesFileLineAndKey) {
  struct Case {
    std::string tail;  // appended to k_minimal, so line 5 is its first line
    std::uint32_t line;
    std::string key;
  };
  const std::vector<Case> cases = {
      {"log_level = 1\n", 5, "agent.log_level"},
      {"shade = 1\n", 5, "agent.shade"},
      {"[mqtt]\nurl = \"mqtt:/x\"\n", 6, "mqtt.url"},
      {"[mqtt]\nproxy = \"socks5://127.0.0.1:9050\"\n", 6, "mqtt.proxy"},
      {"[mqtt]\n\nproxy = \"http://127.0.0.1\"\n", 7, "mqtt.proxy"},
      {"[mqtt]\n\nclient_id = \"\"\n", 7, "mqtt.client_id"},
      {"[mqtt]\nusername = []\n", 6, "mqtt.username"},
      {"[mqtt]\nca_file = \"\"\n", 6, "mqtt.ca_file"},
      {"[mqtt]\nconnect_timeout = \"0s\"\n", 6, "mqtt.connect_timeout"},
      {"[mqtt]\nreconnect_min = \"1x\"\n", 6, "mqtt.reconnect_min"},
      {"[mqtt]\nreconnect_max = true\n", 6, "mqtt.reconnect_max"},
      {"[mqtt]\nstatus_interval = \"0s\"\n", 6, "mqtt.status_interval"},
      {"[mqtt]\nwill = \"x\"\n", 6, "mqtt.will"},
      {"[mqtt.tls]\nca = \"x\"\n", 5, "mqtt.tls"},
      {"[outbox]\nquota = 1024\n", 6, "outbox.quota"},
      {"[outbox]\ndurability = \"FULL\"\n", 6, "outbox.durability"},
      {"[[driver]]\nkind = \"\"\nname = \"a\"\n", 6, "driver[0].kind"},
      {"[extra]\n", 5, "extra"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.tail);
    const auto message = error_of(with_minimal(c.tail));
    EXPECT_EQ(message.rfind(fmt::format("agent.toml:{}: {}: ", c.line, c.key), 0), 0u) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  const auto data_dir = error_of("[agent]\ndevice_id = \"d\"\nkey_file = \"/k\"\ndata_dir = 7\n");
  EXPECT_EQ(data_dir.rfind("agent.toml:4: agent.data_dir: expected a file path", 0), 0u);
}

TEST_F(ConfigTest, ExampleFileLoadsAsIs) {
  const auto config = load_config(k_example);
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->device_id, "fablab-mk4-01");
  EXPECT_EQ(config->key_file, "/var/lib/reflow-agent/device.key");
  EXPECT_EQ(config->data_dir, "/var/lib/reflow-agent");
  // The example shows the defaults, so it must mean the same as an empty [mqtt] and [outbox].
  const auto minimal = parse_config(k_minimal, "agent.toml");
  ASSERT_TRUE(minimal.has_value());
  EXPECT_EQ(config->url, minimal->url);
  EXPECT_EQ(config->topic_prefix, minimal->topic_prefix);
  EXPECT_EQ(config->client_id, minimal->client_id);
  EXPECT_EQ(config->keepalive, minimal->keepalive);
  EXPECT_EQ(config->connect_timeout, minimal->connect_timeout);
  EXPECT_EQ(config->resend_after, minimal->resend_after);
  EXPECT_EQ(config->reconnect_min, minimal->reconnect_min);
  EXPECT_EQ(config->reconnect_max, minimal->reconnect_max);
  EXPECT_EQ(config->status_interval, minimal->status_interval);
  EXPECT_EQ(config->max_inflight, minimal->max_inflight);
  EXPECT_EQ(config->quota_bytes, minimal->quota_bytes);
  EXPECT_EQ(config->durability, minimal->durability);
  EXPECT_EQ(config->queue_capacity, minimal->queue_capacity);
  EXPECT_EQ(config->max_batch, minimal->max_batch);
  EXPECT_EQ(config->log_level, minimal->log_level);
}

TEST_F(ConfigTest, ExampleFileDocumentsEveryKey) {
  const auto keys = reflow_test::keys_in_example(k_example);
  ASSERT_FALSE(keys.empty());
  for (const auto& info : config_reference()) {
    EXPECT_TRUE(keys.contains(info.key)) << info.key << " is missing from " << k_example;
  }
  for (const char* sim_key : {"driver.printer", "driver.filament", "driver.part", "driver.jobs",
                              "driver.job_duration", "driver.filament_grams"}) {
    EXPECT_TRUE(keys.contains(sim_key)) << sim_key;
  }
}

TEST_F(ConfigTest, DriverTableRequiredAndChoiceKeysNameFileLineAndKey) {
  const auto config = parse_config(with_minimal(R"(
[[driver]]
kind = "sim"
name = "plug"
protocol = "zigbee"
)"),
                                   "agent.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  const DriverTable table(config->drivers[0]);
  auto protocol = table.choice("protocol", "tasmota", {"shelly-gen1", "shelly-gen2", "tasmota"});
  ASSERT_FALSE(protocol.has_value());
  EXPECT_EQ(protocol.error().message,
            "agent.toml:9: driver.plug.protocol: expected one of \"shelly-gen1\", "
            "\"shelly-gen2\", \"tasmota\"; got \"zigbee\"");
  auto fallback = table.choice("mode", "input", {"input", "pulse"});
  ASSERT_TRUE(fallback.has_value());
  EXPECT_EQ(*fallback, "input");
  auto url = table.required_string("url");
  ASSERT_FALSE(url.has_value());
  // Absent: the table's own line.
  EXPECT_EQ(url.error().message, "agent.toml:6: driver.plug.url: is required (a non-empty string)");
  EXPECT_EQ(table.error("protocol", "must differ").message,
            "agent.toml:9: driver.plug.protocol: must differ");
}

TEST_F(ConfigTest, ExampleDriverTableLoadsOnceUncommented) {
  std::istringstream lines(read_text(k_example));
  std::string text;
  bool in_driver = false;
  for (std::string line; std::getline(lines, line);) {
    if (line == "# [[driver]]") in_driver = true;
    if (in_driver && line.starts_with("# ") && !line.starts_with("# #")) line = line.substr(2);
    text += line + '\n';
  }
  ASSERT_TRUE(in_driver);
  const auto config = parse_config(text, "example.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  ASSERT_EQ(config->drivers.size(), 1u);
  EXPECT_EQ(config->drivers[0].kind, "sim");
  EXPECT_EQ(config->drivers[0].name, "sim-01");
  const auto& table = *config->drivers[0].table;
  EXPECT_EQ(table["printer"].value<std::string>(), "printer:sim-01");
  EXPECT_EQ(table["filament"].value<std::string>(), "spool:sim-pla-01");
  EXPECT_EQ(table["part"].value<std::string>(), "benchy.gcode");
  EXPECT_EQ(table["jobs"].value<std::int64_t>(), 0);
  EXPECT_EQ(table["job_duration"].value<std::string>(), "10s");
  EXPECT_EQ(table["filament_grams"].value<double>(), 12.5);
}

TEST_F(ConfigTest, ReferenceListsEachKeyOnceWithTypeDefaultAndDescription) {
  const auto& reference = config_reference();
  std::set<std::string> seen;
  for (const auto& info : reference) {
    EXPECT_TRUE(seen.insert(info.key).second) << info.key;
    EXPECT_FALSE(info.type.empty()) << info.key;
    EXPECT_FALSE(info.default_text.empty()) << info.key;
    EXPECT_FALSE(info.description.empty()) << info.key;
  }
  const auto keepalive = std::find_if(reference.begin(), reference.end(), [](const auto& info) {
    return info.key == "mqtt.keepalive";
  });
  ASSERT_NE(keepalive, reference.end());
  EXPECT_EQ(keepalive->type, "duration");
  EXPECT_EQ(keepalive->default_text, "\"30s\"");
  EXPECT_TRUE(seen.contains("mqtt.key_file"));
  EXPECT_TRUE(seen.contains("outbox.durability"));
  EXPECT_TRUE(seen.contains("driver.name"));
}

TEST_F(ConfigTest, ReferenceDefaultsAreValidValues) {
  // Writing a key's documented default must load and mean the same as leaving it out.
  for (const auto& info : config_reference()) {
    const auto dot = info.key.find('.');
    const auto section = info.key.substr(0, dot);
    if (section == "driver" || info.default_text.starts_with('(') ||
        info.default_text.find('+') != std::string::npos)
      continue;
    SCOPED_TRACE(info.key);
    const auto text =
        section == "agent"
            ? with_minimal(fmt::format("{} = {}\n", info.key.substr(dot + 1), info.default_text))
            : with_minimal(fmt::format("[{}]\n{} = {}\n", section, info.key.substr(dot + 1),
                                       info.default_text));
    const auto config = parse_config(text, "agent.toml");
    EXPECT_TRUE(config.has_value()) << config.error().message;
  }
}

}  // namespace
}  // namespace agent

namespace {

TEST(MembersConfigTest, MembersTableReachesEveryDriver) {
  const auto config = agent::parse_config(
      "[agent]\ndevice_id = \"d\"\nkey_file = \"/k\"\ndata_dir = \"/var/lib/r\"\n"
      "[members]\nfile = \"members.toml\"\nprovider = \"org:fablab\"\n"
      "[[driver]]\nkind = \"sim\"\nname = \"a\"\n",
      "/etc/reflow-agent/agent.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->members_file, "/etc/reflow-agent/members.toml");  // relative to the config
  EXPECT_EQ(config->members_provider, "org:fablab");
  ASSERT_EQ(config->drivers.size(), 1U);
  EXPECT_EQ(config->drivers[0].members_file, "/etc/reflow-agent/members.toml");
  EXPECT_EQ(config->drivers[0].members_provider, "org:fablab");
  EXPECT_EQ(config->drivers[0].data_dir, "/var/lib/r");
  const auto bad = agent::parse_config(
      "[agent]\ndevice_id = \"d\"\nkey_file = \"/k\"\ndata_dir = \"/d\"\n[members]\nprovider = "
      "\"\"\n",
      "agent.toml");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find("agent.toml:6: members.provider: expected a ValueFlows"),
            std::string::npos)
      << bad.error().message;
}

}  // namespace
