// SPDX-License-Identifier: AGPL-3.0-or-later
// The node's verifier (PROTOCOL §7 steps 1–5, agent/node verifier.hpp and key_lookup.hpp) against
// a fixed key registry: key 0 is the active key of fablab-mk4-01, key 1 the key of saw-02 revoked
// at k_revoked_ms, key 2 is not registered.
//
// Input: one mode byte, then the rest.
//   mode % 4 == 0: the rest is an envelope received on fablab-mk4-01's topic;
//   mode % 4 == 1: the rest is an event payload, signed here with key 0 (fablab-mk4-01), so that
//                  mutations reach the payload checks behind the signature;
//   mode % 4 == 2: the same with key 1 (saw-02, revoked), received on saw-02's topic;
//   mode % 4 == 3: the rest is an envelope received on saw-02's topic.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include <reflow/core/jose.hpp>
#include <reflow/node/key_lookup.hpp>
#include <reflow/node/verifier.hpp>

#include "fuzz_support.hpp"

namespace {

constexpr std::int64_t k_added_ms = 1'767'225'600'000;         // 2026-01-01T00:00:00Z
constexpr std::int64_t k_revoked_ms = k_added_ms + 3'600'000;  // an hour later

struct Device {
  const char* id;
  const char* topic;
  int key;
};
constexpr Device k_devices[] = {
    {"fablab-mk4-01", "reflow/v1/fablab-mk4-01/events", 0},
    {"saw-02", "reflow/v1/saw-02/events", 1},
};

ingest::Result<std::optional<ingest::DeviceKeyRecord>> find_key(std::string_view kid) {
  for (const auto& device : k_devices) {
    const auto& jwk = reflow_fuzz::fixed_key(device.key).public_jwk();
    if (jwk.kid != kid) continue;
    ingest::DeviceKeyRecord record;
    record.device = device.id;
    record.jwk = jwk;
    record.added_unix_ms = k_added_ms;
    if (device.key == 1) record.revoked_unix_ms = k_revoked_ms;
    return record;
  }
  return std::nullopt;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return -1;
  const int mode = data[0] % 4;
  const auto rest = reflow_fuzz::as_text(data + 1, size - 1);
  const Device& device = k_devices[mode == 0 || mode == 1 ? 0 : 1];
  std::string envelope;
  if (mode == 1 || mode == 2) {
    const auto& key = reflow_fuzz::fixed_key(device.key);
    envelope = agent::jws_sign(key, agent::jws_protected_header_b64(key.public_jwk().kid), rest)
                   .to_envelope();
  } else {
    envelope = rest;
  }
  static const ingest::KeyLookup lookup = find_key;
  auto verdict = ingest::verify_envelope_with(lookup, device.topic, device.id, envelope);
  if (!verdict) __builtin_trap();  // the registry never fails: only verdicts may come back
  if (verdict->has_value()) {
    // Whatever passed is what the store will index: it must be the topic's device.
    const auto& event = verdict->value();
    if (event.device != device.id || event.envelope != envelope) __builtin_trap();
  }
  return 0;
}
