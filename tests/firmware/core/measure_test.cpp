// SPDX-License-Identifier: AGPL-3.0-or-later
// The clamp's measurement (docs/firmware-link.md §7): RMS against a computed sine, and sessions
// from synthesised clamp waveforms — ADC samples of a 50 Hz current with noise, through RmsMeter
// into SessionDetector as the board runs them: a printer's heater cycling, a laser with idle and
// busy levels, a motor's inrush, gaps merged or not.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numbers>
#include <vector>

#include "reflow/fw/measure.hpp"

namespace {

using namespace reflow::fw;

constexpr std::uint32_t k_ua_per_count = 24170;  // SCT-013-030 (30 A : 1 V) on a 3.3 V 12-bit ADC
constexpr int k_rate_hz = 1000;
constexpr int k_window = 200;  // 200 ms windows
constexpr int k_window_ms = k_window * 1000 / k_rate_hz;
constexpr int k_mid_rail = 2048;

// ADC counts of a 50 Hz current of `rms_a` amperes around mid-rail, with ±2 counts of
// deterministic noise, at sample `i`.
std::uint16_t sample(double rms_a, int i, std::uint32_t& noise) {
  noise = noise * 1664525U + 1013904223U;  // Numerical Recipes' LCG
  const double amplitude_counts = rms_a * std::numbers::sqrt2 / (k_ua_per_count / 1e6);
  const double t = static_cast<double>(i) / k_rate_hz;
  const double v = k_mid_rail + amplitude_counts * std::sin(2 * std::numbers::pi * 50 * t) +
                   static_cast<int>(noise >> 29) - 3.5;
  return static_cast<std::uint16_t>(std::lround(std::clamp(v, 0.0, 4095.0)));
}

struct Trace {
  std::vector<SessionStart> starts;
  std::vector<SessionEnd> ends;
  std::uint32_t rejected = 0;
  std::uint32_t windows = 0;
};

// Samples `profile` (RMS amperes as a function of ms) for `duration_ms` and runs the detector.
Trace simulate(const Config& config, int duration_ms, const std::function<double(int)>& profile) {
  RmsMeter meter;
  meter.configure(config.ua_per_count, config.window_samples);
  SessionDetector detector;
  detector.configure(config);
  Trace result;
  std::uint32_t noise = 1;
  const int samples = duration_ms * k_rate_hz / 1000;
  for (int i = 0; i < samples; ++i) {
    const int ms = i * 1000 / k_rate_hz;
    if (!meter.add(sample(profile(ms), i, noise))) continue;
    const std::uint64_t window_start = static_cast<std::uint64_t>(ms + 1 - k_window_ms);
    const SessionUpdate u = detector.window(window_start, k_window_ms, meter.rms_ma());
    ++result.windows;
    if (u.started) result.starts.push_back(u.start);
    if (u.ended) result.ends.push_back(u.end);
  }
  result.rejected = detector.rejected();
  EXPECT_FALSE(detector.in_session()) << "the profile should end idle";
  return result;
}

Config config() {
  return Config{.ua_per_count = k_ua_per_count,
                .sample_rate_hz = k_rate_hz,
                .window_samples = k_window,
                .on_threshold_ma = 1000,
                .off_threshold_ma = 500,
                .busy_threshold_ma = 0,
                .min_on_ms = 1000,
                .gap_merge_ms = 5000,
                .voltage_mv = 230000,
                .power_factor_permille = 1000};
}

TEST(RmsMeterTest, MatchesTheRmsOfAComputedSine) {
  RmsMeter meter;
  meter.configure(k_ua_per_count, 2000);  // 2 s at 1 kHz: 100 whole cycles
  const double amplitude = 1000.0;        // counts
  const int offset = 1900;                // off mid-rail: the offset must not matter
  int windows = 0;
  for (int i = 0; i < 2000; ++i) {
    const double v = offset + amplitude * std::sin(2 * std::numbers::pi * 50 * i / 1000.0 + 0.3);
    if (meter.add(static_cast<std::uint16_t>(std::lround(v)))) ++windows;
  }
  ASSERT_EQ(windows, 1);
  const double expected_counts = amplitude / std::numbers::sqrt2;  // 707.1 counts
  EXPECT_NEAR(meter.rms_counts(), expected_counts, 0.5);           // quantisation only
  EXPECT_NEAR(meter.offset_counts(), offset, 0.5);
  // 707.1 counts × 24.17 mA per count = 17 091 mA.
  EXPECT_NEAR(meter.rms_ma(), expected_counts * k_ua_per_count / 1000.0, 15.0);
}

TEST(RmsMeterTest, GivesZeroForADcInputAndNothingUnconfigured) {
  RmsMeter meter;
  EXPECT_FALSE(meter.add(2048));
  meter.configure(k_ua_per_count, 4);
  for (int i = 0; i < 3; ++i)
    EXPECT_FALSE(meter.add(2048));
  EXPECT_TRUE(meter.add(2048));
  EXPECT_EQ(meter.rms_ma(), 0U);
  EXPECT_FLOAT_EQ(meter.offset_counts(), 2048.0F);
}

TEST(SessionDetectorTest, PrinterHeaterCyclingIsOneSessionWhenGapsMerge) {
  // A bed heater: 8 A for 3 s, off for 2 s, ten times, starting at 10 s; then off for 20 s.
  const auto heater = [](int ms) {
    if (ms < 10000 || ms >= 60000) return 0.0;
    return (ms - 10000) % 5000 < 3000 ? 8.0 : 0.0;
  };
  const Trace r = simulate(config(), 80000, heater);
  ASSERT_EQ(r.starts.size(), 1U);
  ASSERT_EQ(r.ends.size(), 1U);
  const SessionEnd& s = r.ends[0];
  EXPECT_EQ(r.starts[0].start_ms, 10000U);
  EXPECT_EQ(s.start_ms, 10000U);
  EXPECT_EQ(s.end_ms, 58000U);  // the last heating ends at 58 s
  EXPECT_EQ(s.session, 1U);
  // 10 × 3 s at 8 A = 240 C; the merged gaps add only noise (under 0.1 A).
  EXPECT_NEAR(static_cast<double>(s.charge_mc), 240000.0, 240000.0 * 0.02);
  // Energy: charge × 230 V × PF 1.
  EXPECT_NEAR(static_cast<double>(s.energy_mj), s.charge_mc * 230.0, s.charge_mc * 230.0 * 1e-3);
  EXPECT_NEAR(s.peak_ma, 8000.0, 80.0);
  EXPECT_EQ(s.busy_ms, 0U);
}

TEST(SessionDetectorTest, PrinterHeaterCyclingSplitsWhenGapsAreLongerThanTheMerge) {
  Config c = config();
  c.gap_merge_ms = 1000;
  const auto heater = [](int ms) {
    if (ms < 10000 || ms >= 60000) return 0.0;
    return (ms - 10000) % 5000 < 3000 ? 8.0 : 0.0;
  };
  const Trace r = simulate(c, 80000, heater);
  ASSERT_EQ(r.ends.size(), 10U);
  ASSERT_EQ(r.starts.size(), 10U);
  for (std::size_t i = 0; i < r.ends.size(); ++i) {
    EXPECT_EQ(r.ends[i].session, i + 1);
    EXPECT_EQ(r.ends[i].start_ms, 10000U + 5000U * i);
    EXPECT_EQ(r.ends[i].end_ms, 13000U + 5000U * i);
    EXPECT_NEAR(static_cast<double>(r.ends[i].charge_mc), 24000.0, 24000.0 * 0.02);
  }
}

TEST(SessionDetectorTest, LaserHasIdleAndBusyTime) {
  // Tube off (chiller and PSU: 1.5 A) 10 s, cutting (6 A) 20 s, idle 5 s, then switched off.
  Config c = config();
  c.busy_threshold_ma = 4000;
  c.power_factor_permille = 900;
  const auto laser = [](int ms) {
    if (ms < 5000) return 0.0;
    if (ms < 15000) return 1.5;
    if (ms < 35000) return 6.0;
    if (ms < 40000) return 1.5;
    return 0.0;
  };
  const Trace r = simulate(c, 60000, laser);
  ASSERT_EQ(r.ends.size(), 1U);
  const SessionEnd& s = r.ends[0];
  EXPECT_EQ(s.start_ms, 5000U);
  EXPECT_EQ(s.end_ms, 40000U);
  EXPECT_EQ(s.busy_ms, 20000U);
  EXPECT_NEAR(s.peak_ma, 6000.0, 60.0);
  // 15 s × 1.5 A + 20 s × 6 A = 142.5 C; × 230 V × 0.9.
  EXPECT_NEAR(static_cast<double>(s.charge_mc), 142500.0, 142500.0 * 0.02);
  EXPECT_NEAR(static_cast<double>(s.energy_mj), s.charge_mc * 230.0 * 0.9,
              s.charge_mc * 230.0 * 1e-3);
}

TEST(SessionDetectorTest, MotorInrushAloneMakesNoSession) {
  // A 30 A inrush for 400 ms, then nothing (the motor was switched off again or stalled).
  const auto spike = [](int ms) { return ms >= 2000 && ms < 2400 ? 30.0 : 0.0; };
  const Trace r = simulate(config(), 10000, spike);
  EXPECT_TRUE(r.starts.empty());
  EXPECT_TRUE(r.ends.empty());
  EXPECT_EQ(r.rejected, 1U);
}

TEST(SessionDetectorTest, MotorInrushThenRunningIsOneSessionWithThePeak) {
  const auto motor = [](int ms) {
    if (ms < 2000) return 0.0;
    if (ms < 2400) return 30.0;
    if (ms < 12000) return 3.0;
    return 0.0;
  };
  const Trace r = simulate(config(), 20000, motor);
  ASSERT_EQ(r.ends.size(), 1U);
  EXPECT_EQ(r.rejected, 0U);
  EXPECT_EQ(r.ends[0].start_ms, 2000U);
  EXPECT_EQ(r.ends[0].end_ms, 12000U);
  EXPECT_NEAR(r.ends[0].peak_ma, 30000.0, 300.0);
}

TEST(SessionDetectorTest, StartIsReportedOnceMinOnTimeHasPassed) {
  SessionDetector d;
  d.configure(config());  // min_on 1000 ms
  SessionUpdate u = d.window(0, 200, 2000);
  EXPECT_FALSE(u.started);
  for (int w = 1; w < 4; ++w)
    EXPECT_FALSE(d.window(200U * w, 200, 2000).started);
  // Between off and on (hysteresis band): the candidate continues.
  u = d.window(800, 200, 700);
  ASSERT_TRUE(u.started);
  EXPECT_EQ(u.start.start_ms, 0U);
  EXPECT_EQ(u.start.session, 1U);
  EXPECT_TRUE(d.in_session());
}

}  // namespace
