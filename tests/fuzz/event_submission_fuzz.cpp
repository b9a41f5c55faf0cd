// SPDX-License-Identifier: AGPL-3.0-or-later
// emit's event validation: a line of JSON parsed as the control server parses it
// (parse_json_strict, json_strict.hpp), then agent::validate_submission (event.hpp).
#include <cstddef>
#include <cstdint>

#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/core/json_strict.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto fields = agent::parse_json_strict(reflow_fuzz::as_text(data, size));
  if (!fields) return -1;  // refused by the parser: nothing reaches the validator
  auto valid = agent::validate_submission(*fields);
  // The message goes back to the client as JSON (control.cpp): it must serialize.
  if (!valid) (void)nlohmann::ordered_json(valid.error().message).dump();
  return 0;
}
