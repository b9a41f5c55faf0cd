// SPDX-License-Identifier: AGPL-3.0-or-later
#include "session_tracker.hpp"

#include <algorithm>

#include <fmt/format.h>

#include <reflow/core/units.hpp>

namespace agent::power {

std::string_view to_string(SessionEnd end) {
  return end == SessionEnd::offline ? "offline" : "off";
}

TrackerStep SessionTracker::on_time(std::int64_t now_ms) {
  TrackerStep step;
  m_last_ms = std::max(m_last_ms, now_ms);
  if (m_phase == Phase::paused && m_last_ms >= m_end_ms + m_settings.merge_gap_ms)
    close(m_end_ms, m_energy_at_end_wh, SessionEnd::off, step);
  return step;
}

TrackerStep SessionTracker::on_reading(const PlugReading& reading, std::int64_t at_ms) {
  TrackerStep step = on_time(at_ms);
  const std::int64_t now = m_last_ms;
  apply_counter(reading);

  if (reading.online == false) {
    if (m_phase == Phase::running)
      close(now, m_energy_wh, SessionEnd::offline, step);
    else if (m_phase == Phase::paused)
      close(m_end_ms, m_energy_at_end_wh, SessionEnd::off, step);
    return step;
  }
  if (!reading.watts) return step;
  const double watts = *reading.watts;
  switch (m_phase) {
    case Phase::idle:
      if (watts >= m_settings.on_watts) {
        m_phase = Phase::running;
        m_start_ms = now;
        m_energy_wh = 0;
        m_resets = 0;
        // The baseline is the latest counter, possibly from this very reading.
        m_energy_known = m_counter_wh.has_value();
        step.changed = true;
      }
      break;
    case Phase::running:
      if (watts < m_settings.off_watts) {
        m_phase = Phase::paused;
        m_end_ms = now;
        m_energy_at_end_wh = m_energy_wh;
        step.changed = true;
        // With merge_gap 0 nothing can join the session: it ends here.
        if (m_settings.merge_gap_ms <= 0)
          close(m_end_ms, m_energy_at_end_wh, SessionEnd::off, step);
      }
      break;
    case Phase::paused:
      if (watts >= m_settings.on_watts) {
        m_phase = Phase::running;
        step.changed = true;
      }
      break;
  }
  return step;
}

void SessionTracker::apply_counter(const PlugReading& reading) {
  if (!reading.energy_wh) return;
  const double counter = *reading.energy_wh;
  const bool epoch_changed =
      reading.counter_epoch && m_counter_epoch && *reading.counter_epoch != *m_counter_epoch;
  const bool reset = epoch_changed || (m_counter_wh && counter < *m_counter_wh);
  if (m_phase != Phase::idle) {
    if (m_counter_wh) {
      m_energy_wh += reset ? counter : counter - *m_counter_wh;
      if (reset) ++m_resets;
    }
    // Without a previous value this one is the baseline: energy counts from here.
    m_energy_known = true;
  }
  m_counter_wh = counter;
  if (reading.counter_epoch) m_counter_epoch = reading.counter_epoch;
}

void SessionTracker::close(std::int64_t end_ms, double energy_wh, SessionEnd end,
                           TrackerStep& step) {
  const std::int64_t start = m_start_ms;
  end_ms = std::max(end_ms, start);
  m_phase = Phase::idle;
  step.changed = true;
  if (end_ms - start <= 0 || end_ms - start < m_settings.min_on_ms) {
    ++step.dropped;
    return;
  }
  PowerSession session;
  session.start_ms = start;
  session.end_ms = end_ms;
  if (m_energy_known) session.energy_wh = std::max(0.0, energy_wh);
  session.end = end;
  session.counter_resets = m_resets;
  step.closed.push_back(session);
}

std::optional<std::int64_t> SessionTracker::deadline_ms() const {
  if (m_phase != Phase::paused) return std::nullopt;
  return m_end_ms + m_settings.merge_gap_ms;
}

std::string SessionTracker::describe() const {
  switch (m_phase) {
    case Phase::idle:
      return "idle";
    case Phase::running:
      return fmt::format("running since {}", format_rfc3339_ms(m_start_ms));
    case Phase::paused:
      return fmt::format("paused since {} (session since {})", format_rfc3339_ms(m_end_ms),
                         format_rfc3339_ms(m_start_ms));
  }
  return "?";
}

nlohmann::json SessionTracker::to_json() const {
  nlohmann::json state = nlohmann::json::object();
  if (m_phase == Phase::idle) {
    state["phase"] = "idle";
    return state;
  }
  state["phase"] = m_phase == Phase::running ? "running" : "paused";
  state["start_ms"] = m_start_ms;
  state["energy_wh"] = m_energy_wh;
  state["energy_known"] = m_energy_known;
  state["counter_resets"] = m_resets;
  if (m_phase == Phase::paused) {
    state["end_ms"] = m_end_ms;
    state["energy_at_end_wh"] = m_energy_at_end_wh;
  }
  if (m_counter_wh) state["counter_wh"] = *m_counter_wh;
  if (m_counter_epoch) state["counter_epoch"] = *m_counter_epoch;
  return state;
}

Result<SessionTracker> SessionTracker::from_json(SessionSettings settings,
                                                 const nlohmann::json& state) {
  SessionTracker tracker(settings);
  auto bad = [](std::string_view what) {
    return fail(ErrorCode::corruption, fmt::format("session state: {}", what));
  };
  if (!state.is_object()) return bad("expected an object");
  const auto phase = state.value("phase", std::string("idle"));
  if (phase == "idle") return tracker;
  if (phase != "running" && phase != "paused")
    return bad(fmt::format("unknown phase \"{}\"", phase));
  try {
    tracker.m_phase = phase == "running" ? Phase::running : Phase::paused;
    tracker.m_start_ms = state.at("start_ms").get<std::int64_t>();
    tracker.m_energy_wh = state.at("energy_wh").get<double>();
    tracker.m_energy_known = state.at("energy_known").get<bool>();
    tracker.m_resets = state.at("counter_resets").get<int>();
    tracker.m_last_ms = tracker.m_start_ms;
    if (tracker.m_phase == Phase::paused) {
      tracker.m_end_ms = state.at("end_ms").get<std::int64_t>();
      tracker.m_energy_at_end_wh = state.at("energy_at_end_wh").get<double>();
      tracker.m_last_ms = tracker.m_end_ms;
    }
    if (state.contains("counter_wh")) tracker.m_counter_wh = state.at("counter_wh").get<double>();
    if (state.contains("counter_epoch"))
      tracker.m_counter_epoch = state.at("counter_epoch").get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    return bad(fmt::format("{} session: {}", phase, e.what()));
  }
  return tracker;
}

}  // namespace agent::power
