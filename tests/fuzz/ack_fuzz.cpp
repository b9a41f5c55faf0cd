// SPDX-License-Identifier: AGPL-3.0-or-later
// The forwarder's ack parser (agent::parse_ack, forwarder.hpp): the payload of a message on
// PREFIX/DEVICE/ack, which anything that can publish to the broker can send.
#include <cstddef>
#include <cstdint>

#include <reflow/device/forwarder.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto ack = agent::parse_ack(reflow_fuzz::as_text(data, size));
  if (ack && ack->seq < 0) __builtin_trap();
  return 0;
}
