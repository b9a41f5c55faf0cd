// SPDX-License-Identifier: AGPL-3.0-or-later
// The mbedTLS 2.28 layer under tls.hpp: RAII for its contexts, a seeded random generator, key,
// CSR and certificate helpers. tls.cpp builds the X.509 basics on it, and the node's certificate
// authority (agent/node/src/ca.cpp) issues certificates with it. It exposes mbedTLS types, so
// only code that speaks mbedTLS itself includes it; everything else uses tls.hpp. Not
// installed. Formats and conventions are those of tls.hpp (EC P-256 keys in SEC 1 PEM, 0600,
// created with O_EXCL; fingerprints the hex SHA-256 of the DER SubjectPublicKeyInfo).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>

#include <reflow/core/file_io.hpp>
#include <reflow/core/result.hpp>
#include <reflow/core/tls.hpp>

namespace agent::tls::mbed {

inline constexpr std::int64_t k_day_s = 86400;
/// Certificate validity at most, in days.
inline constexpr std::uint32_t k_max_days = 36500;
/// Device clocks drift (a Pi has no RTC until NTP answers): a certificate valid "from now" could
/// be refused by a broker whose clock is a little behind the CA's, so not_before is this far back.
inline constexpr std::int64_t k_backdate_s = 3600;
/// Room for one PEM certificate or CSR written by mbedTLS, in bytes.
inline constexpr std::size_t k_pem_buffer = 8192;

/// RAII for mbedTLS contexts (init/free pairs).
template <typename T, void (*Init)(T*), void (*Free)(T*)>
struct Ctx {
  T v;
  Ctx() { Init(&v); }
  ~Ctx() { Free(&v); }
  Ctx(const Ctx&) = delete;
  Ctx& operator=(const Ctx&) = delete;
  T* get() { return &v; }
};
using Pk = Ctx<mbedtls_pk_context, mbedtls_pk_init, mbedtls_pk_free>;
using Crt = Ctx<mbedtls_x509_crt, mbedtls_x509_crt_init, mbedtls_x509_crt_free>;
using Csr = Ctx<mbedtls_x509_csr, mbedtls_x509_csr_init, mbedtls_x509_csr_free>;
using CrtWriter =
    Ctx<mbedtls_x509write_cert, mbedtls_x509write_crt_init, mbedtls_x509write_crt_free>;
using CsrWriter =
    Ctx<mbedtls_x509write_csr, mbedtls_x509write_csr_init, mbedtls_x509write_csr_free>;
using Mpi = Ctx<mbedtls_mpi, mbedtls_mpi_init, mbedtls_mpi_free>;

/// mbedTLS's text for an error code, with the code: "… (mbedTLS -0x2700)".
std::string mbed_error(int ret);

/// A seeded CTR_DRBG per call: the contexts are not thread-safe and calls are rare.
class Rng {
 public:
  Rng();
  ~Rng();
  Rng(const Rng&) = delete;
  Rng& operator=(const Rng&) = delete;

  /// Seeds from the system's entropy. Errors: crypto.
  Status seed();
  /// mbedTLS's f_rng signature; `self` is an Rng.
  static int random(void* self, unsigned char* out, std::size_t len);

 private:
  mbedtls_entropy_context m_entropy;
  mbedtls_ctr_drbg_context m_drbg;
};

/// Writes `data` to the new file `fd` and syncs it; on failure removes the file. Errors: io.
Status finish_new_file(file_io::Fd& fd, const std::filesystem::path& path, std::string_view data);

/// Creates `path` (never overwriting) with `data` and `mode`. Errors: rejected (it exists), io.
Status write_new_file(const std::filesystem::path& path, std::string_view data, mode_t mode);

/// The whole file. Errors: io.
Result<std::string> read_file(const std::filesystem::path& path);

/// Lowercase hex of `len` bytes.
std::string hex(const unsigned char* data, std::size_t len);

/// The fingerprint of a public key: hex SHA-256 of its DER SubjectPublicKeyInfo. Errors: crypto.
Result<std::string> public_key_sha256(mbedtls_pk_context* pk);

/// "YYYYMMDDhhmmss" UTC, the format of mbedtls_x509write_crt_set_validity.
std::string x509_time(std::int64_t unix_s);

/// A CN that mbedtls_x509_string_to_names takes literally: 1 … 64 characters, no DN specials
/// (`,=+\"<>;#`), no control characters, no space at either end. `what` names it in the error
/// (invalid_argument).
Status check_common_name(std::string_view cn, std::string_view what);

/// Validity of 1 … k_max_days days. Errors: invalid_argument.
Status check_days(std::uint32_t days);

/// `now`, or the system clock's Unix seconds.
std::int64_t now_or_clock(const std::optional<std::int64_t>& now);

/// Calls `parse(buf, len)` on a PEM text (NUL-terminated, as mbedTLS wants) or DER.
template <typename F>
int parse_pem_or_der(std::string_view text, F&& parse) {
  std::string copy(text);
  const bool pem = copy.find("-----BEGIN") != std::string::npos;
  return parse(reinterpret_cast<const unsigned char*>(copy.c_str()), copy.size() + (pem ? 1 : 0));
}

/// Loads the EC P-256 private key at `path` into `pk`. Errors: io, crypto.
Status parse_private_key(mbedtls_pk_context* pk, const std::filesystem::path& path);

/// Generates an EC P-256 key into `pk` and returns its PEM (SEC 1). Errors: crypto.
Result<std::string> generate_key(mbedtls_pk_context* pk, Rng& rng);

/// Loads the key at `path` into `pk`, creating it first when the file does not exist; true when
/// created. Errors: as load_or_create_key.
Result<bool> load_or_create_into(mbedtls_pk_context* pk, const std::filesystem::path& path);

/// A PEM CSR, subject `CN=<common_name>`, signed SHA-256 with `key`. Errors: invalid_argument
/// (the common name), crypto.
Result<std::string> write_csr(mbedtls_pk_context* key, std::string_view common_name);

/// What a parsed certificate says. Errors: crypto (its public key cannot be encoded).
Result<CertInfo> describe(mbedtls_x509_crt* crt);

/// parse_csr, keeping the parsed CSR in `csr` (for a CA that signs its key).
Result<CsrInfo> parse_csr_into(Csr& csr, std::string_view pem);

}  // namespace agent::tls::mbed
