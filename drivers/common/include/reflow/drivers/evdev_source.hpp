// SPDX-License-Identifier: AGPL-3.0-or-later
// Input devices in keyboard-emulation mode through libevdev: barcode scanners (drivers/barcode)
// and USB badge readers that type the card number (badge.hpp, source "evdev") read the same way.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <stop_token>
#include <vector>

#include <reflow/core/env.hpp>
#include <reflow/core/result.hpp>
#include <reflow/drivers/key_decoder.hpp>

namespace agent {

/// The seam between a reader and an input device in keyboard-emulation mode: the real one is
/// libevdev (open_evdev_source), tests replay recorded `input_event` streams. One thread uses an
/// instance; it owns the open device (and its grab) and releases it when destroyed.
class KeyEventSource {
 public:
  virtual ~KeyEventSource() = default;

  /// Waits until at least one event is there, `deadline` (the Env's steady clock) passes or `stop`
  /// is requested, and returns the events read, oldest first (empty when none came). After the
  /// kernel dropped events (SYN_DROPPED) the list holds that event followed by the resync events.
  /// Errors: device_unavailable (the device went away: unplugged), io; the reader then reopens.
  virtual Result<std::vector<KeyEvent>> wait(std::chrono::steady_clock::time_point deadline,
                                             std::stop_token stop) = 0;
};

/// Opens an input device; `grab`: take it exclusively (EVIOCGRAB). Errors: device_unavailable
/// (absent, no permission, grabbed by another program), io.
using KeyEventSourceFactory =
    std::function<Result<std::unique_ptr<KeyEventSource>>(const std::filesystem::path&, bool grab)>;

/// The libevdev backend: opens `path` non-blocking, checks it has keys, switches its timestamps
/// to CLOCK_MONOTONIC, grabs it when asked (released on close) and reads with poll(). Errors name
/// the path and what to do (group `input`, another program holding the grab …). `env` gives the
/// clock for the deadline.
Result<std::unique_ptr<KeyEventSource>> open_evdev_source(const std::filesystem::path& path,
                                                          bool grab, Env& env);

}  // namespace agent
