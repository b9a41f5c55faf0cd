// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/gpiod_line.hpp>

#include <gpiod.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace agent::gpiod {

Result<gpiod_line*> find_line(const std::string& name, std::string_view key,
                              std::string_view example) {
  errno = 0;
  gpiod_line* line = gpiod_line_find(name.c_str());
  if (line != nullptr) return line;
  const int err = errno;
  if (err == 0 || err == ENOENT)
    return fail(ErrorCode::device_unavailable,
                fmt::format("no GPIO line named \"{}\" on any chip (/dev/gpiochip*): set {} to a "
                            "name that `gpioinfo` lists (e.g. \"{}\")",
                            name, key, example));
  return fail(
      ErrorCode::device_unavailable,
      fmt::format("cannot search the GPIO chips for line \"{}\": {}{}", name, std::strerror(err),
                  err == EACCES ? " (run the agent as a member of group gpio)" : ""));
}

Error request_error(std::string_view name, int err, std::string_view what, std::string_view hint) {
  if (err == EBUSY)
    return Error{ErrorCode::device_unavailable,
                 fmt::format("GPIO line \"{}\" is in use by another program (`gpioinfo` names its "
                             "consumer)",
                             name)};
  return Error{ErrorCode::io, fmt::format("cannot {} on GPIO line \"{}\": {}{}", what, name,
                                          std::strerror(err), hint)};
}

}  // namespace agent::gpiod
