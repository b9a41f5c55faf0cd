// SPDX-License-Identifier: AGPL-3.0-or-later
#include "service_common.hpp"

#include <exception>

#include <fmt/format.h>

#include <reflow/core/mqtt_connect.hpp>

namespace ingest {
namespace {

// Paho refuses a publish when this many are waiting in its own queue, connected or not (its
// default, 100, is less than a burst of acks to many devices).
constexpr int k_max_buffered = 10'000;

}  // namespace

Status set_service_options(const IngestConfig& config, mqtt::connect_options& options,
                           bool clean_start, bool tls) {
  using agent::mqtt_connect::whole_seconds;
  options.set_mqtt_version(MQTTVERSION_5);
  options.set_clean_start(clean_start);
  options.set_keep_alive_interval(whole_seconds(config.keepalive));
  options.set_connect_timeout(whole_seconds(config.connect_timeout));
  options.set_automatic_reconnect(false);
  return refresh_credentials(config, options, tls);
}

Status refresh_credentials(const IngestConfig& config, mqtt::connect_options& options, bool tls) {
  return agent::mqtt_connect::set_credentials(options, agent::mqtt_connect::credentials_of(config),
                                              tls, "MQTT");
}

Result<std::unique_ptr<mqtt::async_client>> make_service_client(const IngestConfig& config,
                                                                const std::string& uri,
                                                                const std::string& client_id) {
  try {
    return std::make_unique<mqtt::async_client>(uri, client_id,
                                                mqtt::create_options(MQTTVERSION_5, k_max_buffered),
                                                static_cast<mqtt::iclient_persistence*>(nullptr));
  } catch (const std::exception& e) {
    return agent::fail(agent::ErrorCode::invalid_config,
                       fmt::format("mqtt.url \"{}\": the MQTT client rejected it (client id "
                                   "\"{}\"): {}",
                                   config.url, client_id, e.what()));
  }
}

void FaultBoard::set(IngestCounters& counters, std::string_view piece, std::string message) {
  auto it = m_current.find(piece);
  if (it == m_current.end()) it = m_current.emplace(std::string(piece), Fault{}).first;
  it->second = Fault{++m_next, std::move(message)};
  show(counters);
}

void FaultBoard::clear(IngestCounters& counters, std::string_view piece) {
  if (auto it = m_current.find(piece); it != m_current.end()) m_current.erase(it);
  show(counters);
}

void FaultBoard::show(IngestCounters& counters) const {
  const Fault* latest = nullptr;
  for (const auto& [piece, fault] : m_current)
    if (!latest || fault.order > latest->order) latest = &fault;
  counters.last_error = latest ? latest->message : std::string();
}

}  // namespace ingest
