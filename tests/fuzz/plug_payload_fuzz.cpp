// SPDX-License-Identifier: AGPL-3.0-or-later
// The power driver's smart-plug payloads (drivers/power/plug_payload.hpp): parse_plug_message for
// a Shelly Gen1, a Shelly Gen2 and a Tasmota plug (the addresses of drivers/power/testdata).
//
// Input: the MQTT topic on the first line, then the payload.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "plug_payload.hpp"

using agent::power::PlugAddress;
using agent::power::PlugProtocol;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto text = reflow_fuzz::as_text(data, size);
  const auto newline = text.find('\n');
  if (newline == std::string_view::npos) return -1;
  const auto topic = text.substr(0, newline);
  const auto payload = text.substr(newline + 1);
  static const PlugAddress plugs[] = {
      {PlugProtocol::shelly_gen1, "shellies/shellyplug-s-C18B12", 0},
      {PlugProtocol::shelly_gen2, "shellyplusplugs-a8032abe54dc", 0},
      {PlugProtocol::tasmota, "tasmota_5A1B2C", 0},
  };
  for (const auto& plug : plugs) {
    auto reading = agent::power::parse_plug_message(plug, topic, payload);
    if (!reading) continue;
    // Readings feed energy sums: a value that is not a finite number would poison them.
    if (reading->watts && !std::isfinite(*reading->watts)) __builtin_trap();
    if (reading->energy_wh && !std::isfinite(*reading->energy_wh)) __builtin_trap();
  }
  return 0;
}
