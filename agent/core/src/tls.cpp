// SPDX-License-Identifier: AGPL-3.0-or-later
// Keys, CSRs and certificates with mbedTLS 2.28. mbedTLS 2.28 has no writer for subjectAltName or
// extendedKeyUsage, so those extensions are built with its ASN.1 writer (RFC 5280 §4.2.1.6,
// §4.2.1.12) and added with mbedtls_x509write_crt_set_extension.
#include <reflow/core/tls_mbedtls.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <sodium.h>
#include <nlohmann/json.hpp>

#include <mbedtls/asn1write.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>

#include <reflow/core/event.hpp>
#include <reflow/core/units.hpp>

#include <reflow/core/file_io.hpp>

namespace agent::tls::mbed {
namespace {

using file_io::errno_text;
using file_io::Fd;

std::string dn_text(const mbedtls_x509_name* name) {
  char buf[1024];
  int ret = mbedtls_x509_dn_gets(buf, sizeof buf, name);
  return ret < 0 ? std::string("(unprintable name)") : std::string(buf);
}

// The CNs of a name (raw value bytes).
std::vector<std::string> common_names(const mbedtls_x509_name* name) {
  std::vector<std::string> names;
  for (; name != nullptr; name = name->next)
    if (name->oid.p != nullptr && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &name->oid) == 0)
      names.emplace_back(reinterpret_cast<const char*>(name->val.p), name->val.len);
  return names;
}

std::int64_t to_unix(const mbedtls_x509_time& t) {
  return agent::unix_ms_from_utc({t.year, t.mon, t.day, t.hour, t.min, t.sec, 0}) / 1000;
}

}  // namespace

std::string mbed_error(int ret) {
  char text[256];
  mbedtls_strerror(ret, text, sizeof text);
  return fmt::format("{} (mbedTLS -0x{:04x})", text, static_cast<unsigned>(-ret));
}

Rng::Rng() {
  mbedtls_entropy_init(&m_entropy);
  mbedtls_ctr_drbg_init(&m_drbg);
}

Rng::~Rng() {
  mbedtls_ctr_drbg_free(&m_drbg);
  mbedtls_entropy_free(&m_entropy);
}

Status Rng::seed() {
  static constexpr unsigned char k_personalization[] = "reflow-tls";
  int ret = mbedtls_ctr_drbg_seed(&m_drbg, mbedtls_entropy_func, &m_entropy, k_personalization,
                                  sizeof k_personalization - 1);
  if (ret != 0)
    return fail(ErrorCode::crypto,
                fmt::format("cannot seed the random generator: {}", mbed_error(ret)));
  return {};
}

int Rng::random(void* self, unsigned char* out, std::size_t len) {
  return mbedtls_ctr_drbg_random(&static_cast<Rng*>(self)->m_drbg, out, len);
}

// Writes `data` to the new file `fd` and syncs it; on failure removes the file.
Status finish_new_file(Fd& fd, const std::filesystem::path& path, std::string_view data) {
  if (int err = file_io::finish_new(fd, path, data); err != 0)
    return fail(ErrorCode::io, fmt::format("cannot write {}: {}; nothing was kept", path.string(),
                                           errno_text(err)));
  return {};
}

// Creates `path` (never overwriting) with `data`.
Status write_new_file(const std::filesystem::path& path, std::string_view data, mode_t mode) {
  Fd fd = file_io::create_new(path, mode);
  if (fd.get() < 0) {
    int err = errno;
    if (err == EEXIST)
      return fail(ErrorCode::rejected,
                  fmt::format("{} already exists; refusing to overwrite it", path.string()));
    return fail(ErrorCode::io, fmt::format("cannot create {}: {}", path.string(), errno_text(err)));
  }
  return finish_new_file(fd, path, data);
}

Result<std::string> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return fail(ErrorCode::io, fmt::format("cannot read {}: {}", path.string(), errno_text(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string hex(const unsigned char* data, std::size_t len) {
  std::string out(len * 2 + 1, '\0');
  sodium_bin2hex(out.data(), out.size(), data, len);
  out.pop_back();
  return out;
}

Result<std::string> public_key_sha256(mbedtls_pk_context* pk) {
  std::array<unsigned char, 4096> der{};
  int len = mbedtls_pk_write_pubkey_der(pk, der.data(), der.size());
  if (len < 0)
    return fail(ErrorCode::crypto,
                fmt::format("cannot encode the public key: {}", mbed_error(len)));
  // mbedTLS writes DER backwards, at the end of the buffer.
  std::array<unsigned char, crypto_hash_sha256_BYTES> digest{};
  crypto_hash_sha256(digest.data(), der.data() + der.size() - len,
                     static_cast<unsigned long long>(len));
  return hex(digest.data(), digest.size());
}

// "YYYYMMDDhhmmss" UTC, the format of mbedtls_x509write_crt_set_validity.
std::string x509_time(std::int64_t unix_s) {
  const agent::UtcTime t = agent::utc_from_unix_ms(unix_s * 1000);
  return fmt::format("{:04}{:02}{:02}{:02}{:02}{:02}", t.year, t.month, t.day, t.hour, t.minute,
                     t.second);
}

// A CN that mbedtls_x509_string_to_names takes literally: no DN specials, no control characters.
Status check_common_name(std::string_view cn, std::string_view what) {
  if (cn.empty() || cn.size() > 64)
    return fail(ErrorCode::invalid_argument,
                fmt::format("{} must have 1 to 64 characters; got \"{}\"", what, cn));
  for (char c : cn) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || std::string_view(",=+\\\"<>;#").find(c) != std::string_view::npos)
      return fail(ErrorCode::invalid_argument,
                  fmt::format("{} \"{}\" contains a character a certificate name cannot hold "
                              "plainly (one of ,=+\\\"<>;# or a control character)",
                              what, cn));
  }
  if (cn.front() == ' ' || cn.back() == ' ')
    return fail(ErrorCode::invalid_argument,
                fmt::format("{} \"{}\" starts or ends with a space", what, cn));
  return {};
}

Status check_days(std::uint32_t days) {
  if (days < 1 || days > k_max_days)
    return fail(ErrorCode::invalid_argument,
                fmt::format("validity must be 1 to {} days; got {}", k_max_days, days));
  return {};
}

std::int64_t now_or_clock(const std::optional<std::int64_t>& now) {
  return now.value_or(static_cast<std::int64_t>(std::time(nullptr)));
}

Status parse_private_key(mbedtls_pk_context* pk, const std::filesystem::path& path) {
  auto text = read_file(path);
  if (!text) return std::unexpected(text.error());
  int ret = parse_pem_or_der(*text, [&](const unsigned char* buf, std::size_t len) {
    return mbedtls_pk_parse_key(pk, buf, len, nullptr, 0);
  });
  mbedtls_platform_zeroize(text->data(), text->size());
  if (ret != 0)
    return fail(ErrorCode::crypto,
                fmt::format("{} is not a usable private key: {}", path.string(), mbed_error(ret)));
  if (mbedtls_pk_get_type(pk) != MBEDTLS_PK_ECKEY ||
      mbedtls_pk_ec(*pk)->grp.id != MBEDTLS_ECP_DP_SECP256R1)
    return fail(ErrorCode::crypto,
                fmt::format("{} is a {} key, not EC P-256 (secp256r1); move it away to create a "
                            "new key",
                            path.string(), mbedtls_pk_get_name(pk)));
  return {};
}

// Generates an EC P-256 key into `pk` and returns its PEM (SEC 1).
Result<std::string> generate_key(mbedtls_pk_context* pk, Rng& rng) {
  int ret = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
  if (ret == 0)
    ret = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk), Rng::random, &rng);
  if (ret != 0)
    return fail(ErrorCode::crypto,
                fmt::format("cannot generate an EC P-256 key: {}", mbed_error(ret)));
  std::array<unsigned char, 1024> pem{};
  ret = mbedtls_pk_write_key_pem(pk, pem.data(), pem.size());
  if (ret != 0)
    return fail(ErrorCode::crypto, fmt::format("cannot encode the key: {}", mbed_error(ret)));
  std::string text(reinterpret_cast<const char*>(pem.data()));
  mbedtls_platform_zeroize(pem.data(), pem.size());
  return text;
}

// Loads the key at `path` into `pk`, creating it first when the file does not exist.
Result<bool> load_or_create_into(mbedtls_pk_context* pk, const std::filesystem::path& path) {
  Fd fd = file_io::create_new(path, 0600);
  if (fd.get() < 0) {
    int err = errno;
    if (err != EEXIST)
      return fail(ErrorCode::io,
                  fmt::format("cannot create key file {}: {}", path.string(), errno_text(err)));
    if (auto loaded = parse_private_key(pk, path); !loaded) return std::unexpected(loaded.error());
    return false;
  }
  Rng rng;
  auto created = [&]() -> Result<std::string> {
    if (auto seeded = rng.seed(); !seeded) return std::unexpected(seeded.error());
    return generate_key(pk, rng);
  }();
  if (!created) {
    ::unlink(path.c_str());
    return std::unexpected(created.error());
  }
  Status written = finish_new_file(fd, path, *created);
  mbedtls_platform_zeroize(created->data(), created->size());
  if (!written) return std::unexpected(written.error());
  return true;
}

Result<std::string> write_csr(mbedtls_pk_context* key, std::string_view common_name) {
  if (auto ok = check_common_name(common_name, "the common name"); !ok)
    return std::unexpected(ok.error());
  Rng rng;
  if (auto seeded = rng.seed(); !seeded) return std::unexpected(seeded.error());
  CsrWriter csr;
  mbedtls_x509write_csr_set_md_alg(csr.get(), MBEDTLS_MD_SHA256);
  mbedtls_x509write_csr_set_key(csr.get(), key);
  const std::string subject = fmt::format("CN={}", common_name);
  int ret = mbedtls_x509write_csr_set_subject_name(csr.get(), subject.c_str());
  std::array<unsigned char, k_pem_buffer> pem{};
  if (ret == 0)
    ret = mbedtls_x509write_csr_pem(csr.get(), pem.data(), pem.size(), Rng::random, &rng);
  if (ret != 0)
    return fail(ErrorCode::crypto,
                fmt::format("cannot write the CSR for {}: {}", subject, mbed_error(ret)));
  return std::string(reinterpret_cast<const char*>(pem.data()));
}

Result<CertInfo> describe(mbedtls_x509_crt* crt) {
  CertInfo info;
  info.subject = dn_text(&crt->subject);
  auto cns = common_names(&crt->subject);
  if (!cns.empty()) info.common_name = cns.front();
  info.issuer = dn_text(&crt->issuer);
  std::size_t skip = 0;
  while (skip + 1 < crt->serial.len && crt->serial.p[skip] == 0)
    ++skip;
  info.serial = hex(crt->serial.p + skip, crt->serial.len - skip);
  info.not_before = to_unix(crt->valid_from);
  info.not_after = to_unix(crt->valid_to);
  auto fingerprint = public_key_sha256(&crt->pk);
  if (!fingerprint) return std::unexpected(fingerprint.error());
  info.public_key_sha256 = std::move(*fingerprint);
  info.is_ca = (crt->ext_types & MBEDTLS_X509_EXT_BASIC_CONSTRAINTS) != 0 && crt->ca_istrue != 0;
  for (const mbedtls_x509_sequence* san = &crt->subject_alt_names; san != nullptr;
       san = san->next) {
    if (san->buf.p == nullptr) continue;
    const int tag = san->buf.tag & MBEDTLS_ASN1_TAG_VALUE_MASK;
    if (tag == 2) {
      info.dns_names.emplace_back(reinterpret_cast<const char*>(san->buf.p), san->buf.len);
    } else if (tag == 7 && (san->buf.len == 4 || san->buf.len == 16)) {
      char text[INET6_ADDRSTRLEN] = {};
      ::inet_ntop(san->buf.len == 4 ? AF_INET : AF_INET6, san->buf.p, text, sizeof text);
      info.ip_addresses.emplace_back(text);
    }
  }
  return info;
}

// parse_csr, keeping the parsed CSR in `csr` for ca_sign.
Result<CsrInfo> parse_csr_into(Csr& csr, std::string_view pem) {
  int ret = parse_pem_or_der(pem, [&](const unsigned char* buf, std::size_t len) {
    return mbedtls_x509_csr_parse(csr.get(), buf, len);
  });
  if (ret != 0)
    return fail(
        ErrorCode::invalid_argument,
        fmt::format("not a certificate signing request (PKCS#10 PEM): {}", mbed_error(ret)));
  CsrInfo info;
  info.subject = dn_text(&csr.v.subject);
  auto cns = common_names(&csr.v.subject);
  if (cns.size() != 1)
    return fail(ErrorCode::invalid_argument,
                fmt::format("the CSR's subject \"{}\" must have exactly one CN; it has {}",
                            info.subject, cns.size()));
  info.common_name = cns.front();

  const mbedtls_pk_type_t type = mbedtls_pk_get_type(&csr.v.pk);
  if (type == MBEDTLS_PK_ECKEY || type == MBEDTLS_PK_ECKEY_DH || type == MBEDTLS_PK_ECDSA) {
    const auto curve = mbedtls_pk_ec(csr.v.pk)->grp.id;
    if (curve != MBEDTLS_ECP_DP_SECP256R1 && curve != MBEDTLS_ECP_DP_SECP384R1)
      return fail(ErrorCode::crypto, fmt::format("the CSR for {} has an EC key on a curve other "
                                                 "than P-256 or P-384",
                                                 info.subject));
  } else if (type == MBEDTLS_PK_RSA) {
    if (mbedtls_pk_get_bitlen(&csr.v.pk) < 2048)
      return fail(ErrorCode::crypto,
                  fmt::format("the CSR for {} has an RSA key of {} bits; at least 2048 needed",
                              info.subject, mbedtls_pk_get_bitlen(&csr.v.pk)));
  } else {
    return fail(ErrorCode::crypto, fmt::format("the CSR for {} has a {} key; EC P-256 expected",
                                               info.subject, mbedtls_pk_get_name(&csr.v.pk)));
  }
  if (csr.v.sig_md != MBEDTLS_MD_SHA256 && csr.v.sig_md != MBEDTLS_MD_SHA384 &&
      csr.v.sig_md != MBEDTLS_MD_SHA512)
    return fail(ErrorCode::crypto,
                fmt::format("the CSR for {} is signed with a digest other than SHA-256/384/512",
                            info.subject));
  // mbedtls_x509_csr_parse does not check the self-signature; it proves that the requester holds
  // the private key of the public key it asks a certificate for.
  const mbedtls_md_info_t* md = mbedtls_md_info_from_type(csr.v.sig_md);
  std::array<unsigned char, MBEDTLS_MD_MAX_SIZE> hash{};
  ret = mbedtls_md(md, csr.v.cri.p, csr.v.cri.len, hash.data());
  if (ret == 0)
    ret = mbedtls_pk_verify_ext(csr.v.sig_pk, csr.v.sig_opts, &csr.v.pk, csr.v.sig_md, hash.data(),
                                mbedtls_md_get_size(md), csr.v.sig.p, csr.v.sig.len);
  if (ret != 0)
    return fail(ErrorCode::crypto,
                fmt::format("the signature of the CSR for {} does not verify ({}); it was "
                            "damaged or altered: make a new one with `reflow-agent enroll`",
                            info.subject, mbed_error(ret)));
  auto fingerprint = public_key_sha256(&csr.v.pk);
  if (!fingerprint) return std::unexpected(fingerprint.error());
  info.public_key_sha256 = std::move(*fingerprint);
  return info;
}

}  // namespace agent::tls::mbed

namespace agent::tls {

using namespace mbed;

Result<KeyFileResult> load_or_create_key(const std::filesystem::path& path) {
  Pk pk;
  auto created = load_or_create_into(pk.get(), path);
  if (!created) return std::unexpected(created.error());
  auto fingerprint = public_key_sha256(pk.get());
  if (!fingerprint) return std::unexpected(fingerprint.error());
  return KeyFileResult{*created, std::move(*fingerprint)};
}

Result<std::string> make_csr(const std::filesystem::path& key_file, std::string_view common_name) {
  Pk pk;
  if (auto ok = parse_private_key(pk.get(), key_file); !ok) return std::unexpected(ok.error());
  return write_csr(pk.get(), common_name);
}

Result<CsrInfo> parse_csr(std::string_view pem) {
  Csr csr;
  return parse_csr_into(csr, pem);
}

Result<CertInfo> parse_certificate(std::string_view pem) {
  Crt crt;
  int ret = parse_pem_or_der(pem, [&](const unsigned char* buf, std::size_t len) {
    return mbedtls_x509_crt_parse(crt.get(), buf, len);
  });
  // A positive value counts certificates of a bundle that failed; the first one parsed.
  if (ret < 0 || crt.v.raw.p == nullptr)
    return fail(ErrorCode::invalid_argument,
                fmt::format("not an X.509 certificate: {}", mbed_error(ret < 0 ? ret : -1)));
  return describe(crt.get());
}

Result<CertInfo> read_certificate(const std::filesystem::path& path) {
  auto text = read_file(path);
  if (!text) return std::unexpected(text.error());
  auto info = parse_certificate(*text);
  if (!info)
    return fail(info.error().code, fmt::format("{}: {}", path.string(), info.error().message));
  return info;
}

}  // namespace agent::tls
