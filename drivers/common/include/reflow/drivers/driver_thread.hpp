// SPDX-License-Identifier: AGPL-3.0-or-later
// The start/stop/health scaffolding of a driver that works on a thread of its own (sim, gpio,
// moonraker, octoprint, and the barcode and scale readers the station embeds).
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/result.hpp>

namespace agent {

/// A driver's thread and its health. The thread is started by start() and stopped and joined by
/// stop(); the health is updated from the driver's thread and read by health() from any other
/// (`reflow-agent status`). `Health` is DriverHealth or a reader's own health struct
/// (ScaleHealth, ScannerHealth): a copyable struct with `state`, `errors`, `last_error` and
/// `last_error_unix_ms`.
///
/// Declare it as the driver's last member: members are destroyed in reverse order, so the thread
/// is then joined while everything it uses is still alive. health(), update(), set_state() and
/// note_error() are thread-safe; start() and stop() are for the thread that owns the driver.
template <typename Health>
class DriverThread {
 public:
  explicit DriverThread(Health initial = {}) : m_health(std::move(initial)) {}
  ~DriverThread() { stop(); }
  DriverThread(const DriverThread&) = delete;
  DriverThread& operator=(const DriverThread&) = delete;

  /// True between start() and stop().
  bool running() const noexcept { return m_thread.joinable(); }

  /// Runs `body` on a new thread; `body` returns when its stop_token is stopped. Errors: internal
  /// when the thread cannot be created (the message names `what`).
  Status start(std::string_view what, std::function<void(std::stop_token)> body) {
    try {
      m_thread = std::jthread(std::move(body));
    } catch (const std::exception& e) {
      return fail(ErrorCode::internal, fmt::format("cannot start {}'s thread: {}", what, e.what()));
    }
    return {};
  }

  /// Asks the thread to stop and joins it. Does nothing when it is not running; it can be
  /// started again afterwards.
  void stop() {
    if (!m_thread.joinable()) return;
    m_thread.request_stop();
    m_thread.join();
    m_thread = std::jthread();
  }

  /// A copy of the health, as it is now.
  Health health() const {
    std::lock_guard lock(m_mutex);
    return m_health;
  }

  /// Calls `change(Health&)` with the health locked.
  template <typename Change>
  void update(Change&& change) {
    std::lock_guard lock(m_mutex);
    std::forward<Change>(change)(m_health);
  }

  /// The short state for people ("polling", "waiting for device" …).
  void set_state(std::string state) {
    update([&](Health& h) { h.state = std::move(state); });
  }

  /// Counts one error and keeps it as the last one, at `now_unix_ms`.
  void note_error(std::string message, std::int64_t now_unix_ms) {
    update([&](Health& h) {
      ++h.errors;
      h.last_error = std::move(message);
      h.last_error_unix_ms = now_unix_ms;
    });
  }

 private:
  mutable std::mutex m_mutex;
  Health m_health;
  std::jthread m_thread;
};

}  // namespace agent
