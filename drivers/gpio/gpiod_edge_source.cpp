// SPDX-License-Identifier: AGPL-3.0-or-later
// The libgpiod v1 (1.6, Debian 12) backend of EdgeSource. The v1 character-device API has no
// debounce (that came with uAPI v2), so the driver debounces on the kernel's edge timestamps.
#include <gpiod.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>

#include <fmt/format.h>

#include <reflow/drivers/gpiod_line.hpp>

#include "edge_source.hpp"

namespace agent::gpio {
namespace {

// Kernels before 5.7 stamped v1 line events with CLOCK_REALTIME, later ones with
// CLOCK_MONOTONIC. A timestamp that is not a recent steady-clock reading is replaced by the read
// time: events are read within milliseconds, so only debounce precision is lost.
constexpr std::int64_t k_max_event_age_ns = 60'000'000'000;

std::int64_t steady_ns(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

class GpiodEdgeSource final : public EdgeSource {
 public:
  GpiodEdgeSource(gpiod_line* line, int wake_fd, std::string name, Env& env)
      : m_line(line), m_wake_fd(wake_fd), m_name(std::move(name)), m_env(env) {}

  ~GpiodEdgeSource() override {
    gpiod_line_release(m_line);
    gpiod_line_close_chip(m_line);
    ::close(m_wake_fd);
  }

  GpiodEdgeSource(const GpiodEdgeSource&) = delete;
  GpiodEdgeSource& operator=(const GpiodEdgeSource&) = delete;

  Result<bool> level() override {
    const int value = gpiod_line_get_value(m_line);
    if (value < 0)
      return fail(ErrorCode::io,
                  fmt::format("cannot read GPIO line \"{}\": {}", m_name, std::strerror(errno)));
    return value == 1;
  }

  Result<std::vector<Edge>> wait(std::chrono::steady_clock::time_point deadline,
                                 std::stop_token stop) override {
    // stop() must not wait for the next edge, which may be hours away: wake poll() through an
    // eventfd.
    std::stop_callback wake(stop, [fd = m_wake_fd] {
      const std::uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(fd, &one, sizeof one);
    });
    const int event_fd = gpiod_line_event_get_fd(m_line);
    if (event_fd < 0)
      return fail(ErrorCode::io, fmt::format("GPIO line \"{}\": no event descriptor", m_name));
    while (!stop.stop_requested()) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - m_env.steady_now());
      const int timeout_ms = static_cast<int>(std::clamp<std::int64_t>(left.count(), 0, INT_MAX));
      std::array<pollfd, 2> fds{{{event_fd, POLLIN | POLLPRI, 0}, {m_wake_fd, POLLIN, 0}}};
      const int ready = ::poll(fds.data(), fds.size(), timeout_ms);
      if (ready < 0) {
        if (errno == EINTR) continue;
        return fail(ErrorCode::io,
                    fmt::format("waiting for GPIO line \"{}\": {}", m_name, std::strerror(errno)));
      }
      if (ready == 0) return std::vector<Edge>{};
      if (fds[1].revents != 0) {
        std::uint64_t drained = 0;
        [[maybe_unused]] auto n = ::read(m_wake_fd, &drained, sizeof drained);
        return std::vector<Edge>{};
      }
      if ((fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0)
        return fail(ErrorCode::io,
                    fmt::format("GPIO line \"{}\" went away (chip removed?); reopening", m_name));
      return read_edges();
    }
    return std::vector<Edge>{};
  }

 private:
  Result<std::vector<Edge>> read_edges() {
    std::array<gpiod_line_event, 16> events{};  // the kernel's per-line FIFO holds 16
    const int n =
        gpiod_line_event_read_multiple(m_line, events.data(), static_cast<unsigned>(events.size()));
    if (n < 0)
      return fail(ErrorCode::io, fmt::format("reading edges of GPIO line \"{}\": {}", m_name,
                                             std::strerror(errno)));
    const std::int64_t now_ns = steady_ns(m_env.steady_now());
    std::vector<Edge> edges;
    edges.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      const auto& ev = events[static_cast<std::size_t>(i)];
      std::int64_t ts = static_cast<std::int64_t>(ev.ts.tv_sec) * 1'000'000'000 + ev.ts.tv_nsec;
      if (ts > now_ns || now_ns - ts > k_max_event_age_ns) ts = now_ns;
      edges.push_back(
          {ev.event_type == GPIOD_LINE_EVENT_RISING_EDGE ? Edge::Kind::rising : Edge::Kind::falling,
           ts});
    }
    return edges;
  }

  gpiod_line* m_line;
  int m_wake_fd;
  std::string m_name;
  Env& m_env;
};

int bias_flag(Bias bias) {
  switch (bias) {
    case Bias::pull_up:
      return GPIOD_LINE_REQUEST_FLAG_BIAS_PULL_UP;
    case Bias::pull_down:
      return GPIOD_LINE_REQUEST_FLAG_BIAS_PULL_DOWN;
    case Bias::none:
      break;
  }
  return GPIOD_LINE_REQUEST_FLAG_BIAS_DISABLE;
}

}  // namespace

Result<std::unique_ptr<EdgeSource>> open_gpiod_edge_source(const LineRequest& request, Env& env) {
  auto found = gpiod::find_line(request.line, "`line`", "GPIO17");
  if (!found) {
    found.error().message += "; retrying";
    return std::unexpected(std::move(found.error()));
  }
  gpiod_line* line = *found;
  int flags = bias_flag(request.bias);
  if (request.active_low) flags |= GPIOD_LINE_REQUEST_FLAG_ACTIVE_LOW;
  if (gpiod_line_request_both_edges_events_flags(line, request.consumer.c_str(), flags) != 0) {
    const int err = errno;
    gpiod_line_close_chip(line);
    auto error =
        gpiod::request_error(request.line, err, "request edge events",
                             err == EINVAL ? " (bias flags need kernel 5.5 or later)" : "");
    if (error.code == ErrorCode::device_unavailable) error.message += "; retrying";
    return std::unexpected(std::move(error));
  }
  const int wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) {
    const int err = errno;
    gpiod_line_release(line);
    gpiod_line_close_chip(line);
    return fail(ErrorCode::io, fmt::format("eventfd: {}", std::strerror(err)));
  }
  return std::make_unique<GpiodEdgeSource>(line, wake_fd, request.line, env);
}

}  // namespace agent::gpio
