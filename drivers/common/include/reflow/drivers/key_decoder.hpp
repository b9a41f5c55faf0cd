// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace agent {

/// The longest code accepted (bytes); a QR code holds at most 7089 digits or 2953 bytes.
inline constexpr std::size_t k_max_code_bytes = 8192;

/// One `struct input_event` (linux/input.h) as the seam carries it: `time_us` is the kernel's
/// timestamp in microseconds (`input_event_sec * 1e6 + input_event_usec`; its epoch does not
/// matter, only differences are used).
struct KeyEvent {
  std::int64_t time_us = 0;
  std::uint16_t type = 0;
  std::uint16_t code = 0;
  std::int32_t value = 0;
};

/// Turns the key events of a device in keyboard-emulation mode (a barcode scanner, a badge
/// reader) into codes, on a US layout
/// (docs/reference/drivers.md §5.1): only EV_KEY counts; a press (1) types a character, an
/// autorepeat (2) of a character key types it again (what a console would show) but repeats nothing
/// else, a release (0) only matters for Shift. Shift and CapsLock give upper case and symbols;
/// keypad digits and operators type their characters whatever NumLock says. KEY_ENTER, KEY_KPENTER
/// and KEY_TAB end a code; an empty code is ignored.
///
/// A pause longer than the inter-key timeout between two key events (by their timestamps) drops
/// the fragment typed before it (counted in fragments()): a half-read code is never reported. A
/// key outside the table (F1, Backspace, a Ctrl/Alt combination …) is counted in malformed() and
/// spoils the code being typed, which is then dropped at its terminator. SYN_DROPPED (the
/// kernel's buffer overflowed) drops the fragment; the resync events that follow only update
/// Shift. Not thread-safe.
class KeyDecoder {
 public:
  explicit KeyDecoder(std::chrono::milliseconds inter_key_timeout);

  /// Feeds one event; returns the code when this event ended one.
  std::optional<std::string> feed(const KeyEvent& event);

  /// True while a code is being typed (some characters, no terminator yet).
  bool pending() const { return !m_text.empty() || m_spoiled; }

  /// Drops the code being typed, counting a fragment when there was one (the reader calls it
  /// when no key came for the inter-key timeout). Returns whether something was dropped.
  bool drop_fragment();

  /// The device went away: drops the fragment (counted) and forgets Shift, Ctrl and Alt
  /// (CapsLock too: a replugged scanner starts with it off).
  void reset();

  std::uint64_t fragments() const { return m_fragments; }
  std::uint64_t malformed() const { return m_malformed; }
  /// What the last dropped fragment or spoiled code held, for the log.
  const std::string& last_dropped() const { return m_last_dropped; }
  /// The last key that was not in the table, for the log ("KEY_F1 (59)").
  const std::string& last_unknown() const { return m_last_unknown; }

 private:
  std::optional<std::string> press(std::uint16_t code, bool repeat);
  void spoil(std::uint16_t code);

  std::int64_t m_timeout_us;
  std::string m_text;
  bool m_spoiled = false;
  bool m_left_shift = false;
  bool m_right_shift = false;
  bool m_caps = false;
  unsigned m_held_other = 0;  // bits of the Ctrl, Alt and Meta keys held down
  bool m_resync = false;
  std::optional<std::int64_t> m_last_us;
  std::uint64_t m_fragments = 0;
  std::uint64_t m_malformed = 0;
  std::string m_last_dropped;
  std::string m_last_unknown;
};

}  // namespace agent
