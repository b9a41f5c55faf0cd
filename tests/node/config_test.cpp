// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/config.hpp>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "files.hpp"
#include "temp_dir.hpp"

namespace ingest {
namespace {

using namespace std::chrono_literals;

const std::filesystem::path k_example =
    std::filesystem::path(REFLOW_SOURCE_DIR) / "config" / "reflow-ingest.example.toml";

using reflow_test::read_text;

class IngestConfigTest : public ::testing::Test {
 protected:
  // Parses and expects failure; returns the message.
  static std::string error_of(std::string_view text) {
    const auto config = parse_ingest_config(text, "ingest.toml");
    EXPECT_FALSE(config.has_value()) << text;
    if (config.has_value()) return {};
    EXPECT_EQ(config.error().code, agent::ErrorCode::invalid_config);
    return config.error().message;
  }

  reflow_test::TempDir m_dir;
};

TEST_F(IngestConfigTest, EmptyFileMeansEveryDefault) {
  const auto config = parse_ingest_config("", "ingest.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->data_dir, "/var/lib/reflow-ingest");
  EXPECT_EQ(config->log_level, agent::LogLevel::info);
  EXPECT_EQ(config->max_batch, 512u);
  EXPECT_EQ(config->ack_interval, 100ms);
  EXPECT_EQ(config->url, "mqtt://127.0.0.1:1883");
  EXPECT_EQ(config->topic_prefix, "reflow/v1");
  EXPECT_EQ(config->client_id, "reflow-ingest");
  EXPECT_TRUE(config->share_group.empty());
  EXPECT_TRUE(config->username.empty());
  EXPECT_TRUE(config->password_file.empty());
  EXPECT_TRUE(config->ca_file.empty());
  EXPECT_TRUE(config->cert_file.empty());
  EXPECT_TRUE(config->tls_key_file.empty());
  EXPECT_EQ(config->keepalive, 30s);
  EXPECT_EQ(config->connect_timeout, 10s);
  EXPECT_EQ(config->reconnect_min, 1s);
  EXPECT_EQ(config->reconnect_max, 60s);
  EXPECT_EQ(config->session_expiry, 1h);
  EXPECT_TRUE(config->ca_dir.empty());
  EXPECT_EQ(config->device_cert_days, 825u);
  EXPECT_TRUE(config->zenflows_url.empty());
  EXPECT_TRUE(config->units.empty());
  EXPECT_TRUE(config->ids.empty());
  EXPECT_EQ(config->source_file, "ingest.toml");
  EXPECT_EQ(config->store_path(), "/var/lib/reflow-ingest/ingest.db");
  EXPECT_EQ(config->effective_ca_dir(), "/var/lib/reflow-ingest/ca");
}

TEST_F(IngestConfigTest, ReadsEveryKey) {
  const auto config = parse_ingest_config(R"([ingest]
data_dir = "/srv/ingest"
log_level = "debug"
max_batch = 64
ack_interval = "250ms"
[mqtt]
url = "mqtts://node.example.org:8883"
topic_prefix = "coop/reflow/v1"
client_id = "ingest-2"
share_group = "ingest"
username = "ingest@node"
password_file = "/etc/reflow-ingest/password"
ca_file = "/etc/reflow-ingest/ca.pem"
cert_file = "/etc/reflow-ingest/ingest.crt"
key_file = "/etc/reflow-ingest/ingest.key"
keepalive = "45s"
connect_timeout = "5s"
reconnect_min = "500ms"
reconnect_max = "5m"
session_expiry = "2d"
[ca]
dir = "/srv/ca"
device_cert_days = 365
[export]
zenflows_url = "https://zenflows.example.org/api"
proxy = "http://127.0.0.1:9080"
zenflows_user = "fablab"
zenflows_key_file = "/etc/reflow-ingest/zenflows.key"
default_agent = "01JEAGENT00000000000000001"
[export.units]
gram = "01JEVN1TGRAM00000000000001"
kilowattHour = "01JEVN1TKWH000000000000001"
[export.ids]
"spool:pla-01" = "01JERES0VRCE00000000000001"
)",
                                          "/etc/reflow-ingest/ingest.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->data_dir, "/srv/ingest");
  EXPECT_EQ(config->log_level, agent::LogLevel::debug);
  EXPECT_EQ(config->max_batch, 64u);
  EXPECT_EQ(config->ack_interval, 250ms);
  EXPECT_EQ(config->url, "mqtts://node.example.org:8883");
  EXPECT_EQ(config->topic_prefix, "coop/reflow/v1");
  EXPECT_EQ(config->client_id, "ingest-2");
  EXPECT_EQ(config->share_group, "ingest");
  EXPECT_EQ(config->username, "ingest@node");
  EXPECT_EQ(config->password_file, "/etc/reflow-ingest/password");
  EXPECT_EQ(config->ca_file, "/etc/reflow-ingest/ca.pem");
  EXPECT_EQ(config->cert_file, "/etc/reflow-ingest/ingest.crt");
  EXPECT_EQ(config->tls_key_file, "/etc/reflow-ingest/ingest.key");
  EXPECT_EQ(config->keepalive, 45s);
  EXPECT_EQ(config->connect_timeout, 5s);
  EXPECT_EQ(config->reconnect_min, 500ms);
  EXPECT_EQ(config->reconnect_max, 5min);
  EXPECT_EQ(config->session_expiry, 48h);
  EXPECT_EQ(config->effective_ca_dir(), "/srv/ca");
  EXPECT_EQ(config->device_cert_days, 365u);
  EXPECT_EQ(config->zenflows_url, "https://zenflows.example.org/api");
  EXPECT_EQ(config->export_proxy, "http://127.0.0.1:9080");
  EXPECT_EQ(config->zenflows_user, "fablab");
  EXPECT_EQ(config->zenflows_key_file, "/etc/reflow-ingest/zenflows.key");
  EXPECT_EQ(config->default_agent, "01JEAGENT00000000000000001");
  EXPECT_EQ(config->units,
            (std::map<std::string, std::string>{{"gram", "01JEVN1TGRAM00000000000001"},
                                                {"kilowattHour", "01JEVN1TKWH000000000000001"}}));
  EXPECT_EQ(config->ids,
            (std::map<std::string, std::string>{{"spool:pla-01", "01JERES0VRCE00000000000001"}}));
}

TEST_F(IngestConfigTest, EveryErrorNamesFileLineAndKey) {
  struct Case {
    std::string text;
    std::uint32_t line;
    std::string key;
    std::string expected;  // the message after "FILE:LINE: KEY: "
  };
  const std::vector<Case> cases = {
      {"[ingest]\ncolour = 1\n", 2, "ingest.colour",
       "unknown key (known keys in [ingest]: data_dir, log_level, max_batch, ack_interval, "
       "node_key_file, log_origin)"},
      {"[ingset]\n", 1, "ingset", "unknown table"},
      {"verbose = true\n", 1, "verbose", "unknown key"},
      {"mqtt = \"x\"\n", 1, "mqtt", "expected a table [mqtt]; got \"x\""},
      {"[ingest]\ndata_dir = 7\n", 2, "ingest.data_dir", "expected a file path"},
      {"[ingest]\nlog_level = \"loud\"\n", 2, "ingest.log_level",
       "expected one of \"debug\", \"info\", \"warning\", \"error\"; got \"loud\""},
      {"[ingest]\nmax_batch = 0\n", 2, "ingest.max_batch",
       "expected an integer from 1 to 100000; got 0"},
      {"[ingest]\n\nack_interval = 100\n", 3, "ingest.ack_interval",
       "expected a duration such as \"30s\" (units ms, s, m, h, d); got 100"},
      {"[ingest]\nack_interval = \"2m\"\n", 2, "ingest.ack_interval",
       "expected a duration from \"0ms\" to \"1m\"; got \"2m\""},
      {"[mqtt]\nshare_group = \"a/b\"\n", 2, "mqtt.share_group",
       "expected a group name without '/', '+' or '#' (MQTT 5 §4.8.2); got \"a/b\""},
      {"[mqtt]\nsession_expiry = \"0s\"\n", 2, "mqtt.session_expiry",
       "expected a duration from \"1s\" to \"49710d\" in whole seconds (MQTT 5 session expiry "
       "is 32-bit seconds); got \"0s\""},
      // The shared [mqtt] keys' checks are tested in tests/core/config_table_test.cpp; this row
      // shows reflow-ingest's config runs them.
      {"[mqtt]\nca_file = \"/ca.pem\"\n", 2, "mqtt.ca_file", "expected only with an mqtts:// url"},
      {"[ca]\ndevice_cert_days = -1\n", 2, "ca.device_cert_days",
       "expected an integer from 1 to 36500; got -1"},
      {"[ca]\ndir = \"\"\n", 2, "ca.dir", "expected a file path"},
      {"[export]\nzenflows_url = \"ftp://x\"\n", 2, "export.zenflows_url",
       "expected an http:// or https:// URL"},
      // Found by tests/fuzz (node_config): an empty URL threw std::out_of_range.
      {"[export]\nzenflows_url = \"\"\n", 2, "export.zenflows_url",
       "expected an http:// or https:// URL"},
      {"[export]\nproxy = \"socks5h://127.0.0.1:9050\"\n", 2, "export.proxy",
       "expected http://HOST:PORT, an HTTP proxy such as \"http://127.0.0.1:9080\"; got "
       "\"socks5h://127.0.0.1:9050\""},
      {"[export]\nzenflows_user = \"u\"\n", 2, "export.zenflows_user",
       "expected export.zenflows_key_file to be set too"},
      {"[export]\nunits = \"gram\"\n", 2, "export.units",
       "expected a table [export.units]; got \"gram\""},
      {"[export.units]\ngram = 3\n", 2, "export.units.gram",
       "expected the server's Unit id, a zenflows id: a ULID of 26 characters"},
      {"[export.units]\ngram = \"01UNITGRAM0000000000000000\"\n", 2, "export.units.gram",
       "expected the server's Unit id, a zenflows id: a ULID"},
      {"[export.ids]\n\"spool:1\" = \"01JERES0VRCE0000000000001\"\n", 2, "export.ids.spool:1",
       "expected the server's id, a zenflows id: a ULID"},
      {"[export]\ndefault_agent = \"fablab\"\n", 2, "export.default_agent",
       "expected the server's Agent id, a zenflows id: a ULID"},
      {"[export.units]\ngram = \"01JEVN1TGRAM00000000000001\"\ngrams = "
       "\"01JEVN1TGRAM00000000000001\"\n",
       3, "export.units.grams", "unknown OM2 unit (expected one of PROTOCOL §4: one, hour"},
      {"[export.ids]\n\"spool:1\" = \"\"\n", 2, "export.ids.spool:1",
       "expected the server's id, a zenflows id: a ULID"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    const auto message = error_of(c.text);
    EXPECT_EQ(message.rfind(fmt::format("ingest.toml:{}: {}: {}", c.line, c.key, c.expected), 0),
              0u)
        << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST_F(IngestConfigTest, NodeKeyAndLogOriginHaveDefaultsAndAreChecked) {
  auto defaults = parse_ingest_config("[ingest]\ndata_dir = \"/srv/node\"\n", "ingest.toml");
  ASSERT_TRUE(defaults.has_value()) << defaults.error().message;
  EXPECT_EQ(defaults->effective_node_key_file(), "/srv/node/node.key");
  EXPECT_TRUE(defaults->effective_log_origin().ends_with("/reflow-ingest"));

  auto set = parse_ingest_config(
      "[ingest]\nnode_key_file = \"/etc/keys/node.key\"\nlog_origin = \"fablab.example/log\"\n",
      "ingest.toml");
  ASSERT_TRUE(set.has_value()) << set.error().message;
  EXPECT_EQ(set->effective_node_key_file(), "/etc/keys/node.key");
  EXPECT_EQ(set->effective_log_origin(), "fablab.example/log");

  // c2sp.org/signed-note: a key name holds no space and no '+'.
  for (const char* origin : {"fab lab", "fab+lab"}) {
    auto bad =
        parse_ingest_config(fmt::format("[ingest]\nlog_origin = \"{}\"\n", origin), "ingest.toml");
    ASSERT_FALSE(bad.has_value()) << origin;
    EXPECT_NE(bad.error().message.find("ingest.toml:2: ingest.log_origin"), std::string::npos)
        << bad.error().message;
  }
}

TEST_F(IngestConfigTest, UnitsMapTakesEveryOm2UnitAndRefusesOthers) {
  const auto message = error_of(
      "[export.units]\nhour = \"01JEVN1TH0VR00000000000001\"\nKilogram = "
      "\"01JEVN1TKG0000000000000001\"\n");
  EXPECT_EQ(message.rfind("ingest.toml:3: export.units.Kilogram: unknown OM2 unit", 0), 0u)
      << message;
  for (const char* unit : {"one", "hour", "minute-Time", "second-Time", "gram", "kilogram",
                           "millimetre", "metre", "litre", "kilowattHour"}) {
    SCOPED_TRACE(unit);
    const auto config = parse_ingest_config(
        fmt::format("[export.units]\n{} = \"01JEVN1T000000000000000001\"\n", unit), "ingest.toml");
    ASSERT_TRUE(config.has_value()) << config.error().message;
    EXPECT_EQ(config->units.at(unit), "01JEVN1T000000000000000001");
  }
}

TEST_F(IngestConfigTest, MaintenanceIntervalsAreDurationsPerMachine) {
  const auto config = parse_ingest_config(
      "[maintenance]\ninterval = \"200h\"\n[maintenance.intervals]\n\"printer:mk4\" = \"300h\"\n",
      "ingest.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->maintenance_interval, std::chrono::hours(200));
  EXPECT_EQ(config->maintenance_intervals.at("printer:mk4"), std::chrono::hours(300));
  const auto message = error_of("[maintenance.intervals]\n\"laser:trotec\" = \"30m\"\n");
  EXPECT_EQ(message.rfind("ingest.toml:2: maintenance.intervals.\"laser:trotec\": expected the "
                          "hours of use between services",
                          0),
            0u)
      << message;
  EXPECT_NE(message.find("got \"30m\""), std::string::npos) << message;
  EXPECT_NE(error_of("[maintenance]\ninterval = 200\n").find("ingest.toml:2: maintenance.interval"),
            std::string::npos);
}

TEST_F(IngestConfigTest, ReportsAllProblemsInFileOrder) {
  EXPECT_EQ(error_of("[mqtt]\nkeepalive = 30\n[ingest]\nmax_batch = 0\n"),
            "ingest.toml:2: mqtt.keepalive: expected a duration such as \"30s\" (units ms, s, m, "
            "h, d); got 30\n"
            "ingest.toml:4: ingest.max_batch: expected an integer from 1 to 100000; got 0");
}

TEST_F(IngestConfigTest, ReportsTomlSyntaxErrorWithItsLine) {
  const auto message = error_of("[ingest]\ndata_dir = /var\n");
  EXPECT_EQ(message.rfind("ingest.toml:2: TOML syntax error", 0), 0u) << message;
}

TEST_F(IngestConfigTest, ResolvesRelativePathsAgainstTheConfigDirectory) {
  const auto file = m_dir / "etc" / "ingest.toml";
  std::filesystem::create_directories(file.parent_path());
  std::ofstream(file) << "[ingest]\ndata_dir = \"../var/ingest\"\n[ca]\ndir = \"ca\"\n";
  const auto config = load_ingest_config(file);
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->data_dir, m_dir / "var" / "ingest");
  EXPECT_EQ(config->effective_ca_dir(), m_dir / "etc" / "ca");
  EXPECT_EQ(config->source_file, file.string());
}

TEST_F(IngestConfigTest, ReportsMissingFileAndNamesTheFileInMessages) {
  const auto missing = load_ingest_config(m_dir / "none.toml");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, agent::ErrorCode::invalid_config);
  EXPECT_EQ(missing.error().message, fmt::format("cannot read {}: No such file or directory",
                                                 (m_dir / "none.toml").string()));

  const auto file = m_dir / "ingest.toml";
  std::ofstream(file) << "[ingest]\nmax_batch = \"many\"\n";
  const auto bad = load_ingest_config(file);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().message.rfind(fmt::format("{}:2: ingest.max_batch: ", file.string()), 0),
            0u)
      << bad.error().message;
}

TEST_F(IngestConfigTest, ExampleFileLoadsAsIsWithTheDefaults) {
  const auto config = load_ingest_config(k_example);
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->data_dir, "/var/lib/reflow-ingest");
  EXPECT_EQ(config->url, "mqtt://127.0.0.1:1883");
  EXPECT_EQ(config->topic_prefix, "reflow/v1");
  const IngestConfig defaults;
  EXPECT_EQ(config->log_level, defaults.log_level);
  EXPECT_EQ(config->max_batch, defaults.max_batch);
  EXPECT_EQ(config->ack_interval, defaults.ack_interval);
  EXPECT_EQ(config->client_id, defaults.client_id);
  EXPECT_EQ(config->share_group, defaults.share_group);
  EXPECT_EQ(config->keepalive, defaults.keepalive);
  EXPECT_EQ(config->connect_timeout, defaults.connect_timeout);
  EXPECT_EQ(config->reconnect_min, defaults.reconnect_min);
  EXPECT_EQ(config->reconnect_max, defaults.reconnect_max);
  EXPECT_EQ(config->session_expiry, defaults.session_expiry);
  EXPECT_EQ(config->device_cert_days, defaults.device_cert_days);
  EXPECT_EQ(config->effective_ca_dir(), defaults.effective_ca_dir());
}

TEST_F(IngestConfigTest, HttpListenIsAnAddressAndPort) {
  const auto defaults = parse_ingest_config("", "ingest.toml");
  ASSERT_TRUE(defaults.has_value());
  EXPECT_EQ(defaults->http_listen, "127.0.0.1:8080");
  const auto v6 = parse_ingest_config("[http]\nlisten = \"[::1]:9090\"\n", "ingest.toml");
  ASSERT_TRUE(v6.has_value()) << v6.error().message;
  EXPECT_EQ(v6->http_listen, "[::1]:9090");
  for (const char* bad : {"localhost:8080", "127.0.0.1", "127.0.0.1:70000"}) {
    const std::string message = error_of(fmt::format("[http]\n\nlisten = \"{}\"\n", bad));
    EXPECT_NE(message.find("ingest.toml:3"), std::string::npos) << message;
    EXPECT_NE(message.find("http.listen"), std::string::npos) << message;
    EXPECT_NE(message.find("ADDR:PORT"), std::string::npos) << message;
  }
}

TEST_F(IngestConfigTest, StoreKindPicksSqliteOrPostgresqlWithItsUrl) {
  const auto defaults = parse_ingest_config("", "ingest.toml");
  ASSERT_TRUE(defaults.has_value()) << defaults.error().message;
  EXPECT_EQ(defaults->store_kind, StoreKind::sqlite);

  const auto config = parse_ingest_config(
      "[store]\nkind = \"postgresql\"\nurl = \"postgresql://reflow@db.example/reflow\"\n"
      "password_file = \"db-password\"\n",
      "/etc/reflow-ingest/ingest.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->store_kind, StoreKind::postgresql);
  EXPECT_EQ(config->store_url, "postgresql://reflow@db.example/reflow");
  EXPECT_EQ(config->store_password_file, "/etc/reflow-ingest/db-password");
}

TEST_F(IngestConfigTest, BadStoreKeysNameFileLineAndKey) {
  EXPECT_EQ(error_of("[store]\nkind = \"mysql\"\n"),
            "ingest.toml:2: store.kind: expected \"sqlite\" or \"postgresql\"; got \"mysql\"");
  EXPECT_EQ(error_of("[store]\nkind = \"postgresql\"\n"),
            "ingest.toml:2: store.kind: expected store.url to be set too (the database to use, "
            "\"postgresql://…\"); got \"postgresql\"");
  EXPECT_EQ(error_of("[store]\nurl = \"postgresql://db/reflow\"\n"),
            "ingest.toml:2: store.url: expected store.kind = \"postgresql\" too: it is used only "
            "by the PostgreSQL store");
  // A URI may hold a password: the error does not show it.
  const std::string bad =
      error_of("[store]\nkind = \"postgresql\"\nurl = \"mysql://u:s3cret@db/reflow\"\n");
  EXPECT_NE(bad.find("ingest.toml:3: store.url: expected a libpq URI"), std::string::npos) << bad;
  EXPECT_EQ(bad.find("s3cret"), std::string::npos) << bad;
}

TEST_F(IngestConfigTest, ExampleFileDocumentsEveryKey) {
  const auto keys = reflow_test::keys_in_example(k_example);
  ASSERT_FALSE(keys.empty());
  for (const auto& info : ingest_config_reference()) {
    EXPECT_TRUE(keys.contains(info.key)) << info.key << " is missing from " << k_example;
  }
}

TEST_F(IngestConfigTest, ExampleExportTablesLoadOnceUncommented) {
  // From the [export.units] example on, the commented tables and their entries.
  const std::regex entry(R"(^# (\[export\.[a-z]+\]|("[^"]*"|[a-z]+) = ".*")$)");
  std::istringstream lines(read_text(k_example));
  std::string text;
  bool in_tables = false;
  for (std::string line; std::getline(lines, line);) {
    if (line == "# [export.units]") in_tables = true;
    if (in_tables && std::regex_match(line, entry)) line = line.substr(2);
    text += line + '\n';
  }
  ASSERT_TRUE(in_tables);
  const auto config = parse_ingest_config(text, "example.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->units.at("gram"), "01FVHYT9B8T38MQT1WSDY42XJC");
  EXPECT_EQ(config->ids.at("spool:pla-01"), "01FVHYTB1A4GM9Y2S6Q8DX3PZR");
}

TEST_F(IngestConfigTest, ReferenceListsEachKeyOnceAndItsDefaultsLoad) {
  std::set<std::string> seen;
  for (const auto& info : ingest_config_reference()) {
    SCOPED_TRACE(info.key);
    EXPECT_TRUE(seen.insert(info.key).second);
    EXPECT_FALSE(info.type.empty());
    EXPECT_FALSE(info.default_text.empty());
    EXPECT_FALSE(info.description.empty());
    if (info.default_text.starts_with('(')) continue;
    // Writing a key's documented default must load and mean the same as leaving it out.
    const auto dot = info.key.find('.');
    const auto config =
        parse_ingest_config(fmt::format("[{}]\n{} = {}\n", info.key.substr(0, dot),
                                        info.key.substr(dot + 1), info.default_text),
                            "ingest.toml");
    EXPECT_TRUE(config.has_value()) << config.error().message;
  }
  EXPECT_TRUE(seen.contains("mqtt.session_expiry"));
  EXPECT_TRUE(seen.contains("export.units"));
  EXPECT_TRUE(seen.contains("export.ids"));
}

}  // namespace
}  // namespace ingest
