// SPDX-License-Identifier: AGPL-3.0-or-later
#include "feedback.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>

namespace agent::station {
namespace {

using Ms = std::chrono::milliseconds;

struct Interval {
  std::int64_t begin_ms;
  std::int64_t end_ms;
};

struct Pattern {
  std::span<const Interval> led;
  std::span<const Interval> buzzer;
  std::int64_t length_ms;
};

constexpr std::array<Interval, 1> k_ok_led = {{{0, 2000}}};
constexpr std::array<Interval, 1> k_ok_buzzer = {{{0, 200}}};
constexpr std::array<Interval, 5> k_error_led = {
    {{0, 100}, {200, 300}, {400, 500}, {600, 700}, {800, 900}}};
constexpr std::array<Interval, 3> k_error_buzzer = {{{0, 100}, {200, 300}, {400, 500}}};
constexpr std::int64_t k_blink_ms = 500;
constexpr std::int64_t k_chirp_ms = 50;

Pattern pattern(FeedbackPlan::Signal signal) {
  if (signal == FeedbackPlan::Signal::ok) return {k_ok_led, k_ok_buzzer, 2000};
  return {k_error_led, k_error_buzzer, 1000};
}

bool inside(std::span<const Interval> intervals, std::int64_t offset_ms) {
  return std::any_of(intervals.begin(), intervals.end(), [&](const Interval& i) {
    return offset_ms >= i.begin_ms && offset_ms < i.end_ms;
  });
}

std::int64_t offset_ms(FeedbackPlan::TimePoint from, FeedbackPlan::TimePoint t) {
  return std::chrono::duration_cast<Ms>(t - from).count();
}

}  // namespace

Levels FeedbackPlan::levels(TimePoint t) const {
  if (m_signal && t >= m_signal_at) {
    const Pattern p = pattern(*m_signal);
    const std::int64_t at = offset_ms(m_signal_at, t);
    if (at < p.length_ms) return {inside(p.led, at), inside(p.buzzer, at)};
  }
  if (m_armed_at && t >= *m_armed_at) {
    const std::int64_t at = offset_ms(*m_armed_at, t);
    return {(at / k_blink_ms) % 2 == 0, at < k_chirp_ms};
  }
  return {m_busy, false};
}

std::optional<FeedbackPlan::TimePoint> FeedbackPlan::next_change(TimePoint t) const {
  std::optional<TimePoint> next;
  auto consider = [&](TimePoint candidate) {
    if (candidate > t && (!next || candidate < *next)) next = candidate;
  };
  if (m_signal) {
    const Pattern p = pattern(*m_signal);
    if (t < m_signal_at + Ms(p.length_ms)) {
      for (auto intervals : {p.led, p.buzzer})
        for (const Interval& i : intervals) {
          consider(m_signal_at + Ms(i.begin_ms));
          consider(m_signal_at + Ms(i.end_ms));
        }
      consider(m_signal_at + Ms(p.length_ms));
    }
  }
  if (m_armed_at) {
    if (t < *m_armed_at) {
      consider(*m_armed_at);
    } else {
      const std::int64_t at = offset_ms(*m_armed_at, t);
      consider(*m_armed_at + Ms((at / k_blink_ms + 1) * k_blink_ms));
      consider(*m_armed_at + Ms(k_chirp_ms));
    }
  }
  return next;
}

}  // namespace agent::station
