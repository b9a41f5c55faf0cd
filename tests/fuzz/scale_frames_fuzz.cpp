// SPDX-License-Identifier: AGPL-3.0-or-later
// The scale driver's protocol code (drivers/scale/frames.hpp): bytes from the serial line or the
// hidraw node cut into frames by FrameSplitter, each frame parsed with parse_frame and fed to
// Stability, as ScaleReader does.
//
// Input: the protocol's config name ("and", "st_gs", "mt_sics", "ohaus", "toledo", "hid") on the
// first line, then the bytes the scale sent. The bytes are fed in two reads, split at the byte
// count given by the first byte after the name, so that frames split across reads are covered.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "frames.hpp"
#include "fuzz_support.hpp"

using agent::scale::FrameSplitter;
using agent::scale::Stability;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto text = reflow_fuzz::as_text(data, size);
  const auto newline = text.find('\n');
  if (newline == std::string_view::npos) return -1;
  const auto protocol = agent::scale::protocol_from_name(text.substr(0, newline));
  if (!protocol) return -1;
  auto bytes = text.substr(newline + 1);
  const std::size_t cut =
      bytes.empty() ? 0 : static_cast<std::uint8_t>(bytes[0]) % (bytes.size() + 1);

  FrameSplitter splitter(*protocol);
  std::vector<std::string> frames;
  splitter.feed(bytes.substr(0, cut), frames);
  splitter.feed(bytes.substr(cut), frames);
  Stability stability(2, 0.001);
  for (const auto& frame : frames) {
    auto reading = agent::scale::parse_frame(*protocol, frame);
    if (!reading) continue;
    if (!std::isfinite(reading->kilograms)) __builtin_trap();  // a weight must be a number
    (void)stability.add(*reading);
  }
  // A frame as the splitter would never cut it still must not crash the parser.
  (void)agent::scale::parse_frame(*protocol, bytes);
  return 0;
}
