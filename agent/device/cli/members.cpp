// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-agent members list|add` (issue 17): the members file of [members] file, and the last
// unknown card each machine saw (drivers/common members.hpp). No raw card id is ever shown:
// the agent keeps only keyed hashes.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <reflow/device/config.hpp>
#include <reflow/drivers/members.hpp>

#include "commands.hpp"

namespace agent::cli {
namespace {

// The machines (drivers) that have a last unknown card, by name.
std::vector<std::pair<std::string, UnknownBadge>> last_unknown_cards(const AgentConfig& config) {
  std::vector<std::pair<std::string, UnknownBadge>> out;
  for (const DriverConfig& driver : config.drivers) {
    auto last = load_last_unknown(config.driver_state_dir() / driver.name);
    if (!last) {
      print_error(last.error().message);
      continue;
    }
    if (*last) out.emplace_back(driver.name, **last);
  }
  return out;
}

}  // namespace

int members_list(const std::filesystem::path& config_path) {
  auto config = load_config(config_path);
  if (!config) {
    print_error(config.error().message);
    return 1;
  }
  if (config->members_file.empty()) {
    print_error(fmt::format("{}: no [members] file set", config_path.string()));
    return 1;
  }
  std::error_code ec;
  std::optional<Members> members;
  if (std::filesystem::exists(config->members_file, ec)) {
    auto loaded = Members::load(config->members_file);
    if (!loaded) {
      print_error(loaded.error().message);
      return 1;
    }
    members = std::move(*loaded);
    fmt::print("{:<16} {:<32} {:>6}  {}\n", "HANDLE", "AGENT", "BADGES", "MACHINES");
    for (const Member& m : members->all())
      fmt::print("{:<16} {:<32} {:>6}  {}\n", m.handle, m.agent, m.badges.size(),
                 m.machines.empty() ? "-" : fmt::format("{}", fmt::join(m.machines, ", ")));
  } else {
    fmt::print("no members yet ({} does not exist)\n", config->members_file.string());
  }
  // A card enrolled since it was seen is no longer unknown.
  for (const auto& [machine, badge] : last_unknown_cards(*config))
    if (!members || members->by_badge(badge.hash) == nullptr)
      fmt::print("last unknown card at {}: {} ({})\n", machine, badge.hash, badge.seen_at);
  return 0;
}

int members_add(const std::filesystem::path& config_path, const MembersAddOptions& options) {
  auto config = load_config(config_path);
  if (!config) {
    print_error(config.error().message);
    return 1;
  }
  if (config->members_file.empty()) {
    print_error(fmt::format("{}: set [members] file first", config_path.string()));
    return 1;
  }
  std::string badge = options.badge;
  std::optional<std::string> machine = options.machine;
  if (options.last_unknown) {
    auto cards = last_unknown_cards(*config);
    std::erase_if(cards, [&](const auto& c) { return machine && c.first != *machine; });
    if (cards.empty()) {
      print_error(machine ? fmt::format("no unknown card was seen at \"{}\"", *machine)
                          : "no machine has seen an unknown card; badge at the machine first");
      return 1;
    }
    if (cards.size() > 1) {
      std::string names;
      for (const auto& c : cards)
        names += (names.empty() ? "" : ", ") + c.first;
      print_error(
          fmt::format("several machines saw an unknown card ({}): add --machine NAME", names));
      return 1;
    }
    badge = cards.front().second.hash;
    machine = cards.front().first;
  }
  const std::optional<std::string_view> machine_view =
      machine ? std::optional<std::string_view>(*machine) : std::nullopt;
  if (Status s = add_member_badge(config->members_file, options.handle, options.agent_ref, badge,
                                  machine_view);
      !s) {
    print_error(s.error().message);
    return 1;
  }
  fmt::print("{} ({}) has badge {}{} in {}; restart the agent to use it\n", options.handle,
             options.agent_ref, badge, machine ? fmt::format(", authorised on {}", *machine) : "",
             config->members_file.string());
  return 0;
}

}  // namespace agent::cli
