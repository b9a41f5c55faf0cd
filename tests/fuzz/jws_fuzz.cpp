// SPDX-License-Identifier: AGPL-3.0-or-later
// The JWS envelope parser (jose.hpp): jws_parse on the input, then jws_verify against a fixed key,
// whose envelopes seed the corpus (tests/fuzz/make_seeds.cpp), so valid signatures are reached.
#include <cstddef>
#include <cstdint>

#include <reflow/core/jose.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto envelope = reflow_fuzz::as_text(data, size);
  auto parsed = agent::jws_parse(envelope);
  auto verified = agent::jws_verify(envelope, reflow_fuzz::fixed_key(0).public_jwk());
  // jws_verify is jws_parse plus checks: it never accepts what jws_parse refused.
  if (verified && !parsed) __builtin_trap();
  if (verified && verified->payload != parsed->payload) __builtin_trap();
  return 0;
}
