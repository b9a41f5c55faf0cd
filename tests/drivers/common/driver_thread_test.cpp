// SPDX-License-Identifier: AGPL-3.0-or-later
// The start/stop/health scaffolding drivers share (reflow/drivers/driver_thread.hpp).
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <stop_token>

#include <gtest/gtest.h>

#include <reflow/device/driver.hpp>
#include <reflow/drivers/driver_thread.hpp>

namespace agent {
namespace {

TEST(DriverThreadTest, StopEndsTheBodyAndJoinsAndItStartsAgain) {
  DriverThread<DriverHealth> worker;
  EXPECT_FALSE(worker.running());
  std::atomic<int> runs = 0;
  auto body = [&](std::stop_token stop) {
    ++runs;
    std::mutex mutex;
    std::condition_variable_any never;
    std::unique_lock lock(mutex);
    never.wait(lock, stop, [] { return false; });  // returns once stop is requested
  };
  ASSERT_TRUE(worker.start("test", body));
  EXPECT_TRUE(worker.running());
  worker.stop();  // would hang for ever if the body did not see the stop request
  EXPECT_FALSE(worker.running());
  EXPECT_EQ(runs, 1);
  ASSERT_TRUE(worker.start("test", body));
  worker.stop();
  EXPECT_EQ(runs, 2);
  worker.stop();  // a second stop is harmless
}

TEST(DriverThreadTest, HealthIsUpdatedUnderItsLockAndCopiedOut) {
  DriverThread<DriverHealth> worker;
  worker.set_state("polling");
  worker.update([](DriverHealth& h) { h.events += 2; });
  worker.note_error("printer unreachable", 1'700'000'000'000);
  const DriverHealth health = worker.health();
  EXPECT_EQ(health.state, "polling");
  EXPECT_EQ(health.events, 2u);
  EXPECT_EQ(health.errors, 1u);
  EXPECT_EQ(health.last_error, "printer unreachable");
  EXPECT_EQ(health.last_error_unix_ms, 1'700'000'000'000);
}

TEST(DriverThreadTest, TheBodyUpdatesHealthThatAnotherThreadReads) {
  DriverThread<DriverHealth> worker;
  ASSERT_TRUE(worker.start(
      "test", [&](std::stop_token) { worker.update([](DriverHealth& h) { ++h.events; }); }));
  worker.stop();  // joins: the body's update is visible now
  EXPECT_EQ(worker.health().events, 1u);
}

}  // namespace
}  // namespace agent
