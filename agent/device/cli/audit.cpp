// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-agent audit`: the device's side of the node's accountability (PROTOCOL §5.2).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/device/audit.hpp>
#include <reflow/device/config.hpp>

#include "commands.hpp"

namespace agent::cli {

int audit(const std::filesystem::path& config_path, bool json, int timeout_s,
          const std::optional<std::filesystem::path>& witness_path) {
  auto config = load_config(config_path);
  if (!config) {
    print_error(config.error().message);
    return 2;
  }
  std::optional<std::string> witness_note;
  if (witness_path) {
    std::ifstream in(*witness_path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (!in || text.str().empty()) {
      print_error(fmt::format("--witness {}: cannot read a signed checkpoint from it",
                              witness_path->string()));
      return 2;
    }
    witness_note = text.str();
  }
  auto report = audit_node(
      *config, std::chrono::seconds(timeout_s),
      [](std::uint64_t checked, std::uint64_t total) {
        fmt::print(stderr, "reflow-agent: audit: checked {}/{} leaves\n", checked, total);
      },
      witness_note);
  if (!report) {
    print_error(report.error().message);
    return 2;
  }
  const std::string root = merkle::to_hex(report->root);
  if (json) {
    nlohmann::ordered_json findings = nlohmann::ordered_json::array();
    for (const auto& finding : report->findings)
      findings.push_back({{"seq", finding.seq},
                          {"id", finding.id},
                          {"problem", finding.problem},
                          {"detail", finding.detail}});
    nlohmann::ordered_json out{
        {"ok", report->ok()},
        {"checked", report->checked},
        {"origin", report->origin},
        {"tree_size", report->tree_size},
        {"root", root},
        {"consistency_from", report->consistency_from},
        {"inconsistent", report->inconsistent ? nlohmann::ordered_json(*report->inconsistent)
                                              : nlohmann::ordered_json(nullptr)},
        {"saved_tree_size", report->saved_tree_size},
        {"witness", report->witness
                        ? nlohmann::ordered_json{{"tree_size", report->witness->tree_size},
                                                 {"root", merkle::to_hex(report->witness->root)},
                                                 {"consistent", report->witness->consistent},
                                                 {"detail", report->witness->detail}}
                        : nlohmann::ordered_json(nullptr)},
        {"findings", std::move(findings)}};
    std::cout << out.dump() << '\n';
  } else {
    if (report->inconsistent) fmt::print("INCONSISTENT: {}\n", *report->inconsistent);
    for (const auto& finding : report->findings)
      fmt::print("{}: seq {} id {}: {}\n",
                 finding.problem == "not_proven" ? "NOT PROVEN"
                 : finding.problem == "altered"  ? "ALTERED"
                                                 : "MISSING",
                 finding.seq, finding.id, finding.detail);
    if (report->witness && !report->witness->consistent)
      fmt::print("WITNESS INCONSISTENT: {}\n", report->witness->detail);
    else if (report->witness)
      fmt::print("the witness checkpoint of {} leaves is a view of the same log\n",
                 report->witness->tree_size);
    if (report->saved_tree_size > 0)
      fmt::print("saved the log of {} leaves as the one this agent verified\n",
                 report->saved_tree_size);
    fmt::print("checked {} leaves against {} tree size {} root {}{}: {}\n", report->checked,
               report->origin, report->tree_size, root,
               report->consistency_from > 0
                   ? fmt::format(" (from the verified log of {} leaves)", report->consistency_from)
                   : std::string(),
               report->ok() ? "OK" : fmt::format("FAILED, {} events", report->findings.size()));
  }
  std::cout.flush();
  return report->ok() ? 0 : 1;
}

}  // namespace agent::cli
