// SPDX-License-Identifier: AGPL-3.0-or-later
// Smart-plug MQTT payloads (Shelly Gen1, Shelly Gen2/Gen3, Tasmota) turned into readings. Pure
// functions: no I/O, no clock; the caller stamps each reading with its arrival time.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/result.hpp>

namespace agent::power {

/// How the plug publishes (docs/reference/drivers.md §4.1–4.3).
enum class PlugProtocol { shelly_gen1, shelly_gen2, tasmota };

/// "shelly-gen1", "shelly-gen2" or "tasmota" (the config values); nullopt for anything else.
std::optional<PlugProtocol> parse_plug_protocol(std::string_view text);
std::string_view to_string(PlugProtocol protocol);

/// What one message says about the plug. Every field is optional: a Shelly Gen1 plug publishes
/// power and energy as separate messages, a Gen2 NotifyStatus carries only what changed.
struct PlugReading {
  std::optional<double> watts;      ///< instantaneous active power, W
  std::optional<double> energy_wh;  ///< the plug's lifetime energy counter, Wh
  /// Identity of the counter's epoch (Tasmota `ENERGY.TotalStartTime`): when it changes, the
  /// counter was reset even if its value did not go down.
  std::optional<std::string> counter_epoch;
  std::optional<bool> online;  ///< availability (Shelly `online`, Tasmota `LWT`)

  bool empty() const { return !watts && !energy_wh && !online; }
};

/// Where a plug publishes: `root` is the Gen1 topic root (`shellies/shellyplug-s-C18B12`), the Gen2
/// `topic_prefix` (`shellyplusplugs-a8032abe54dc`) or the Tasmota `%topic%` (`tasmota_5A1B2C`, with
/// the default FullTopic `%prefix%/%topic%/`). `channel` is the relay / switch / power index.
struct PlugAddress {
  PlugProtocol protocol = PlugProtocol::shelly_gen1;
  std::string root;
  int channel = 0;
};

/// The topic filters to subscribe for `plug`.
std::vector<std::string> plug_topics(const PlugAddress& plug);

/// Parses one message. An empty reading means the message carries nothing this driver uses (a
/// NotifyEvent, a status without the switch). Errors: invalid_argument for a payload that is not
/// what the device documents (not a number, not JSON, a field of the wrong type); the message names
/// the topic and what was wrong.
///
/// Units: Gen1 `relay/N/energy` is in watt-minutes (÷60 → Wh); Gen2 `aenergy.total` is Wh; Tasmota
/// `ENERGY.Total` is kWh (×1000 → Wh). A relay reported off (`relay/N` = `off`, Gen2
/// `"output":false`, Tasmota `stat/…/POWER` = `OFF`) reads as 0 W, since the plug then passes
/// nothing and Tasmota sends no telemetry on switching off.
Result<PlugReading> parse_plug_message(const PlugAddress& plug, std::string_view topic,
                                       std::string_view payload);

}  // namespace agent::power
