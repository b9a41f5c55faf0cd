// SPDX-License-Identifier: AGPL-3.0-or-later
// agent::validate_event_payload (event.hpp): a whole event payload as the node checks it in
// PROTOCOL §7 step 5, on JSON text parsed as the verifier parses it (parse_json_strict).
#include <cstddef>
#include <cstdint>

#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/core/json_strict.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto event = agent::parse_json_strict(reflow_fuzz::as_text(data, size));
  if (!event) return -1;
  auto valid = agent::validate_event_payload(*event);
  // The node stores the message with the rejection and serves it as JSON: it must serialize.
  if (!valid) (void)nlohmann::ordered_json(valid.error().message).dump();
  return 0;
}
