// SPDX-License-Identifier: AGPL-3.0-or-later
// X.509 basics both programs use (mbedTLS 2.28): key files, CSRs, certificates. The node's
// certificate authority built on them is agent/node's (reflow/node/ca.hpp).
//
// The MQTT broker authenticates devices by client certificate (mutual TLS) and, with Mosquitto's
// `use_identity_as_username`, takes the certificate's CN as the MQTT user name that the topic ACLs
// of PROTOCOL §2 match. So a CN is an identity: a device's CN is its PROTOCOL §1 device id, and a
// service (e.g. `ingest@node`) gets a CN that can never be a device id.
//
// Keys are EC P-256 (secp256r1) in PEM (SEC 1 "EC PRIVATE KEY"), signatures ECDSA with SHA-256.
// Key files are created with O_EXCL and mode 0600 and are never overwritten. Certificates and CSRs
// are PEM. A public key fingerprint is the lowercase hex SHA-256 of the DER SubjectPublicKeyInfo
// (RFC 5280 §4.1.2.7), the same value as
// `openssl pkey -pubin -outform DER | sha256sum`.
//
// Every function is thread-safe (each call has its own random generator and contexts).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/result.hpp>

namespace agent::tls {

/// A private key file and what happened to it.
struct KeyFileResult {
  bool created = false;           ///< false: an existing key was loaded
  std::string public_key_sha256;  ///< fingerprint, lowercase hex
};

/// Loads the EC P-256 private key at `path`, or creates one there when the file does not exist
/// (O_CREAT|O_EXCL, mode 0600, fsync; an existing file is never overwritten). The parent directory
/// must exist. Errors: io (cannot create/read), crypto (the file is not an EC P-256 private key:
/// the message says to move it away).
Result<KeyFileResult> load_or_create_key(const std::filesystem::path& path);

/// A PKCS#10 certificate signing request (RFC 2986) in PEM, subject `CN=<common_name>`, signed
/// SHA-256 with the key at `key_file` (which must exist). Errors: io, crypto, invalid_argument
/// (a common name with characters a distinguished name cannot hold plainly: `,=+\"<>;#`,
/// control characters, or empty).
Result<std::string> make_csr(const std::filesystem::path& key_file, std::string_view common_name);

/// What a CSR says, after its self-signature has been checked.
struct CsrInfo {
  std::string subject;            ///< "CN=dev1" (mbedTLS DN text)
  std::string common_name;        ///< the single CN of the subject
  std::string public_key_sha256;  ///< fingerprint, lowercase hex
};

/// Parses a PEM (or DER) CSR, requires exactly one CN, an EC P-256/P-384 or RSA ≥ 2048 key and a
/// SHA-256/384/512 signature, and verifies the signature with the CSR's own key (proof that the
/// requester holds the private key). Errors: invalid_argument (unparsable, no or several CNs),
/// crypto (signature does not verify, unsupported key or digest).
Result<CsrInfo> parse_csr(std::string_view pem);

/// What a certificate says.
struct CertInfo {
  std::string subject;                    ///< "CN=dev1"
  std::string common_name;                ///< "" when the subject has no CN
  std::string issuer;                     ///< "CN=reflow node CA"
  std::string serial;                     ///< lowercase hex, no separators
  std::int64_t not_before = 0;            ///< Unix seconds (UTC)
  std::int64_t not_after = 0;             ///< Unix seconds (UTC)
  std::string public_key_sha256;          ///< fingerprint, lowercase hex
  bool is_ca = false;                     ///< basicConstraints CA:TRUE
  std::vector<std::string> dns_names;     ///< subjectAltName dNSName entries
  std::vector<std::string> ip_addresses;  ///< subjectAltName iPAddress entries, textual
};

/// Parses the first certificate of a PEM (or DER) text. Errors: invalid_argument.
Result<CertInfo> parse_certificate(std::string_view pem);

/// Reads and parses the first certificate in `path`. Errors: io, invalid_argument.
Result<CertInfo> read_certificate(const std::filesystem::path& path);

}  // namespace agent::tls
