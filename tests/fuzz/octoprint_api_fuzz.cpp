// SPDX-License-Identifier: AGPL-3.0-or-later
// The octoprint driver's reading of OctoPrint's answers (drivers/octoprint/octoprint_api.hpp): the
// same body as GET /api/printer (HTTP 200 and 409) and as GET /api/job.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "octoprint_api.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto body = reflow_fuzz::as_text(data, size);
  agent::octoprint::Observation observation;
  (void)agent::octoprint::parse_printer(200, body, observation);
  agent::octoprint::Observation not_operational;
  (void)agent::octoprint::parse_printer(409, body, not_operational);
  agent::octoprint::Observation job;
  if (agent::octoprint::parse_job(body, job)) {
    // What parse_job accepts is documented: completion in 0…100, printTime ≥ 0.
    if (job.completion && !(*job.completion >= 0 && *job.completion <= 100)) __builtin_trap();
    if (job.print_time_s && !(*job.print_time_s >= 0)) __builtin_trap();
  }
  return 0;
}
