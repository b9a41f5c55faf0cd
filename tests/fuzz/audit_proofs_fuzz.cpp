// SPDX-License-Identifier: AGPL-3.0-or-later
// The audit codec (agent::audit, audit_proofs.hpp; PROTOCOL §5.2): the node parses requests
// from PREFIX/DEVICE/audit and `reflow-agent audit` parses answers from
// PREFIX/DEVICE/audit/proofs, both of which anything that can publish to the broker can send.
// Whatever parses must keep the documented bounds and survive a round trip through encode().
#include <cstddef>
#include <cstdint>

#include <reflow/core/audit_proofs.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto text = reflow_fuzz::as_text(data, size);
  if (auto request = agent::audit::parse_request(text)) {
    if (request->seqs.size() > agent::audit::k_max_seqs) __builtin_trap();
    if (request->id.empty() || request->id.size() > agent::audit::k_max_id_chars) __builtin_trap();
    auto again = agent::audit::parse_request(agent::audit::encode(*request));
    if (!again || again->seqs != request->seqs || again->tree_size != request->tree_size ||
        again->from_size != request->from_size || again->id != request->id)
      __builtin_trap();
  } else if (request.error().message.empty()) {
    __builtin_trap();
  }
  if (auto answer = agent::audit::parse_answer(text)) {
    auto again = agent::audit::parse_answer(agent::audit::encode(*answer));
    if (!again || again->id != answer->id || again->proofs.size() != answer->proofs.size() ||
        again->missing != answer->missing || again->consistency != answer->consistency)
      __builtin_trap();
  } else if (answer.error().message.empty()) {
    __builtin_trap();
  }
  return 0;
}
