// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <reflow/device/driver.hpp>

#include "edge_source.hpp"

namespace agent::gpio {

/// input: the line's active level is a machine session (`use`); pulse: every debounced active
/// pulse is one impulse of an S0 energy meter (`consume` of electricity, reported periodically).
enum class Mode { input, pulse };

/// The validated `[[driver]]` table of kind "gpio" (README.md documents every key).
struct GpioConfig {
  std::string name;
  LineRequest line;
  Mode mode = Mode::input;
  std::string resource;
  std::chrono::milliseconds debounce{50};
  std::chrono::milliseconds min_on{1000};
  double impulses_per_kwh = 1000;
  std::chrono::milliseconds report_every{15 * 60 * 1000};
};

const std::vector<DriverKeyInfo>& gpio_keys();

/// Reads and validates the table. Errors: invalid_config naming file, line and key.
Result<GpioConfig> parse_gpio_config(const DriverConfig& config);

/// The driver on any EdgeSource: the kind passes the libgpiod one, tests a recorded sequence.
std::unique_ptr<Driver> make_gpio_driver(GpioConfig config, Env& env, Logger& log,
                                         EdgeSourceFactory open_line);

}  // namespace agent::gpio
