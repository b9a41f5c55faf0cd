// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/result.hpp>
#include <reflow/device/config.hpp>

namespace agent {

/// Documentation of one key of a driver kind: the same table drives reading, the unknown-key
/// check and `reflow-agent drivers describe`.
struct DriverKeyInfo {
  std::string_view key;
  std::string_view type;          ///< "string", "duration", "integer", "number"
  std::string_view default_text;  ///< "\"10s\"", or "(required)"
  std::string_view description;
};

/// Reads the kind's own keys of one `[[driver]]` table with errors that name the file, the line
/// and the key: `agent.toml:31: driver.printer1.job_duration: expected a duration such as "30s"
/// …; got 10`. Each getter returns the default when the key is absent. Not thread-safe; used
/// only inside DriverKind::create().
class DriverTable {
 public:
  explicit DriverTable(const DriverConfig& config) : m_config(config) {}

  /// Errors for keys other than `kind`, `name` and those in `keys`.
  Status check_keys(const std::vector<DriverKeyInfo>& keys) const;

  Result<std::string> string(std::string_view key, std::string_view fallback) const;
  Result<std::chrono::milliseconds> duration(std::string_view key,
                                             std::chrono::milliseconds fallback) const;
  /// An integer in [min, max].
  Result<std::int64_t> integer(std::string_view key, std::int64_t fallback, std::int64_t min,
                               std::int64_t max) const;
  /// A finite number (integer or float) > 0 and ≤ `max`; TOML's inf and nan are refused.
  Result<double> positive_number(std::string_view key, double fallback,
                                 double max = std::numeric_limits<double>::max()) const;

  /// A non-empty string that must be present: "is required (…)" naming the table's line.
  Result<std::string> required_string(std::string_view key) const;

  /// One of `choices` (an enum key such as `protocol`); the error lists them.
  Result<std::string> choice(std::string_view key, std::string_view fallback,
                             const std::vector<std::string_view>& choices) const;

  /// An invalid_config error for `key` in the same form as the getters' (FILE:LINE:
  /// driver.NAME.KEY: WHAT), at the key's line, or the table's when the key is absent. For checks
  /// between keys: `error("off_watts", "must be below on_watts (10)")`.
  Error error(std::string_view key, std::string_view what) const;

 private:
  const DriverConfig& m_config;
};

/// The name of a device key inside a driver that embeds the device's keys under `prefix`: the
/// station embeds a scale as `scale_baud`, `scale_protocol` …, and the device's `path` key is
/// spelled by the prefix alone (`scale`, not `scale_path`). With an empty prefix, `key` itself.
std::string prefixed_key(std::string_view prefix, std::string_view key);

/// `keys` with every name through prefixed_key(prefix, …), for the driver_keys() of a kind that
/// embeds a device (the scale's keys as the station's `scale_…`). Built once per `keys` array
/// and prefix and kept for the process, since DriverKeyInfo holds views: `keys` must be static
/// too. Thread-safe.
const std::vector<DriverKeyInfo>& prefixed_keys(std::span<const DriverKeyInfo> keys,
                                                std::string_view prefix);

}  // namespace agent
