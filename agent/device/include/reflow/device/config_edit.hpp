// SPDX-License-Identifier: AGPL-3.0-or-later
// Setting keys of the agent's TOML config in place, for `reflow-agent enroll BUNDLE`: the file is
// a person's, with their comments and layout, so it is edited as text, line by line, and the
// result is checked with toml++ before anything is written.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <reflow/core/result.hpp>

namespace agent {

/// Returns `text` with each (key, value) of `values` set as a string in the `[mqtt]` table:
/// - a key already there on one line (`key = "…"` or `key = '…'`, a comment after it allowed)
///   gets the new value in place, its comment kept;
/// - a missing key is added after the table's last key line;
/// - without a `[mqtt]` table, one is appended at the end.
/// Everything else (comments, other keys, blank lines, order) stays byte for byte. The result is
/// then parsed with toml++ and must hold the new values and, apart from them, exactly what `text`
/// held. Refuses (invalid_config, naming `file_name`, the key and its line, and saying to set the
/// keys by hand) what it cannot edit that way: a key whose value is not a one-line string, an
/// `[mqtt]` table written as an inline table or with dotted keys, a `text` that does not parse.
Result<std::string> set_mqtt_string_keys(
    std::string_view text, const std::vector<std::pair<std::string, std::string>>& values,
    std::string_view file_name);

}  // namespace agent
