// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <expected>
#include <string_view>

#include <reflow/node/store.hpp>

namespace ingest {

/// PROTOCOL §2: splits `PREFIX/DEVICE/events` into DEVICE. Returns nullopt when `topic` is not
/// `prefix` + "/" + one level + "/events".
std::optional<std::string> device_of_events_topic(std::string_view topic, std::string_view prefix);

/// Applies PROTOCOL §7 steps 1–5 to one envelope received on `topic` for `topic_device`:
/// 1. size ≤ 64 KiB (else oversized), flattened JWS, `alg` EdDSA (else malformed_jws);
/// 2. the key by `kid` in `store`'s registry (else unknown_kid);
/// 3. the Ed25519 signature (else bad_signature);
/// 4. payload `device` = the key's device = `topic_device` (else device_mismatch);
/// 5. the payload against PROTOCOL §4 with agent::validate_event_payload (else invalid_event);
/// then, for a revoked key, `recorded` before the revocation time (else key_revoked): `recorded` is
/// the device's word, so this only refuses early; Store::put decides revoked keys by what it holds.
/// Steps 6–8 are Store::put's. Never throws; a store I/O error during the key lookup is
/// returned as the error of the outer Result (the envelope must then be retried, not rejected).
Result<std::expected<VerifiedEvent, Rejection>> verify_envelope(Store& store,
                                                                std::string_view topic,
                                                                std::string_view topic_device,
                                                                std::string_view envelope);

}  // namespace ingest
