// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-ingest run`: the node's daemon. Loads the config, opens the store, starts the
// IngestService and waits for SIGTERM/SIGINT, feeding systemd (Type=notify) and logging a summary
// every minute.
#include <systemd/sd-daemon.h>

#include <chrono>
#include <memory>
#include <string>

#include <fmt/format.h>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/process.hpp>
#include <reflow/node/service.hpp>
#include <reflow/node/store.hpp>

#include "commands.hpp"

namespace ingest::cli {
namespace {

constexpr std::string_view k_run_component = "run";
constexpr std::chrono::seconds k_status_refresh{10};
constexpr std::chrono::seconds k_summary_interval{60};

std::string config_keys_footer() {
  std::string text = "\nConfig keys (TOML; see config/reflow-ingest.example.toml):\n";
  for (const auto& key : ingest_config_reference())
    text += fmt::format("  {:<26} {:<32} default {:<24} {}\n", key.key, key.type, key.default_text,
                        key.description);
  return text;
}

std::string rejections_text(const std::map<std::string, std::uint64_t>& by_reason) {
  std::string text;
  for (const auto& [reason, count] : by_reason)
    text += fmt::format("{}{} {}", text.empty() ? "" : ", ", count, reason);
  return text.empty() ? "none" : text;
}

// What became of the rejections: repeats of kept envelopes, over the caps, not logged.
std::string rejection_handling_text(const IngestCounters& c) {
  return fmt::format("{} repeats, {} not kept, {} not logged", c.rejections_repeated,
                     c.rejections_not_kept, c.rejection_logs_suppressed);
}

// The state of the two MQTT connections: the events subscription, and the acks' own connection.
std::string connections_text(const IngestCounters& c) {
  std::string text = c.subscribed  ? "subscribed"
                     : c.connected ? "connected, subscribing"
                                   : "not connected";
  if (!c.acks_connected) text += ", acks connection down";
  return text;
}

// One line for systemd's STATUS= (`systemctl status`).
std::string status_line(const IngestCounters& c) {
  return fmt::format(
      "{}; stored {}, duplicates {}, rejected {} ({}), acks {} ({}), store errors "
      "{}{}",
      connections_text(c), c.stored, c.duplicates, c.rejected, rejection_handling_text(c),
      c.acks_published, c.node_kid.empty() ? "unsigned" : "signed by node key " + c.node_kid,
      c.store_errors, c.last_error.empty() ? "" : "; last error: " + c.last_error);
}

// The minute's counts, then the totals since start.
void log_summary(agent::Logger& log, const IngestCounters& now, const IngestCounters& before) {
  log.info(k_run_component,
           "last {}s: received {}, stored {}, duplicates {}, rejected {}, acks {}; since start: "
           "stored {}, duplicates {}, rejected {} ({}; {}), acks {}, store errors {}; {}",
           k_summary_interval.count(), now.received - before.received, now.stored - before.stored,
           now.duplicates - before.duplicates, now.rejected - before.rejected,
           now.acks_published - before.acks_published, now.stored, now.duplicates, now.rejected,
           rejections_text(now.rejected_by_reason), rejection_handling_text(now),
           now.acks_published, now.store_errors, connections_text(now));
}

int run(const std::string& config_path, const std::string& log_level_override) {
  agent::Logger log;
  auto config = config_or_report(config_path);
  if (!config) return 1;
  agent::LogLevel level = config->log_level;
  if (!log_level_override.empty() && !agent::parse_log_level(log_level_override, level)) {
    print_error(fmt::format("--log-level: expected debug, info, warning or error; got \"{}\"",
                            log_level_override));
    return 1;
  }
  log.set_level(level);
  log.info(k_run_component, "reflow-ingest {} starting with {}", agent::version(),
           config->source_file.empty() ? "the built-in defaults" : config->source_file);

  auto fatal = [&](const agent::Error& error) {
    log.error(k_run_component, "{}", error.message);
    sd_notifyf(0, "STATUS=failed: %s", error.message.c_str());
    return 1;
  };
  auto store = open_configured_store(*config);
  if (!store) return fatal(store.error());

  agent::Env& env = agent::Env::real();
  IngestService service(*config, **store, env, log);
  if (auto started = service.start(); !started) return fatal(started.error());
  // Ready once the store is open and the service runs: a broker that is down is retried in the
  // background (STATUS says so) rather than failing the unit's start.
  sd_notifyf(0, "READY=1\nSTATUS=%s", status_line(service.counters()).c_str());

  // The main thread only waits for signals; it wakes up to feed the watchdog, refresh STATUS
  // and log the summary.
  IngestCounters at_last_summary = service.counters();
  auto next_summary = env.steady_now() + k_summary_interval;
  agent::wait_for_stop_signal(log, k_run_component, k_status_refresh, [&] {
    const IngestCounters counters = service.counters();
    sd_notifyf(0, "STATUS=%s", status_line(counters).c_str());
    if (env.steady_now() >= next_summary) {
      log_summary(log, counters, at_last_summary);
      at_last_summary = counters;
      next_summary = env.steady_now() + k_summary_interval;
    }
  });

  service.stop(3000);
  const IngestCounters last = service.counters();
  log.info(k_run_component,
           "stopped: stored {}, duplicates {}, rejected {} ({}; {}), acks {}, store errors {} "
           "since start",
           last.stored, last.duplicates, last.rejected, rejections_text(last.rejected_by_reason),
           rejection_handling_text(last), last.acks_published, last.store_errors);
  return 0;
}

}  // namespace

void add_run_command(CLI::App& app, int& exit_code) {
  struct Options {
    std::string config{k_default_config_path};
    std::string log_level;
  };
  auto options = std::make_shared<Options>();
  auto* command = app.add_subcommand(
      "run",
      "Run the node's receiver in the foreground (systemd Type=notify): subscribe to the "
      "devices' events, verify, store and acknowledge them");
  add_config_option(*command, options->config);
  command->add_option("--log-level", options->log_level,
                      "Override ingest.log_level: debug, info, warning or error");
  command->footer(config_keys_footer());
  command->callback(
      [options, &exit_code] { exit_code = run(options->config, options->log_level); });
}

}  // namespace ingest::cli
