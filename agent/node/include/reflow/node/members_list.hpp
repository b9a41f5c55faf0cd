// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

// The node-signed members list (issue 17, PROTOCOL §5.3): `reflow-ingest members publish` signs
// a site's members file with the node's key, as acks are signed (PROTOCOL §5.1), and publishes
// it retained on PREFIX/_node/members/SITE; the agents that pin the node's key check it
// (drivers/common members_list.hpp) and keep the last valid one.

#include <cstdint>
#include <string>
#include <string_view>

#include <reflow/core/result.hpp>
#include <reflow/node/config.hpp>
#include <reflow/node/node_key.hpp>

namespace ingest {

/// What a members list states (PROTOCOL §5.3).
struct MembersStatement {
  std::string site;  ///< the device id form (PROTOCOL §1): no '/', '+' or '#'
  std::uint64_t version = 1;
  std::int64_t issued_unix_ms = 0;
  std::string members_toml;  ///< a members file's text, as the agent loads it
};

/// The topic of `site`'s list: `PREFIX/_node/members/SITE` (PROTOCOL §2).
std::string members_topic(const IngestConfig& config, std::string_view site);

/// Checks the statement (site in the device id form, version ≥ 1, the TOML parses) and signs it:
/// the flattened JWS (RFC 7515 §7.2.2) with protected header {"alg":"EdDSA","kid":KID,
/// "typ":"reflow-members+json"} and payload {"site","version","issued","members"} (issued
/// RFC 3339 with ms), on one line. Errors: invalid_argument naming the field (a TOML error
/// gives its line).
Result<std::string> sign_members_list(const NodeSigner& signer, const MembersStatement& statement);

/// Publishes `payload` retained with QoS 1 on `topic` through the node's broker ([mqtt] of
/// `config`, its credentials), waiting for the broker's PUBACK, then disconnects. Client id:
/// mqtt.client_id + "-members". Errors: invalid_config (credentials), device_unavailable (the
/// broker did not take it, with Paho's reason).
Status publish_retained(const IngestConfig& config, const std::string& topic,
                        const std::string& payload);

}  // namespace ingest
