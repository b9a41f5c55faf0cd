// SPDX-License-Identifier: AGPL-3.0-or-later
// The EM4100 (RDM6300) serial frame decoder (drivers/common badge.hpp) and the members file
// parser (members.hpp): bytes from a badge reader's serial line, and the same bytes as a members
// file.
#include <cstddef>
#include <cstdint>
#include <string>

#include <reflow/drivers/badge.hpp>
#include <reflow/drivers/members.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  agent::Em4100Decoder decoder;
  std::uint64_t ids = 0;
  for (std::size_t i = 0; i < size; ++i) {
    if (auto id = decoder.feed(data[i])) {
      if (id->size() != 10) __builtin_trap();  // a card id is always 5 bytes in hex
      ++ids;
    }
  }
  if (decoder.frames() != ids) __builtin_trap();
  auto members = agent::Members::parse(reflow_fuzz::as_text(data, size), "members.toml");
  if (members)
    for (const auto& m : members->all())
      for (const auto& b : m.badges)
        if (!agent::is_badge_hash(b)) __builtin_trap();
  return 0;
}
