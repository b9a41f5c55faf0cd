// SPDX-License-Identifier: AGPL-3.0-or-later
// One documented config key, as both programs' `--help` and docs list them (config_table.hpp
// builds them from the same rows that parse the keys).
#pragma once

#include <string>

namespace agent {

/// One row of the key table: used for `--help`, docs and the unknown-key check.
struct ConfigKeyInfo {
  std::string key;   ///< "mqtt.keepalive"
  std::string type;  ///< "duration", "string", "path", "size", "integer", "enum(full|normal)"
  std::string default_text;  ///< "\"30s\"" or "(required)"
  std::string description;
};

}  // namespace agent
