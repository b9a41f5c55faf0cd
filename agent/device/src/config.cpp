// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/config.hpp>

#include <functional>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <toml++/toml.h>

#include <reflow/core/event.hpp>

#include <reflow/core/config_table.hpp>

namespace agent {
namespace {

using namespace std::chrono_literals;
using namespace config_keys;

using AgentSchema = Schema<AgentConfig>;
using Apply = config_keys::Apply<AgentConfig>;

bool is_valid_driver_name(std::string_view name) {
  if (name.empty() || name.size() > 32) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '_' && c != '-'))) return false;
  }
  return true;
}

AgentSchema make_schema() {
  AgentSchema schema;
  schema.sections = {"agent", "mqtt", "outbox", "members"};
  schema.other_top_level = {"driver"};
  schema.known_tables = "known tables: [agent], [mqtt], [outbox], [members], [[driver]]";
  auto add = [&](std::string section, std::string name, std::string type, std::string default_text,
                 std::string description, Apply apply, bool required = false) {
    schema.add(std::move(section), std::move(name), std::move(type), std::move(default_text),
               std::move(description), std::move(apply), required);
  };

  // [agent]
  add("agent", "device_id", "string", "(required)",
      "This device's id (PROTOCOL §1), e.g. \"fablab-mk4-01\"; the node knows the device by it.",
      string_key(&AgentConfig::device_id,
                 "expected a device id matching ^[a-z0-9][a-z0-9._-]{0,63}$ (PROTOCOL §1) such "
                 "as \"fablab-mk4-01\"",
                 [](std::string_view s) { return is_valid_device_id(s); }),
      true);
  add("agent", "key_file", "path", "(required)",
      "Ed25519 signing key made by `reflow-agent keygen`; readable by the agent only.",
      path_key(&AgentConfig::key_file), true);
  add("agent", "data_dir", "path", "(required)",
      "Directory for outbox.db, control.sock and driver state; must survive reboots.",
      path_key(&AgentConfig::data_dir), true);
  add("agent", "log_level", "enum(debug|info|warning|error)", "\"info\"",
      "Least severe log messages written to stderr (journald under systemd).",
      log_level_key(&AgentConfig::log_level));

  // [mqtt]
  add_mqtt_keys(
      schema,
      {.who = "the agent",
       .topics = "topics are PREFIX/DEVICE/events, /ack and /status.",
       .client_id_default = "\"reflow-agent-\" + device_id",
       .client_id = "MQTT client id; must be unique on the broker.",
       .username = "MQTT user name; the node's ACLs usually expect the device id.",
       .password_file = "File whose first line is the MQTT password (kept out of this file); needs "
                        "username. Must not be readable by others (chmod 600). Read again at each "
                        "connect and on SIGHUP (systemctl reload reflow-agent), which reconnects "
                        "when the password changed.",
       .cert_file = "mqtts only: PEM client certificate for mutual TLS; needs "
                    "mqtt.key_file.",
       .key_file = "mqtts only: PEM private key of cert_file (not the Ed25519 signing "
                   "key)."});
  add("mqtt", "proxy", "string", "(none)",
      "HTTP CONNECT proxy for the MQTT connection only, http://HOST:PORT, e.g. Tor's "
      "HTTPTunnelPort \"http://127.0.0.1:9080\" to reach an mqtts://NAME.onion:8883 broker; "
      "TLS and the broker's name check are unchanged. Drivers never use it.",
      string_key(
          &AgentConfig::proxy,
          "expected http://HOST:PORT, an HTTP CONNECT proxy such as \"http://127.0.0.1:9080\"",
          [](std::string_view s) { return parse_proxy_url(s).has_value(); }));
  add("mqtt", "resend_after", "duration", "\"30s\"",
      "Republish unacked events when the node's ack has not advanced for this long (PROTOCOL "
      "§5).",
      duration_key(&AgentConfig::resend_after, 1s, 24h));
  add("mqtt", "status_interval", "duration", "\"60s\"",
      "How often the retained status is refreshed while connected (PROTOCOL §6).",
      duration_key(&AgentConfig::status_interval, 1s, 60s,
                   " (PROTOCOL §6 asks for a status at least every minute)"));
  add("mqtt", "max_inflight", "integer", "64",
      "QoS 1 publishes awaiting the broker's PUBACK at once.",
      count_key(&AgentConfig::max_inflight, 1, 65535));
  add("mqtt", "node_jwk", "path", "(none)",
      "The node's public JWK (`reflow-ingest key show`, the enrolment bundle's node_ack_jwk). "
      "Set: events are pruned only on acks the node signed with it, proven in its log "
      "(PROTOCOL §5.1). Unset: acks are not verified.",
      path_key(&AgentConfig::node_jwk));

  // [outbox]
  add("outbox", "quota", "size", "\"256MiB\"",
      "Most bytes of unacked envelopes kept; when full, producers are refused, nothing is "
      "dropped.",
      size_key(&AgentConfig::quota_bytes, 64 * 1024, "64KiB"));
  add("outbox", "min_free", "size", "\"64MiB\"",
      "New events are refused while the data_dir file system has less than this free; acks and "
      "pruning still work, and events are accepted again once space is free.",
      size_key(&AgentConfig::min_free_bytes, 0, "0B"));
  add("outbox", "reserve", "size", "\"8MiB\"",
      "A preallocated file (outbox.db.reserve) deleted when a full disk would stop an ack from "
      "being recorded; put back when there is room. \"0B\" for none.",
      size_key(&AgentConfig::reserve_bytes, 0, "0B"));
  add("outbox", "durability", "enum(full|normal)", "\"full\"",
      "full: fsync every commit, survives power loss; normal: faster, but a power cut may lose "
      "the last commits although they were answered.",
      [](const toml::node& node, const ParseContext&,
         AgentConfig& config) -> std::optional<std::string> {
        const auto* text = node.as_string();
        if (text != nullptr && text->get() == "full") {
          config.durability = Durability::full;
        } else if (text != nullptr && text->get() == "normal") {
          config.durability = Durability::normal;
        } else {
          return got("expected \"full\" or \"normal\"", node);
        }
        return std::nullopt;
      });
  add("outbox", "queue_capacity", "integer", "1024",
      "Submissions waiting for the writer at most; producers wait (or get busy) beyond it.",
      count_key(&AgentConfig::queue_capacity, 1, 1'000'000));
  add("outbox", "max_batch", "integer", "256", "Most events in one group commit (one fsync).",
      count_key(&AgentConfig::max_batch, 1, 100'000));

  // [members] (issue 17: badges at machines)
  add("members", "file", "path", "(none)",
      "The members file ([[member]] handle, agent, badges, machines); needed by a driver with a "
      "badge table. `reflow-agent members add` writes it.",
      path_key(&AgentConfig::members_file));
  add("members", "provider", "string", "(none)",
      "The makerspace's ValueFlows agent reference: `provider` of a badged member's `use` events "
      "(the member is the receiver); needed by a driver with a badge table.",
      string_key(&AgentConfig::members_provider,
                 "expected a ValueFlows agent reference such as \"org:fablab\"",
                 is_non_empty_text));
  return schema;
}

const AgentSchema& schema() {
  static const AgentSchema schema = make_schema();
  return schema;
}

void parse_drivers(toml::node& node, const std::string& file, AgentConfig& config,
                   Problems& problems) {
  auto* tables = node.as_array();
  if (tables == nullptr || !tables->is_array_of_tables()) {
    problems.add(line_of(node), "driver",
                 got("expected [[driver]] tables (an array of tables)", node));
    return;
  }
  std::map<std::string, std::uint32_t, std::less<>> lines_by_name;
  for (std::size_t i = 0; i < tables->size(); ++i) {
    auto& table = *(*tables)[i].as_table();
    const std::string where = fmt::format("driver[{}]", i);
    DriverConfig driver;
    driver.file = file;
    bool ok = true;

    const toml::node* kind = table.get("kind");
    if (kind == nullptr) {
      problems.add(line_of(table), where + ".kind", "required key is missing");
      ok = false;
    } else if (const auto* text = kind->as_string();
               text == nullptr || text->get().empty() || has_nul(text->get())) {
      problems.add(line_of(*kind), where + ".kind",
                   got("expected a driver kind such as \"sim\"", *kind));
      ok = false;
    } else {
      driver.kind = text->get();
    }

    const toml::node* name = table.get("name");
    if (name == nullptr) {
      problems.add(line_of(table), where + ".name", "required key is missing");
      ok = false;
    } else if (const auto* text = name->as_string();
               text == nullptr || !is_valid_driver_name(text->get())) {
      problems.add(line_of(*name), where + ".name",
                   got("expected a driver name matching ^[a-z0-9][a-z0-9_-]{0,31}$", *name));
      ok = false;
    } else if (auto [it, inserted] = lines_by_name.emplace(text->get(), line_of(*name));
               !inserted) {
      problems.add(
          line_of(*name), where + ".name",
          got(fmt::format("expected a name no other [[driver]] uses (line {} has it)", it->second),
              *name));
      ok = false;
    } else {
      driver.name = text->get();
    }
    if (ok) config.drivers.push_back(std::move(driver));
  }
}

Result<AgentConfig> parse_document(std::string_view text, const std::string& file,
                                   const std::filesystem::path& base_dir) {
  auto parsed = parse_toml(text, file);
  if (!parsed) return std::unexpected(parsed.error());
  toml::table& root = *parsed;

  AgentConfig config;
  config.source_file = file;
  const ParseContext context{base_dir};
  Problems problems(file);
  const auto seen = apply_schema(root, schema(), context, config, problems);

  toml::node* drivers = root.get("driver");
  if (drivers != nullptr) parse_drivers(*drivers, file, config, problems);

  if (problems.empty()) {
    check_mqtt_combinations(seen, config.url, config.reconnect_min, config.reconnect_max, problems);
  }
  if (!problems.empty()) return std::unexpected(problems.error());

  if (!seen.contains("mqtt.client_id")) config.client_id = "reflow-agent-" + config.device_id;
  if (drivers != nullptr) {
    // Moved, not copied: a toml++ copy drops source positions, which the driver kinds need for
    // their own messages.
    auto& tables = *drivers->as_array();
    for (std::size_t i = 0; i < tables.size(); ++i) {
      config.drivers[i].table =
          std::make_shared<const toml::table>(std::move(*tables[i].as_table()));
    }
  }
  for (DriverConfig& driver : config.drivers) {
    driver.device_id = config.device_id;
    driver.data_dir = config.data_dir;
    driver.members_file = config.members_file;
    driver.members_provider = config.members_provider;
  }
  return config;
}

}  // namespace

Result<AgentConfig> load_config(const std::filesystem::path& path) {
  auto text = read_config_file(path);
  if (!text) return std::unexpected(text.error());
  return parse_document(*text, path.string(), directory_of(path));
}

Result<AgentConfig> parse_config(std::string_view text, std::string_view file_name) {
  return parse_document(text, std::string(file_name), directory_of(file_name));
}

const std::vector<ConfigKeyInfo>& config_reference() {
  static const std::vector<ConfigKeyInfo> reference = [] {
    std::vector<ConfigKeyInfo> rows = schema().reference();
    rows.push_back({"driver.kind", "string", "(required)",
                    "Which driver runs this [[driver]] table, e.g. \"sim\"; the kind's own keys "
                    "follow in the same table."});
    rows.push_back({"driver.name", "string", "(required)",
                    "Instance name, unique among drivers, ^[a-z0-9][a-z0-9_-]{0,31}$; appears in "
                    "each event's source.instance."});
    return rows;
  }();
  return reference;
}

}  // namespace agent
