// SPDX-License-Identifier: AGPL-3.0-or-later
// The table-driven TOML config machinery that reflow-agent's loader (agent/device/src/config.cpp)
// and reflow-ingest's (agent/node/src/config.cpp) share: one row per key with its type,
// default, description and setter; the same rows drive parsing, the unknown-key check and the
// `--help`/docs reference, so a key cannot be documented without being parsed. Each loader
// instantiates the templates for its own config struct and keeps only its key rows and its
// checks between keys. Not installed.
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <expected>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <toml++/toml.h>
#include <nlohmann/json.hpp>

#include <reflow/core/config_key.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/mqtt_connect.hpp>
#include <reflow/core/result.hpp>
#include <reflow/core/units.hpp>

namespace agent::config_keys {

using std::chrono::milliseconds;

inline constexpr std::string_view k_duration_expected =
    "expected a duration such as \"30s\" (units ms, s, m, h, d)";
inline constexpr std::string_view k_size_expected =
    "expected a size such as \"256MiB\" (units B, KiB, MiB, GiB, kB, MB, GB)";
inline constexpr std::string_view k_path_expected =
    "expected a file path (a non-empty string; a relative path is resolved against the config "
    "file's directory)";

struct ParseContext {
  std::filesystem::path base_dir;
};

inline std::uint32_t line_of(const toml::node& node) {
  return node.source().begin.line;
}

// The value as it was written (TOML syntax, so strings keep their quotes), shortened.
inline std::string describe(const toml::node& node) {
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

inline std::string got(std::string_view expected, const toml::node& node) {
  return fmt::format("{}; got {}", expected, describe(node));
}

// "1s", "90s", "1m", "65535s": the exact value in its largest whole unit.
inline std::string duration_text(milliseconds d) {
  const auto ms = d.count();
  if (ms != 0 && ms % 86'400'000 == 0) return fmt::format("{}d", ms / 86'400'000);
  if (ms != 0 && ms % 3'600'000 == 0) return fmt::format("{}h", ms / 3'600'000);
  if (ms != 0 && ms % 60'000 == 0) return fmt::format("{}m", ms / 60'000);
  if (ms != 0 && ms % 1000 == 0) return fmt::format("{}s", ms / 1000);
  return fmt::format("{}ms", ms);
}

inline bool has_nul(std::string_view text) {
  return text.find('\0') != text.npos;
}

inline bool is_non_empty_text(std::string_view text) {
  return !text.empty() && !has_nul(text);
}

inline bool is_valid_broker_url(std::string_view url) {
  return parse_broker_url(url).has_value();
}

// The prefix is the first levels of every topic (PROTOCOL §2): wildcards would make a client
// publish to a filter, and a leading or trailing '/' would add an empty level.
inline bool is_valid_topic_prefix(std::string_view prefix) {
  return !prefix.empty() && prefix.find_first_of(std::string_view("+#\0", 3)) == prefix.npos &&
         prefix.front() != '/' && prefix.back() != '/';
}

// Collects every problem so that one run shows them all.
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

// A setter checks one node and stores it in the config. On failure it returns the
// "expected …; got …" part of the message; the caller adds file, line and key.
template <typename Config>
using Apply =
    std::function<std::optional<std::string>(const toml::node&, const ParseContext&, Config&)>;

// A setter for a key whose value is a sub-table of free-form keys (`[export.units]`): it reports
// each entry's problems itself, under `dotted` + "." + the entry's key.
template <typename Config>
using ApplyTable = std::function<void(const toml::table&, std::string_view dotted,
                                      const ParseContext&, Config&, Problems&)>;

// One row of the key table. Exactly one of `apply` and `apply_table` is set.
template <typename Config>
struct KeySpec {
  std::string section;  // "mqtt"
  std::string name;     // "keepalive"
  std::string type;
  std::string default_text;
  std::string description;
  bool required = false;
  Apply<Config> apply;
  ApplyTable<Config> apply_table;

  std::string dotted() const { return section + "." + name; }
};

// The key rows of one config struct plus the tables it knows.
template <typename Config>
struct Schema {
  std::vector<KeySpec<Config>> specs;
  std::vector<std::string> sections;         // "agent", "mqtt" …, each a table of specs
  std::vector<std::string> other_top_level;  // names the loader parses itself ("driver")
  std::string known_tables;  // "known tables: [agent], [mqtt], [outbox], [[driver]]"

  void add(std::string section, std::string name, std::string type, std::string default_text,
           std::string description, Apply<Config> apply, bool required = false) {
    specs.push_back(KeySpec<Config>{std::move(section),
                                    std::move(name),
                                    std::move(type),
                                    std::move(default_text),
                                    std::move(description),
                                    required,
                                    std::move(apply),
                                    {}});
  }

  void add_table(std::string section, std::string name, std::string type, std::string default_text,
                 std::string description, ApplyTable<Config> apply) {
    specs.push_back(KeySpec<Config>{std::move(section),
                                    std::move(name),
                                    std::move(type),
                                    std::move(default_text),
                                    std::move(description),
                                    false,
                                    {},
                                    std::move(apply)});
  }

  std::string known_keys(std::string_view section) const {
    std::string list;
    for (const auto& spec : specs) {
      if (spec.section != section) continue;
      if (!list.empty()) list += ", ";
      list += spec.name;
    }
    return list;
  }

  std::vector<ConfigKeyInfo> reference() const {
    std::vector<ConfigKeyInfo> rows;
    for (const auto& spec : specs)
      rows.push_back({spec.dotted(), spec.type, spec.default_text, spec.description});
    return rows;
  }
};

// ---- setters for the common value kinds ----

template <typename Config>
Apply<Config> string_key(std::string Config::*member, std::string expected,
                         std::function<bool(std::string_view)> valid) {
  return [=](const toml::node& node, const ParseContext&,
             Config& config) -> std::optional<std::string> {
    const auto* text = node.as_string();
    if (text == nullptr || !valid(text->get())) return got(expected, node);
    config.*member = text->get();
    return std::nullopt;
  };
}

template <typename Config>
Apply<Config> path_key(std::filesystem::path Config::*member) {
  return [=](const toml::node& node, const ParseContext& context,
             Config& config) -> std::optional<std::string> {
    const auto* text = node.as_string();
    if (text == nullptr || text->get().empty() || has_nul(text->get()))
      return got(k_path_expected, node);
    const std::filesystem::path path(text->get());
    config.*member = (path.is_absolute() ? path : context.base_dir / path).lexically_normal();
    return std::nullopt;
  };
}

/// Why check_duration refused a value.
enum class DurationProblem {
  not_a_duration,  ///< not a string, or not parse_duration's syntax ("30s", "1h")
  out_of_range,    ///< below `min`, above `max`, or not whole seconds where they are required
};

/// `node` as a duration (units.hpp parse_duration) from `min` to `max` inclusive, in whole seconds
/// when `whole_seconds`; the caller words the problem for its key.
inline std::expected<milliseconds, DurationProblem> check_duration(const toml::node& node,
                                                                   milliseconds min,
                                                                   milliseconds max,
                                                                   bool whole_seconds = false) {
  const auto* text = node.as_string();
  if (text == nullptr) return std::unexpected(DurationProblem::not_a_duration);
  const auto parsed = parse_duration(text->get());
  if (!parsed) return std::unexpected(DurationProblem::not_a_duration);
  if (*parsed < min || *parsed > max || (whole_seconds && parsed->count() % 1000 != 0))
    return std::unexpected(DurationProblem::out_of_range);
  return *parsed;
}

// `note` says where a bound comes from, for bounds a user would not guess.
template <typename Config>
Apply<Config> duration_key(milliseconds Config::*member, milliseconds min, milliseconds max,
                           std::string note = {}, bool whole_seconds = false) {
  return [=](const toml::node& node, const ParseContext&,
             Config& config) -> std::optional<std::string> {
    const auto parsed = check_duration(node, min, max, whole_seconds);
    if (!parsed && parsed.error() == DurationProblem::not_a_duration)
      return got(k_duration_expected, node);
    if (!parsed) {
      return got(fmt::format("expected a duration from \"{}\" to \"{}\"{}{}", duration_text(min),
                             duration_text(max), whole_seconds ? " in whole seconds" : "", note),
                 node);
    }
    config.*member = *parsed;
    return std::nullopt;
  };
}

template <typename Config>
Apply<Config> count_key(std::uint32_t Config::*member, std::int64_t min, std::int64_t max) {
  return [=](const toml::node& node, const ParseContext&,
             Config& config) -> std::optional<std::string> {
    const auto* number = node.as_integer();
    if (number == nullptr || number->get() < min || number->get() > max)
      return got(fmt::format("expected an integer from {} to {}", min, max), node);
    config.*member = static_cast<std::uint32_t>(number->get());
    return std::nullopt;
  };
}

template <typename Config>
Apply<Config> size_key(std::uint64_t Config::*member, std::uint64_t min, std::string min_text) {
  return [=](const toml::node& node, const ParseContext&,
             Config& config) -> std::optional<std::string> {
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

template <typename Config>
Apply<Config> log_level_key(LogLevel Config::*member) {
  return [=](const toml::node& node, const ParseContext&,
             Config& config) -> std::optional<std::string> {
    const auto* text = node.as_string();
    if (text == nullptr || !parse_log_level(text->get(), config.*member))
      return got("expected one of \"debug\", \"info\", \"warning\", \"error\"", node);
    return std::nullopt;
  };
}

// ---- the document ----

// toml::parse with the syntax error turned into `FILE:LINE: TOML syntax error …`.
inline Result<toml::table> parse_toml(std::string_view text, const std::string& file) {
  try {
    return toml::parse(text, file);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return fail(ErrorCode::invalid_config,
                fmt::format("{}:{}: TOML syntax error (column {}): {}", file, where.line,
                            where.column, e.description()));
  } catch (const std::exception& e) {
    return fail(ErrorCode::invalid_config, fmt::format("{}: cannot parse: {}", file, e.what()));
  }
}

// Applies `schema` to the document: checks the top level (its sections must be tables; names
// neither a section nor in other_top_level are unknown), runs each key's setter, reports unknown
// keys with the known ones and missing required keys. Returns the nodes of the keys that were
// set, by dotted name, for the loader's checks between keys.
template <typename Config>
std::map<std::string, const toml::node*> apply_schema(const toml::table& root,
                                                      const Schema<Config>& schema,
                                                      const ParseContext& context, Config& config,
                                                      Problems& problems) {
  std::map<std::string, const toml::node*> seen;
  auto is_section = [&](std::string_view name) {
    return std::find(schema.sections.begin(), schema.sections.end(), name) != schema.sections.end();
  };

  for (auto&& [key, node] : root) {
    const std::string_view name = key.str();
    if (is_section(name)) {
      if (!node.is_table()) {
        problems.add(line_of(node), name, got(fmt::format("expected a table [{}]", name), node));
      }
    } else if (std::find(schema.other_top_level.begin(), schema.other_top_level.end(), name) ==
               schema.other_top_level.end()) {
      problems.add(
          key.source().begin.line, name,
          fmt::format("unknown {} ({})", node.is_table() ? "table" : "key", schema.known_tables));
    }
  }

  for (const std::string& section : schema.sections) {
    const auto* table = root[section].as_table();
    if (table == nullptr) continue;
    for (auto&& [key, node] : *table) {
      const auto spec = std::find_if(schema.specs.begin(), schema.specs.end(), [&](const auto& s) {
        return s.section == section && s.name == key.str();
      });
      const std::string dotted = fmt::format("{}.{}", section, key.str());
      if (spec == schema.specs.end()) {
        problems.add(key.source().begin.line, dotted,
                     fmt::format("unknown key (known keys in [{}]: {})", section,
                                 schema.known_keys(section)));
        continue;
      }
      seen.emplace(dotted, &node);
      if (spec->apply_table) {
        if (const auto* sub = node.as_table()) {
          spec->apply_table(*sub, dotted, context, config, problems);
        } else {
          problems.add(line_of(node), dotted,
                       got(fmt::format("expected a table [{}]", dotted), node));
        }
      } else if (auto problem = spec->apply(node, context, config)) {
        problems.add(line_of(node), dotted, *problem);
      }
    }
  }

  for (const auto& spec : schema.specs) {
    if (!spec.required || seen.contains(spec.dotted())) continue;
    const auto* table = root[spec.section].as_table();
    problems.add(table == nullptr ? 0 : line_of(*table), spec.dotted(), "required key is missing");
  }
  return seen;
}

// ---- the [mqtt] table both programs share ----

// What differs between the two programs' [mqtt] rows: their words, and client_id's default.
struct MqttKeyWords {
  std::string who;                // "the agent": keepalive's description
  std::string topics;             // how topic_prefix is used
  std::string client_id_default;  // "\"reflow-agent-\" + device_id"
  std::string client_id;          // client_id's description
  std::string username;           // username's description
  std::string password_file;      // password_file's description
  std::string cert_file;          // cert_file's description
  std::string key_file;           // key_file's description
};

// Adds the [mqtt] rows that reflow-agent and reflow-ingest share, in documentation order: url,
// topic_prefix, client_id, username, password_file, ca_file, cert_file, key_file, keepalive,
// connect_timeout, reconnect_min, reconnect_max. `Config` has members of those names
// (tls_key_file for key_file); check_mqtt_combinations() checks them against each other.
template <typename Config>
void add_mqtt_keys(Schema<Config>& schema, const MqttKeyWords& words) {
  using namespace std::chrono_literals;
  schema.add("mqtt", "url", "string", "\"mqtt://127.0.0.1:1883\"",
             "The node's MQTT broker: mqtt://HOST[:PORT] (plain TCP) or mqtts://HOST[:PORT] (TLS).",
             string_key(&Config::url,
                        "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], e.g. "
                        "\"mqtts://node.example.org:8883\"",
                        is_valid_broker_url));
  schema.add("mqtt", "topic_prefix", "string", "\"reflow/v1\"",
             "First topic levels (PROTOCOL §2): " + words.topics,
             string_key(&Config::topic_prefix,
                        "expected topic levels such as \"reflow/v1\" (not empty, no '+' or '#', "
                        "no leading or trailing '/')",
                        is_valid_topic_prefix));
  schema.add(
      "mqtt", "client_id", "string", words.client_id_default, words.client_id,
      string_key(&Config::client_id, "expected a non-empty MQTT client id", is_non_empty_text));
  schema.add(
      "mqtt", "username", "string", "(none)", words.username,
      string_key(&Config::username, "expected a non-empty MQTT user name", is_non_empty_text));
  schema.add("mqtt", "password_file", "path", "(none)", words.password_file,
             path_key(&Config::password_file));
  schema.add("mqtt", "ca_file", "path", "(system CA store)",
             "mqtts only: PEM CA bundle that signed the broker's certificate.",
             path_key(&Config::ca_file));
  schema.add("mqtt", "cert_file", "path", "(none)", words.cert_file, path_key(&Config::cert_file));
  schema.add("mqtt", "key_file", "path", "(none)", words.key_file, path_key(&Config::tls_key_file));
  schema.add(
      "mqtt", "keepalive", "duration", "\"30s\"",
      "MQTT keep alive: the broker drops " + words.who + " after 1.5 times this without traffic.",
      duration_key(&Config::keepalive, 1s, 65535s, " (MQTT keep alive is 16-bit seconds)", true));
  schema.add("mqtt", "connect_timeout", "duration", "\"10s\"",
             "How long one connection attempt may take before it counts as failed.",
             duration_key(&Config::connect_timeout, 1s, 1h));
  schema.add("mqtt", "reconnect_min", "duration", "\"1s\"",
             "First wait before reconnecting; doubles after each failure up to reconnect_max.",
             duration_key(&Config::reconnect_min, 100ms, 24h));
  schema.add("mqtt", "reconnect_max", "duration", "\"60s\"",
             "Longest wait between reconnection attempts; at least reconnect_min.",
             duration_key(&Config::reconnect_max, 100ms, 24h));
}

// Checks between the [mqtt] keys both programs share, once each key is valid on its own: TLS
// files only with mqtts://, certificate and key together, a password only with a user name,
// reconnect_min ≤ reconnect_max.
inline void check_mqtt_combinations(const std::map<std::string, const toml::node*>& seen,
                                    std::string_view url, milliseconds reconnect_min,
                                    milliseconds reconnect_max, Problems& problems) {
  auto node = [&](const char* key) -> const toml::node* {
    const auto it = seen.find(key);
    return it == seen.end() ? nullptr : it->second;
  };
  const bool tls = url.starts_with("mqtts://");
  for (const char* key : {"mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file"}) {
    if (const auto* n = node(key); n != nullptr && !tls) {
      problems.add(line_of(*n), key,
                   got(fmt::format("expected only with an mqtts:// url (mqtt.url is \"{}\"); "
                                   "remove it or use mqtts://",
                                   url),
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
  if (reconnect_min > reconnect_max) {
    const char* blamed =
        node("mqtt.reconnect_max") != nullptr ? "mqtt.reconnect_max" : "mqtt.reconnect_min";
    const auto* n = node(blamed);
    problems.add(line_of(*n), blamed,
                 got(fmt::format("expected reconnect_min (\"{}\") to be at most reconnect_max "
                                 "(\"{}\")",
                                 duration_text(reconnect_min), duration_text(reconnect_max)),
                     *n));
  }
}

// ---- files ----

/// The largest config file read_config_file reads.
inline constexpr std::size_t k_max_config_file_bytes = 1024 * 1024;

/// The whole file. Errors: invalid_config `cannot read PATH: REASON`, or `PATH: more than 1024
/// KiB …` past k_max_config_file_bytes (reading /dev/zero by mistake must not fill memory).

inline Result<std::string> read_config_file(const std::filesystem::path& path) {
  std::FILE* stream = std::fopen(path.c_str(), "rb");
  if (stream == nullptr) {
    return fail(ErrorCode::invalid_config,
                fmt::format("cannot read {}: {}", path.string(), std::strerror(errno)));
  }
  // A config is a few KiB; reading /dev/zero or a log file by mistake must not fill memory.
  std::string text;
  char buffer[8192];
  std::size_t count = 0;
  while ((count = std::fread(buffer, 1, sizeof buffer, stream)) > 0) {
    text.append(buffer, count);
    if (text.size() > k_max_config_file_bytes) {
      std::fclose(stream);
      return fail(ErrorCode::invalid_config,
                  fmt::format("{}: more than {} KiB; a config file is a few KiB of TOML (is this "
                              "the right file?)",
                              path.string(), k_max_config_file_bytes / 1024));
    }
  }
  const bool failed = std::ferror(stream) != 0;
  const int error = errno;
  std::fclose(stream);
  if (failed) {
    return fail(ErrorCode::invalid_config,
                fmt::format("cannot read {}: {}", path.string(), std::strerror(error)));
  }
  return text;
}

// Relative paths in a config resolve against this.
inline std::filesystem::path directory_of(const std::filesystem::path& file) {
  std::error_code ec;
  auto absolute = std::filesystem::absolute(file, ec);
  if (ec) absolute = file;
  return absolute.lexically_normal().parent_path();
}

}  // namespace agent::config_keys
