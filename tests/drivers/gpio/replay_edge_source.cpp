// SPDX-License-Identifier: AGPL-3.0-or-later
#include "replay_edge_source.hpp"

#include <fmt/format.h>

#include <fstream>

#include <nlohmann/json.hpp>

namespace agent::gpio {
namespace {

std::int64_t to_ns(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace

Result<EdgeRecording> load_edge_recording(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) return fail(ErrorCode::io, fmt::format("cannot read {}", file.string()));
  EdgeRecording recording;
  std::string text;
  for (int number = 1; std::getline(in, text); ++number) {
    if (text.empty()) continue;
    auto line = nlohmann::json::parse(text, nullptr, false);
    const auto bad = [&] {
      return fail(ErrorCode::corruption,
                  fmt::format("{}:{}: expected {{\"t_ns\":N,\"edge\":\"rising\"|\"falling\"}} or "
                              "{{\"level\":\"active\"|\"inactive\"}}; got {}",
                              file.string(), number, text));
    };
    if (!line.is_object()) return bad();
    if (line.contains("level")) {
      recording.initially_active = line["level"] == "active";
      continue;
    }
    if (!line.contains("t_ns") || !line["t_ns"].is_number_integer() || !line.contains("edge"))
      return bad();
    const auto kind = line["edge"];
    if (kind != "rising" && kind != "falling") return bad();
    recording.edges.push_back({kind == "rising" ? Edge::Kind::rising : Edge::Kind::falling,
                               line["t_ns"].get<std::int64_t>()});
  }
  return recording;
}

bool ReplayMonitor::wait_idle_at(std::chrono::steady_clock::time_point now) {
  std::unique_lock lock(m_mutex);
  return m_changed.wait_for(lock, std::chrono::seconds(30), [&] {
    return m_sleep && (m_sleep->since == now || m_sleep->until > now);
  });
}

void ReplayMonitor::sleeping(std::chrono::steady_clock::time_point since,
                             std::chrono::steady_clock::time_point until) {
  {
    std::lock_guard lock(m_mutex);
    m_sleep = Sleep{since, until};
  }
  m_changed.notify_all();
}

void ReplayMonitor::awake() {
  std::lock_guard lock(m_mutex);
  m_sleep.reset();
}

ReplayEdgeSource::ReplayEdgeSource(EdgeRecording recording, Env& env, ReplayMonitor* monitor)
    : m_recording(std::move(recording)),
      m_env(env),
      m_anchor_ns(to_ns(env.steady_now())),
      m_monitor(monitor) {}

Result<bool> ReplayEdgeSource::level() {
  if (m_next == 0) return m_recording.initially_active;
  return m_recording.edges[m_next - 1].kind == Edge::Kind::rising;
}

std::vector<Edge> ReplayEdgeSource::due(std::int64_t now_ns) {
  std::vector<Edge> edges;
  while (m_next < m_recording.edges.size() &&
         m_anchor_ns + m_recording.edges[m_next].timestamp_ns <= now_ns) {
    const Edge& e = m_recording.edges[m_next++];
    edges.push_back({e.kind, m_anchor_ns + e.timestamp_ns});
  }
  return edges;
}

Result<std::vector<Edge>> ReplayEdgeSource::wait(std::chrono::steady_clock::time_point deadline,
                                                 std::stop_token stop) {
  const auto now = m_env.steady_now();
  if (auto edges = due(to_ns(now)); !edges.empty()) return edges;
  auto wake = deadline;
  if (m_next < m_recording.edges.size())
    wake = std::min(
        wake,
        std::chrono::steady_clock::time_point(
            std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                std::chrono::nanoseconds(m_anchor_ns + m_recording.edges[m_next].timestamp_ns))));
  // Edges that are due are returned even when woken by `stop`: they have happened.
  if (m_monitor) m_monitor->sleeping(now, wake);
  m_env.sleep_until(wake, stop);
  if (m_monitor) m_monitor->awake();
  return due(to_ns(m_env.steady_now()));
}

}  // namespace agent::gpio
