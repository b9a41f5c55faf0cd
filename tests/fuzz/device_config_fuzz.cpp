// SPDX-License-Identifier: AGPL-3.0-or-later
// The device's config loader (agent/device config.hpp) on arbitrary TOML text, then each
// `[[driver]]` table through its kind's create() as the daemon does at start-up (daemon.cpp):
// parse_config is what load_config runs on the file's contents, and create() validates the
// driver's own keys and opens nothing (driver.hpp), so every driver's key checks are reached.
#include <cstddef>
#include <cstdint>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/driver.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto config = agent::parse_config(reflow_fuzz::as_text(data, size), "fuzz.toml");
  if (!config) {
    if (config.error().message.empty()) __builtin_trap();  // errors must say something
    return 0;
  }
  static agent::Logger log(agent::LogLevel::error);
  log.set_level(agent::LogLevel::error);
  for (const agent::DriverConfig& dc : config->drivers) {
    for (const agent::DriverKind* kind : agent::builtin_driver_kinds()) {
      if (kind->kind() != dc.kind) continue;
      auto driver = kind->create(dc, agent::Env::real(), log);
      if (!driver && driver.error().message.empty()) __builtin_trap();
    }
  }
  return 0;
}
