// SPDX-License-Identifier: AGPL-3.0-or-later
// The board's digital inputs, without hardware: a debounced "running" contact, an S0 pulse counter
// and the EM4100 badge reader's serial frames (RDM6300). The board feeds levels with their time
// (board ms) or received bytes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace reflow::fw {

/// A change of a debounced input.
enum class Edge : std::uint8_t { none, rising, falling };

/// Debounces a contact: the output takes a new level once the raw input has held it for
/// `debounce_ms` (contact bounce lasts a few ms). The edge's time is when the raw input first took
/// the level that then held, so a session from the running input starts at the real switch-on.
/// Starts low. Not thread-safe.
class Debouncer {
 public:
  explicit Debouncer(std::uint16_t debounce_ms = 0) : m_debounce_ms(debounce_ms) {}
  void set_debounce_ms(std::uint16_t debounce_ms) { m_debounce_ms = debounce_ms; }
  /// The raw level at board time `now_ms` (non-decreasing). Returns the edge it completed, if any.
  Edge feed(bool level, std::uint64_t now_ms);
  bool level() const { return m_stable; }
  /// Board time of the last edge (when the raw level changed to it).
  std::uint64_t edge_ms() const { return m_edge_ms; }

 private:
  std::uint16_t m_debounce_ms;
  bool m_stable = false;
  bool m_raw = false;
  std::uint64_t m_raw_since_ms = 0;
  std::uint64_t m_edge_ms = 0;
};

/// Counts S0 pulses (EN 62053-31, formerly DIN 43864: an energy meter closes its opto output for at
/// least 30 ms per impulse; the meter states impulses per kWh). A pulse counts when the input
/// goes inactive after having been active for at least `min_pulse_ms`, so shorter glitches count
/// nothing and a pulse counts once however long it lasts. Not thread-safe.
class S0Counter {
 public:
  explicit S0Counter(std::uint16_t min_pulse_ms = 30) : m_min_pulse_ms(min_pulse_ms) {}
  void set_min_pulse_ms(std::uint16_t min_pulse_ms) { m_min_pulse_ms = min_pulse_ms; }
  /// The input's level (true: active) at board time `now_ms` (non-decreasing). True when this
  /// sample ended a pulse that counts.
  bool feed(bool active, std::uint64_t now_ms);
  /// Pulses since construction (LINK §4.5 `total`).
  std::uint32_t total() const { return m_total; }
  /// Board time the last counted pulse began.
  std::uint64_t last_pulse_ms() const { return m_last_pulse_ms; }

 private:
  std::uint16_t m_min_pulse_ms;
  bool m_active = false;
  std::uint64_t m_active_since_ms = 0;
  std::uint64_t m_last_pulse_ms = 0;
  std::uint32_t m_total = 0;
};

/// An EM4100 tag's 40 data bits as the reader sends them: version/customer byte, then 32 bits.
using TagId = std::array<std::uint8_t, 5>;

/// Parses the frames of an RDM6300 / RDM630 125 kHz reader (9600 baud 8N1). Each frame is 14
/// bytes: 0x02 (STX), 10 ASCII hex characters (the 5 data bytes), 2 ASCII hex characters (the
/// checksum: XOR of the 5 data bytes), 0x03 (ETX) — "RDM630/RDM6300 125KHz card reader mini-module"
/// datasheet (ITEAD Studio), "Data format" and "Checksum". Hex digits of either case are
/// accepted. A frame with a bad checksum, a non-hex character or the wrong length is dropped and
/// counted; an STX always starts a new frame (resynchronisation). Not thread-safe.
class Em4100Parser {
 public:
  /// Takes one received byte; true when it completed a valid frame, whose id is then tag().
  bool feed(std::uint8_t byte);
  const TagId& tag() const { return m_tag; }
  /// Frames dropped (bad checksum, bad character, wrong length).
  std::uint32_t bad_frames() const { return m_bad_frames; }

 private:
  static constexpr std::size_t k_hex_chars = 12;  // 10 data + 2 checksum
  std::array<std::uint8_t, k_hex_chars / 2> m_bytes{};
  std::size_t m_chars = 0;
  bool m_in_frame = false;
  TagId m_tag{};
  std::uint32_t m_bad_frames = 0;
};

}  // namespace reflow::fw
