// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/logger.hpp>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

#include <reflow/core/env.hpp>
#include <reflow/core/text.hpp>
#include <reflow/core/units.hpp>

namespace agent {
namespace {

std::mutex g_write_mutex;

std::string_view level_name(LogLevel level) {
  switch (level) {
    case LogLevel::debug:
      return "DEBUG";
    case LogLevel::info:
      return "INFO";
    case LogLevel::warning:
      return "WARN";
    case LogLevel::error:
      return "ERROR";
  }
  return "?";
}

// syslog priorities (sd-daemon(3)): <7> debug, <6> info, <4> warning, <3> error.
int syslog_priority(LogLevel level) {
  switch (level) {
    case LogLevel::debug:
      return 7;
    case LogLevel::info:
      return 6;
    case LogLevel::warning:
      return 4;
    case LogLevel::error:
      return 3;
  }
  return 6;
}

}  // namespace

bool parse_log_level(std::string_view text, LogLevel& out) noexcept {
  if (text == "debug")
    out = LogLevel::debug;
  else if (text == "info")
    out = LogLevel::info;
  else if (text == "warning")
    out = LogLevel::warning;
  else if (text == "error")
    out = LogLevel::error;
  else
    return false;
  return true;
}

Logger::Logger(LogLevel level)
    : m_level(level), m_journal(std::getenv("JOURNAL_STREAM") != nullptr) {}

void Logger::log(LogLevel level, std::string_view component, std::string_view message) {
  if (!enabled(level)) return;
  // Messages quote what devices and peers sent; printable_text keeps any of it from starting a
  // forged line or driving the terminal that shows the log.
  const std::string text = printable_text(message);
  std::string line;
  if (m_journal) {
    line = fmt::format("<{}>{}: {}\n", syslog_priority(level), component, text);
  } else {
    line = fmt::format("{} {:<5} {}: {}\n", format_rfc3339_ms(Env::real().now_unix_ms()),
                       level_name(level), component, text);
  }
  std::lock_guard lock(g_write_mutex);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace agent
