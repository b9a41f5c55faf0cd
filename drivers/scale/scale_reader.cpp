// SPDX-License-Identifier: AGPL-3.0-or-later
// The scale part's config and the real ScaleReader: a serial port or a hidraw node, the frame
// splitter, the protocol parser and the stability rule, with reconnect after unplug.
#include "scale_reader.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include <reflow/drivers/driver_thread.hpp>

#include "frames.hpp"

namespace agent::scale {
namespace {

using namespace std::chrono_literals;

constexpr auto k_backoff_min = std::chrono::milliseconds(1'000);
constexpr auto k_backoff_max = std::chrono::milliseconds(30'000);
constexpr auto k_read_slice = std::chrono::milliseconds(100);

constexpr std::array<DriverKeyInfo, 9> k_base_keys = {{
    {"path", "string", "(required)",
     "the scale's device: /dev/serial/by-id/… for serial scales, /dev/hidrawN (or a udev "
     "symlink) for protocol hid"},
    {"protocol", "string", "\"st_gs\"",
     "what the indicator sends: and, st_gs, mt_sics, ohaus, toledo or hid"},
    {"baud", "integer", "9600", "serial speed, as set on the indicator (1200 … 230400)"},
    {"parity", "string", "\"none\"", "serial parity: none, even or odd"},
    {"data_bits", "integer", "8", "serial data bits: 7 or 8"},
    {"stop_bits", "integer", "1", "serial stop bits: 1 or 2"},
    {"stable_readings", "integer", "3",
     "consecutive stable frames with the same value that make a weight"},
    {"poll_interval", "duration", "\"500ms\"", "mt_sics only: how often `SI` is sent"},
    {"resolution", "number", "(exact)",
     "kilograms within which stable frames count as the same value, e.g. 0.002"},
}};

std::string errno_text(int err) {
  return std::strerror(err);
}

// What the reader reads from: a serial port, or a hidraw node (read-only, no termios).
class Device {
 public:
  virtual ~Device() = default;
  virtual Result<std::size_t> read(std::span<std::byte> buffer,
                                   std::chrono::steady_clock::time_point deadline,
                                   std::stop_token stop) = 0;
  virtual Status write(std::string_view bytes) = 0;
};

class SerialDevice final : public Device {
 public:
  explicit SerialDevice(std::unique_ptr<SerialPort> port) : m_port(std::move(port)) {}
  Result<std::size_t> read(std::span<std::byte> buffer,
                           std::chrono::steady_clock::time_point deadline,
                           std::stop_token stop) override {
    return m_port->read(buffer, deadline, std::move(stop));
  }
  Status write(std::string_view bytes) override { return m_port->write(bytes); }

 private:
  std::unique_ptr<SerialPort> m_port;
};

class HidrawDevice final : public Device {
 public:
  static Result<std::unique_ptr<Device>> open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
      const int err = errno;
      std::string hint;
      if (err == EACCES || err == EPERM)
        hint =
            "; hidraw nodes are root-only by default: add the udev rule from "
            "drivers/scale/README.md";
      else if (err == ENOENT || err == ENODEV || err == ENXIO)
        hint = "; check the cable and the path (ls -l /dev/hidraw*)";
      return fail(ErrorCode::device_unavailable,
                  fmt::format("scale {}: open failed: {}{}", path, errno_text(err), hint));
    }
    return std::unique_ptr<Device>(new HidrawDevice(fd, path));
  }
  ~HidrawDevice() override { ::close(m_fd); }

  Result<std::size_t> read(std::span<std::byte> buffer,
                           std::chrono::steady_clock::time_point deadline,
                           std::stop_token stop) override {
    while (!stop.stop_requested()) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return std::size_t{0};
      const auto wait = std::min<std::chrono::steady_clock::duration>(deadline - now, k_read_slice);
      pollfd pfd{m_fd, POLLIN, 0};
      const int ready = ::poll(&pfd, 1,
                               static_cast<int>(std::max<std::int64_t>(
                                   1, std::chrono::ceil<std::chrono::milliseconds>(wait).count())));
      if (ready < 0 && errno == EINTR) continue;
      if (ready < 0) return gone(errno);
      if (ready == 0) continue;
      const ssize_t n = ::read(m_fd, buffer.data(), buffer.size());
      if (n > 0) return static_cast<std::size_t>(n);
      if (n == 0) return gone(ENODEV);
      if (errno == EINTR || errno == EAGAIN) {
        if ((pfd.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0) return gone(ENODEV);
        continue;
      }
      return gone(errno);
    }
    return std::size_t{0};
  }

  Status write(std::string_view) override { return {}; }  // HID scales are never asked

 private:
  HidrawDevice(int fd, std::string path) : m_fd(fd), m_path(std::move(path)) {}
  std::unexpected<Error> gone(int err) const {
    return fail(ErrorCode::device_unavailable,
                fmt::format("scale {}: read failed: {}; it is reopened when it comes back", m_path,
                            errno_text(err)));
  }
  int m_fd;
  std::string m_path;
};

std::string_view status_name(Reading::Status status) {
  switch (status) {
    case Reading::Status::ok:
      return "stable";
    case Reading::Status::motion:
      return "in motion";
    case Reading::Status::overload:
      return "overload";
    case Reading::Status::underload:
      return "underload";
    case Reading::Status::error:
      return "error";
  }
  return "?";
}

class RealScaleReader final : public ScaleReader {
 public:
  RealScaleReader(ScaleConfig config, Env& env, Logger& log, std::string log_name)
      : m_config(std::move(config)),
        m_env(env),
        m_log(log),
        m_name(std::move(log_name)),
        m_splitter(m_config.protocol),
        m_stability(m_config.stable_readings, m_config.resolution_kg) {
    m_worker.set_state("stopped");
  }
  ~RealScaleReader() override { stop(); }

  Status start(std::function<void(const Weight&)> on_weight) override {
    if (m_worker.running()) return fail(ErrorCode::internal, "scale reader started twice");
    m_on_weight = std::move(on_weight);
    set_state("opening");
    return m_worker.start(m_name, [this](std::stop_token stop) { run(stop); });
  }

  void stop() override {
    if (!m_worker.running()) return;
    m_worker.stop();
    set_state("stopped");
  }

  ScaleHealth health() const override { return m_worker.health(); }

 private:
  void set_state(std::string state) { m_worker.set_state(std::move(state)); }

  void count_error(const std::string& message) {
    m_worker.note_error(message, m_env.now_unix_ms());
  }

  Result<std::unique_ptr<Device>> open_device() {
    if (m_config.protocol == Protocol::hid) return HidrawDevice::open(m_config.path);
    auto port = SerialPort::open(m_config.path, m_config.serial);
    if (!port) return std::unexpected(port.error());
    return std::unique_ptr<Device>(new SerialDevice(std::move(*port)));
  }

  void run(std::stop_token stop) {
    std::chrono::milliseconds backoff = k_backoff_min;
    bool waiting_logged = false;
    while (!stop.stop_requested()) {
      auto device = open_device();
      if (!device) {
        count_error(device.error().message);
        if (!waiting_logged) {
          m_log.warning(m_name, "{}; retrying (every {} s at most)", device.error().message,
                        k_backoff_max.count() / 1000);
          waiting_logged = true;
        }
        set_state("waiting for device");
        if (!m_env.sleep_for(backoff, stop)) return;
        backoff = std::min(backoff * 2, k_backoff_max);
        continue;
      }
      waiting_logged = false;
      backoff = k_backoff_min;
      m_splitter.reset();
      m_stability.reset();
      m_last_status.reset();
      set_state("connected");
      m_log.info(m_name, "connected to {} ({})", m_config.path, protocol_name(m_config.protocol));
      Status pumped = pump(**device, stop);
      device->reset();
      if (stop.stop_requested()) return;
      const std::string message = pumped ? "device closed" : pumped.error().message;
      count_error(message);
      m_log.warning(m_name, "{}", message);
      waiting_logged = true;  // the loss was logged; a failing reopen need not say it again
      set_state("waiting for device");
      if (!m_env.sleep_for(backoff, stop)) return;
    }
  }

  Status pump(Device& device, std::stop_token stop) {
    std::array<std::byte, 256> buffer{};
    std::vector<std::string> frames;
    const bool polls = m_config.protocol == Protocol::mt_sics;
    auto next_poll = m_env.steady_now();
    while (!stop.stop_requested()) {
      std::chrono::steady_clock::duration wait = 1s;
      if (polls) {
        const auto now = m_env.steady_now();
        if (now >= next_poll) {
          if (Status sent = device.write("SI\r\n"); !sent) return sent;
          next_poll = now + m_config.poll_interval;
        }
        // Wake in time for the next poll on the Env clock (a fake one moves only in tests).
        wait = std::clamp<std::chrono::steady_clock::duration>(next_poll - now, 1ms, k_read_slice);
      }
      auto n = device.read(buffer, std::chrono::steady_clock::now() + wait, stop);
      if (!n) return std::unexpected(n.error());
      if (*n == 0) continue;
      frames.clear();
      const std::uint64_t garbage_before = m_splitter.garbage();
      m_splitter.feed(std::string_view(reinterpret_cast<const char*>(buffer.data()), *n), frames);
      if (const std::uint64_t dropped = m_splitter.garbage() - garbage_before; dropped > 0) {
        note_malformed(dropped, "bytes outside any frame (line noise or a cut frame)");
      }
      for (const std::string& frame : frames)
        handle(frame);
    }
    return {};
  }

  void note_malformed(std::uint64_t count, const std::string& why) {
    m_worker.update([&](ScaleHealth& h) { h.malformed += count; });
    if (!m_in_garbage) {
      m_log.warning(m_name, "skipping malformed data: {} (check protocol, baud and parity)", why);
      m_in_garbage = true;
    }
  }

  // A frame is counted once it is handled, weight delivered or malformed counted: whoever waits
  // for the count (a test) sees everything the frame caused. Its time is read first, before the
  // count lets a test on the fake Env clock move the clock.
  void handle(const std::string& frame) {
    const std::int64_t unix_ms = m_env.now_unix_ms();
    const auto at = m_env.steady_now();
    handle_at(frame, unix_ms, at);
    m_worker.update([](ScaleHealth& h) { ++h.frames; });
  }

  void handle_at(const std::string& frame, std::int64_t unix_ms,
                 std::chrono::steady_clock::time_point at) {
    auto reading = parse_frame(m_config.protocol, frame);
    if (!reading) {
      note_malformed(1, reading.error().message);
      return;
    }
    m_in_garbage = false;
    const Reading::Status status = reading->status;
    if (status == Reading::Status::overload || status == Reading::Status::underload)
      m_worker.update([](ScaleHealth& h) { ++h.overloads; });
    if (status != m_last_status) {
      if (status == Reading::Status::overload || status == Reading::Status::underload ||
          status == Reading::Status::error) {
        m_log.warning(m_name, "scale reports {}", status_name(status));
      } else {
        m_log.debug(m_name, "scale {}", status_name(status));
      }
      m_last_status = status;
    }
    const auto settled = m_stability.add(*reading);
    if (!settled) return;
    Weight weight;
    weight.kilograms = settled->kilograms;
    weight.net = settled->net;
    weight.unix_ms = unix_ms;
    weight.at = at;
    m_worker.update([&](ScaleHealth& h) {
      ++h.weights;
      h.last_kilograms = weight.kilograms;
    });
    m_log.debug(m_name, "stable weight {} kg{}", weight.kilograms, weight.net ? " (net)" : "");
    if (m_on_weight) m_on_weight(weight);
  }

  const ScaleConfig m_config;
  Env& m_env;
  Logger& m_log;
  const std::string m_name;
  std::function<void(const Weight&)> m_on_weight;
  // Used by the reader's thread only.
  FrameSplitter m_splitter;
  Stability m_stability;
  std::optional<Reading::Status> m_last_status;
  bool m_in_garbage = false;

  DriverThread<ScaleHealth> m_worker;  // last: joined before the members it uses go
};

}  // namespace

const std::vector<DriverKeyInfo>& scale_keys(std::string_view prefix) {
  return prefixed_keys(k_base_keys, prefix);
}

Result<ScaleConfig> parse_scale_config(const DriverTable& table, std::string_view prefix) {
  ScaleConfig config;
  auto path = table.required_string(prefixed_key(prefix, "path"));
  if (!path) return std::unexpected(path.error());
  config.path = *path;

  auto protocol = table.choice(prefixed_key(prefix, "protocol"), "st_gs", protocol_names());
  if (!protocol) return std::unexpected(protocol.error());
  config.protocol = *protocol_from_name(*protocol);

  auto serial = read_serial_settings(table, prefix);
  if (!serial) return std::unexpected(serial.error());
  config.serial = *serial;

  auto stable = table.integer(prefixed_key(prefix, "stable_readings"), 3, 1, 100);
  if (!stable) return std::unexpected(stable.error());
  config.stable_readings = static_cast<int>(*stable);

  const std::string poll_key = prefixed_key(prefix, "poll_interval");
  auto poll = table.duration(poll_key, std::chrono::milliseconds(500));
  if (!poll) return std::unexpected(poll.error());
  if (*poll < std::chrono::milliseconds(50) || *poll > std::chrono::milliseconds(60'000)) {
    return std::unexpected(table.error(poll_key, "must be from 50ms to 60s"));
  }
  config.poll_interval = *poll;

  auto resolution = table.positive_number(prefixed_key(prefix, "resolution"), 0.0);
  if (!resolution) return std::unexpected(resolution.error());
  config.resolution_kg = *resolution;
  return config;
}

std::unique_ptr<ScaleReader> make_scale_reader(ScaleConfig config, Env& env, Logger& log,
                                               std::string log_name) {
  return std::make_unique<RealScaleReader>(std::move(config), env, log, std::move(log_name));
}

}  // namespace agent::scale
