// SPDX-License-Identifier: AGPL-3.0-or-later
// For the node's service and the verify workload: verify_envelope with the registry lookup supplied
// by the caller, so that the service can verify a batch on several threads against keys looked up
// once per batch.
#pragma once

#include <expected>
#include <functional>
#include <optional>
#include <string_view>

#include <reflow/node/store.hpp>

namespace ingest {

/// Store::find_key, or a cache in front of it. Called from every thread that verifies.
using KeyLookup = std::function<Result<std::optional<DeviceKeyRecord>>(std::string_view kid)>;

/// verify_envelope (verifier.hpp) with the key lookup of step 2 done by `find_key`.
Result<std::expected<VerifiedEvent, Rejection>> verify_envelope_with(const KeyLookup& find_key,
                                                                     std::string_view topic,
                                                                     std::string_view topic_device,
                                                                     std::string_view envelope);

}  // namespace ingest
