// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/signed_note.hpp>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <vector>

#include <fmt/format.h>
#include <sodium.h>

namespace agent::note {
namespace {

// c2sp.org/signed-note: each signature line starts with U+2014 EM DASH and a space.
constexpr std::string_view k_sig_prefix = "\xE2\x80\x94 ";
// c2sp.org/signed-note, "Signature types": 0x01 is Ed25519.
constexpr std::uint8_t k_ed25519_type = 0x01;
// A checkpoint's note is small; a note much larger is not ours to read (the spec asks verifiers
// to bound it, and to take at least 16 signatures).
constexpr std::size_t k_max_note_bytes = 64 * 1024;

void ensure_sodium() {
  static const int k_init = sodium_init();
  (void)k_init;
}

std::unexpected<Error> bad(std::string message) {
  return fail(ErrorCode::invalid_argument, "signed note: " + std::move(message));
}

std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    const auto end = text.find('\n');
    lines.push_back(text.substr(0, end));
    text.remove_prefix(end + 1);
  }
  return lines;
}

}  // namespace

std::string base64_encode(std::span<const std::uint8_t> bytes) {
  ensure_sodium();
  constexpr int k_variant = sodium_base64_VARIANT_ORIGINAL;
  std::string out(sodium_base64_ENCODED_LEN(bytes.size(), k_variant), '\0');
  sodium_bin2base64(out.data(), out.size(), bytes.data(), bytes.size(), k_variant);
  out.resize(out.size() - 1);  // the NUL sodium_bin2base64 writes
  return out;
}

Result<std::string> base64_decode(std::string_view text) {
  ensure_sodium();
  std::string out(text.size() * 3 / 4 + 1, '\0');
  std::size_t len = 0;
  if (sodium_base642bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), text.data(),
                        text.size(), nullptr, &len, nullptr, sodium_base64_VARIANT_ORIGINAL) != 0)
    return fail(
        ErrorCode::invalid_argument,
        fmt::format("expected padded standard base64 (RFC 4648 §4) of {} characters", text.size()));
  out.resize(len);
  return out;
}

bool is_valid_key_name(std::string_view name) {
  if (name.empty()) return false;
  return std::none_of(name.begin(), name.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u <= 0x20 || u == 0x7F || c == '+';
  });
}

std::array<std::uint8_t, 4> key_id(std::string_view name,
                                   std::span<const std::uint8_t, 32> public_key) {
  ensure_sodium();
  crypto_hash_sha256_state state;
  crypto_hash_sha256_init(&state);
  crypto_hash_sha256_update(&state, reinterpret_cast<const unsigned char*>(name.data()),
                            name.size());
  const std::array<std::uint8_t, 2> separator{0x0A, k_ed25519_type};
  crypto_hash_sha256_update(&state, separator.data(), separator.size());
  crypto_hash_sha256_update(&state, public_key.data(), public_key.size());
  std::array<std::uint8_t, crypto_hash_sha256_BYTES> hash{};
  crypto_hash_sha256_final(&state, hash.data());
  return {hash[0], hash[1], hash[2], hash[3]};
}

std::string verifier_key(std::string_view name, std::span<const std::uint8_t, 32> public_key) {
  const auto id = key_id(name, public_key);
  std::array<std::uint8_t, 33> typed{};
  typed[0] = k_ed25519_type;
  std::copy(public_key.begin(), public_key.end(), typed.begin() + 1);
  return fmt::format("{}+{:02x}{:02x}{:02x}{:02x}+{}", name, id[0], id[1], id[2], id[3],
                     base64_encode(typed));
}

std::string sign(const DeviceKey& key, std::string_view name, std::string_view text) {
  const auto signature = key.sign(text);
  const auto id = key_id(name, key.public_jwk().x);
  std::array<std::uint8_t, 4 + 64> blob{};
  std::copy(id.begin(), id.end(), blob.begin());
  std::copy(signature.begin(), signature.end(), blob.begin() + 4);
  return fmt::format("{}\n{}{} {}\n", text, k_sig_prefix, name, base64_encode(blob));
}

std::string checkpoint_text(const Checkpoint& checkpoint) {
  return fmt::format("{}\n{}\n{}\n", checkpoint.origin, checkpoint.size,
                     base64_encode(checkpoint.root));
}

std::string sign_checkpoint(const DeviceKey& key, const Checkpoint& checkpoint) {
  return sign(key, checkpoint.origin, checkpoint_text(checkpoint));
}

Result<Checkpoint> verify_checkpoint(std::string_view note, std::string_view name,
                                     const PublicJwk& key) {
  if (note.size() > k_max_note_bytes)
    return bad(fmt::format("{} bytes; at most {} are read", note.size(), k_max_note_bytes));
  if (!note.ends_with('\n')) return bad("does not end in a newline");
  if (std::any_of(note.begin(), note.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x20 && c != '\n'; }))
    return bad("holds a control character other than newline");
  // The text ends at the last blank line: "\n\n" whose second newline starts the signatures.
  const auto split = note.rfind("\n\n");
  if (split == note.npos) return bad("no blank line before the signatures");
  const std::string_view text = note.substr(0, split + 1);
  const std::string_view signatures = note.substr(split + 2);

  const auto want_id = key_id(name, key.x);
  bool found = false;
  for (std::string_view line : split_lines(signatures)) {
    if (!line.starts_with(k_sig_prefix)) return bad("a signature line does not start with \"— \"");
    line.remove_prefix(k_sig_prefix.size());
    const auto space = line.find(' ');
    if (space == line.npos) return bad("a signature line has no key name and signature");
    if (line.substr(0, space) != name) continue;
    auto blob = base64_decode(line.substr(space + 1));
    if (!blob || blob->size() < 4) return bad("a signature of the key name is not base64");
    if (std::memcmp(blob->data(), want_id.data(), want_id.size()) != 0) continue;
    if (blob->size() != 4 + crypto_sign_BYTES)
      return fail(ErrorCode::crypto, "signed note: the key's signature is not 64 bytes");
    if (crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(blob->data() + 4),
                                    reinterpret_cast<const unsigned char*>(text.data()),
                                    text.size(), key.x.data()) != 0)
      return fail(ErrorCode::crypto,
                  fmt::format("signed note: the signature of {} does not verify", name));
    found = true;
  }
  if (!found)
    return fail(ErrorCode::crypto,
                fmt::format("signed note: no signature of the key {} ({})", name, key.kid));

  const auto lines = split_lines(text);
  if (lines.size() < 3) return bad("a checkpoint has at least three lines");
  Checkpoint checkpoint;
  checkpoint.origin = std::string(lines[0]);
  if (checkpoint.origin != name)
    return bad(fmt::format("the checkpoint's origin is not the key name {}", name));
  const std::string_view size = lines[1];
  const auto [end, ec] = std::from_chars(size.data(), size.data() + size.size(), checkpoint.size);
  if (ec != std::errc{} || end != size.data() + size.size() || size.empty() ||
      (size.size() > 1 && size[0] == '0'))
    return bad("the tree size is not a decimal number");
  auto root = base64_decode(lines[2]);
  if (!root || root->size() != checkpoint.root.size())
    return bad("the root hash is not the base64 of 32 bytes");
  std::memcpy(checkpoint.root.data(), root->data(), checkpoint.root.size());
  return checkpoint;
}

}  // namespace agent::note
