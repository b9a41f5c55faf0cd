// SPDX-License-Identifier: AGPL-3.0-or-later
// The node's small certificate authority for the broker's mutual TLS (`reflow-ingest ca`), built
// on the X.509 basics of reflow/core/tls.hpp (whose conventions hold here: EC P-256 keys in PEM,
// 0600, never overwritten; fingerprints the hex SHA-256 of the DER SubjectPublicKeyInfo).
//
// A CN is an identity at the broker (Mosquitto's `use_identity_as_username`, PROTOCOL §2): a
// device's CN is its PROTOCOL §1 device id, and a service (e.g. `ingest@node`) gets a CN that
// can never be a device id.
//
// Every function is thread-safe (each call has its own random generator and contexts); they lock
// `issued.jsonl` so that concurrent `ca sign` runs do not race on its checks.
//
// One owner: the CA's files belong to the user who owns the CA directory (the package's
// reflow-ingest service user). A function run by another user refuses (rejected, naming the owner
// and `sudo -u OWNER reflow-ingest ca …`) before it touches anything; run as root it works and
// gives every file it creates in the CA directory to that owner, so that the service user can
// go on using the CA (issue 15).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/result.hpp>
#include <reflow/core/tls.hpp>

namespace ingest {

using agent::Result;
using agent::Status;
using agent::tls::CertInfo;

/// What a certificate is for; decides its extensions (RFC 5280 §4.2.1.3, §4.2.1.12).
enum class CertRole {
  device,  ///< a reflow-agent: CN = device id; digitalSignature|keyAgreement, clientAuth
  server,  ///< the broker: subjectAltName DNS/IP; digitalSignature|keyAgreement, serverAuth
  client,  ///< a service identity such as `ingest@node`: like device, CN is not a device id
};

/// "device", "server", "client" (the `role` of issued.jsonl).
std::string_view to_string(CertRole role) noexcept;

// // Files in the CA directory: `ca.key` (EC P-256, 0600), `ca.crt` (self-signed, basicConstraints
// CA:TRUE pathlen 0, keyUsage keyCertSign|cRLSign) and `issued.jsonl`, one JSON object per issued
// certificate: {"cn","role","serial","fingerprint","not_before","not_after","issued"} (times Unix
// seconds). issued.jsonl is the CA's memory of which key holds which CN.

inline constexpr std::string_view k_ca_key_file = "ca.key";
inline constexpr std::string_view k_ca_cert_file = "ca.crt";
inline constexpr std::string_view k_issued_file = "issued.jsonl";
inline constexpr std::string_view k_default_ca_common_name = "reflow node CA";

struct CaInitOptions {
  std::string common_name{k_default_ca_common_name};
  std::uint32_t days = 3650;             ///< validity of the CA certificate, 1 … 36500
  std::optional<std::int64_t> now_unix;  ///< issuing time; default: the system clock
};

/// Creates a CA in `ca_dir` (created with mode 0700 when missing): ca.key and ca.crt. Refuses
/// when ca.key or ca.crt already exists (rejected; nothing is touched). The owner of a new CA is
/// the owner of `ca_dir`'s parent (the data directory): run as root, the directory and files are
/// given to that user; run as another user than that owner, it refuses (rejected). Returns the CA
/// certificate's description. Errors: rejected, invalid_argument (common name, days), io, crypto.
Result<CertInfo> ca_init(const std::filesystem::path& ca_dir, const CaInitOptions& options);

struct IssueOptions {
  CertRole role = CertRole::device;
  std::uint32_t days = 825;        ///< validity, 1 … 36500
  std::vector<std::string> hosts;  ///< server: DNS names and IP addresses for the SAN
  bool replace = false;  ///< issue although the CN already holds a certificate for another key
  std::optional<std::int64_t> now_unix;  ///< issuing time; default: the system clock
};

/// An issued certificate.
struct Issued {
  std::string pem;
  CertInfo info;
};

/// Hands an issued certificate out (writes it to its file, prints it) before it is recorded; an
/// error keeps it from being recorded in issued.jsonl, and is what ca_sign returns.
using Deliver = std::function<Status(const Issued&)>;

/// Issues a certificate for the key in `csr_pem`, subject `CN=<the CSR's CN>` (nothing else of the
/// CSR's subject or extensions is copied), a random positive 128-bit serial, not_before one hour
/// in the past (device clocks drift), hands it to `deliver` (when set) and only when that
/// succeeded appends it to issued.jsonl: a certificate nobody received is never recorded. A
/// failing append after `deliver` returns io, saying that the certificate was handed out but not
/// recorded. Errors about issued.jsonl name that file.
/// Refusals (rejected, nothing issued, the message says how to proceed):
/// - the CSR's signature does not verify (crypto);
/// - role device: the CN is not a valid device id (PROTOCOL §1);
/// - role client: the CN IS a valid device id, or has characters outside `[A-Za-z0-9._@-]`;
/// - role server: `hosts` is empty or holds something that is neither a DNS name nor an IP address;
/// - the CN already has a certificate of another role;
/// - the CN already has a certificate for a different public key, unless `replace` (the operator
///   confirms that the device's key was replaced; the old certificate stays valid until it
///   expires, so revoke access at the broker if the old key is compromised).
/// Errors besides: not_found (no CA in `ca_dir`: run `reflow-ingest ca init`), io, crypto.
Result<Issued> ca_sign(const std::filesystem::path& ca_dir, std::string_view csr_pem,
                       const IssueOptions& options, const Deliver& deliver = {});

/// Loads or creates the key at `key_file` (see load_or_create_key), makes a CSR with
/// `common_name` (for role server, empty means the first host) and issues it with ca_sign.
/// For `reflow-ingest ca server` and `ca client`, whose keys are made on the node itself.
/// `deliver` as for ca_sign.
Result<Issued> ca_issue_with_key(const std::filesystem::path& ca_dir,
                                 const std::filesystem::path& key_file,
                                 std::string_view common_name, const IssueOptions& options,
                                 const Deliver& deliver = {});

/// Refuses (rejected) when the calling process is neither root nor the owner of `ca_dir` (or, when
/// `ca_dir` does not exist yet, of its parent), naming the owner and saying how to run as it:
/// "the CA in DIR belongs to the user reflow-ingest; run the command as that user: sudo -u
/// reflow-ingest reflow-ingest ca …". A directory that does not exist at all passes (there is no
/// owner to keep). ca_init, ca_sign and ca_issue_with_key call it first.
Status check_ca_user(const std::filesystem::path& ca_dir);

/// True when `name` may be a client (service) identity: 1 … 64 characters of `[A-Za-z0-9._@-]`
/// and not a valid device id, so no device can ever hold it.
bool is_valid_service_name(std::string_view name) noexcept;

}  // namespace ingest
