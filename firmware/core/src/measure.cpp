// SPDX-License-Identifier: AGPL-3.0-or-later
#include "reflow/fw/measure.hpp"

namespace reflow::fw {

void RmsMeter::configure(std::uint32_t ua_per_count, std::uint16_t window_samples) {
  m_ua_per_count = ua_per_count;
  m_window = window_samples;
  m_n = 0;
  m_sum = 0;
  m_sum_squares = 0;
}

bool RmsMeter::add(std::uint16_t counts) {
  if (m_window == 0) return false;
  m_sum += counts;
  m_sum_squares += static_cast<std::uint64_t>(counts) * counts;
  if (++m_n < m_window) return false;
  // n·Σx² − (Σx)² ≥ 0 (Cauchy–Schwarz), exact in 64 bits for 16-bit counts and n < 2^16.
  const std::uint64_t n = m_n;
  const std::uint64_t numerator = n * m_sum_squares - m_sum * m_sum;
  const float variance = static_cast<float>(numerator) / (static_cast<float>(n) * n);
  // __builtin_sqrtf is one VSQRT.F32 on the Cortex-M4F and sqrtss on the host.
  m_rms_counts = __builtin_sqrtf(variance);
  m_offset_counts = static_cast<float>(m_sum) / static_cast<float>(n);
  m_rms_ma = static_cast<std::uint32_t>(
      m_rms_counts * static_cast<float>(m_ua_per_count) / 1000.0F + 0.5F);
  m_n = 0;
  m_sum = 0;
  m_sum_squares = 0;
  return true;
}

void SessionDetector::Totals::add(std::uint32_t length_ms, std::uint32_t current_ma,
                                  std::uint32_t busy_threshold_ma) {
  charge_uc += static_cast<std::uint64_t>(current_ma) * length_ms;
  if (busy_threshold_ma != 0 && current_ma >= busy_threshold_ma) busy_ms += length_ms;
  if (current_ma > peak_ma) peak_ma = current_ma;
  elapsed_ms += length_ms;
}

void SessionDetector::configure(const Config& config) {
  m_config = config;
}

SessionEnd SessionDetector::finish(std::uint64_t end_ms) const {
  SessionEnd end;
  end.session = m_session;
  end.source = SessionSource::current;
  end.start_ms = m_start_ms;
  end.end_ms = end_ms;
  end.charge_mc = m_totals.charge_uc / 1000;
  // µC × mV = nJ; × power factor ‰; nJ → mJ (LINK §4.4).
  const std::uint64_t nj = m_totals.charge_uc * m_config.voltage_mv;
  end.energy_mj = nj / 1000 * m_config.power_factor_permille / 1000 / 1000;
  end.peak_ma = m_totals.peak_ma;
  end.busy_ms = m_totals.busy_ms;
  return end;
}

SessionUpdate SessionDetector::window(std::uint64_t start_ms, std::uint32_t length_ms,
                                      std::uint32_t current_ma) {
  SessionUpdate update;
  const Config& c = m_config;
  const bool above_on = current_ma >= c.on_threshold_ma && c.on_threshold_ma != 0;
  const bool below_off = current_ma < c.off_threshold_ma || c.on_threshold_ma == 0;
  switch (m_state) {
    case State::idle:
      if (!above_on) return update;
      m_state = State::candidate;
      m_start_ms = start_ms;
      m_totals = {};
      m_totals.add(length_ms, current_ma, c.busy_threshold_ma);
      break;
    case State::candidate:
      if (below_off) {
        m_state = State::idle;
        ++m_rejected;
        return update;
      }
      m_totals.add(length_ms, current_ma, c.busy_threshold_ma);
      break;
    case State::on:
      if (!below_off) {
        m_totals.add(length_ms, current_ma, c.busy_threshold_ma);
        return update;
      }
      m_state = State::gap;
      m_gap_start_ms = start_ms;
      m_gap = {};
      m_gap.add(length_ms, current_ma, c.busy_threshold_ma);
      break;
    case State::gap:
      if (above_on) {
        m_totals.charge_uc += m_gap.charge_uc;
        m_totals.busy_ms += m_gap.busy_ms;
        if (m_gap.peak_ma > m_totals.peak_ma) m_totals.peak_ma = m_gap.peak_ma;
        m_totals.elapsed_ms += m_gap.elapsed_ms;
        m_totals.add(length_ms, current_ma, c.busy_threshold_ma);
        m_state = State::on;
        return update;
      }
      m_gap.add(length_ms, current_ma, c.busy_threshold_ma);
      break;
  }
  if (m_state == State::candidate && m_totals.elapsed_ms >= c.min_on_ms) {
    m_state = State::on;
    m_session = m_next_session++;
    update.started = true;
    update.start = {m_session, SessionSource::current, m_start_ms};
  }
  if (m_state == State::gap && m_gap.elapsed_ms >= c.gap_merge_ms) {
    m_state = State::idle;
    update.ended = true;
    update.end = finish(m_gap_start_ms);
  }
  return update;
}

}  // namespace reflow::fw
