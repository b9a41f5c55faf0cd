// SPDX-License-Identifier: AGPL-3.0-or-later
// The node's config loader (agent/node config.hpp) on arbitrary TOML text. parse_ingest_config is
// what load_ingest_config runs on the file's contents.
#include <cstddef>
#include <cstdint>

#include <reflow/node/config.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto config = ingest::parse_ingest_config(reflow_fuzz::as_text(data, size), "fuzz.toml");
  if (!config && config.error().message.empty()) __builtin_trap();  // errors must say something
  return 0;
}
