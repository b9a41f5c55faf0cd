// SPDX-License-Identifier: AGPL-3.0-or-later
// The libevdev backend of KeyEventSource (docs/reference/drivers.md §5.1).
#include <fcntl.h>
#include <libevdev/libevdev.h>
#include <poll.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include <reflow/drivers/evdev_source.hpp>

namespace agent {
namespace {

// poll() slices: how soon a stop request or the deadline is noticed.
constexpr std::chrono::milliseconds k_poll_slice{100};

Error device_error(const std::filesystem::path& path, int err, std::string_view doing) {
  switch (err) {
    case ENOENT:
    case ENODEV:
    case ENXIO:
      return Error{ErrorCode::device_unavailable,
                   fmt::format("{}: {} failed: {} (device unplugged? `ls -l /dev/input/by-id/` "
                               "lists the keyboards that are there)",
                               path.string(), doing, std::strerror(err))};
    case EACCES:
    case EPERM:
      return Error{ErrorCode::device_unavailable,
                   fmt::format("{}: {} failed: {} (add the agent's user to group `input`, or "
                               "install the udev rule from the driver's README)",
                               path.string(), doing, std::strerror(err))};
    case EBUSY:
      return Error{ErrorCode::device_unavailable,
                   fmt::format("{}: {} failed: another program holds the device exclusively "
                               "(another agent? `fuser -v {}`); stop it, or set access = "
                               "\"shared\"",
                               path.string(), doing, path.string())};
    default:
      return Error{ErrorCode::io,
                   fmt::format("{}: {} failed: {}", path.string(), doing, std::strerror(err))};
  }
}

class EvdevSource final : public KeyEventSource {
 public:
  EvdevSource(int fd, libevdev* dev, std::filesystem::path path, bool grabbed, Env& env)
      : m_fd(fd), m_dev(dev), m_path(std::move(path)), m_grabbed(grabbed), m_env(env) {}

  ~EvdevSource() override {
    // Ungrab fails harmlessly on a device that is gone.
    if (m_grabbed) libevdev_grab(m_dev, LIBEVDEV_UNGRAB);
    libevdev_free(m_dev);
    ::close(m_fd);
  }

  Result<std::vector<KeyEvent>> wait(std::chrono::steady_clock::time_point deadline,
                                     std::stop_token stop) override {
    for (;;) {
      auto events = read_available();
      if (!events || !events->empty()) return events;
      if (stop.stop_requested()) return std::vector<KeyEvent>{};
      const auto now = m_env.steady_now();
      if (now >= deadline) return std::vector<KeyEvent>{};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
      pollfd fd{m_fd, POLLIN, 0};
      const int timeout =
          static_cast<int>(std::clamp(left, std::chrono::milliseconds(1), k_poll_slice).count());
      const int ready = ::poll(&fd, 1, timeout);
      if (ready < 0 && errno != EINTR) return std::unexpected(device_error(m_path, errno, "poll"));
      if (ready > 0 && (fd.revents & (POLLHUP | POLLERR | POLLNVAL)) && !(fd.revents & POLLIN))
        return std::unexpected(device_error(m_path, ENODEV, "reading"));
    }
  }

 private:
  static KeyEvent convert(const input_event& ev) {
    return KeyEvent{static_cast<std::int64_t>(ev.input_event_sec) * 1'000'000 +
                        static_cast<std::int64_t>(ev.input_event_usec),
                    ev.type, ev.code, ev.value};
  }

  // Everything the kernel has queued now; empty when nothing.
  Result<std::vector<KeyEvent>> read_available() {
    std::vector<KeyEvent> events;
    unsigned flag = LIBEVDEV_READ_FLAG_NORMAL;
    for (;;) {
      input_event ev{};
      const int rc = libevdev_next_event(m_dev, flag, &ev);
      if (rc == LIBEVDEV_READ_STATUS_SYNC) {
        // ev is SYN_DROPPED (first) or a resync event: both go to the decoder, which drops the
        // fragment and takes only the modifier state from the resync.
        events.push_back(convert(ev));
        flag = LIBEVDEV_READ_FLAG_SYNC;
        continue;
      }
      if (rc == LIBEVDEV_READ_STATUS_SUCCESS) {
        events.push_back(convert(ev));
        continue;
      }
      if (rc == -EAGAIN) {
        if (flag == LIBEVDEV_READ_FLAG_SYNC) {
          // The resync is over; the decoder waits for a SYN_REPORT to leave resync mode.
          events.push_back(
              KeyEvent{events.empty() ? 0 : events.back().time_us, EV_SYN, SYN_REPORT, 0});
          flag = LIBEVDEV_READ_FLAG_NORMAL;
          continue;
        }
        return events;
      }
      return std::unexpected(device_error(m_path, -rc, "reading"));
    }
  }

  int m_fd;
  libevdev* m_dev;
  std::filesystem::path m_path;
  bool m_grabbed;
  Env& m_env;
};

}  // namespace

Result<std::unique_ptr<KeyEventSource>> open_evdev_source(const std::filesystem::path& path,
                                                          bool grab, Env& env) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return std::unexpected(device_error(path, errno, "open"));
  libevdev* dev = nullptr;
  if (const int rc = libevdev_new_from_fd(fd, &dev); rc < 0) {
    ::close(fd);
    return std::unexpected(device_error(path, -rc, "reading the device's capabilities"));
  }
  if (!libevdev_has_event_type(dev, EV_KEY) || !libevdev_has_event_code(dev, EV_KEY, KEY_ENTER)) {
    const std::string name = libevdev_get_name(dev) ? libevdev_get_name(dev) : "?";
    libevdev_free(dev);
    ::close(fd);
    return fail(ErrorCode::device_unavailable,
                fmt::format("{} (\"{}\") is not a keyboard; use the device's …-event-kbd node "
                            "in /dev/input/by-id/",
                            path.string(), name));
  }
  // The kernel stamps events with CLOCK_REALTIME unless told otherwise; gaps between keys must
  // not jump with an NTP step.
  libevdev_set_clock_id(dev, CLOCK_MONOTONIC);
  if (grab) {
    if (const int rc = libevdev_grab(dev, LIBEVDEV_GRAB); rc < 0) {
      libevdev_free(dev);
      ::close(fd);
      return std::unexpected(device_error(path, -rc, "grabbing"));
    }
  }
  return std::make_unique<EvdevSource>(fd, dev, path, grab, env);
}

}  // namespace agent
