// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

// Signed notes and transparency-log checkpoints, as C2SP specifies them:
// - c2sp.org/signed-note: a text ending in a newline, a blank line, then one line per signature,
//   "— NAME base64(key ID || signature)\n" (U+2014 em dash, space, key name, space, standard
//   base64 of RFC 4648 §4). For Ed25519 (signature type 0x01) the signature is RFC 8032 over the
//   note text, and the key ID is the first four bytes of SHA-256(NAME || 0x0A || 0x01 || the
//   32-byte public key).
// - c2sp.org/tlog-checkpoint: the note text of a checkpoint is three lines, the origin (a
//   schema-less URL naming the log), the tree size in decimal ASCII, and the base64 of the root
//   hash (RFC 9162 §2.1.1 Merkle tree hash), each ending in a newline.
// golang.org/x/mod/sumdb/note implements the same format; a checkpoint made here verifies there.

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include <reflow/core/jose.hpp>
#include <reflow/core/merkle.hpp>
#include <reflow/core/result.hpp>

namespace agent::note {

/// Standard base64 with padding (RFC 4648 §4), through libsodium: signed notes and checkpoints
/// use it, not base64url.
std::string base64_encode(std::span<const std::uint8_t> bytes);
/// Errors: invalid_argument when `text` is not padded standard base64.
Result<std::string> base64_decode(std::string_view text);

/// Whether `name` may name a key of a signed note: non-empty, no white space and no '+'
/// (c2sp.org/signed-note), printable ASCII or UTF-8 without control characters.
bool is_valid_key_name(std::string_view name);

/// The Ed25519 key ID of c2sp.org/signed-note: SHA-256(name || 0x0A || 0x01 || public_key)[:4].
std::array<std::uint8_t, 4> key_id(std::string_view name,
                                   std::span<const std::uint8_t, 32> public_key);

/// The verifier key in golang.org/x/mod/sumdb/note's text form, which auditors' tools take:
/// "NAME+KEYID+base64(0x01 || public_key)", KEYID as 8 lower-case hex digits.
std::string verifier_key(std::string_view name, std::span<const std::uint8_t, 32> public_key);

/// Signs `text` (which must end in "\n") with `key` under the key name `name`: returns `text`,
/// a blank line and the signature line (c2sp.org/signed-note).
std::string sign(const DeviceKey& key, std::string_view name, std::string_view text);

/// A checkpoint of a log (c2sp.org/tlog-checkpoint).
struct Checkpoint {
  std::string origin;
  std::uint64_t size = 0;
  merkle::Hash root{};
};

/// The note text of `checkpoint`: "ORIGIN\nSIZE\nbase64(ROOT)\n".
std::string checkpoint_text(const Checkpoint& checkpoint);

/// checkpoint_text signed by `key` under the key name `checkpoint.origin` (the C2SP convention:
/// a log's key is named by its origin).
std::string sign_checkpoint(const DeviceKey& key, const Checkpoint& checkpoint);

/// Verifies a signed checkpoint note: a signature line of key name `name` with the key ID of
/// `key` must be present and verify (lines of other keys are ignored, as the spec says), and
/// the text must be a checkpoint whose origin is `name`. Errors: invalid_argument (not a signed
/// note, not a checkpoint), crypto (no signature of this key, or it does not verify).
Result<Checkpoint> verify_checkpoint(std::string_view note, std::string_view name,
                                     const PublicJwk& key);

}  // namespace agent::note
