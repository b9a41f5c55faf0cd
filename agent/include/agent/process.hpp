// SPDX-License-Identifier: AGPL-3.0-or-later
// What every reflow executable (reflow-agent, reflow-ingest) needs at its top.
#pragma once

namespace agent {

/// The version string of this build ("0.1.0").
const char* version() noexcept;

/// Blocks SIGTERM and SIGINT (to be taken by sigwait) and ignores SIGPIPE; call first in main().
void block_signals();

}  // namespace agent
