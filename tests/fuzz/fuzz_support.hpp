// SPDX-License-Identifier: AGPL-3.0-or-later
// What several fuzz targets share: fixed Ed25519 keys (so that signatures made by the harness and
// by the seed generator verify) and splitting an input into lines.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include <reflow/core/jose.hpp>

namespace reflow_fuzz {

/// The fuzz input as text (bytes as they are, not necessarily UTF-8).
inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

/// The fixed key number `index` (0, 1 or 2): its 32-byte seed is `index + 1` repeated, so that
/// the seeds in tests/fuzz/corpus stay valid. Loaded once through DeviceKey::load (from a 0600
/// file in $TMPDIR that is removed again). Aborts when the key cannot be loaded.
const agent::DeviceKey& fixed_key(int index);

/// `text` split at '\n' (a last line without one included; no empty last line after a final '\n').
std::vector<std::string_view> split_lines(std::string_view text);

}  // namespace reflow_fuzz
