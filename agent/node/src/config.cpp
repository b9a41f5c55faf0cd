// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/config.hpp>

#include <unistd.h>

#include <array>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <toml++/toml.h>

#include <reflow/core/event.hpp>
#include <reflow/core/signed_note.hpp>
#include <reflow/core/text.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/core/units.hpp>

#include <reflow/core/config_table.hpp>
#include <reflow/node/web.hpp>

namespace ingest {
namespace {

using namespace std::chrono_literals;
using namespace agent::config_keys;

using IngestSchema = Schema<IngestConfig>;
using Apply = agent::config_keys::Apply<IngestConfig>;

// MQTT 5 §4.8.2: a ShareName is at least one character and holds no '/', '+' or '#'.
bool is_valid_share_group(std::string_view name) {
  return is_non_empty_text(name) && name.find_first_of("/+#") == name.npos;
}

bool is_postgres_url(std::string_view url) {
  return (url.starts_with("postgresql://") || url.starts_with("postgres://")) && !has_nul(url) &&
         url.find_first_of(" \t\r\n") == url.npos;
}

bool is_http_url(std::string_view url) {
  // The host is looked for only after the scheme matched: without "//" there is none ("" threw).
  if (!url.starts_with("http://") && !url.starts_with("https://")) return false;
  const auto host = url.substr(url.find("//") + 2);
  return !host.empty() && host.find_first_of(" \t\r\n") == host.npos && !has_nul(url);
}

// zenflows accepts no other ID than a ULID: 26 characters of Crockford's base32, upper case
// (Zenflows.DB.ID; docs/reference/valueflows.md §2d). A typo found here is not found by the server
// half-way through a post.
constexpr std::string_view k_expected_server_id =
    "a zenflows id: a ULID of 26 characters 0-9 A-Z without I L O U, e.g. "
    "\"01FVHYT9B8T38MQT1WSDY42XJC\"";

bool is_server_id(std::string_view text) {
  return agent::is_valid_ulid(text);
}

// [export.units]: OM2 unit name (PROTOCOL §4) → the server's Unit id.
void apply_units(const toml::table& table, std::string_view dotted, const ParseContext&,
                 IngestConfig& config, Problems& problems) {
  for (auto&& [key, node] : table) {
    const std::string name(key.str());
    const std::string where = fmt::format("{}.{}", dotted, name);
    if (!agent::is_known_unit(name)) {
      problems.add(key.source().begin.line, where,
                   "unknown OM2 unit (expected one of PROTOCOL §4: one, hour, minute-Time, "
                   "second-Time, gram, kilogram, millimetre, metre, litre, kilowattHour)");
      continue;
    }
    const auto* id = node.as_string();
    if (id == nullptr || !is_server_id(id->get())) {
      problems.add(
          line_of(node), where,
          got(fmt::format("expected the server's Unit id, {}", k_expected_server_id), node));
      continue;
    }
    config.units[name] = id->get();
  }
}

// [export.ids]: a local reference ("spool:pla-01") → the server's id.
void apply_ids(const toml::table& table, std::string_view dotted, const ParseContext&,
               IngestConfig& config, Problems& problems) {
  for (auto&& [key, node] : table) {
    const std::string name(key.str());
    const std::string where = fmt::format("{}.{}", dotted, name);
    const auto* id = node.as_string();
    if (id == nullptr || !is_server_id(id->get())) {
      problems.add(line_of(node), where,
                   got(fmt::format("expected the server's id, {}", k_expected_server_id), node));
      continue;
    }
    config.ids[name] = id->get();
  }
}

// The longest maintenance interval: ten years of use without a stop.
constexpr std::chrono::milliseconds k_max_maintenance_interval = 3650 * 24h;

// [maintenance.intervals]: a machine (a use's resourceInventoriedAs) → hours of use between
// services.
void apply_intervals(const toml::table& table, std::string_view dotted, const ParseContext&,
                     IngestConfig& config, Problems& problems) {
  for (auto&& [key, node] : table) {
    const std::string name(key.str());
    const std::string where = fmt::format("{}.\"{}\"", dotted, agent::printable_text(name));
    const std::string expected = fmt::format(
        "expected the hours of use between services, a duration from \"1h\" to \"{}\" such "
        "as \"200h\"",
        duration_text(k_max_maintenance_interval));
    const auto interval = check_duration(node, 1h, k_max_maintenance_interval);
    if (!interval) {
      problems.add(line_of(node), where, got(expected, node));
      continue;
    }
    config.maintenance_intervals[name] = *interval;
  }
}

IngestSchema make_schema() {
  IngestSchema schema;
  schema.sections = {"ingest", "store", "mqtt", "ca", "export", "maintenance", "http"};
  schema.known_tables =
      "known tables: [ingest], [store], [mqtt], [ca], [export], [maintenance], [http]";
  auto add = [&](std::string section, std::string name, std::string type, std::string default_text,
                 std::string description, Apply apply) {
    schema.add(std::move(section), std::move(name), std::move(type), std::move(default_text),
               std::move(description), std::move(apply));
  };

  // [ingest]
  add("ingest", "data_dir", "path", "\"/var/lib/reflow-ingest\"",
      "Directory for ingest.db (events, rejections, device registry) and the CA (ca/); must "
      "survive reboots.",
      path_key(&IngestConfig::data_dir));
  add("ingest", "log_level", "enum(debug|info|warning|error)", "\"info\"",
      "Least severe log messages written to stderr (journald under systemd).",
      log_level_key(&IngestConfig::log_level));
  add("ingest", "max_batch", "integer", "512",
      "Most envelopes verified and stored in one transaction (one fsync).",
      count_key(&IngestConfig::max_batch, 1, 100'000));
  add("ingest", "ack_interval", "duration", "\"100ms\"",
      "Per device, at most one ack per interval; the last ack of a burst always follows.",
      duration_key(&IngestConfig::ack_interval, 0ms, 60s));
  add("ingest", "node_key_file", "path", "(data_dir/node.key)",
      "The node's Ed25519 key (`key init`): signs the acks and the log's checkpoints. Without "
      "the file, acks are unsigned and no checkpoint is published.",
      path_key(&IngestConfig::node_key_file));
  add("ingest", "log_origin", "string", "(HOST NAME/reflow-ingest)",
      "The log's origin (c2sp.org/tlog-checkpoint): first line of each checkpoint and the name "
      "of the node's key in its signature; a schema-less URL such as \"fablab.example/reflow\". "
      "Set it once: auditors pin it.",
      string_key(&IngestConfig::log_origin,
                 "expected a name without spaces or '+', such as \"fablab.example/reflow\" "
                 "(c2sp.org/signed-note)",
                 agent::note::is_valid_key_name));

  // [store]
  add("store", "kind", "enum(sqlite|postgresql)", "\"sqlite\"",
      "Where events, rejections, the device registry, the log and the export ledger are kept: "
      "\"sqlite\" in data_dir/ingest.db, or \"postgresql\" in the database at store.url (several "
      "instances on several hosts may share it).",
      [](const toml::node& node, const ParseContext&,
         IngestConfig& config) -> std::optional<std::string> {
        const auto* text = node.as_string();
        if (text != nullptr && text->get() == "sqlite") {
          config.store_kind = StoreKind::sqlite;
        } else if (text != nullptr && text->get() == "postgresql") {
          config.store_kind = StoreKind::postgresql;
        } else {
          return got("expected \"sqlite\" or \"postgresql\"", node);
        }
        return std::nullopt;
      });
  add("store", "url", "string", "(none)",
      "kind = \"postgresql\" only: libpq connection URI such as "
      "\"postgresql://reflow@db.example/reflow\" or \"postgresql:///reflow?host=/run/postgresql\"; "
      "TLS with ?sslmode=verify-full. Keep the password out of it: password_file, ~/.pgpass or "
      "PGPASSWORD.",
      [](const toml::node& node, const ParseContext&,
         IngestConfig& config) -> std::optional<std::string> {
        const auto* text = node.as_string();
        if (text == nullptr || !is_postgres_url(text->get()))
          // The value is not shown: a URI may hold a password.
          return "expected a libpq URI starting with postgresql:// or postgres://, such as "
                 "\"postgresql://reflow@db.example/reflow\", without spaces; got another value "
                 "(not shown: it may hold a password)";
        config.store_url = text->get();
        return std::nullopt;
      });
  add("store", "password_file", "path", "(none: libpq's ~/.pgpass or PGPASSWORD)",
      "kind = \"postgresql\" only: file whose first line is the database password. Must not be "
      "readable by others (chmod 600).",
      path_key(&IngestConfig::store_password_file));

  // [mqtt]
  add_mqtt_keys(schema,
                {.who = "the service",
                 .topics = "subscribes PREFIX/+/events, publishes PREFIX/DEVICE/ack.",
                 .client_id_default = "\"reflow-ingest\"",
                 .client_id = "MQTT client id; the broker keeps the session under it. Unique per "
                              "instance. Acks go out as CLIENT_ID-acks.",
                 .username = "MQTT user name of the ingest service.",
                 .password_file = "File whose first line is the MQTT password (kept out of this "
                                  "file); needs username. Must not be readable by others (chmod "
                                  "600). Read again at each connect, so a rotated password is used "
                                  "from the next reconnect on.",
                 .cert_file = "mqtts only: PEM client certificate for mutual TLS (`ca client`); "
                              "needs mqtt.key_file.",
                 .key_file = "mqtts only: PEM private key of cert_file."});
  add("mqtt", "share_group", "string", "(none)",
      "Shared subscription group (MQTT 5): instances with the same group split the events.",
      string_key(&IngestConfig::share_group,
                 "expected a group name without '/', '+' or '#' (MQTT 5 §4.8.2)",
                 is_valid_share_group));
  add("mqtt", "session_expiry", "duration", "\"1h\"",
      "How long the broker keeps the session and its QoS 1 messages while the service is down.",
      duration_key(&IngestConfig::session_expiry, 1s, 49'710 * 24h,
                   " (MQTT 5 session expiry is 32-bit seconds)", true));

  // [ca]
  add("ca", "dir", "path", "(data_dir/ca)",
      "The node CA's directory: ca.key, ca.crt and the record of issued certificates.",
      path_key(&IngestConfig::ca_dir));
  add("ca", "device_cert_days", "integer", "825",
      "Validity in days of the certificates `ca sign` issues.",
      count_key(&IngestConfig::device_cert_days, 1, 36'500));

  // [export]
  add("export", "zenflows_url", "string", "(none: print only)",
      "Zenflows GraphQL endpoint for `export --post`, e.g. \"https://zenflows.example.org/api\".",
      string_key(&IngestConfig::zenflows_url,
                 "expected an http:// or https:// URL such as \"https://zenflows.example.org/api\"",
                 is_http_url));
  add("export", "proxy", "string", "(none)",
      "HTTP proxy for `export --post` only, http://HOST:PORT, e.g. Tor's HTTPTunnelPort "
      "\"http://127.0.0.1:9080\"; an https:// zenflows_url goes through it with CONNECT.",
      string_key(&IngestConfig::export_proxy,
                 "expected http://HOST:PORT, an HTTP proxy such as \"http://127.0.0.1:9080\"",
                 [](std::string_view s) { return agent::parse_proxy_url(s).has_value(); }));
  add("export", "zenflows_user", "string", "(none)",
      "The `zenflows-user` header: the Person.user whose key signs the requests.",
      string_key(&IngestConfig::zenflows_user, "expected a non-empty user name",
                 is_non_empty_text));
  add("export", "zenflows_key_file", "path", "(none)",
      "Ed25519 seed that signs requests, in the format `reflow-agent keygen` writes.",
      path_key(&IngestConfig::zenflows_key_file));
  add("export", "default_agent", "string", "(none)",
      "The server's Agent id (a ULID) used as provider/receiver when an event names none.",
      string_key(&IngestConfig::default_agent,
                 fmt::format("expected the server's Agent id, {}", k_expected_server_id),
                 is_server_id));
  schema.add_table("export", "units", "table(OM2 unit = \"id\")", "(none)",
                   "[export.units]: the server's Unit id (a ULID) for each OM2 unit name events "
                   "use.",
                   apply_units);
  schema.add_table("export", "ids", "table(reference = \"id\")", "(none)",
                   "[export.ids]: the server's id (a ULID) for a local reference (resource, "
                   "agent, process).",
                   apply_ids);

  // [maintenance]
  add("maintenance", "interval", "duration", "(none)",
      "`report maintenance`: hours of use between services of every machine without its own "
      "interval, e.g. \"200h\".",
      duration_key(&IngestConfig::maintenance_interval, 1h, k_max_maintenance_interval));
  schema.add_table("maintenance", "intervals", "table(machine = duration)", "(none)",
                   "[maintenance.intervals]: hours of use between services per machine (a use "
                   "event's resourceInventoriedAs), e.g. \"printer:mk4\" = \"300h\".",
                   apply_intervals);

  // [http]
  add("http", "listen", "string", "\"127.0.0.1:8080\"",
      "`reflow-ingest serve`: the address of the web page and /metrics, ADDR:PORT ([::1]:8080 "
      "for IPv6); serve --listen overrides it.",
      string_key(&IngestConfig::http_listen,
                 "expected ADDR:PORT with an IP address and a port 0-65535, such as "
                 "\"127.0.0.1:8080\"",
                 [](std::string_view s) { return web::parse_listen_address(s).has_value(); }));
  return schema;
}

const IngestSchema& schema() {
  static const IngestSchema schema = make_schema();
  return schema;
}

// Checks between keys of [store], once each key is valid on its own.
void check_store(const std::map<std::string, const toml::node*>& seen, const IngestConfig& config,
                 Problems& problems) {
  const auto kind = seen.find("store.kind");
  if (config.store_kind == StoreKind::postgresql) {
    if (!seen.contains("store.url"))
      problems.add(line_of(*kind->second), "store.kind",
                   got("expected store.url to be set too (the database to use, "
                       "\"postgresql://…\")",
                       *kind->second));
    return;
  }
  for (const char* key : {"store.url", "store.password_file"}) {
    const auto it = seen.find(key);
    if (it != seen.end())
      problems.add(line_of(*it->second), key,
                   "expected store.kind = \"postgresql\" too: it is used only by the PostgreSQL "
                   "store");
  }
}

// Checks between keys of [export], once each key is valid on its own.
void check_export(const std::map<std::string, const toml::node*>& seen, Problems& problems) {
  const auto user = seen.find("export.zenflows_user");
  const auto key = seen.find("export.zenflows_key_file");
  if (user != seen.end() && key == seen.end()) {
    problems.add(line_of(*user->second), "export.zenflows_user",
                 got("expected export.zenflows_key_file to be set too (zenflows signs each "
                     "request with the user's key)",
                     *user->second));
  } else if (key != seen.end() && user == seen.end()) {
    problems.add(line_of(*key->second), "export.zenflows_key_file",
                 got("expected export.zenflows_user to be set too (zenflows signs each "
                     "request with the user's key)",
                     *key->second));
  }
}

agent::Result<IngestConfig> parse_document(std::string_view text, const std::string& file,
                                           const std::filesystem::path& base_dir) {
  auto root = parse_toml(text, file);
  if (!root) return std::unexpected(root.error());

  IngestConfig config;
  config.source_file = file;
  Problems problems(file);
  const auto seen = apply_schema(*root, schema(), ParseContext{base_dir}, config, problems);
  if (problems.empty()) {
    check_mqtt_combinations(seen, config.url, config.reconnect_min, config.reconnect_max, problems);
    check_export(seen, problems);
    check_store(seen, config, problems);
  }
  if (!problems.empty()) return std::unexpected(problems.error());
  return config;
}

}  // namespace

agent::Result<IngestConfig> load_ingest_config(const std::filesystem::path& path) {
  auto text = read_config_file(path);
  if (!text) return std::unexpected(text.error());
  return parse_document(*text, path.string(), directory_of(path));
}

agent::Result<IngestConfig> parse_ingest_config(std::string_view text, std::string_view file_name) {
  return parse_document(text, std::string(file_name), directory_of(file_name));
}

std::string IngestConfig::effective_log_origin() const {
  if (!log_origin.empty()) return log_origin;
  std::array<char, 256> host{};
  std::string name = ::gethostname(host.data(), host.size() - 1) == 0 ? host.data() : "";
  // A host name never holds a space or '+', but an empty one would make an invalid key name.
  if (!agent::note::is_valid_key_name(name)) name = "localhost";
  return name + "/reflow-ingest";
}

const std::vector<agent::ConfigKeyInfo>& ingest_config_reference() {
  static const std::vector<agent::ConfigKeyInfo> reference = schema().reference();
  return reference;
}

}  // namespace ingest
