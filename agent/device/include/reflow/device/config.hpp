// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <reflow/core/config_key.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/result.hpp>

namespace toml {
inline namespace v3 {
class table;
}
}  // namespace toml

namespace agent {

/// How hard the outbox pushes each group commit to stable storage.
enum class Durability {
  full,    ///< fsync at every group commit (SQLite `synchronous=FULL`): survives power loss
  normal,  ///< SQLite `synchronous=NORMAL` in WAL mode: survives a crash of the agent, but the
           ///< last commits before a power cut may be lost although they were answered
};

/// One `[[driver]]` table: its kind, its unique instance name, and the raw table for the kind's
/// own keys (validated by the kind's factory, which gets `file` and the table's source lines).
struct DriverConfig {
  std::string kind;
  std::string name;
  std::shared_ptr<const toml::table> table;  ///< the whole `[[driver]]` table, never null
  std::string file;                          ///< config file path, for error messages
  /// [agent] device_id, for drivers whose references must differ between devices (a station's
  /// processes "station:<device>:<name>:<process>-<n>").
  std::string device_id;
  // From the agent's config, for drivers that read badges (drivers/common members.hpp):
  std::filesystem::path data_dir;      ///< [agent] data_dir: where the site secret lives
  std::filesystem::path members_file;  ///< [members] file; empty: none
  std::string members_provider;        ///< [members] provider; empty: none
};

/// The agent's configuration, every key with its default. `config/reflow-agent.example.toml`
/// documents each one; `config_reference()` prints the same table.
struct AgentConfig {
  // [agent]
  std::string device_id;           ///< PROTOCOL §1 device id; required
  std::filesystem::path key_file;  ///< Ed25519 key (from `keygen`); required
  std::filesystem::path data_dir;  ///< outbox.db, control.sock, driver state; required
  LogLevel log_level = LogLevel::info;

  // [mqtt]
  std::string url = "mqtt://127.0.0.1:1883";  ///< mqtt://host:port or mqtts://host:port
  std::string proxy;  ///< http://host:port, an HTTP CONNECT proxy for MQTT only; default: none
  std::string topic_prefix = "reflow/v1";
  std::string client_id;                ///< default: "reflow-agent-" + device_id
  std::string username;                 ///< default: none
  std::filesystem::path password_file;  ///< first line is the password; default: none
  std::filesystem::path ca_file;        ///< mqtts: CA bundle; default: system store
  std::filesystem::path cert_file;      ///< mqtts: client certificate for mTLS
  std::filesystem::path tls_key_file;   ///< mqtts: client key for mTLS (TOML key `key_file`)
  std::chrono::milliseconds keepalive{std::chrono::seconds(30)};
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  std::chrono::milliseconds resend_after{std::chrono::seconds(30)};  ///< PROTOCOL §5
  std::chrono::milliseconds reconnect_min{std::chrono::seconds(1)};
  std::chrono::milliseconds reconnect_max{std::chrono::seconds(60)};
  std::chrono::milliseconds status_interval{std::chrono::seconds(60)};  ///< PROTOCOL §6: ≤ 60 s
  std::uint32_t max_inflight = 64;  ///< QoS 1 publishes awaiting PUBACK at once
  /// The node's public JWK (PROTOCOL §5.1); set: prune only on acks it signed. Default: none.
  std::filesystem::path node_jwk;

  // [outbox]
  std::uint64_t quota_bytes = 256ull * 1024 * 1024;  ///< bytes of unacked envelopes kept at most
  std::uint64_t min_free_bytes =
      64ull * 1024 * 1024;                           ///< free space below which events are refused
  std::uint64_t reserve_bytes = 8ull * 1024 * 1024;  ///< the reserve file given up for acks
  Durability durability = Durability::full;
  std::uint32_t queue_capacity = 1024;  ///< submissions waiting for the writer, at most
  std::uint32_t max_batch = 256;        ///< events in one group commit, at most

  // [members]
  std::filesystem::path members_file;  ///< the members file; default: none
  std::string members_provider;        ///< the makerspace's agent reference; default: none

  std::vector<DriverConfig> drivers;  ///< `[[driver]]` tables in file order

  /// Where this config came from (for messages).
  std::string source_file;

  std::filesystem::path outbox_path() const { return data_dir / "outbox.db"; }
  std::filesystem::path control_socket_path() const { return data_dir / "control.sock"; }
  std::filesystem::path driver_state_dir() const { return data_dir / "drivers"; }
};

/// Reads and validates a config file. Every error names the file, the line, the key and what was
/// expected: `agent.toml:7: mqtt.keepalive: expected a duration such as "30s"; got 30`.
/// Unknown keys and tables are errors. Relative paths are resolved against the config file's
/// directory. Errors: invalid_config (also for a missing or unreadable file).
Result<AgentConfig> load_config(const std::filesystem::path& path);

/// Same as load_config, from text (for tests). `file_name` is used in messages.
Result<AgentConfig> parse_config(std::string_view text, std::string_view file_name);

/// All keys the agent knows, in documentation order.
const std::vector<ConfigKeyInfo>& config_reference();

}  // namespace agent
