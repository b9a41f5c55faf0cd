// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/jose.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <sodium.h>
#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/core/file_io.hpp>
#include <reflow/core/json_strict.hpp>

namespace agent {
namespace {

using file_io::errno_text;
using file_io::Fd;

constexpr std::string_view k_alg = "EdDSA";
// A key file is one base64url line; anything much larger is not a key file.
constexpr std::size_t k_max_key_file_bytes = 256;

// libsodium must be initialised before first use; a function-local static makes that happen once,
// thread-safely, whichever entry point comes first.
void ensure_sodium() {
  static const int k_init = sodium_init();
  (void)k_init;
}

// True for the characters of the base64url alphabet (RFC 4648 §5).
bool is_base64url_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

// What group and others may do with a file of `mode`, in words: "readable by group, writable by
// others". Only called when mode & 077 is not zero.
std::string describe_group_other_access(mode_t mode) {
  auto access = [](mode_t bits, mode_t r, mode_t w, mode_t x) {
    std::string out;
    for (auto [bit, word] :
         {std::pair{r, "readable"}, std::pair{w, "writable"}, std::pair{x, "executable"}}) {
      if ((bits & bit) == 0) continue;
      if (!out.empty()) out += " and ";
      out += word;
    }
    return out;
  };
  std::string out;
  for (auto [who, text] : {std::pair{"group", access(mode, S_IRGRP, S_IWGRP, S_IXGRP)},
                           std::pair{"others", access(mode, S_IROTH, S_IWOTH, S_IXOTH)}}) {
    if (text.empty()) continue;
    if (!out.empty()) out += ", ";
    out += text + " by " + who;
  }
  return out;
}

// True when `text` has the shape of a key file `keygen` writes: one line holding 32 bytes in
// base64url. Used only to say so in an error instead of quoting the text.
bool looks_like_key_file(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
    text.remove_suffix(1);
  auto bytes = base64url_decode(text);
  const bool seed = bytes && bytes->size() == 32;
  if (bytes) sodium_memzero(bytes->data(), bytes->size());
  return seed;
}

Result<std::string> decode_member(std::string_view name, std::string_view text) {
  auto decoded = base64url_decode(text);
  if (!decoded)
    return fail(ErrorCode::invalid_argument, fmt::format("{}: {}", name, decoded.error().message));
  return decoded;
}

// The kid of a protected header (base64url text), or what is wrong with the header; the
// messages are jws_parse's without its "JWS envelope: " prefix. The header is exactly PROTOCOL
// §3's three members: an extension such as `crit`, `b64` (RFC 7797) or `zip` changes what was
// signed or how to read it, so a verifier that ignores one reads the envelope differently from
// a library that honours it (RFC 7515 §4.1.11 lets a recipient refuse what it does not use).
Result<std::string> read_header_kid(const std::string& protected_b64, std::string_view typ_wanted) {
  auto bad = [](std::string message) {
    return fail(ErrorCode::invalid_argument, std::move(message));
  };
  auto header_bytes = decode_member("protected", protected_b64);
  if (!header_bytes) return bad(header_bytes.error().message);
  auto parsed = parse_json_strict(*header_bytes, /*max_depth=*/2);
  if (!parsed) return bad("protected: header: " + parsed.error().message);
  nlohmann::ordered_json& header = *parsed;
  if (!header.is_object()) return bad("protected: header is not a JSON object");
  for (const auto& [name, value] : header.items()) {
    if (name != "alg" && name != "kid" && name != "typ")
      return bad(
          fmt::format("protected: {}: header member not allowed; the header is exactly "
                      "{{\"alg\",\"kid\",\"typ\"}} (PROTOCOL §3)",
                      nlohmann::json(name).dump(-1, ' ', true)));
  }
  auto alg = header.find("alg");
  if (alg == header.end() || !alg->is_string())
    return bad("protected: alg: required; expected \"EdDSA\"");
  if (alg->get_ref<const std::string&>() != k_alg)
    return bad(fmt::format("protected: alg: expected \"EdDSA\"; got {}", alg->dump(-1, ' ', true)));
  auto typ = header.find("typ");
  if (typ == header.end() || !typ->is_string() || typ->get_ref<const std::string&>() != typ_wanted)
    return bad(fmt::format("protected: typ: expected \"{}\"; got {}", typ_wanted,
                           typ == header.end() ? "nothing" : typ->dump(-1, ' ', true)));
  auto kid = header.find("kid");
  if (kid == header.end() || !kid->is_string() || kid->get_ref<const std::string&>().size() != 43 ||
      !std::all_of(kid->get_ref<const std::string&>().begin(),
                   kid->get_ref<const std::string&>().end(), is_base64url_char))
    return bad(
        "protected: kid: required, the signing key's RFC 7638 thumbprint (43 base64url "
        "characters)");
  return std::move(kid->get_ref<std::string&>());
}

// read_header_kid, remembering the headers that passed. A key signs every envelope with the same
// header bytes (jws_protected_header_b64), so a node that verifies many events of few keys
// decodes and parses each key's header once, not once per event. Shared by all threads: the
// node's verifier threads last one batch each. Only event headers are remembered: other types
// (an agent's acks) are few, and the cache then never answers for a `typ` it did not check.
Result<std::string> header_kid(const std::string& protected_b64, std::string_view typ_wanted) {
  if (typ_wanted != k_event_typ) return read_header_kid(protected_b64, typ_wanted);
  // Bounds the memory a stream of distinct headers can take (about 200 bytes an entry).
  constexpr std::size_t k_max_headers = 4096;
  static std::shared_mutex mutex;
  static std::unordered_map<std::string, std::string> kids;
  {
    std::shared_lock lock(mutex);
    if (auto it = kids.find(protected_b64); it != kids.end()) return it->second;
  }
  auto kid = read_header_kid(protected_b64, typ_wanted);
  if (!kid) return kid;
  std::unique_lock lock(mutex);
  if (kids.size() >= k_max_headers) kids.clear();
  kids.emplace(protected_b64, *kid);
  return kid;
}

}  // namespace

std::string base64url_encode(std::span<const std::uint8_t> bytes) {
  ensure_sodium();
  constexpr int k_variant = sodium_base64_VARIANT_URLSAFE_NO_PADDING;
  // The length includes the terminating NUL that sodium_bin2base64 writes.
  std::string out(sodium_base64_ENCODED_LEN(bytes.size(), k_variant), '\0');
  sodium_bin2base64(out.data(), out.size(), bytes.data(), bytes.size(), k_variant);
  out.resize(out.size() - 1);
  return out;
}

std::string base64url_encode(std::string_view bytes) {
  return base64url_encode(std::span<const std::uint8_t>(
      reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
}

Result<std::string> base64url_decode(std::string_view text) {
  ensure_sodium();
  std::string out(text.size() * 3 / 4 + 1, '\0');
  std::size_t len = 0;
  // A null b64_end makes libsodium refuse trailing garbage; it also refuses non-zero padding bits,
  // so every byte string has exactly one accepted encoding.
  if (sodium_base642bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), text.data(),
                        text.size(), nullptr, &len, nullptr,
                        sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0) {
    // The text is never quoted: it may be a secret put where a public value belongs.
    auto bad_char = std::find_if_not(text.begin(), text.end(), is_base64url_char);
    return fail(ErrorCode::invalid_argument,
                bad_char != text.end()
                    ? fmt::format("expected unpadded base64url (A-Z, a-z, 0-9, '-', '_'); the "
                                  "{}-character text has another character at position {}",
                                  text.size(), bad_char - text.begin() + 1)
                    : fmt::format("expected unpadded base64url; {} characters is not a length "
                                  "base64url has, or its last character carries stray bits",
                                  text.size()));
  }
  out.resize(len);
  return out;
}

std::string sha256_b64url(std::string_view bytes) {
  ensure_sodium();
  std::array<std::uint8_t, crypto_hash_sha256_BYTES> digest{};
  crypto_hash_sha256(digest.data(), reinterpret_cast<const unsigned char*>(bytes.data()),
                     bytes.size());
  return base64url_encode(digest);
}

std::string jwk_thumbprint(std::span<const std::uint8_t, 32> public_key) {
  // RFC 7638 §3: required members only, in lexicographic order, no whitespace. nlohmann::json
  // keeps its keys sorted, so dump() yields exactly that form.
  nlohmann::json members = {
      {"kty", "OKP"}, {"crv", "Ed25519"}, {"x", base64url_encode(public_key)}};
  return sha256_b64url(members.dump());
}

std::string PublicJwk::to_json() const {
  nlohmann::ordered_json jwk = {
      {"kty", "OKP"}, {"crv", "Ed25519"}, {"x", base64url_encode(x)}, {"kid", kid}};
  return jwk.dump();
}

Result<PublicJwk> parse_public_jwk(std::string_view json) {
  auto bad = [](std::string message) {
    return fail(ErrorCode::invalid_argument, std::move(message));
  };
  // Never quotes the text: a private key put where a public one belongs must not be printed.
  if (looks_like_key_file(json))
    return bad(
        "public JWK: this is a private key file (a 32-byte seed, as `reflow-agent keygen` writes "
        "it); pass the public JWK that keygen printed, never the key file");
  auto parsed = parse_json_strict(json, /*max_depth=*/2);
  if (!parsed || !parsed->is_object())
    return bad(
        fmt::format("public JWK: expected a JSON object such as "
                    "{{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"…\"}}; {}",
                    parsed ? "got another JSON value" : parsed.error().message));
  nlohmann::ordered_json& doc = *parsed;
  if (doc.contains("d"))
    return bad("public JWK: d: this is a private key; pass the public JWK that keygen prints");
  auto kty = doc.find("kty");
  if (kty == doc.end() || !kty->is_string() || *kty != "OKP")
    return bad("public JWK: kty: expected \"OKP\" (RFC 8037 §2)");
  auto crv = doc.find("crv");
  if (crv == doc.end() || !crv->is_string() || *crv != "Ed25519")
    return bad("public JWK: crv: expected \"Ed25519\"");
  auto x = doc.find("x");
  if (x == doc.end() || !x->is_string())
    return bad("public JWK: x: required, the base64url public key");
  auto x_bytes = base64url_decode(x->get_ref<const std::string&>());
  if (!x_bytes) return bad("public JWK: x: " + x_bytes.error().message);
  if (x_bytes->size() != 32)
    return bad(
        fmt::format("public JWK: x: expected 32 bytes for Ed25519; got {}", x_bytes->size()));

  PublicJwk out;
  std::memcpy(out.x.data(), x_bytes->data(), out.x.size());
  out.kid = jwk_thumbprint(out.x);
  if (auto kid = doc.find("kid"); kid != doc.end()) {
    if (!kid->is_string()) return bad("public JWK: kid: expected a string");
    if (*kid != out.kid)
      return bad(fmt::format("public JWK: kid: \"{}\" is not the RFC 7638 thumbprint of x (\"{}\")",
                             kid->get_ref<const std::string&>(), out.kid));
  }
  return out;
}

DeviceKey::DeviceKey() {
  ensure_sodium();
  m_secret = static_cast<std::uint8_t*>(sodium_malloc(crypto_sign_SECRETKEYBYTES));
}

DeviceKey::DeviceKey(DeviceKey&& other) noexcept
    : m_secret(std::exchange(other.m_secret, nullptr)), m_public(std::move(other.m_public)) {}

DeviceKey& DeviceKey::operator=(DeviceKey&& other) noexcept {
  if (this != &other) {
    std::swap(m_secret, other.m_secret);
    std::swap(m_public, other.m_public);
  }
  return *this;
}

DeviceKey::~DeviceKey() {
  if (m_secret != nullptr) {
    sodium_memzero(m_secret, crypto_sign_SECRETKEYBYTES);
    sodium_free(m_secret);
  }
}

Result<DeviceKey> DeviceKey::generate(const std::filesystem::path& path) {
  DeviceKey key;
  if (key.m_secret == nullptr)
    return fail(ErrorCode::io, "cannot allocate locked memory for the device key");
  std::array<std::uint8_t, crypto_sign_PUBLICKEYBYTES> pk{};
  std::array<std::uint8_t, crypto_sign_SEEDBYTES> seed{};
  randombytes_buf(seed.data(), seed.size());
  crypto_sign_seed_keypair(pk.data(), key.m_secret, seed.data());
  std::string line = base64url_encode(seed) + "\n";
  sodium_memzero(seed.data(), seed.size());

  Status written = [&]() -> Status {
    Fd fd = file_io::create_new(path, 0600);
    if (fd.get() < 0) {
      int err = errno;
      if (err == EEXIST)
        return fail(ErrorCode::io,
                    fmt::format("key file {} already exists; refusing to overwrite it (the events "
                                "it signed name its kid). Move it away first to make a new key",
                                path.string()));
      return fail(ErrorCode::io,
                  fmt::format("cannot create key file {}: {}", path.string(), errno_text(err)));
    }
    if (int err = file_io::finish_new(fd, path, line); err != 0)
      return fail(ErrorCode::io, fmt::format("cannot write key file {}: {}; nothing was kept",
                                             path.string(), errno_text(err)));
    return {};
  }();
  sodium_memzero(line.data(), line.size());
  if (!written) return std::unexpected(written.error());

  std::memcpy(key.m_public.x.data(), pk.data(), pk.size());
  key.m_public.kid = jwk_thumbprint(key.m_public.x);
  return key;
}

std::filesystem::path public_jwk_path(const std::filesystem::path& key_path) {
  return std::filesystem::path(key_path).replace_extension(".jwk");
}

Status write_public_jwk(const PublicJwk& jwk, const std::filesystem::path& path) {
  std::filesystem::path temporary = path;
  temporary += ".tmp";
  ::unlink(temporary.c_str());  // left behind by a crash: it only ever holds a public key
  Fd fd = file_io::create_new(temporary, 0644);
  if (fd.get() < 0)
    return fail(ErrorCode::io, fmt::format("cannot write the public key file {}: {}", path.string(),
                                           errno_text(errno)));
  // create_new's mode passes through the umask (0077 under systemd): set it explicitly.
  int err = ::fchmod(fd.get(), 0644) == 0 ? 0 : errno;
  if (err == 0) err = file_io::finish_new(fd, temporary, jwk.to_json() + "\n");
  if (err == 0 && ::rename(temporary.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(temporary.c_str());
    return fail(ErrorCode::io, fmt::format("cannot write the public key file {}: {}", path.string(),
                                           errno_text(err)));
  }
  file_io::fsync_parent(path);
  return {};
}

Result<DeviceKey> DeviceKey::load(const std::filesystem::path& path) {
  DeviceKey key;
  if (key.m_secret == nullptr)
    return fail(ErrorCode::io, "cannot allocate locked memory for the device key");
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    int err = errno;
    return fail(ErrorCode::io,
                fmt::format("cannot open key file {}: {}{}", path.string(), errno_text(err),
                            err == ENOENT ? "; create one with `reflow-agent keygen`" : ""));
  }
  // fstat on the open descriptor, not stat on the path, so the file checked is the file read.
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    return fail(ErrorCode::io,
                fmt::format("cannot stat key file {}: {}", path.string(), errno_text(errno)));
  if (!S_ISREG(st.st_mode))
    return fail(ErrorCode::io, fmt::format("key file {} is not a regular file", path.string()));
  if ((st.st_mode & 077) != 0)
    return fail(
        ErrorCode::crypto,
        fmt::format("key file {} is {} (mode {:04o}); run: chmod 600 {}", path.string(),
                    describe_group_other_access(st.st_mode), st.st_mode & 07777, path.string()));

  std::array<char, k_max_key_file_bytes + 1> buf{};
  std::size_t len = 0;
  while (len < buf.size()) {
    ssize_t n = ::read(fd.get(), buf.data() + len, buf.size() - len);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      sodium_memzero(buf.data(), buf.size());
      return fail(ErrorCode::io,
                  fmt::format("cannot read key file {}: {}", path.string(), errno_text(err)));
    }
    if (n == 0) break;
    len += static_cast<std::size_t>(n);
  }
  std::string_view text(buf.data(), len);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
    text.remove_suffix(1);

  Result<std::string> seed = fail(ErrorCode::crypto, "key file too large");
  if (len <= k_max_key_file_bytes) seed = base64url_decode(text);
  sodium_memzero(buf.data(), buf.size());
  if (!seed || seed->size() != crypto_sign_SEEDBYTES) {
    if (seed) sodium_memzero(seed->data(), seed->size());
    return fail(ErrorCode::crypto,
                fmt::format("key file {} does not hold a key: expected one line with a 32-byte "
                            "Ed25519 seed in base64url, as `reflow-agent keygen` writes",
                            path.string()));
  }
  std::array<std::uint8_t, crypto_sign_PUBLICKEYBYTES> pk{};
  crypto_sign_seed_keypair(pk.data(), key.m_secret,
                           reinterpret_cast<const unsigned char*>(seed->data()));
  sodium_memzero(seed->data(), seed->size());
  std::memcpy(key.m_public.x.data(), pk.data(), pk.size());
  key.m_public.kid = jwk_thumbprint(key.m_public.x);
  return key;
}

std::array<std::uint8_t, 64> DeviceKey::sign(std::string_view message) const {
  std::array<std::uint8_t, crypto_sign_BYTES> sig{};
  crypto_sign_detached(sig.data(), nullptr, reinterpret_cast<const unsigned char*>(message.data()),
                       message.size(), m_secret);
  return sig;
}

std::string Jws::to_envelope() const {
  nlohmann::ordered_json envelope = {
      {"protected", protected_b64}, {"payload", payload_b64}, {"signature", signature_b64}};
  return envelope.dump();
}

std::string jws_protected_header_b64(std::string_view kid) {
  nlohmann::ordered_json header = {
      {"alg", std::string(k_alg)}, {"kid", std::string(kid)}, {"typ", std::string(k_event_typ)}};
  return base64url_encode(header.dump());
}

Jws jws_sign(const DeviceKey& key, std::string_view protected_b64, std::string_view payload) {
  Jws jws;
  jws.protected_b64 = std::string(protected_b64);
  jws.payload_b64 = base64url_encode(payload);
  jws.signature_b64 = base64url_encode(key.sign(jws.signing_input()));
  return jws;
}

Result<ParsedJws> jws_parse(std::string_view envelope, std::string_view typ) {
  auto bad = [](std::string message) {
    return fail(ErrorCode::invalid_argument, "JWS envelope: " + std::move(message));
  };
  if (envelope.size() > k_max_envelope_bytes)
    return bad(fmt::format("{} bytes; at most {} are allowed (PROTOCOL §3)", envelope.size(),
                           k_max_envelope_bytes));
  auto parsed = parse_json_strict(envelope, /*max_depth=*/2);
  if (!parsed || !parsed->is_object())
    return bad(
        fmt::format("expected a JSON object {{\"protected\",\"payload\",\"signature\"}} "
                    "(RFC 7515 §7.2.2); {}",
                    parsed ? "got another JSON value" : parsed.error().message));
  nlohmann::ordered_json& doc = *parsed;
  for (const auto& [name, value] : doc.items()) {
    if (name != "protected" && name != "payload" && name != "signature")
      return bad(
          fmt::format("{}: unexpected member; only protected, payload and signature are "
                      "allowed",
                      name));
  }
  ParsedJws out;
  for (auto [name, target] :
       {std::pair{"protected", &out.jws.protected_b64}, std::pair{"payload", &out.jws.payload_b64},
        std::pair{"signature", &out.jws.signature_b64}}) {
    auto it = doc.find(name);
    if (it == doc.end()) return bad(fmt::format("{}: required", name));
    if (!it->is_string()) return bad(fmt::format("{}: expected a base64url string", name));
    *target = std::move(it->get_ref<std::string&>());
  }

  auto kid = header_kid(out.jws.protected_b64, typ);
  if (!kid) return bad(kid.error().message);
  out.kid = std::move(*kid);

  auto payload = decode_member("payload", out.jws.payload_b64);
  if (!payload) return bad(payload.error().message);
  out.payload = std::move(*payload);

  auto signature = decode_member("signature", out.jws.signature_b64);
  if (!signature) return bad(signature.error().message);
  if (signature->size() != crypto_sign_BYTES)
    return bad(fmt::format("signature: expected {} bytes for Ed25519; got {}", crypto_sign_BYTES,
                           signature->size()));
  std::memcpy(out.signature.data(), signature->data(), out.signature.size());
  return out;
}

Result<ParsedJws> jws_verify(std::string_view envelope, const PublicJwk& key,
                             std::string_view typ) {
  auto parsed = jws_parse(envelope, typ);
  if (!parsed) return parsed;
  const std::string expected_kid = key.kid.empty() ? jwk_thumbprint(key.x) : key.kid;
  if (parsed->kid != expected_kid)
    return fail(ErrorCode::crypto, fmt::format("JWS signed by key \"{}\"; expected key \"{}\"",
                                               parsed->kid, expected_kid));
  const std::string input = parsed->jws.signing_input();
  ensure_sodium();
  if (crypto_sign_verify_detached(parsed->signature.data(),
                                  reinterpret_cast<const unsigned char*>(input.data()),
                                  input.size(), key.x.data()) != 0)
    return fail(ErrorCode::crypto,
                fmt::format("JWS signature does not verify with key \"{}\": the envelope was "
                            "altered or signed by another key",
                            expected_kid));
  return parsed;
}

}  // namespace agent
