// SPDX-License-Identifier: AGPL-3.0-or-later
// members: the unknown cards machines saw recently, for enrolment (logic in reflow/node/report.hpp
// unknown_cards).
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include <fmt/format.h>

#include <reflow/core/units.hpp>
#include <reflow/node/members_list.hpp>
#include <reflow/node/node_key.hpp>
#include <reflow/node/report.hpp>

#include "commands.hpp"

namespace ingest::cli {
namespace {

struct MembersOptions {
  std::string config_path{k_default_config_path};
  std::string since = "30d";
  std::string format = "table";
  std::string site;  // publish
  std::string file;
  std::uint64_t version = 1;
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

int run_publish(const MembersOptions& options) {
  auto config = config_or_report(options.config_path);
  if (!config) return 1;
  auto signer = NodeSigner::load(*config);
  if (print_if_error(signer)) return 1;
  if (!*signer) {
    print_error(
        "the node has no key (ingest.node_key_file): make one with `reflow-ingest key "
        "init`; the agents check the list against it");
    return 1;
  }
  std::ifstream in(options.file, std::ios::binary);
  if (!in) {
    print_error(fmt::format("--file \"{}\": cannot read it", options.file));
    return 2;
  }
  std::ostringstream text;
  text << in.rdbuf();
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::system_clock::now().time_since_epoch());
  auto envelope =
      sign_members_list(**signer, {options.site, options.version, now.count(), text.str()});
  if (!envelope) {
    print_error(fmt::format("{}: {}", options.file, envelope.error().message));
    return 2;
  }
  const std::string topic = members_topic(*config, options.site);
  if (Status published = publish_retained(*config, topic, *envelope); !published) {
    print_error(published.error().message);
    return 1;
  }
  fmt::print("published the members list of site {} (version {}) on {}, retained\n", options.site,
             options.version, topic);
  return 0;
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
  members->require_subcommand(0, 1);
  members->callback([options, members, &exit_code] {
    if (members->get_subcommands().empty()) exit_code = run_unknown_cards(*options);
  });

  auto* publish = members->add_subcommand(
      "publish",
      "Sign a site's members file with the node's key and publish it retained on "
      "PREFIX/_node/members/SITE (PROTOCOL §5.3): agents that pin the node's key use it, and "
      "keep it for when the node cannot be reached");
  add_config_option(*publish, options->config_path);
  publish
      ->add_option("--site", options->site, "The site the list is for (an agent's [members] site)")
      ->required();
  publish->add_option("--file", options->file, "The members file (TOML, [[member]] tables)")
      ->required();
  publish
      ->add_option("--version", options->version,
                   "The list's version, 1 or more: agents take a list only when its version, or "
                   "at the same version its issued time (now), is higher than the kept one's")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  publish->callback([options, &exit_code] { exit_code = run_publish(*options); });
}

}  // namespace ingest::cli
