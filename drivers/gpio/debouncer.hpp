// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>

#include "edge_source.hpp"

namespace agent::gpio {

/// Software debounce on edge timestamps (libgpiod v1 has none): a new level counts once it has
/// held for `debounce_ns` without an edge. A bouncing contact therefore gives one transition, dated
/// at the edge that began the level that held. Times are steady-clock nanoseconds. Not
/// thread-safe; the driver's thread owns it.
class Debouncer {
 public:
  struct Transition {
    bool active = false;
    std::int64_t at_ns = 0;  ///< timestamp of the edge that began the level
  };

  explicit Debouncer(std::int64_t debounce_ns = 0) : m_debounce_ns(debounce_ns) {}

  /// Takes `active` as the confirmed level, with nothing pending (a line just opened).
  void reset(bool active) {
    m_stable = m_raw = active;
    m_raw_since_ns = 0;
  }

  bool stable() const { return m_stable; }
  bool raw() const { return m_raw; }

  /// When the pending level is confirmed if no edge comes first; nullopt when nothing is pending.
  std::optional<std::int64_t> confirm_at() const {
    if (m_raw == m_stable) return std::nullopt;
    return m_raw_since_ns + m_debounce_ns;
  }

  /// Records an edge. Call settle(edge.timestamp_ns) first, so that a level which held until this
  /// edge is confirmed. Every edge restarts the hold time, even one that repeats the level: the
  /// kernel's FIFO may have dropped the edge between them.
  void feed(const Edge& edge) {
    m_raw = edge.kind == Edge::Kind::rising;
    m_raw_since_ns = std::max(edge.timestamp_ns, m_raw_since_ns);
  }

  /// The confirmed transition when the pending level has held `debounce_ns` by `now_ns`.
  std::optional<Transition> settle(std::int64_t now_ns) {
    auto due = confirm_at();
    if (!due || now_ns < *due) return std::nullopt;
    m_stable = m_raw;
    return Transition{m_stable, m_raw_since_ns};
  }

 private:
  std::int64_t m_debounce_ns;
  bool m_stable = false;
  bool m_raw = false;
  std::int64_t m_raw_since_ns = 0;
};

}  // namespace agent::gpio
