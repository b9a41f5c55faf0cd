// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/config_edit.hpp>

#include <regex>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>
#include <nlohmann/json.hpp>

namespace agent {
namespace {

std::vector<std::string> split_lines(std::string_view text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size() - 1;
    lines.emplace_back(text.substr(start, end - start + 1));
    start = end + 1;
  }
  return lines;
}

bool is_table_header(const std::string& line) {
  static const std::regex header(R"(^\s*\[.*)");
  return std::regex_search(line, header);
}

bool is_key_line(const std::string& line) {
  static const std::regex skip(R"(^\s*(#.*)?\r?\n?$)");
  return !std::regex_match(line, skip);
}

// A TOML basic string holding `value`: JSON's escapes are TOML's (TOML 1.0 "Basic strings").
std::string toml_string(const std::string& value) {
  return nlohmann::json(value).dump();
}

Result<toml::table> parse_toml(std::string_view text, std::string_view file_name,
                               std::string_view what) {
  try {
    return toml::parse(text, std::string(file_name));
  } catch (const toml::parse_error& e) {
    return fail(ErrorCode::invalid_config,
                fmt::format("{}: {} does not parse as TOML (line {}: {})", file_name, what,
                            e.source().begin.line, e.description()));
  }
}

}  // namespace

Result<std::string> set_mqtt_string_keys(
    std::string_view text, const std::vector<std::pair<std::string, std::string>>& values,
    std::string_view file_name) {
  const auto by_hand = [&] {
    std::string keys;
    for (const auto& [key, value] : values)
      keys += fmt::format("{}{} = {}", keys.empty() ? "" : ", ", key, toml_string(value));
    return fmt::format("set these in its [mqtt] table by hand: {}", keys);
  };
  auto before = parse_toml(text, file_name, "the config");
  if (!before) return std::unexpected(before.error());

  std::vector<std::string> lines = split_lines(text);
  if (!lines.empty() && lines.back().back() != '\n') lines.back() += '\n';
  static const std::regex mqtt_header(R"(^\s*\[\s*mqtt\s*\]\s*(#.*)?\r?\n?$)");
  std::size_t header = lines.size();
  for (std::size_t i = 0; i < lines.size(); ++i)
    if (std::regex_match(lines[i], mqtt_header)) header = i;
  if (header == lines.size()) {
    if (!lines.empty() && is_key_line(lines.back())) lines.emplace_back("\n");
    if (!lines.empty() && lines.back() != "\n") lines.emplace_back("\n");
    lines.emplace_back("[mqtt]\n");
    header = lines.size() - 1;
  }
  for (const auto& [key, value] : values) {
    std::size_t end = header + 1;
    while (end < lines.size() && !is_table_header(lines[end]))
      ++end;
    const std::regex key_line("^\\s*" + key + "\\s*=");
    const std::regex one_line_string(
        "^(\\s*" + key + "\\s*=\\s*)(\"(?:[^\"\\\\]|\\\\.)*\"|'[^']*')(\\s*(?:#.*)?\\r?\\n?)$");
    bool done = false;
    std::size_t last_key = header;
    for (std::size_t i = header + 1; i < end && !done; ++i) {
      if (is_key_line(lines[i])) last_key = i;
      if (!std::regex_search(lines[i], key_line)) continue;
      std::smatch m;
      if (!std::regex_match(lines[i], m, one_line_string))
        return fail(ErrorCode::invalid_config,
                    fmt::format("{}:{}: mqtt.{} is not a one-line string, so it cannot be "
                                "changed in place; {}",
                                file_name, i + 1, key, by_hand()));
      lines[i] = m.str(1) + toml_string(value) + m.str(3);
      done = true;
    }
    if (!done)
      lines.insert(lines.begin() + static_cast<std::ptrdiff_t>(last_key + 1),
                   fmt::format("{} = {}\n", key, toml_string(value)));
  }
  std::string out;
  for (const auto& line : lines)
    out += line;

  // The check: the new values, and nothing else changed.
  auto after = parse_toml(out, file_name, "the edited config");
  if (!after)
    return fail(ErrorCode::invalid_config,
                fmt::format("{}: its [mqtt] table cannot be edited line by line ({}); {}",
                            file_name, after.error().message, by_hand()));
  for (const auto& [key, value] : values) {
    const auto* got = after->at_path("mqtt." + key).as_string();
    if (got == nullptr || got->get() != value)
      return fail(ErrorCode::invalid_config,
                  fmt::format("{}: editing mqtt.{} line by line did not give the value; {}",
                              file_name, key, by_hand()));
    if (auto* table = after->at_path("mqtt").as_table()) table->erase(key);
    if (auto* table = before->at_path("mqtt").as_table()) table->erase(key);
  }
  if (auto* table = before->at_path("mqtt").as_table(); table != nullptr && table->empty())
    before->erase("mqtt");
  if (auto* table = after->at_path("mqtt").as_table(); table != nullptr && table->empty())
    after->erase("mqtt");
  if (*before != *after)
    return fail(ErrorCode::invalid_config,
                fmt::format("{}: editing [mqtt] line by line would change other keys; {}",
                            file_name, by_hand()));
  return out;
}

}  // namespace agent
