// SPDX-License-Identifier: AGPL-3.0-or-later
// The barcode driver's decoders (drivers/barcode): LineDecoder (serial mode), HidrawDecoder
// ("simple COM" HID mode) and KeyDecoder (keyboard emulation, evdev key events).
//
// Input: one selector byte, then the rest.
//   selector % 3 == 0: the rest is the serial byte stream, fed in two reads;
//   selector % 3 == 1: the rest is hidraw reads of up to 64 bytes each (the last may be short);
//   selector % 3 == 2: the rest is 16-byte key events: time_us (int64), type, code (uint16),
//                      value (int32), little-endian, as struct input_event carries them.
// Small limits (max code 64 bytes) so that overlong lines are reached quickly.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "fuzz_support.hpp"
#include "line_decoder.hpp"

using namespace agent;
using namespace agent::barcode;

namespace {

constexpr std::size_t k_max_code = 64;

void check_code(const std::string& code) {
  // A code is never empty or over the limit, and never holds a terminator or NUL.
  if (code.empty() || code.size() > k_max_code) __builtin_trap();
  if (code.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return -1;
  const int selector = data[0] % 3;
  std::span<const std::uint8_t> rest(data + 1, size - 1);
  if (selector == 0) {
    LineDecoder decoder(k_max_code);
    auto text = reflow_fuzz::as_text(rest.data(), rest.size());
    const std::size_t cut = text.size() / 2;
    for (const auto& code : decoder.feed(text.substr(0, cut)))
      check_code(code);
    for (const auto& code : decoder.feed(text.substr(cut)))
      check_code(code);
    (void)decoder.drop();
  } else if (selector == 1) {
    HidrawDecoder decoder(k_max_code);
    while (!rest.empty()) {
      auto report = rest.first(std::min(rest.size(), k_hidraw_report_bytes));
      for (const auto& code : decoder.feed(report))
        check_code(code);
      rest = rest.subspan(report.size());
    }
    (void)decoder.drop();
  } else {
    KeyDecoder decoder(std::chrono::milliseconds(50));
    while (rest.size() >= 16) {
      KeyEvent event;
      std::memcpy(&event.time_us, rest.data(), 8);
      std::memcpy(&event.type, rest.data() + 8, 2);
      std::memcpy(&event.code, rest.data() + 10, 2);
      std::memcpy(&event.value, rest.data() + 12, 4);
      if (auto code = decoder.feed(event)) {
        if (code->empty()) __builtin_trap();
      }
      rest = rest.subspan(16);
    }
    (void)decoder.drop_fragment();
    decoder.reset();
  }
  return 0;
}
