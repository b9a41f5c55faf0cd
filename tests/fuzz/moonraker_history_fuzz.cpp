// SPDX-License-Identifier: AGPL-3.0-or-later
// The moonraker driver's reading of GET /server/history/list (drivers/moonraker/history.hpp):
// parse_history_page, parse_job on each entry, and job_events for each finished job, whose events
// must pass the writer's validation (validate_submission), or the driver would lose them.
#include <cstddef>
#include <cstdint>

#include <reflow/core/event.hpp>

#include "fuzz_support.hpp"
#include "history.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto page = agent::moonraker::parse_history_page(reflow_fuzz::as_text(data, size));
  if (!page) return 0;
  agent::moonraker::JobContext context;
  context.name = "prusa";
  context.printer = "printer:prusa-mk4";
  context.filament = "spool:42";
  context.spool_id = 42;
  for (const auto& entry : page->jobs) {
    auto job = agent::moonraker::parse_job(entry);
    if (!job || !job->finished()) continue;
    for (const auto& event : agent::moonraker::job_events(*job, context)) {
      if (!agent::validate_submission(event)) __builtin_trap();
    }
  }
  return 0;
}
