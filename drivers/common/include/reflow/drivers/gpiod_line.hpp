// SPDX-License-Identifier: AGPL-3.0-or-later
// Finding and requesting a GPIO line with libgpiod v1 (Debian 12: 1.6, the C API), for the
// drivers that read lines (gpio) and drive them (station's LED and buzzer). Lines are found by
// name on every chip, never by chip number, which differs between Pi models and kernels
// (docs/reference/drivers.md §7.1).
#pragma once

#include <string>
#include <string_view>

#include <reflow/core/result.hpp>

struct gpiod_line;

namespace agent::gpiod {

/// The line named `name` on any chip (gpiod_line_find). The caller requests it and finally
/// closes its chip with gpiod_line_close_chip. Errors: device_unavailable, with what to do:
/// no such line ("set `key` to a name that `gpioinfo` lists (e.g. "`example`")"), or the chips
/// cannot be searched (with the group to join when permission is denied).
Result<gpiod_line*> find_line(const std::string& name, std::string_view key,
                              std::string_view example);

/// The error for a failed gpiod_line_request_*() of line `name` with `err` (errno): EBUSY is
/// device_unavailable (another program holds the line; `gpioinfo` names it), anything else io
/// ("cannot `what` on GPIO line …: strerror", plus `hint` when not empty).
Error request_error(std::string_view name, int err, std::string_view what, std::string_view hint);

}  // namespace agent::gpiod
