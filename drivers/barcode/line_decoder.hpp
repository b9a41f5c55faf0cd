// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/drivers/key_decoder.hpp>

namespace agent::barcode {

/// Splits the byte stream of a scanner in serial mode (CDC-ACM, RS-232) into codes: CR, LF or
/// CRLF end a code, empty lines are ignored, NUL bytes are dropped (some adapters pad with
/// them); other bytes are kept as they are (GS1 codes carry GS, 0x1D). A line longer than
/// `max_line` bytes is discarded up to its terminator and counted in overlong(): it is a
/// misconfigured device or noise on the line, never a code. Not thread-safe.
class LineDecoder {
 public:
  explicit LineDecoder(std::size_t max_line = k_max_code_bytes) : m_max(max_line) {}

  /// Returns the codes completed by `bytes`, oldest first.
  std::vector<std::string> feed(std::string_view bytes);

  /// True while part of a line is buffered.
  bool pending() const { return !m_line.empty() || m_overlong; }
  /// Drops the buffered part of a line and returns it (the device went away, or a timeout).
  std::string drop();

  std::uint64_t overlong() const { return m_overlong_count; }

 private:
  std::size_t m_max;
  std::string m_line;
  bool m_overlong = false;
  std::uint64_t m_overlong_count = 0;
};

/// Size of one report of a scanner in "simple COM" HID mode on /dev/hidrawN.
inline constexpr std::size_t k_hidraw_report_bytes = 64;

/// Decodes the reports of a scanner in "simple COM" HID mode (docs/reference/drivers.md §5.2): byte
/// 0 is the number of data bytes that follow, the rest of the 64-byte report is NUL padding. The
/// data go through a LineDecoder (CR/LF end a code); a report that is not full (fewer than 63
/// data bytes) also ends the code when no terminator came, since scanners without a suffix send
/// each code in reports of their own. A report whose length byte exceeds what was read is counted
/// in malformed() and dropped together with the code it belongs to. Not thread-safe.
class HidrawDecoder {
 public:
  explicit HidrawDecoder(std::size_t max_code = k_max_code_bytes) : m_lines(max_code) {}

  /// `report`: what one read() of the hidraw node returned. Returns the completed codes.
  std::vector<std::string> feed(std::span<const std::uint8_t> report);

  bool pending() const { return m_lines.pending(); }
  std::string drop() { return m_lines.drop(); }

  std::uint64_t malformed() const { return m_malformed + m_lines.overlong(); }

 private:
  LineDecoder m_lines;
  std::uint64_t m_malformed = 0;
};

}  // namespace agent::barcode
