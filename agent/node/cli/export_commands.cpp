// SPDX-License-Identifier: AGPL-3.0-or-later
// export --format vf-graphql [--post]: the stored events as zenflows mutations
// (ingest/vf_export.hpp).
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include <fmt/format.h>

#include <reflow/node/query.hpp>
#include <reflow/node/store.hpp>
#include <reflow/node/vf_export.hpp>

#include "commands.hpp"

namespace ingest::cli {
namespace {

struct ExportOptions {
  std::string config_path{k_default_config_path};
  std::string format = "vf-graphql";
  std::string device;
  std::string since;
  bool post = false;
  bool check = false;
  bool json = false;
};

// --check: every event that would be exported, through zenflows' rules and the export mapping;
// nothing is sent. Exit status 1 when any event would be refused.
int run_check(Store& store, const EventFilter& filter, const IngestConfig& config, bool json) {
  auto check = check_vf_export(store, filter, config);
  if (print_if_error(check)) return 1;
  if (json)
    std::cout << vf_check_json(*check).dump(2) << '\n';
  else
    std::cout << format_vf_check_text(*check);
  std::cout.flush();
  if (!std::cout) return 1;
  return check->refused == 0 ? 0 : 1;
}

int run_export(const ExportOptions& options) {
  auto filter = event_filter_or_report(options.device, options.since, "");
  if (!filter) return 2;
  auto config = config_or_report(options.config_path);
  if (!config) return 1;
  auto store = open_store_or_report(*config, StoreOpen::existing_only);
  if (!store) return 1;
  if (options.check) return run_check(*store, *filter, *config, options.json);
  auto built = build_vf_export(*store, *filter, *config);
  if (print_if_error(built)) return 1;

  if (!options.post) {
    for (const auto& request : built->requests)
      std::cout << vf_request_body(request) << '\n';
    std::cout.flush();
    if (!built->missing.empty())
      print_error(fmt::format(
          "warning: {} reference(s) have no server id in the config and were left as the local "
          "reference (inputOf/outputOf of processes this export creates hold the process "
          "reference until --post learns its id):\n{}",
          built->missing.size(), describe_missing(built->missing)));
    return std::cout ? 0 : 1;
  }

  // Checked before the key is loaded: the list of missing ids is the first thing to fix.
  if (!built->missing.empty()) {
    print_error(fmt::format(
        "not sending anything: {} reference(s) have no server id in the config, and zenflows "
        "would refuse those events after recording earlier ones:\n{}",
        built->missing.size(), describe_missing(built->missing)));
    return 1;
  }
  if (config->zenflows_key_file.empty()) {
    print_error(
        "[export] zenflows_key_file is not set: the Ed25519 seed file (`reflow-agent keygen` "
        "writes one) whose public key is the zenflows Person's eddsaPublicKey");
    return 1;
  }
  auto key = agent::DeviceKey::load(config->zenflows_key_file);
  if (print_if_error(key)) return 1;
  ZenflowsPostOptions post;
  post.url = config->zenflows_url;
  post.user = config->zenflows_user;
  post.proxy = config->export_proxy;
  std::size_t events = 0, processes = 0;
  auto status = post_vf_export(*built, post, *key, [&](const VfPosted& posted) {
    const VfRequest& r = *posted.request;
    if (r.kind == VfRequestKind::create_process) {
      ++processes;
      std::cout << fmt::format("created process {} id {}\n", r.process, posted.server_id);
    } else {
      ++events;
      std::cout << fmt::format("created event {} (device {}) id {}\n", r.event_id, r.device,
                               posted.server_id);
      if (!posted.created_resource_id.empty())
        std::cout << fmt::format(
            "created resource {} id {} (add it to [export.ids] for later exports)\n", r.creates,
            posted.created_resource_id);
    }
    std::cout.flush();
  });
  if (print_if_error(status)) return 1;
  std::cout << fmt::format("sent {} events and {} processes to {}\n", events, processes, post.url);
  return 0;
}

}  // namespace

void add_export_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<ExportOptions>();
  auto* command = app.add_subcommand(
      "export",
      "Print the stored events as zenflows GraphQL requests, one JSON body {query, variables} per "
      "line (createProcess once per process reference, then createEconomicEvent per event, in "
      "time order); with --post, sign and send them to [export] zenflows_url. zenflows has no "
      "dedupe: send each event once (use --since)");
  add_config_option(*command, options->config_path);
  command->add_option("--format", options->format, "Export format (only vf-graphql)")
      ->check(CLI::IsMember({"vf-graphql"}))
      ->required();
  command->add_option("--device", options->device, "Only this device");
  command->add_option("--since", options->since,
                      "Only events recorded at or after TIME: RFC 3339 or a date (UTC)");
  auto* post =
      command->add_flag("--post", options->post,
                        "Send the requests (signed with [export] zenflows_key_file as "
                        "[export] zenflows_user); refuses while any reference lacks a server id");
  auto* check = command->add_flag(
      "--check", options->check,
      "Send nothing: check every event that would be exported against zenflows' per-action rules "
      "and the export's mapping (server ids, units, default_agent), print each problem with its "
      "field and rule, and exit 1 when zenflows would refuse any event");
  check->excludes(post);
  command->add_flag("--json", options->json, "With --check: the report as one JSON object")
      ->needs(check);
  command->callback([options, &exit_code] { exit_code = run_export(*options); });
}

}  // namespace ingest::cli
