// SPDX-License-Identifier: AGPL-3.0-or-later
// What the pieces of the node's service (service.cpp) share: its counters behind one mutex, the
// stop deadline, a few constants, and how its two Paho clients are made. Private to reflow_node.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include <mqtt/async_client.h>

#include <reflow/core/result.hpp>
#include <reflow/node/config.hpp>
#include <reflow/node/service.hpp>

namespace ingest {

/// The component name of every log line the service writes.
inline constexpr std::string_view k_service_component = "ingest";
/// Events are subscribed and acks published with QoS 1 (PROTOCOL §5).
inline constexpr int k_service_qos = 1;
/// Bounds one wait of a service thread, so that a clock that is not the real one (FakeEnv) is
/// looked at again within this time even when nothing else wakes the thread.
inline constexpr auto k_service_max_wait = std::chrono::milliseconds(200);
/// Paho enforces connect_timeout itself; this is only the margin before the service stops waiting
/// for an answer Paho should already have given.
inline constexpr auto k_service_connect_grace = std::chrono::seconds(5);

/// The counters of IngestService::counters(), written by every thread of the service under
/// `mutex`.
/// The current fault of each piece of the service (the events connection, the acks connection,
/// the store), shown as IngestCounters::last_error: the latest of those still current, "" when
/// none. A piece sets its fault when something fails and clears it when the same thing works
/// again (subscribed, connected, a batch stored). Used under ServiceStats::mutex.
class FaultBoard {
 public:
  void set(IngestCounters& counters, std::string_view piece, std::string message);
  void clear(IngestCounters& counters, std::string_view piece);

 private:
  void show(IngestCounters& counters) const;

  struct Fault {
    std::uint64_t order = 0;
    std::string message;
  };
  std::map<std::string, Fault, std::less<>> m_current;
  std::uint64_t m_next = 0;
};

struct ServiceStats {
  mutable std::mutex mutex;
  IngestCounters counters;
  FaultBoard faults;
};

/// When a stopping service gives up (the Env's steady clock): time_point::max() until stop()
/// sets it; from then on it bounds every retry and wait.
using StopDeadline = std::atomic<std::chrono::steady_clock::time_point>;

/// What both connections share: MQTT 5, keep alive, connect timeout and credentials from
/// `config`. The service re-establishes each connection itself, with backoff and jitter, so
/// Paho's automatic reconnect is off. Errors: invalid_config from set_credentials (a password or
/// TLS file that cannot be read, cert_file without key_file).
Status set_service_options(const IngestConfig& config, mqtt::connect_options& options,
                           bool clean_start, bool tls);

/// Reads mqtt.password_file (and checks the TLS files) again into `options`, as before every
/// connect attempt: a password rotated while the service runs is the one its next connect uses,
/// so a broker restarted with the new password takes the service back without a restart.
/// Errors: as set_service_options; the caller counts them as that attempt's failure.
Status refresh_credentials(const IngestConfig& config, mqtt::connect_options& options, bool tls);

/// A Paho client of `uri` (tcp:// or ssl://) as `client_id`, MQTT 5, without persistence: the
/// store is the record of what arrived; what is not acked the agents republish. Errors:
/// invalid_config naming mqtt.url and the client id when Paho refuses them.
Result<std::unique_ptr<mqtt::async_client>> make_service_client(const IngestConfig& config,
                                                                const std::string& uri,
                                                                const std::string& client_id);

}  // namespace ingest
