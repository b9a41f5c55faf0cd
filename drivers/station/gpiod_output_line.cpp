// SPDX-License-Identifier: AGPL-3.0-or-later
// The libgpiod v1 (1.6, Debian 12) backend of OutputLine: the station's LED and buzzer, found by
// name with drivers/common's gpiod::find_line.
#include <gpiod.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include <reflow/drivers/gpiod_line.hpp>

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
  auto found = gpiod::find_line(request.line, "the line", "GPIO22");
  if (!found) return std::unexpected(std::move(found.error()));
  gpiod_line* line = *found;
  const int flags = request.active_low ? GPIOD_LINE_REQUEST_FLAG_ACTIVE_LOW : 0;
  if (gpiod_line_request_output_flags(line, request.consumer.c_str(), flags, 0) != 0) {
    const int err = errno;
    gpiod_line_close_chip(line);
    return std::unexpected(gpiod::request_error(request.line, err, "request as an output", ""));
  }
  return std::make_unique<GpiodOutputLine>(line, request.line);
}

}  // namespace agent::station
