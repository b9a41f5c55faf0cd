// SPDX-License-Identifier: AGPL-3.0-or-later
// export --format vf-graphql [--post]: the stored events as zenflows mutations
// (ingest/vf_export.hpp).
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/env.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/node/export_ledger.hpp>
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

// The export ledger of [export] zenflows_url: what earlier --post runs recorded there. Without a
// URL nothing was posted.
Result<ExportLedger> ledger_of(Store& store, const IngestConfig& config) {
  if (config.zenflows_url.empty()) return ExportLedger{};
  return read_export_ledger(store, config.zenflows_url);
}

// Unsettled intents are sent again unless --post finds them on the server: they are no news
// for the printing mode and --check, which check and print them as unsent, so they say so.
void tell_unsettled(const ExportLedger& ledger) {
  if (ledger.intents.empty()) return;
  print_error(fmt::format(
      "export: {} request(s) to {} were sent without their answer being recorded (an "
      "interrupted --post); they are shown as unsent here, and the next --post asks the server "
      "whether it created them before sending anything",
      ledger.intents.size(), ledger.server));
}

// --check: every event that would be exported, through zenflows' rules and the export mapping;
// nothing is sent. What the export ledger recorded is listed as posted, not checked again.
// Exit status 1 when any event would be refused.
int run_check(Store& store, const EventFilter& filter, const IngestConfig& config, bool json) {
  auto ledger = ledger_of(store, config);
  if (print_if_error(ledger)) return 1;
  auto check = check_ledger_export(store, filter, config, *ledger);
  if (print_if_error(check)) return 1;
  tell_unsettled(*ledger);
  if (json)
    std::cout << vf_check_json(*check).dump(2) << '\n';
  else
    std::cout << format_vf_check_text(*check);
  std::cout.flush();
  if (!std::cout) return 1;
  return check->refused == 0 ? 0 : 1;
}

// An exclusive lock for one `export --post` at a time per store: two would both settle and send
// the same events. The kernel drops it when the process dies, even by SIGKILL.
class ExportLock {
 public:
  static Result<ExportLock> take(const std::filesystem::path& path) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
      return agent::fail(agent::ErrorCode::io,
                         fmt::format("cannot open {}: {}", path.string(), std::strerror(errno)));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd);
      return agent::fail(agent::ErrorCode::busy,
                         fmt::format("another `reflow-ingest export --post` is running on this "
                                     "store (it holds {})",
                                     path.string()));
    }
    return ExportLock(fd);
  }
  ExportLock(ExportLock&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}
  ExportLock& operator=(ExportLock&&) = delete;
  ExportLock(const ExportLock&) = delete;
  ExportLock& operator=(const ExportLock&) = delete;
  ~ExportLock() {
    if (m_fd >= 0) ::close(m_fd);
  }

 private:
  explicit ExportLock(int fd) : m_fd(fd) {}
  int m_fd;
};

std::string describe_intent(const LedgerEntry& e) {
  if (e.kind == LedgerKind::process) return fmt::format("createProcess for process \"{}\"", e.ref);
  return fmt::format("createEconomicEvent for event {} ({})", e.event_id, e.ref);
}

// --post: settle what an interrupted export left, then send what the export ledger has not
// recorded, writing an intent before each request and its ids after (export_ledger.hpp).
int post_once(Store& store, const EventFilter& filter, const IngestConfig& config) {
  const std::string& server = config.zenflows_url;
  auto ledger = read_export_ledger(store, server);
  if (print_if_error(ledger)) return 1;
  auto plan = plan_ledger_export(store, filter, config, *ledger);
  if (print_if_error(plan)) return 1;
  // Checked before the key is loaded: the list of missing ids is the first thing to fix.
  if (!plan->export_.missing.empty()) {
    print_error(fmt::format(
        "not sending anything: {} reference(s) have no server id in the config, and zenflows "
        "would refuse those events after recording earlier ones:\n{}",
        plan->export_.missing.size(), describe_missing(plan->export_.missing)));
    return 1;
  }
  if (config.zenflows_key_file.empty()) {
    print_error(
        "[export] zenflows_key_file is not set: the Ed25519 seed file (`reflow-agent keygen` "
        "writes one) whose public key is the zenflows Person's eddsaPublicKey");
    return 1;
  }
  auto key = agent::DeviceKey::load(config.zenflows_key_file);
  if (print_if_error(key)) return 1;
  ZenflowsPostOptions post;
  post.url = config.zenflows_url;
  post.user = config.zenflows_user;
  post.proxy = config.export_proxy;
  if (post.url.empty() || post.user.empty()) {
    // post_vf_export words these; an empty plan would not reach it.
    print_if_error(post_vf_export(VfExport{}, post, *key, VfPostHooks{}));
    return 1;
  }
  auto lock = ExportLock::take(config.store_path().string() + ".export-lock");
  if (print_if_error(lock)) return 1;

  if (!ledger->intents.empty()) {
    print_error(fmt::format(
        "export: {} request(s) to {} were sent without their answer being recorded (the last "
        "--post stopped); asking the server whether it created them",
        ledger->intents.size(), server));
    auto settled = settle_export_intents(store, post, *key);
    if (!settled) {
      print_error(fmt::format(
          "{}\nnot sending anything until the server can say whether it created them (run "
          "--post again)",
          settled.error().message));
      return 1;
    }
    for (const SettledIntent& s : *settled) {
      if (s.created)
        print_error(fmt::format(
            "export: {} was created as {}{}: recorded", describe_intent(s.intent), s.server_id,
            s.created_resource_id.empty()
                ? ""
                : fmt::format(" (resource {} {})", s.intent.creates, s.created_resource_id)));
      else
        print_error(
            fmt::format("export: {} was not created: it will be sent", describe_intent(s.intent)));
    }
    ledger = read_export_ledger(store, server);
    if (print_if_error(ledger)) return 1;
    plan = plan_ledger_export(store, filter, config, *ledger);
    if (print_if_error(plan)) return 1;
  }

  const std::size_t total = plan->export_.requests.size();
  if (total == 0) {
    std::cout << fmt::format("nothing to send: the export ledger holds all {} events for {}\n",
                             plan->events_total, server);
    return std::cout.flush() ? 0 : 1;
  }
  std::size_t events = 0, processes = 0, done = 0;
  agent::UlidGenerator ulids;
  const auto now = [] { return agent::Env::real().now_unix_ms(); };
  auto hooks = ledger_post_hooks(store, server, now, ulids, [&](const VfPosted& posted) {
    const VfRequest& r = *posted.request;
    ++done;
    if (r.kind == VfRequestKind::create_process) {
      ++processes;
      std::cout << fmt::format("created process {} id {}\n", r.process, posted.server_id);
    } else {
      ++events;
      std::cout << fmt::format("created event {} (device {}) id {}\n", r.event_id, r.device,
                               posted.server_id);
      if (!posted.created_resource_id.empty())
        std::cout << fmt::format("created resource {} id {}\n", r.creates,
                                 posted.created_resource_id);
    }
    std::cout.flush();
    std::cerr << fmt::format("export: {} of {} requests sent and recorded\n", done, total);
  });
  if (plan->events_recorded > 0)
    print_error(
        fmt::format("export: {} of {} events are already in the export ledger for {}; "
                    "sending {} requests",
                    plan->events_recorded, plan->events_total, server, total));
  auto status = post_vf_export(plan->export_, post, *key, hooks);
  if (print_if_error(status)) {
    print_error(
        "export: what was recorded stays in the export ledger; run --post again to "
        "send the rest");
    return 1;
  }
  std::cout << fmt::format("sent {} events and {} processes to {}\n", events, processes, post.url);
  return std::cout.flush() ? 0 : 1;
}

int run_export(const ExportOptions& options) {
  auto filter = event_filter_or_report(options.device, options.since, "");
  if (!filter) return 2;
  auto config = config_or_report(options.config_path);
  if (!config) return 1;
  auto store = open_store_or_report(*config, StoreOpen::existing_only);
  if (!store) return 1;
  if (options.check) return run_check(*store, *filter, *config, options.json);
  if (options.post) return post_once(*store, *filter, *config);

  // What --post would send: the requests the export ledger has not recorded, referring to
  // recorded processes and resources by their zenflows ids.
  auto ledger = ledger_of(*store, *config);
  if (print_if_error(ledger)) return 1;
  auto plan = plan_ledger_export(*store, *filter, *config, *ledger);
  if (print_if_error(plan)) return 1;
  const VfExport* built = &plan->export_;
  if (plan->events_recorded > 0)
    print_error(fmt::format(
        "export: {} of {} events are already in the export ledger for {} (posted): left out",
        plan->events_recorded, plan->events_total, config->zenflows_url));
  tell_unsettled(*ledger);
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

}  // namespace

void add_export_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<ExportOptions>();
  auto* command = app.add_subcommand(
      "export",
      "Print the stored events as zenflows GraphQL requests, one JSON body {query, variables} per "
      "line (createProcess once per process reference, then createEconomicEvent per event, in "
      "time order), leaving out what the export ledger recorded as posted to [export] "
      "zenflows_url; with --post, sign and send them to [export] zenflows_url, once: the export "
      "ledger in the store remembers what each server recorded, and --post resumes after any "
      "failure without sending anything twice");
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
                        "[export] zenflows_user) that the export ledger has not recorded for "
                        "[export] zenflows_url, first settling any request an interrupted --post "
                        "left unanswered (by asking the server); progress (N of M) on stderr; "
                        "refuses while any reference lacks a server id");
  auto* check = command->add_flag(
      "--check", options->check,
      "Send nothing: check every event that would be exported against zenflows' per-action rules "
      "and the export's mapping (server ids, units, default_agent), print each problem with its "
      "field and rule, and exit 1 when zenflows would refuse any event; events the export "
      "ledger recorded as posted are listed as such with their zenflows id, not checked again");
  check->excludes(post);
  command->add_flag("--json", options->json, "With --check: the report as one JSON object")
      ->needs(check);
  command->callback([options, &exit_code] { exit_code = run_export(*options); });
}

}  // namespace ingest::cli
