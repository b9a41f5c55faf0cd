// SPDX-License-Identifier: AGPL-3.0-or-later
// report usage: hours of use and materials per member, machine or resource and period (logic in
// reflow/node/report.hpp).
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
}

}  // namespace ingest::cli
