// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/text.hpp>

#include <algorithm>
#include <cstdint>

#include <fmt/format.h>

namespace agent {
namespace {

// The length of the valid UTF-8 sequence at the start of `text` (RFC 3629 §4: no overlong
// forms, no surrogates, nothing above U+10FFFF), or 0 when the first byte does not start one.
std::size_t utf8_sequence_length(std::string_view text) {
  const auto byte = [&](std::size_t i) { return static_cast<std::uint8_t>(text[i]); };
  const std::uint8_t b0 = byte(0);
  if (b0 < 0x80) return 1;
  std::size_t length = 0;
  std::uint8_t low = 0x80;
  std::uint8_t high = 0xbf;
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    length = 2;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    length = 3;
    if (b0 == 0xe0) low = 0xa0;   // no overlong forms
    if (b0 == 0xed) high = 0x9f;  // no surrogates
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    length = 4;
    if (b0 == 0xf0) low = 0x90;   // no overlong forms
    if (b0 == 0xf4) high = 0x8f;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (text.size() < length) return 0;
  if (byte(1) < low || byte(1) > high) return 0;
  for (std::size_t i = 2; i < length; ++i) {
    if (byte(i) < 0x80 || byte(i) > 0xbf) return 0;
  }
  return length;
}

// printable_text, optionally keeping TAB, LF and CR raw (a quoted CSV field may hold them).
std::string escape_controls(std::string_view text, bool keep_line_breaks) {
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const auto b = static_cast<std::uint8_t>(text[i]);
    const std::size_t length = utf8_sequence_length(text.substr(i));
    const bool c1 = length == 2 && b == 0xc2 && static_cast<std::uint8_t>(text[i + 1]) < 0xa0;
    const bool line_break = b == '\t' || b == '\n' || b == '\r';
    if (keep_line_breaks && line_break) {
      out += static_cast<char>(b);
      ++i;
    } else if (length == 0 || b < 0x20 || b == 0x7f) {
      out += fmt::format("\\x{:02x}", b);
      ++i;
    } else if (c1) {
      out += fmt::format("\\xc2\\x{:02x}", static_cast<std::uint8_t>(text[i + 1]));
      i += 2;
    } else {
      if (b == '\\') out += '\\';
      out.append(text.substr(i, length));
      i += length;
    }
  }
  return out;
}

}  // namespace

std::string printable_text(std::string_view text) {
  return escape_controls(text, /*keep_line_breaks=*/false);
}

std::string csv_field(std::string_view value) {
  const bool formula = !value.empty() && (value[0] == '=' || value[0] == '+' || value[0] == '-' ||
                                          value[0] == '@' || value[0] == '\t' || value[0] == '\r');
  const std::string text = (formula ? "'" : "") + escape_controls(value, /*keep_line_breaks=*/true);
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

std::size_t find_control_character(std::string_view text, bool allow_tab_lf) noexcept {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte < 0x20) {
      if (allow_tab_lf && (byte == '\t' || byte == '\n')) continue;
      return i;
    }
    if (byte == 0x7f) return i;
    if (byte == 0xc2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) < 0xa0 &&
        static_cast<unsigned char>(text[i + 1]) >= 0x80)
      return i;
  }
  return std::string_view::npos;
}

std::string shortened_text(std::string_view text, std::size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  std::size_t cut = max_bytes;
  // A continuation byte (10xxxxxx) is never the start of a character.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80)
    --cut;
  return std::string(text.substr(0, cut)) + "…";
}

std::string aligned_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (std::size_t i = 0; i < row.size(); ++i)
      widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i)
      out += i + 1 < row.size() ? fmt::format("{:<{}}  ", row[i], widths[i]) : row[i];
    out += '\n';
  }
  return out;
}

}  // namespace agent
