// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/members_list.hpp>

#include <fmt/format.h>
#include <mqtt/async_client.h>
#include <toml++/toml.h>
#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/mqtt_connect.hpp>
#include <reflow/core/text.hpp>
#include <reflow/core/units.hpp>

#include "service_common.hpp"

namespace ingest {

using agent::ErrorCode;
using agent::fail;

std::string members_topic(const IngestConfig& config, std::string_view site) {
  return fmt::format("{}/_node/members/{}", config.topic_prefix, site);
}

Result<std::string> sign_members_list(const NodeSigner& signer, const MembersStatement& statement) {
  if (!agent::is_valid_device_id(statement.site))
    return fail(ErrorCode::invalid_argument,
                fmt::format("--site \"{}\": expected a site name of the device id form "
                            "(lower-case letters, digits, '.', '_' and '-', at most 64)",
                            agent::printable_text(statement.site)));
  if (statement.version < 1)
    return fail(ErrorCode::invalid_argument, "--version: must be 1 or more");
  try {
    (void)toml::parse(statement.members_toml);
  } catch (const toml::parse_error& e) {
    return fail(ErrorCode::invalid_argument,
                fmt::format("the members file is not TOML: line {}: {}", e.source().begin.line,
                            e.description()));
  }
  const nlohmann::ordered_json header = {{"alg", "EdDSA"},
                                         {"kid", signer.public_jwk().kid},
                                         {"typ", std::string(agent::k_members_typ)}};
  const nlohmann::ordered_json payload = {
      {"site", statement.site},
      {"version", statement.version},
      {"issued", agent::format_rfc3339_ms(statement.issued_unix_ms)},
      {"members", statement.members_toml}};
  return signer.sign_raw(agent::base64url_encode(header.dump()), payload.dump()).to_envelope();
}

Status publish_retained(const IngestConfig& config, const std::string& topic,
                        const std::string& payload) {
  auto address = agent::mqtt_connect::broker_address(config.url, config.source_file);
  if (!address) return std::unexpected(address.error());
  const std::string client_id = config.client_id + "-members";
  auto client = make_service_client(config, address->paho_uri, client_id);
  if (!client) return std::unexpected(client.error());
  mqtt::connect_options options;
  if (Status ok = set_service_options(config, options, /*clean_start=*/true, address->tls); !ok)
    return ok;
  try {
    (*client)->connect(options)->wait();
    auto message = mqtt::make_message(topic, payload, k_service_qos, /*retained=*/true);
    (*client)->publish(message)->wait();
    (*client)->disconnect()->wait();
  } catch (const mqtt::exception& e) {
    return fail(ErrorCode::device_unavailable,
                fmt::format("publishing on {} through {} failed: {}", topic, config.url, e.what()));
  }
  return {};
}

}  // namespace ingest
