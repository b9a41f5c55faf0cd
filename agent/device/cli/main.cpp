// SPDX-License-Identifier: AGPL-3.0-or-later
// reflow-agent: parses arguments and hands over to one command (commands.cpp, demo.cpp).
#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <reflow/core/cli_options.hpp>

#include <reflow/device/config.hpp>
#include <reflow/device/daemon.hpp>

#include "commands.hpp"

namespace {

std::string config_keys_footer() {
  std::string text = "\nConfig keys (TOML; see config/reflow-agent.example.toml):\n";
  for (const auto& key : agent::config_reference())
    text += fmt::format("  {:<24} {:<18} default {:<24} {}\n", key.key, key.type, key.default_text,
                        key.description);
  text +=
      "  [[driver]] tables: kind, name and the kind's keys (reflow-agent drivers describe KIND)\n";
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  agent::block_signals();
  CLI::App app{
      "reflow-agent: signs machine events (ValueFlows) on this device, keeps them in a local "
      "outbox "
      "and forwards them over MQTT to a community node until the node acknowledges them."};
  app.set_version_flag("--version", std::string("reflow-agent ") + agent::version());
  app.require_subcommand(1);

  std::string config_path;
  std::string key_path;
  std::string jwk_path;
  std::string log_level;
  std::string outbox_file;
  std::string describe_kind;
  std::int64_t from_seq = 1;
  bool json = false;
  bool keep = false;
  int jobs = 3;

  auto* keygen = app.add_subcommand(
      "keygen",
      "Create the device's Ed25519 key (mode 0600), write its public JWK beside it as KEY with "
      "the extension replaced by .jwk (device.key -> device.jwk, mode 0644: the file to give the "
      "node operator for `reflow-ingest device add`) and print that JWK");
  keygen
      ->add_option("--key", key_path,
                   "Where to write the key; an existing file is never overwritten")
      ->required();

  std::string show_key_path;
  std::string show_config_path;
  auto* key = app.add_subcommand("key", "The device's Ed25519 key");
  key->require_subcommand(1);
  auto* key_show = key->add_subcommand(
      "show",
      "Print the public JWK of the device's key, derived from the private key file (so it works "
      "when the .jwk file keygen wrote is lost): reflow-agent key show --config FILE > "
      "DEVICE.jwk");
  auto* show_key_option =
      key_show->add_option("--key", show_key_path, "The private key file (what keygen --key got)");
  auto* show_config_option = key_show->add_option(
      "--config", show_config_path, "The agent's TOML config file: its agent.key_file");
  show_key_option->excludes(show_config_option);
  key_show->require_option(1);

  auto* run = app.add_subcommand(
      "run",
      "Run the daemon in the foreground (systemd Type=notify). SIGTERM or SIGINT stops it; "
      "SIGHUP (systemctl reload) reads mqtt.password_file again and reconnects when the "
      "password changed");
  run->add_option("--config", config_path, "The agent's TOML config file")->required();
  run->add_option("--log-level", log_level,
                  "Override agent.log_level: debug, info, warning or error");
  run->footer(config_keys_footer());

  auto* emit = app.add_subcommand("emit",
                                  "Submit events (JSON lines on stdin) to the running daemon; "
                                  "prints {\"seq\",\"id\"} per line once "
                                  "committed, or {\"error\",\"line\"}. Exit 1 if any line was "
                                  "refused, 3 if the daemon is not running");
  emit->add_option("--config", config_path, "The agent's TOML config file")->required();

  auto* status = app.add_subcommand("status",
                                    "Show the daemon's state: connection, stream, seqs, backlog, "
                                    "clock, outbox. Exit 3 if not running");
  status->add_option("--config", config_path, "The agent's TOML config file")->required();
  status->add_flag("--json", json, "One JSON object instead of text");

  auto* exp =
      app.add_subcommand("export", "Print the outbox's envelopes (JWS, PROTOCOL §3) as JSON lines");
  exp->add_option("--config", config_path, "The agent's TOML config file")->required();
  exp->add_option("--from", from_seq, "First seq to print")->check(CLI::PositiveNumber);
  exp->add_option("--outbox", outbox_file,
                  "Read this outbox file instead (e.g. a quarantined outbox.db.corrupt-*)");

  int audit_timeout_s = 30;
  std::string audit_format = "text";
  auto* audit = app.add_subcommand(
      "audit",
      "Check that every event the node acked with a verified signed ack is still in its latest "
      "signed checkpoint, unchanged, and that its log only grew (PROTOCOL §5.2). Exit 1 naming "
      "each missing or altered event, 2 if the audit could not run");
  audit->add_option("--config", config_path, "The agent's TOML config file")->required();
  audit->add_option("--format", audit_format, "text or json")
      ->check(CLI::IsMember({"text", "json"}));
  audit
      ->add_option("--timeout", audit_timeout_s,
                   "Seconds to wait for the broker, the checkpoint and each answer")
      ->check(CLI::PositiveNumber);
  std::string audit_witness;
  audit
      ->add_option("--witness", audit_witness,
                   "A signed checkpoint of the node (C2SP tlog-checkpoint note) that another "
                   "party holds, e.g. from `reflow-ingest log checkpoint --signed`: also check "
                   "that it and the audited one are views of one append-only log")
      ->check(CLI::ExistingFile);

  auto* verify = app.add_subcommand(
      "verify",
      "Check envelopes (JSON lines on stdin): signature, event schema and the chain between lines");
  verify->add_option("--jwk", jwk_path, "The device's public JWK, as keygen printed it")
      ->required();
  std::string expected_device;
  verify->add_option("--device", expected_device,
                     "Also require every event's `device` to be this device id (the one the key "
                     "was registered for)");

  std::string csr_out;
  std::string bundle_file;
  auto* enroll = app.add_subcommand(
      "enroll",
      "Without BUNDLE: create the device's TLS key (EC P-256, at mqtt.key_file or "
      "DATA_DIR/tls.key, mode 0600) if missing and print a certificate signing request for the "
      "node's `reflow-ingest ca enroll`. With BUNDLE, the enrolment bundle that command made "
      "(JSON: the node CA's and this device's certificates, the broker URL and topic prefix): "
      "check it is this device's and for this key, write the certificates (mqtt.ca_file and "
      "mqtt.cert_file when set, else node-ca.pem and device.crt beside the config; mode 0644) "
      "and set [mqtt] url, topic_prefix, ca_file, cert_file and key_file in the config, keeping "
      "its comments and other keys (refused, with nothing written, when it cannot). Run as root, "
      "the TLS key is given to the service user (the owner of agent.data_dir)");
  enroll->add_option("--config", config_path, "The agent's TOML config file")->required();
  auto* out_option =
      enroll->add_option("--out", csr_out, "Write the CSR (PEM) to this file instead of stdout");
  enroll->add_option("BUNDLE", bundle_file, "The node's enrolment bundle (DEVICE.enrol.json)")
      ->excludes(out_option);

  auto* drivers = app.add_subcommand("drivers", "List the driver kinds built into this binary");
  auto* describe = drivers->add_subcommand("describe", "Print the keys of one driver kind");
  describe->add_option("KIND", describe_kind, "A kind listed by `reflow-agent drivers`")
      ->required();

  auto* members = app.add_subcommand(
      "members", "Members and their badges (the [members] file; README \"Badges and members\")");
  members->require_subcommand(1);
  std::string members_config;
  auto* members_list = members->add_subcommand(
      "list", "List the members and the last unknown card each machine saw (keyed hashes)");
  members_list->add_option("--config", members_config, "The agent's TOML config file")->required();
  agent::cli::MembersAddOptions add_options;
  std::string add_machine;
  auto* members_add = members->add_subcommand(
      "add",
      "Add a badge to a member (a new one when HANDLE is new) in the members file, keeping its "
      "comments");
  members_add->add_option("--config", members_config, "The agent's TOML config file")->required();
  members_add->add_option("HANDLE", add_options.handle, "The member's short local name")
      ->required();
  members_add
      ->add_option("--agent", add_options.agent_ref,
                   "The member's ValueFlows agent reference (a zenflows Person id, …)")
      ->required();
  auto* last_unknown = members_add->add_flag(
      "--last-unknown", add_options.last_unknown,
      "Enrol the last unknown card a machine saw (badge it at the machine first)");
  auto* badge_option = members_add->add_option(
      "--badge", add_options.badge, "A keyed badge hash (from the log or `members list`)");
  last_unknown->excludes(badge_option);
  members_add->add_option("--machine", add_machine,
                          "With --last-unknown: the machine (driver name) that saw the card, "
                          "when several did; the member is authorised on it");
  members_add->callback([&] {
    if (!add_options.last_unknown && add_options.badge.empty())
      throw CLI::RequiredError("--last-unknown or --badge");
  });

  auto* demo = app.add_subcommand("demo",
                                  "Run the built-in demo: a local Mosquitto, this agent with a "
                                  "simulated printer, and a receiver "
                                  "that verifies, prints and acknowledges each event");
  demo->add_option("--jobs", jobs, "Print jobs to simulate (3 events each)")
      ->check(CLI::Range(1, 1000));
  demo->add_flag("--keep", keep, "Keep the demo's temporary directory");
  std::string demo_drivers;
  std::int64_t demo_events = 0;
  int demo_timeout = 60;
  auto* demo_drivers_option =
      demo->add_option("--drivers", demo_drivers,
                       "A TOML file of [[driver]] tables (e.g. a driver's sample.toml pointed at "
                       "your machine) to run instead of the simulated printer")
          ->check(CLI::ExistingFile);
  demo->add_option("--events", demo_events,
                   "With --drivers: how many events to wait for before the demo ends")
      ->check(CLI::PositiveNumber)
      ->needs(demo_drivers_option);
  demo_drivers_option->needs(demo->get_option("--events"));
  demo->add_option("--timeout", demo_timeout,
                   "With --drivers: seconds to wait for those events (default 60)")
      ->check(CLI::Range(1, 86400));

  agent::cli_options::refuse_empty_values(app);
  CLI11_PARSE(app, argc, argv);

  try {
    if (*keygen) return agent::cli::keygen(key_path);
    if (*key_show)
      return agent::cli::key_show(
          show_key_path.empty() ? std::nullopt
                                : std::optional<std::filesystem::path>(show_key_path),
          show_config_path.empty() ? std::nullopt
                                   : std::optional<std::filesystem::path>(show_config_path));
    if (*run) return agent::cli::run(config_path, log_level);
    if (*emit) return agent::cli::emit(config_path);
    if (*status) return agent::cli::status(config_path, json);
    if (*exp)
      return agent::cli::export_events(
          config_path, from_seq,
          outbox_file.empty() ? std::nullopt : std::optional<std::filesystem::path>(outbox_file));
    if (*audit)
      return agent::cli::audit(config_path, audit_format == "json", audit_timeout_s,
                               audit_witness.empty()
                                   ? std::nullopt
                                   : std::optional<std::filesystem::path>(audit_witness));
    if (*verify) return agent::cli::verify(jwk_path, expected_device);
    if (*enroll)
      return agent::cli::enroll(
          config_path,
          csr_out.empty() ? std::nullopt : std::optional<std::filesystem::path>(csr_out),
          bundle_file.empty() ? std::nullopt : std::optional<std::filesystem::path>(bundle_file));
    if (*drivers) return agent::cli::drivers(describe_kind);
    if (*members_list) return agent::cli::members_list(members_config);
    if (*members_add) {
      if (!add_machine.empty()) add_options.machine = add_machine;
      return agent::cli::members_add(members_config, add_options);
    }
    if (*demo) {
      agent::cli::DemoOptions options{jobs, keep, std::nullopt, demo_events, 0};
      if (!demo_drivers.empty()) {
        options.drivers_file = std::filesystem::absolute(demo_drivers);
        options.timeout_s = demo_timeout;
      }
      return agent::cli::demo(options);
    }
  } catch (const std::exception& e) {
    agent::cli::print_error(fmt::format("fatal: {}", e.what()));
    return 1;
  }
  return 1;
}
