// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-ingest device add|list|revoke`: the node's device registry (PROTOCOL §7 step 2).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/env.hpp>
#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/units.hpp>
#include <reflow/node/store.hpp>

#include "commands.hpp"

namespace ingest::cli {
namespace {

struct DeviceOptions {
  std::string config{k_default_config_path};
  std::string device;
  std::string jwk_file;
  bool json = false;
};

// The JWK text from FILE, or stdin for "-".
agent::Result<std::string> read_jwk_text(const std::string& file) {
  if (file == "-") {
    std::string text{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
    if (std::cin.bad()) return agent::fail(agent::ErrorCode::io, "--jwk -: reading stdin failed");
    return text;
  }
  std::ifstream in(file, std::ios::binary);
  if (!in)
    return agent::fail(
        agent::ErrorCode::io,
        fmt::format("--jwk: cannot read \"{}\"; check the path and its permissions", file));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

int add(const DeviceOptions& options) {
  if (!agent::is_valid_device_id(options.device)) {
    print_error(
        fmt::format("invalid device id \"{}\": expected ^[a-z0-9][a-z0-9._-]{{0,63}}$ "
                    "(PROTOCOL §1), e.g. \"fablab-mk4-01\"",
                    options.device));
    return 1;
  }
  // The config first: a wrong --config is the first thing to fix, and nothing is created for it.
  auto config = config_or_report(options.config);
  if (!config) return 1;
  auto text = read_jwk_text(options.jwk_file);
  if (print_if_error(text)) return 1;
  auto jwk = agent::parse_public_jwk(*text);
  if (!jwk) {
    print_error(
        fmt::format("--jwk {}: not an Ed25519 public JWK ({}); pass the JSON "
                    "`reflow-agent keygen` writes beside the key (device.jwk) or `reflow-agent key "
                    "show` prints",
                    options.jwk_file, jwk.error().message));
    return 1;
  }
  auto store = open_store_or_report(*config, StoreOpen::create_if_missing);
  if (!store) return 1;
  if (print_if_error(store->add_device(options.device, *jwk, agent::Env::real().now_unix_ms())))
    return 1;
  fmt::print("added {} kid {}\n", options.device, jwk->kid);
  return 0;
}

int list(const DeviceOptions& options) {
  auto store = open_store_or_report(options.config, StoreOpen::existing_only);
  if (!store) return 1;
  auto keys = store->list_keys();
  if (print_if_error(keys)) return 1;
  std::size_t device_width = 0;
  for (const auto& key : *keys)
    device_width = std::max(device_width, key.device.size());
  for (const auto& key : *keys) {
    const std::string added = agent::format_rfc3339_ms(key.added_unix_ms);
    if (options.json) {
      nlohmann::ordered_json row;
      row["device"] = key.device;
      row["kid"] = key.jwk.kid;
      row["added"] = added;
      row["revoked"] = key.revoked_unix_ms
                           ? nlohmann::ordered_json(agent::format_rfc3339_ms(*key.revoked_unix_ms))
                           : nlohmann::ordered_json(nullptr);
      fmt::print("{}\n", row.dump());
    } else {
      fmt::print("{:<{}}  {}  {}  {}\n", key.device, device_width, key.jwk.kid, added,
                 key.revoked_unix_ms ? agent::format_rfc3339_ms(*key.revoked_unix_ms) : "-");
    }
  }
  return 0;
}

int revoke(const DeviceOptions& options) {
  auto store = open_store_or_report(options.config, StoreOpen::existing_only);
  if (!store) return 1;
  auto keys = store->list_keys();
  if (print_if_error(keys)) return 1;
  const auto now = agent::Env::real().now_unix_ms();
  if (print_if_error(store->revoke_device(options.device, now))) return 1;
  const auto count = std::count_if(keys->begin(), keys->end(),
                                   [&](const auto& key) { return key.device == options.device; });
  fmt::print("revoked {} ({} keys) at {}\n", options.device, count, agent::format_rfc3339_ms(now));
  return 0;
}

}  // namespace

void add_device_commands(CLI::App& app, int& exit_code) {
  auto* device = app.add_subcommand(
      "device", "The node's device registry: which Ed25519 keys may sign which device's events");
  device->require_subcommand(1);

  auto add_options = std::make_shared<DeviceOptions>();
  auto* add_command = device->add_subcommand(
      "add",
      "Register a device's public key: the JWK file `reflow-agent keygen` writes beside the "
      "key (device.jwk), or that `reflow-agent key show` prints");
  add_config_option(*add_command, add_options->config);
  add_command->add_option("DEVICE_ID", add_options->device, "The device id (PROTOCOL §1)")
      ->required();
  add_command->add_option("--jwk", add_options->jwk_file, "File with the public JWK; - for stdin")
      ->required();
  add_command->callback([add_options, &exit_code] { exit_code = add(*add_options); });

  auto list_options = std::make_shared<DeviceOptions>();
  auto* list_command = device->add_subcommand(
      "list", "One row per key: device, kid, added, revoked (RFC 3339, or - when not revoked)");
  add_config_option(*list_command, list_options->config);
  list_command->add_flag("--json", list_options->json,
                         "JSON lines {\"device\",\"kid\",\"added\",\"revoked\"}");
  list_command->callback([list_options, &exit_code] { exit_code = list(*list_options); });

  auto revoke_options = std::make_shared<DeviceOptions>();
  auto* revoke_command = device->add_subcommand(
      "revoke", "Revoke every key of a device as of now: later events signed by them are rejected");
  add_config_option(*revoke_command, revoke_options->config);
  revoke_command->add_option("DEVICE_ID", revoke_options->device, "The device id")->required();
  revoke_command->callback([revoke_options, &exit_code] { exit_code = revoke(*revoke_options); });
}

}  // namespace ingest::cli
