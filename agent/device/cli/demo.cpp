// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-agent demo`: the whole path on one machine, with nothing to configure. It starts a
// Mosquitto on a free loopback port, registers a fresh device key with a real `reflow-ingest`
// (the node's receiver, next to this binary), runs it, and runs this very binary as
// `reflow-agent run` with the sim printer. The ingest verifies, stores and acknowledges each event
// (PROTOCOL §5, §7); the demo watches the topics and prints each event once the node's ack covers
// it, until the agent's outbox is empty.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <mqtt/async_client.h>
#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/units.hpp>
#include <reflow/device/control.hpp>

#include "commands.hpp"

namespace agent::cli {
namespace {

constexpr std::string_view k_device = "demo-printer-01";
constexpr std::string_view k_prefix = "reflow/v1";

int free_loopback_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

bool accepts_connections(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

// Starts `argv` with stdout and stderr to `log_file`.
pid_t spawn(const std::vector<std::string>& argv, const std::filesystem::path& log_file) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0640);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    std::vector<char*> args;
    for (const std::string& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return pid;
}

bool stop_process(pid_t pid, int signal_number) {
  if (pid <= 0) return true;
  ::kill(pid, signal_number);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string describe(const nlohmann::ordered_json& e) {
  std::string what;
  const auto& q = e.contains("effortQuantity") ? e["effortQuantity"] : e["resourceQuantity"];
  std::string resource =
      e.value("resourceInventoriedAs", e.value("resourceConformsTo", std::string("-")));
  if (q.is_object())
    what = fmt::format("{:.4g} {}", q["hasNumericalValue"].get<double>(),
                       q["hasUnit"].get<std::string>());
  std::string process = e.value("inputOf", e.value("outputOf", std::string("")));
  return fmt::format("{:<8} {:<43} {:<14} {}", e["action"].get<std::string>(), resource, what,
                     process);
}

// Runs `argv` to completion with its output in `log_file`; returns its exit status (-1 when it
// did not exit normally).
int run_to_end(const std::vector<std::string>& argv, const std::filesystem::path& log_file) {
  pid_t pid = spawn(argv, log_file);
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Watches the device's topics as any MQTT client could: remembers the events the agent
// published and prints them once the node's retained ack covers them (the node acks only what it
// verified and stored).
struct Watcher {
  std::map<std::int64_t, nlohmann::ordered_json> published;  // seq -> event (current stream)
  std::string stream;
  std::int64_t printed = 0;

  void on_event(const std::string& envelope) {
    auto parsed = jws_parse(envelope);
    if (!parsed) return;
    auto event = nlohmann::ordered_json::parse(parsed->payload, nullptr, false);
    if (event.is_discarded() || !event.contains("seq") || !event["seq"].is_number_integer()) return;
    const auto seq = event["seq"].get<std::int64_t>();
    published[seq] = std::move(event);
  }

  void on_ack(const std::string& payload) {
    auto ack = nlohmann::json::parse(payload, nullptr, false);
    if (ack.is_discarded() || !ack.contains("seq") || !ack["seq"].is_number_integer()) return;
    const std::int64_t acked = ack["seq"];
    for (; printed < acked; ++printed) {
      auto it = published.find(printed + 1);
      if (it == published.end()) {
        fmt::print("  seq {:>3}  stored by the node\n", printed + 1);
        continue;
      }
      fmt::print("  seq {:>3}  stored by the node  {}  {}\n", printed + 1,
                 it->second["recorded"].get<std::string>(), describe(it->second));
    }
  }
};

}  // namespace

int demo(const DemoOptions& options) {
  const int jobs = options.jobs;
  bool keep = options.keep;
  const auto started = std::chrono::steady_clock::now();
  std::string dir_pattern =
      (std::filesystem::temp_directory_path() / "reflow-demo-XXXXXX").string();
  if (!::mkdtemp(dir_pattern.data())) {
    print_error("cannot create a temporary directory");
    return 1;
  }
  const std::filesystem::path dir = dir_pattern;
  const std::string mosquitto =
      std::getenv("REFLOW_MOSQUITTO") ? std::getenv("REFLOW_MOSQUITTO") : "/usr/sbin/mosquitto";
  if (::access(mosquitto.c_str(), X_OK) != 0) {
    print_error(fmt::format("{} not found: sudo apt-get install mosquitto", mosquitto));
    return 1;
  }
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  self[n > 0 ? n : 0] = '\0';
  const std::string ingest = (std::filesystem::path(self).parent_path() / "reflow-ingest").string();
  if (::access(ingest.c_str(), X_OK) != 0) {
    print_error(
        fmt::format("{} not found: the demo's node is reflow-ingest, built beside "
                    "reflow-agent (cmake --build build)",
                    ingest));
    return 1;
  }
  const int port = free_loopback_port();
  {
    std::ofstream conf(dir / "mosquitto.conf");
    conf << "listener " << port << " 127.0.0.1\nallow_anonymous true\npersistence false\n";
  }
  fmt::print("reflow-agent demo: working in {}\n", dir.string());
  pid_t broker = spawn({mosquitto, "-c", (dir / "mosquitto.conf").string()}, dir / "mosquitto.log");
  pid_t agent_pid = -1;
  pid_t node_pid = -1;
  int exit_status = 1;
  auto cleanup = [&] {
    if (agent_pid > 0) stop_process(agent_pid, SIGKILL);
    if (node_pid > 0) stop_process(node_pid, SIGKILL);
    stop_process(broker, SIGTERM);
    if (!keep) std::filesystem::remove_all(dir);
  };
  auto give_up = [&](const std::string& message) {
    print_error(message);
    keep = true;
    cleanup();
    return 1;
  };
  for (int i = 0; i < 500 && !accepts_connections(port); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (!accepts_connections(port))
    return give_up(
        fmt::format("mosquitto did not start; see {}", (dir / "mosquitto.log").string()));
  fmt::print("  broker    mosquitto on 127.0.0.1:{}\n", port);

  auto key = DeviceKey::generate(dir / "device.key");
  if (!key) return give_up(key.error().message);
  if (auto written = write_public_jwk(key->public_jwk(), public_jwk_path(dir / "device.key"));
      !written)
    return give_up(written.error().message);
  fmt::print("  device    {} with key {}\n", k_device, key->public_jwk().kid);

  // The node: reflow-ingest with its own store, the device's key in its registry.
  const std::string ingest_config = (dir / "ingest.toml").string();
  std::ofstream(ingest_config) << fmt::format(
      "[ingest]\ndata_dir = \"node\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n"
      "topic_prefix = \"{}\"\nclient_id = \"reflow-demo-ingest\"\nreconnect_min = \"100ms\"\n"
      "reconnect_max = \"2s\"\n",
      port, k_prefix);
  if (run_to_end({ingest, "device", "add", std::string(k_device), "--jwk",
                  (dir / "device.jwk").string(), "--config", ingest_config},
                 dir / "node.log") != 0)
    return give_up(
        fmt::format("reflow-ingest device add failed; see {}", (dir / "node.log").string()));
  node_pid =
      spawn({ingest, "run", "--config", ingest_config, "--log-level", "debug"}, dir / "node.log");
  fmt::print("  node      reflow-ingest run (log: {}), device registered\n",
             (dir / "node.log").string());

  {
    std::ofstream conf(dir / "agent.toml");
    conf << fmt::format(
        "[agent]\ndevice_id = \"{}\"\nkey_file = \"device.key\"\ndata_dir = \"data\"\n\n"
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\ntopic_prefix = \"{}\"\nresend_after = \"5s\"\n"
        "reconnect_min = \"100ms\"\nreconnect_max = \"2s\"\n\n",
        k_device, port, k_prefix);
    if (options.drivers_file)
      conf << read_file(*options.drivers_file);
    else
      conf << fmt::format(
          "[[driver]]\nkind = \"sim\"\nname = \"printer\"\nprinter = "
          "\"printer:prusa-mk4-01\"\n"
          "filament = \"spool:pla-galaxy-black-01\"\npart = \"benchy.gcode\"\njobs = "
          "{}\njob_duration = \"1s\"\n"
          "filament_grams = 14.2\n",
          jobs);
  }

  // The watcher subscribes before the agent starts, so it sees every event.
  mqtt::async_client client(fmt::format("tcp://127.0.0.1:{}", port), "reflow-demo-watcher",
                            mqtt::create_options(MQTTVERSION_3_1_1));
  try {
    client.start_consuming();
    client.connect(mqtt::connect_options_builder().clean_session(true).finalize())->wait();
    client.subscribe(fmt::format("{}/{}/events", k_prefix, k_device), 1)->wait();
    client.subscribe(fmt::format("{}/{}/ack", k_prefix, k_device), 1)->wait();
  } catch (const mqtt::exception& e) {
    return give_up(fmt::format("demo watcher: {}", e.what()));
  }

  agent_pid = spawn({self, "run", "--config", (dir / "agent.toml").string()}, dir / "agent.log");
  if (options.drivers_file)
    fmt::print("  agent     reflow-agent run (log: {}), drivers from {}\n\n",
               (dir / "agent.log").string(), options.drivers_file->string());
  else
    fmt::print("  agent     reflow-agent run (log: {}), sim printer running {} jobs of 1 s\n\n",
               (dir / "agent.log").string(), jobs);

  Watcher watcher;
  const std::int64_t expected =
      options.drivers_file ? options.events : 3 * static_cast<std::int64_t>(jobs);
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(30 + 3 * jobs + options.timeout_s);
  std::optional<nlohmann::ordered_json> status;
  bool done = false;
  while (!done && std::chrono::steady_clock::now() < deadline) {
    mqtt::const_message_ptr msg;
    if (client.try_consume_message_for(&msg, std::chrono::milliseconds(200)) && msg) {
      if (msg->get_topic().ends_with("/events"))
        watcher.on_event(msg->get_payload_str());
      else
        watcher.on_ack(msg->get_payload_str());
    }
    if (watcher.printed >= expected) {
      auto answer = control_status(dir / "data" / "control.sock");
      if (answer) status = std::move(*answer);
      done = answer && (*status)["backlog_events"] == 0 && (*status)["last_seq"] == expected;
    }
    int wstatus = 0;
    if (::waitpid(agent_pid, &wstatus, WNOHANG) == agent_pid) {
      agent_pid = -1;
      print_error(fmt::format("the agent exited early; see {}", (dir / "agent.log").string()));
      break;
    }
    if (::waitpid(node_pid, &wstatus, WNOHANG) == node_pid) {
      node_pid = -1;
      print_error(fmt::format("reflow-ingest exited early; see {}", (dir / "node.log").string()));
      break;
    }
  }
  const bool agent_clean = agent_pid > 0 && stop_process(agent_pid, SIGTERM);
  agent_pid = -1;
  const bool node_clean = node_pid > 0 && stop_process(node_pid, SIGTERM);
  node_pid = -1;
  try {
    client.disconnect()->wait();
  } catch (const mqtt::exception&) {
  }

  // What the node itself says it stored and refused.
  nlohmann::json node_stats;
  if (run_to_end({ingest, "stats", "--json", "--config", ingest_config}, dir / "stats.json") == 0) {
    std::istringstream lines(read_file(dir / "stats.json"));
    for (std::string line; std::getline(lines, line);) {
      auto row = nlohmann::json::parse(line, nullptr, false);
      if (!row.is_discarded() && row.value("device", "") == k_device) node_stats = row;
    }
  }
  const std::int64_t stored = node_stats.value("events", std::int64_t{0});
  std::int64_t rejected = 0;
  if (node_stats.contains("rejections"))
    for (const auto& [reason, count] : node_stats["rejections"].items())
      rejected += count.get<std::int64_t>();
  const std::string chain = node_stats.value("chain", "unknown");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  fmt::print(
      "\nsummary: reflow-ingest stored {} of {} events after verifying each (Ed25519 JWS, kid, "
      "device, schema, chain: {}), {} rejected\n",
      stored, expected, chain, rejected);
  if (status)
    fmt::print(
        "         agent outbox: last seq {}, acked {}, backlog {}; agent stopped {}, node stopped "
        "{}; {:.1f} s\n",
        (*status)["last_seq"].dump(), (*status)["acked_seq"].dump(),
        (*status)["backlog_events"].dump(), agent_clean ? "cleanly" : "WITH AN ERROR",
        node_clean ? "cleanly" : "WITH AN ERROR", seconds);
  if (done && agent_clean && node_clean && stored == expected && rejected == 0 &&
      chain == "intact") {
    fmt::print(
        "demo OK: every event was signed, committed, delivered, verified, stored and "
        "acknowledged\n");
    if (keep) fmt::print("         look inside: {} stats --config {}\n", ingest, ingest_config);
    exit_status = 0;
  } else {
    fmt::print("demo FAILED: see {} and {} (kept)\n", (dir / "agent.log").string(),
               (dir / "node.log").string());
    keep = true;
  }
  cleanup();
  return exit_status;
}

}  // namespace agent::cli
