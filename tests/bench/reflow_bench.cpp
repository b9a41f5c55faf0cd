// SPDX-License-Identifier: AGPL-3.0-or-later
// reflow-bench: measures the agent against the raw MQTT transport on one machine, by hand (not a
// ctest test). In one run it starts its own Mosquitto on a free loopback port, plays the community
// node (subscribes to the events, acks contiguous seqs, retained, at most ~10 times a second), and
// drives real `reflow-agent run` processes through their control socket. See README.md.
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <mqtt/async_client.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <reflow/core/env.hpp>
#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/merkle.hpp>
#include <reflow/core/signed_note.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/core/units.hpp>
#include <reflow/device/control.hpp>

#include "bench_support.hpp"

namespace {

using namespace reflow_bench;
using nlohmann::ordered_json;
constexpr std::string_view k_prefix = "reflow/v1";
constexpr std::string_view k_raw_device = "bench-raw";
constexpr auto k_ack_interval = 100ms;                 // the node acks at most ~10 times a second
constexpr std::uint64_t k_reference_fill = 1'000'000;  // the drain target is stated for this many

// ---- the events ----

// A signed envelope as the agent would make it for a late event of a long stream (7-digit seq,
// a prev hash, the control socket's source): the payload of the raw transport test.
std::string probe_envelope(const agent::DeviceKey& key) {
  agent::UlidGenerator ulids;
  const std::int64_t now = agent::Env::real().now_unix_ms();
  agent::EventStamp stamp;
  stamp.id = ulids.next(now);
  stamp.device = std::string(k_raw_device);
  stamp.stream = ulids.next(now);
  stamp.seq = 1'000'000;
  stamp.prev = agent::sha256_b64url("previous signing input");
  stamp.recorded_unix_ms = now;
  stamp.clock = agent::ClockSync::synced;
  EventMaker maker;
  const std::string payload = agent::make_event_payload(stamp, maker.fields(123456),
                                                        agent::EventSource{"emit", "control", ""});
  return agent::jws_sign(key, agent::jws_protected_header_b64(key.public_jwk().kid), payload)
      .to_envelope();
}

// ---- the node ----

// Picks a few top-level members out of a JSON object and stops as soon as it has them all, so the
// node does not build a whole document for each envelope (it shares two cores with the agent).
class TopLevelFields final : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit TopLevelFields(std::initializer_list<std::string_view> wanted) : m_wanted(wanted) {}

  bool complete() const { return m_found == m_wanted.size(); }
  const std::string& text(const std::string& key) const { return m_strings.at(key); }
  std::int64_t integer(const std::string& key) const { return m_integers.at(key); }

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t v) override { return keep_integer(v); }
  bool number_unsigned(number_unsigned_t v) override {
    return keep_integer(static_cast<std::int64_t>(v));
  }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t& v) override {
    if (wanted_here()) {
      m_strings[m_key] = std::move(v);
      ++m_found;
    }
    return !complete();
  }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return ++m_depth, true; }
  bool end_object() override { return --m_depth, true; }
  bool start_array(std::size_t) override { return ++m_depth, true; }
  bool end_array() override { return --m_depth, true; }
  bool key(string_t& k) override {
    if (m_depth == 1) m_key = k;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }

 private:
  bool wanted_here() const {
    return m_depth == 1 && std::find(m_wanted.begin(), m_wanted.end(), m_key) != m_wanted.end();
  }
  bool keep_integer(std::int64_t v) {
    if (wanted_here()) {
      m_integers[m_key] = v;
      ++m_found;
    }
    return !complete();
  }

  std::vector<std::string_view> m_wanted;
  std::map<std::string, std::string> m_strings;
  std::map<std::string, std::int64_t> m_integers;
  std::string m_key;
  int m_depth = 0;
  std::size_t m_found = 0;
};

// The community node's part (PROTOCOL §5): receives envelopes, keeps per stream the highest seq
// up to which all arrived, and publishes it retained on PREFIX/DEVICE/ack at most every
// k_ack_interval. The first envelope of each stream is fully verified (signature, kid); the rest
// are only parsed, to leave the CPU to the agent. With sign_acks(), every envelope from an agent
// is also a leaf of an in-memory RFC 9162 log and each ack is signed with its inclusion proof
// (PROTOCOL §5.1), for agents that pin the node's key.
class Node {
 public:
  void sign_acks(agent::DeviceKey key) {
    std::lock_guard lock(m_mutex);
    const nlohmann::ordered_json header = {
        {"alg", "EdDSA"}, {"kid", key.public_jwk().kid}, {"typ", std::string(agent::k_ack_typ)}};
    m_ack_header_b64 = agent::base64url_encode(header.dump());
    m_signer.emplace(std::move(key));
  }

  struct Counters {
    std::uint64_t raw = 0;
    std::uint64_t received = 0;  // from agents
    std::uint64_t duplicates = 0;
    std::uint64_t rejected = 0;
    std::uint64_t bytes = 0;
    std::uint64_t acks_sent = 0;
    std::string first_rejection;
  };

  void add_device(const std::string& device, const agent::PublicJwk& jwk) {
    std::lock_guard lock(m_mutex);
    m_keys[device] = jwk;
  }

  void connect(const std::string& url) {
    disconnect();
    m_client = std::make_unique<mqtt::async_client>(url, "reflow-bench-node",
                                                    mqtt::create_options(MQTTVERSION_3_1_1));
    m_client->start_consuming();
    m_client
        ->connect(mqtt::connect_options_builder().clean_session(true).max_inflight(256).finalize())
        ->wait();
    m_client->subscribe(fmt::format("{}/+/events", k_prefix), 1)->wait();
    m_stop = false;
    m_thread = std::thread([this] { run(); });
  }

  void disconnect() {
    m_stop = true;
    if (m_thread.joinable()) m_thread.join();
    if (m_client) {
      try {
        if (m_client->is_connected()) m_client->disconnect()->wait_for(2s);
      } catch (const mqtt::exception&) {
        // The broker may be gone already; nothing to say goodbye to.
      }
      m_client.reset();
    }
  }

  ~Node() { disconnect(); }

  // The seq the node has acked (published) for `stream`, 0 if none.
  std::int64_t acked(const std::string& stream) const {
    std::lock_guard lock(m_mutex);
    auto it = m_streams.find(stream);
    return it == m_streams.end() ? 0 : it->second.ack_sent;
  }

  Counters counters() const {
    std::lock_guard lock(m_mutex);
    return m_counters;
  }

 private:
  struct StreamState {
    std::string device;
    std::int64_t contiguous = 0;
    std::set<std::int64_t> ahead;  // arrived beyond a gap
    std::int64_t ack_sent = 0;
    std::map<std::int64_t, std::uint64_t> leaves;  // seq → leaf index, with sign_acks()
  };

  void run() {
    auto next_ack = Clock::now() + k_ack_interval;
    while (!m_stop) {
      mqtt::const_message_ptr message;
      if (m_client->try_consume_message_for(&message, k_poll) && message) handle(*message);
      if (Clock::now() >= next_ack) {
        publish_acks();
        next_ack = Clock::now() + k_ack_interval;
      }
    }
  }

  void handle(const mqtt::message& message) {
    const std::string& topic = message.get_topic();
    const std::string& envelope = message.get_payload_str();
    const std::size_t device_begin = k_prefix.size() + 1;
    const std::string device = topic.substr(device_begin, topic.rfind('/') - device_begin);

    std::string stream;
    std::int64_t seq = 0;
    std::string problem;
    TopLevelFields outer({"payload"});
    nlohmann::json::sax_parse(envelope, &outer);
    if (!outer.complete()) {
      problem = "no payload in the envelope";
    } else if (auto payload = agent::base64url_decode(outer.text("payload")); !payload) {
      problem = "payload is not base64url";
    } else {
      TopLevelFields inner({"stream", "seq"});
      nlohmann::json::sax_parse(*payload, &inner);
      if (!inner.complete()) {
        problem = "payload without stream and seq";
      } else {
        stream = inner.text("stream");
        seq = inner.integer("seq");
      }
    }

    std::lock_guard lock(m_mutex);
    if (device == k_raw_device && problem.empty()) {
      ++m_counters.raw;  // the raw run sends one envelope over and over: parsed, not deduped
      return;
    }
    ++m_counters.received;
    m_counters.bytes += envelope.size();
    if (problem.empty() && !m_streams.contains(stream)) {
      auto key = m_keys.find(device);
      if (key == m_keys.end()) {
        problem = "unknown device " + device;
      } else if (auto verified = agent::jws_verify(envelope, key->second); !verified) {
        problem = verified.error().message;
      } else {
        m_streams[stream].device = device;
      }
    }
    if (!problem.empty()) {
      if (m_counters.rejected++ == 0) m_counters.first_rejection = problem;
      return;
    }
    StreamState& state = m_streams[stream];
    if (seq <= state.contiguous || !state.ahead.insert(seq).second) {
      ++m_counters.duplicates;
      return;
    }
    if (m_signer) state.leaves[seq] = m_tree.append(agent::merkle::leaf_hash(envelope));
    while (!state.ahead.empty() && *state.ahead.begin() == state.contiguous + 1) {
      state.ahead.erase(state.ahead.begin());
      ++state.contiguous;
    }
  }

  void publish_acks() {
    std::lock_guard lock(m_mutex);
    for (auto& [stream, state] : m_streams) {
      if (state.contiguous <= state.ack_sent) continue;
      nlohmann::ordered_json ack;
      ack["stream"] = stream;
      ack["seq"] = state.contiguous;
      if (m_signer) ack["signed"] = signed_statement(stream, state);
      try {
        m_client->publish(fmt::format("{}/{}/ack", k_prefix, state.device), ack.dump(), 1, true);
        state.ack_sent = state.contiguous;
        ++m_counters.acks_sent;
      } catch (const mqtt::exception&) {
        // Not connected right now: the next round sends the same ack again.
      }
    }
  }

  // The JWS of PROTOCOL §5.1 for the ack of `state.contiguous`, over the whole log so far.
  nlohmann::ordered_json signed_statement(const std::string& stream, StreamState& state) {
    const std::uint64_t size = m_tree.size();
    const std::uint64_t index = state.leaves.at(state.contiguous);
    auto proof = agent::merkle::inclusion_proof(index, size, m_tree.subtrees());
    if (!proof) throw BenchError(proof.error().message);
    auto inclusion = nlohmann::ordered_json::array();
    for (const auto& hash : *proof)
      inclusion.push_back(agent::note::base64_encode(hash));
    const nlohmann::ordered_json payload = {
        {"device", state.device},
        {"stream", stream},
        {"seq", state.contiguous},
        {"node", m_signer->public_jwk().kid},
        {"origin", "reflow-bench"},
        {"time", agent::format_rfc3339_ms(agent::Env::real().now_unix_ms())},
        {"tree_size", size},
        {"root", agent::note::base64_encode(m_tree.root(size))},
        {"leaf_index", index},
        {"inclusion", std::move(inclusion)}};
    // Leaves below the acked seq are never proven again.
    state.leaves.erase(state.leaves.begin(), state.leaves.lower_bound(state.contiguous));
    const agent::Jws jws = agent::jws_sign(*m_signer, m_ack_header_b64, payload.dump());
    return {{"protected", jws.protected_b64},
            {"payload", jws.payload_b64},
            {"signature", jws.signature_b64}};
  }

  mutable std::mutex m_mutex;
  std::optional<agent::DeviceKey> m_signer;
  std::string m_ack_header_b64;
  agent::merkle::MemoryTree m_tree;
  std::map<std::string, agent::PublicJwk> m_keys;
  std::map<std::string, StreamState> m_streams;
  Counters m_counters;
  std::unique_ptr<mqtt::async_client> m_client;
  std::atomic<bool> m_stop{false};
  std::thread m_thread;
};

// ---- step 1: the raw transport ----
double raw_transport_rate(const std::string& url, const std::string& envelope, std::uint64_t count,
                          std::size_t window_size) {
  // Paho refuses publishes beyond max_buffered_messages (default 100) still queued in the client.
  mqtt::async_client client(
      url, "reflow-bench-raw",
      mqtt::create_options(MQTTVERSION_3_1_1,
                           static_cast<int>(std::max<std::size_t>(100, 2 * window_size))));
  client
      .connect(mqtt::connect_options_builder()
                   .clean_session(true)
                   .max_inflight(static_cast<int>(window_size))
                   .finalize())
      ->wait();
  const std::string topic = fmt::format("{}/{}/events", k_prefix, k_raw_device);
  Window window(window_size);
  auto message = mqtt::make_message(topic, envelope, 1, false);
  const auto started = Clock::now();
  for (std::uint64_t i = 0; i < count; ++i) {
    if ((i & 1023) == 0) check_interrupted();
    window.acquire();
    client.publish(message, nullptr, window);
  }
  if (!window.wait_completed(count, 120s))
    throw BenchError("raw transport: PUBACKs missing after 120 s");
  const double seconds = seconds_between(started, Clock::now());
  if (window.failed() > 0)
    throw BenchError(fmt::format("raw transport: {} publishes failed", window.failed()));
  client.disconnect()->wait();
  return static_cast<double>(count) / seconds;
}

// ---- the agent ----

std::optional<ordered_json> query_status(const fs::path& socket) {
  auto fd = agent::control_connect(socket);
  if (!fd) return std::nullopt;
  const std::string request = "{\"op\":\"status\"}\n";
  std::string answer;
  if (::send(*fd, request.data(), request.size(), MSG_NOSIGNAL) ==
      static_cast<ssize_t>(request.size())) {
    char chunk[4096];
    for (ssize_t n; (n = ::recv(*fd, chunk, sizeof chunk, 0)) > 0;)
      answer.append(chunk, static_cast<std::size_t>(n));
  }
  ::close(*fd);
  auto j = ordered_json::parse(answer, nullptr, false);
  if (!j.is_object() || !j.contains("published")) return std::nullopt;
  return j;
}

std::int64_t field(const ordered_json& status, const char* name) {
  return status.at(name).get<std::int64_t>();
}

// A `reflow-agent run` child with its own data dir, config and key. The destructor kills it.
class AgentProcess : public BenchDaemon {
 public:
  struct Setup {
    fs::path binary;
    fs::path dir;  // holds agent.toml, device.key, data/, agent.log
    std::string device;
    std::string durability;
    std::string broker_url;
    std::string log_level;
    std::size_t max_inflight;
    fs::path node_jwk;  // set: the agent pins it (mqtt.node_jwk) and verifies every ack
  };

  // Writes the key and config (once per dir) and starts the daemon; returns once it answers on
  // its control socket.
  explicit AgentProcess(const Setup& setup)
      : BenchDaemon("the agent", setup.dir / "agent.log"), m_setup(setup) {
    fs::create_directories(setup.dir);
    if (!fs::exists(key_file())) {
      auto key = agent::DeviceKey::generate(key_file());
      if (!key) throw BenchError(key.error().message);
      m_jwk = key->public_jwk();
    } else {
      auto key = agent::DeviceKey::load(key_file());
      if (!key) throw BenchError(key.error().message);
      m_jwk = key->public_jwk();
    }
    std::ofstream(config_file()) << fmt::format(
        "[agent]\ndevice_id = \"{}\"\nkey_file = \"device.key\"\ndata_dir = \"data\"\n"
        "log_level = \"{}\"\n\n"
        "[mqtt]\nurl = \"{}\"\ntopic_prefix = \"{}\"\nresend_after = \"5s\"\n"
        "reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\nmax_inflight = {}\n{}\n"
        "[outbox]\nquota = \"4GiB\"\ndurability = \"{}\"\n",
        setup.device, setup.log_level, setup.broker_url, k_prefix, setup.max_inflight,
        setup.node_jwk.empty() ? std::string()
                               : fmt::format("node_jwk = \"{}\"\n", setup.node_jwk.string()),
        setup.durability);
    start({setup.binary.string(), "run", "--config", config_file().string()});
    wait_ready([&] { return query_status(socket()).has_value(); });
    record_idle_memory();
  }

  const agent::PublicJwk& jwk() const { return m_jwk; }
  fs::path socket() const { return m_setup.dir / "data" / "control.sock"; }
  fs::path outbox() const { return m_setup.dir / "data" / "outbox.db"; }

  // A status answer; throws when the daemon is gone or does not answer.
  ordered_json status() {
    sample_anon();
    for (int attempt = 0; attempt < 50; ++attempt) {
      if (!alive())
        throw BenchError(fmt::format("the agent exited; its log {}:\n{}", log_file().string(),
                                     tail_of(log_file(), 15)));
      if (auto s = query_status(socket())) return *s;
      std::this_thread::sleep_for(k_poll);
    }
    throw BenchError(fmt::format("the agent does not answer on {}", socket().string()));
  }

 private:
  fs::path key_file() const { return m_setup.dir / "device.key"; }
  fs::path config_file() const { return m_setup.dir / "agent.toml"; }

  Setup m_setup;
  agent::PublicJwk m_jwk;
};

// A producer on the control socket's emit protocol: a writer thread sends every line while a
// reader thread reads the answers, so the daemon can batch them into group commits.
class Emitter {
 public:
  struct Result {
    std::uint64_t committed = 0;
    std::uint64_t refused = 0;
    std::string first_refusal;
    Clock::time_point started;
    Clock::time_point last_answer;
  };

  Emitter(const fs::path& socket, std::uint64_t count, std::int64_t first_job)
      : m_count(count), m_first_job(first_job) {
    auto fd = agent::control_connect(socket);
    if (!fd) throw BenchError(fd.error().message);
    m_fd = *fd;
    m_result.started = Clock::now();
    m_result.last_answer = m_result.started;
    m_writer = std::thread([this] { write_lines(); });
    m_reader = std::thread([this] { read_answers(); });
  }

  ~Emitter() {
    ::shutdown(m_fd, SHUT_RDWR);
    if (m_writer.joinable()) m_writer.join();
    if (m_reader.joinable()) m_reader.join();
    ::close(m_fd);
  }
  Emitter(const Emitter&) = delete;
  Emitter& operator=(const Emitter&) = delete;

  Clock::time_point started() const { return m_result.started; }
  bool done() const { return m_done; }
  std::uint64_t answered() const { return m_answered; }

  // Waits for the last answer (or the end of the connection).
  Result finish(std::chrono::milliseconds bound) {
    if (!wait_for([&] { return m_done.load(); }, bound))
      throw BenchError(fmt::format("the daemon answered {} of {} lines within {} s",
                                   m_answered.load(), m_count, bound.count() / 1000));
    m_writer.join();
    m_reader.join();
    if (!m_write_error.empty()) throw BenchError(m_write_error);
    return m_result;
  }

 private:
  void write_lines() {
    EventMaker maker;
    std::string buffer = "{\"op\":\"emit\"}\n";
    for (std::uint64_t i = 0; i < m_count; ++i) {
      buffer += maker.fields(m_first_job + static_cast<std::int64_t>(i)).dump();
      buffer += '\n';
      if (buffer.size() >= 64 * 1024 && !send_all(buffer)) return;
    }
    if (!send_all(buffer)) return;
    ::shutdown(m_fd, SHUT_WR);  // tells the daemon this is all
  }

  bool send_all(std::string& buffer) {
    std::string_view rest = buffer;
    while (!rest.empty()) {
      ssize_t n = ::send(m_fd, rest.data(), rest.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        m_write_error =
            fmt::format("sending events to the control socket failed: {}", std::strerror(errno));
        return false;
      }
      rest.remove_prefix(static_cast<std::size_t>(n));
    }
    buffer.clear();
    return true;
  }

  void read_answers() {
    std::string pending;
    char chunk[65536];
    for (;;) {
      ssize_t n = ::recv(m_fd, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      m_result.last_answer = Clock::now();
      pending.append(chunk, static_cast<std::size_t>(n));
      std::size_t begin = 0;
      for (std::size_t end; (end = pending.find('\n', begin)) != std::string::npos;
           begin = end + 1) {
        auto answer = nlohmann::json::parse(std::string_view(pending).substr(begin, end - begin),
                                            nullptr, false);
        if (answer.is_object() && answer.contains("seq")) {
          ++m_result.committed;
        } else {
          if (m_result.refused++ == 0) m_result.first_refusal = pending.substr(begin, end - begin);
        }
        ++m_answered;
      }
      pending.erase(0, begin);
    }
    m_done = true;
  }

  int m_fd = -1;
  std::uint64_t m_count;
  std::int64_t m_first_job;
  Result m_result;
  std::string m_write_error;
  std::atomic<std::uint64_t> m_answered{0};
  std::atomic<bool> m_done{false};
  std::thread m_writer;
  std::thread m_reader;
};

// ---- steps 2 and 5: the agent end to end ----

struct EndToEnd {
  double events_per_s = 0;   // first line sent → status.published reaches N
  double commits_per_s = 0;  // first line sent → last answer
  double acked_s = 0;        // first line sent → backlog 0
  std::uint64_t peak_rss = 0;
  std::uint64_t anon_peak = 0;
  std::uint64_t idle_rss = 0, idle_anon = 0, idle_file = 0;
  SmapsRollup steady;  // at the end of the run, everything acked
  double write_bytes_per_event = 0;
  std::int64_t republished = 0;
};

EndToEnd end_to_end(AgentProcess& agent, Node& node, std::uint64_t count, std::int64_t first_job) {
  EndToEnd r;
  const ordered_json before = agent.status();
  const std::int64_t published_before = field(before, "published") - field(before, "republished");
  const std::int64_t target_seq = field(before, "last_seq") + static_cast<std::int64_t>(count);
  const std::string stream = before.at("stream").get<std::string>();
  const std::uint64_t written_before = proc_write_bytes(agent.pid());
  agent.reset_peaks();

  Emitter emitter(agent.socket(), count, first_job);
  const auto bound = std::chrono::milliseconds(120'000 + count);  // generous: 1 ms per event
  ordered_json status;
  bool published = wait_for(
      [&] {
        status = agent.status();
        return field(status, "published") - field(status, "republished") - published_before >=
               static_cast<std::int64_t>(count);
      },
      bound);
  const auto published_at = Clock::now();
  const Emitter::Result answers = emitter.finish(bound);
  if (answers.refused > 0)
    throw BenchError(fmt::format("the daemon refused {} events, the first: {}", answers.refused,
                                 answers.first_refusal));
  if (!published)
    throw BenchError(fmt::format("published {} of {} events within {} s; see {}",
                                 field(status, "published") - published_before, count,
                                 bound.count() / 1000, agent.log_file().string()));
  if (!wait_for(
          [&] {
            status = agent.status();
            return field(status, "backlog_events") == 0 && node.acked(stream) >= target_seq;
          },
          bound))
    throw BenchError(fmt::format("the backlog did not empty: {}", status.dump()));
  const auto acked_at = Clock::now();

  r.events_per_s = static_cast<double>(count) / seconds_between(answers.started, published_at);
  r.commits_per_s =
      static_cast<double>(count) / seconds_between(answers.started, answers.last_answer);
  r.acked_s = seconds_between(answers.started, acked_at);
  r.peak_rss = peak_rss(agent.pid());
  r.anon_peak = agent.anon_peak();
  r.steady = proc_smaps_rollup(agent.pid());
  r.idle_rss = agent.idle_rss;
  r.idle_anon = agent.idle_anon;
  r.idle_file = agent.idle_file;
  r.write_bytes_per_event = static_cast<double>(proc_write_bytes(agent.pid()) - written_before) /
                            static_cast<double>(count);
  r.republished = field(status, "republished") - field(before, "republished");
  return r;
}

// ---- step 5b: one event at a time ----

// What SQLite's own files say about the outbox, read from outside the daemon (the agent's
// connection settings cannot be queried from another process). Formats: sqlite.org/fileformat.html
// (database and WAL headers, big-endian) and SQLite's wal.c (the wal-index header at the start of
// the -shm file, native byte order).
struct WalSnapshot {
  std::uint32_t page_size = 0;     // database header, offset 16 (1 means 65536)
  std::uint32_t checkpoints = 0;   // WAL header, offset 12: +1 each time a checkpoint restarts it
  std::uint32_t transactions = 0;  // wal-index iChange, offset 8: +1 per write transaction
  std::uint32_t frames = 0;        // wal-index mxFrame, offset 16: valid frames in the WAL
};

std::uint32_t big_endian(const unsigned char* bytes, std::size_t size) {
  std::uint32_t value = 0;
  for (std::size_t i = 0; i < size; ++i)
    value = (value << 8) | bytes[i];
  return value;
}

// Reads `size` bytes at `offset` of `file`; throws when the file is shorter.
std::vector<unsigned char> read_bytes(const fs::path& file, std::size_t offset, std::size_t size) {
  std::ifstream in(file, std::ios::binary);
  std::vector<unsigned char> bytes(size);
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (!in)
    throw BenchError(fmt::format("cannot read {} bytes of {}", offset + size, file.string()));
  return bytes;
}

WalSnapshot wal_snapshot(const fs::path& db) {
  WalSnapshot s;
  const auto header = read_bytes(db, 16, 2);
  s.page_size = big_endian(header.data(), 2);
  if (s.page_size == 1) s.page_size = 65536;
  fs::path wal = db, shm = db;
  wal += "-wal";
  shm += "-shm";
  if (fs::exists(wal) && fs::file_size(wal) >= 32)
    s.checkpoints = big_endian(read_bytes(wal, 12, 4).data(), 4);
  const auto index = read_bytes(shm, 0, 20);
  std::memcpy(&s.transactions, index.data() + 8, 4);
  std::memcpy(&s.frames, index.data() + 16, 4);
  return s;
}

// An emit connection used one line at a time, as a device that sends an event every few minutes.
class SingleEmitter {
 public:
  explicit SingleEmitter(const fs::path& socket) {
    auto fd = agent::control_connect(socket);
    if (!fd) throw BenchError(fd.error().message);
    m_fd = *fd;
    // A daemon that stops answering ends the run instead of hanging it.
    timeval timeout{30, 0};
    ::setsockopt(m_fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    send("{\"op\":\"emit\"}\n");
  }
  ~SingleEmitter() { ::close(m_fd); }
  SingleEmitter(const SingleEmitter&) = delete;
  SingleEmitter& operator=(const SingleEmitter&) = delete;

  // Sends one event and returns its seq once the daemon answers that it is committed.
  std::int64_t submit(const ordered_json& fields) {
    send(fields.dump() + "\n");
    std::size_t end;
    while ((end = m_pending.find('\n')) == std::string::npos) {
      char chunk[4096];
      ssize_t n = ::recv(m_fd, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        throw BenchError("the daemon closed the emit connection or did not answer in 30 s");
      m_pending.append(chunk, static_cast<std::size_t>(n));
    }
    const std::string line = m_pending.substr(0, end);
    m_pending.erase(0, end + 1);
    auto answer = nlohmann::json::parse(line, nullptr, false);
    if (!answer.is_object() || !answer.contains("seq"))
      throw BenchError(fmt::format("the daemon refused an event: {}", line));
    return answer.at("seq").get<std::int64_t>();
  }

 private:
  void send(const std::string& line) {
    if (!agent::control_send_all(m_fd, line))
      throw BenchError("sending an event to the control socket failed");
  }

  int m_fd = -1;
  std::string m_pending;
};

struct OneAtATime {
  double write_bytes_per_event = 0;
  double ms_per_event = 0;            // submit → committed → acked → pruned
  double transactions_per_event = 0;  // WAL write transactions
  double frames_per_event = 0;        // WAL frames appended, over events without a WAL restart
  std::uint32_t checkpoints = 0;      // WAL restarts after an automatic checkpoint
  std::uint32_t largest_wal_frames = 0;
  std::uint32_t page_size = 0;
};

// Each event waits for its commit answer, the node's ack and the prune (status acked_seq) before
// the next is sent, so every event pays its own commit, WAL frames, share of a checkpoint and
// delete: the SD card's wear of a device that sends a few events a minute.
OneAtATime one_at_a_time(AgentProcess& agent, Node& node, std::uint64_t count,
                         std::int64_t first_job) {
  OneAtATime r;
  const std::string stream = agent.status().at("stream").get<std::string>();
  SingleEmitter emitter(agent.socket());
  EventMaker maker;
  const WalSnapshot first = wal_snapshot(agent.outbox());
  WalSnapshot last = first;
  std::uint64_t growing_frames = 0, growing_events = 0;
  const std::uint64_t written_before = proc_write_bytes(agent.pid());
  const auto started = Clock::now();
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::int64_t seq = emitter.submit(maker.fields(first_job + static_cast<std::int64_t>(i)));
    ordered_json status;
    if (!wait_for(
            [&] {
              status = agent.status();
              return node.acked(stream) >= seq && field(status, "acked_seq") >= seq;
            },
            30s))
      throw BenchError(
          fmt::format("seq {} was not acked and pruned within 30 s: {}", seq, status.dump()));
    const WalSnapshot now = wal_snapshot(agent.outbox());
    // A checkpoint that truncates the WAL (the outbox's shrink) sets mxFrame back to 0 before
    // the next write bumps the WAL header's checkpoint sequence.
    if (now.checkpoints == last.checkpoints && now.frames >= last.frames) {
      growing_frames += now.frames - last.frames;
      ++growing_events;
    }
    r.largest_wal_frames = std::max(r.largest_wal_frames, last.frames);
    last = now;
  }
  r.ms_per_event = 1000.0 * seconds_between(started, Clock::now()) / static_cast<double>(count);
  r.write_bytes_per_event = static_cast<double>(proc_write_bytes(agent.pid()) - written_before) /
                            static_cast<double>(count);
  r.transactions_per_event =
      static_cast<double>(last.transactions - first.transactions) / static_cast<double>(count);
  r.frames_per_event =
      growing_events ? static_cast<double>(growing_frames) / static_cast<double>(growing_events)
                     : 0;
  r.checkpoints = last.checkpoints - first.checkpoints;
  r.largest_wal_frames = std::max(r.largest_wal_frames, last.frames);
  r.page_size = last.page_size;
  return r;
}

// ---- step 3: fill while the broker is down, then drain ----

struct Drain {
  double fill_events_per_s = 0;
  double fill_write_bytes_per_event = 0;
  std::uint64_t fill_peak_rss = 0;
  std::uint64_t fill_anon_peak = 0;
  double drain_s = 0;
  std::uint64_t drain_peak_rss = 0;
  std::uint64_t drain_anon_peak = 0;
  SmapsRollup drained;  // right after the backlog reached 0
  std::uint64_t end_rss = 0;
  std::int64_t republished = 0;
};

Drain fill_and_drain(AgentProcess& agent, Node& node, Broker& broker, std::uint64_t count,
                     std::int64_t first_job) {
  Drain r;
  const ordered_json before = agent.status();
  if (before.at("connected").get<bool>())
    throw BenchError("the agent is connected although the broker is down");
  const std::string stream = before.at("stream").get<std::string>();
  const std::int64_t target_seq = field(before, "last_seq") + static_cast<std::int64_t>(count);

  agent.reset_peaks();
  const std::uint64_t written_before = proc_write_bytes(agent.pid());
  {
    Emitter emitter(agent.socket(), count, first_job);
    std::uint64_t reported = 0;
    // Progress every 100 000 events, so a long fill does not look hung.
    wait_for(
        [&] {
          if (emitter.answered() >= reported + 100'000) {
            reported = emitter.answered() / 100'000 * 100'000;
            fmt::print("    filled {:>8} events, {:5.1f} s\n", reported,
                       seconds_between(emitter.started(), Clock::now()));
          }
          agent.sample_anon();
          return emitter.done() || !agent.alive();
        },
        std::chrono::milliseconds(300'000 + 2 * count));
    const Emitter::Result answers = emitter.finish(10s);
    if (answers.refused > 0)
      throw BenchError(fmt::format("the daemon refused {} events during the fill, the first: {}",
                                   answers.refused, answers.first_refusal));
    r.fill_events_per_s =
        static_cast<double>(count) / seconds_between(answers.started, answers.last_answer);
  }
  r.fill_write_bytes_per_event =
      static_cast<double>(proc_write_bytes(agent.pid()) - written_before) /
      static_cast<double>(count);
  r.fill_peak_rss = peak_rss(agent.pid());
  r.fill_anon_peak = agent.anon_peak();
  const ordered_json filled = agent.status();
  fmt::print("    outbox: {} events, {} of backlog, file {}\n", field(filled, "backlog_events"),
             agent::format_size(static_cast<std::uint64_t>(field(filled, "backlog_bytes"))),
             agent::format_size(static_cast<std::uint64_t>(field(filled, "outbox_bytes"))));

  agent.reset_peaks();
  const auto started = Clock::now();
  broker.start();
  node.connect(broker.paho_url());
  ordered_json status;
  const std::int64_t first_seq = field(before, "last_seq");
  std::int64_t reported = 0;
  if (!wait_for(
          [&] {
            status = agent.status();
            if (node.acked(stream) - first_seq >= reported + 200'000) {
              reported = (node.acked(stream) - first_seq) / 200'000 * 200'000;
              fmt::print("    drained {:>8} events, {:5.1f} s\n", reported,
                         seconds_between(started, Clock::now()));
            }
            return field(status, "backlog_events") == 0 && node.acked(stream) >= target_seq;
          },
          std::chrono::milliseconds(600'000)))
    throw BenchError(fmt::format("the drain did not finish within 600 s: {}", status.dump()));
  r.drain_s = seconds_between(started, Clock::now());
  r.drain_peak_rss = peak_rss(agent.pid());
  r.drain_anon_peak = agent.anon_peak();
  r.drained = proc_smaps_rollup(agent.pid());
  r.end_rss = proc_status_bytes(agent.pid(), "VmRSS").value_or(0);
  r.republished = field(status, "republished") - field(before, "republished");
  return r;
}

struct Options {
  std::uint64_t events = 200'000;
  std::uint64_t fill = 1'000'000;
  fs::path agent_binary;
  bool keep = false;
  std::string log_level = "info";
  std::size_t window = 64;  // the agent's default mqtt.max_inflight
  // Events sent one at a time per durability (0 skips). Each adds 4 WAL frames, so 1000 events
  // span about 4 automatic checkpoints (SQLite's default wal_autocheckpoint of 1000 frames).
  std::uint64_t single = 1000;
  // The node signs its acks and the agents pin its key (PROTOCOL §5.1).
  bool signed_acks = false;
};

int run(const Options& options) {
  if (!fs::exists(options.agent_binary))
    throw BenchError(
        fmt::format("{} not found; build it (cmake --build BUILD --target reflow-agent) "
                    "or pass --agent",
                    options.agent_binary.string()));
  WorkDir dir("reflow-bench", options.keep);
  fs::create_directories(dir.path() / "broker");
  Broker broker(dir.path() / "broker");
  broker.start();
  fmt::print(
      "reflow-bench: {} events end to end, {} one at a time, {} to drain; agent {}; broker {}; "
      "work dir {}\n",
      options.events, options.single, options.fill, options.agent_binary.string(), broker.url(),
      dir.path().string());
  const std::string paho_url = broker.paho_url();

  // The payload of the raw test: a real envelope of the size the agent sends.
  auto probe_key = agent::DeviceKey::generate(dir.path() / "probe.key");
  if (!probe_key) throw BenchError(probe_key.error().message);
  const std::string envelope = probe_envelope(*probe_key);

  Node node;
  fs::path node_jwk;
  if (options.signed_acks) {
    auto node_key = agent::DeviceKey::generate(dir.path() / "node.key");
    if (!node_key) throw BenchError(node_key.error().message);
    node_jwk = dir.path() / "node.jwk";
    if (auto written = agent::write_public_jwk(node_key->public_jwk(), node_jwk); !written)
      throw BenchError(written.error().message);
    node.sign_acks(std::move(*node_key));
    fmt::print("signed acks: the node signs every ack with an inclusion proof; agents verify\n");
  }
  node.add_device(std::string(k_raw_device), probe_key->public_jwk());
  node.connect(paho_url);

  fmt::print(
      "\n[1] raw transport: Paho async, QoS 1, {} in flight, {}-byte envelopes, node subscribed\n",
      options.window, envelope.size());
  const double raw_rate = raw_transport_rate(paho_url, envelope, options.events, options.window);
  fmt::print("    {:.0f} messages/s until the last PUBACK\n", raw_rate);

  const auto setup = [&](std::string device, std::string durability) {
    return AgentProcess::Setup{
        options.agent_binary, dir.path() / device, device,         durability,
        broker.url(),         options.log_level,   options.window, node_jwk};
  };
  const AgentProcess::Setup full_setup = setup("bench-full", "full");

  fmt::print("\n[2] agent end to end, durability full: emit → sign → commit → publish → PUBACK\n");
  EndToEnd full;
  {
    AgentProcess agent(full_setup);
    node.add_device(full_setup.device, agent.jwk());
    full = end_to_end(agent, node, options.events, 1);
    fmt::print(
        "    {:.0f} events/s published ({:.2f} of raw), {:.0f} commits/s, all acked after {:.2f} "
        "s, "
        "{} republished\n",
        full.events_per_s, full.events_per_s / raw_rate, full.commits_per_s, full.acked_s,
        full.republished);
    fmt::print("    idle after start: VmRSS {} (anon {}, files {})\n", mib(agent.idle_rss),
               mib(agent.idle_anon), mib(agent.idle_file));
    fmt::print(
        "    peak RSS {} (anon sampled {}), PSS {}, private {}, {:.0f} bytes written per event\n",
        mib(full.peak_rss), mib(full.anon_peak), mib(full.steady.pss),
        mib(full.steady.private_bytes), full.write_bytes_per_event);
    agent.terminate();
  }

  fmt::print("\n[5] agent end to end, durability normal (new daemon and data dir)\n");
  EndToEnd normal;
  {
    const AgentProcess::Setup normal_setup = setup("bench-normal", "normal");
    AgentProcess agent(normal_setup);
    node.add_device(normal_setup.device, agent.jwk());
    normal = end_to_end(agent, node, options.events, 1);
    fmt::print(
        "    {:.0f} events/s published ({:.2f} of raw), {:.0f} commits/s, all acked after {:.2f} "
        "s, "
        "{} republished\n",
        normal.events_per_s, normal.events_per_s / raw_rate, normal.commits_per_s, normal.acked_s,
        normal.republished);
    fmt::print("    idle after start: VmRSS {} (anon {}, files {})\n", mib(agent.idle_rss),
               mib(agent.idle_anon), mib(agent.idle_file));
    fmt::print("    peak RSS {} (anon sampled {}), {:.0f} bytes written per event\n",
               mib(normal.peak_rss), mib(normal.anon_peak), normal.write_bytes_per_event);
    agent.terminate();
  }

  // The same durabilities again, each event alone, on fresh daemons: a small outbox, as on a
  // device whose events are acked as they come.
  std::optional<OneAtATime> single_full, single_normal;
  if (options.single > 0) {
    std::int64_t first_job = 1;
    for (auto [durability, result] :
         {std::pair{"full", &single_full}, std::pair{"normal", &single_normal}}) {
      fmt::print(
          "\n[5b] {} events one at a time, durability {}: each waits for its commit, ack and "
          "prune\n",
          options.single, durability);
      const AgentProcess::Setup single_setup =
          setup(fmt::format("bench-single-{}", durability), durability);
      AgentProcess agent(single_setup);
      node.add_device(single_setup.device, agent.jwk());
      *result = one_at_a_time(agent, node, options.single, first_job);
      first_job += static_cast<std::int64_t>(options.single);
      const OneAtATime& r = **result;
      fmt::print(
          "    {:.0f} bytes written per event, {:.0f} ms per event; WAL: {:.2f} transactions and "
          "{:.2f} frames of {} + 24 bytes per event, {} checkpoints, at most {} frames\n",
          r.write_bytes_per_event, r.ms_per_event, r.transactions_per_event, r.frames_per_event,
          r.page_size, r.checkpoints, r.largest_wal_frames);
      agent.terminate();
    }
  }

  std::optional<Drain> drain;
  if (options.fill > 0) {
    fmt::print(
        "\n[3] broker down: restart the durability-full agent, fill {} events, start the broker, "
        "drain\n",
        options.fill);
    node.disconnect();
    broker.stop();
    AgentProcess agent(full_setup);
    drain = fill_and_drain(agent, node, broker, options.fill,
                           static_cast<std::int64_t>(options.events) + 1);
    fmt::print(
        "    fill {:.0f} events/s, {:.0f} bytes written per event, peak RSS {} (anon sampled {})\n",
        drain->fill_events_per_s, drain->fill_write_bytes_per_event, mib(drain->fill_peak_rss),
        mib(drain->fill_anon_peak));
    fmt::print(
        "    drained in {:.2f} s ({:.0f} events/s), peak RSS {} (anon sampled {}), {} "
        "republished\n",
        drain->drain_s, static_cast<double>(options.fill) / drain->drain_s,
        mib(drain->drain_peak_rss), mib(drain->drain_anon_peak), drain->republished);
    agent.terminate();
  }

  fmt::print("\n[6] binary size\n");
  const fs::path stripped = dir.path() / "reflow-agent.stripped";
  fs::copy_file(options.agent_binary, stripped, fs::copy_options::overwrite_existing);
  if (run_and_wait({"strip", stripped.string()}, dir.path() / "strip.log") != 0)
    throw BenchError(fmt::format("strip {} failed; see {}", stripped.string(),
                                 (dir.path() / "strip.log").string()));
  const std::uint64_t unstripped_bytes = fs::file_size(options.agent_binary);
  const std::uint64_t stripped_bytes = fs::file_size(stripped);

  const Node::Counters seen = node.counters();
  fmt::print(
      "\nnode: {} raw messages; {} envelopes from agents (mean {:.0f} bytes), {} duplicates, {} "
      "rejected{}, {} acks sent\n",
      seen.raw, seen.received,
      seen.received ? static_cast<double>(seen.bytes) / static_cast<double>(seen.received) : 0.0,
      seen.duplicates, seen.rejected, seen.rejected ? " (first: " + seen.first_rejection + ")" : "",
      seen.acks_sent);

  std::vector<Row> rows;
  rows.push_back({"[1] raw transport (msgs/s)", fmt::format("{:.0f}", raw_rate), "reference", ""});
  rows.push_back(check("[2] end to end, full (events/s)", fmt::format("{:.0f}", full.events_per_s),
                       fmt::format(">= {:.0f}", 0.7 * raw_rate),
                       full.events_per_s >= 0.7 * raw_rate));
  rows.push_back(check("[2] ratio to raw, full",
                       fmt::format("{:.2f}", full.events_per_s / raw_rate), ">= 0.70",
                       full.events_per_s >= 0.7 * raw_rate));
  rows.push_back(
      {"[2] commit rate, full (answers/s)", fmt::format("{:.0f}", full.commits_per_s), "-", ""});
  rows.push_back(
      {"[5] end to end, normal (events/s)", fmt::format("{:.0f}", normal.events_per_s), "-", ""});
  rows.push_back(
      {"[5] ratio to raw, normal", fmt::format("{:.2f}", normal.events_per_s / raw_rate), "-", ""});
  rows.push_back({"[5] commit rate, normal (answers/s)",
                  fmt::format("{:.0f}", normal.commits_per_s), "-", ""});
  if (drain) {
    const double drain_target =
        60.0 * static_cast<double>(options.fill) / static_cast<double>(k_reference_fill);
    rows.push_back({"[3] fill, broker down (events/s)",
                    fmt::format("{:.0f}", drain->fill_events_per_s), "-", ""});
    rows.push_back(check(fmt::format("[3] drain of {} events (s)", options.fill),
                         fmt::format("{:.2f}", drain->drain_s),
                         fmt::format("< {:.1f}", drain_target), drain->drain_s < drain_target));
  }
  rows.push_back(check("[4] peak RSS, steady (full)", mib(full.peak_rss), "< 8 MiB",
                       full.peak_rss < 8ull << 20));
  rows.push_back({"[4] peak RSS, steady (normal)", mib(normal.peak_rss), "-", ""});
  rows.push_back({"[4] VmRSS idle after start", mib(full.idle_rss), "-", ""});
  rows.push_back({"[4]   of which anon / files",
                  fmt::format("{} / {}", mib(full.idle_anon), mib(full.idle_file)), "-", ""});
  rows.push_back({"[4] anon RSS peak (sampled), steady", mib(full.anon_peak), "-", ""});
  rows.push_back({"[4] PSS / private, steady (smaps_rollup)",
                  fmt::format("{} / {}", mib(full.steady.pss), mib(full.steady.private_bytes)), "-",
                  ""});
  if (drain) {
    rows.push_back({"[4] peak RSS, filling", mib(drain->fill_peak_rss), "-", ""});
    rows.push_back(check("[4] peak RSS, draining", mib(drain->drain_peak_rss), "< 16 MiB",
                         drain->drain_peak_rss < 16ull << 20));
    rows.push_back({"[4] anon RSS peak (sampled), draining", mib(drain->drain_anon_peak), "-", ""});
    rows.push_back({"[4] VmRSS at the end", mib(drain->end_rss), "-", ""});
    rows.push_back(
        {"[4] PSS / private, drained (smaps_rollup)",
         fmt::format("{} / {}", mib(drain->drained.pss), mib(drain->drained.private_bytes)), "-",
         ""});
  }
  rows.push_back({"[5] disk writes/event, full",
                  fmt::format("{:.0f} B", full.write_bytes_per_event), "-", ""});
  rows.push_back({"[5] disk writes/event, normal",
                  fmt::format("{:.0f} B", normal.write_bytes_per_event), "-", ""});
  for (auto [durability, single] :
       {std::pair{"full", &single_full}, std::pair{"normal", &single_normal}}) {
    if (!*single) continue;
    const OneAtATime& r = **single;
    rows.push_back({fmt::format("[5b] disk writes per event, one at a time, {} (B)", durability),
                    fmt::format("{:.0f}", r.write_bytes_per_event), "-", ""});
    rows.push_back({fmt::format("[5b]   WAL transactions / frames per event, {}", durability),
                    fmt::format("{:.2f} / {:.2f}", r.transactions_per_event, r.frames_per_event),
                    "-", ""});
    rows.push_back({fmt::format("[5b]   WAL frames per commit, {}", durability),
                    r.transactions_per_event > 0
                        ? fmt::format("{:.2f}", r.frames_per_event / r.transactions_per_event)
                        : std::string("-"),
                    "-", ""});
    rows.push_back(
        {fmt::format("[5b]   WAL checkpoints in {} events, {}", options.single, durability),
         fmt::format("{}", r.checkpoints), "-", ""});
  }
  if (single_full) {
    // Read from the files: the database header and the WAL's size when it was checkpointed (the
    // agent's wal_autocheckpoint, in frames, plus the transaction that crossed it).
    rows.push_back(
        {"[5b] outbox page size (B)", fmt::format("{}", single_full->page_size), "-", ""});
    rows.push_back({"[5b] largest WAL, ~wal_autocheckpoint (frames)",
                    fmt::format("{}", single_full->largest_wal_frames), "-", ""});
  }
  if (drain)
    rows.push_back({"[3] disk writes/event, fill (full)",
                    fmt::format("{:.0f} B", drain->fill_write_bytes_per_event), "-", ""});
  rows.push_back({"[6] reflow-agent stripped",
                  fmt::format("{} B ({})", stripped_bytes, mib(stripped_bytes)), "-", ""});
  rows.push_back({"[6] reflow-agent unstripped",
                  fmt::format("{} B ({})", unstripped_bytes, mib(unstripped_bytes)), "-", ""});
  rows.push_back({"envelope size (bytes)", fmt::format("{}", envelope.size()), "-", ""});
  print_table(rows);

  node.disconnect();
  const bool missed =
      std::any_of(rows.begin(), rows.end(), [](const Row& r) { return r.verdict == "MISS"; });
  fmt::print("\n{}\n",
             missed ? "reflow-bench: some targets MISSED" : "reflow-bench: all targets PASS");
  return missed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  options.agent_binary = self_directory() / "reflow-agent";
  CLI::App app{
      "reflow-bench: throughput, drain time, memory, disk writes and size of reflow-agent "
      "against a local Mosquitto (see tests/bench/README.md)"};
  app.add_option("--events", options.events, "Events for the raw and end-to-end runs")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--fill", options.fill,
                 "Events to fill while the broker is down, then drain (0 skips)")
      ->capture_default_str();
  app.add_option("--single", options.single,
                 "Events sent one at a time (each waits for its ack and prune) per durability, "
                 "for the disk writes of a lone event (0 skips)")
      ->capture_default_str();
  app.add_option("--agent", options.agent_binary, "The reflow-agent binary")->capture_default_str();
  app.add_flag("--keep", options.keep, "Keep the work directory (configs, logs, outboxes)");
  app.add_flag("--signed-acks", options.signed_acks,
               "The node signs its acks with inclusion proofs and the agents verify them "
               "(mqtt.node_jwk, PROTOCOL 5.1)");
  app.add_option("--log-level", options.log_level,
                 "The agents' log_level (debug shows each commit)")
      ->capture_default_str()
      ->check(CLI::IsMember({"debug", "info", "warning", "error"}));
  app.add_option("--window", options.window,
                 "Publishes awaiting PUBACK: the raw client's window and the agents' "
                 "mqtt.max_inflight")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  CLI11_PARSE(app, argc, argv);
  install_signal_handlers();

  try {
    return run(options);
  } catch (const std::exception& e) {
    fmt::print(stderr, "reflow-bench: {}\n", e.what());
    return 2;
  }
}
