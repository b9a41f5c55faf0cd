// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-agent enroll`: the device's half of getting a broker certificate. It makes (once) the
// device's TLS key and prints a CSR naming the device id; the node's `reflow-ingest ca sign`
// turns that into the certificate the agent presents over mqtts:// (ingest.md, PROTOCOL §2).
#include <cerrno>
#include <cstring>
#include <fstream>
#include <system_error>

#include <fmt/format.h>

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
  const std::string csr_name = out_file ? out_file->string() : device + ".csr";
  fmt::print(stderr, "reflow-agent: {} TLS key {} (EC P-256, mode 0600; sha256 {})\n",
             key->created ? "created the" : "using the existing", key_path.string(),
             key->public_key_sha256);
  if (out_file)
    fmt::print(stderr, "reflow-agent: wrote the CSR for CN={} to {}\n", device, csr_name);
  fmt::print(stderr,
             "reflow-agent: next:\n"
             "  1. on the node: reflow-ingest ca sign {} --out {}.crt\n"
             "  2. copy {}.crt and the node's ca.crt to this device, then set in [mqtt] of {}:\n"
             "       url = \"mqtts://NODE:8883\"\n"
             "       cert_file = \"/PATH/{}.crt\"\n"
             "{}"
             "       ca_file = \"/PATH/ca.crt\"\n"
             "  3. restart the agent; `reflow-agent status` shows the certificate and its expiry\n",
             csr_name, device, device, config_path.string(), device,
             key_configured ? "" : fmt::format("       key_file = \"{}\"\n", key_path.string()));
  return 0;
}

}  // namespace agent::cli
