// SPDX-License-Identifier: AGPL-3.0-or-later
// GPIO lines by name (reflow/drivers/gpiod_line.hpp) with the real libgpiod: a name no chip has,
// and the words of a refused request.
#include <cerrno>
#include <string>

#include <gtest/gtest.h>

#include <reflow/drivers/gpiod_line.hpp>

namespace agent::gpiod {
namespace {

TEST(GpiodLineTest, AMissingLineSaysWhichKeyToSetAndHowToFindNames) {
  const auto line = find_line("REFLOW_NO_SUCH_LINE", "`line`", "GPIO17");
  ASSERT_FALSE(line.has_value());
  EXPECT_EQ(line.error().code, ErrorCode::device_unavailable);
  EXPECT_EQ(line.error().message,
            "no GPIO line named \"REFLOW_NO_SUCH_LINE\" on any chip (/dev/gpiochip*): set `line` "
            "to a name that `gpioinfo` lists (e.g. \"GPIO17\")");
}

TEST(GpiodLineTest, ABusyLineIsUnavailableOtherFailuresAreIoWithTheirHint) {
  const auto busy = request_error("GPIO22", EBUSY, "request as an output", "");
  EXPECT_EQ(busy.code, ErrorCode::device_unavailable);
  EXPECT_EQ(busy.message,
            "GPIO line \"GPIO22\" is in use by another program (`gpioinfo` names its consumer)");
  const auto invalid = request_error("GPIO17", EINVAL, "request edge events", " (kernel 5.5)");
  EXPECT_EQ(invalid.code, ErrorCode::io);
  EXPECT_EQ(invalid.message,
            "cannot request edge events on GPIO line \"GPIO17\": Invalid argument (kernel 5.5)");
}

}  // namespace
}  // namespace agent::gpiod
