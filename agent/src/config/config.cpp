// SPDX-License-Identifier: AGPL-3.0-or-later
#include <agent/config.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <system_error>

#include <fmt/format.h>
#include <toml++/toml.h>
#include <nlohmann/json.hpp>

#include <agent/event.hpp>
#include <agent/units.hpp>

namespace agent {
namespace {

using std::chrono::milliseconds;
using namespace std::chrono_literals;

constexpr std::string_view k_duration_expected =
    "expected a duration such as \"30s\" (units ms, s, m, h, d)";
constexpr std::string_view k_size_expected =
    "expected a size such as \"256MiB\" (units B, KiB, MiB, GiB, kB, MB, GB)";
constexpr std::string_view k_path_expected =
    "expected a file path (a non-empty string; a relative path is resolved against the config "
    "file's directory)";

struct ParseContext {
  std::filesystem::path base_dir;
};

// A setter checks one node and stores it in the config. On failure it returns the
// "expected …; got …" part of the message; the caller adds file, line and key.
using Apply =
    std::function<std::optional<std::string>(const toml::node&, const ParseContext&, AgentConfig&)>;

// One row of the key table. The same rows drive parsing, the unknown-key check and
// config_reference() (`--help`, docs), so a key cannot be documented without being parsed.
struct KeySpec {
  std::string section;  // "mqtt"
  std::string name;     // "keepalive"
  std::string type;
  std::string default_text;
  std::string description;
  bool required = false;
  Apply apply;

  std::string dotted() const { return section + "." + name; }
};

std::uint32_t line_of(const toml::node& node) {
  return node.source().begin.line;
}

// The value as it was written (TOML syntax, so strings keep their quotes), shortened.
std::string describe(const toml::node& node) {
  if (node.is_table()) return "a table";
  if (node.is_array_of_tables()) return "an array of tables";
  // Strings in double quotes with JSON escapes (the same as TOML basic strings), as users type
  // them; toml++ would print single-quoted literal strings.
  if (const auto* text = node.as_string()) {
    return nlohmann::json(text->get())
        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  std::ostringstream out;
  node.visit([&](const auto& n) { out << n; });
  std::string text = out.str();
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

std::string got(std::string_view expected, const toml::node& node) {
  return fmt::format("{}; got {}", expected, describe(node));
}

// "1s", "90s", "1m", "65535s": the exact value in its largest whole unit.
std::string duration_text(milliseconds d) {
  const auto ms = d.count();
  if (ms != 0 && ms % 86'400'000 == 0) return fmt::format("{}d", ms / 86'400'000);
  if (ms != 0 && ms % 3'600'000 == 0) return fmt::format("{}h", ms / 3'600'000);
  if (ms != 0 && ms % 60'000 == 0) return fmt::format("{}m", ms / 60'000);
  if (ms != 0 && ms % 1000 == 0) return fmt::format("{}s", ms / 1000);
  return fmt::format("{}ms", ms);
}

bool is_valid_broker_url(std::string_view url) {
  return parse_broker_url(url).has_value();
}

// The prefix is the first levels of every topic (PROTOCOL §2): wildcards would make the agent
// publish to a filter, and a leading or trailing '/' would add an empty level.
bool is_valid_topic_prefix(std::string_view prefix) {
  return !prefix.empty() && prefix.find_first_of(std::string_view("+#\0", 3)) == prefix.npos &&
         prefix.front() != '/' && prefix.back() != '/';
}

bool is_valid_driver_name(std::string_view name) {
  if (name.empty() || name.size() > 32) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '_' && c != '-'))) return false;
  }
  return true;
}

bool has_nul(std::string_view text) {
  return text.find('\0') != text.npos;
}

Apply string_key(std::string AgentConfig::*member, std::string expected,
                 std::function<bool(std::string_view)> valid) {
  return [=](const toml::node& node, const ParseContext&,
             AgentConfig& config) -> std::optional<std::string> {
    const auto* text = node.as_string();
    if (text == nullptr || !valid(text->get())) return got(expected, node);
    config.*member = text->get();
    return std::nullopt;
  };
}

Apply path_key(std::filesystem::path AgentConfig::*member) {
  return [=](const toml::node& node, const ParseContext& context,
             AgentConfig& config) -> std::optional<std::string> {
    const auto* text = node.as_string();
    if (text == nullptr || text->get().empty() || has_nul(text->get()))
      return got(k_path_expected, node);
    const std::filesystem::path path(text->get());
    config.*member = (path.is_absolute() ? path : context.base_dir / path).lexically_normal();
    return std::nullopt;
  };
}

// `note` says where a bound comes from, for bounds a user would not guess.
Apply duration_key(milliseconds AgentConfig::*member, milliseconds min, milliseconds max,
                   std::string note = {}, bool whole_seconds = false) {
  return [=](const toml::node& node, const ParseContext&,
             AgentConfig& config) -> std::optional<std::string> {
    const auto* text = node.as_string();
    if (text == nullptr) return got(k_duration_expected, node);
    const auto parsed = parse_duration(text->get());
    if (!parsed) return got(k_duration_expected, node);
    if (*parsed < min || *parsed > max || (whole_seconds && parsed->count() % 1000 != 0)) {
      return got(fmt::format("expected a duration from \"{}\" to \"{}\"{}{}", duration_text(min),
                             duration_text(max), whole_seconds ? " in whole seconds" : "", note),
                 node);
    }
    config.*member = *parsed;
    return std::nullopt;
  };
}

Apply count_key(std::uint32_t AgentConfig::*member, std::int64_t min, std::int64_t max) {
  return [=](const toml::node& node, const ParseContext&,
             AgentConfig& config) -> std::optional<std::string> {
    const auto* number = node.as_integer();
    if (number == nullptr || number->get() < min || number->get() > max)
      return got(fmt::format("expected an integer from {} to {}", min, max), node);
    config.*member = static_cast<std::uint32_t>(number->get());
    return std::nullopt;
  };
}

Apply size_key(std::uint64_t AgentConfig::*member, std::uint64_t min, std::string min_text) {
  return [=](const toml::node& node, const ParseContext&,
             AgentConfig& config) -> std::optional<std::string> {
    const auto* text = node.as_string();
    if (text == nullptr) return got(k_size_expected, node);
    const auto parsed = parse_size_bytes(text->get());
    if (!parsed) return got(k_size_expected, node);
    if (*parsed < min)
      return got(fmt::format("expected a size of at least \"{}\"", min_text), node);
    config.*member = *parsed;
    return std::nullopt;
  };
}

std::vector<KeySpec> make_key_specs() {
  std::vector<KeySpec> specs;
  auto add = [&](std::string section, std::string name, std::string type, std::string default_text,
                 std::string description, Apply apply, bool required = false) {
    specs.push_back(KeySpec{std::move(section), std::move(name), std::move(type),
                            std::move(default_text), std::move(description), required,
                            std::move(apply)});
  };
  auto non_empty = [](std::string_view s) { return !s.empty() && !has_nul(s); };

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
      [](const toml::node& node, const ParseContext&,
         AgentConfig& config) -> std::optional<std::string> {
        const auto* text = node.as_string();
        if (text == nullptr || !parse_log_level(text->get(), config.log_level))
          return got("expected one of \"debug\", \"info\", \"warning\", \"error\"", node);
        return std::nullopt;
      });

  // [mqtt]
  add("mqtt", "url", "string", "\"mqtt://127.0.0.1:1883\"",
      "The node's MQTT broker: mqtt://HOST[:PORT] (plain TCP) or mqtts://HOST[:PORT] (TLS).",
      string_key(&AgentConfig::url,
                 "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], e.g. "
                 "\"mqtts://node.example.org:8883\"",
                 is_valid_broker_url));
  add("mqtt", "topic_prefix", "string", "\"reflow/v1\"",
      "First topic levels (PROTOCOL §2); topics are PREFIX/DEVICE/events, /ack and /status.",
      string_key(&AgentConfig::topic_prefix,
                 "expected topic levels such as \"reflow/v1\" (not empty, no '+' or '#', no "
                 "leading or trailing '/')",
                 is_valid_topic_prefix));
  add("mqtt", "client_id", "string", "\"reflow-agent-\" + device_id",
      "MQTT client id; must be unique on the broker.",
      string_key(&AgentConfig::client_id, "expected a non-empty MQTT client id", non_empty));
  add("mqtt", "username", "string", "(none)",
      "MQTT user name; the node's ACLs usually expect the device id.",
      string_key(&AgentConfig::username, "expected a non-empty MQTT user name", non_empty));
  add("mqtt", "password_file", "path", "(none)",
      "File whose first line is the MQTT password (kept out of this file); needs username.",
      path_key(&AgentConfig::password_file));
  add("mqtt", "ca_file", "path", "(system CA store)",
      "mqtts only: PEM CA bundle that signed the broker's certificate.",
      path_key(&AgentConfig::ca_file));
  add("mqtt", "cert_file", "path", "(none)",
      "mqtts only: PEM client certificate for mutual TLS; needs mqtt.key_file.",
      path_key(&AgentConfig::cert_file));
  add("mqtt", "key_file", "path", "(none)",
      "mqtts only: PEM private key of cert_file (not the Ed25519 signing key).",
      path_key(&AgentConfig::tls_key_file));
  add("mqtt", "keepalive", "duration", "\"30s\"",
      "MQTT keep alive: the broker drops the agent after 1.5 times this without traffic.",
      duration_key(&AgentConfig::keepalive, 1s, 65535s, " (MQTT keep alive is 16-bit seconds)",
                   true));
  add("mqtt", "connect_timeout", "duration", "\"10s\"",
      "How long one connection attempt may take before it counts as failed.",
      duration_key(&AgentConfig::connect_timeout, 1s, 1h));
  add("mqtt", "resend_after", "duration", "\"30s\"",
      "Republish unacked events when the node's ack has not advanced for this long (PROTOCOL "
      "§5).",
      duration_key(&AgentConfig::resend_after, 1s, 24h));
  add("mqtt", "reconnect_min", "duration", "\"1s\"",
      "First wait before reconnecting; doubles after each failure up to reconnect_max.",
      duration_key(&AgentConfig::reconnect_min, 100ms, 24h));
  add("mqtt", "reconnect_max", "duration", "\"60s\"",
      "Longest wait between reconnection attempts; at least reconnect_min.",
      duration_key(&AgentConfig::reconnect_max, 100ms, 24h));
  add("mqtt", "status_interval", "duration", "\"60s\"",
      "How often the retained status is refreshed while connected (PROTOCOL §6).",
      duration_key(&AgentConfig::status_interval, 1s, 60s,
                   " (PROTOCOL §6 asks for a status at least every minute)"));
  add("mqtt", "max_inflight", "integer", "64",
      "QoS 1 publishes awaiting the broker's PUBACK at once.",
      count_key(&AgentConfig::max_inflight, 1, 65535));

  // [outbox]
  add("outbox", "quota", "size", "\"256MiB\"",
      "Most bytes of unacked envelopes kept; when full, producers are refused, nothing is "
      "dropped.",
      size_key(&AgentConfig::quota_bytes, 64 * 1024, "64KiB"));
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
  return specs;
}

const std::vector<KeySpec>& key_specs() {
  static const std::vector<KeySpec> specs = make_key_specs();
  return specs;
}

constexpr std::string_view k_sections[] = {"agent", "mqtt", "outbox"};
constexpr std::string_view k_known_tables = "known tables: [agent], [mqtt], [outbox], [[driver]]";

// Collects every problem so that one run of the agent shows them all.
class Problems {
 public:
  explicit Problems(std::string file) : m_file(std::move(file)) {}

  void add(std::uint32_t line, std::string_view key, std::string_view what) {
    std::string text = line == 0 ? fmt::format("{}: {}: {}", m_file, key, what)
                                 : fmt::format("{}:{}: {}: {}", m_file, line, key, what);
    m_items.push_back({line == 0 ? UINT32_MAX : line, std::move(text)});
  }

  bool empty() const { return m_items.empty(); }

  // In file order; problems without a line (missing keys) last.
  Error error() const {
    auto items = m_items;
    std::stable_sort(items.begin(), items.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string message;
    for (const auto& [line, text] : items) {
      if (!message.empty()) message += '\n';
      message += text;
    }
    return Error{ErrorCode::invalid_config, std::move(message)};
  }

 private:
  std::string m_file;
  std::vector<std::pair<std::uint32_t, std::string>> m_items;
};

std::string known_keys(std::string_view section) {
  std::string list;
  for (const auto& spec : key_specs()) {
    if (spec.section != section) continue;
    if (!list.empty()) list += ", ";
    list += spec.name;
  }
  return list;
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

// Checks between keys, once each key is valid on its own.
void check_combinations(const std::map<std::string, const toml::node*>& seen,
                        const AgentConfig& config, Problems& problems) {
  auto node = [&](const char* key) -> const toml::node* {
    const auto it = seen.find(key);
    return it == seen.end() ? nullptr : it->second;
  };
  const bool tls = config.url.starts_with("mqtts://");
  for (const char* key : {"mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file"}) {
    if (const auto* n = node(key); n != nullptr && !tls) {
      problems.add(line_of(*n), key,
                   got(fmt::format("expected only with an mqtts:// url (mqtt.url is \"{}\"); "
                                   "remove it or use mqtts://",
                                   config.url),
                       *n));
    }
  }
  const auto* cert = node("mqtt.cert_file");
  const auto* key = node("mqtt.key_file");
  if (cert != nullptr && key == nullptr) {
    problems.add(line_of(*cert), "mqtt.cert_file",
                 got("expected mqtt.key_file to be set too (mutual TLS needs both)", *cert));
  } else if (key != nullptr && cert == nullptr) {
    problems.add(line_of(*key), "mqtt.key_file",
                 got("expected mqtt.cert_file to be set too (mutual TLS needs both)", *key));
  }
  // MQTT 3.1.1 §3.1.2.9: a password may only be sent with a user name.
  if (const auto* password = node("mqtt.password_file");
      password != nullptr && node("mqtt.username") == nullptr) {
    problems.add(line_of(*password), "mqtt.password_file",
                 got("expected mqtt.username to be set too (MQTT sends a password only with a "
                     "user name)",
                     *password));
  }
  if (config.reconnect_min > config.reconnect_max) {
    const char* blamed =
        node("mqtt.reconnect_max") != nullptr ? "mqtt.reconnect_max" : "mqtt.reconnect_min";
    const auto* n = node(blamed);
    problems.add(
        line_of(*n), blamed,
        got(fmt::format("expected reconnect_min (\"{}\") to be at most reconnect_max "
                        "(\"{}\")",
                        duration_text(config.reconnect_min), duration_text(config.reconnect_max)),
            *n));
  }
}

Result<AgentConfig> parse_document(std::string_view text, const std::string& file,
                                   const std::filesystem::path& base_dir) {
  toml::table root;
  try {
    root = toml::parse(text, file);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return fail(ErrorCode::invalid_config,
                fmt::format("{}:{}: TOML syntax error (column {}): {}", file, where.line,
                            where.column, e.description()));
  } catch (const std::exception& e) {
    return fail(ErrorCode::invalid_config, fmt::format("{}: cannot parse: {}", file, e.what()));
  }

  AgentConfig config;
  config.source_file = file;
  const ParseContext context{base_dir};
  Problems problems(file);
  std::map<std::string, const toml::node*> seen;

  for (auto&& [key, node] : root) {
    const std::string_view name = key.str();
    const bool section =
        std::find(std::begin(k_sections), std::end(k_sections), name) != std::end(k_sections);
    if (section) {
      if (!node.is_table()) {
        problems.add(line_of(node), name, got(fmt::format("expected a table [{}]", name), node));
      }
    } else if (name != "driver") {
      problems.add(
          key.source().begin.line, name,
          fmt::format("unknown {} ({})", node.is_table() ? "table" : "key", k_known_tables));
    }
  }

  for (std::string_view section : k_sections) {
    const auto* table = root[section].as_table();
    if (table == nullptr) continue;
    for (auto&& [key, node] : *table) {
      const auto spec = std::find_if(key_specs().begin(), key_specs().end(), [&](const auto& s) {
        return s.section == section && s.name == key.str();
      });
      const std::string dotted = fmt::format("{}.{}", section, key.str());
      if (spec == key_specs().end()) {
        problems.add(
            key.source().begin.line, dotted,
            fmt::format("unknown key (known keys in [{}]: {})", section, known_keys(section)));
        continue;
      }
      seen.emplace(dotted, &node);
      if (auto problem = spec->apply(node, context, config)) {
        problems.add(line_of(node), dotted, *problem);
      }
    }
  }

  for (const auto& spec : key_specs()) {
    if (!spec.required || seen.contains(spec.dotted())) continue;
    const auto* table = root[spec.section].as_table();
    problems.add(table == nullptr ? 0 : line_of(*table), spec.dotted(), "required key is missing");
  }

  toml::node* drivers = root.get("driver");
  if (drivers != nullptr) parse_drivers(*drivers, file, config, problems);

  if (problems.empty()) check_combinations(seen, config, problems);
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
  return config;
}

std::filesystem::path directory_of(const std::filesystem::path& file) {
  std::error_code ec;
  auto absolute = std::filesystem::absolute(file, ec);
  if (ec) absolute = file;
  return absolute.lexically_normal().parent_path();
}

}  // namespace

Result<AgentConfig> load_config(const std::filesystem::path& path) {
  std::FILE* stream = std::fopen(path.c_str(), "rb");
  if (stream == nullptr) {
    return fail(ErrorCode::invalid_config,
                fmt::format("cannot read {}: {}", path.string(), std::strerror(errno)));
  }
  std::string text;
  char buffer[8192];
  std::size_t count = 0;
  while ((count = std::fread(buffer, 1, sizeof buffer, stream)) > 0)
    text.append(buffer, count);
  const bool failed = std::ferror(stream) != 0;
  const int error = errno;
  std::fclose(stream);
  if (failed) {
    return fail(ErrorCode::invalid_config,
                fmt::format("cannot read {}: {}", path.string(), std::strerror(error)));
  }
  return parse_document(text, path.string(), directory_of(path));
}

Result<AgentConfig> parse_config(std::string_view text, std::string_view file_name) {
  return parse_document(text, std::string(file_name), directory_of(file_name));
}

const std::vector<ConfigKeyInfo>& config_reference() {
  static const std::vector<ConfigKeyInfo> reference = [] {
    std::vector<ConfigKeyInfo> rows;
    for (const auto& spec : key_specs()) {
      rows.push_back({spec.dotted(), spec.type, spec.default_text, spec.description});
    }
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

Result<BrokerUrl> parse_broker_url(std::string_view url) {
  auto bad = [](std::string_view why) {
    return fail(ErrorCode::invalid_argument, std::string(why));
  };
  BrokerUrl out;
  std::string_view rest;
  if (url.starts_with("mqtt://")) {
    rest = url.substr(7);
  } else if (url.starts_with("mqtts://")) {
    rest = url.substr(8);
    out.tls = true;
    out.port = 8883;
  } else {
    return bad("unknown scheme");
  }
  std::string_view host;
  std::string_view after_host;
  bool ipv6 = false;
  if (rest.starts_with('[')) {
    const auto close = rest.find(']');
    if (close == std::string_view::npos) return bad("unterminated IPv6 address");
    host = rest.substr(1, close - 1);
    after_host = rest.substr(close + 1);
    ipv6 = true;
  } else {
    const auto colon = rest.find(':');
    host = rest.substr(0, colon);
    after_host = colon == std::string_view::npos ? std::string_view() : rest.substr(colon);
  }
  if (host.empty()) return bad("no host");
  for (char c : host) {
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    const bool ok =
        ipv6 ? (alnum || c == ':' || c == '.') : (alnum || c == '.' || c == '-' || c == '_');
    if (!ok)
      return bad(
          "the host may hold only letters, digits, '.', '-' and '_' (no user, path or query)");
  }
  out.host = ipv6 ? fmt::format("[{}]", host) : std::string(host);
  if (after_host.empty()) return out;
  const std::string_view port = after_host.substr(1);
  unsigned value = 0;
  bool digits = after_host[0] == ':' && !port.empty() && port.size() <= 5;
  for (char c : port) {
    digits = digits && c >= '0' && c <= '9';
    if (digits) value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (!digits || value < 1 || value > 65535) return bad("the port is not a number from 1 to 65535");
  out.port = static_cast<int>(value);
  return out;
}

}  // namespace agent
