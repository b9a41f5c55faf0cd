// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <optional>

namespace agent::station {

/// What the LED and the buzzer should show at one instant.
struct Levels {
  bool led = false;
  bool buzzer = false;
  bool operator==(const Levels&) const = default;
};

/// What the operator sees and hears, as a function of time (README.md "What the operator sees"):
/// - armed (a batch scan waits for its weight): LED blinks slowly (0.5 s on, 0.5 s off) for the
///   whole window; the buzzer chirps once (50 ms);
/// - ok (a record was committed): LED on for 2 s, one 200 ms beep;
/// - error (scan without weight, weight without scan, a label that is not a batch): LED blinks
///   fast 5 times (100 ms on, 100 ms off), three 100 ms beeps.
/// - busy (a record is being stored: normally milliseconds, longer while the agent refuses it):
///   LED on, so that it does not flicker off between the weight and the ok.
/// ok and error overlay the armed blink, and the armed blink the busy light, while they last. Pure:
/// the station's thread asks for the levels now and for the next instant they change, so FakeEnv
/// time drives it exactly.
class FeedbackPlan {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  enum class Signal { ok, error };

  void arm(TimePoint at) { m_armed_at = at; }
  void disarm() { m_armed_at.reset(); }
  void set_busy(bool busy) { m_busy = busy; }
  void play(Signal signal, TimePoint at) {
    m_signal = signal;
    m_signal_at = at;
  }

  Levels levels(TimePoint t) const;
  /// The next instant after `t` at which levels() may change; none when it never will.
  std::optional<TimePoint> next_change(TimePoint t) const;

 private:
  std::optional<TimePoint> m_armed_at;
  std::optional<Signal> m_signal;
  bool m_busy = false;
  TimePoint m_signal_at{};
};

}  // namespace agent::station
