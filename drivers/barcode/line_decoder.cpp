// SPDX-License-Identifier: AGPL-3.0-or-later
#include "line_decoder.hpp"

#include <utility>

namespace agent::barcode {

std::vector<std::string> LineDecoder::feed(std::string_view bytes) {
  std::vector<std::string> codes;
  for (const char c : bytes) {
    if (c == '\r' || c == '\n') {
      if (!m_overlong && !m_line.empty()) codes.push_back(std::move(m_line));
      m_line.clear();
      m_overlong = false;
      continue;
    }
    if (c == '\0' || m_overlong) continue;
    if (m_line.size() >= m_max) {
      m_line.clear();
      m_overlong = true;
      ++m_overlong_count;
      continue;
    }
    m_line.push_back(c);
  }
  return codes;
}

std::string LineDecoder::drop() {
  m_overlong = false;
  return std::exchange(m_line, std::string());
}

std::vector<std::string> HidrawDecoder::feed(std::span<const std::uint8_t> report) {
  if (report.empty()) return {};
  const std::size_t length = report[0];
  if (length == 0) return {};
  if (length + 1 > report.size()) {
    ++m_malformed;
    m_lines.drop();
    return {};
  }
  const auto* data = reinterpret_cast<const char*>(report.data() + 1);
  std::vector<std::string> codes = m_lines.feed(std::string_view(data, length));
  if (length < k_hidraw_report_bytes - 1 && m_lines.pending()) {
    // The end of the code without a suffix: the same as a terminator.
    auto rest = m_lines.feed("\n");
    codes.insert(codes.end(), rest.begin(), rest.end());
  }
  return codes;
}

}  // namespace agent::barcode
