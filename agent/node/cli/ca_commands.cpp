// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-ingest ca init|sign|server|client`: the node's certificate authority for the broker's
// mutual TLS. The CA lives in [ca] dir (IngestConfig::effective_ca_dir); the work is in
// reflow/node/ca.hpp (agent/node/src/ca.cpp), this file only reads arguments, writes files and
// says what to do next.
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>

#include <fmt/format.h>

#include <reflow/core/enrolment.hpp>
#include <reflow/core/mqtt_connect.hpp>
#include <reflow/core/tls.hpp>
#include <reflow/core/units.hpp>
#include <reflow/node/ca.hpp>
#include <reflow/node/node_key.hpp>

#include "commands.hpp"

namespace ingest::cli {
namespace {

struct CaArgs {
  std::string config{k_default_config_path};
  std::string common_name{k_default_ca_common_name};
  std::uint32_t days = 0;  // 0: the command's default
  std::string csr_file;
  std::string out_file;
  std::string out_dir = ".";
  std::vector<std::string> hosts;
  std::string client_name;
  std::string device_url;
  bool replace = false;
};

agent::Result<std::string> read_input(const std::string& path) {
  std::ostringstream text;
  if (path == "-") {
    text << std::cin.rdbuf();
    return text.str();
  }
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return agent::fail(agent::ErrorCode::io,
                       fmt::format("cannot read {}: {}", path, std::strerror(errno)));
  text << in.rdbuf();
  return text.str();
}

// Replaces `path` atomically (a renewed certificate must never be half written); mode 0644.
agent::Status write_certificate_file(const std::filesystem::path& path, const std::string& pem) {
  const auto temp = std::filesystem::path(path.string() + ".tmp");
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    out << pem;
    out.flush();
    if (!out)
      return agent::fail(agent::ErrorCode::io,
                         fmt::format("cannot write {}: {}", temp.string(), std::strerror(errno)));
  }
  std::error_code ec;
  // 0644 whatever the umask: certificates are public, and the broker reads them as another user.
  std::filesystem::permissions(temp, std::filesystem::perms(0644),
                               std::filesystem::perm_options::replace, ec);
  if (!ec) std::filesystem::rename(temp, path, ec);
  if (ec) {
    std::filesystem::remove(temp, ec);
    return agent::fail(agent::ErrorCode::io,
                       fmt::format("cannot write {}: {}", path.string(), ec.message()));
  }
  return {};
}

int ca_init(const CaArgs& args) {
  auto config = config_or_report(args.config);
  if (!config) return 1;
  const auto dir = config->effective_ca_dir();
  CaInitOptions options;
  options.common_name = args.common_name;
  if (args.days != 0) options.days = args.days;
  std::error_code ec;
  if (!dir.parent_path().empty()) std::filesystem::create_directories(dir.parent_path(), ec);
  auto ca = ca_init(dir, options);
  if (print_if_error(ca)) return 1;
  fmt::print("created CA \"{}\" in {} (valid until {})\n", ca->subject, dir.string(),
             agent::format_rfc3339_s(ca->not_after));
  fmt::print(
      stderr,
      "reflow-ingest: {} is the CA's private key (mode 0600): back it up offline; whoever "
      "holds it can make device identities.\n"
      "reflow-ingest: next: `reflow-ingest ca server --host NAME` for the broker, "
      "`reflow-ingest ca client ingest@node` for this service, and `reflow-ingest ca enroll` "
      "for each device's CSR (reflow-agent enroll), which hands the device {} with its "
      "certificate in one bundle.\n",
      (dir / k_ca_key_file).string(), (dir / k_ca_cert_file).string());
  return 0;
}

// The CSR from CA_FILE, checked before anything else so that only its own problems are
// reported with its name; nullopt when it was refused (printed).
std::optional<std::string> read_csr_or_report(const std::string& csr_file) {
  const std::string name = csr_file == "-" ? "stdin" : csr_file;
  auto csr = read_input(csr_file);
  if (!csr) {
    print_error(csr.error().message);
    return std::nullopt;
  }
  if (auto parsed = agent::tls::parse_csr(*csr); !parsed) {
    print_error(fmt::format("{}: {}", name, parsed.error().message));
    return std::nullopt;
  }
  return std::move(*csr);
}

// Where an issued certificate (or an enrolment bundle) goes: the file `out_file`, or stdout when
// it is empty. It is written before the CA records the issuance; when recording then fails,
// failed() removes the file, so that nothing is handed out that the CA has no record of.
class Delivery {
 public:
  explicit Delivery(std::filesystem::path out_file) : m_out_file(std::move(out_file)) {}

  // Writes `text`: an Issued's PEM, or the bundle that carries it.
  agent::Status write(const std::string& text) {
    if (m_out_file.empty()) {
      fmt::print("{}", text);
      if (std::fflush(stdout) != 0 || std::ferror(stdout))
        return agent::fail(agent::ErrorCode::io, "cannot write the certificate to stdout");
      return {};
    }
    if (auto ok = write_certificate_file(m_out_file, text); !ok) return ok;
    m_written = true;
    return {};
  }

  // The Deliver of ca_sign and ca_issue_with_key: writes the issued PEM.
  Deliver certificate() {
    return [this](const Issued& issued) { return write(issued.pem); };
  }

  // Reports a refused issuance, removing what was written for it; the exit status 1.
  int failed(const agent::Error& error) const {
    std::error_code ec;
    if (m_written) std::filesystem::remove(m_out_file, ec);
    print_error(error.message);
    return 1;
  }

 private:
  std::filesystem::path m_out_file;
  bool m_written = false;
};

// The issuance options of `role` from the command line, with the configured validity by default.
IssueOptions issue_options(const CaArgs& args, const IngestConfig& config, CertRole role) {
  IssueOptions options;
  options.role = role;
  options.days = args.days != 0 ? args.days : config.device_cert_days;
  options.hosts = args.hosts;
  options.replace = args.replace;
  return options;
}

int ca_sign(const CaArgs& args) {
  auto config = config_or_report(args.config);
  if (!config) return 1;
  auto csr = read_csr_or_report(args.csr_file);
  if (!csr) return 1;
  Delivery delivery(args.out_file);
  auto issued = ca_sign(config->effective_ca_dir(), *csr,
                        issue_options(args, *config, CertRole::device), delivery.certificate());
  // Not recorded as issued, so not handed out either.
  if (!issued) return delivery.failed(issued.error());
  fmt::print(stderr,
             "reflow-ingest: issued {} (device) serial {}, valid until {}{}\n"
             "reflow-ingest: next: copy it to the device and set mqtt.cert_file to it (with "
             "mqtt.key_file, mqtt.ca_file = {} and an mqtts:// url), or hand the device one "
             "file with `reflow-ingest ca enroll` instead\n",
             issued->info.subject, issued->info.serial,
             agent::format_rfc3339_s(issued->info.not_after),
             args.out_file.empty() ? "" : fmt::format(", written to {}", args.out_file),
             (config->effective_ca_dir() / k_ca_cert_file).string());
  return 0;
}

// `ca enroll`: ca sign, with the certificate handed out inside an enrolment bundle.
int ca_enroll(const CaArgs& args) {
  auto config = config_or_report(args.config);
  if (!config) return 1;
  if (auto url = agent::parse_broker_url(args.device_url); !url || !url->tls) {
    print_error(
        fmt::format("--url \"{}\": {}; expected mqtts://HOST[:PORT], HOST one of the "
                    "names of `ca server --host`",
                    args.device_url, url ? "not mqtts://" : url.error().message));
    return 2;
  }
  auto csr = read_csr_or_report(args.csr_file);
  if (!csr) return 1;
  // The node's key, when it has one, goes to the device with the CA: its acks are signed by it
  // (PROTOCOL §5.1).
  auto signer = NodeSigner::load(*config);
  if (print_if_error(signer)) return 1;
  const auto ca_cert_path = config->effective_ca_dir() / k_ca_cert_file;
  Delivery delivery(args.out_file);
  std::string bundle_name = args.out_file.empty() ? "stdout" : args.out_file;
  auto issued =
      ca_sign(config->effective_ca_dir(), *csr, issue_options(args, *config, CertRole::device),
              [&](const Issued& issued) -> agent::Status {
                auto ca_pem = read_input(ca_cert_path.string());
                if (!ca_pem) return std::unexpected(ca_pem.error());
                agent::enrolment::Bundle bundle;
                bundle.device_id = issued.info.common_name;
                bundle.url = args.device_url;
                bundle.topic_prefix = config->topic_prefix;
                bundle.ca_cert = *ca_pem;
                bundle.device_cert = issued.pem;
                if (*signer) bundle.node_ack_jwk = (*signer)->public_jwk().to_json();
                return delivery.write(agent::enrolment::to_json(bundle));
              });
  if (!issued) return delivery.failed(issued.error());
  fmt::print(stderr,
             "reflow-ingest: issued {} (device) serial {}, valid until {}; the enrolment bundle "
             "({} at {}, topic prefix {}) is in {}\n"
             "reflow-ingest: next: give it to the device's owner, who runs\n"
             "  sudo reflow-agent enroll --config /etc/reflow-agent/agent.toml {}\n"
             "(and register the device's key, if not done yet: reflow-ingest device add {} --jwk "
             "{}.jwk)\n",
             issued->info.subject, issued->info.serial,
             agent::format_rfc3339_s(issued->info.not_after), args.device_url,
             ca_cert_path.filename().string(), config->topic_prefix, bundle_name,
             args.out_file.empty() ? "BUNDLE" : args.out_file, issued->info.common_name,
             issued->info.common_name);
  return 0;
}

// `ca server` and `ca client`: the key is made here, next to the certificate.
int ca_issue_local(const CaArgs& args, CertRole role) {
  auto config = config_or_report(args.config);
  if (!config) return 1;
  // Absolute, so that the printed broker and service settings work from anywhere.
  const std::filesystem::path dir = std::filesystem::absolute(args.out_dir);
  const std::string base = role == CertRole::server ? "server" : args.client_name;
  const auto key_file = dir / (base + ".key");
  const auto cert_file = dir / (base + ".crt");
  Delivery delivery(cert_file);
  auto issued = ca_issue_with_key(config->effective_ca_dir(), key_file,
                                  role == CertRole::client ? args.client_name : "",
                                  issue_options(args, *config, role), delivery.certificate());
  if (!issued) return delivery.failed(issued.error());
  // A copy of the CA certificate beside the issued one: the broker (and the service) can read
  // it there, while the CA directory is 0700 (issue 15).
  const auto ca_cert = dir / k_ca_cert_file;
  {
    auto text = read_input((config->effective_ca_dir() / k_ca_cert_file).string());
    if (print_if_error(text)) return 1;
    if (print_if_error(write_certificate_file(ca_cert, *text))) return 1;
  }
  fmt::print("issued {} ({}) serial {}, valid until {}\nkey:         {}\ncertificate: {}\n",
             issued->info.subject, to_string(role), issued->info.serial,
             agent::format_rfc3339_s(issued->info.not_after), key_file.string(),
             cert_file.string());
  if (role == CertRole::server)
    fmt::print(stderr,
               "reflow-ingest: Mosquitto listener for devices (PROTOCOL §2):\n"
               "  listener 8883\n  cafile {}\n  certfile {}\n  keyfile {}\n"
               "  require_certificate true\n  use_identity_as_username true\n"
               "  (the broker must be able to read these files: chown the key to the mosquitto "
               "user)\n",
               ca_cert.string(), cert_file.string(), key_file.string());
  else
    fmt::print(stderr,
               "reflow-ingest: for this service's [mqtt]: url = \"mqtts://HOST:8883\", cert_file "
               "= \"{}\", key_file = \"{}\", ca_file = \"{}\"; its MQTT user name at the broker is "
               "{}\n",
               cert_file.string(), key_file.string(), ca_cert.string(), args.client_name);
  return 0;
}

}  // namespace

void add_ca_commands(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<CaArgs>();
  auto* ca = app.add_subcommand(
      "ca",
      "The node's certificate authority for the broker's mutual TLS: device certificates "
      "(CN = device id), the broker's server certificate and service identities. The CA's files "
      "belong to the owner of its directory (the reflow-ingest user): run these commands as that "
      "user (sudo -u reflow-ingest) or as root, which leaves the files it creates to that owner");
  ca->require_subcommand(1);

  auto* init = ca->add_subcommand("init",
                                  "Create the CA key and self-signed certificate in the "
                                  "[ca] dir (default DATA_DIR/ca); never replaces one");
  add_config_option(*init, args->config);
  init->add_option("--cn", args->common_name, "The CA's common name")->capture_default_str();
  init->add_option("--days", args->days, "Validity of the CA certificate (default 3650)")
      ->check(CLI::Range(1, 36500));
  init->callback([args, &exit_code] { exit_code = ca_init(*args); });

  auto* sign = ca->add_subcommand(
      "sign",
      "Issue a device certificate from a CSR (`reflow-agent enroll`); CN must be a valid "
      "device id");
  add_config_option(*sign, args->config);
  sign->add_option("CSR_FILE", args->csr_file, "The CSR (PEM); - reads stdin")->required();
  sign->add_option("--out", args->out_file, "Write the certificate here instead of stdout");
  sign->add_option("--days", args->days, "Validity (default ca.device_cert_days)")
      ->check(CLI::Range(1, 36500));
  sign->add_flag("--replace", args->replace,
                 "Issue although the device already has a certificate for another key (its key "
                 "was replaced on purpose)");
  sign->callback([args, &exit_code] { exit_code = ca_sign(*args); });

  auto* enroll = ca->add_subcommand(
      "enroll",
      "Issue a device certificate from a CSR (`reflow-agent enroll`), as `ca sign` does, and "
      "write everything the device needs into one enrolment bundle (JSON: the CA's and the "
      "device's certificates as PEM, the broker URL, [mqtt] topic_prefix, and node_ack_jwk, "
      "the node's public key (`key init`) or null; docs/node-guide.md) for `reflow-agent enroll "
      "--config FILE BUNDLE`. "
      "Nothing is recorded as issued unless the bundle was written");
  add_config_option(*enroll, args->config);
  enroll->add_option("CSR_FILE", args->csr_file, "The CSR (PEM); - reads stdin")->required();
  enroll
      ->add_option("--url", args->device_url,
                   "The broker as the device reaches it: mqtts://HOST:PORT, HOST one of the names "
                   "of `ca server --host`")
      ->required();
  enroll->add_option("--out", args->out_file,
                     "Write the bundle here (mode 0644) instead of stdout, e.g. DEVICE.enrol.json");
  enroll->add_option("--days", args->days, "Validity (default ca.device_cert_days)")
      ->check(CLI::Range(1, 36500));
  enroll->add_flag("--replace", args->replace,
                   "Issue although the device already has a certificate for another key (its "
                   "key was replaced on purpose)");
  enroll->callback([args, &exit_code] { exit_code = ca_enroll(*args); });

  auto* server =
      ca->add_subcommand("server",
                         "Make the broker's key (server.key, kept if it exists) and certificate "
                         "(server.crt) with these names as subjectAltName, and copy the CA's "
                         "certificate beside them (ca.crt, the broker's cafile)");
  add_config_option(*server, args->config);
  server->add_option("--host", args->hosts, "DNS name or IP address clients connect to; repeat")
      ->required();
  server->add_option("--out-dir", args->out_dir, "Where to write server.key and server.crt")
      ->capture_default_str();
  server->add_option("--days", args->days, "Validity (default ca.device_cert_days)")
      ->check(CLI::Range(1, 36500));
  server->add_flag("--replace", args->replace,
                   "Issue although the name already has a certificate for another key");
  server->callback([args, &exit_code] { exit_code = ca_issue_local(*args, CertRole::server); });

  auto* client = ca->add_subcommand(
      "client",
      "Make a service identity's key (NAME.key, kept if it exists) and client "
      "certificate (NAME.crt), and copy the CA's certificate beside them (ca.crt); NAME must "
      "not be a valid device id (e.g. ingest@node)");
  add_config_option(*client, args->config);
  client->add_option("NAME", args->client_name, "The identity, e.g. ingest@node")->required();
  client->add_option("--out-dir", args->out_dir, "Where to write NAME.key and NAME.crt")
      ->capture_default_str();
  client->add_option("--days", args->days, "Validity (default ca.device_cert_days)")
      ->check(CLI::Range(1, 36500));
  client->add_flag("--replace", args->replace,
                   "Issue although the name already has a certificate for another key");
  client->callback([args, &exit_code] { exit_code = ca_issue_local(*args, CertRole::client); });
}

}  // namespace ingest::cli
