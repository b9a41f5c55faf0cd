// SPDX-License-Identifier: AGPL-3.0-or-later
#include "replay_key_source.hpp"

#include <libevdev/libevdev.h>

#include <fmt/format.h>

#include <charconv>
#include <fstream>
#include <sstream>

namespace agent {
namespace {

bool parse_int(std::string_view text, long long& out) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

}  // namespace

Result<std::vector<KeyEvent>> parse_key_recording(std::string_view text, std::string_view name) {
  std::vector<KeyEvent> events;
  std::istringstream in{std::string(text)};
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty() || line.starts_with('#')) continue;
    std::istringstream fields(line);
    std::string time, type, code, value;
    const auto bad = [&](std::string_view what) {
      return fail(ErrorCode::corruption,
                  fmt::format("{}:{}: {}; expected `sec.usec type code value`, got \"{}\"", name,
                              number, what, line));
    };
    if (!(fields >> time >> type >> code >> value)) return bad("too few fields");
    const auto dot = time.find('.');
    long long sec = 0, usec = 0, number_value = 0;
    if (dot == std::string::npos || time.size() - dot - 1 != 6 ||
        !parse_int(std::string_view(time).substr(0, dot), sec) ||
        !parse_int(std::string_view(time).substr(dot + 1), usec))
      return bad("the time is not sec.usec (6 digits)");
    long long type_number = 0, code_number = 0;
    if (!parse_int(type, type_number)) type_number = libevdev_event_type_from_name(type.c_str());
    if (type_number < 0) return bad("unknown event type");
    if (!parse_int(code, code_number))
      code_number = libevdev_event_code_from_name(static_cast<unsigned>(type_number), code.c_str());
    if (code_number < 0) return bad("unknown event code");
    if (!parse_int(value, number_value)) return bad("the value is not a number");
    events.push_back(KeyEvent{sec * 1'000'000 + usec, static_cast<std::uint16_t>(type_number),
                              static_cast<std::uint16_t>(code_number),
                              static_cast<std::int32_t>(number_value)});
  }
  return events;
}

Result<std::vector<KeyEvent>> load_key_recording(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) return fail(ErrorCode::io, fmt::format("cannot read {}", file.string()));
  std::stringstream text;
  text << in.rdbuf();
  return parse_key_recording(text.str(), file.string());
}

ReplayKeySource::ReplayKeySource(std::vector<KeyEvent> events, Env& env, bool unplug_at_end,
                                 std::atomic<std::size_t>* delivered)
    : m_events(std::move(events)),
      m_env(env),
      m_unplug_at_end(unplug_at_end),
      m_anchor(env.steady_now()),
      m_delivered(delivered) {}

std::chrono::steady_clock::time_point ReplayKeySource::due_at(std::size_t index) const {
  return m_anchor + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::microseconds(m_events[index].time_us - m_events[0].time_us));
}

std::vector<KeyEvent> ReplayKeySource::due() {
  std::vector<KeyEvent> events;
  const auto now = m_env.steady_now();
  while (m_next < m_events.size() && due_at(m_next) <= now)
    events.push_back(m_events[m_next++]);
  if (m_delivered) *m_delivered += events.size();
  return events;
}

Result<std::vector<KeyEvent>> ReplayKeySource::wait(std::chrono::steady_clock::time_point deadline,
                                                    std::stop_token stop) {
  if (auto events = due(); !events.empty()) return events;
  if (m_next == m_events.size() && m_unplug_at_end)
    return fail(ErrorCode::device_unavailable, "replay: the recording is over (unplugged)");
  auto wake = deadline;
  if (m_next < m_events.size()) wake = std::min(wake, due_at(m_next));
  m_env.sleep_until(wake, stop);
  return due();
}

}  // namespace agent
