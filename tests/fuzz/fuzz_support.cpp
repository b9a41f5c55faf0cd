// SPDX-License-Identifier: AGPL-3.0-or-later
#include "fuzz_support.hpp"

#include <sys/stat.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

namespace reflow_fuzz {

namespace {

agent::DeviceKey load_fixed_key(int index) {
  std::array<std::uint8_t, 32> seed{};
  seed.fill(static_cast<std::uint8_t>(index + 1));
  std::string dir_template =
      (std::filesystem::temp_directory_path() / "reflow-fuzz-XXXXXX").string();
  if (::mkdtemp(dir_template.data()) == nullptr) {
    std::perror("reflow fuzz: mkdtemp");
    std::abort();
  }
  const std::filesystem::path dir = dir_template;
  const std::filesystem::path path = dir / "device.key";
  {
    std::ofstream out(path);
    out << agent::base64url_encode(seed) << "\n";
  }
  ::chmod(path.c_str(), 0600);
  auto key = agent::DeviceKey::load(path);
  std::filesystem::remove_all(dir);
  if (!key) {
    std::fprintf(stderr, "reflow fuzz: fixed key %d: %s\n", index, key.error().message.c_str());
    std::abort();
  }
  return std::move(*key);
}

}  // namespace

const agent::DeviceKey& fixed_key(int index) {
  static std::array<std::optional<agent::DeviceKey>, 3> keys;
  auto& key = keys.at(static_cast<std::size_t>(index));
  if (!key) key.emplace(load_fixed_key(index));
  return *key;
}

std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    auto newline = text.find('\n');
    lines.push_back(text.substr(0, newline));
    if (newline == std::string_view::npos) break;
    text.remove_prefix(newline + 1);
  }
  return lines;
}

}  // namespace reflow_fuzz
