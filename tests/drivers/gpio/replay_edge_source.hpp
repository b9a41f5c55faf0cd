// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "edge_source.hpp"

namespace agent::gpio {

/// A recorded edge sequence: testdata/<case>/edges.jsonl holds one JSON object per line,
/// `{"t_ns": N, "edge": "rising"|"falling"}` with N nanoseconds after the line was opened (logical
/// edges, active-low already applied, as the kernel reports them), optionally preceded by
/// `{"level": "active"|"inactive"}`, the level when opened (default inactive).
struct EdgeRecording {
  bool initially_active = false;
  std::vector<Edge> edges;  ///< timestamps relative to the open
};

/// Errors: io (unreadable), corruption (a line that is not an edge; the message names it).
Result<EdgeRecording> load_edge_recording(const std::filesystem::path& file);

/// Tells a test when the driver has taken in everything up to the current FakeEnv time, so that
/// it moves the clock only then. FakeEnv::wait_for_sleepers() alone cannot: a sleeper counts until
/// it has woken up, so right after advance_ms() the test would see the driver still "asleep" and
/// advance again while the driver is between reading its edges and reading the clock.
class ReplayMonitor {
 public:
  /// Blocks until a ReplayEdgeSource is asleep and has returned every edge up to `now`: it went
  /// to sleep at `now`, or it sleeps until a time after `now`. Gives up after 30 s (real time)
  /// and returns false.
  bool wait_idle_at(std::chrono::steady_clock::time_point now);

  void sleeping(std::chrono::steady_clock::time_point since,
                std::chrono::steady_clock::time_point until);
  void awake();

 private:
  struct Sleep {
    std::chrono::steady_clock::time_point since;
    std::chrono::steady_clock::time_point until;
  };
  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::optional<Sleep> m_sleep;
};

/// The test EdgeSource: replays a recording on the Env's steady clock, starting when it is made.
/// wait() sleeps through Env::sleep_until, so with FakeEnv the test's clock decides when each
/// edge arrives; once the recording is over the line stays at its last level. A `monitor`, when
/// given, is told each time the source goes to sleep and wakes up.
class ReplayEdgeSource final : public EdgeSource {
 public:
  ReplayEdgeSource(EdgeRecording recording, Env& env, ReplayMonitor* monitor = nullptr);

  Result<bool> level() override;
  Result<std::vector<Edge>> wait(std::chrono::steady_clock::time_point deadline,
                                 std::stop_token stop) override;

 private:
  std::vector<Edge> due(std::int64_t now_ns);

  EdgeRecording m_recording;
  Env& m_env;
  std::int64_t m_anchor_ns;
  std::size_t m_next = 0;
  ReplayMonitor* m_monitor;
};

}  // namespace agent::gpio
