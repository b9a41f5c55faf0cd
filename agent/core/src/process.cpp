// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/process.hpp>

#include <pthread.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include <algorithm>
#include <csignal>
#include <cstdint>

namespace agent {
namespace {

sigset_t waited_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  return set;
}

}  // namespace

const char* version() noexcept {
  return REFLOW_VERSION;
}

void block_signals() {
  const sigset_t set = waited_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
}

void wait_for_stop_signal(Logger& log, std::string_view component,
                          std::chrono::milliseconds refresh, const std::function<void()>& on_wake,
                          const std::function<void()>& on_hangup) {
  std::uint64_t watchdog_usec = 0;
  const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0;
  auto tick = refresh;
  if (watchdog)
    tick = std::max(std::chrono::milliseconds(1),
                    std::min(tick, std::chrono::milliseconds(watchdog_usec / 2000)));
  const sigset_t set = waited_signals();
  int signal_number = 0;
  for (;;) {
    timespec timeout{static_cast<time_t>(tick.count() / 1000),
                     static_cast<long>((tick.count() % 1000) * 1'000'000)};
    signal_number = sigtimedwait(&set, nullptr, &timeout);
    if (signal_number == SIGHUP) {
      if (on_hangup)
        on_hangup();
      else
        log.info(component, "SIGHUP received; nothing to reload");
      continue;
    }
    if (signal_number > 0) break;
    if (watchdog) sd_notify(0, "WATCHDOG=1");
    on_wake();
  }
  log.info(component, "{} received; shutting down", signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  sd_notify(0, "STOPPING=1");
}

}  // namespace agent
