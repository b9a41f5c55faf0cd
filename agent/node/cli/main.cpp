// SPDX-License-Identifier: AGPL-3.0-or-later
// reflow-ingest: parses arguments and hands over to one command (one file per command group).
#include <cstdio>
#include <exception>
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

agent::Result<IngestConfig> load_config_for_command(const std::string& path) {
  if (path == k_default_config_path && !std::filesystem::exists(path)) return IngestConfig{};
  return load_ingest_config(path);
}

void print_error(const std::string& message) {
  std::fputs(fmt::format("reflow-ingest: {}\n", message).c_str(), stderr);
}

std::optional<IngestConfig> config_or_report(const std::string& path) {
  auto config = load_config_for_command(path);
  if (print_if_error(config)) return std::nullopt;
  return std::move(*config);
}

std::unique_ptr<Store> open_store_or_report(const IngestConfig& config) {
  auto store = open_sqlite_store(config.store_path());
  if (print_if_error(store)) return nullptr;
  return std::move(*store);
}

std::unique_ptr<Store> open_store_or_report(const std::string& config_path) {
  auto config = config_or_report(config_path);
  if (!config) return nullptr;
  return open_store_or_report(*config);
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
    ingest::cli::add_export_command(app, exit_code);
    ingest::cli::add_ca_commands(app, exit_code);
    agent::cli_options::refuse_empty_values(app);
    CLI11_PARSE(app, argc, argv);
  } catch (const std::exception& e) {
    ingest::cli::print_error(fmt::format("fatal: {}", e.what()));
    return 1;
  }
  return exit_code;
}
