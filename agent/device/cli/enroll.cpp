// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-agent enroll`: the device's half of getting a broker certificate. Without a bundle it
// makes (once) the device's TLS key and prints a CSR naming the device id; the node's
// `reflow-ingest ca enroll` turns that into an enrolment bundle (reflow/core/enrolment.hpp),
// which `reflow-agent enroll BUNDLE` installs: the certificates beside the config and the [mqtt]
// keys into it (docs/node-guide.md step 5, PROTOCOL §2).
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <reflow/core/enrolment.hpp>
#include <reflow/core/file_io.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/tls.hpp>
#include <reflow/core/units.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/config_edit.hpp>

#include "commands.hpp"

namespace agent::cli {
namespace {

std::filesystem::path tls_key_path(const AgentConfig& config) {
  return config.tls_key_file.empty() ? config.data_dir / "tls.key" : config.tls_key_file;
}

// Run as root (`sudo reflow-agent enroll`), a key made or found here would stay root's, and the
// service (User=reflow-agent) could not read it: it is given to the service user, the owner of
// agent.data_dir, or else the reflow-agent user when there is one. Returns the user's name, or ""
// when nothing was to be done.
Result<std::string> give_key_to_service_user(const std::filesystem::path& key,
                                             const AgentConfig& config) {
  if (::geteuid() != 0) return std::string();
  struct stat st {};
  uid_t uid = 0;
  gid_t gid = 0;
  if (::stat(config.data_dir.c_str(), &st) == 0 && st.st_uid != 0) {
    uid = st.st_uid;
    gid = st.st_gid;
  } else {
    struct passwd entry {};
    struct passwd* found = nullptr;
    std::array<char, 4096> buf{};
    if (::getpwnam_r("reflow-agent", &entry, buf.data(), buf.size(), &found) != 0 ||
        found == nullptr)
      return std::string();  // no service user: the agent runs as root, which reads it
    uid = found->pw_uid;
    gid = found->pw_gid;
  }
  if (::chown(key.c_str(), uid, gid) != 0 || ::chmod(key.c_str(), 0600) != 0)
    return fail(ErrorCode::io,
                fmt::format("cannot give the TLS key {} to the service user (uid {}): {}; the "
                            "agent could not read it",
                            key.string(), uid, std::strerror(errno)));
  struct passwd entry {};
  struct passwd* found = nullptr;
  std::array<char, 4096> buf{};
  if (::getpwuid_r(uid, &entry, buf.data(), buf.size(), &found) == 0 && found != nullptr)
    return std::string(found->pw_name);
  return std::to_string(uid);
}

Result<std::string> read_text_file(const std::filesystem::path& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return fail(ErrorCode::io,
                fmt::format("cannot read {} {}: {}", what, path.string(), std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Replaces `path` atomically with `data`, mode `mode`, owner and group those of the file it
// replaces (the config is root:reflow-agent 0640 in the package).
Status replace_file(const std::filesystem::path& path, std::string_view data, mode_t mode) {
  struct stat old {};
  const bool existed = ::stat(path.c_str(), &old) == 0;
  const auto temp = std::filesystem::path(path.string() + ".enroll-tmp");
  ::unlink(temp.c_str());
  file_io::Fd fd = file_io::create_new(temp, existed ? (old.st_mode & 07777) : mode);
  if (fd.get() < 0)
    return fail(ErrorCode::io,
                fmt::format("cannot write {}: {}", temp.string(), file_io::errno_text(errno)));
  if (::fchmod(fd.get(), existed ? (old.st_mode & 07777) : mode) != 0 ||
      (existed && ::geteuid() == 0 && ::fchown(fd.get(), old.st_uid, old.st_gid) != 0)) {
    const int err = errno;
    ::unlink(temp.c_str());
    return fail(ErrorCode::io, fmt::format("cannot set the mode of {}: {}", temp.string(),
                                           file_io::errno_text(err)));
  }
  if (int err = file_io::finish_new(fd, temp, data); err != 0)
    return fail(ErrorCode::io,
                fmt::format("cannot write {}: {}", temp.string(), file_io::errno_text(err)));
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    return fail(ErrorCode::io,
                fmt::format("cannot replace {}: {}", path.string(), file_io::errno_text(err)));
  }
  file_io::fsync_parent(path);
  return {};
}

int enroll_bundle(const std::filesystem::path& config_path, const AgentConfig& config,
                  const std::filesystem::path& bundle_path) {
  auto text = read_text_file(bundle_path, "the enrolment bundle");
  if (!text) {
    print_error(text.error().message);
    return 1;
  }
  auto parsed = enrolment::parse(*text);
  if (!parsed) {
    print_error(fmt::format("{}: {}", bundle_path.string(), parsed.error().message));
    return 1;
  }
  const enrolment::Bundle& bundle = parsed->bundle;
  if (bundle.device_id != config.device_id) {
    print_error(fmt::format(
        "{} is for the device \"{}\", and this config ({}) is agent.device_id \"{}\"; "
        "ask the node operator for this device's bundle",
        bundle_path.string(), bundle.device_id, config_path.string(), config.device_id));
    return 1;
  }
  const auto key_path = tls_key_path(config);
  std::error_code ec;
  if (!std::filesystem::exists(key_path, ec)) {
    print_error(
        fmt::format("no TLS key at {}: the bundle's certificate belongs to the key that "
                    "`reflow-agent enroll --config {}` made for its CSR",
                    key_path.string(), config_path.string()));
    return 1;
  }
  auto key = tls::load_or_create_key(key_path);  // exists: only loads it
  if (!key) {
    print_error(key.error().message);
    return 1;
  }
  if (key->public_key_sha256 != parsed->device.public_key_sha256) {
    print_error(
        fmt::format("{}: the certificate is for another key (sha256 {}…) than the TLS key "
                    "{} (sha256 {}…); was `enroll` run again, or on another device, after "
                    "the CSR was sent? Send the node a new CSR",
                    bundle_path.string(), parsed->device.public_key_sha256.substr(0, 16),
                    key_path.string(), key->public_key_sha256.substr(0, 16)));
    return 1;
  }

  const auto config_dir = std::filesystem::absolute(config_path).parent_path();
  const auto ca_file = config.ca_file.empty() ? config_dir / "node-ca.pem" : config.ca_file;
  const auto cert_file = config.cert_file.empty() ? config_dir / "device.crt" : config.cert_file;
  // The config is edited first in memory: what cannot be edited safely stops everything before a
  // file is written.
  auto config_text = read_text_file(config_path, "the config");
  if (!config_text) {
    print_error(config_text.error().message);
    return 1;
  }
  std::vector<std::pair<std::string, std::string>> keys = {
      {"url", bundle.url},
      {"topic_prefix", bundle.topic_prefix},
      {"ca_file", ca_file.string()},
      {"cert_file", cert_file.string()},
      {"key_file", std::filesystem::absolute(key_path).string()}};
  // The node's key, when it has one: pinned, so that only its signed acks prune (PROTOCOL §5.1).
  const auto node_jwk_file = config.node_jwk.empty() ? config_dir / "node.jwk" : config.node_jwk;
  if (bundle.node_ack_jwk) keys.emplace_back("node_jwk", node_jwk_file.string());
  auto edited = set_mqtt_string_keys(*config_text, keys, config_path.string());
  if (!edited) {
    print_error(edited.error().message);
    return 1;
  }
  for (const auto& [path, pem] :
       {std::pair{ca_file, bundle.ca_cert}, {cert_file, bundle.device_cert}})
    if (auto written = replace_file(path, pem, 0644); !written) {
      print_error(written.error().message);
      return 1;
    }
  if (bundle.node_ack_jwk) {
    if (auto written = replace_file(node_jwk_file, *bundle.node_ack_jwk + "\n", 0644); !written) {
      print_error(written.error().message);
      return 1;
    }
  }
  auto given = give_key_to_service_user(key_path, config);
  if (!given) {
    print_error(given.error().message);
    return 1;
  }
  if (auto written = replace_file(config_path, *edited, 0640); !written) {
    print_error(written.error().message);
    return 1;
  }
  fmt::print(
      "enrolled {} at {} (topic prefix {})\n"
      "ca_file:   {} (the node CA {})\n"
      "cert_file: {} (valid until {})\n"
      "key_file:  {}{}\n",
      bundle.device_id, bundle.url, bundle.topic_prefix, ca_file.string(), parsed->ca.subject,
      cert_file.string(), format_rfc3339_s(parsed->device.not_after), key_path.string(),
      given->empty() ? std::string() : fmt::format(" (owned by {}, mode 0600)", *given));
  if (bundle.node_ack_jwk)
    fmt::print("node_jwk:  {} (acks are verified with the node's key)\n", node_jwk_file.string());
  fmt::print(stderr,
             "reflow-agent: wrote the [mqtt] keys url, topic_prefix, ca_file, cert_file, "
             "key_file{} into {} (its comments and other keys kept); next: restart the agent "
             "(systemctl restart reflow-agent); `reflow-agent status --config {}` then shows the "
             "certificate\n",
             bundle.node_ack_jwk ? " and node_jwk" : "", config_path.string(),
             config_path.string());
  return 0;
}

}  // namespace

int enroll(const std::filesystem::path& config_path,
           const std::optional<std::filesystem::path>& out_file,
           const std::optional<std::filesystem::path>& bundle) {
  auto config = load_config(config_path);
  if (!config) {
    print_error(config.error().message);
    return 1;
  }
  if (bundle) return enroll_bundle(config_path, *config, *bundle);
  const bool key_configured = !config->tls_key_file.empty();
  const std::filesystem::path key_path =
      key_configured ? config->tls_key_file : config->data_dir / "tls.key";
  if (!key_configured) {
    // Enrolling usually comes before the first `run`, which would create the data directory.
    std::error_code ec;
    std::filesystem::create_directories(config->data_dir, ec);
    if (ec) {
      print_error(fmt::format("cannot create agent.data_dir {}: {}", config->data_dir.string(),
                              ec.message()));
      return 1;
    }
  }
  auto key = tls::load_or_create_key(key_path);
  if (!key) {
    print_error(key.error().message);
    return 1;
  }
  auto given = give_key_to_service_user(key_path, *config);
  if (!given) {
    print_error(given.error().message);
    return 1;
  }
  auto csr = tls::make_csr(key_path, config->device_id);
  if (!csr) {
    print_error(csr.error().message);
    return 1;
  }
  if (out_file) {
    std::ofstream out(*out_file, std::ios::binary | std::ios::trunc);
    out << *csr;
    out.close();
    if (!out) {
      print_error(fmt::format("cannot write {}: {}", out_file->string(), std::strerror(errno)));
      return 1;
    }
  } else {
    fmt::print("{}", *csr);
    std::fflush(stdout);
  }

  const std::string device = config->device_id;
  const std::string csr_name = out_file ? out_file->filename().string() : device + ".csr";
  fmt::print(stderr, "reflow-agent: {} TLS key {} (EC P-256, mode 0600{}; sha256 {})\n",
             key->created ? "created the" : "using the existing", key_path.string(),
             given->empty() ? std::string() : fmt::format(", owned by {}", *given),
             key->public_key_sha256);
  if (out_file)
    fmt::print(stderr, "reflow-agent: wrote the CSR for CN={} to {}\n", device, out_file->string());
  // The same steps and file names as docs/node-guide.md step 5.
  fmt::print(stderr,
             "reflow-agent: next (docs/node-guide.md, step 5):\n"
             "  1. give the node operator two files: the CSR {csr} and the device's public key "
             "{jwk}\n"
             "     (`reflow-agent key show --config {cfg}` prints it again)\n"
             "  2. the node operator registers the key and makes the enrolment bundle:\n"
             "       sudo -u reflow-ingest reflow-ingest device add {dev} --jwk {jwk_name}\n"
             "       sudo reflow-ingest ca enroll {csr} --url mqtts://NODE:8883 --out "
             "{dev}.enrol.json\n"
             "     and gives back {dev}.enrol.json\n"
             "  3. on this device: sudo reflow-agent enroll --config {cfg} {dev}.enrol.json\n"
             "     (writes the certificates and the [mqtt] keys), then restart the agent\n",
             fmt::arg("csr", csr_name), fmt::arg("dev", device),
             fmt::arg("cfg", config_path.string()),
             fmt::arg("jwk", public_jwk_path(config->key_file).string()),
             fmt::arg("jwk_name", public_jwk_path(config->key_file).filename().string()));
  return 0;
}

}  // namespace agent::cli
