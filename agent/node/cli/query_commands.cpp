// SPDX-License-Identifier: AGPL-3.0-or-later
// events, rejections, stats, trace: read-only questions to the store (logic in ingest/query.hpp).
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>

#include <reflow/node/query.hpp>
#include <reflow/node/store.hpp>

#include "commands.hpp"

namespace ingest::cli {
namespace {

struct QueryOptions {
  std::string config_path{k_default_config_path};
  std::string device;
  std::string since;
  std::string action;
  std::string format = "jsonl";
  std::string resource;
  std::string trace_format = "text";  // trace: text or json (--json is the same as json)
  bool json = false;
};

int run_events(const QueryOptions& options) {
  auto filter = event_filter_or_report(options.device, options.since, options.action);
  if (!filter) return 2;
  auto store = open_store_or_report(options.config_path, StoreOpen::existing_only);
  if (!store) return 1;
  if (print_if_error(write_events(*store, *filter,
                                  options.format == "csv" ? EventFormat::csv : EventFormat::jsonl,
                                  std::cout)))
    return 1;
  return 0;
}

int run_rejections(const QueryOptions& options) {
  auto store = open_store_or_report(options.config_path, StoreOpen::existing_only);
  if (!store) return 1;
  std::optional<std::string_view> device;
  if (!options.device.empty()) device = options.device;
  if (print_if_error(write_rejections(*store, device, std::cout))) return 1;
  return 0;
}

int run_stats(const QueryOptions& options) {
  auto store = open_store_or_report(options.config_path, StoreOpen::existing_only);
  if (!store) return 1;
  auto stats = store->stats();
  if (print_if_error(stats)) return 1;
  if (options.json) {
    for (const auto& device : *stats)
      std::cout << device_stats_json(device).dump(-1, ' ', false,
                                                  nlohmann::ordered_json::error_handler_t::replace)
                << '\n';
  } else {
    std::cout << format_stats_text(*stats);
  }
  std::cout.flush();
  return std::cout ? 0 : 1;
}

int run_trace(const QueryOptions& options) {
  auto store = open_store_or_report(options.config_path, StoreOpen::existing_only);
  if (!store) return 1;
  auto tree = trace_resource(*store, options.resource);
  if (print_if_error(tree)) return 1;
  if (options.json || options.trace_format == "json")
    std::cout << trace_to_json(*tree).dump(-1, ' ', false,
                                           nlohmann::ordered_json::error_handler_t::replace)
              << '\n';
  else
    std::cout << format_trace_text(*tree);
  std::cout.flush();
  return std::cout ? 0 : 1;
}

}  // namespace

void add_query_commands(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<QueryOptions>();

  auto* events = app.add_subcommand(
      "events",
      "Print the stored events: jsonl = the verified payload bytes, one event per line; csv = a "
      "header row and one RFC 4180 row per event");
  add_config_option(*events, options->config_path);
  events->add_option("--device", options->device, "Only this device");
  events->add_option("--since", options->since,
                     "Only events recorded at or after TIME: RFC 3339 (2026-11-01T00:00:00Z) or "
                     "a date (2026-11-01, UTC)");
  events->add_option("--action", options->action, "Only this ValueFlows action (use, consume …)");
  events->add_option("--format", options->format, "jsonl or csv")
      ->check(CLI::IsMember({"jsonl", "csv"}))
      ->capture_default_str();
  events->callback([options, &exit_code] { exit_code = run_events(*options); });

  auto* rejections = app.add_subcommand(
      "rejections",
      "Print the refused envelopes as JSON lines {received, device, topic, reason, detail, stream, "
      "seq, envelope}, oldest first");
  add_config_option(*rejections, options->config_path);
  rejections->add_option("--device", options->device, "Only this device (the topic's DEVICE)");
  rejections->callback([options, &exit_code] { exit_code = run_rejections(*options); });

  auto* stats = app.add_subcommand(
      "stats",
      "Per device: status, last seen, events, gaps, chain intact|broken, streams, rejections by "
      "reason");
  add_config_option(*stats, options->config_path);
  stats->add_flag("--json", options->json, "One JSON object per device and line");
  stats->callback([options, &exit_code] { exit_code = run_stats(*options); });

  auto* trace = app.add_subcommand(
      "trace",
      "Material passport of a resource: the ValueFlows trace back through the processes that made "
      "it and the materials they consumed, plus every event of its life, as a tree");
  add_config_option(*trace, options->config_path);
  trace
      ->add_option("RESOURCE", options->resource,
                   "The resource reference (resourceInventoriedAs as the devices send it)")
      ->required();
  trace
      ->add_option("--format", options->trace_format,
                   "text (an indented tree) or json (nested {type: resource|event|process, id, "
                   "…, children: […]})")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  trace->add_flag("--json", options->json, "The same as --format json");
  trace->callback([options, &exit_code] { exit_code = run_trace(*options); });
}

}  // namespace ingest::cli
