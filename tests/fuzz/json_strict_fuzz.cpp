// SPDX-License-Identifier: AGPL-3.0-or-later
// agent::parse_json_strict (json_strict.hpp), the reader of every signed JSON document: whatever
// it accepts, nlohmann_json's own parser reads the same way, and its dump reads back to the same
// value; whatever it refuses has a message that locates the fault ("line L, column C: " or
// "at PATH: ", json_strict.hpp) and serializes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include <reflow/core/json_strict.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto text = reflow_fuzz::as_text(data, size);
  auto strict = agent::parse_json_strict(text);
  if (!strict) {
    const std::string& why = strict.error().message;
    const bool located = (why.starts_with("line ") && why.find(", column ") != std::string::npos) ||
                         why.starts_with("at $");
    if (!located) std::abort();
    (void)nlohmann::ordered_json(why).dump();
    return 0;
  }
  // Accepted: the lenient parser agrees (no duplicate names, so no "last one wins" difference).
  auto lenient = nlohmann::ordered_json::parse(text, nullptr, false);
  if (lenient.is_discarded() || lenient != *strict) std::abort();
  // What we write is what we read: a dump parses strictly back to the same value.
  auto again = agent::parse_json_strict(strict->dump());
  if (!again || *again != *strict) std::abort();
  return 0;
}
