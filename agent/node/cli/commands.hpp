// SPDX-License-Identifier: AGPL-3.0-or-later
// The reflow-ingest commands. Each add_* function adds its subcommands to the app; a subcommand's
// callback loads the config named by `--config` (every subcommand has the option, default
// ingest::k_default_config_path), does its work and stores the process exit status in
// `exit_code` (0 success, 1 failure, 2 usage).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include <reflow/core/result.hpp>
#include <reflow/node/config.hpp>
#include <reflow/node/node_key.hpp>
#include <reflow/node/store.hpp>

namespace ingest::cli {

/// Adds `--config PATH` to `command`, bound to `path`.
void add_config_option(CLI::App& command, std::string& path);

/// Loads the config at `path`. A missing file is an error (invalid_config naming the path and
/// saying to pass --config or create it), the default path included: built-in defaults would
/// silently create a store where nobody looks. A file the caller may not read gets the hint to
/// run as the service user or join the reflow-ingest group. Errors are printed by the caller.
agent::Result<IngestConfig> load_config_for_command(const std::string& path);

/// Prints "reflow-ingest: MESSAGE" to stderr.
void print_error(const std::string& message);

/// Prints the error of a failed `result` (print_error); returns whether it failed:
/// `if (print_if_error(result)) return 1;`.
template <typename T>
bool print_if_error(const agent::Result<T>& result) {
  if (result) return false;
  print_error(result.error().message);
  return true;
}

/// load_config_for_command; prints the error and returns nullopt on failure.
std::optional<IngestConfig> config_or_report(const std::string& path);

/// The node's key of `config` (NodeSigner::load); prints the error — for a node without a key,
/// the file that does not exist and that `reflow-ingest key init` creates it — and returns
/// nullopt on failure.
std::optional<NodeSigner> node_signer_or_report(const IngestConfig& config);

/// Opens the store of `config` (`mode`: whether a missing store is created, see
/// open_sqlite_store); prints the error — with the service-user / group hint when the file or its
/// directory refuses the caller — and returns nullptr on failure.
std::unique_ptr<Store> open_store_or_report(const IngestConfig& config, StoreOpen mode);

/// Loads the config at `config_path` and opens its store; prints the error and returns nullptr
/// on failure.
std::unique_ptr<Store> open_store_or_report(const std::string& config_path, StoreOpen mode);

/// The filter of `events` and `export` from their --device, --since and --action options (empty:
/// not set); prints the error of a --since that is not a time and returns nullopt (exit 2).
std::optional<EventFilter> event_filter_or_report(const std::string& device,
                                                  const std::string& since,
                                                  const std::string& action);

void add_run_command(CLI::App& app, int& exit_code);  // run_commands.cpp: run
void add_device_commands(CLI::App& app,
                         int& exit_code);  // device_commands.cpp: device add|list|revoke
void add_query_commands(CLI::App& app, int& exit_code);  // query_commands.cpp: events, stats, trace
void add_report_commands(CLI::App& app, int& exit_code);   // report_commands.cpp: report usage
void add_members_commands(CLI::App& app, int& exit_code);  // members_commands.cpp: members
void add_export_command(CLI::App& app, int& exit_code);    // export_commands.cpp: export
void add_log_commands(CLI::App& app,
                      int& exit_code);  // log_commands.cpp: log checkpoint|prove|consistency
void add_key_commands(CLI::App& app, int& exit_code);     // key_commands.cpp: key init|show
void add_migrate_command(CLI::App& app, int& exit_code);  // migrate_commands.cpp: migrate
void add_ca_commands(CLI::App& app, int& exit_code);  // ca_commands.cpp: ca init|sign|server|client
void add_web_commands(CLI::App& app,
                      int& exit_code);  // web_commands.cpp: serve, users add|list|remove

}  // namespace ingest::cli
