// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

#include <reflow/core/result.hpp>

namespace agent {

/// The `typ` of a device's signed event (PROTOCOL §3).
inline constexpr std::string_view k_event_typ = "reflow-event+json";
/// The `typ` of a node's signed ack (PROTOCOL §5.1).
inline constexpr std::string_view k_ack_typ = "reflow-ack+json";
/// The `typ` of a node's signed members list (PROTOCOL §5.3, issue 17).
inline constexpr std::string_view k_members_typ = "reflow-members+json";

/// base64url without padding (RFC 7515 §2, RFC 4648 §5), through libsodium.
std::string base64url_encode(std::span<const std::uint8_t> bytes);
std::string base64url_encode(std::string_view bytes);
/// Errors: invalid_argument when `text` is not unpadded base64url.
Result<std::string> base64url_decode(std::string_view text);

/// b64url(SHA-256(bytes)): PROTOCOL §4 `prev` is this over the previous event's signing input.
std::string sha256_b64url(std::string_view bytes);

/// An Ed25519 public key as a JWK (RFC 8037 §2) with its RFC 7638 thumbprint as `kid`.
struct PublicJwk {
  std::array<std::uint8_t, 32> x{};
  std::string kid;  ///< base64url(SHA-256 of `{"crv":"Ed25519","kty":"OKP","x":"…"}`), RFC 7638 §3

  /// `{"kty":"OKP","crv":"Ed25519","x":"…","kid":"…"}` on one line.
  std::string to_json() const;
};

/// Computes the RFC 7638 thumbprint of an Ed25519 public key.
std::string jwk_thumbprint(std::span<const std::uint8_t, 32> public_key);

/// Parses a public JWK (the JSON `keygen` prints). `kid`, when present, must match the
/// thumbprint. Errors: invalid_argument naming the field that is wrong.
Result<PublicJwk> parse_public_jwk(std::string_view json);

/// Where `reflow-agent keygen` writes the public JWK of the key at `key_path`: the same path with
/// its extension replaced by ".jwk" (/var/lib/reflow-agent/device.key →
/// /var/lib/reflow-agent/device.jwk; a name without an extension gets ".jwk" appended). Equal to
/// `key_path` itself when that already ends in ".jwk" (keygen refuses such a key path).
std::filesystem::path public_jwk_path(const std::filesystem::path& key_path);

/// Writes `jwk.to_json()` and "\n" to `path` with mode 0644 whatever the umask (the public key is
/// meant to be copied), replacing an existing file atomically (a temporary file beside it, fsynced,
/// then renamed). Errors: io naming `path` (no permission, no space).
Status write_public_jwk(const PublicJwk& jwk, const std::filesystem::path& path);

/// The device's Ed25519 signing key (libsodium `crypto_sign_*`). Holds the 64-byte secret key in
/// memory locked with sodium_mlock and wipes it on destruction. Not copyable. Signing is
/// thread-safe (const).
class DeviceKey {
 public:
  /// Creates a new random key and writes it to `path` with mode 0600, refusing to overwrite an
  /// existing file (O_EXCL). File format: one line, the 32-byte seed in base64url, then "\n".
  /// Errors: io (exists, no permission, no space).
  static Result<DeviceKey> generate(const std::filesystem::path& path);

  /// Loads a key written by generate(). Refuses, as ssh does, a file that group or others can
  /// read or write (mode & 077 != 0), with a message saying `chmod 600 PATH`.
  /// Errors: io (missing, unreadable), crypto (bad permissions or content).
  static Result<DeviceKey> load(const std::filesystem::path& path);

  DeviceKey(DeviceKey&&) noexcept;
  DeviceKey& operator=(DeviceKey&&) noexcept;
  DeviceKey(const DeviceKey&) = delete;
  DeviceKey& operator=(const DeviceKey&) = delete;
  ~DeviceKey();

  const PublicJwk& public_jwk() const noexcept { return m_public; }

  /// Ed25519 detached signature (RFC 8032) over `message`.
  std::array<std::uint8_t, 64> sign(std::string_view message) const;

 private:
  DeviceKey();
  std::uint8_t* m_secret = nullptr;  // 64 bytes, sodium_malloc'ed
  PublicJwk m_public;
};

/// The signed event as it travels (PROTOCOL §3).
struct Jws {
  std::string protected_b64;  ///< b64url of `{"alg":"EdDSA","kid":"…","typ":"reflow-event+json"}`
  std::string payload_b64;    ///< b64url of the event bytes, exactly as made
  std::string signature_b64;  ///< b64url of the 64-byte Ed25519 signature

  /// `protected + "." + payload`: the bytes that are signed (RFC 7515 §5.1).
  std::string signing_input() const { return protected_b64 + "." + payload_b64; }

  /// `{"protected":"…","payload":"…","signature":"…"}` (flattened JSON serialization,
  /// RFC 7515 §7.2.2), on one line.
  std::string to_envelope() const;
};

/// The protected header for `kid`, base64url-encoded. Constant per key: compute once.
std::string jws_protected_header_b64(std::string_view kid);

/// Signs `payload` (the event bytes) as a JWS with the header of PROTOCOL §3.
/// `protected_b64` is jws_protected_header_b64(key.public_jwk().kid), passed in to avoid
/// recomputing it per event.
Jws jws_sign(const DeviceKey& key, std::string_view protected_b64, std::string_view payload);

/// An envelope taken apart: what jws_parse found (nothing checked but its form) and what
/// jws_verify returns once the signature has verified.
struct ParsedJws {
  Jws jws;
  std::string kid;                           ///< from the protected header
  std::string payload;                       ///< decoded payload bytes
  std::array<std::uint8_t, 64> signature{};  ///< decoded signature (jws.signature_b64)
};

/// Parses a flattened JWS envelope without checking the signature: the header must be exactly
/// `alg` = "EdDSA", a `kid` and `typ` = `typ` (an event's by default; k_ack_typ for a node's
/// ack). Envelopes over 64 KiB are refused (PROTOCOL §3).
/// Errors: invalid_argument naming what is wrong.
Result<ParsedJws> jws_parse(std::string_view envelope, std::string_view typ = k_event_typ);

/// jws_parse, then checks that `kid` matches `key` and the Ed25519 signature verifies; only then
/// returns the parsed envelope. Errors: invalid_argument (malformed), crypto (wrong kid, bad
/// signature).
Result<ParsedJws> jws_verify(std::string_view envelope, const PublicJwk& key,
                             std::string_view typ = k_event_typ);

}  // namespace agent
