// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/result.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/driver_table.hpp>
#include <reflow/device/event_sink.hpp>

namespace agent {

/// What a running driver reports about itself, for `reflow-agent status` (and the log). A device
/// that is unreachable, slow, answers with an error or sends garbage shows up here.
struct DriverHealth {
  std::string state;         ///< short, for people: "polling", "connected", "waiting for device"
  std::uint64_t events = 0;  ///< events the driver submitted that were committed
  std::uint64_t errors = 0;  ///< failed device requests (unreachable, timeout, HTTP 4xx/5xx …)
  std::uint64_t malformed =
      0;                   ///< device data that was malformed or unexpected, logged and skipped
  std::string last_error;  ///< the latest error message; "" when none since start
  std::int64_t last_error_unix_ms = 0;  ///< when it happened; 0 when none
};

/// One running driver: watches a machine and submits events to the sink. Made by its kind's
/// create(); start() opens devices and starts its work (usually a thread of its own); stop() ends
/// it and returns only when the driver will submit nothing more. A driver only ever talks to the
/// EventSink: never to signing, SQLite or MQTT.
class Driver {
 public:
  virtual ~Driver() = default;

  /// Opens devices and starts work. `state_dir` is the driver's own folder for its cursor (created
  /// by the agent); a driver keeps there whatever it needs so that a restart neither loses nor
  /// repeats an event. Errors: device_unavailable (retryable), io.
  virtual Status start(EventSink& sink, const std::filesystem::path& state_dir) = 0;

  /// Stops work and joins. Idempotent.
  virtual void stop() = 0;

  /// The driver's counters and state now. Thread-safe (the control socket asks from its thread).
  virtual DriverHealth health() const { return {}; }
};

/// A driver kind: a stateless factory (Telegraf: "Init() should not contain connections to
/// external services"). create() validates the `[[driver]]` table and opens nothing.
class DriverKind {
 public:
  virtual ~DriverKind() = default;

  /// The `kind` value in config: "sim", "moonraker" …
  virtual std::string_view kind() const = 0;

  /// One line for `reflow-agent drivers`.
  virtual std::string_view summary() const = 0;

  /// The kind's own keys (besides `kind` and `name`), for `reflow-agent drivers describe KIND`.
  virtual const std::vector<DriverKeyInfo>& keys() const = 0;

  /// Validates `config` and makes an instance. Errors: invalid_config naming file, line and key.
  virtual Result<std::unique_ptr<Driver>> create(const DriverConfig& config, Env& env,
                                                 Logger& log) const = 0;
};

/// The kinds built into this binary, from the table CMake generates (one option per driver).
std::span<const DriverKind* const> builtin_driver_kinds();

/// Driver kinds every build knows by name, with the CMake option that builds each, so that a config
/// naming a kind that was left out can say how to get it.
struct KnownDriverKind {
  std::string_view kind;
  std::string_view cmake_option;
};
std::span<const KnownDriverKind> known_driver_kinds();

}  // namespace agent
