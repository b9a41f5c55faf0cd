// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/enrolment.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/config_table.hpp>
#include <reflow/core/event.hpp>
#include <reflow/core/mqtt_connect.hpp>

namespace agent::enrolment {
namespace {

Error bad(std::string_view member, std::string_view why) {
  return Error{ErrorCode::invalid_argument, fmt::format("{}: {}", member, why)};
}

}  // namespace

std::string to_json(const Bundle& bundle) {
  nlohmann::ordered_json j;
  j["format"] = k_format;
  j["version"] = k_version;
  j["device_id"] = bundle.device_id;
  j["url"] = bundle.url;
  j["topic_prefix"] = bundle.topic_prefix;
  j["ca_cert"] = bundle.ca_cert;
  j["device_cert"] = bundle.device_cert;
  j["node_ack_jwk"] = bundle.node_ack_jwk ? nlohmann::ordered_json::parse(*bundle.node_ack_jwk)
                                          : nlohmann::ordered_json(nullptr);
  return j.dump(2) + "\n";
}

Result<Parsed> parse(std::string_view text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return fail(ErrorCode::invalid_argument,
                "not an enrolment bundle: expected one JSON object (what `reflow-ingest ca "
                "enroll` writes)");
  if (!j.contains("format") || j["format"] != k_format)
    return std::unexpected(bad("format", fmt::format("expected \"{}\"", k_format)));
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"] != k_version)
    return std::unexpected(bad(
        "version", fmt::format("this reflow-agent reads version {} (got {}); update it to the "
                               "node's version",
                               k_version, j.contains("version") ? j["version"].dump() : "none")));
  static constexpr std::string_view k_members[] = {"format",      "version",      "device_id",
                                                   "url",         "topic_prefix", "ca_cert",
                                                   "device_cert", "node_ack_jwk"};
  for (const auto& [key, value] : j.items()) {
    bool known = false;
    for (auto member : k_members)
      known = known || key == member;
    if (!known) return std::unexpected(bad(key, "not a member of version 1 of the bundle"));
  }
  Parsed out;
  for (auto [member, field] :
       {std::pair{"device_id", &out.bundle.device_id}, std::pair{"url", &out.bundle.url},
        std::pair{"topic_prefix", &out.bundle.topic_prefix},
        std::pair{"ca_cert", &out.bundle.ca_cert},
        std::pair{"device_cert", &out.bundle.device_cert}}) {
    if (!j.contains(member) || !j[member].is_string())
      return std::unexpected(bad(member, "missing, or not a string"));
    *field = j[member].get<std::string>();
  }
  const Bundle& b = out.bundle;
  if (!is_valid_device_id(b.device_id))
    return std::unexpected(bad("device_id", "not a device id (PROTOCOL §1)"));
  auto url = parse_broker_url(b.url);
  if (!url) return std::unexpected(bad("url", url.error().message));
  if (!url->tls)
    return std::unexpected(bad("url", "expected mqtts://: the bundle's certificates are for TLS"));
  if (!config_keys::is_valid_topic_prefix(b.topic_prefix))
    return std::unexpected(bad("topic_prefix", "not a valid topic prefix"));
  auto ca = tls::parse_certificate(b.ca_cert);
  if (!ca) return std::unexpected(bad("ca_cert", ca.error().message));
  if (!ca->is_ca) return std::unexpected(bad("ca_cert", "not a CA certificate"));
  auto device = tls::parse_certificate(b.device_cert);
  if (!device) return std::unexpected(bad("device_cert", device.error().message));
  if (device->common_name != b.device_id)
    return std::unexpected(bad("device_cert", fmt::format("its CN is \"{}\", not the device_id "
                                                          "\"{}\"",
                                                          device->common_name, b.device_id)));
  if (device->issuer != ca->subject)
    return std::unexpected(bad("device_cert", fmt::format("issued by {}, not by ca_cert's {}",
                                                          device->issuer, ca->subject)));
  if (j.contains("node_ack_jwk") && !j["node_ack_jwk"].is_null()) {
    if (!j["node_ack_jwk"].is_object())
      return std::unexpected(bad("node_ack_jwk", "expected null or a JWK object"));
    out.bundle.node_ack_jwk = j["node_ack_jwk"].dump();
  }
  out.ca = std::move(*ca);
  out.device = std::move(*device);
  return out;
}

}  // namespace agent::enrolment
