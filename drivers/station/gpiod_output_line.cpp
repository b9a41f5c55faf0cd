// SPDX-License-Identifier: AGPL-3.0-or-later
// The libgpiod v1 (1.6, Debian 12) backend of OutputLine: the station's LED and buzzer. Lines are
// found by name on every chip (never by chip number, which differs between Pi models and
// kernels: docs/reference/drivers.md §7.1).
#include <gpiod.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "station_driver.hpp"

namespace agent::station {
namespace {

class GpiodOutputLine final : public OutputLine {
 public:
  GpiodOutputLine(gpiod_line* line, std::string name) : m_line(line), m_name(std::move(name)) {}
  ~GpiodOutputLine() override {
    // Off before release: a buzzer left on after the agent stopped is worse than none.
    gpiod_line_set_value(m_line, 0);
    gpiod_line_release(m_line);
    gpiod_line_close_chip(m_line);
  }
  GpiodOutputLine(const GpiodOutputLine&) = delete;
  GpiodOutputLine& operator=(const GpiodOutputLine&) = delete;

  Status set(bool on) override {
    if (gpiod_line_set_value(m_line, on ? 1 : 0) != 0)
      return fail(ErrorCode::io,
                  fmt::format("cannot set GPIO line \"{}\": {}", m_name, std::strerror(errno)));
    return {};
  }

 private:
  gpiod_line* m_line;
  std::string m_name;
};

}  // namespace

Result<std::unique_ptr<OutputLine>> open_gpiod_output_line(const OutputRequest& request) {
  errno = 0;
  gpiod_line* line = gpiod_line_find(request.line.c_str());
  if (line == nullptr) {
    const int err = errno;
    if (err == 0 || err == ENOENT)
      return fail(ErrorCode::device_unavailable,
                  fmt::format("no GPIO line named \"{}\" on any chip (/dev/gpiochip*): set the "
                              "line to a name that `gpioinfo` lists (e.g. \"GPIO22\")",
                              request.line));
    return fail(ErrorCode::device_unavailable,
                fmt::format("cannot search the GPIO chips for line \"{}\": {}{}", request.line,
                            std::strerror(err),
                            err == EACCES ? " (run the agent as a member of group gpio)" : ""));
  }
  const int flags = request.active_low ? GPIOD_LINE_REQUEST_FLAG_ACTIVE_LOW : 0;
  if (gpiod_line_request_output_flags(line, request.consumer.c_str(), flags, 0) != 0) {
    const int err = errno;
    gpiod_line_close_chip(line);
    if (err == EBUSY)
      return fail(ErrorCode::device_unavailable,
                  fmt::format("GPIO line \"{}\" is in use by another program (`gpioinfo` names "
                              "its consumer)",
                              request.line));
    return fail(ErrorCode::io, fmt::format("cannot request GPIO line \"{}\" as an output: {}",
                                           request.line, std::strerror(err)));
  }
  return std::make_unique<GpiodOutputLine>(line, request.line);
}

}  // namespace agent::station
