// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/env.hpp>

#include <sys/timex.h>

#include <condition_variable>
#include <mutex>

namespace agent {
namespace {

class RealEnv final : public Env {
 public:
  std::int64_t now_unix_ms() override {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
  }

  std::chrono::steady_clock::time_point steady_now() override {
    return std::chrono::steady_clock::now();
  }

  ClockSync clock_sync() override {
    // ntp_adjtime(2) with modes 0 only reads; STA_UNSYNC is set until a time daemon (chrony,
    // systemd-timesyncd) disciplines the clock. TIME_ERROR also means "not synchronised".
    timex tx{};
    int state = ::ntp_adjtime(&tx);
    if (state == -1 || state == TIME_ERROR || (tx.status & STA_UNSYNC)) return ClockSync::unsynced;
    return ClockSync::synced;
  }

  bool sleep_until(std::chrono::steady_clock::time_point deadline, std::stop_token stop) override {
    std::mutex mutex;
    std::condition_variable_any cv;
    std::unique_lock lock(mutex);
    // Returns true only when `stop` was requested.
    bool stopped = cv.wait_until(lock, stop, deadline, [] { return false; });
    return !stopped && !stop.stop_requested();
  }
};

}  // namespace

Env& Env::real() {
  static RealEnv env;
  return env;
}

struct FakeEnv::State {
  std::mutex mutex;
  std::condition_variable_any cv;
  std::int64_t unix_ms = 0;
  std::chrono::steady_clock::time_point steady{};
  ClockSync sync = ClockSync::synced;
  std::size_t sleepers = 0;
};

FakeEnv::FakeEnv(std::int64_t start_unix_ms) : m_state(std::make_shared<State>()) {
  m_state->unix_ms = start_unix_ms;
}

std::int64_t FakeEnv::now_unix_ms() {
  std::lock_guard lock(m_state->mutex);
  return m_state->unix_ms;
}

std::chrono::steady_clock::time_point FakeEnv::steady_now() {
  std::lock_guard lock(m_state->mutex);
  return m_state->steady;
}

ClockSync FakeEnv::clock_sync() {
  std::lock_guard lock(m_state->mutex);
  return m_state->sync;
}

bool FakeEnv::sleep_until(std::chrono::steady_clock::time_point deadline, std::stop_token stop) {
  std::unique_lock lock(m_state->mutex);
  ++m_state->sleepers;
  m_state->cv.notify_all();
  m_state->cv.wait(lock, stop, [&] { return m_state->steady >= deadline; });
  --m_state->sleepers;
  return !stop.stop_requested();
}

bool FakeEnv::wait_for_sleepers(std::size_t count) {
  std::unique_lock lock(m_state->mutex);
  return m_state->cv.wait_for(lock, std::chrono::seconds(30),
                              [&] { return m_state->sleepers >= count; });
}

void FakeEnv::advance_ms(std::int64_t ms) {
  {
    std::lock_guard lock(m_state->mutex);
    m_state->unix_ms += ms;
    m_state->steady += std::chrono::milliseconds(ms);
  }
  m_state->cv.notify_all();
}

void FakeEnv::set_unix_ms(std::int64_t unix_ms) {
  std::lock_guard lock(m_state->mutex);
  m_state->unix_ms = unix_ms;
}

void FakeEnv::set_clock_sync(ClockSync sync) {
  std::lock_guard lock(m_state->mutex);
  m_state->sync = sync;
}

}  // namespace agent
