// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <reflow/core/config_key.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/result.hpp>

namespace ingest {

/// Default config location of every `reflow-ingest` command (the Debian package's conffile).
inline constexpr std::string_view k_default_config_path = "/etc/reflow-ingest/reflow-ingest.toml";

/// Where the node keeps its store ([store] kind).
enum class StoreKind {
  sqlite,      ///< DATA_DIR/ingest.db (open_sqlite_store)
  postgresql,  ///< the database at [store] url (open_postgres_store)
};

/// `reflow-ingest`'s configuration, every key with its default. `config/reflow-ingest.example.toml`
/// documents each one; `config_reference()` prints the same table (`run --help`).
struct IngestConfig {
  // [ingest]
  std::filesystem::path data_dir = "/var/lib/reflow-ingest";  ///< ingest.db (store + registry), ca/
  agent::LogLevel log_level = agent::LogLevel::info;
  std::uint32_t max_batch = 512;                ///< envelopes stored in one transaction, at most
  std::chrono::milliseconds ack_interval{100};  ///< per device, at most one ack per interval
                                                ///< (PROTOCOL §5: "about ten a second")
  std::filesystem::path node_key_file;  ///< default: DATA_DIR/node.key (the node's Ed25519 key)
  std::string log_origin;               ///< default: effective_log_origin()

  // [store]
  StoreKind store_kind = StoreKind::sqlite;
  std::string store_url;                      ///< kind postgresql: libpq URI "postgresql://…"
  std::filesystem::path store_password_file;  ///< kind postgresql: first line is the password

  // [mqtt]
  std::string url = "mqtt://127.0.0.1:1883";
  std::string topic_prefix = "reflow/v1";
  std::string client_id = "reflow-ingest";  ///< with share_group: must differ per instance
  std::string share_group;  ///< non-empty: subscribe `$share/GROUP/PREFIX/+/events` (MQTT 5)
  std::string username;
  std::filesystem::path password_file;  ///< first line is the password
  std::filesystem::path ca_file;        ///< mqtts: CA bundle
  std::filesystem::path cert_file;      ///< mqtts: client certificate (mTLS)
  std::filesystem::path tls_key_file;   ///< mqtts: its key (TOML key `key_file`)
  std::chrono::milliseconds keepalive{std::chrono::seconds(30)};
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  std::chrono::milliseconds reconnect_min{std::chrono::seconds(1)};
  std::chrono::milliseconds reconnect_max{std::chrono::seconds(60)};
  std::chrono::milliseconds session_expiry{std::chrono::hours(1)};  ///< MQTT 5 session kept by
                                                                    ///< the broker while down

  // [ca]
  std::filesystem::path ca_dir;          ///< default: DATA_DIR/ca (ca.key, ca.crt, issued.jsonl)
  std::uint32_t device_cert_days = 825;  ///< validity of certificates `ca sign` issues

  // [export] (zenflows, reflow-ingest export --format vf-graphql)
  std::string zenflows_url;   ///< e.g. "https://zenflows.example.org/api"; empty: print only
  std::string zenflows_user;  ///< `zenflows-user` header (Person.user)
  std::string export_proxy;   ///< [export] proxy: http://HOST:PORT for the zenflows requests
  std::filesystem::path zenflows_key_file;   ///< Ed25519 seed, the format `reflow-agent keygen`
                                             ///< writes
  std::string default_agent;                 ///< provider/receiver id when an event names none
  std::map<std::string, std::string> units;  ///< [export.units]: OM2 name → server Unit id
  std::map<std::string, std::string> ids;    ///< [export.ids]: local reference → server id

  // [maintenance] (reflow-ingest report maintenance)
  std::chrono::milliseconds maintenance_interval{0};  ///< hours of use between services of any
                                                      ///< machine; 0: none
  std::map<std::string, std::chrono::milliseconds> maintenance_intervals;  ///< per machine

  // [http] (reflow-ingest serve: the web page)
  std::string http_listen = "127.0.0.1:8080";  ///< ADDR:PORT (web::parse_listen_address)

  std::string source_file;  ///< where this config came from ("" = built-in defaults)

  std::filesystem::path store_path() const { return data_dir / "ingest.db"; }
  std::filesystem::path effective_node_key_file() const {
    return node_key_file.empty() ? data_dir / "node.key" : node_key_file;
  }
  /// log_origin, or "HOST NAME/reflow-ingest" (gethostname) when it is not set: the origin line
  /// of the log's checkpoints (c2sp.org/tlog-checkpoint) and the key name of their signature.
  std::string effective_log_origin() const;
  std::filesystem::path effective_ca_dir() const {
    return ca_dir.empty() ? data_dir / "ca" : ca_dir;
  }
};

/// Reads and validates the config. Errors name file, line and key (`FILE:LINE: KEY: expected …;
/// got …`); unknown keys and tables are errors; relative paths resolve against the file's
/// directory. Errors: invalid_config.
agent::Result<IngestConfig> load_ingest_config(const std::filesystem::path& path);

/// Same, from text (tests). `file_name` is used in messages.
agent::Result<IngestConfig> parse_ingest_config(std::string_view text, std::string_view file_name);

/// Every key, in documentation order (for `--help` and the docs test).
const std::vector<agent::ConfigKeyInfo>& ingest_config_reference();

}  // namespace ingest
