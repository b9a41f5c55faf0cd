// SPDX-License-Identifier: AGPL-3.0-or-later
// The forwarder's ack readers: agent::parse_ack (forwarder.hpp) and, for an agent that pins the
// node's key, agent::verify_signed_ack (ack_verifier.hpp): the payload of a message on
// PREFIX/DEVICE/ack, which anything that can publish to the broker can send.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include <reflow/device/ack_verifier.hpp>
#include <reflow/device/forwarder.hpp>

#include "fuzz_support.hpp"

namespace {

const agent::PublicJwk& node_key() {
  static const agent::PublicJwk key = [] {
    agent::PublicJwk k;
    for (std::size_t i = 0; i < k.x.size(); ++i)
      k.x[i] = static_cast<std::uint8_t>(i * 7 + 1);
    k.kid = agent::jwk_thumbprint(k.x);
    return k;
  }();
  return key;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto text = reflow_fuzz::as_text(data, size);
  auto ack = agent::parse_ack(text);
  if (ack && ack->seq < 0) __builtin_trap();

  agent::AckContext context;
  context.device = "dev-a";
  context.stream = "01KDX3G000STREAMSTREAM0000";
  context.last_committed = 100;
  context.last_verified = 10;
  context.envelope_of = [](std::int64_t seq) -> agent::Result<std::optional<std::string>> {
    return std::optional<std::string>("envelope " + std::to_string(seq));
  };
  auto verified = agent::verify_signed_ack(text, node_key(), context);
  // Nobody holds the key's secret: no input may verify.
  if (verified) __builtin_trap();
  if (verified.error().message.empty()) __builtin_trap();
  return 0;
}
