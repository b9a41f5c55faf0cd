// SPDX-License-Identifier: AGPL-3.0-or-later
#include "ack_publisher.hpp"

#include <algorithm>
#include <exception>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/audit_proofs.hpp>
#include <reflow/core/units.hpp>

namespace ingest {
namespace {

// A failed ack publish (not connected) is tried again after this, unless a newer ack of the same
// device replaced it meanwhile.
constexpr auto k_ack_retry = std::chrono::milliseconds(100);
// Acks handed to Paho and not yet confirmed by the broker, at most; more wait in the coalescing
// map. Lowered below the broker's Receive Maximum (its CONNACK; Mosquitto's max_inflight_messages,
// 20 by default): Paho holds a publish beyond that until its send thread next wakes, which only a
// new publish or a 1 s timer does, so a larger window stalled the acks a second at a time.
constexpr std::size_t k_acks_in_flight = 64;
// MQTT 5 §3.2.2.3.3: a CONNACK without Receive Maximum means 65,535.
constexpr std::size_t k_default_receive_maximum = 65'535;
// Appended to mqtt.client_id for the connection that publishes the acks.
constexpr std::string_view k_acks_client_suffix = "-acks";
// The checkpoint's topic below PREFIX (PROTOCOL §2), and its key among the devices' acks: a
// device id starts with [a-z0-9] (PROTOCOL §1), so neither can be a device's.
constexpr std::string_view k_checkpoint_topic = "_node/checkpoint";
constexpr std::string_view k_checkpoint_key = "_checkpoint";
// How long the ack publisher waits for one confirmation before it stops counting that ack.
constexpr auto k_ack_delivery_wait = std::chrono::seconds(1);

using agent::mqtt_connect::paho_error;

// The broker's Receive Maximum from a CONNACK (MQTT 5 §3.2.2.3.3): how many QoS 1 publishes it
// takes before their PUBACKs.
std::size_t receive_maximum_of(const mqtt::token& token) {
  try {
    const mqtt::connect_response response = token.get_connect_response();  // a copy, not a view
    const mqtt::properties& properties = response.get_properties();
    if (properties.contains(mqtt::property::RECEIVE_MAXIMUM))
      return mqtt::get<std::uint16_t>(properties, mqtt::property::RECEIVE_MAXIMUM);
  } catch (const std::exception&) {
    // No CONNACK properties (not an MQTT 5 answer): the protocol's default.
  }
  return k_default_receive_maximum;
}

}  // namespace

AckPublisher::AckPublisher(const IngestConfig& config, agent::Env& env, agent::Logger& log,
                           ServiceStats& stats, const StopDeadline& stop_deadline)
    : m_config(config),
      m_env(env),
      m_log(log),
      m_stats(stats),
      m_stop_deadline(stop_deadline),
      m_client_id(config.client_id + std::string(k_acks_client_suffix)),
      m_window(k_acks_in_flight) {}

AckPublisher::~AckPublisher() {
  stop();
}

Status AckPublisher::configure(const agent::mqtt_connect::BrokerAddress& address) {
  // Clean start, no session: it subscribes to nothing, and an ack lost with a connection is
  // replaced by the device's next one or republished for the agent's duplicate.
  m_tls = address.tls;
  if (auto ok = set_service_options(m_config, m_connect_options, /*clean_start=*/true, address.tls);
      !ok)
    return ok;
  auto client = make_service_client(m_config, address.paho_uri, m_client_id);
  if (!client) return std::unexpected(client.error());
  m_client = std::move(*client);
  // A lost acks connection wakes the publisher thread, which reconnects at once.
  m_client->set_connection_lost_handler([this](const std::string&) { lost(); });
  m_client->set_disconnected_handler([this](const mqtt::properties&, mqtt::ReasonCode) { lost(); });
  return {};
}

void AckPublisher::start() {
  m_thread = std::jthread([this](std::stop_token stop) { run(stop); });
}

void AckPublisher::stop() {
  if (!m_thread.joinable()) return;
  m_thread.request_stop();
  m_thread.join();
}

// The store thread never calls Paho: Paho's receiving thread may be waiting in the service's
// queue for the worker to make room, holding a lock that Paho's publish() needs. So acks go to
// their own thread, through a map that keeps only the latest ack per device.
void AckPublisher::hand(const std::string& device, std::string body) {
  PendingAck ack{fmt::format("{}/{}/ack", m_config.topic_prefix, device), std::move(body)};
  {
    std::lock_guard lock(m_out_mutex);
    m_out.insert_or_assign(device, std::move(ack));
  }
  m_out_cv.notify_one();
}

void AckPublisher::hand_checkpoint(std::string note) {
  PendingAck checkpoint{fmt::format("{}/{}", m_config.topic_prefix, k_checkpoint_topic),
                        std::move(note), /*retained=*/true, /*counted=*/false};
  {
    std::lock_guard lock(m_out_mutex);
    m_out.insert_or_assign(std::string(k_checkpoint_key), std::move(checkpoint));
  }
  m_out_cv.notify_one();
}

void AckPublisher::hand_answer(const std::string& device, std::string body) {
  // Device ids have no '/', so this key never meets a device's ack or the checkpoint's.
  PendingAck answer{
      fmt::format("{}/{}{}", m_config.topic_prefix, device, agent::audit::k_answer_suffix),
      std::move(body), /*retained=*/false, /*counted=*/false};
  {
    std::lock_guard lock(m_out_mutex);
    m_out.insert_or_assign(device + "/audit", std::move(answer));
  }
  m_out_cv.notify_one();
}

// Publishes the acks handed over until stop is requested and none is left; stop() requests it
// after the store thread has handed over its last ones, so those go out before the disconnect.
void AckPublisher::run(std::stop_token stop) {
  std::deque<mqtt::delivery_token_ptr> in_flight;
  std::string cursor;  // the device after which the next round starts, so that none starves
  for (;;) {
    // Paho queues whatever it is handed and works through a long queue slowly (while a flood
    // holds its lock, tens of thousands of stale acks would pile up there); an ack waiting in
    // m_out instead is replaced by its device's next one.
    settle(in_flight, m_window - 1, stop);
    // Connected before the first ack is due (connecting a second client takes Paho a second or
    // two), and again after a lost connection.
    if (!m_client->is_connected() && !connect(stop)) {
      if (!stop.stop_requested()) continue;  // connect() waited its backoff
      if (std::lock_guard lock(m_out_mutex); m_out.empty()) break;
      drop_unpublished("not connected");
      break;
    }
    const std::size_t window = m_window;
    std::map<std::string, PendingAck> round;
    {
      std::unique_lock lock(m_out_mutex);
      m_out_cv.wait(lock, stop, [&] { return !m_out.empty() || m_down; });
      if (m_out.empty()) {
        if (stop.stop_requested()) break;  // stopping, all handed to Paho
        continue;                          // the acks connection was lost: reconnect
      }
      auto it = m_out.upper_bound(cursor);
      while (round.size() + in_flight.size() < window && !m_out.empty()) {
        if (it == m_out.end()) it = m_out.begin();
        auto next = std::next(it);
        cursor = it->first;
        round.insert(m_out.extract(it));
        it = next;
      }
    }
    std::uint64_t published = 0;
    std::string failure;
    for (auto it = round.begin(); it != round.end();) {
      try {
        in_flight.push_back(m_client->publish(mqtt::make_message(
            it->second.topic, it->second.body, k_service_qos, it->second.retained)));
        if (it->second.counted) ++published;
        it = round.erase(it);
      } catch (const std::exception& e) {
        failure = fmt::format("publishing the ack on {} failed: {}", it->second.topic, e.what());
        ++it;
      }
    }
    if (published > 0) {
      std::lock_guard lock(m_stats.mutex);
      m_stats.counters.acks_published += published;
    }
    if (round.empty()) continue;
    const std::size_t failed = round.size();
    // Not connected: try again shortly, except where the store thread has handed over a newer
    // ack meanwhile (merge keeps that one).
    {
      std::lock_guard lock(m_out_mutex);
      m_out.merge(round);
    }
    if (!stop.stop_requested()) {
      m_log.debug(k_service_component, "{} ({} acks not published); retrying", failure, failed);
      std::unique_lock lock(m_out_mutex);
      m_out_cv.wait_for(lock, stop, k_ack_retry, [] { return false; });
      continue;
    }
    if (!m_client->is_connected() || m_env.steady_now() >= m_stop_deadline.load()) {
      drop_unpublished(failure);
      break;
    }
    std::this_thread::sleep_for(k_ack_retry);
  }
  // The last acks reach the broker before stop() disconnects, unless the deadline passes.
  settle(in_flight, 0, stop);
}

// Forgets the acks the broker has confirmed, waiting (each at most k_ack_delivery_wait, and
// when stopping only while connected and before the deadline) until at most `keep` are left.
void AckPublisher::settle(std::deque<mqtt::delivery_token_ptr>& in_flight, std::size_t keep,
                          std::stop_token stop) {
  while (!in_flight.empty()) {
    const mqtt::delivery_token_ptr& token = in_flight.front();
    if (!token->is_complete()) {
      if (in_flight.size() <= keep) return;
      if (stop.stop_requested() &&
          (!m_client->is_connected() || m_env.steady_now() >= m_stop_deadline.load())) {
        in_flight.clear();  // Paho still has them; nobody waits for them any more
        return;
      }
      try {
        token->wait_for(k_ack_delivery_wait);
      } catch (const std::exception&) {
        // Failed (connection lost): a later ack of the device replaces it, and the agent
        // republishes what it has not seen acked.
      }
    }
    in_flight.pop_front();  // confirmed, failed, or not confirmed within the wait: Paho's now
  }
}

// Runs on a Paho thread when the acks connection is lost.
void AckPublisher::lost() {
  {
    std::lock_guard lock(m_out_mutex);
    m_down = true;
  }
  m_out_cv.notify_all();
}

// Stopping: forgets the acks not handed to Paho, which the agents make up for.
void AckPublisher::drop_unpublished(std::string_view why) {
  std::size_t left = 0;
  {
    std::lock_guard lock(m_out_mutex);
    left = std::exchange(m_out, {}).size();
  }
  m_log.warning(k_service_component,
                "stopping with {} acks not published ({}); the agents keep those events and "
                "republish them",
                left, why);
}

// Connects the acks' connection (on the publisher thread): draining a backlog of 500 000 events
// on the events connection, no ack was confirmed for 25 s, so the agents would have started
// republishing. False: not connected (stop requested, or the attempt failed and its backoff has
// been waited out).
bool AckPublisher::connect(std::stop_token stop) {
  bool was_connected = false;
  {
    std::lock_guard lock(m_stats.mutex);
    was_connected = std::exchange(m_stats.counters.acks_connected, false);
  }
  if (was_connected)
    m_log.warning(k_service_component, "acks connection to {} lost; reconnecting", m_config.url);
  {
    std::lock_guard lock(m_out_mutex);
    m_down = false;  // this attempt sees the loss; a later one sets it again
  }
  std::string failure;
  mqtt::token_ptr token;
  // The password file may have changed since the last connect (a rotated password); a file that
  // became unreadable is this attempt's failure, and no probe of the broker would explain it.
  if (auto ok = refresh_credentials(m_config, m_connect_options, m_tls); !ok) {
    failure = ok.error().message;
  } else {
    try {
      token = m_client->connect(m_connect_options);
      // Paho enforces connect_timeout; the margin only bounds a missing answer.
      const auto give_up =
          std::chrono::steady_clock::now() + m_config.connect_timeout + k_service_connect_grace;
      while (!token->wait_for(k_service_max_wait)) {
        if (stop.stop_requested()) return false;
        if (std::chrono::steady_clock::now() >= give_up)
          throw std::runtime_error("no answer within mqtt.connect_timeout");
      }
      const std::size_t receive_maximum = receive_maximum_of(*token);
      // One below the Receive Maximum: a window of exactly the maximum still stalls now and then
      // (`reflow-ingest-bench --backlog`: 12 100-13 800 events/s, against 14 500-15 600 one
      // below), as if Paho completed a token before taking its publish out of its own count.
      const std::size_t window =
          std::min(k_acks_in_flight, std::max<std::size_t>(receive_maximum, 2) - 1);
      m_window = window;
      m_backoff.reset();
      m_log.info(k_service_component, "acks connection: connected to {} as {}", m_config.url,
                 m_client_id);
      m_log.debug(k_service_component,
                  "the broker's Receive Maximum is {}: at most {} acks in flight", receive_maximum,
                  window);
      std::lock_guard lock(m_stats.mutex);
      m_stats.counters.acks_connected = true;
      m_stats.counters.ack_window = window;
      m_stats.faults.clear(m_stats.counters, "acks connection");
      return true;
    } catch (const std::exception& e) {
      // A refused connect: the broker's reason, worded as for the events connection.
      failure = agent::mqtt_connect::connect_failure_cause(
          m_config.url, agent::mqtt_connect::credentials_of(m_config),
          token && token->is_complete() ? paho_error(*token) : e.what(), m_config.connect_timeout,
          stop);
    }
  }
  const auto delay = m_backoff.next();
  const auto message = fmt::format("acks connection: cannot connect to {} as {}: {}", m_config.url,
                                   m_client_id, failure);
  m_log.warning(k_service_component, "{}; retrying in {}", message, agent::format_duration(delay));
  {
    std::lock_guard lock(m_stats.mutex);
    m_stats.counters.acks_connected = false;
    m_stats.faults.set(m_stats.counters, "acks connection", message);
  }
  // Real time, like Paho's own timeouts; stop() ends the wait.
  std::unique_lock lock(m_out_mutex);
  m_out_cv.wait_for(lock, stop, delay, [] { return false; });
  return false;
}

void AckPublisher::disconnect(std::chrono::milliseconds wait) {
  if (!m_client || !m_client->is_connected()) return;
  try {
    m_client->disconnect(0)->wait_for(wait);
  } catch (const std::exception& e) {
    m_log.warning(k_service_component, "disconnecting the acks connection: {}", e.what());
  }
}

}  // namespace ingest
