// SPDX-License-Identifier: AGPL-3.0-or-later
// Usage sessions from a plug's power readings (docs/reference/drivers.md §4.4). Pure: the
// caller gives each reading its time; no I/O, no clock, no threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/result.hpp>

#include "plug_payload.hpp"

namespace agent::power {

struct SessionSettings {
  double on_watts = 20;  ///< a session starts at the first reading ≥ on_watts
  double off_watts = 5;  ///< … and pauses at the first reading < off_watts (off_watts < on_watts)
  std::int64_t min_on_ms = 60'000;      ///< sessions shorter than this are dropped
  std::int64_t merge_gap_ms = 300'000;  ///< a pause shorter than this joins two sessions into one
};

/// Why a session ended (`meta.end`).
enum class SessionEnd {
  off,      ///< power fell below off_watts and stayed there for merge_gap
  offline,  ///< the plug's will / LWT said offline while the machine was running
};
std::string_view to_string(SessionEnd end);

/// A finished session, ready to be recorded.
struct PowerSession {
  std::int64_t start_ms = 0;  ///< the first reading ≥ on_watts
  std::int64_t end_ms = 0;    ///< the first reading < off_watts, or the offline message
  /// Energy from the plug's counter between start and end, in Wh; nullopt when the plug sent no
  /// counter during the session.
  std::optional<double> energy_wh;
  SessionEnd end = SessionEnd::off;
  int counter_resets = 0;  ///< counter resets (reboot, EnergyReset) handled during the session
};

/// What one step did.
struct TrackerStep {
  std::vector<PowerSession> closed;  ///< sessions that ended and are long enough, oldest first
  int dropped = 0;                   ///< sessions that ended but were shorter than min_on
  bool changed = false;  ///< the persistent state changed (save it: to_json()) — a session opened,
                         ///< paused, resumed or closed
};

/// The session state machine:
///   idle ─(W ≥ on)→ running(start = this reading)
///   running ─(W < off)→ paused(end = this reading)      [off ≤ W < on keeps running: hysteresis]
///   paused ─(W ≥ on before end + merge_gap)→ running     [the gap is merged into the session]
///   paused ─(time ≥ end + merge_gap)→ idle: closed, or dropped when end − start < min_on
///   running ─(offline)→ idle: closed at the offline message, `end = offline`
///   paused ─(offline)→ idle: closed at its recorded end (the machine had already stopped)
/// Energy is the sum of counter deltas while a session is open, not ∫P (samples are sparse). A
/// counter that goes down, or whose epoch changes, was reset: the delta is then the new value
/// (energy counted from zero again). The counter at a reading is applied before its power, so
/// a status carrying both dates start and end consistently.
///
/// Times are Unix ms; they are clamped to never go backwards. Not thread-safe.
class SessionTracker {
 public:
  explicit SessionTracker(SessionSettings settings) : m_settings(settings) {}

  /// Feeds one reading that arrived at `at_ms`. Closes a pause whose merge window ended first.
  TrackerStep on_reading(const PlugReading& reading, std::int64_t at_ms);

  /// Time passes without a reading: closes a pause whose merge window ended by `now_ms`.
  TrackerStep on_time(std::int64_t now_ms);

  /// When on_time() next has something to do (the end of a pause's merge window); nullopt when
  /// only a reading can change anything.
  std::optional<std::int64_t> deadline_ms() const;

  /// "idle", "running since …", "paused since …": for status.
  std::string describe() const;
  bool session_open() const { return m_phase != Phase::idle; }

  /// The open session (phase, start, end of a pause, energy so far and the counter value it was
  /// counted up to): what a restart needs to neither lose nor repeat it. The counter is kept
  /// only with an open session, where it pairs with the energy so far; an idle tracker starts
  /// from the next counter reading after a restart, since the saved value would be stale.
  nlohmann::json to_json() const;
  /// Errors: corruption, naming what is wrong.
  static Result<SessionTracker> from_json(SessionSettings settings, const nlohmann::json& state);

 private:
  enum class Phase { idle, running, paused };

  void apply_counter(const PlugReading& reading);
  void close(std::int64_t end_ms, double energy_wh, SessionEnd end, TrackerStep& step);

  SessionSettings m_settings;
  Phase m_phase = Phase::idle;
  std::int64_t m_last_ms = 0;
  std::int64_t m_start_ms = 0;
  std::int64_t m_end_ms = 0;      // paused: the first reading below off_watts
  double m_energy_wh = 0;         // counted since the start
  double m_energy_at_end_wh = 0;  // paused: counted up to the end
  bool m_energy_known = false;    // a counter value was seen since (or at) the start
  int m_resets = 0;
  std::optional<double> m_counter_wh;  // the latest counter value
  std::optional<std::string> m_counter_epoch;
};

}  // namespace agent::power
