// SPDX-License-Identifier: AGPL-3.0-or-later
// The device's config loader (agent/device config.hpp) on arbitrary TOML text. parse_config is
// what load_config runs on the file's contents.
#include <cstddef>
#include <cstdint>

#include <reflow/device/config.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto config = agent::parse_config(reflow_fuzz::as_text(data, size), "fuzz.toml");
  if (!config && config.error().message.empty()) __builtin_trap();  // errors must say something
  return 0;
}
