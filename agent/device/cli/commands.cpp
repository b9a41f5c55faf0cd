// SPDX-License-Identifier: AGPL-3.0-or-later
#include "commands.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/json_strict.hpp>
#include <reflow/core/tls.hpp>
#include <reflow/core/units.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/control.hpp>
#include <reflow/device/daemon.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/device/driver_table.hpp>
#include <reflow/device/outbox.hpp>

namespace agent::cli {
namespace {

Result<AgentConfig> load_or_report(const std::filesystem::path& path) {
  auto config = load_config(path);
  if (!config) print_error(config.error().message);
  return config;
}

// Reads the socket to its end, calling `each` per line.
template <typename F>
void read_lines(int fd, F&& each) {
  std::string buffer;
  char chunk[16384];
  for (;;) {
    ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buffer.append(chunk, static_cast<std::size_t>(n));
    std::size_t start = 0;
    for (auto nl = buffer.find('\n', start); nl != std::string::npos;
         nl = buffer.find('\n', start)) {
      each(std::string_view(buffer).substr(start, nl - start));
      start = nl + 1;
    }
    buffer.erase(0, start);
  }
  if (!buffer.empty()) each(std::string_view(buffer));
}

Result<int> connect_or_report(const AgentConfig& config) {
  auto fd = control_connect(config.control_socket_path());
  if (!fd) print_error(fd.error().message);
  return fd;
}

std::string or_dash(const nlohmann::ordered_json& value) {
  if (value.is_null()) return "-";
  if (value.is_string()) return value.get<std::string>();
  return value.dump();
}

// The client certificate (mqtt.cert_file) as status shows it, read from the file itself:
// {"subject","not_after" (RFC 3339),"days_left"} or {"error"}.
nlohmann::ordered_json certificate_status(const std::filesystem::path& cert_file) {
  nlohmann::ordered_json out;
  auto info = tls::read_certificate(cert_file);
  if (!info) {
    out["error"] = info.error().message;
    return out;
  }
  const std::int64_t left_s = info->not_after - static_cast<std::int64_t>(std::time(nullptr));
  out["subject"] = info->subject;
  out["not_after"] = agent::format_rfc3339_s(info->not_after);
  out["days_left"] = left_s >= 0 ? left_s / 86400 : -((-left_s + 86399) / 86400);
  return out;
}

}  // namespace

void print_error(const std::string& message) {
  fmt::print(stderr, "reflow-agent: {}\n", message);
}

int keygen(const std::filesystem::path& key_path) {
  const std::filesystem::path jwk_path = public_jwk_path(key_path);
  if (jwk_path == key_path) {
    print_error(
        fmt::format("--key {}: the key's public JWK is written to KEY with its extension "
                    "replaced by .jwk; name the private key something else (device.key)",
                    key_path.string()));
    return 1;
  }
  auto key = DeviceKey::generate(key_path);
  if (!key) {
    std::error_code ec;
    if (std::filesystem::exists(key_path, ec))
      print_error(fmt::format("{}; `reflow-agent key show --key {}` prints its public JWK",
                              key.error().message, key_path.string()));
    else
      print_error(key.error().message);
    return 1;
  }
  if (auto written = write_public_jwk(key->public_jwk(), jwk_path); !written) {
    print_error(
        fmt::format("{} (the key itself is in {}; `reflow-agent key show --key {}` prints "
                    "its public JWK)",
                    written.error().message, key_path.string(), key_path.string()));
    return 1;
  }
  fmt::print("{}\n", key->public_jwk().to_json());
  std::fflush(stdout);
  fmt::print(stderr,
             "reflow-agent: wrote {} (mode 0600) and its public JWK {} (mode 0644, printed "
             "above; `reflow-agent key show` prints it again): give {} to your node operator\n",
             key_path.string(), jwk_path.string(), jwk_path.filename().string());
  return 0;
}

int key_show(const std::optional<std::filesystem::path>& key_path,
             const std::optional<std::filesystem::path>& config_path) {
  std::filesystem::path path;
  if (key_path) {
    path = *key_path;
  } else {
    auto config = load_or_report(*config_path);
    if (!config) return 1;
    path = config->key_file;
  }
  auto key = DeviceKey::load(path);
  if (!key) {
    print_error(key.error().message);
    return 1;
  }
  fmt::print("{}\n", key->public_jwk().to_json());
  std::fflush(stdout);
  return std::ferror(stdout) ? 1 : 0;
}

int run(const std::filesystem::path& config_path, const std::string& log_level_override) {
  Logger log;
  auto config = load_or_report(config_path);
  if (!config) return 1;
  LogLevel level = config->log_level;
  if (!log_level_override.empty() && !parse_log_level(log_level_override, level)) {
    print_error(fmt::format("--log-level: expected debug, info, warning or error; got \"{}\"",
                            log_level_override));
    return 1;
  }
  log.set_level(level);
  log.info("daemon", "reflow-agent {} starting with {}", version(), config_path.string());
  return run_daemon(*config, builtin_driver_kinds(), log);
}

int emit(const std::filesystem::path& config_path) {
  auto config = load_or_report(config_path);
  if (!config) return 1;
  auto fd = connect_or_report(*config);
  if (!fd) return fd.error().code == ErrorCode::not_found ? k_exit_not_running : 1;
  if (!control_send_all(*fd, "{\"op\":\"emit\"}\n")) {
    print_error("the daemon closed the control socket");
    ::close(*fd);
    return 1;
  }
  // stdin is copied in one thread while answers are printed in this one, so many lines are in
  // flight at once and share group commits. The daemon answers every non-blank line.
  auto sent = std::make_shared<std::atomic<std::uint64_t>>(0);
  auto fed_all = std::make_shared<std::atomic<bool>>(false);
  std::thread feeder([fd = *fd, sent, fed_all] {
    std::string line;
    bool daemon_gone = false;
    while (!daemon_gone && std::getline(std::cin, line)) {
      const bool blank = line.find_first_not_of(" \t\r") == std::string::npos;
      line.push_back('\n');
      daemon_gone = !control_send_all(fd, line);
      if (!daemon_gone && !blank) sent->fetch_add(1);
    }
    // Set before the half-close: the daemon closes only after it has seen the end of input.
    if (!daemon_gone) fed_all->store(true);
    ::shutdown(fd, SHUT_WR);
  });
  bool any_refused = false;
  std::uint64_t answers = 0;
  read_lines(*fd, [&](std::string_view line) {
    ++answers;
    auto answer = nlohmann::ordered_json::parse(line, nullptr, false);
    if (!answer.is_object() || answer.contains("error")) any_refused = true;
    fmt::print("{}\n", line);
    std::fflush(stdout);
  });
  if (!fed_all->load()) {
    // The daemon closed the connection while stdin still had lines (it stopped or was killed):
    // those lines were not submitted. The feeder may be blocked reading stdin; it ends with us.
    feeder.detach();
    print_error(
        fmt::format("the daemon closed the connection after {} answers; the remaining "
                    "input was not submitted",
                    answers));
    return 1;
  }
  feeder.join();
  ::close(*fd);
  if (answers < sent->load()) {
    print_error(
        fmt::format("the daemon answered {} of {} lines; the others may not be committed "
                    "(was it stopped?)",
                    answers, sent->load()));
    return 1;
  }
  return any_refused ? 1 : 0;
}

int status(const std::filesystem::path& config_path, bool json) {
  auto config = load_or_report(config_path);
  if (!config) return 1;
  auto answer = control_status(config->control_socket_path());
  if (!answer) {
    print_error(answer.error().message);
    return answer.error().code == ErrorCode::not_found ? k_exit_not_running : 1;
  }
  nlohmann::ordered_json s = std::move(*answer);  // non-const: a missing key reads as null
  if (!config->cert_file.empty()) s["certificate"] = certificate_status(config->cert_file);
  if (json) {
    fmt::print("{}\n", s.dump());
    return 0;
  }
  const bool connected = s.value("connected", false);
  fmt::print("device:          {} (reflow-agent {})\n", or_dash(s["device"]),
             or_dash(s["version"]));
  fmt::print("broker:          {} ({} since {})\n", or_dash(s["broker"]),
             connected ? "connected" : "NOT connected", or_dash(s["since"]));
  if (const auto& proxy = s["proxy"]; proxy.is_string())
    fmt::print("proxy:           {} (mqtt.proxy)\n", proxy.get<std::string>());
  if (auto& c = s["certificate"]; !c.is_null()) {
    const std::int64_t days = c.value("days_left", std::int64_t{0});
    fmt::print(
        "certificate:     {}\n",
        c.contains("error")
            ? fmt::format("UNREADABLE: {}", or_dash(c["error"]))
            : fmt::format("{}, expires {} ({})", or_dash(c["subject"]), or_dash(c["not_after"]),
                          days >= 0 ? fmt::format("in {} days", days)
                                    : fmt::format("EXPIRED {} days ago", -days)));
  }
  fmt::print("stream:          {}\n", or_dash(s["stream"]));
  fmt::print("last seq:        {}\n", or_dash(s["last_seq"]));
  fmt::print("acked seq:       {}\n", or_dash(s["acked_seq"]));
  fmt::print("backlog:         {} events, {}\n", or_dash(s["backlog_events"]),
             format_size(s.value("backlog_bytes", std::uint64_t{0})));
  fmt::print("oldest unacked:  {}\n",
             s["oldest_unacked_s"].is_null()
                 ? "-"
                 : fmt::format("{} s ago", s["oldest_unacked_s"].get<std::int64_t>()));
  fmt::print("clock:           {}\n", or_dash(s["clock"]));
  fmt::print("outbox:          {} on disk, quota {}\n",
             format_size(s.value("outbox_bytes", std::uint64_t{0})),
             format_size(s.value("quota_bytes", std::uint64_t{0})));
  fmt::print("disk:            {} free, {} kept free (outbox.min_free){}; reserve {}\n",
             s["disk_free_bytes"].is_null()
                 ? std::string("unknown")
                 : format_size(s["disk_free_bytes"].get<std::uint64_t>()),
             format_size(s.value("min_free_bytes", std::uint64_t{0})),
             s.value("accepting", true) ? "" : "; NEW EVENTS REFUSED until space is freed",
             s.value("reserve_bytes", std::uint64_t{0}) == 0
                 ? std::string("none")
                 : fmt::format("{} {}", format_size(s.value("reserve_bytes", std::uint64_t{0})),
                               s.value("reserve_held", false) ? "held" : "GIVEN UP (disk full)"));
  fmt::print("refused:         {} over quota, {} disk nearly full, {} disk errors, {} queue full\n",
             or_dash(s["refused_quota"]), or_dash(s["refused_disk"]), or_dash(s["refused_io"]),
             or_dash(s["refused_busy"]));
  if (s.value("zenflows_warnings", std::uint64_t{0}) > 0)
    fmt::print(
        "zenflows:        {} events accepted that zenflows would refuse at export; last: {}\n",
        or_dash(s["zenflows_warnings"]), or_dash(s["zenflows_last_warning"]));
  fmt::print("published:       {} ({} republished), {} acks ({} refused), {} connects\n",
             or_dash(s["published"]), or_dash(s["republished"]), or_dash(s["acks"]),
             or_dash(s["refused_acks"]), or_dash(s["connects"]));
  if (s.value("acks_verified", false)) {
    std::string reasons;
    for (auto& [name, count] : s["refused_acks_by_reason"].items()) {
      if (count.get<std::uint64_t>() == 0) continue;
      reasons +=
          fmt::format("{}{} {}", reasons.empty() ? "" : ", ", count.get<std::uint64_t>(), name);
    }
    const auto& proven = s["consistency_proven"];
    fmt::print("acks:            verified with node key {}; log size {}{}; refused: {}\n",
               or_dash(s["node_kid"]), or_dash(s["verified_tree_size"]),
               !proven.is_boolean() ? ""
               : proven.get<bool>() ? " (growth proven)"
                                    : " (growth NOT proven: the node sends no consistency proofs)",
               reasons.empty() ? std::string("none") : reasons);
    if (!s["ack_error"].is_null()) fmt::print("ACK PROOF FAILED: {}\n", or_dash(s["ack_error"]));
  } else {
    fmt::print("acks:            NOT verified (no mqtt.node_jwk; PROTOCOL §5.1)\n");
  }
  fmt::print("last error:      {}\n", or_dash(s["last_error"]));
  if (!s["quarantined"].is_null())
    fmt::print("QUARANTINED:     the previous outbox was unreadable and is kept at {}\n",
               or_dash(s["quarantined"]));
  // One line per driver: "sim/p1: running; 12 events, 0 errors, 0 malformed; last error …".
  for (auto& d : s["drivers"])
    fmt::print("driver:          {}/{}: {}; {} events, {} errors, {} malformed{}\n",
               or_dash(d["kind"]), or_dash(d["name"]), or_dash(d["state"]), or_dash(d["events"]),
               or_dash(d["errors"]), or_dash(d["malformed"]),
               d["last_error"].is_null()
                   ? ""
                   : fmt::format("; last error {}: {}", or_dash(d["last_error_at"]),
                                 or_dash(d["last_error"])));
  return 0;
}

int export_events(const std::filesystem::path& config_path, std::int64_t from_seq,
                  const std::optional<std::filesystem::path>& outbox_file) {
  auto config = load_or_report(config_path);
  if (!config) return 1;
  const auto path = outbox_file.value_or(config->outbox_path());
  auto print = [](const OutboxEvent& event) {
    std::fwrite(event.envelope.data(), 1, event.envelope.size(), stdout);
    std::fputc('\n', stdout);
  };
  // Held back until the file is known to read whole: a damaged one is recovered instead, and the
  // recovery's output (in seq order, deduplicated) must not follow half of this one.
  std::vector<OutboxEvent> rows;
  std::size_t skipped = 0;
  Status done = Outbox::export_file(
      path, from_seq, [&](const OutboxEvent& event) { rows.push_back(event); }, skipped);
  if (done && skipped == 0) {
    for (const OutboxEvent& event : rows)
      print(event);
    std::fflush(stdout);
    fmt::print(stderr, "reflow-agent: exported {} envelopes from {}\n", rows.size(), path.string());
    return 0;
  }
  if (!done && done.error().code != ErrorCode::corruption) {
    print_error(done.error().message);
    return 1;
  }
  rows.clear();
  const std::string why = done ? fmt::format("{} unreadable rows", skipped) : done.error().message;
  // Recovery keeps only what verifies with this device's key (PROTOCOL §3).
  auto key = DeviceKey::load(config->key_file);
  if (!key) {
    print_error(
        fmt::format("{} cannot be read whole ({}); recovering its envelopes needs the "
                    "device key to verify them: {}",
                    path.string(), why, key.error().message));
    return 1;
  }
  fmt::print(stderr,
             "reflow-agent: {} cannot be read whole ({}); recovering the envelopes in it that "
             "verify with key {}\n",
             path.string(), why, key->public_jwk().kid);
  auto report = Outbox::recover_file(path, key->public_jwk(), from_seq, print);
  std::fflush(stdout);
  if (!report) {
    print_error(report.error().message);
    return 1;
  }
  fmt::print(stderr, "reflow-agent: recovered {} envelopes from {}; {} damaged regions skipped{}\n",
             report->recovered, path.string(), report->damaged_regions,
             report->already_acked
                 ? fmt::format("; {} already acknowledged left out", report->already_acked)
                 : std::string());
  return report->damaged_regions ? 1 : 0;
}

int verify(const std::filesystem::path& jwk_path, const std::string& expected_device) {
  if (!expected_device.empty() && !is_valid_device_id(expected_device)) {
    print_error(
        fmt::format("--device: \"{}\" is not a device id (PROTOCOL §1: "
                    "^[a-z0-9][a-z0-9._-]{{0,63}}$)",
                    nlohmann::json(expected_device)
                        .dump(-1, ' ', true, nlohmann::json::error_handler_t::replace)));
    return 1;
  }
  std::ifstream in(jwk_path);
  if (!in) {
    print_error(fmt::format("cannot read {}: {}", jwk_path.string(), std::strerror(errno)));
    return 1;
  }
  std::string jwk_text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto jwk = parse_public_jwk(jwk_text);
  if (!jwk) {
    print_error(fmt::format("{}: {}", jwk_path.string(), jwk.error().message));
    return 1;
  }
  struct Previous {
    std::int64_t seq;
    std::string hash;
  };
  std::map<std::string, Previous> last_by_stream;  // the chain is checked per stream
  std::string line;
  std::size_t line_number = 0;
  bool all_ok = true;
  // One verdict per line whatever the line holds: a line that cannot be judged is a failed
  // verdict, never the end of the run.
  auto judge = [&](nlohmann::ordered_json& verdict) {
    auto fail_line = [&](const std::string& why) {
      verdict["ok"] = false;
      verdict["error"] = why;
      all_ok = false;
    };
    auto verified = jws_verify(line, *jwk);
    if (!verified) return fail_line(verified.error().message);
    auto event = parse_json_strict(verified->payload);
    if (!event) return fail_line("payload: " + event.error().message);
    if (Status valid = validate_event_payload(*event); !valid)
      return fail_line(valid.error().message);
    const std::string& device = (*event)["device"].get_ref<const std::string&>();
    if (!expected_device.empty() && device != expected_device)
      return fail_line(fmt::format("device: the event names \"{}\"; expected \"{}\" (--device)",
                                   device, expected_device));
    const std::string stream = (*event)["stream"].get<std::string>();
    const std::int64_t seq = (*event)["seq"].get<std::int64_t>();
    auto previous = last_by_stream.find(stream);
    const bool broken = previous != last_by_stream.end() && previous->second.seq + 1 == seq &&
                        (!(*event)["prev"].is_string() ||
                         (*event)["prev"].get<std::string>() != previous->second.hash);
    last_by_stream[stream] = Previous{seq, sha256_b64url(verified->jws.signing_input())};
    if (broken)
      return fail_line(fmt::format("chain break: prev of seq {} does not match the hash of seq {}",
                                   seq, seq - 1));
    verdict["ok"] = true;
    verdict["device"] = device;
    verdict["stream"] = stream;
    verdict["seq"] = seq;
    verdict["id"] = (*event)["id"];
  };
  while (std::getline(std::cin, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::ordered_json verdict;
    verdict["line"] = line_number;
    try {
      judge(verdict);
    } catch (const std::exception& e) {
      verdict["ok"] = false;
      verdict["error"] = fmt::format("cannot judge this line: {}", e.what());
      all_ok = false;
    }
    // `replace`: an error that quotes bytes which are not UTF-8 still prints, as U+FFFD.
    fmt::print("{}\n",
               verdict.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
  }
  return all_ok ? 0 : 1;
}

int drivers(const std::string& describe_kind) {
  if (describe_kind.empty()) {
    for (const DriverKind* kind : builtin_driver_kinds())
      fmt::print("{:<12} {}\n", kind->kind(), kind->summary());
    for (const KnownDriverKind& known : known_driver_kinds()) {
      bool built = false;
      for (const DriverKind* kind : builtin_driver_kinds())
        built = built || kind->kind() == known.kind;
      if (!built) fmt::print("{:<12} (not built; cmake -D{}=ON)\n", known.kind, known.cmake_option);
    }
    return 0;
  }
  for (const DriverKind* kind : builtin_driver_kinds())
    if (kind->kind() == describe_kind) {
      fmt::print(
          "{}: {}\n\n[[driver]]\nkind = \"{}\"\nname = \"...\"    # unique instance name (string, "
          "required)\n",
          kind->kind(), kind->summary(), kind->kind());
      for (const DriverKeyInfo& key : kind->keys())
        fmt::print("{} = {}    # {}: {}\n", key.key, key.default_text, key.type, key.description);
      return 0;
    }
  print_error(fmt::format("no driver kind \"{}\" in this build (see: reflow-agent drivers)",
                          describe_kind));
  return 1;
}

}  // namespace agent::cli
