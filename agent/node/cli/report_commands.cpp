// SPDX-License-Identifier: AGPL-3.0-or-later
// report usage|maintenance: hours of use and materials per member, machine or resource and
// period; hours of use per machine since its last service (logic in reflow/node/report.hpp).
#include <algorithm>
#include <iostream>
#include <memory>
#include <string>
#include <tuple>

#include <fmt/format.h>

#include <reflow/node/query.hpp>
#include <reflow/node/report.hpp>

#include "commands.hpp"

namespace ingest::cli {
namespace {

struct ReportOptions {
  std::string config_path{k_default_config_path};
  std::string by = "machine";
  std::string period = "month";
  std::string from;
  std::string to;
  std::string format = "table";
  bool fail_when_overdue = false;  // maintenance --check
};

int run_usage(const ReportOptions& options) {
  report::UsageOptions usage_options;
  auto by = report::parse_by(options.by);
  if (print_if_error(by)) return 2;
  auto period = report::parse_period(options.period);
  if (print_if_error(period)) return 2;
  usage_options.by = *by;
  usage_options.period = *period;
  for (const auto& [name, text, out] :
       {std::tuple{"--from", &options.from, &usage_options.from_unix_ms},
        std::tuple{"--to", &options.to, &usage_options.to_unix_ms}}) {
    if (text->empty()) continue;
    auto ms = parse_since(*text);
    if (!ms) {
      print_error(fmt::format("{}: {}", name, ms.error().message));
      return 2;
    }
    *out = *ms;
  }
  auto store = open_store_or_report(options.config_path, StoreOpen::existing_only);
  if (!store) return 1;
  auto rows = report::usage(*store, usage_options);
  if (print_if_error(rows)) return 1;
  if (options.format == "csv") {
    std::cout << report::format_usage_csv(*rows, *by);
  } else if (options.format == "json") {
    for (const auto& row : *rows)
      std::cout << report::usage_json(row, *by).dump(
                       -1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
                << '\n';
  } else {
    std::cout << report::format_usage_table(*rows, *by);
  }
  std::cout.flush();
  return std::cout ? 0 : 1;
}

int run_maintenance(const ReportOptions& options) {
  auto config = config_or_report(options.config_path);
  if (!config) return 1;
  auto store = open_store_or_report(*config, StoreOpen::existing_only);
  if (!store) return 1;
  auto rows = report::maintenance(*store, {.default_interval = config->maintenance_interval,
                                           .intervals = config->maintenance_intervals});
  if (print_if_error(rows)) return 1;
  if (options.format == "csv") {
    std::cout << report::format_maintenance_csv(*rows);
  } else if (options.format == "json") {
    for (const auto& row : *rows)
      std::cout << report::maintenance_json(row).dump(
                       -1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
                << '\n';
  } else {
    std::cout << report::format_maintenance_table(*rows);
  }
  std::cout.flush();
  if (!std::cout) return 1;
  const bool overdue = std::ranges::any_of(*rows, &report::MaintenanceRow::overdue);
  return options.fail_when_overdue && overdue ? 3 : 0;
}

}  // namespace

void add_report_commands(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<ReportOptions>();
  auto* report = app.add_subcommand(
      "report", "Reports over the stored events for a makerspace's billing and upkeep");
  report->require_subcommand(1);
  auto* usage = report->add_subcommand(
      "usage",
      "Hours of use, sessions, and materials consumed and produced per member, machine or "
      "resource and per day, week or month. A use's member is its receiver, a work's its "
      "provider; an event without one (a print job's consume) takes the member and machine of "
      "its process's use");
  add_config_option(*usage, options->config_path);
  usage->add_option("--by", options->by, "member, machine or resource")
      ->check(CLI::IsMember({"member", "machine", "resource"}))
      ->capture_default_str();
  usage
      ->add_option("--period", options->period,
                   "day, week (ISO 8601, 2026-W47), month, or all (one row per key)")
      ->check(CLI::IsMember({"day", "week", "month", "all"}))
      ->capture_default_str();
  usage->add_option("--from", options->from,
                    "Only events at or after TIME (their hasPointInTime, hasBeginning, hasEnd or "
                    "recorded): RFC 3339 or a date (2026-11-01, UTC)");
  usage->add_option("--to", options->to, "Only events before TIME (as --from)");
  usage
      ->add_option("--format", options->format,
                   "table, csv (RFC 4180, one record per material) or json (one object per line)")
      ->check(CLI::IsMember({"table", "csv", "json"}))
      ->capture_default_str();
  usage->callback([options, &exit_code] { exit_code = run_usage(*options); });

  auto* maintenance = report->add_subcommand(
      "maintenance",
      "Hours of use of each machine since its last service (a modify event of the machine, its "
      "note saying what was done), against the intervals of [maintenance]; the most overdue "
      "first");
  add_config_option(*maintenance, options->config_path);
  maintenance
      ->add_option("--format", options->format,
                   "table, csv (RFC 4180) or json (one object per line)")
      ->check(CLI::IsMember({"table", "csv", "json"}))
      ->capture_default_str();
  maintenance->add_flag("--check", options->fail_when_overdue,
                        "Exit with status 3 when a machine is overdue (for cron or monitoring)");
  maintenance->callback([options, &exit_code] { exit_code = run_maintenance(*options); });
}

}  // namespace ingest::cli
