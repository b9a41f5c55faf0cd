// SPDX-License-Identifier: AGPL-3.0-or-later
// Reading and writing small test files, for tests that check what a program wrote or feed it a
// file.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <set>
#include <string>

namespace reflow_test {

/// The whole file as bytes; "" when it cannot be read (the test's own checks then fail).
std::string read_text(const std::filesystem::path& path);

/// Replaces the file's content with `text`.
void write_text(const std::filesystem::path& path, const std::string& text);

/// Every key an example config file writes, commented out or not, as "table.key"
/// ("mqtt.keepalive", "driver.printer" for a key of a [[driver]] table); a sub-table header
/// ("[export.units]") counts as its key "export.units". For the tests that check that an example
/// documents every key of its program's reference.
std::set<std::string> keys_in_example(const std::filesystem::path& path);

/// The permission bits (07777) of `path`; a test failure when it cannot be stat'ed.
mode_t file_mode(const std::filesystem::path& path);

}  // namespace reflow_test
