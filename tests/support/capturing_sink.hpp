// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/device/event_sink.hpp>

namespace reflow_test {

/// An EventSink for driver tests: validates every submission as the agent does (an invalid one
/// is a test failure and is refused), records it and answers it with a Committed at once — or,
/// as a test sets up, holds the answers back (an agent that stops before committing), refuses
/// submissions (busy) or answers chosen calls with an error. Thread-safe.
class CapturingSink final : public agent::EventSink {
 public:
  struct Event {
    nlohmann::ordered_json fields;
    agent::EventSource source;
  };

  /// `hold_answers`: record each event but never answer it.
  explicit CapturingSink(bool hold_answers = false) : m_hold(hold_answers) {}

  agent::Status submit(nlohmann::ordered_json fields, agent::EventSource source,
                       agent::SubmitCallback done, agent::QueueFull) override;

  /// While set, submit() refuses with busy and records nothing.
  void set_refuse(bool refuse);
  /// Answers the submit call numbered `call` (0-based, counting every call) with a no_space
  /// error; that event is not recorded.
  void fail_call(std::size_t call);

  /// The recorded events, in order.
  std::vector<Event> events();
  /// The recorded events' fields (without their source), in order.
  std::vector<nlohmann::ordered_json> fields();
  /// Each recorded event as one golden-file line: its fields plus
  /// "source": {"driver", "instance", "ref"}.
  std::vector<nlohmann::ordered_json> lines();
  /// Waits (bounded: 30 s, a condition, not a timing) until `n` events are recorded; returns all.
  std::vector<Event> wait_for(std::size_t n);
  /// Waits (bounded) until submit() was called `n` times in all, refused calls included.
  bool wait_for_attempts(std::size_t n);

 private:
  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::vector<Event> m_events;
  std::vector<agent::SubmitCallback> m_held;
  std::set<std::size_t> m_fail;
  std::size_t m_attempts = 0;
  bool m_refuse = false;
  const bool m_hold;
};

}  // namespace reflow_test
