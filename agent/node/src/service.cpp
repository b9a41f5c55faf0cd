// SPDX-License-Identifier: AGPL-3.0-or-later
// IngestService wires its three pieces together and owns their order of start and stop:
// pipeline.cpp (the bounded queue, the worker's verification, the store thread's commits and
// ack decisions), events_connection.cpp (the Paho event loop of the events connection) and
// ack_publisher.cpp (the acks' own connection and thread).
#include <reflow/node/service.hpp>

#include <algorithm>
#include <chrono>
#include <exception>
#include <mutex>
#include <optional>

#include <fmt/format.h>

#include <reflow/core/mqtt_connect.hpp>
#include <reflow/node/node_key.hpp>

#include "ack_publisher.hpp"
#include "events_connection.hpp"
#include "pipeline.hpp"
#include "service_common.hpp"

namespace ingest {

using std::chrono::milliseconds;

struct IngestService::Impl {
  Impl(const IngestConfig& config_in, Store& store, agent::Env& env_in, agent::Logger& log_in)
      : config(config_in),
        env(env_in),
        log(log_in),
        acks(config, env, log, stats, stop_deadline),
        pipeline(config, store, env, log, stats, stop_deadline, acks),
        connection(config, env, log, stats, pipeline) {}

  Status configure() {
    auto address = agent::mqtt_connect::broker_address(config.url, config.source_file);
    if (!address) return std::unexpected(address.error());
    if (auto ok = connection.configure(*address); !ok) return ok;
    return acks.configure(*address);
  }

  // Disconnects within the stop deadline; a dead broker costs at most that deadline.
  void shutdown() {
    const auto remaining = [&] {
      return std::max(
          std::chrono::duration_cast<milliseconds>(stop_deadline.load() - env.steady_now()),
          milliseconds(0));
    };
    acks.disconnect(remaining());
    connection.disconnect(remaining());
    std::lock_guard lock(stats.mutex);
    stats.counters.connected = false;
    stats.counters.subscribed = false;
    stats.counters.acks_connected = false;
  }

  const IngestConfig config;
  agent::Env& env;
  agent::Logger& log;
  ServiceStats stats;
  // Set by stop(), read by the threads of the pieces while they run.
  StopDeadline stop_deadline{std::chrono::steady_clock::time_point::max()};
  std::optional<NodeSigner> signer;  ///< the node's key, when it has one; outlives the pipeline
  // Declared in the order they depend on each other, so that each is destroyed (and its thread
  // joined, its client gone) before what it calls into: the connection hands messages to the
  // pipeline, the pipeline hands acks to the publisher.
  AckPublisher acks;
  IngestPipeline pipeline;
  EventsConnection connection;
  bool started = false;
};

IngestService::IngestService(const IngestConfig& config, Store& store, agent::Env& env,
                             agent::Logger& log)
    : m_impl(std::make_unique<Impl>(config, store, env, log)) {}

IngestService::~IngestService() {
  stop();
}

Status IngestService::start() {
  if (m_impl->started) return {};
  if (auto ok = m_impl->configure(); !ok) return ok;
  auto signer = NodeSigner::load(m_impl->config);
  if (!signer) return std::unexpected(signer.error());
  m_impl->signer = std::move(*signer);
  if (m_impl->signer) {
    m_impl->pipeline.set_signer(&*m_impl->signer);
    m_impl->log.info(k_service_component,
                     "signing acks and the log's checkpoints with the node's key {} (log origin "
                     "{})",
                     m_impl->signer->public_jwk().kid, m_impl->signer->origin());
  } else {
    m_impl->log.info(k_service_component,
                     "the node has no key ({} does not exist): acks are not signed and no "
                     "checkpoint is published; `reflow-ingest key init` makes one",
                     m_impl->config.effective_node_key_file().string());
  }
  {
    std::lock_guard lock(m_impl->stats.mutex);
    m_impl->stats.counters.node_kid = m_impl->signer ? m_impl->signer->public_jwk().kid : "";
  }
  try {
    m_impl->acks.start();
    m_impl->pipeline.start();
    m_impl->connection.start();
  } catch (const std::exception& e) {
    m_impl->pipeline.stop();
    m_impl->acks.stop();
    return agent::fail(agent::ErrorCode::internal,
                       fmt::format("cannot start the ingest threads: {}", e.what()));
  }
  m_impl->started = true;
  m_impl->log.info(k_service_component, "receiving {} from {} into the store",
                   m_impl->connection.events_filter(), m_impl->config.url);
  return {};
}

void IngestService::stop(std::int64_t deadline_ms) {
  if (!m_impl->started) return;
  m_impl->started = false;
  m_impl->stop_deadline = m_impl->env.steady_now() + milliseconds(deadline_ms);
  // Order: no new envelopes; the worker verifies what is queued and the store thread stores it
  // and hands over its acks; the ack publisher publishes them while still connected; then the
  // connection goes.
  m_impl->pipeline.stop();
  m_impl->acks.stop();
  m_impl->connection.stop();
  m_impl->shutdown();
}

IngestCounters IngestService::counters() const {
  std::lock_guard lock(m_impl->stats.mutex);
  return m_impl->stats.counters;
}

}  // namespace ingest
