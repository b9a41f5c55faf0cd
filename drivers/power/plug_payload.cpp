// SPDX-License-Identifier: AGPL-3.0-or-later
#include "plug_payload.hpp"

#include <charconv>
#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/text.hpp>

namespace agent::power {
namespace {

std::string_view trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

// Only for error messages: long or binary payloads are cut.
std::string shown(std::string_view payload) {
  // Escaped first (a payload is any bytes), then cut at a character boundary: the message goes
  // into the driver's last_error, which `status --json` serializes.
  constexpr std::size_t k_max = 60;
  return agent::shortened_text(agent::printable_text(payload.substr(0, 4 * k_max)), k_max);
}

PlugReading power_reading(double watts) {
  PlugReading reading;
  reading.watts = watts;
  return reading;
}

PlugReading online_reading(bool online) {
  PlugReading reading;
  reading.online = online;
  return reading;
}

Error malformed(std::string_view topic, std::string_view what, std::string_view payload) {
  return Error{ErrorCode::invalid_argument,
               fmt::format("{}: {}; got \"{}\"", topic, what, shown(payload))};
}

std::optional<double> number_text(std::string_view text) {
  text = trim(text);
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() ||
      !std::isfinite(value))
    return std::nullopt;
  return value;
}

std::optional<double> number_json(const nlohmann::json& value) {
  if (!value.is_number()) return std::nullopt;
  const double d = value.get<double>();
  if (!std::isfinite(d)) return std::nullopt;
  return d;
}

std::optional<nlohmann::json> parse_json_object(std::string_view payload) {
  auto json = nlohmann::json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return std::nullopt;
  return json;
}

// Shelly Gen1/Gen2 `online` (`true`/`false`).
Result<PlugReading> parse_bool_online(std::string_view topic, std::string_view payload) {
  const std::string_view text = trim(payload);
  if (text == "true") return online_reading(true);
  if (text == "false") return online_reading(false);
  return std::unexpected(malformed(topic, "expected true or false", payload));
}

Result<PlugReading> parse_gen1(const PlugAddress& plug, std::string_view topic,
                               std::string_view payload) {
  const std::string relay = fmt::format("{}/relay/{}", plug.root, plug.channel);
  if (topic == plug.root + "/online") return parse_bool_online(topic, payload);
  if (topic == relay) {
    const std::string_view text = trim(payload);
    if (text == "off") return power_reading(0.0);
    if (text == "on" || text == "overpower") return PlugReading{};
    return std::unexpected(malformed(topic, "expected on, off or overpower", payload));
  }
  if (topic == relay + "/power") {
    auto watts = number_text(payload);
    if (!watts) return std::unexpected(malformed(topic, "expected a power in W", payload));
    return power_reading(*watts);
  }
  if (topic == relay + "/energy") {
    auto watt_minutes = number_text(payload);
    if (!watt_minutes || *watt_minutes < 0)
      return std::unexpected(
          malformed(topic, "expected an energy counter in watt-minutes (≥ 0)", payload));
    PlugReading reading;
    reading.energy_wh = *watt_minutes / 60.0;
    return reading;
  }
  return PlugReading{};
}

// The `switch:N` object of a Gen2 status or NotifyStatus delta (shelly-api-docs gen2 Switch).
Result<PlugReading> gen2_switch(std::string_view topic, const nlohmann::json& status,
                                std::string_view payload) {
  if (!status.is_object())
    return std::unexpected(malformed(topic, "expected the switch status as an object", payload));
  PlugReading reading;
  if (auto it = status.find("output"); it != status.end()) {
    if (!it->is_boolean())
      return std::unexpected(malformed(topic, "expected \"output\" true or false", payload));
    if (!it->get<bool>()) reading.watts = 0.0;
  }
  if (auto it = status.find("apower"); it != status.end()) {
    auto watts = number_json(*it);
    if (!watts) return std::unexpected(malformed(topic, "expected \"apower\" in W", payload));
    reading.watts = *watts;
  }
  if (auto it = status.find("aenergy"); it != status.end()) {
    const auto total = it->is_object() ? it->find("total") : it->end();
    std::optional<double> wh;
    if (total != it->end()) wh = number_json(*total);
    if (!wh || *wh < 0)
      return std::unexpected(
          malformed(topic, "expected \"aenergy\":{\"total\":<Wh ≥ 0>}", payload));
    reading.energy_wh = *wh;
  }
  return reading;
}

Result<PlugReading> parse_gen2(const PlugAddress& plug, std::string_view topic,
                               std::string_view payload) {
  const std::string component = fmt::format("switch:{}", plug.channel);
  if (topic == plug.root + "/online") return parse_bool_online(topic, payload);
  if (topic == plug.root + "/status/" + component) {
    auto json = parse_json_object(payload);
    if (!json) return std::unexpected(malformed(topic, "expected a JSON object", payload));
    return gen2_switch(topic, *json, payload);
  }
  if (topic == plug.root + "/events/rpc") {
    auto json = parse_json_object(payload);
    if (!json)
      return std::unexpected(malformed(topic, "expected a JSON-RPC notification", payload));
    const auto method = json->find("method");
    if (method == json->end() || !method->is_string())
      return std::unexpected(malformed(topic, "expected a \"method\"", payload));
    if (*method != "NotifyStatus" && *method != "NotifyFullStatus") return PlugReading{};
    const auto params = json->find("params");
    if (params == json->end() || !params->is_object())
      return std::unexpected(malformed(topic, "expected \"params\" as an object", payload));
    const auto status = params->find(component);
    if (status == params->end()) return PlugReading{};
    return gen2_switch(topic, *status, payload);
  }
  return PlugReading{};
}

// Tasmota sends one number per channel as an array on multi-channel devices.
std::optional<double> tasmota_value(const nlohmann::json& value, int channel) {
  if (value.is_array()) {
    if (static_cast<std::size_t>(channel) >= value.size()) return std::nullopt;
    return number_json(value[static_cast<std::size_t>(channel)]);
  }
  return number_json(value);
}

Result<PlugReading> parse_tasmota(const PlugAddress& plug, std::string_view topic,
                                  std::string_view payload) {
  if (topic == "tele/" + plug.root + "/LWT") {
    const std::string_view text = trim(payload);
    if (text == "Online") return online_reading(true);
    if (text == "Offline") return online_reading(false);
    return std::unexpected(malformed(topic, "expected Online or Offline", payload));
  }
  if (topic == "stat/" + plug.root + "/POWER") {
    const std::string_view text = trim(payload);
    if (text == "OFF") return power_reading(0.0);
    if (text == "ON") return PlugReading{};
    return std::unexpected(malformed(topic, "expected ON or OFF", payload));
  }
  if (topic == "tele/" + plug.root + "/SENSOR") {
    auto json = parse_json_object(payload);
    if (!json) return std::unexpected(malformed(topic, "expected a JSON object", payload));
    const auto energy = json->find("ENERGY");
    if (energy == json->end() || !energy->is_object())
      return std::unexpected(malformed(
          topic, "no \"ENERGY\" object (is this a plug with energy monitoring?)", payload));
    PlugReading reading;
    if (auto it = energy->find("Power"); it != energy->end()) {
      auto watts = tasmota_value(*it, plug.channel);
      if (!watts)
        return std::unexpected(malformed(
            topic, fmt::format("expected ENERGY.Power in W (channel {})", plug.channel), payload));
      reading.watts = *watts;
    }
    if (auto it = energy->find("Total"); it != energy->end()) {
      auto kwh = tasmota_value(*it, plug.channel);
      if (!kwh || *kwh < 0)
        return std::unexpected(malformed(topic, "expected ENERGY.Total in kWh (≥ 0)", payload));
      reading.energy_wh = *kwh * 1000.0;
    }
    if (auto it = energy->find("TotalStartTime"); it != energy->end() && it->is_string())
      reading.counter_epoch = it->get<std::string>();
    if (!reading.watts && !reading.energy_wh)
      return std::unexpected(malformed(topic, "expected ENERGY.Power or ENERGY.Total", payload));
    return reading;
  }
  return PlugReading{};
}

}  // namespace

std::optional<PlugProtocol> parse_plug_protocol(std::string_view text) {
  if (text == "shelly-gen1") return PlugProtocol::shelly_gen1;
  if (text == "shelly-gen2") return PlugProtocol::shelly_gen2;
  if (text == "tasmota") return PlugProtocol::tasmota;
  return std::nullopt;
}

std::string_view to_string(PlugProtocol protocol) {
  switch (protocol) {
    case PlugProtocol::shelly_gen1:
      return "shelly-gen1";
    case PlugProtocol::shelly_gen2:
      return "shelly-gen2";
    case PlugProtocol::tasmota:
      return "tasmota";
  }
  return "?";
}

std::vector<std::string> plug_topics(const PlugAddress& plug) {
  switch (plug.protocol) {
    case PlugProtocol::shelly_gen1: {
      const std::string relay = fmt::format("{}/relay/{}", plug.root, plug.channel);
      return {relay, relay + "/power", relay + "/energy", plug.root + "/online"};
    }
    case PlugProtocol::shelly_gen2:
      return {fmt::format("{}/status/switch:{}", plug.root, plug.channel),
              plug.root + "/events/rpc", plug.root + "/online"};
    case PlugProtocol::tasmota:
      return {"tele/" + plug.root + "/SENSOR", "tele/" + plug.root + "/LWT",
              "stat/" + plug.root + "/POWER"};
  }
  return {};
}

Result<PlugReading> parse_plug_message(const PlugAddress& plug, std::string_view topic,
                                       std::string_view payload) {
  switch (plug.protocol) {
    case PlugProtocol::shelly_gen1:
      return parse_gen1(plug, topic, payload);
    case PlugProtocol::shelly_gen2:
      return parse_gen2(plug, topic, payload);
    case PlugProtocol::tasmota:
      return parse_tasmota(plug, topic, payload);
  }
  return PlugReading{};
}

}  // namespace agent::power
