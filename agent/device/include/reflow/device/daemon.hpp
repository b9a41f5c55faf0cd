// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <span>

#include <reflow/core/logger.hpp>
#include <reflow/core/process.hpp>
#include <reflow/core/result.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/driver.hpp>

namespace agent {

/// Runs `reflow-agent run` with the driver kinds built in (`kinds`, usually
/// builtin_driver_kinds()): loads the key (refusing a group/other-readable file), takes the data
/// directory's lock, opens the outbox, starts the writer, the forwarder, the control socket and the
/// configured drivers, tells systemd READY=1, then waits for SIGTERM or SIGINT (sigwait), sending
/// WATCHDOG=1 and STATUS= along the way. On a signal it stops the drivers and the control socket,
/// commits what is queued, publishes the offline status and exits within 5 s.
/// The caller must have blocked SIGTERM, SIGINT and SIGPIPE in all threads (block_signals()).
/// Returns the process exit status: 0 after a clean shutdown, 1 when start-up failed (logged).
int run_daemon(const AgentConfig& config, std::span<const DriverKind* const> kinds, Logger& log);

}  // namespace agent
