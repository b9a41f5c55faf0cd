// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>
#include <utility>

namespace agent {

enum class LogLevel { debug = 0, info = 1, warning = 2, error = 3 };

/// Parses "debug", "info", "warning" or "error". Returns false on anything else.
bool parse_log_level(std::string_view text, LogLevel& out) noexcept;

/// Writes one line per message to stderr. Under systemd (JOURNAL_STREAM set) each line starts
/// with a syslog priority prefix (`<6>`, sd-daemon(3)) instead of a timestamp, so journald keeps
/// the level. Thread-safe: lines from different threads never interleave.
class Logger {
 public:
  explicit Logger(LogLevel level = LogLevel::info);

  void set_level(LogLevel level) noexcept { m_level = level; }
  LogLevel level() const noexcept { return m_level; }
  bool enabled(LogLevel level) const noexcept { return level >= m_level; }

  /// `component` names the stage ("writer", "forwarder", "driver sim/demo" …).
  void log(LogLevel level, std::string_view component, std::string_view message);

  template <typename... Args>
  void debug(std::string_view component, fmt::format_string<Args...> fmt, Args&&... args) {
    if (enabled(LogLevel::debug))
      log(LogLevel::debug, component, fmt::format(fmt, std::forward<Args>(args)...));
  }
  template <typename... Args>
  void info(std::string_view component, fmt::format_string<Args...> fmt, Args&&... args) {
    if (enabled(LogLevel::info))
      log(LogLevel::info, component, fmt::format(fmt, std::forward<Args>(args)...));
  }
  template <typename... Args>
  void warning(std::string_view component, fmt::format_string<Args...> fmt, Args&&... args) {
    if (enabled(LogLevel::warning))
      log(LogLevel::warning, component, fmt::format(fmt, std::forward<Args>(args)...));
  }
  template <typename... Args>
  void error(std::string_view component, fmt::format_string<Args...> fmt, Args&&... args) {
    if (enabled(LogLevel::error))
      log(LogLevel::error, component, fmt::format(fmt, std::forward<Args>(args)...));
  }

 private:
  LogLevel m_level;
  bool m_journal;
};

}  // namespace agent
