// SPDX-License-Identifier: AGPL-3.0-or-later
#include "power_logic.hpp"

#include <cmath>

#include <fmt/format.h>

#include <reflow/core/units.hpp>
#include <reflow/drivers/valueflows.hpp>

namespace agent::power {
namespace {

// Whole Wh in kWh: the counters resolve 1 Wh at best (Tasmota Total has three decimals of kWh),
// and a rounded value keeps float noise out of the signed record.
double kwh_from_wh(double wh) {
  return std::round(wh) / 1000.0;
}

}  // namespace

const std::vector<DriverKeyInfo>& power_keys() {
  static const std::vector<DriverKeyInfo> keys = {
      {"url", "string", "\"mqtt://127.0.0.1:1883\"",
       "the site's MQTT broker the plug publishes to: mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"},
      {"protocol", "string", "(required)",
       "the plug's firmware: shelly-gen1, shelly-gen2, tasmota"},
      {"topic", "string", "(required)",
       "Shelly Gen1 topic root (shellies/shellyplug-s-C18B12), Shelly Gen2 topic_prefix "
       "(shellyplusplugs-a8032abe54dc) or Tasmota %topic% (tasmota_5A1B2C)"},
      {"channel", "integer", "0", "relay / switch index on multi-channel devices"},
      {"resource", "string", "(required)", "resource reference of the machine (`use`)"},
      {"on_watts", "number", "20", "a session starts at the first reading at or above this (W)"},
      {"off_watts", "number", "5",
       "a session ends at the first reading below this (W); less than on_watts"},
      {"min_on", "duration", "\"1m\"", "sessions shorter than this are not recorded"},
      {"merge_gap", "duration", "\"5m\"",
       "a pause below off_watts shorter than this continues the session"},
      {"electricity", "string", "(none)",
       "resource reference of the electricity (`consume` in kilowattHour); leave out for none"},
      {"client_id", "string", "\"reflow-power-<name>\"", "MQTT client id; unique on the broker"},
      {"username", "string", "(none)", "broker user name"},
      {"password_file", "string", "(none)", "file whose first line is the broker password"},
      {"ca_file", "string", "(none)", "CA certificate(s) for mqtts:// (PEM)"},
      badge_key_info(),
  };
  return keys;
}

Result<PowerConfig> read_power_config(const DriverConfig& config) {
  DriverTable table(config);
  if (Status keys = table.check_keys(power_keys()); !keys) return std::unexpected(keys.error());
  auto url = table.string("url", "mqtt://127.0.0.1:1883");
  auto protocol = table.string("protocol", "");
  auto topic = table.string("topic", "");
  auto channel = table.integer("channel", 0, 0, 15);
  auto resource = table.string("resource", "");
  auto on_watts = table.positive_number("on_watts", 20);
  auto off_watts = table.positive_number("off_watts", 5);
  auto min_on = table.duration("min_on", std::chrono::minutes(1));
  auto merge_gap = table.duration("merge_gap", std::chrono::minutes(5));
  auto electricity = table.string("electricity", "");
  auto client_id = table.string("client_id", "reflow-power-" + config.name);
  auto username = table.string("username", "");
  auto password_file = table.string("password_file", "");
  auto ca_file = table.string("ca_file", "");
  for (const Error* e :
       {url ? nullptr : &url.error(), protocol ? nullptr : &protocol.error(),
        topic ? nullptr : &topic.error(), channel ? nullptr : &channel.error(),
        resource ? nullptr : &resource.error(), on_watts ? nullptr : &on_watts.error(),
        off_watts ? nullptr : &off_watts.error(), min_on ? nullptr : &min_on.error(),
        merge_gap ? nullptr : &merge_gap.error(), electricity ? nullptr : &electricity.error(),
        client_id ? nullptr : &client_id.error(), username ? nullptr : &username.error(),
        password_file ? nullptr : &password_file.error(), ca_file ? nullptr : &ca_file.error()})
    if (e) return std::unexpected(*e);

  auto missing = [&](std::string_view key, std::string_view example) {
    return fail(ErrorCode::invalid_config,
                fmt::format("{}: driver.{}.{}: required; add for example {} = {}", config.file,
                            config.name, key, key, example));
  };
  if (protocol->empty()) return missing("protocol", "\"shelly-gen2\"");
  if (topic->empty()) return missing("topic", "\"shellyplusplugs-a8032abe54dc\"");
  if (resource->empty()) return missing("resource", "\"machine:laser-01\"");

  PowerConfig out;
  out.name = config.name;
  auto parsed = parse_plug_protocol(*protocol);
  if (!parsed)
    return fail(ErrorCode::invalid_config,
                fmt::format("{}: driver.{}.protocol: expected shelly-gen1, shelly-gen2 or "
                            "tasmota; got \"{}\"",
                            config.file, config.name, *protocol));
  out.plug.protocol = *parsed;
  out.plug.root = *topic;
  while (out.plug.root.size() > 1 && out.plug.root.back() == '/')
    out.plug.root.pop_back();
  if (out.plug.root.find_first_of("+#") != std::string::npos)
    return fail(ErrorCode::invalid_config,
                fmt::format("{}: driver.{}.topic: the plug's own topic, without the wildcards + "
                            "and #; got \"{}\"",
                            config.file, config.name, *topic));
  out.plug.channel = static_cast<int>(*channel);
  if (*off_watts >= *on_watts)
    return fail(ErrorCode::invalid_config,
                fmt::format("{}: driver.{}.off_watts: must be less than on_watts ({} W), so that "
                            "a load hovering at the threshold does not flap; got {} W",
                            config.file, config.name, *on_watts, *off_watts));
  out.resource = *resource;
  out.electricity = *electricity;
  out.session.on_watts = *on_watts;
  out.session.off_watts = *off_watts;
  out.session.min_on_ms = min_on->count();
  out.session.merge_gap_ms = merge_gap->count();
  out.url = *url;
  out.client_id = *client_id;
  out.username = *username;
  out.password_file = *password_file;
  out.ca_file = *ca_file;
  auto badge = parse_badge_config(config, {"serial", "evdev"});
  if (!badge) return std::unexpected(badge.error());
  out.badge = std::move(*badge);
  return out;
}

PlugReading usable_reading(PlugReading reading, bool retained) {
  if (!retained) return reading;
  PlugReading availability;
  availability.online = reading.online;
  return availability;
}

SessionEvents session_events(const PowerConfig& config, const PowerSession& session,
                             const std::optional<Attribution>& who) {
  SessionEvents events;
  const std::string process = fmt::format("power:{}:job-{}", config.name, session.start_ms);
  events.ref = fmt::format("session {}", session.start_ms);
  const std::string end = format_rfc3339_ms(session.end_ms);

  nlohmann::ordered_json meta;
  meta["end"] = to_string(session.end);
  if (session.energy_wh) meta["energy_kwh"] = kwh_from_wh(*session.energy_wh);
  if (session.counter_resets > 0) meta["counter_resets"] = session.counter_resets;
  meta["method"] = "measured";
  meta["plug"] = config.plug.root;

  auto use =
      vf::use(config.resource, static_cast<double>(session.end_ms - session.start_ms) / 3'600'000.0,
              format_rfc3339_ms(session.start_ms), end, process);
  if (who) attribute(use, *who);
  use["meta"] = meta;
  events.use = std::move(use);

  if (!config.electricity.empty() && session.energy_wh && kwh_from_wh(*session.energy_wh) > 0) {
    auto consume =
        vf::consume(vf::ResourceRef::inventoried(config.electricity),
                    vf::quantity(kwh_from_wh(*session.energy_wh), "kilowattHour"), end, process);
    if (who) attribute(consume, *who);
    consume["meta"] = meta;
    events.consume = std::move(consume);
  }
  return events;
}

nlohmann::json to_json(const PendingSession& pending) {
  nlohmann::json json;
  json["start_ms"] = pending.session.start_ms;
  json["end_ms"] = pending.session.end_ms;
  if (pending.session.energy_wh) json["energy_wh"] = *pending.session.energy_wh;
  json["end"] = to_string(pending.session.end);
  json["counter_resets"] = pending.session.counter_resets;
  json["use_done"] = pending.use_done;
  json["consume_done"] = pending.consume_done;
  if (pending.who)
    json["member"] = {{"handle", pending.who->handle},
                      {"receiver", pending.who->receiver},
                      {"provider", pending.who->provider}};
  return json;
}

Result<PendingSession> pending_from_json(const nlohmann::json& json) {
  PendingSession pending;
  try {
    pending.session.start_ms = json.at("start_ms").get<std::int64_t>();
    pending.session.end_ms = json.at("end_ms").get<std::int64_t>();
    if (json.contains("energy_wh")) pending.session.energy_wh = json.at("energy_wh").get<double>();
    const auto end = json.at("end").get<std::string>();
    if (end != "off" && end != "offline")
      return fail(ErrorCode::corruption, fmt::format("pending session: unknown end \"{}\"", end));
    pending.session.end = end == "offline" ? SessionEnd::offline : SessionEnd::off;
    pending.session.counter_resets = json.at("counter_resets").get<int>();
    pending.use_done = json.at("use_done").get<bool>();
    pending.consume_done = json.at("consume_done").get<bool>();
    if (json.contains("member")) {
      const auto& m = json.at("member");
      pending.who =
          Attribution{m.at("handle").get<std::string>(), m.at("receiver").get<std::string>(),
                      m.at("provider").get<std::string>()};
    }
  } catch (const nlohmann::json::exception& e) {
    return fail(ErrorCode::corruption, fmt::format("pending session: {}", e.what()));
  }
  return pending;
}

}  // namespace agent::power
