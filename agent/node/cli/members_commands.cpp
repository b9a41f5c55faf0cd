// SPDX-License-Identifier: AGPL-3.0-or-later
// members: the unknown cards machines saw recently, for enrolment (logic in reflow/node/report.hpp
// unknown_cards).
#include <chrono>
#include <iostream>
#include <memory>
#include <string>

#include <fmt/format.h>

#include <reflow/core/units.hpp>
#include <reflow/node/report.hpp>

#include "commands.hpp"

namespace ingest::cli {
namespace {

struct MembersOptions {
  std::string config_path{k_default_config_path};
  std::string since = "30d";
  std::string format = "table";
};

int run_unknown_cards(const MembersOptions& options) {
  auto since = agent::parse_duration(options.since);
  if (!since) {
    print_error(fmt::format("--since: {}", since.error().message));
    return 2;
  }
  auto store = open_store_or_report(options.config_path, StoreOpen::existing_only);
  if (!store) return 1;
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::system_clock::now().time_since_epoch());
  auto rows = report::unknown_cards(*store, (now - *since).count());
  if (print_if_error(rows)) return 1;
  if (options.format == "json") {
    for (const auto& row : *rows)
      std::cout << report::unknown_card_json(row).dump(
                       -1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
                << '\n';
  } else {
    std::cout << report::format_unknown_cards_table(*rows);
  }
  std::cout.flush();
  return std::cout ? 0 : 1;
}

}  // namespace

void add_members_commands(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<MembersOptions>();
  auto* members = app.add_subcommand(
      "members",
      "The unknown cards each machine saw recently (keyed hashes, most recent first), for "
      "enrolment: `reflow-agent members add HANDLE --agent REF --badge HASH` on that device");
  add_config_option(*members, options->config_path);
  members
      ->add_option("--since", options->since,
                   "Only cards seen in this last DURATION (by the event's time): 30s, 15m, 2h, 7d")
      ->capture_default_str();
  members->add_option("--format", options->format, "table or json (one object per line)")
      ->check(CLI::IsMember({"table", "json"}))
      ->capture_default_str();
  members->callback([options, &exit_code] { exit_code = run_unknown_cards(*options); });
}

}  // namespace ingest::cli
