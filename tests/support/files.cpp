// SPDX-License-Identifier: AGPL-3.0-or-later
#include "files.hpp"

#include <sys/stat.h>

#include <fstream>
#include <regex>
#include <sstream>

#include <gtest/gtest.h>

namespace reflow_test {

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

mode_t file_mode(const std::filesystem::path& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

std::set<std::string> keys_in_example(const std::filesystem::path& path) {
  const std::regex header(R"(^(?:#\s*)?\[\[?([a-z_.]+)\]\]?\s*$)");
  const std::regex assignment(R"(^(?:#\s*)?([a-z_]+)\s*=)");
  std::set<std::string> keys;
  std::istringstream lines(read_text(path));
  std::string section;
  for (std::string line; std::getline(lines, line);) {
    std::smatch match;
    if (std::regex_match(line, match, header)) {
      section = match[1];
      if (section.find('.') != std::string::npos) keys.insert(section);
    } else if (std::regex_search(line, match, assignment) && !section.empty()) {
      keys.insert(section + "." + match[1].str());
    }
  }
  return keys;
}

}  // namespace reflow_test
