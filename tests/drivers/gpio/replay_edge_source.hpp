// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <filesystem>
#include <memory>
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

/// The test EdgeSource: replays a recording on the Env's steady clock, starting when it is made.
/// wait() sleeps through Env::sleep_until, so with FakeEnv the test's clock decides when each
/// edge arrives; once the recording is over the line stays at its last level.
class ReplayEdgeSource final : public EdgeSource {
 public:
  ReplayEdgeSource(EdgeRecording recording, Env& env);

  Result<bool> level() override;
  Result<std::vector<Edge>> wait(std::chrono::steady_clock::time_point deadline,
                                 std::stop_token stop) override;

 private:
  std::vector<Edge> due(std::int64_t now_ns);

  EdgeRecording m_recording;
  Env& m_env;
  std::int64_t m_anchor_ns;
  std::size_t m_next = 0;
};

}  // namespace agent::gpio
