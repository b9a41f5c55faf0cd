// SPDX-License-Identifier: AGPL-3.0-or-later
// The power driver's config and the events it makes from a finished session: everything but the
// MQTT plumbing, so that golden tests run recorded payloads through the same code as the driver.
#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/result.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/driver_table.hpp>
#include <reflow/drivers/badge.hpp>

#include "plug_payload.hpp"
#include "session_tracker.hpp"

namespace agent::power {

struct PowerConfig {
  std::string name;  ///< the `[[driver]]` name
  PlugAddress plug;
  std::string resource;     ///< the machine (`use`)
  std::string electricity;  ///< electricity resource (`consume`); empty: no consume
  SessionSettings session;
  // The site's broker.
  std::string url;
  std::string client_id;
  std::string username;
  std::filesystem::path password_file;
  std::filesystem::path ca_file;
  /// [driver.badge] ("serial": an RDM6300 at the machine, "evdev": a keyboard-mode USB reader);
  /// none: sessions carry no member.
  std::optional<BadgeConfig> badge;
};

const std::vector<DriverKeyInfo>& power_keys();

/// Validates a `[[driver]]` table of kind "power". Errors: invalid_config naming file, line, key.
Result<PowerConfig> read_power_config(const DriverConfig& config);

/// Applies what the driver trusts from a message: a retained message was published at some
/// unknown earlier time, so only its availability (Shelly `online`, Tasmota `LWT`, retained by
/// design) is used; its power and counter would date a session wrongly or look like a reset.
PlugReading usable_reading(PlugReading reading, bool retained);

/// The events of one session: `use` of the machine, and `consume` of electricity when configured
/// and the plug counted energy. Both share the process `power:<name>:job-<start unix ms>`. With
/// `who` (the member badged before the session) both carry the member (badge.hpp attribute()).
struct SessionEvents {
  nlohmann::ordered_json use;
  std::optional<nlohmann::ordered_json> consume;
  std::string ref;  ///< source.ref: "session <start unix ms>"
};
SessionEvents session_events(const PowerConfig& config, const PowerSession& session,
                             const std::optional<Attribution>& who = std::nullopt);

/// A finished session waiting until its events are committed (persisted across restarts).
struct PendingSession {
  PowerSession session;
  bool use_done = false;
  bool consume_done = false;
  std::optional<Attribution> who;  ///< decided when the session closed, kept across restarts
};
nlohmann::json to_json(const PendingSession& pending);
/// Errors: corruption.
Result<PendingSession> pending_from_json(const nlohmann::json& json);

}  // namespace agent::power
