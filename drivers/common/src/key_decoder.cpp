// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/key_decoder.hpp>

#include <fmt/format.h>
#include <libevdev/libevdev.h>
#include <linux/input-event-codes.h>

#include <array>
#include <utility>

namespace agent {
namespace {

// Unshifted and shifted character of each key on a US layout (0: not a character key).
struct KeyChars {
  char plain = 0;
  char shifted = 0;
};

constexpr std::array<KeyChars, KEY_KPDOT + 1> make_main_keys() {
  std::array<KeyChars, KEY_KPDOT + 1> t{};
  const char* digits = "1234567890";
  const char* digit_symbols = "!@#$%^&*()";
  for (int i = 0; i < 10; ++i)
    t[KEY_1 + i] = {digits[i], digit_symbols[i]};
  t[KEY_MINUS] = {'-', '_'};
  t[KEY_EQUAL] = {'=', '+'};
  t[KEY_LEFTBRACE] = {'[', '{'};
  t[KEY_RIGHTBRACE] = {']', '}'};
  t[KEY_SEMICOLON] = {';', ':'};
  t[KEY_APOSTROPHE] = {'\'', '"'};
  t[KEY_GRAVE] = {'`', '~'};
  t[KEY_BACKSLASH] = {'\\', '|'};
  t[KEY_COMMA] = {',', '<'};
  t[KEY_DOT] = {'.', '>'};
  t[KEY_SLASH] = {'/', '?'};
  t[KEY_SPACE] = {' ', ' '};
  // Keypad keys type the same with or without Shift; scanners in "keypad" mode assume NumLock on.
  t[KEY_KPASTERISK] = {'*', '*'};
  t[KEY_KPMINUS] = {'-', '-'};
  t[KEY_KPPLUS] = {'+', '+'};
  t[KEY_KPDOT] = {'.', '.'};
  const std::pair<int, char> keypad[] = {
      {KEY_KP0, '0'}, {KEY_KP1, '1'}, {KEY_KP2, '2'}, {KEY_KP3, '3'}, {KEY_KP4, '4'},
      {KEY_KP5, '5'}, {KEY_KP6, '6'}, {KEY_KP7, '7'}, {KEY_KP8, '8'}, {KEY_KP9, '9'}};
  for (const auto& [code, c] : keypad)
    t[code] = {c, c};
  return t;
}

constexpr auto k_main_keys = make_main_keys();

// Letters by key code, in keyboard rows: KEY_Q..KEY_P, KEY_A..KEY_L, KEY_Z..KEY_M.
char letter(std::uint16_t code) {
  if (code >= KEY_Q && code <= KEY_P) return "qwertyuiop"[code - KEY_Q];
  if (code >= KEY_A && code <= KEY_L) return "asdfghjkl"[code - KEY_A];
  if (code >= KEY_Z && code <= KEY_M) return "zxcvbnm"[code - KEY_Z];
  return 0;
}

unsigned other_modifier_bit(std::uint16_t code) {
  switch (code) {
    case KEY_LEFTCTRL:
      return 1u << 0;
    case KEY_RIGHTCTRL:
      return 1u << 1;
    case KEY_LEFTALT:
      return 1u << 2;
    case KEY_RIGHTALT:
      return 1u << 3;
    case KEY_LEFTMETA:
      return 1u << 4;
    case KEY_RIGHTMETA:
      return 1u << 5;
    default:
      return 0;
  }
}

bool is_terminator(std::uint16_t code) {
  return code == KEY_ENTER || code == KEY_KPENTER || code == KEY_TAB;
}

}  // namespace

KeyDecoder::KeyDecoder(std::chrono::milliseconds inter_key_timeout)
    : m_timeout_us(
          std::chrono::duration_cast<std::chrono::microseconds>(inter_key_timeout).count()) {}

bool KeyDecoder::drop_fragment() {
  if (!pending()) return false;
  m_last_dropped = m_text;
  m_text.clear();
  // A spoiled code was counted as malformed already; count it once.
  if (!m_spoiled) ++m_fragments;
  m_spoiled = false;
  return true;
}

void KeyDecoder::reset() {
  drop_fragment();
  m_left_shift = m_right_shift = m_caps = false;
  m_held_other = 0;
  m_resync = false;
  m_last_us.reset();
}

void KeyDecoder::spoil(std::uint16_t code) {
  ++m_malformed;
  const char* name = libevdev_event_code_get_name(EV_KEY, code);
  m_last_unknown = fmt::format("{} ({})", name ? name : "unknown key", code);
  m_spoiled = true;
}

std::optional<std::string> KeyDecoder::feed(const KeyEvent& event) {
  if (event.type == EV_SYN) {
    if (event.code == SYN_DROPPED) {
      drop_fragment();
      m_resync = true;
    } else if (event.code == SYN_REPORT) {
      m_resync = false;
    }
    return std::nullopt;
  }
  if (event.type != EV_KEY) return std::nullopt;

  // Timestamps only ever go forward on CLOCK_MONOTONIC; a negative gap counts as none. The gap is
  // taken in unsigned arithmetic: the difference of two far-apart timestamps overflows int64.
  if (m_last_us && pending() && event.time_us > *m_last_us &&
      static_cast<std::uint64_t>(event.time_us) - static_cast<std::uint64_t>(*m_last_us) >
          static_cast<std::uint64_t>(m_timeout_us))
    drop_fragment();
  m_last_us = event.time_us;

  const std::uint16_t code = event.code;
  const bool down = event.value != 0;
  if (code == KEY_LEFTSHIFT) {
    m_left_shift = down;
    return std::nullopt;
  }
  if (code == KEY_RIGHTSHIFT) {
    m_right_shift = down;
    return std::nullopt;
  }
  if (const unsigned bit = other_modifier_bit(code)) {
    m_held_other = down ? (m_held_other | bit) : (m_held_other & ~bit);
    return std::nullopt;
  }
  // The resync after SYN_DROPPED replays key state, not typing.
  if (m_resync || event.value == 0) return std::nullopt;
  return press(code, event.value == 2);
}

std::optional<std::string> KeyDecoder::press(std::uint16_t code, bool repeat) {
  if (code == KEY_CAPSLOCK) {
    if (!repeat) m_caps = !m_caps;
    return std::nullopt;
  }
  // NumLock and ScrollLock change nothing here: keypad keys always type their characters.
  if (code == KEY_NUMLOCK || code == KEY_SCROLLLOCK) return std::nullopt;
  if (is_terminator(code)) {
    if (repeat) return std::nullopt;
    if (m_spoiled) {
      m_last_dropped = m_text;
      m_text.clear();
      m_spoiled = false;
      return std::nullopt;
    }
    if (m_text.empty()) return std::nullopt;
    return std::exchange(m_text, std::string());
  }

  const bool shift = m_left_shift || m_right_shift;
  char c = letter(code);
  if (c != 0) {
    if (shift != m_caps) c = static_cast<char>(c - 'a' + 'A');
  } else if (code < k_main_keys.size() && k_main_keys[code].plain != 0) {
    c = shift ? k_main_keys[code].shifted : k_main_keys[code].plain;
  } else if (code == KEY_KPSLASH) {
    c = '/';
  }
  if (c == 0 || m_held_other != 0) {
    spoil(code);
    return std::nullopt;
  }
  if (m_text.size() >= k_max_code_bytes) {
    if (!m_spoiled) spoil(code);
    return std::nullopt;
  }
  m_text.push_back(c);
  return std::nullopt;
}

}  // namespace agent
