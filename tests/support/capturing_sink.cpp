// SPDX-License-Identifier: AGPL-3.0-or-later
#include "capturing_sink.hpp"

#include <chrono>

#include <gtest/gtest.h>

#include <reflow/core/event.hpp>

namespace reflow_test {

using agent::Committed;
using agent::ErrorCode;

agent::Status CapturingSink::submit(nlohmann::ordered_json fields, agent::EventSource source,
                                    agent::SubmitCallback done, agent::QueueFull) {
  if (agent::Status valid = agent::validate_submission(fields); !valid) {
    ADD_FAILURE() << "the driver submitted an invalid event: " << valid.error().message << "\n"
                  << fields.dump();
    return valid;
  }
  std::unique_lock lock(m_mutex);
  const std::size_t call = m_attempts++;
  if (m_refuse) {
    lock.unlock();
    m_changed.notify_all();
    return agent::fail(ErrorCode::busy, "queue full (test)");
  }
  if (m_fail.contains(call)) {
    lock.unlock();
    m_changed.notify_all();
    done(agent::fail(ErrorCode::no_space, "outbox quota full (test)"));
    return {};
  }
  m_events.push_back({std::move(fields), std::move(source)});
  const auto seq = static_cast<std::int64_t>(m_events.size());
  // Held, or answered at once (outside the lock, as the agent's writer does).
  agent::SubmitCallback answer_now;
  if (m_hold)
    m_held.push_back(std::move(done));
  else
    answer_now = std::move(done);
  lock.unlock();
  m_changed.notify_all();
  if (answer_now) answer_now(Committed{seq, "id"});
  return {};
}

void CapturingSink::set_refuse(bool refuse) {
  std::lock_guard lock(m_mutex);
  m_refuse = refuse;
}

void CapturingSink::fail_call(std::size_t call) {
  std::lock_guard lock(m_mutex);
  m_fail.insert(call);
}

std::vector<CapturingSink::Event> CapturingSink::events() {
  std::lock_guard lock(m_mutex);
  return m_events;
}

std::vector<nlohmann::ordered_json> CapturingSink::fields() {
  std::vector<nlohmann::ordered_json> fields;
  for (Event& event : events())
    fields.push_back(std::move(event.fields));
  return fields;
}

std::vector<nlohmann::ordered_json> CapturingSink::lines() {
  std::vector<nlohmann::ordered_json> lines;
  for (const Event& event : events()) {
    nlohmann::ordered_json line = event.fields;
    line["source"] = {{"driver", event.source.driver},
                      {"instance", event.source.instance},
                      {"ref", event.source.ref}};
    lines.push_back(std::move(line));
  }
  return lines;
}

std::vector<CapturingSink::Event> CapturingSink::wait_for(std::size_t n) {
  std::unique_lock lock(m_mutex);
  m_changed.wait_for(lock, std::chrono::seconds(30), [&] { return m_events.size() >= n; });
  return m_events;
}

bool CapturingSink::wait_for_attempts(std::size_t n) {
  std::unique_lock lock(m_mutex);
  return m_changed.wait_for(lock, std::chrono::seconds(30), [&] { return m_attempts >= n; });
}

}  // namespace reflow_test
