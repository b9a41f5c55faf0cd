// SPDX-License-Identifier: AGPL-3.0-or-later
// reflow-ingest-bench: measures the node's `reflow-ingest run` on one machine, by hand (not a
// ctest test). It starts its own Mosquitto on a free loopback port, registers many simulated
// devices in a fresh store, pre-signs their event streams, starts the real daemon and floods it
// through several Paho publishers; completion is counted by the retained acks. See README.md.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <mqtt/async_client.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <reflow/core/env.hpp>
#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/node/store.hpp>

#include "bench_support.hpp"

namespace {

using namespace reflow_bench;
using nlohmann::ordered_json;

constexpr std::string_view k_prefix = "reflow/v1";
// One agent end to end, durability full, on the reference machine (tests/bench/README.md): the
// node is sized by how many such agents it can take at full speed.
constexpr double k_agent_events_per_s = 14'000;
constexpr auto k_progress_every = 5s;
// No ack covering a new event for this long while events are outstanding: the ingest is stuck,
// not slow (it acks after each stored batch; even a batch of 100 000 on a busy machine takes less).
constexpr auto k_stall = 60s;

// Set when the run is abandoned, so that every publisher thread ends.
std::atomic<bool> g_stop_publishing{false};

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// ---- the devices ----

// One simulated device: its registered key's stream of pre-signed envelopes, ready to publish,
// and when each was handed to the publisher (steady ns; 0 = not yet), written by one publisher
// thread and read by the ack callback.
struct Device {
  std::string id;
  std::string stream;
  std::vector<mqtt::message_ptr> messages;  // seq s at index s − 1
  std::unique_ptr<std::atomic<std::int64_t>[]> published_ns;
};

// Generates a key per device, registers it in the store the daemon will open, and signs each
// device's chain of `per_device` events (seq 1…M, `prev` linked) as the agent would.
std::vector<Device> make_devices(const fs::path& key_dir, ingest::Store& store, std::uint32_t count,
                                 std::uint32_t per_device) {
  fs::create_directories(key_dir);
  // Every device records seq s at the same time, one millisecond after seq s − 1, ending now:
  // like devices with synced clocks emitting side by side, in the order the run publishes them.
  // (One `recorded` per device for all its events would scatter the node's time-ordered indexes
  // across the devices, which no real fleet does, and inflate the disk writes measured.)
  const std::int64_t first_recorded_ms =
      agent::Env::real().now_unix_ms() - static_cast<std::int64_t>(per_device);
  agent::UlidGenerator ulids;
  EventMaker maker;
  const agent::EventSource source{"sim", "printer", ""};
  std::vector<Device> devices;
  devices.reserve(count);
  const auto started = Clock::now();
  for (std::uint32_t d = 0; d < count; ++d) {
    check_interrupted();
    Device device;
    device.id = fmt::format("bench-{:04}", d);
    auto key = agent::DeviceKey::generate(key_dir / (device.id + ".key"));
    if (!key) throw BenchError(key.error().message);
    const std::int64_t now = agent::Env::real().now_unix_ms();
    if (auto added = store.add_device(device.id, key->public_jwk(), now); !added)
      throw BenchError(fmt::format("registering {}: {}", device.id, added.error().message));
    device.stream = ulids.next(now);
    const std::string header = agent::jws_protected_header_b64(key->public_jwk().kid);
    const std::string topic = fmt::format("{}/{}/events", k_prefix, device.id);
    device.messages.reserve(per_device);
    device.published_ns = std::make_unique<std::atomic<std::int64_t>[]>(per_device);
    std::string prev;
    for (std::uint32_t s = 1; s <= per_device; ++s) {
      agent::EventStamp stamp;
      stamp.id = ulids.next(now);
      stamp.device = device.id;
      stamp.stream = device.stream;
      stamp.seq = s;
      stamp.prev = prev;
      stamp.recorded_unix_ms = first_recorded_ms + static_cast<std::int64_t>(s - 1);
      stamp.clock = agent::ClockSync::synced;
      const std::int64_t job = static_cast<std::int64_t>(d) * per_device + s;
      const std::string payload = agent::make_event_payload(stamp, maker.fields(job), source);
      const agent::Jws jws = agent::jws_sign(*key, header, payload);
      prev = agent::sha256_b64url(jws.signing_input());
      device.messages.push_back(mqtt::make_message(topic, jws.to_envelope(), 1, false));
      device.published_ns[s - 1].store(0, std::memory_order_relaxed);
    }
    devices.push_back(std::move(device));
  }
  fmt::print("    {} devices registered, {} envelopes signed in {:.1f} s (not measured)\n", count,
             static_cast<std::uint64_t>(count) * per_device,
             seconds_between(started, Clock::now()));
  return devices;
}

// ---- the ingest daemon ----

// A `reflow-ingest run` child on the benchmark's store. The destructor kills it.
class IngestProcess : public BenchDaemon {
 public:
  struct Setup {
    fs::path binary;
    fs::path dir;  // holds ingest.toml, ingest.log and data/ (ingest.db)
    std::string broker_url;
    std::string log_level;
    std::uint32_t max_batch = 0;  // 0: the daemon's default
    std::string log_name = "ingest.log";
    bool signed_acks = false;  // the node has a key (`key init`): signed acks and checkpoints
  };

  // Writes the config and starts the daemon; returns once it logged "ready" (subscribed).
  explicit IngestProcess(const Setup& setup)
      : BenchDaemon("reflow-ingest", setup.dir / setup.log_name), m_setup(setup) {
    std::string config = fmt::format("[ingest]\ndata_dir = \"{}\"\nlog_level = \"{}\"\n",
                                     data_dir().string(), setup.log_level);
    if (setup.max_batch > 0) config += fmt::format("max_batch = {}\n", setup.max_batch);
    config += fmt::format(
        "\n[mqtt]\nurl = \"{}\"\ntopic_prefix = \"{}\"\nclient_id = \"reflow-ingest-bench\"\n"
        "reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n",
        setup.broker_url, k_prefix);
    std::ofstream(config_file()) << config;
    if (setup.signed_acks && !fs::exists(data_dir() / "node.key") &&
        run_and_wait({setup.binary.string(), "key", "init", "--config", config_file().string()},
                     setup.dir / "key-init.log") != 0)
      throw BenchError("reflow-ingest key init failed:\n" + tail_of(setup.dir / "key-init.log", 5));
    start({setup.binary.string(), "run", "--config", config_file().string()});
    wait_ready([&] { return log_has("ready"); });
    record_idle_memory();
  }

  fs::path data_dir() const { return m_setup.dir / "data"; }
  fs::path config_file() const { return m_setup.dir / "ingest.toml"; }

  // Throws with the log's tail when the daemon is gone.
  void require_alive() {
    if (!alive())
      throw BenchError(fmt::format("reflow-ingest exited; its log {}:\n{}", log_file().string(),
                                   tail_of(log_file(), 15)));
  }

  // utime + stime of /proc/PID/stat (fields 14 and 15, after the parenthesised command), in s.
  double cpu_seconds() const {
    std::ifstream in(fmt::format("/proc/{}/stat", pid()));
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto close = text.rfind(')');
    if (close == std::string::npos) throw BenchError("cannot read /proc/PID/stat of the ingest");
    std::istringstream fields(text.substr(close + 2));
    std::string skip;
    for (int i = 3; i < 14; ++i)
      fields >> skip;
    double utime = 0, stime = 0;
    fields >> utime >> stime;
    return (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }

  // Time its threads were runnable but waiting for a CPU (second field of each
  // /proc/PID/task/TID/schedstat, ns), in s: what other processes on the machine cost the figures.
  double run_delay_seconds() const {
    std::uint64_t ns = 0;
    std::error_code ec;
    for (const auto& task : fs::directory_iterator(fmt::format("/proc/{}/task", pid()), ec)) {
      std::ifstream in(task.path() / "schedstat");
      std::uint64_t on_cpu = 0, waiting = 0;
      if (in >> on_cpu >> waiting) ns += waiting;
    }
    return static_cast<double>(ns) / 1e9;
  }

  // The first log line containing `text`, or nullopt.
  std::optional<std::string> log_line(std::string_view text) const {
    std::ifstream in(log_file());
    for (std::string line; std::getline(in, line);)
      if (line.find(text) != std::string::npos) return line;
    return std::nullopt;
  }
  bool log_has(std::string_view text) const { return log_line(text).has_value(); }

 private:
  Setup m_setup;
};

// ---- the acks ----

// Subscribes to PREFIX/+/ack and turns each ack into the latencies of the events it newly covers:
// ack arrival − publish of each seq between the previous ack and this one (PROTOCOL §5: an ack
// covers every seq up to its own).
class AckWatcher {
 public:
  struct Summary {
    std::uint64_t acks = 0;
    std::uint64_t ack_bytes = 0;       // payload bytes of all acks
    std::uint64_t covered = 0;         // events acked
    std::uint32_t devices_done = 0;    // acked at M
    std::uint64_t foreign = 0;         // wrong stream, unknown device or not JSON
    std::uint64_t before_publish = 0;  // an ack for a seq not published yet: a bug somewhere
    std::int64_t last_done_ns = 0;     // when the last device reached M
  };

  AckWatcher(std::vector<Device>& devices, std::uint32_t per_device)
      : m_devices(devices), m_per_device(per_device), m_acked(devices.size(), 0) {
    for (std::size_t i = 0; i < devices.size(); ++i)
      m_index[devices[i].id] = i;
    m_latencies_ms.reserve(devices.size() * per_device);
  }
  ~AckWatcher() {
    if (!m_client) return;
    try {
      if (m_client->is_connected()) m_client->disconnect()->wait_for(2s);
    } catch (const mqtt::exception&) {
      // The broker may be gone already.
    }
  }
  AckWatcher(const AckWatcher&) = delete;
  AckWatcher& operator=(const AckWatcher&) = delete;

  void connect(const std::string& url) {
    m_client = std::make_unique<mqtt::async_client>(url, "reflow-ingest-bench-watcher",
                                                    mqtt::create_options(MQTTVERSION_3_1_1));
    m_client->set_message_callback([this](mqtt::const_message_ptr m) { on_message(*m); });
    m_client->connect(mqtt::connect_options_builder().clean_session(true).finalize())->wait();
    m_client->subscribe(fmt::format("{}/+/ack", k_prefix), 1)->wait();
  }

  Summary summary() const {
    std::lock_guard lock(m_mutex);
    return m_summary;
  }
  // Sorted latencies in ms; call once everything is acked.
  std::vector<double> latencies_ms() const {
    std::lock_guard lock(m_mutex);
    std::vector<double> sorted = m_latencies_ms;
    std::sort(sorted.begin(), sorted.end());
    return sorted;
  }

 private:
  void on_message(const mqtt::message& message) {
    const std::int64_t now = steady_ns();
    const std::string& topic = message.get_topic();
    const std::size_t begin = k_prefix.size() + 1;
    const std::size_t end = topic.rfind('/');
    const std::string device = end > begin ? topic.substr(begin, end - begin) : std::string();
    const auto ack = nlohmann::json::parse(message.get_payload_str(), nullptr, false);

    std::lock_guard lock(m_mutex);
    ++m_summary.acks;
    m_summary.ack_bytes += message.get_payload().size();
    auto found = m_index.find(device);
    if (found == m_index.end() || !ack.is_object() || !ack.contains("stream") ||
        !ack.contains("seq") || !ack["stream"].is_string() || !ack["seq"].is_number_integer() ||
        ack["stream"].get<std::string>() != m_devices[found->second].stream) {
      ++m_summary.foreign;
      return;
    }
    const std::size_t d = found->second;
    const std::int64_t seq = std::min<std::int64_t>(ack["seq"].get<std::int64_t>(), m_per_device);
    const Device& dev = m_devices[d];
    for (std::int64_t s = m_acked[d] + 1; s <= seq; ++s) {
      const std::int64_t published = dev.published_ns[s - 1].load(std::memory_order_acquire);
      if (published == 0) {
        ++m_summary.before_publish;
        continue;
      }
      m_latencies_ms.push_back(static_cast<double>(now - published) / 1e6);
      ++m_summary.covered;
    }
    if (seq > m_acked[d]) {
      m_acked[d] = seq;
      if (seq == static_cast<std::int64_t>(m_per_device)) {
        ++m_summary.devices_done;
        m_summary.last_done_ns = now;
      }
    }
  }

  std::vector<Device>& m_devices;
  std::int64_t m_per_device;
  std::map<std::string, std::size_t> m_index;
  mutable std::mutex m_mutex;
  std::vector<std::int64_t> m_acked;  // per device, highest seq acked so far
  std::vector<double> m_latencies_ms;
  Summary m_summary;
  std::unique_ptr<mqtt::async_client> m_client;
};

// ---- the publishers ----

// One Paho client that publishes, QoS 1, the events of its share of the devices, seq by seq
// across devices (every device sends its seq 1, then its seq 2 …), keeping `window` publishes
// awaiting PUBACK; paced to `rate` events/s when rate > 0.
class Publisher {
 public:
  Publisher(const std::string& url, int number, std::size_t window)
      : m_client(url, fmt::format("reflow-ingest-bench-pub-{}", number),
                 // Paho refuses publishes beyond max_buffered_messages still queued in the client.
                 mqtt::create_options(MQTTVERSION_3_1_1,
                                      static_cast<int>(std::max<std::size_t>(100, 2 * window)))),
        m_window(window) {
    m_client
        .connect(mqtt::connect_options_builder()
                     .clean_session(true)
                     .max_inflight(static_cast<int>(window))
                     .finalize())
        ->wait();
  }
  ~Publisher() {
    if (m_thread.joinable()) m_thread.join();
    try {
      if (m_client.is_connected()) m_client.disconnect()->wait_for(2s);
    } catch (const mqtt::exception&) {
      // The broker may be gone already.
    }
  }
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  void add(Device& device) { m_devices.push_back(&device); }

  // Starts publishing once `go` opens.
  void start(std::latch& go, std::uint32_t per_device, double rate,
             std::atomic<std::uint64_t>& published) {
    m_thread = std::thread([this, &go, per_device, rate, &published] {
      try {
        go.wait();
        const auto started = Clock::now();
        std::uint64_t n = 0;
        for (std::uint32_t s = 1; s <= per_device; ++s) {
          for (Device* device : m_devices) {
            if (g_stop_publishing) return;
            if (rate > 0)
              std::this_thread::sleep_until(
                  started + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(static_cast<double>(n) / rate)));
            m_window.acquire();
            device->published_ns[s - 1].store(steady_ns(), std::memory_order_release);
            m_client.publish(device->messages[s - 1], nullptr, m_window);
            ++n;
            published.fetch_add(1, std::memory_order_relaxed);
          }
        }
        m_finished_at = Clock::now();
      } catch (const std::exception& e) {
        std::lock_guard lock(m_error_mutex);
        m_error = e.what();
      }
    });
  }

  // Joins the thread and waits for the last PUBACK; throws on a failed publish.
  void finish(std::chrono::milliseconds bound) {
    if (m_thread.joinable()) m_thread.join();
    {
      std::lock_guard lock(m_error_mutex);
      if (!m_error.empty()) throw BenchError(fmt::format("publishing failed: {}", m_error));
    }
    std::uint64_t count = 0;
    for (const Device* device : m_devices)
      count += device->messages.size();
    if (!m_window.wait_completed(count, bound))
      throw BenchError(fmt::format("PUBACKs missing after {} s", bound.count() / 1000));
    if (m_window.failed() > 0)
      throw BenchError(fmt::format("{} publishes failed", m_window.failed()));
  }

  // When the last publish was handed to Paho; valid after finish().
  Clock::time_point finished_at() const { return m_finished_at; }

 private:
  mqtt::async_client m_client;
  Window m_window;
  std::vector<Device*> m_devices;
  std::thread m_thread;
  Clock::time_point m_finished_at;
  std::mutex m_error_mutex;
  std::string m_error;
};

// ---- after the run ----

// Totals of `reflow-ingest stats --json` (one object per device and line).
struct StoreTotals {
  std::int64_t events = 0;
  std::int64_t gaps = 0;
  std::int64_t rejections = 0;
  std::int64_t broken_chains = 0;
};

StoreTotals store_totals(const fs::path& binary, const fs::path& config, const fs::path& dir) {
  const fs::path out = dir / "stats.jsonl";
  if (run_and_wait({binary.string(), "stats", "--json", "--config", config.string()}, out) != 0)
    throw BenchError(fmt::format("reflow-ingest stats failed; see {}", out.string()));
  StoreTotals totals;
  std::ifstream in(out);
  for (std::string line; std::getline(in, line);) {
    auto device = nlohmann::json::parse(line, nullptr, false);
    if (!device.is_object()) throw BenchError(fmt::format("stats printed \"{}\"", line));
    totals.events += device.value("events", std::int64_t{0});
    totals.gaps += device.value("gaps", std::int64_t{0});
    if (device.value("chain", std::string()) != "intact") ++totals.broken_chains;
    const nlohmann::json rejections = device.value("rejections", nlohmann::json::object());
    for (const auto& [reason, count] : rejections.items())
      totals.rejections += count.get<std::int64_t>();
  }
  return totals;
}

// The count after `label` (e.g. "duplicates ") in the daemon's "stopped: …" line; -1 if absent.
std::int64_t count_in(const std::string& line, std::string_view label) {
  const auto at = line.find(label);
  if (at == std::string::npos) return -1;
  return std::strtoll(line.c_str() + at + label.size(), nullptr, 10);
}

// Nearest-rank percentile of sorted values.
double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * sorted.size()));
  return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

// ---- the run ----

struct Options {
  std::uint32_t devices = 200;
  std::uint32_t events_per_device = 500;
  int publishers = 4;
  std::size_t window = 64;  // the agent's default mqtt.max_inflight
  double rate = 0;          // events/s over all publishers; 0 = as fast as the broker takes them
  std::uint32_t max_batch = 0;
  fs::path ingest_binary;
  bool backlog = false;  // publish everything while the ingest is stopped, then start it
  bool keep = false;
  bool signed_acks = false;
  std::string log_level = "info";
};

int run(const Options& options) {
  if (!fs::exists(options.ingest_binary))
    throw BenchError(
        fmt::format("{} not found; build it (cmake --build BUILD --target reflow-ingest) "
                    "or pass --ingest",
                    options.ingest_binary.string()));
  const std::uint64_t total =
      static_cast<std::uint64_t>(options.devices) * options.events_per_device;
  WorkDir dir("reflow-ingest-bench", options.keep);
  fs::create_directories(dir.path() / "broker");
  fs::create_directories(dir.path() / "ingest" / "data");
  Broker broker(dir.path() / "broker");
  broker.start();
  fmt::print(
      "reflow-ingest-bench: {} devices × {} events = {} events, {} publishers ({} in flight "
      "each), {}; ingest {}; broker {}; work dir {}\n",
      options.devices, options.events_per_device, total, options.publishers, options.window,
      options.rate > 0 ? fmt::format("paced to {:.0f} events/s", options.rate) : "unpaced",
      options.ingest_binary.string(), broker.url(), dir.path().string());

  fmt::print("\n[0] keys, registry and envelopes\n");
  std::vector<Device> devices;
  {
    auto store = ingest::open_sqlite_store(dir.path() / "ingest" / "data" / "ingest.db");
    if (!store) throw BenchError(store.error().message);
    devices =
        make_devices(dir.path() / "keys", **store, options.devices, options.events_per_device);
  }  // closed before the daemon opens it
  std::uint64_t envelope_bytes = 0;
  for (const Device& d : devices)
    for (const auto& m : d.messages)
      envelope_bytes += m->get_payload().size();

  IngestProcess::Setup setup{options.ingest_binary, dir.path() / "ingest", broker.url(),
                             options.log_level, options.max_batch};
  setup.signed_acks = options.signed_acks;
  // Live: started now, measured while the publishers publish. Backlog: a first run only
  // subscribes (the broker keeps its session, session_expiry) and stops; the broker then queues
  // every event for it, and the measured run starts once all are queued.
  std::optional<IngestProcess> ingest;
  std::uint64_t idle_rss = 0, idle_anon = 0, idle_file = 0;
  {
    IngestProcess::Setup first = setup;
    if (options.backlog) first.log_name = "ingest-session.log";
    ingest.emplace(first);
    idle_rss = ingest->idle_rss;
    idle_anon = ingest->idle_anon;
    idle_file = ingest->idle_file;
    fmt::print("    reflow-ingest ready: VmRSS {} (anon {}, files {})\n", mib(idle_rss),
               mib(idle_anon), mib(idle_file));
    if (options.backlog) {
      ingest->terminate();
      ingest.reset();
      fmt::print("    stopped it: the broker keeps its session and queues the events for it\n");
    }
  }

  AckWatcher acks(devices, options.events_per_device);
  acks.connect(broker.paho_url());
  std::vector<std::unique_ptr<Publisher>> publishers;
  for (int p = 0; p < options.publishers; ++p)
    publishers.push_back(std::make_unique<Publisher>(broker.paho_url(), p, options.window));
  for (std::size_t d = 0; d < devices.size(); ++d)
    publishers[d % publishers.size()]->add(devices[d]);

  std::atomic<std::uint64_t> published{0};
  std::latch go(1);
  for (auto& p : publishers)
    p->start(go, options.events_per_device, options.rate / options.publishers, published);
  Clock::time_point last_publish = Clock::now();
  if (options.backlog) {
    fmt::print("\n[1a] publish everything, QoS 1, while reflow-ingest is stopped\n");
    const auto publish_start = Clock::now();
    go.count_down();
    for (auto& p : publishers) {
      p->finish(std::chrono::milliseconds(120'000 + 2 * total));
      last_publish = std::max(last_publish, p->finished_at());
    }
    fmt::print("    {} events queued at the broker in {:.2f} s\n", total,
               seconds_between(publish_start, last_publish));
    fmt::print("\n[1b] start reflow-ingest; wait until every device is acked at seq {}\n",
               options.events_per_device);
  } else {
    fmt::print("\n[1] publish everything, QoS 1; wait until every device is acked at seq {}\n",
               options.events_per_device);
  }
  // Backlog: the whole life of the measured process counts, from its start.
  double cpu_before = 0, run_delay_before = 0;
  std::uint64_t written_before = 0;
  if (!options.backlog) {
    cpu_before = ingest->cpu_seconds();
    run_delay_before = ingest->run_delay_seconds();
    written_before = proc_write_bytes(ingest->pid());
    ingest->reset_peaks();
  }
  const std::int64_t started_ns = steady_ns();
  const auto started = Clock::now();
  if (options.backlog)
    ingest.emplace(setup);
  else
    go.count_down();

  const auto bound = std::chrono::milliseconds(120'000 + 2 * total);  // generous: 2 ms per event
  auto next_progress = started + k_progress_every;
  std::uint64_t covered_before = 0;
  auto last_ack_progress = started;
  const bool done = [&] {
    try {
      return wait_for(
          [&] {
            ingest->require_alive();
            ingest->sample_anon();
            const AckWatcher::Summary s = acks.summary();
            if (Clock::now() >= next_progress) {
              fmt::print("    {:5.1f} s: published {:>8}, acked {:>8}, devices done {:>5}\n",
                         seconds_between(started, Clock::now()), published.load(), s.covered,
                         s.devices_done);
              next_progress += k_progress_every;
            }
            if (s.covered != covered_before) {
              covered_before = s.covered;
              last_ack_progress = Clock::now();
            } else if (Clock::now() - last_ack_progress >= k_stall) {
              throw BenchError(fmt::format(
                  "stalled: no new event acked for {} s ({} of {} events published, {} acked, "
                  "{} of {} devices acked at seq {}) although reflow-ingest (pid {}) still runs; "
                  "`gdb -p PID -batch -ex 'thread apply all bt'` shows where it waits (--keep "
                  "keeps the work directory); its log {}:\n{}",
                  std::chrono::duration_cast<std::chrono::seconds>(k_stall).count(),
                  published.load(), total, s.covered, s.devices_done, options.devices,
                  options.events_per_device, ingest->pid(), ingest->log_file().string(),
                  tail_of(ingest->log_file(), 15)));
            }
            return s.devices_done == options.devices;
          },
          bound);
    } catch (...) {
      g_stop_publishing = true;
      throw;
    }
  }();
  if (!done) {
    g_stop_publishing = true;
    const AckWatcher::Summary s = acks.summary();
    throw BenchError(fmt::format(
        "after {} s: {} of {} events published, {} acked, {} of {} devices acked at seq {}; "
        "the ingest's log {}:\n{}",
        bound.count() / 1000, published.load(), total, s.covered, s.devices_done, options.devices,
        options.events_per_device, ingest->log_file().string(), tail_of(ingest->log_file(), 15)));
  }
  if (!options.backlog) {
    last_publish = started;
    for (auto& p : publishers) {
      p->finish(60s);
      last_publish = std::max(last_publish, p->finished_at());
    }
  }
  const double intake_rate =
      options.backlog ? 0.0 : static_cast<double>(total) / seconds_between(started, last_publish);

  const AckWatcher::Summary summary = acks.summary();
  const double seconds = static_cast<double>(summary.last_done_ns - started_ns) / 1e9;
  const double rate = static_cast<double>(total) / seconds;
  const std::uint64_t peak = peak_rss(ingest->pid());
  const std::uint64_t anon_peak = ingest->anon_peak();
  const std::uint64_t end_rss = proc_status_bytes(ingest->pid(), "VmRSS").value_or(0);
  const double cpu = ingest->cpu_seconds() - cpu_before;
  const double run_delay = ingest->run_delay_seconds() - run_delay_before;
  const double written_per_event =
      static_cast<double>(proc_write_bytes(ingest->pid()) - written_before) /
      static_cast<double>(total);
  const std::vector<double> latencies = acks.latencies_ms();

  fmt::print("    {} events verified, stored and acked in {:.2f} s: {:.0f} events/s\n", total,
             seconds, rate);
  if (!options.backlog)
    fmt::print(
        "    ack latency: median {:.1f} ms, p99 {:.1f} ms, max {:.1f} ms ({} events, {} acks)\n",
        percentile(latencies, 50), percentile(latencies, 99),
        latencies.empty() ? 0.0 : latencies.back(), latencies.size(), summary.acks);

  fmt::print("\n[2] SIGTERM, then the store's view\n");
  const double stop_s = ingest->terminate();
  const std::string stopped = ingest->log_line("stopped: stored ").value_or("");
  const StoreTotals totals =
      store_totals(options.ingest_binary, ingest->config_file(), dir.path() / "ingest");
  fmt::print("    exited {:.2f} s after SIGTERM; {}\n", stop_s,
             stopped.empty() ? "no \"stopped:\" line in its log"
                             : stopped.substr(stopped.find("stopped:")));

  std::vector<Row> rows;
  // Paced, the rate is the pace: whether the ingest keeps up with an agent is only measured
  // unpaced.
  // A backlog is drained as fast as the ingest goes, whatever pace it was published at.
  if (options.rate > 0 && !options.backlog)
    rows.push_back({"ingest rate, paced (events/s)", fmt::format("{:.0f}", rate),
                    fmt::format("{:.0f} (pace)", options.rate), ""});
  else
    rows.push_back(
        check(options.backlog ? "ingest rate, backlog (events/s)" : "ingest rate (events/s)",
              fmt::format("{:.0f}", rate), fmt::format(">= {:.0f}", k_agent_events_per_s),
              rate >= k_agent_events_per_s));
  rows.push_back(
      {"  in agents at full speed", fmt::format("{:.2f}", rate / k_agent_events_per_s), "-", ""});
  rows.push_back({"  time to the last ack (s)", fmt::format("{:.2f}", seconds), "-", ""});
  // Backlog: events were published before the ingest ran, so neither figure says anything.
  if (!options.backlog) {
    rows.push_back({"  publish rate (events/s)", fmt::format("{:.0f}", intake_rate), "-", ""});
    rows.push_back(
        {"ack latency, median (ms)", fmt::format("{:.1f}", percentile(latencies, 50)), "-", ""});
    rows.push_back(
        {"ack latency, p99 (ms)", fmt::format("{:.1f}", percentile(latencies, 99)), "-", ""});
  }
  rows.push_back({"peak RSS (VmHWM) under load", mib(peak), "-", ""});
  rows.push_back({"  anon RSS peak (sampled)", mib(anon_peak), "-", ""});
  rows.push_back({"  VmRSS idle after start", mib(idle_rss), "-", ""});
  rows.push_back(
      {"  of which anon / files", fmt::format("{} / {}", mib(idle_anon), mib(idle_file)), "-", ""});
  rows.push_back({"  VmRSS at the end", mib(end_rss), "-", ""});
  rows.push_back({"ingest CPU per event (us)", fmt::format("{:.1f}", cpu * 1e6 / total), "-", ""});
  rows.push_back({"  on CPU / waiting for a CPU (s)",
                  fmt::format("{:.2f} / {:.2f}", cpu, run_delay), "-", ""});
  rows.push_back({"disk writes per event", fmt::format("{:.0f} B", written_per_event), "-", ""});
  rows.push_back(check("stored events (stats)", fmt::format("{}", totals.events),
                       fmt::format("= {}", total),
                       totals.events == static_cast<std::int64_t>(total)));
  rows.push_back(check("rejections (stats)", fmt::format("{}", totals.rejections), "= 0",
                       totals.rejections == 0));
  rows.push_back({"gaps / broken chains (stats)",
                  fmt::format("{} / {}", totals.gaps, totals.broken_chains), "-", ""});
  const std::int64_t duplicates = count_in(stopped, "duplicates ");
  rows.push_back({"duplicates (daemon's count)",
                  duplicates < 0 ? std::string("?") : fmt::format("{}", duplicates), "-", ""});
  rows.push_back({"acks received / foreign",
                  fmt::format("{} / {}", summary.acks, summary.foreign + summary.before_publish),
                  "-", ""});
  rows.push_back({options.signed_acks ? "ack size, mean (bytes; signed)" : "ack size, mean (bytes)",
                  fmt::format("{:.0f}", summary.acks == 0 ? 0.0
                                                          : static_cast<double>(summary.ack_bytes) /
                                                                static_cast<double>(summary.acks)),
                  "-", ""});
  rows.push_back(
      {"envelope size, mean (bytes)",
       fmt::format("{:.0f}", static_cast<double>(envelope_bytes) / static_cast<double>(total)), "-",
       ""});
  print_table(rows);

  const bool missed =
      std::any_of(rows.begin(), rows.end(), [](const Row& r) { return r.verdict == "MISS"; });
  fmt::print("\n{}\n", missed ? "reflow-ingest-bench: some targets MISSED"
                              : "reflow-ingest-bench: all targets PASS");
  return missed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  options.ingest_binary = self_directory() / "reflow-ingest";
  CLI::App app{
      "reflow-ingest-bench: events/s, ack latency and memory of reflow-ingest run, fed by many "
      "simulated devices through a local Mosquitto (see tests/bench/README.md)"};
  app.add_option("--devices", options.devices, "Simulated devices, each with its own key")
      ->capture_default_str()
      ->check(CLI::Range(1, 9999));
  app.add_option("--events-per-device", options.events_per_device,
                 "Events each device sends (seq 1…M of one stream)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--publishers", options.publishers, "Paho clients publishing the devices' events")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--window", options.window, "Publishes awaiting PUBACK, per publisher")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  app.add_option("--rate", options.rate,
                 "Total events/s the publishers are paced to; 0 publishes as fast as the broker "
                 "takes them")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-batch", options.max_batch,
                 "The ingest's ingest.max_batch (0 keeps its default)")
      ->capture_default_str();
  app.add_option("--ingest", options.ingest_binary, "The reflow-ingest binary")
      ->capture_default_str();
  app.add_flag("--backlog", options.backlog,
               "Publish every event while reflow-ingest is stopped (the broker queues them in its "
               "session), then start it and measure the drain: the node's rate with no publishers "
               "sharing its CPUs");
  app.add_flag("--signed", options.signed_acks,
               "Give the node a key first (`reflow-ingest key init`): signed acks with inclusion "
               "proofs, and signed checkpoints (PROTOCOL §5.1)");
  app.add_flag("--keep", options.keep, "Keep the work directory (config, log, ingest.db, keys)");
  app.add_option("--log-level", options.log_level, "The ingest's log_level (debug logs each event)")
      ->capture_default_str()
      ->check(CLI::IsMember({"debug", "info", "warning", "error"}));
  CLI11_PARSE(app, argc, argv);
  install_signal_handlers();

  try {
    return run(options);
  } catch (const std::exception& e) {
    fmt::print(stderr, "reflow-ingest-bench: {}\n", e.what());
    return 2;
  }
}
