// SPDX-License-Identifier: AGPL-3.0-or-later
// reflow-ingest: parses arguments and hands over to one command (one file per command group).
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <utility>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <reflow/core/cli_options.hpp>
#include <reflow/core/process.hpp>
#include <reflow/node/query.hpp>

#include "commands.hpp"

namespace ingest::cli {

void add_config_option(CLI::App& command, std::string& path) {
  command.add_option("--config", path, "The node's TOML config file")->capture_default_str();
}

namespace {

// What to do about a file the caller may not read: the store and the config belong to the
// service user, and the package lets the reflow-ingest group read them (docs/node-guide.md).
constexpr std::string_view k_permission_hint =
    "; run the command as the service user (sudo -u reflow-ingest reflow-ingest …), or, to "
    "query only, as a member of the reflow-ingest group (sudo adduser $USER reflow-ingest, then "
    "log in again)";

// Whether `path`, or a directory on the way to it, refuses the caller `mode` access.
bool permission_denied(const std::filesystem::path& path, int mode) {
  if (::access(path.c_str(), mode) == 0) return false;
  if (errno == EACCES) return true;
  const std::filesystem::path dir = path.parent_path();
  return !dir.empty() && ::access(dir.c_str(), X_OK) != 0 && errno == EACCES;
}

}  // namespace

agent::Result<IngestConfig> load_config_for_command(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::status(path, ec).type() == std::filesystem::file_type::not_found)
    return agent::fail(
        agent::ErrorCode::invalid_config,
        fmt::format("config file {} does not exist: pass --config FILE, or create it (start from "
                    "config/reflow-ingest.example.toml, which documents every key)",
                    path));
  auto config = load_ingest_config(path);
  if (!config && permission_denied(path, R_OK))
    return agent::fail(config.error().code,
                       fmt::format("{}{}", config.error().message, k_permission_hint));
  return config;
}

void print_error(const std::string& message) {
  std::fputs(fmt::format("reflow-ingest: {}\n", message).c_str(), stderr);
}

std::optional<IngestConfig> config_or_report(const std::string& path) {
  auto config = load_config_for_command(path);
  if (print_if_error(config)) return std::nullopt;
  return std::move(*config);
}

std::optional<NodeSigner> node_signer_or_report(const IngestConfig& config) {
  auto signer = NodeSigner::load(config);
  if (print_if_error(signer)) return std::nullopt;
  if (!*signer)
    print_error(
        fmt::format("the node has no key: {} does not exist; create it with "
                    "`reflow-ingest key init`",
                    config.effective_node_key_file().string()));
  return std::move(*signer);
}

std::unique_ptr<Store> open_store_or_report(const IngestConfig& config, StoreOpen mode) {
  const std::filesystem::path path = config.store_path();
  auto store = open_configured_store(config, mode);
  if (!store) {
    const bool denied = config.store_kind == StoreKind::sqlite &&
                        store.error().code != agent::ErrorCode::not_found &&
                        permission_denied(path, mode == StoreOpen::existing_only ? R_OK : W_OK);
    print_error(fmt::format("{}{}", store.error().message, denied ? k_permission_hint : ""));
    return nullptr;
  }
  return std::move(*store);
}

std::unique_ptr<Store> open_store_or_report(const std::string& config_path, StoreOpen mode) {
  auto config = config_or_report(config_path);
  if (!config) return nullptr;
  return open_store_or_report(*config, mode);
}

std::optional<EventFilter> event_filter_or_report(const std::string& device,
                                                  const std::string& since,
                                                  const std::string& action) {
  EventFilter filter;
  if (!device.empty()) filter.device = device;
  if (!action.empty()) filter.action = action;
  if (!since.empty()) {
    auto since_unix_ms = parse_since(since);
    if (print_if_error(since_unix_ms)) return std::nullopt;
    filter.since_unix_ms = *since_unix_ms;
  }
  return filter;
}

}  // namespace ingest::cli

int main(int argc, char** argv) {
  agent::block_signals();
  CLI::App app{
      "reflow-ingest: the community node's receiver. Verifies the signed events devices publish "
      "over MQTT (PROTOCOL §7), stores them, acknowledges them, and answers questions about "
      "them; also runs the node's device registry and certificate authority."};
  app.set_version_flag("--version", std::string("reflow-ingest ") + agent::version());
  app.require_subcommand(1);

  int exit_code = 0;
  try {
    ingest::cli::add_run_command(app, exit_code);
    ingest::cli::add_device_commands(app, exit_code);
    ingest::cli::add_query_commands(app, exit_code);
    ingest::cli::add_report_commands(app, exit_code);
    ingest::cli::add_members_commands(app, exit_code);
    ingest::cli::add_log_commands(app, exit_code);
    ingest::cli::add_export_command(app, exit_code);
    ingest::cli::add_key_commands(app, exit_code);
    ingest::cli::add_migrate_command(app, exit_code);
    ingest::cli::add_ca_commands(app, exit_code);
    ingest::cli::add_web_commands(app, exit_code);
    agent::cli_options::refuse_empty_values(app);
    CLI11_PARSE(app, argc, argv);
  } catch (const std::exception& e) {
    ingest::cli::print_error(fmt::format("fatal: {}", e.what()));
    return 1;
  }
  return exit_code;
}
