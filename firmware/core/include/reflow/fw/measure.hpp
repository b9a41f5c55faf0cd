// SPDX-License-Identifier: AGPL-3.0-or-later
// The current clamp's measurement (docs/firmware-link.md §7, "LINK §7"): RMS per window from raw
// ADC counts, and sessions with hysteresis, minimum on-time, gap merging and idle/busy levels,
// with charge and estimated energy. No hardware: the board feeds ADC counts and window times.
#pragma once

#include <cstddef>
#include <cstdint>

#include "reflow/fw/messages.hpp"

namespace reflow::fw {

/// RMS current of fixed windows of ADC samples. The clamp's burden circuit sits at mid-rail (about
/// half the ADC range); that DC offset is removed as the window's mean, so it follows drift of the
/// bias and needs no calibration: RMS = sqrt(Σx²/n − (Σx/n)²). Calibration is `ua_per_count`
/// (microampere of primary current per ADC count: the clamp's ratio, its burden resistor and the
/// ADC's reference, LINK §4.2). Sums are exact integers (counts up to 16 bits, windows up to 65535
/// samples); only the final square root is floating point. Not thread-safe: one sampling loop.
class RmsMeter {
 public:
  /// Sets the calibration and the window length (samples); starts a new window.
  void configure(std::uint32_t ua_per_count, std::uint16_t window_samples);
  /// Adds one ADC sample (counts). True when it completed a window: rms_ma() then holds the
  /// window's RMS current in milliampere, rms_counts() in ADC counts. Without a configuration
  /// (window 0) it returns false and keeps nothing.
  bool add(std::uint16_t counts);
  std::uint32_t rms_ma() const { return m_rms_ma; }
  float rms_counts() const { return m_rms_counts; }
  /// The last window's mean in counts (the mid-rail offset that was removed).
  float offset_counts() const { return m_offset_counts; }

 private:
  std::uint32_t m_ua_per_count = 0;
  std::uint16_t m_window = 0;
  std::uint32_t m_n = 0;
  std::uint64_t m_sum = 0;
  std::uint64_t m_sum_squares = 0;
  std::uint32_t m_rms_ma = 0;
  float m_rms_counts = 0;
  float m_offset_counts = 0;
};

/// What one window did to the session state.
struct SessionUpdate {
  bool started = false;  ///< `start` is a confirmed session (LINK §4.3)
  SessionStart start;
  bool ended = false;  ///< `end` is a finished session (LINK §4.4)
  SessionEnd end;
};

/// Sessions from RMS windows (LINK §7). A window at or above `on_threshold_ma` starts a candidate;
/// it becomes a session once it has lasted `min_on_ms` with no window below `off_threshold_ma`
/// (so an inrush spike alone makes none). In a session a window below off starts a gap; the
/// session ends at the gap's start when the gap lasts `gap_merge_ms`, and a window at or above on
/// during the gap merges it. Charge integrates the RMS current over the session (including merged
/// gaps) in millicoulomb; energy is charge × voltage × power factor (LINK §4.4), an estimate in
/// millijoule; busy time counts windows at or above `busy_threshold_ma` when that is set (a
/// laser's tube on vs its idle chiller). Arithmetic is integer: energy is exact for sessions
/// below about 8·10^7 C at 230 V (10 A for 2000 hours). Not thread-safe.
class SessionDetector {
 public:
  /// Takes thresholds, times, voltage and power factor from `config` (check_config() first). A
  /// session in progress is kept.
  void configure(const Config& config);
  /// One RMS window: its start (board ms), its length (ms) and its RMS current (mA).
  SessionUpdate window(std::uint64_t start_ms, std::uint32_t length_ms, std::uint32_t current_ma);
  /// True while a session is confirmed and not yet ended (including its gaps).
  bool in_session() const { return m_state == State::on || m_state == State::gap; }
  /// Candidates that ended before min_on_ms (inrush spikes, short blips).
  std::uint32_t rejected() const { return m_rejected; }

 private:
  enum class State { idle, candidate, on, gap };
  struct Totals {
    std::uint64_t charge_uc = 0;  // microcoulomb = mA × ms
    std::uint64_t busy_ms = 0;
    std::uint32_t peak_ma = 0;
    std::uint64_t elapsed_ms = 0;
    void add(std::uint32_t length_ms, std::uint32_t current_ma, std::uint32_t busy_threshold_ma);
  };
  SessionEnd finish(std::uint64_t end_ms) const;

  Config m_config{};
  State m_state = State::idle;
  std::uint32_t m_next_session = 1;
  std::uint32_t m_session = 0;
  std::uint64_t m_start_ms = 0;
  std::uint64_t m_gap_start_ms = 0;
  Totals m_totals;
  Totals m_gap;
  std::uint32_t m_rejected = 0;
};

}  // namespace reflow::fw
