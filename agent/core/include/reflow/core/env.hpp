// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <utility>

namespace agent {

/// Whether the kernel says the system clock is synchronised (PROTOCOL §4 `clock`).
enum class ClockSync { synced, unsynced };

/// Everything that reads time or waits for it goes through an Env (LevelDB
/// `include/leveldb/env.h`), so tests can drive time by hand. Implementations are thread-safe.
class Env {
 public:
  virtual ~Env() = default;

  /// Wall-clock time, milliseconds since the Unix epoch (UTC). May jump backwards.
  virtual std::int64_t now_unix_ms() = 0;

  /// A monotonic clock for timeouts and intervals; never jumps. Unit: the steady clock's.
  virtual std::chrono::steady_clock::time_point steady_now() = 0;

  /// The kernel's synchronisation state: `ntp_adjtime(2)` with STA_UNSYNC clear means synced.
  virtual ClockSync clock_sync() = 0;

  /// Waits until the steady clock reaches `deadline` or `stop` is requested, whichever is first.
  /// Returns false when woken by `stop`. Every pause in the agent goes through here.
  virtual bool sleep_until(std::chrono::steady_clock::time_point deadline,
                           std::stop_token stop) = 0;

  bool sleep_for(std::chrono::milliseconds duration, std::stop_token stop) {
    return sleep_until(steady_now() + duration, std::move(stop));
  }

  /// The process-wide real Env. Never null; lives until exit.
  static Env& real();
};

/// An Env for tests: wall clock and steady clock advance only when the test says so.
class FakeEnv final : public Env {
 public:
  explicit FakeEnv(std::int64_t start_unix_ms = 1'767'225'600'000 /* 2026-01-01T00:00:00Z */);

  std::int64_t now_unix_ms() override;
  std::chrono::steady_clock::time_point steady_now() override;
  ClockSync clock_sync() override;
  /// Returns when a test's advance_ms() reaches `deadline`, or when `stop` is requested.
  bool sleep_until(std::chrono::steady_clock::time_point deadline, std::stop_token stop) override;

  /// Moves both clocks forward by `ms` milliseconds.
  void advance_ms(std::int64_t ms);
  /// Sets the wall clock alone (to simulate a Raspberry Pi booting without an RTC).
  void set_unix_ms(std::int64_t unix_ms);
  void set_clock_sync(ClockSync sync);
  /// Blocks until at least `count` threads wait in sleep_until(), so that a test advances the
  /// clock only after the code under test has taken its deadline. Gives up after 30 s (real time)
  /// and returns false.
  bool wait_for_sleepers(std::size_t count);

 private:
  struct State;
  std::shared_ptr<State> m_state;
};

}  // namespace agent
