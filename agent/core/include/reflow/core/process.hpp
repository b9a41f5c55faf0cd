// SPDX-License-Identifier: AGPL-3.0-or-later
// What every reflow executable (reflow-agent, reflow-ingest) needs at its top.
#pragma once

#include <chrono>
#include <functional>
#include <string_view>

#include <reflow/core/logger.hpp>

namespace agent {

/// The version string of this build ("0.1.0").
const char* version() noexcept;

/// Blocks SIGTERM, SIGINT and SIGHUP (to be taken by sigwait) and ignores SIGPIPE; call first in
/// main().
void block_signals();

/// The main thread of a systemd Type=notify service (`reflow-agent run`, `reflow-ingest run`)
/// after READY=1: waits for SIGTERM or SIGINT, blocked by block_signals(). It wakes every
/// `refresh`, or every half watchdog interval when systemd's watchdog is on (WatchdogSec=), to
/// send WATCHDOG=1 and call `on_wake` (refresh STATUS=, periodic work). When the signal comes it
/// logs "SIGTERM received; shutting down" (or SIGINT) as `component`, sends STOPPING=1 and
/// returns. SIGHUP calls `on_hangup` (systemd's `systemctl reload` with ExecReload=kill -HUP) and
/// waits on; without one it is logged and ignored, never the end of the process. Outside systemd
/// the notifications go nowhere.
void wait_for_stop_signal(Logger& log, std::string_view component,
                          std::chrono::milliseconds refresh, const std::function<void()>& on_wake,
                          const std::function<void()>& on_hangup = {});

}  // namespace agent
