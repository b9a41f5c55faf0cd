// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <filesystem>

#include <nlohmann/json.hpp>

#include <reflow/core/result.hpp>

namespace agent {

/// A driver's small persistent state (its cursor: the last job handled, the last counter value …)
/// as one JSON file in the driver's state directory, so that a restart neither loses nor repeats
/// an event.
///
/// load_driver_state: the saved object, or an empty object when the file does not exist.
/// Errors: io (unreadable), corruption (not a JSON object; the message names the file — the
/// driver should refuse to start rather than guess, since guessing repeats or loses events).
Result<nlohmann::json> load_driver_state(const std::filesystem::path& file);

/// Replaces the file atomically and durably: write FILE.tmp, fsync, rename, fsync the directory.
/// A crash leaves the old or the new state, never a torn one. Errors: io, no_space.
Status save_driver_state(const std::filesystem::path& file, const nlohmann::json& state);

}  // namespace agent
