// SPDX-License-Identifier: AGPL-3.0-or-later
// key init|show: the node's own Ed25519 key (reflow/node/node_key.hpp), which signs its acks and
// the checkpoints of its log (PROTOCOL §5.1).
#include <iostream>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/signed_note.hpp>
#include <reflow/node/node_key.hpp>

#include "commands.hpp"

namespace ingest::cli {
namespace {

struct KeyOptions {
  std::string config_path{k_default_config_path};
  bool json = false;
};

int print_key(const IngestConfig& config, const agent::PublicJwk& jwk, bool json) {
  const std::string origin = config.effective_log_origin();
  const std::string verifier = agent::note::verifier_key(origin, jwk.x);
  if (json) {
    const nlohmann::ordered_json out = {{"jwk", nlohmann::ordered_json::parse(jwk.to_json())},
                                        {"kid", jwk.kid},
                                        {"origin", origin},
                                        {"verifier_key", verifier}};
    std::cout << out.dump() << '\n';
  } else {
    std::cout << fmt::format(
        "node key:     {}\nkid:          {}\npublic JWK:   {}\nlog origin:   {}\nverifier key: "
        "{}\n",
        config.effective_node_key_file().string(), jwk.kid, jwk.to_json(), origin, verifier);
  }
  std::cout.flush();
  return std::cout ? 0 : 1;
}

int run_init(const KeyOptions& options) {
  auto config = config_or_report(options.config_path);
  if (!config) return 1;
  auto jwk = create_node_key(*config);
  if (print_if_error(jwk)) return 1;
  return print_key(*config, *jwk, options.json);
}

int run_show(const KeyOptions& options) {
  auto config = config_or_report(options.config_path);
  if (!config) return 1;
  auto signer = node_signer_or_report(*config);
  if (!signer) return 1;
  return print_key(*config, signer->public_jwk(), options.json);
}

}  // namespace

void add_key_commands(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<KeyOptions>();
  auto* key = app.add_subcommand(
      "key",
      "The node's own Ed25519 key (ingest.node_key_file): it signs the acks and the log's "
      "checkpoints, so that devices and auditors can check the node's word");
  key->require_subcommand(1);

  auto* init = key->add_subcommand(
      "init",
      "Create the node's key (mode 0600; refuses to overwrite one) and its public JWK beside it "
      "(node.jwk), then print them as `key show` does. Restart the service to sign with it");
  add_config_option(*init, options->config_path);
  init->add_flag("--json", options->json, "Print one JSON object, as `key show --json`");
  init->callback([options, &exit_code] { exit_code = run_init(*options); });

  auto* show = key->add_subcommand(
      "show",
      "Print the node's public key: its RFC 7638 kid, public JWK, the log's origin and the "
      "signed-note verifier key auditors use");
  add_config_option(*show, options->config_path);
  show->add_flag("--json", options->json,
                 "One JSON object: {\"jwk\":{…},\"kid\":…,\"origin\":…,\"verifier_key\":…}");
  show->callback([options, &exit_code] { exit_code = run_show(*options); });
}

}  // namespace ingest::cli
