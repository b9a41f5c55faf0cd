// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-agent enroll`: the device's half of getting a broker certificate. It makes (once) the
// device's TLS key and prints a CSR naming the device id; the node's `reflow-ingest ca sign`
// turns that into the certificate the agent presents over mqtts:// (ingest.md, PROTOCOL §2).
#include <cerrno>
#include <cstring>
#include <fstream>
#include <system_error>

#include <fmt/format.h>

#include <reflow/core/jose.hpp>
#include <reflow/core/tls.hpp>
#include <reflow/device/config.hpp>

#include "commands.hpp"

namespace agent::cli {

int enroll(const std::filesystem::path& config_path,
           const std::optional<std::filesystem::path>& out_file) {
  auto config = load_config(config_path);
  if (!config) {
    print_error(config.error().message);
    return 1;
  }
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
  fmt::print(stderr, "reflow-agent: {} TLS key {} (EC P-256, mode 0600; sha256 {})\n",
             key->created ? "created the" : "using the existing", key_path.string(),
             key->public_key_sha256);
  if (out_file)
    fmt::print(stderr, "reflow-agent: wrote the CSR for CN={} to {}\n", device, out_file->string());
  // The same steps and file names as README.md "Setting up a device" and docs/node-guide.md
  // step 5: the device's files under /etc/reflow-agent, the node's named after the device.
  fmt::print(
      stderr,
      "reflow-agent: next (docs/node-guide.md, step 5):\n"
      "  1. give the node operator two files: the CSR {csr} and the device's public key as "
      "{dev}.jwk\n"
      "       reflow-agent key show --config {cfg} > {dev}.jwk\n"
      "     (the same JWK keygen wrote to {jwk})\n"
      "  2. the node operator registers the key and signs the CSR:\n"
      "       sudo -u reflow-ingest reflow-ingest device add {dev} --jwk {dev}.jwk\n"
      "       sudo -u reflow-ingest reflow-ingest ca sign {csr} --out {dev}.crt\n"
      "     and gives back {dev}.crt and the node CA's certificate ca.crt\n"
      "  3. on this device:\n"
      "       sudo install -m 0644 {dev}.crt /etc/reflow-agent/device.crt\n"
      "       sudo install -m 0644 ca.crt /etc/reflow-agent/node-ca.pem\n"
      "     then set in [mqtt] of {cfg} (NODE: a host name the node's `ca server --host` "
      "gave):\n"
      "       url = \"mqtts://NODE:8883\"\n"
      "       ca_file = \"/etc/reflow-agent/node-ca.pem\"\n"
      "       cert_file = \"/etc/reflow-agent/device.crt\"\n"
      "{key_line}"
      "  4. restart the agent; `reflow-agent status` shows the certificate and its expiry\n",
      fmt::arg("csr", csr_name), fmt::arg("dev", device), fmt::arg("cfg", config_path.string()),
      fmt::arg("jwk", public_jwk_path(config->key_file).string()),
      fmt::arg("key_line", key_configured
                               ? std::string()
                               : fmt::format("       key_file = \"{}\"\n", key_path.string())));
  return 0;
}

}  // namespace agent::cli
