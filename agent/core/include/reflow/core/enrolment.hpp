// SPDX-License-Identifier: AGPL-3.0-or-later
// The enrolment bundle: everything a device needs from its node in one JSON file, made by
// `reflow-ingest ca enroll` and taken by `reflow-agent enroll BUNDLE` (docs/node-guide.md,
// "Enrolment bundle"). It is a file handed over by people, not part of the wire protocol:
//
//   {
//     "format": "reflow-enrolment",
//     "version": 1,
//     "device_id": "fablab-mk4-01",            // PROTOCOL §1; the certificate's CN
//     "url": "mqtts://node.example.org:8883",  // mqtt.url for the device (mqtts:// only)
//     "topic_prefix": "reflow/v1",             // mqtt.topic_prefix
//     "ca_cert": "-----BEGIN CERTIFICATE-----\n…",      // the node CA (mqtt.ca_file)
//     "device_cert": "-----BEGIN CERTIFICATE-----\n…",  // the device's (mqtt.cert_file)
//     "node_ack_jwk": null                     // reserved: the node's public key for signed
//   }                                          // acks, once those exist; null until then
//
// Certificates are PEM, as `ca sign` writes them. No private key ever travels in a bundle: the
// device's TLS key stays where `reflow-agent enroll` made it. Unknown members are refused, so a
// later version of the format says so through `version`.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <reflow/core/result.hpp>
#include <reflow/core/tls.hpp>

namespace agent::enrolment {

inline constexpr std::string_view k_format = "reflow-enrolment";
inline constexpr int k_version = 1;

struct Bundle {
  std::string device_id;
  std::string url;                          ///< mqtts://HOST[:PORT]
  std::string topic_prefix;                 ///< PROTOCOL §2 prefix, e.g. "reflow/v1"
  std::string ca_cert;                      ///< PEM
  std::string device_cert;                  ///< PEM
  std::optional<std::string> node_ack_jwk;  ///< reserved (JSON text of a JWK); nullopt = null
};

/// The bundle as pretty-printed JSON (two-space indent, members in the order above, ending in a
/// newline).
std::string to_json(const Bundle& bundle);

/// What parse() checked, for the caller's own checks and messages.
struct Parsed {
  Bundle bundle;
  tls::CertInfo ca;      ///< ca_cert, a CA certificate
  tls::CertInfo device;  ///< device_cert: CN = device_id, issued by `ca`'s subject
};

/// Parses and checks a bundle: `format` and `version` (1), every member present with its type
/// and no other, device_id a PROTOCOL §1 device id, url an mqtts:// broker URL, topic_prefix a
/// valid prefix, ca_cert a CA certificate, device_cert a certificate whose CN is device_id and
/// whose issuer is ca_cert's subject, node_ack_jwk null or an object. Errors: invalid_argument
/// naming the member and what is wrong ("device_cert: its CN is \"a\", not the device_id \"b\"").
Result<Parsed> parse(std::string_view text);

}  // namespace agent::enrolment
