// SPDX-License-Identifier: AGPL-3.0-or-later
// The signed-checkpoint reader (agent::note::verify_checkpoint, signed_note.hpp): the payload of
// PREFIX/_node/checkpoint (PROTOCOL §5.1), which anything that can publish to the broker can send,
// checked against fixed key 0 under the origin the corpus uses.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <reflow/core/signed_note.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr std::string_view k_origin = "fablab.example/reflow";
  const std::string_view note = reflow_fuzz::as_text(data, size);
  auto checkpoint =
      agent::note::verify_checkpoint(note, k_origin, reflow_fuzz::fixed_key(0).public_jwk());
  // What verifies names the origin it was asked about, and is a note key 0 signed: signing its
  // text again gives the same signature line (Ed25519 is deterministic).
  if (checkpoint && checkpoint->origin != k_origin) __builtin_trap();
  if (checkpoint && agent::note::checkpoint_text(*checkpoint).size() > note.size())
    __builtin_trap();
  return 0;
}
