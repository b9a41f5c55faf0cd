// SPDX-License-Identifier: AGPL-3.0-or-later
// The node's certificate authority. mbedTLS 2.28 has no writer for subjectAltName or
// extendedKeyUsage, so those extensions are built with its ASN.1 writer (RFC 5280 §4.2.1.6,
// §4.2.1.12) and added with mbedtls_x509write_crt_set_extension.
#include <reflow/node/ca.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <mbedtls/asn1write.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform_util.h>

#include <reflow/core/event.hpp>
#include <reflow/core/file_io.hpp>
#include <reflow/core/tls_mbedtls.hpp>
#include <reflow/core/units.hpp>

namespace ingest {
namespace {

using namespace agent::tls::mbed;
using agent::Error;
using agent::ErrorCode;
using agent::fail;
using agent::is_valid_device_id;
using agent::file_io::errno_text;
using agent::file_io::write_all;
using agent::tls::parse_certificate;

// ---- Extensions mbedTLS 2.28 cannot write itself
// -------------------------------------------------

// A host for subjectAltName: an IP address (iPAddress, 4 or 16 bytes) or a DNS name (dNSName).
struct SanEntry {
  bool ip = false;
  std::string bytes;  // address bytes or the name
};

Result<SanEntry> parse_host(std::string_view host) {
  std::string text(host);
  if (text.size() > 2 && text.front() == '[' && text.back() == ']')
    text = text.substr(1, text.size() - 2);
  unsigned char addr[16];
  if (::inet_pton(AF_INET, text.c_str(), addr) == 1)
    return SanEntry{true, std::string(reinterpret_cast<char*>(addr), 4)};
  if (::inet_pton(AF_INET6, text.c_str(), addr) == 1)
    return SanEntry{true, std::string(reinterpret_cast<char*>(addr), 16)};
  // RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
  bool valid = !text.empty() && text.size() <= 253;
  std::size_t start = 0;
  while (valid && start <= text.size()) {
    auto dot = text.find('.', start);
    if (dot == std::string::npos) dot = text.size();
    std::string_view label(text.data() + start, dot - start);
    valid = !label.empty() && label.size() <= 63 && label.front() != '-' && label.back() != '-' &&
            std::all_of(label.begin(), label.end(), [](char c) {
              return std::isalnum(static_cast<unsigned char>(c)) || c == '-';
            });
    start = dot + 1;
  }
  if (!valid)
    return fail(ErrorCode::invalid_argument,
                fmt::format("host \"{}\" is neither an IP address nor a DNS name", host));
  return SanEntry{false, text};
}

// Builds `SEQUENCE { items }` backwards into `buf`; `write_items` writes the items and returns
// their length or a negative mbedTLS error.
template <typename F>
Result<std::string> der_sequence(F&& write_items) {
  std::array<unsigned char, 4096> buf{};
  unsigned char* p = buf.data() + buf.size();
  int ret = write_items(&p, buf.data());
  std::size_t len = 0;
  if (ret >= 0) {
    len = static_cast<std::size_t>(ret);
    ret = mbedtls_asn1_write_len(&p, buf.data(), len);
  }
  if (ret >= 0) {
    len += static_cast<std::size_t>(ret);
    ret = mbedtls_asn1_write_tag(&p, buf.data(), MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE);
  }
  if (ret < 0)
    return fail(ErrorCode::internal,
                fmt::format("cannot encode a certificate extension: {}", mbed_error(ret)));
  len += static_cast<std::size_t>(ret);
  return std::string(reinterpret_cast<const char*>(p), len);
}

// SubjectAltName ::= GeneralNames ::= SEQUENCE OF GeneralName (RFC 5280 §4.2.1.6); dNSName [2]
// IA5String, iPAddress [7] OCTET STRING, both IMPLICIT.
Result<std::string> subject_alt_name_der(const std::vector<SanEntry>& entries) {
  return der_sequence([&](unsigned char** p, unsigned char* start) {
    int total = 0;
    for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
      const int tag = MBEDTLS_ASN1_CONTEXT_SPECIFIC | (it->ip ? 7 : 2);
      int ret = mbedtls_asn1_write_tagged_string(p, start, tag, it->bytes.data(), it->bytes.size());
      if (ret < 0) return ret;
      total += ret;
    }
    return total;
  });
}

// ExtKeyUsageSyntax ::= SEQUENCE SIZE (1..MAX) OF KeyPurposeId (RFC 5280 §4.2.1.12).
Result<std::string> ext_key_usage_der(const char* oid, std::size_t oid_len) {
  return der_sequence([&](unsigned char** p, unsigned char* start) {
    return mbedtls_asn1_write_oid(p, start, oid, oid_len);
  });
}

Status set_extension(mbedtls_x509write_cert* crt, const char* oid, std::size_t oid_len,
                     const std::string& der) {
  int ret = mbedtls_x509write_crt_set_extension(
      crt, oid, oid_len, 0, reinterpret_cast<const unsigned char*>(der.data()), der.size());
  if (ret != 0)
    return fail(ErrorCode::internal,
                fmt::format("cannot add a certificate extension: {}", mbed_error(ret)));
  return {};
}

// Everything a certificate needs; `issuer_key` signs.
struct CertSpec {
  mbedtls_pk_context* subject_key = nullptr;
  mbedtls_pk_context* issuer_key = nullptr;
  std::string subject;
  std::string issuer;
  std::int64_t not_before = 0;
  std::int64_t not_after = 0;
  bool is_ca = false;
  CertRole role = CertRole::device;  // when !is_ca
  std::vector<SanEntry> san;
};

Result<std::string> write_certificate(const CertSpec& spec) {
  Rng rng;
  if (auto seeded = rng.seed(); !seeded) return std::unexpected(seeded.error());
  CrtWriter crt;
  mbedtls_x509write_crt_set_version(crt.get(), MBEDTLS_X509_CRT_VERSION_3);
  mbedtls_x509write_crt_set_md_alg(crt.get(), MBEDTLS_MD_SHA256);
  mbedtls_x509write_crt_set_subject_key(crt.get(), spec.subject_key);
  mbedtls_x509write_crt_set_issuer_key(crt.get(), spec.issuer_key);

  // RFC 5280 §4.1.2.2: positive, at most 20 octets; 128 random bits make it unguessable.
  std::array<unsigned char, 16> serial_bytes{};
  int ret = Rng::random(&rng, serial_bytes.data(), serial_bytes.size());
  serial_bytes[0] = static_cast<unsigned char>((serial_bytes[0] & 0x7f) | 0x01);
  Mpi serial;
  if (ret == 0)
    ret = mbedtls_mpi_read_binary(serial.get(), serial_bytes.data(), serial_bytes.size());
  if (ret == 0) ret = mbedtls_x509write_crt_set_serial(crt.get(), serial.get());
  const std::string from = x509_time(spec.not_before);
  const std::string to = x509_time(spec.not_after);
  if (ret == 0) ret = mbedtls_x509write_crt_set_validity(crt.get(), from.c_str(), to.c_str());
  if (ret == 0) ret = mbedtls_x509write_crt_set_subject_name(crt.get(), spec.subject.c_str());
  if (ret == 0) ret = mbedtls_x509write_crt_set_issuer_name(crt.get(), spec.issuer.c_str());
  if (ret == 0) ret = mbedtls_x509write_crt_set_basic_constraints(crt.get(), spec.is_ca ? 1 : 0, 0);
  if (ret == 0) ret = mbedtls_x509write_crt_set_subject_key_identifier(crt.get());
  if (ret == 0) ret = mbedtls_x509write_crt_set_authority_key_identifier(crt.get());
  if (ret == 0)
    ret = mbedtls_x509write_crt_set_key_usage(
        crt.get(), spec.is_ca ? MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN
                              : MBEDTLS_X509_KU_DIGITAL_SIGNATURE | MBEDTLS_X509_KU_KEY_AGREEMENT);
  if (ret != 0)
    return fail(ErrorCode::crypto, fmt::format("cannot prepare the certificate for {}: {}",
                                               spec.subject, mbed_error(ret)));
  if (!spec.is_ca) {
    auto eku =
        spec.role == CertRole::server
            ? ext_key_usage_der(MBEDTLS_OID_SERVER_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH))
            : ext_key_usage_der(MBEDTLS_OID_CLIENT_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH));
    if (!eku) return std::unexpected(eku.error());
    if (auto ok = set_extension(crt.get(), MBEDTLS_OID_EXTENDED_KEY_USAGE,
                                MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), *eku);
        !ok)
      return std::unexpected(ok.error());
  }
  if (!spec.san.empty()) {
    auto san = subject_alt_name_der(spec.san);
    if (!san) return std::unexpected(san.error());
    if (auto ok = set_extension(crt.get(), MBEDTLS_OID_SUBJECT_ALT_NAME,
                                MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), *san);
        !ok)
      return std::unexpected(ok.error());
  }
  std::array<unsigned char, k_pem_buffer> pem{};
  ret = mbedtls_x509write_crt_pem(crt.get(), pem.data(), pem.size(), Rng::random, &rng);
  if (ret != 0)
    return fail(ErrorCode::crypto, fmt::format("cannot sign the certificate for {}: {}",
                                               spec.subject, mbed_error(ret)));
  return std::string(reinterpret_cast<const char*>(pem.data()));
}

// ---- The CA's one owner
// ----------------------------------------------------------------------------

struct Owner {
  uid_t uid = 0;
  gid_t gid = 0;
  std::filesystem::path dir;  // whose owner it is: the CA directory, or its parent
};

// The owner of `ca_dir`, or of its parent while it does not exist yet.
std::optional<Owner> ca_owner(const std::filesystem::path& ca_dir) {
  struct stat st {};
  if (::stat(ca_dir.c_str(), &st) == 0) return Owner{st.st_uid, st.st_gid, ca_dir};
  auto parent = ca_dir.parent_path();
  if (parent.empty()) parent = ".";
  if (::stat(parent.c_str(), &st) == 0) return Owner{st.st_uid, st.st_gid, parent};
  return std::nullopt;
}

std::string user_name(uid_t uid) {
  struct passwd entry {};
  struct passwd* found = nullptr;
  std::array<char, 4096> buf{};
  if (::getpwuid_r(uid, &entry, buf.data(), buf.size(), &found) == 0 && found != nullptr)
    return found->pw_name;
  return std::to_string(uid);
}

// Run as root, gives `path` (created by this process) to the CA's owner, so that the service
// user can keep using the CA whoever ran the command.
Status give_to_owner(const std::filesystem::path& path, const std::optional<Owner>& owner) {
  if (::geteuid() != 0 || !owner || owner->uid == 0) return {};
  if (::lchown(path.c_str(), owner->uid, owner->gid) != 0)
    return fail(ErrorCode::io, fmt::format("cannot give {} to the CA's owner {}: {}", path.string(),
                                           user_name(owner->uid), errno_text(errno)));
  return {};
}

// ---- CA state
// ------------------------------------------------------------------------------------

struct LoadedCa {
  Crt cert;
  Pk key;
  CertInfo info;
};

Status load_ca(const std::filesystem::path& ca_dir, LoadedCa& ca) {
  const auto cert_path = ca_dir / k_ca_cert_file;
  const auto key_path = ca_dir / k_ca_key_file;
  std::error_code ec;
  if (!std::filesystem::exists(cert_path, ec) || !std::filesystem::exists(key_path, ec))
    return fail(ErrorCode::not_found,
                fmt::format("no CA in {} ({} and {} are needed); create one with `reflow-ingest "
                            "ca init`",
                            ca_dir.string(), k_ca_cert_file, k_ca_key_file));
  auto text = read_file(cert_path);
  if (!text) return std::unexpected(text.error());
  int ret = parse_pem_or_der(*text, [&](const unsigned char* buf, std::size_t len) {
    return mbedtls_x509_crt_parse(ca.cert.get(), buf, len);
  });
  if (ret != 0)
    return fail(ErrorCode::corruption,
                fmt::format("{} is not a certificate: {}", cert_path.string(), mbed_error(ret)));
  if (auto ok = parse_private_key(ca.key.get(), key_path); !ok) return ok;
  ret = mbedtls_pk_check_pair(&ca.cert.v.pk, ca.key.get());
  if (ret != 0)
    return fail(ErrorCode::corruption,
                fmt::format("{} does not belong to {}: {}", key_path.string(), cert_path.string(),
                            mbed_error(ret)));
  auto info = describe(ca.cert.get());
  if (!info) return std::unexpected(info.error());
  ca.info = std::move(*info);
  return {};
}

// issued.jsonl, open and locked for the duration of one signing.
class IssuedLog {
 public:
  // `owner`: run as root, a file owned by someone else is given to the CA's owner.
  static Result<IssuedLog> open_locked(const std::filesystem::path& path,
                                       const std::optional<Owner>& owner) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
      return fail(ErrorCode::io, fmt::format("cannot open the CA's record of issued certificates "
                                             "{}: {}",
                                             path.string(), errno_text(errno)));
    IssuedLog log(fd, path);
    struct stat st {};
    if (::geteuid() == 0 && owner && owner->uid != 0 && ::fstat(fd, &st) == 0 &&
        (st.st_uid != owner->uid || st.st_gid != owner->gid) &&
        ::fchown(fd, owner->uid, owner->gid) != 0)
      return fail(ErrorCode::io,
                  fmt::format("cannot give {} to the CA's owner {}: {}", path.string(),
                              user_name(owner->uid), errno_text(errno)));
    while (::flock(fd, LOCK_EX) != 0)
      if (errno != EINTR)
        return fail(ErrorCode::io,
                    fmt::format("cannot lock {}: {}", path.string(), errno_text(errno)));
    return log;
  }
  IssuedLog(IssuedLog&& other) noexcept : m_fd(other.m_fd), m_path(std::move(other.m_path)) {
    other.m_fd = -1;
  }
  IssuedLog& operator=(IssuedLog&&) = delete;
  ~IssuedLog() {
    if (m_fd >= 0) ::close(m_fd);  // releases the lock
  }

  // The latest record per CN.
  Result<std::map<std::string, nlohmann::json>> latest_by_cn() const {
    std::string content;
    char chunk[16384];
    for (off_t offset = 0;;) {
      ssize_t n = ::pread(m_fd, chunk, sizeof chunk, offset);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0)
        return fail(ErrorCode::io,
                    fmt::format("cannot read {}: {}", m_path.string(), errno_text(errno)));
      if (n == 0) break;
      content.append(chunk, static_cast<std::size_t>(n));
      offset += n;
    }
    std::map<std::string, nlohmann::json> latest;
    std::istringstream lines(content);
    std::string line;
    for (std::size_t number = 1; std::getline(lines, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      auto record = nlohmann::json::parse(line, nullptr, false);
      auto is = [&](const char* key, bool (nlohmann::json::*check)() const noexcept) {
        return record.is_object() && record.contains(key) && (record[key].*check)();
      };
      if (!is("cn", &nlohmann::json::is_string) || !is("role", &nlohmann::json::is_string) ||
          !is("serial", &nlohmann::json::is_string) ||
          !is("fingerprint", &nlohmann::json::is_string) ||
          !is("not_after", &nlohmann::json::is_number_integer))
        return fail(ErrorCode::corruption,
                    fmt::format("{}:{}: not an issued-certificate record; repair or remove the "
                                "line (it is the CA's memory of which key holds which name)",
                                m_path.string(), number));
      std::string cn = record["cn"].get<std::string>();
      latest[cn] = std::move(record);
    }
    return latest;
  }

  Status append(const nlohmann::ordered_json& record) {
    const std::string line = record.dump() + "\n";
    if (int err = write_all(m_fd, line); err != 0 || ::fsync(m_fd) != 0)
      return fail(ErrorCode::io, fmt::format("cannot append to {}: {}; the certificate is not "
                                             "recorded as issued",
                                             m_path.string(), errno_text(err ? err : errno)));
    return {};
  }

 private:
  IssuedLog(int fd, std::filesystem::path path) : m_fd(fd), m_path(std::move(path)) {}
  int m_fd;
  std::filesystem::path m_path;
};

std::string short_fp(const std::string& fingerprint) {
  return fingerprint.substr(0, 16) + "…";
}

}  // namespace

std::string_view to_string(CertRole role) noexcept {
  switch (role) {
    case CertRole::device:
      return "device";
    case CertRole::server:
      return "server";
    case CertRole::client:
      return "client";
  }
  return "device";
}

Status check_ca_user(const std::filesystem::path& ca_dir) {
  const uid_t me = ::geteuid();
  if (me == 0) return {};
  auto owner = ca_owner(ca_dir);
  if (!owner || owner->uid == me) return {};
  const std::string name = user_name(owner->uid);
  return fail(ErrorCode::rejected,
              fmt::format("the CA in {} belongs to the user {} ({} is owned by it), and this "
                          "command runs as {}; run it as that user: sudo -u {} reflow-ingest ca "
                          "… (or as root, which leaves the CA's files to {})",
                          ca_dir.string(), name, owner->dir.string(), user_name(me), name, name));
}

bool is_valid_service_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '@' &&
        c != '-')
      return false;
  return !is_valid_device_id(name);
}

Result<CertInfo> ca_init(const std::filesystem::path& ca_dir, const CaInitOptions& options) {
  if (auto ok = check_common_name(options.common_name, "the CA's common name"); !ok)
    return std::unexpected(ok.error());
  if (auto ok = check_days(options.days); !ok) return std::unexpected(ok.error());
  const auto key_path = ca_dir / k_ca_key_file;
  const auto cert_path = ca_dir / k_ca_cert_file;
  if (auto ok = check_ca_user(ca_dir); !ok) return std::unexpected(ok.error());
  const auto owner = ca_owner(ca_dir);
  std::error_code ec;
  for (const auto& existing : {key_path, cert_path})
    if (std::filesystem::exists(existing, ec))
      return fail(ErrorCode::rejected,
                  fmt::format("a CA already exists in {} ({} is there); refusing to replace it, "
                              "since every certificate it issued would stop verifying. Use "
                              "another [ca] dir for a new CA",
                              ca_dir.string(), existing.filename().string()));
  if (::mkdir(ca_dir.c_str(), 0700) != 0 && errno != EEXIST)
    return fail(ErrorCode::io, fmt::format("cannot create the CA directory {}: {}", ca_dir.string(),
                                           errno_text(errno)));
  if (auto given = give_to_owner(ca_dir, owner); !given) return std::unexpected(given.error());

  Rng rng;
  if (auto seeded = rng.seed(); !seeded) return std::unexpected(seeded.error());
  Pk key;
  auto key_pem = generate_key(key.get(), rng);
  if (!key_pem) return std::unexpected(key_pem.error());
  Status key_written = write_new_file(key_path, *key_pem, 0600);
  mbedtls_platform_zeroize(key_pem->data(), key_pem->size());
  if (!key_written) return std::unexpected(key_written.error());

  auto undo = [&](const Error& error) -> Result<CertInfo> {
    ::unlink(key_path.c_str());
    return std::unexpected(error);
  };
  const std::int64_t now = now_or_clock(options.now_unix);
  CertSpec spec;
  spec.subject_key = key.get();
  spec.issuer_key = key.get();
  spec.subject = fmt::format("CN={}", options.common_name);
  spec.issuer = spec.subject;
  spec.not_before = now - k_backdate_s;
  spec.not_after = now + static_cast<std::int64_t>(options.days) * k_day_s;
  spec.is_ca = true;
  auto pem = write_certificate(spec);
  if (!pem) return undo(pem.error());
  if (auto given = give_to_owner(key_path, owner); !given) return undo(given.error());
  if (auto written = write_new_file(cert_path, *pem, 0644); !written) return undo(written.error());
  if (auto given = give_to_owner(cert_path, owner); !given) {
    ::unlink(cert_path.c_str());
    return undo(given.error());
  }
  return parse_certificate(*pem);
}

Result<Issued> ca_sign(const std::filesystem::path& ca_dir, std::string_view csr_pem,
                       const IssueOptions& options, const Deliver& deliver) {
  if (auto ok = check_days(options.days); !ok) return std::unexpected(ok.error());
  if (auto ok = check_ca_user(ca_dir); !ok) return std::unexpected(ok.error());
  Csr csr;
  auto request = parse_csr_into(csr, csr_pem);  // checks the signature
  if (!request) return std::unexpected(request.error());
  const std::string& cn = request->common_name;

  if (auto ok = check_common_name(cn, "the CSR's common name"); !ok)
    return std::unexpected(ok.error());
  std::vector<SanEntry> san;
  switch (options.role) {
    case CertRole::device:
      if (!is_valid_device_id(cn))
        return fail(ErrorCode::rejected,
                    fmt::format("the CSR's CN \"{}\" is not a valid device id (PROTOCOL §1: "
                                "^[a-z0-9][a-z0-9._-]{{0,63}}$); the device's agent.device_id "
                                "must be one",
                                cn));
      break;
    case CertRole::client:
      if (!is_valid_service_name(cn))
        return fail(ErrorCode::rejected,
                    is_valid_device_id(cn)
                        ? fmt::format("\"{}\" is a valid device id; a service identity must not "
                                      "be one, so that no device can ever hold it (e.g. "
                                      "\"ingest@node\")",
                                      cn)
                        : fmt::format("\"{}\" is not a valid service name: 1 to 64 characters of "
                                      "A-Z a-z 0-9 . _ @ - (e.g. \"ingest@node\")",
                                      cn));
      break;
    case CertRole::server:
      if (options.hosts.empty())
        return fail(ErrorCode::invalid_argument,
                    "a server certificate needs at least one host name or IP address (--host)");
      for (const auto& host : options.hosts) {
        auto entry = parse_host(host);
        if (!entry) return std::unexpected(entry.error());
        san.push_back(std::move(*entry));
      }
      break;
  }

  LoadedCa ca;
  if (auto ok = load_ca(ca_dir, ca); !ok) return std::unexpected(ok.error());
  const std::int64_t now = now_or_clock(options.now_unix);
  if (ca.info.not_after <= now)
    return fail(ErrorCode::rejected,
                fmt::format("the CA certificate in {} expired at {}; a new CA is needed",
                            ca_dir.string(), agent::format_rfc3339_s(ca.info.not_after)));

  auto log = IssuedLog::open_locked(ca_dir / k_issued_file, ca_owner(ca_dir));
  if (!log) return std::unexpected(log.error());
  auto latest = log->latest_by_cn();
  if (!latest) return std::unexpected(latest.error());
  if (auto found = latest->find(cn); found != latest->end()) {
    const auto& previous = found->second;
    const std::string role = previous.value("role", "");
    const std::string fingerprint = previous.value("fingerprint", "");
    if (role != to_string(options.role))
      return fail(ErrorCode::rejected,
                  fmt::format("\"{}\" already holds a {} certificate (serial {}); one name is one "
                              "identity, so it cannot also get a {} certificate",
                              cn, role, previous.value("serial", "?"), to_string(options.role)));
    if (fingerprint != request->public_key_sha256 && !options.replace)
      return fail(
          ErrorCode::rejected,
          fmt::format("\"{}\" already has a certificate (serial {}, until {}) for another key "
                      "(sha256 {}); this CSR's key is sha256 {}. If the device's key was replaced "
                      "on purpose (reinstalled, new SD card), issue it anyway with --replace; "
                      "otherwise someone else may be claiming this identity",
                      cn, previous.value("serial", "?"),
                      agent::format_rfc3339_s(previous.value("not_after", std::int64_t{0})),
                      short_fp(fingerprint), short_fp(request->public_key_sha256)));
  }

  // The CA cannot vouch beyond its own validity.
  const std::int64_t not_after =
      std::min(now + static_cast<std::int64_t>(options.days) * k_day_s, ca.info.not_after);
  CertSpec spec;
  spec.subject_key = &csr.v.pk;
  spec.issuer_key = ca.key.get();
  spec.subject = fmt::format("CN={}", cn);
  spec.issuer = ca.info.subject;
  spec.not_before = now - k_backdate_s;
  spec.not_after = not_after;
  spec.role = options.role;
  spec.san = std::move(san);
  auto pem = write_certificate(spec);
  if (!pem) return std::unexpected(pem.error());
  auto info = parse_certificate(*pem);
  if (!info) return std::unexpected(info.error());

  nlohmann::ordered_json record;
  record["cn"] = cn;
  record["role"] = to_string(options.role);
  record["serial"] = info->serial;
  record["fingerprint"] = info->public_key_sha256;
  record["not_before"] = info->not_before;
  record["not_after"] = info->not_after;
  record["issued"] = now;
  Issued issued{std::move(*pem), std::move(*info)};
  if (deliver)
    if (auto delivered = deliver(issued); !delivered) return std::unexpected(delivered.error());
  if (auto ok = log->append(record); !ok) return std::unexpected(ok.error());
  return issued;
}

Result<Issued> ca_issue_with_key(const std::filesystem::path& ca_dir,
                                 const std::filesystem::path& key_file,
                                 std::string_view common_name, const IssueOptions& options,
                                 const Deliver& deliver) {
  if (auto ok = check_ca_user(ca_dir); !ok) return std::unexpected(ok.error());
  std::string cn(common_name);
  if (cn.empty() && options.role == CertRole::server && !options.hosts.empty())
    cn = options.hosts.front();
  // Refuse before a key file is made for a name that will be refused anyway.
  if (options.role == CertRole::client && !is_valid_service_name(cn))
    return fail(ErrorCode::rejected,
                is_valid_device_id(cn)
                    ? fmt::format("\"{}\" is a valid device id; a service identity must not be "
                                  "one, so that no device can ever hold it (e.g. \"ingest@node\")",
                                  cn)
                    : fmt::format("\"{}\" is not a valid service name: 1 to 64 characters of "
                                  "A-Z a-z 0-9 . _ @ - (e.g. \"ingest@node\")",
                                  cn));
  if (auto ok = check_common_name(cn, "the common name"); !ok) return std::unexpected(ok.error());
  if (!std::filesystem::exists(ca_dir / k_ca_key_file))
    return fail(
        ErrorCode::not_found,
        fmt::format("no CA in {}; create one with `reflow-ingest ca init`", ca_dir.string()));
  Pk key;
  auto created = load_or_create_into(key.get(), key_file);
  if (!created) return std::unexpected(created.error());
  auto csr = write_csr(key.get(), cn);
  if (!csr) return std::unexpected(csr.error());
  return ca_sign(ca_dir, *csr, options, deliver);
}

}  // namespace ingest
