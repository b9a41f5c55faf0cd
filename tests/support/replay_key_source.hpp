// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <atomic>
#include <filesystem>
#include <memory>
#include <string_view>
#include <vector>

#include <reflow/core/env.hpp>

#include <reflow/drivers/evdev_source.hpp>

namespace agent {

/// Reads a recorded `input_event` stream: one event per line, `sec.usec type code value`, type
/// and code as linux/input.h names (`EV_KEY KEY_A`, as `evtest` prints them) or numbers; blank
/// lines and `#` comments are skipped. Errors: io (unreadable), corruption (a line that is not an
/// event; the message names file and line).
Result<std::vector<KeyEvent>> load_key_recording(const std::filesystem::path& file);
/// The same from text; `name` is used in messages.
Result<std::vector<KeyEvent>> parse_key_recording(std::string_view text, std::string_view name);

/// The test KeyEventSource: replays a recording on the Env's steady clock, the first event at
/// the moment the source is made and the others at their recorded distance from it (their
/// timestamps stay as recorded). wait() sleeps through Env::sleep_until, so with FakeEnv the
/// test's clock decides when events arrive. When the recording is over it either waits forever
/// or, with `unplug_at_end`, reports the device gone. `delivered`, when given, counts the events
/// handed out, so a test knows the reader has taken them in (and left the sleep it was in).
class ReplayKeySource final : public KeyEventSource {
 public:
  ReplayKeySource(std::vector<KeyEvent> events, Env& env, bool unplug_at_end = false,
                  std::atomic<std::size_t>* delivered = nullptr);

  Result<std::vector<KeyEvent>> wait(std::chrono::steady_clock::time_point deadline,
                                     std::stop_token stop) override;

 private:
  std::chrono::steady_clock::time_point due_at(std::size_t index) const;
  std::vector<KeyEvent> due();

  std::vector<KeyEvent> m_events;
  Env& m_env;
  bool m_unplug_at_end;
  std::chrono::steady_clock::time_point m_anchor;
  std::size_t m_next = 0;
  std::atomic<std::size_t>* m_delivered;
};

}  // namespace agent
