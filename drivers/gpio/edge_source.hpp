// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

#include <reflow/core/env.hpp>
#include <reflow/core/result.hpp>

namespace agent::gpio {

/// One edge of a line's logical level (after active-low inversion): `rising` means the line became
/// active. `timestamp_ns` is on the steady clock of the Env the driver runs with (for the real
/// line: the kernel's event timestamp, CLOCK_MONOTONIC, which is std::chrono::steady_clock on
/// Linux), nanoseconds since that clock's epoch.
struct Edge {
  enum class Kind { rising, falling };
  Kind kind = Kind::rising;
  std::int64_t timestamp_ns = 0;
};

enum class Bias { none, pull_up, pull_down };

/// What to open: a line found by name (never by chip number, which changes between Pi models and
/// kernels), with its electrical options.
struct LineRequest {
  std::string line;  ///< line name as `gpioinfo` shows it: "GPIO17", a device-tree label
  bool active_low = false;
  Bias bias = Bias::none;
  std::string consumer;  ///< shown by `gpioinfo` as the line's user: "reflow-agent/<name>"
};

/// The seam between the gpio driver and a line: the real one is libgpiod (gpiod_edge_source.cpp),
/// tests replay recorded edge sequences. One thread uses an instance; it owns the open line and
/// releases it when destroyed.
class EdgeSource {
 public:
  virtual ~EdgeSource() = default;

  /// The line's logical level now (true = active). Errors: io.
  virtual Result<bool> level() = 0;

  /// Waits until at least one edge is there, `deadline` (steady clock) passes or `stop` is
  /// requested, and returns the edges read, oldest first (empty when none came). Errors: io (the
  /// line went away: a USB expander unplugged …), after which the driver reopens the line.
  virtual Result<std::vector<Edge>> wait(std::chrono::steady_clock::time_point deadline,
                                         std::stop_token stop) = 0;
};

/// Opens a line. Errors: device_unavailable (no line of that name, or it is busy), io.
using EdgeSourceFactory = std::function<Result<std::unique_ptr<EdgeSource>>(const LineRequest&)>;

/// The libgpiod v1 backend: finds the line by name on every chip (gpiod_line_find), requests both
/// edges with the bias and active-low flags and reads the kernel's edge events. `env` is only used
/// for the steady clock. Errors: device_unavailable naming the line and how to list line names
/// (`gpioinfo`); io.
Result<std::unique_ptr<EdgeSource>> open_gpiod_edge_source(const LineRequest& request, Env& env);

}  // namespace agent::gpio
