// SPDX-License-Identifier: AGPL-3.0-or-later
#include "reflow/fw/inputs.hpp"

namespace reflow::fw {

Edge Debouncer::feed(bool level, std::uint64_t now_ms) {
  if (level != m_raw) {
    m_raw = level;
    m_raw_since_ms = now_ms;
  }
  if (m_raw == m_stable || now_ms - m_raw_since_ms < m_debounce_ms) return Edge::none;
  m_stable = m_raw;
  m_edge_ms = m_raw_since_ms;
  return m_stable ? Edge::rising : Edge::falling;
}

bool S0Counter::feed(bool active, std::uint64_t now_ms) {
  const bool was_active = m_active;
  m_active = active;
  if (active && !was_active) m_active_since_ms = now_ms;
  if (active || !was_active || now_ms - m_active_since_ms < m_min_pulse_ms) return false;
  ++m_total;
  m_last_pulse_ms = m_active_since_ms;
  return true;
}

namespace {

int hex_value(std::uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

bool Em4100Parser::feed(std::uint8_t byte) {
  constexpr std::uint8_t stx = 0x02;
  constexpr std::uint8_t etx = 0x03;
  if (byte == stx) {
    if (m_in_frame) ++m_bad_frames;  // a frame cut short
    m_in_frame = true;
    m_chars = 0;
    m_bytes = {};
    return false;
  }
  if (!m_in_frame) return false;  // noise between frames
  if (byte == etx) {
    m_in_frame = false;
    if (m_chars != k_hex_chars) {
      ++m_bad_frames;
      return false;
    }
    std::uint8_t x = 0;
    for (std::size_t i = 0; i < m_tag.size(); ++i)
      x ^= m_bytes[i];
    if (x != m_bytes[m_tag.size()]) {
      ++m_bad_frames;
      return false;
    }
    for (std::size_t i = 0; i < m_tag.size(); ++i)
      m_tag[i] = m_bytes[i];
    return true;
  }
  const int v = hex_value(byte);
  if (v < 0 || m_chars == k_hex_chars) {
    m_in_frame = false;
    ++m_bad_frames;
    return false;
  }
  m_bytes[m_chars / 2] = static_cast<std::uint8_t>((m_bytes[m_chars / 2] << 4) | v);
  ++m_chars;
  return false;
}

}  // namespace reflow::fw
