// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/driver_table.hpp>

#include <deque>
#include <map>
#include <mutex>
#include <utility>

#include <toml++/toml.h>

#include <reflow/core/units.hpp>

namespace agent {
namespace {

std::string line_prefix(const DriverConfig& config, const toml::node* node) {
  const toml::node* where = node ? node : config.table.get();
  if (where && where->source().begin.line > 0)
    return fmt::format("{}:{}", config.file, where->source().begin.line);
  return config.file;
}

std::string shown(const toml::node& node) {
  if (auto s = node.as_string()) return fmt::format("\"{}\"", s->get());
  if (auto i = node.as_integer()) return fmt::format("{}", i->get());
  if (auto f = node.as_floating_point()) return fmt::format("{}", f->get());
  if (auto b = node.as_boolean()) return b->get() ? "true" : "false";
  return fmt::format("a {}", toml::impl::node_type_friendly_names[static_cast<int>(node.type())]);
}

}  // namespace

Error DriverTable::error(std::string_view key, std::string_view what) const {
  const toml::node* node = m_config.table->get(key);
  return Error{
      ErrorCode::invalid_config,
      fmt::format("{}: driver.{}.{}: {}", line_prefix(m_config, node), m_config.name, key, what)};
}

Status DriverTable::check_keys(const std::vector<DriverKeyInfo>& keys) const {
  for (const auto& [name, node] : *m_config.table) {
    if (name == "kind" || name == "name") continue;
    bool known = false;
    for (const DriverKeyInfo& info : keys)
      known = known || info.key == name.str();
    if (!known) {
      std::string list = "kind, name";
      for (const DriverKeyInfo& info : keys)
        list += fmt::format(", {}", info.key);
      return std::unexpected(
          error(name.str(),
                fmt::format("unknown key for kind \"{}\" (known keys: {})", m_config.kind, list)));
    }
  }
  return {};
}

Result<std::string> DriverTable::string(std::string_view key, std::string_view fallback) const {
  const toml::node* node = m_config.table->get(key);
  if (!node) return std::string(fallback);
  if (auto s = node->as_string(); s && !s->get().empty()) return s->get();
  return std::unexpected(
      error(key, fmt::format("expected a non-empty string; got {}", shown(*node))));
}

Result<std::string> DriverTable::required_string(std::string_view key) const {
  if (!m_config.table->get(key))
    return std::unexpected(error(key, "is required (a non-empty string)"));
  return string(key, "");
}

Result<std::string> DriverTable::choice(std::string_view key, std::string_view fallback,
                                        const std::vector<std::string_view>& choices) const {
  const toml::node* node = m_config.table->get(key);
  if (!node) return std::string(fallback);
  if (auto s = node->as_string()) {
    for (std::string_view c : choices)
      if (s->get() == c) return s->get();
  }
  std::string list;
  for (std::string_view c : choices)
    list += fmt::format("{}\"{}\"", list.empty() ? "" : ", ", c);
  return std::unexpected(error(key, fmt::format("expected one of {}; got {}", list, shown(*node))));
}

Result<std::chrono::milliseconds> DriverTable::duration(std::string_view key,
                                                        std::chrono::milliseconds fallback) const {
  const toml::node* node = m_config.table->get(key);
  if (!node) return fallback;
  if (auto s = node->as_string()) {
    if (auto d = parse_duration(s->get())) return *d;
  }
  return std::unexpected(
      error(key, fmt::format("expected a duration such as \"30s\" (units ms, s, m, h, d); got {}",
                             shown(*node))));
}

Result<std::int64_t> DriverTable::integer(std::string_view key, std::int64_t fallback,
                                          std::int64_t min, std::int64_t max) const {
  const toml::node* node = m_config.table->get(key);
  if (!node) return fallback;
  if (auto i = node->as_integer(); i && i->get() >= min && i->get() <= max) return i->get();
  return std::unexpected(
      error(key, fmt::format("expected an integer from {} to {}; got {}", min, max, shown(*node))));
}

Result<double> DriverTable::positive_number(std::string_view key, double fallback,
                                            double max) const {
  const toml::node* node = m_config.table->get(key);
  if (!node) return fallback;
  double value = 0;
  if (auto i = node->as_integer())
    value = static_cast<double>(i->get());
  else if (auto f = node->as_floating_point())
    value = f->get();
  // Written so that nan fails too; inf fails against any finite max.
  if (value > 0 && value <= max) return value;
  const std::string wanted = max < std::numeric_limits<double>::max()
                                 ? fmt::format("a number > 0 and ≤ {}", max)
                                 : std::string("a finite number > 0");
  return std::unexpected(error(key, fmt::format("expected {}; got {}", wanted, shown(*node))));
}

std::string prefixed_key(std::string_view prefix, std::string_view key) {
  if (key == "path" && !prefix.empty()) {
    if (prefix.ends_with('_')) prefix.remove_suffix(1);
    return std::string(prefix);
  }
  return std::string(prefix) + std::string(key);
}

const std::vector<DriverKeyInfo>& prefixed_keys(std::span<const DriverKeyInfo> keys,
                                                std::string_view prefix) {
  struct KeySet {
    std::deque<std::string> names;  // a deque: the views into it stay valid as it grows
    std::vector<DriverKeyInfo> keys;
  };
  static std::mutex mutex;
  static std::map<std::pair<const DriverKeyInfo*, std::string>, KeySet> sets;
  std::lock_guard lock(mutex);
  KeySet& set = sets[{keys.data(), std::string(prefix)}];
  if (set.keys.empty()) {
    for (const DriverKeyInfo& key : keys) {
      const std::string& name = set.names.emplace_back(prefixed_key(prefix, key.key));
      set.keys.push_back({name, key.type, key.default_text, key.description});
    }
  }
  return set.keys;
}

}  // namespace agent
