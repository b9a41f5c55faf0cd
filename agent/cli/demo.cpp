// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-agent demo`: the whole path on one machine, with nothing to configure. It starts a
// Mosquitto on a free loopback port, runs this very binary as `reflow-agent run` with the sim
// printer, and plays the community node: every envelope is verified (signature, kid, schema,
// chain), printed, and acknowledged as PROTOCOL §5 says, until the agent's outbox is empty.
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
#include <thread>

#include <fmt/format.h>
#include <mqtt/async_client.h>
#include <nlohmann/json.hpp>

#include <agent/control.hpp>
#include <agent/event.hpp>
#include <agent/jose.hpp>
#include <agent/units.hpp>

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
  return fmt::format("{:<8} {:<26} {:<14} {}", e["action"].get<std::string>(), resource, what,
                     process);
}

// The node's part: verify, print, ack. Each stream's ack is the highest seq such that 1..seq
// all arrived (PROTOCOL §5).
struct Receiver {
  PublicJwk jwk;
  std::map<std::string, std::set<std::int64_t>> seen;                     // stream -> seqs received
  std::map<std::string, std::int64_t> contiguous;                         // stream -> acked seq
  std::map<std::string, std::pair<std::int64_t, std::string>> last_hash;  // stream -> (seq, hash)
  std::uint64_t verified = 0, duplicates = 0, rejected = 0;

  // Returns the ack payload to publish, or "" when nothing changes.
  std::string handle(const std::string& envelope) {
    auto v = jws_verify(envelope, jwk);
    if (!v) {
      ++rejected;
      fmt::print("  REJECTED  {}\n", v.error().message);
      return "";
    }
    auto event = nlohmann::ordered_json::parse(v->payload, nullptr, false);
    Status valid = event.is_discarded() ? Status(fail(ErrorCode::rejected, "payload is not JSON"))
                                        : validate_event_payload(event);
    if (!valid) {
      ++rejected;
      fmt::print("  REJECTED  {}\n", valid.error().message);
      return "";
    }
    const std::string stream = event["stream"];
    const std::int64_t seq = event["seq"];
    const std::string hash = sha256_b64url(v->jws.signing_input());
    auto prev = last_hash.find(stream);
    if (prev != last_hash.end() && prev->second.first + 1 == seq &&
        event["prev"] != prev->second.second) {
      ++rejected;
      fmt::print("  REJECTED  seq {}: chain break\n", seq);
      return "";
    }
    if (!seen[stream].insert(seq).second) {
      ++duplicates;
      fmt::print("  seq {:>3}  duplicate (expected now and then: delivery is at least once)\n",
                 seq);
    } else {
      ++verified;
      last_hash[stream] = {seq, hash};
      fmt::print("  seq {:>3}  verified  {}  {}\n", seq, event["recorded"].get<std::string>(),
                 describe(event));
    }
    std::int64_t& acked = contiguous[stream];
    const std::int64_t before = acked;
    while (seen[stream].count(acked + 1))
      ++acked;
    if (acked == before) return "";
    nlohmann::ordered_json ack;
    ack["stream"] = stream;
    ack["seq"] = acked;
    return ack.dump();
  }
};

}  // namespace

int demo(int jobs, bool keep) {
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
  const int port = free_loopback_port();
  {
    std::ofstream conf(dir / "mosquitto.conf");
    conf << "listener " << port << " 127.0.0.1\nallow_anonymous true\npersistence false\n";
  }
  fmt::print("reflow-agent demo: working in {}\n", dir.string());
  pid_t broker = spawn({mosquitto, "-c", (dir / "mosquitto.conf").string()}, dir / "mosquitto.log");
  pid_t agent_pid = -1;
  int exit_status = 1;
  auto cleanup = [&] {
    if (agent_pid > 0) stop_process(agent_pid, SIGKILL);
    stop_process(broker, SIGTERM);
    if (!keep) std::filesystem::remove_all(dir);
  };
  for (int i = 0; i < 500 && !accepts_connections(port); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (!accepts_connections(port)) {
    print_error(fmt::format("mosquitto did not start; see {}", (dir / "mosquitto.log").string()));
    keep = true;
    cleanup();
    return 1;
  }
  fmt::print("  broker    mosquitto on 127.0.0.1:{}\n", port);

  auto key = DeviceKey::generate(dir / "device.key");
  if (!key) {
    print_error(key.error().message);
    cleanup();
    return 1;
  }
  Receiver receiver{key->public_jwk(), {}, {}, {}, 0, 0, 0};
  fmt::print("  device    {} with key {}\n", k_device, key->public_jwk().kid);
  {
    std::ofstream conf(dir / "agent.toml");
    conf << fmt::format(
        "[agent]\ndevice_id = \"{}\"\nkey_file = \"device.key\"\ndata_dir = \"data\"\n\n"
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\ntopic_prefix = \"{}\"\nresend_after = \"5s\"\n"
        "reconnect_min = \"100ms\"\nreconnect_max = \"2s\"\n\n"
        "[[driver]]\nkind = \"sim\"\nname = \"printer\"\nprinter = \"printer:prusa-mk4-01\"\n"
        "filament = \"spool:pla-galaxy-black-01\"\npart = \"benchy.gcode\"\njobs = "
        "{}\njob_duration = \"1s\"\n"
        "filament_grams = 14.2\n",
        k_device, port, k_prefix, jobs);
  }

  // The receiver subscribes before the agent starts, so it sees every event.
  mqtt::async_client client(fmt::format("tcp://127.0.0.1:{}", port), "reflow-demo-node",
                            mqtt::create_options(MQTTVERSION_3_1_1));
  try {
    client.start_consuming();
    client.connect(mqtt::connect_options_builder().clean_session(true).finalize())->wait();
    client.subscribe(fmt::format("{}/+/events", k_prefix), 1)->wait();
  } catch (const mqtt::exception& e) {
    print_error(fmt::format("demo receiver: {}", e.what()));
    cleanup();
    return 1;
  }

  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  self[n > 0 ? n : 0] = '\0';
  agent_pid = spawn({self, "run", "--config", (dir / "agent.toml").string()}, dir / "agent.log");
  fmt::print("  agent     reflow-agent run (log: {}), sim printer running {} jobs of 1 s\n\n",
             (dir / "agent.log").string(), jobs);

  const std::int64_t expected = 3 * static_cast<std::int64_t>(jobs);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30 + 3 * jobs);
  std::optional<nlohmann::ordered_json> status;
  bool done = false;
  while (!done && std::chrono::steady_clock::now() < deadline) {
    mqtt::const_message_ptr msg;
    if (client.try_consume_message_for(&msg, std::chrono::milliseconds(200)) && msg) {
      std::string ack = receiver.handle(msg->get_payload_str());
      if (!ack.empty()) {
        const std::string device = msg->get_topic().substr(
            k_prefix.size() + 1, msg->get_topic().rfind('/') - k_prefix.size() - 1);
        client.publish(fmt::format("{}/{}/ack", k_prefix, device), ack, 1, true);
      }
    }
    if (receiver.verified >= static_cast<std::uint64_t>(expected)) {
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
  }
  const bool agent_clean = agent_pid > 0 && stop_process(agent_pid, SIGTERM);
  agent_pid = -1;
  try {
    client.disconnect()->wait();
  } catch (const mqtt::exception&) {
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  fmt::print(
      "\nsummary: {} of {} events received and verified (Ed25519 JWS, kid, schema, chain), "
      "{} duplicates, {} rejected\n",
      receiver.verified, expected, receiver.duplicates, receiver.rejected);
  if (status)
    fmt::print(
        "         agent outbox: last seq {}, acked {}, backlog {}; agent stopped {}; {:.1f} s\n",
        (*status)["last_seq"].dump(), (*status)["acked_seq"].dump(),
        (*status)["backlog_events"].dump(), agent_clean ? "cleanly" : "WITH AN ERROR", seconds);
  if (done && agent_clean && receiver.rejected == 0) {
    fmt::print(
        "demo OK: every event was signed, committed, delivered, verified and acknowledged\n");
    exit_status = 0;
  } else {
    fmt::print("demo FAILED: see {} (kept)\n", (dir / "agent.log").string());
    keep = true;
  }
  cleanup();
  return exit_status;
}

}  // namespace agent::cli
