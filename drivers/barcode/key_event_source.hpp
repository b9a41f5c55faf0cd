// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

#include <reflow/core/env.hpp>
#include <reflow/core/result.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/drivers/evdev_source.hpp>

#include "scanner.hpp"

namespace agent::barcode {

/// make_scanner_reader() with the evdev device behind `open_keys` (tests pass a replay). The
/// serial and hidraw modes do not use it.
std::unique_ptr<ScannerReader> make_scanner_reader(ScannerConfig config, Env& env, Logger& log,
                                                   std::string log_name,
                                                   KeyEventSourceFactory open_keys);

/// The `barcode` kind's driver on any KeyEventSource (the kind passes the libevdev one).
std::unique_ptr<Driver> make_barcode_driver(ScannerConfig config, std::string name, Env& env,
                                            Logger& log, KeyEventSourceFactory open_keys);

}  // namespace agent::barcode
