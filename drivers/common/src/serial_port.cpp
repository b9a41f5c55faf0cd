// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/serial_port.hpp>

#include <fcntl.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace agent {
namespace {

// A stop request must be noticed even while waiting for a slow device.
constexpr auto k_stop_check = std::chrono::milliseconds(100);

struct BaudEntry {
  int baud;
  speed_t speed;
};

constexpr BaudEntry k_bauds[] = {
    {1200, B1200},   {2400, B2400},   {4800, B4800},     {9600, B9600},     {19200, B19200},
    {38400, B38400}, {57600, B57600}, {115200, B115200}, {230400, B230400},
};

bool is_vanished(int err) {
  return err == ENOENT || err == ENODEV || err == ENXIO || err == EIO || err == EACCES ||
         err == EPERM || err == EBADF;
}

std::string errno_text(int err) {
  return std::strerror(err);
}

Error device_error(const std::filesystem::path& path, std::string_view what, int err) {
  std::string hint;
  if (err == EACCES || err == EPERM) {
    hint =
        "; add the agent's user to the `dialout` group (sudo usermod -aG dialout USER) and "
        "restart the agent";
  } else if (err == ENOENT || err == ENODEV || err == ENXIO) {
    hint = "; check the cable and the path (ls -l /dev/serial/by-id/)";
  } else if (err == EIO) {
    hint = "; the device went away (cable pulled?); it is reopened when it comes back";
  }
  return Error{
      ErrorCode::device_unavailable,
      fmt::format("serial {}: {} failed: {}{}", path.string(), what, errno_text(err), hint)};
}

}  // namespace

Result<SerialSettings::Parity> parse_parity(std::string_view text) {
  if (text == "none") return SerialSettings::Parity::none;
  if (text == "even") return SerialSettings::Parity::even;
  if (text == "odd") return SerialSettings::Parity::odd;
  return fail(ErrorCode::invalid_argument,
              fmt::format("parity: expected \"none\", \"even\" or \"odd\"; got \"{}\"", text));
}

Result<SerialSettings> read_serial_settings(const DriverTable& table, std::string_view prefix) {
  const auto key = [&](std::string_view name) { return fmt::format("{}{}", prefix, name); };
  SerialSettings settings;
  auto baud =
      table.integer(key("baud"), settings.baud, k_bauds[0].baud, std::end(k_bauds)[-1].baud);
  if (!baud) return std::unexpected(baud.error());
  if (std::none_of(std::begin(k_bauds), std::end(k_bauds),
                   [&](const BaudEntry& e) { return e.baud == *baud; })) {
    return std::unexpected(table.error(
        key("baud"), fmt::format("{} is not a serial rate; use 1200, 2400, 4800, 9600, 19200, "
                                 "38400, 57600, 115200 or 230400",
                                 *baud)));
  }
  settings.baud = static_cast<int>(*baud);
  auto data_bits = table.integer(key("data_bits"), settings.data_bits, 7, 8);
  if (!data_bits) return std::unexpected(data_bits.error());
  settings.data_bits = static_cast<int>(*data_bits);
  auto parity = table.choice(key("parity"), "none", {"none", "even", "odd"});
  if (!parity) return std::unexpected(parity.error());
  settings.parity = *parse_parity(*parity);
  auto stop_bits = table.integer(key("stop_bits"), settings.stop_bits, 1, 2);
  if (!stop_bits) return std::unexpected(stop_bits.error());
  settings.stop_bits = static_cast<int>(*stop_bits);
  return settings;
}

Result<std::unique_ptr<SerialPort>> SerialPort::open(const std::filesystem::path& path,
                                                     const SerialSettings& settings) {
  const auto baud = std::find_if(std::begin(k_bauds), std::end(k_bauds),
                                 [&](const BaudEntry& e) { return e.baud == settings.baud; });
  if (baud == std::end(k_bauds)) {
    return fail(ErrorCode::invalid_argument,
                fmt::format("serial {}: baud {} is not a supported rate; use one of 1200, 2400, "
                            "4800, 9600, 19200, 38400, 57600, 115200, 230400",
                            path.string(), settings.baud));
  }
  if (settings.data_bits != 7 && settings.data_bits != 8) {
    return fail(ErrorCode::invalid_argument,
                fmt::format("serial {}: data bits must be 7 or 8; got {}", path.string(),
                            settings.data_bits));
  }
  if (settings.stop_bits != 1 && settings.stop_bits != 2) {
    return fail(ErrorCode::invalid_argument,
                fmt::format("serial {}: stop bits must be 1 or 2; got {}", path.string(),
                            settings.stop_bits));
  }

  const int fd = ::open(path.c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENODEV || err == ENXIO || err == EACCES || err == EPERM ||
        err == EIO) {
      return std::unexpected(device_error(path, "open", err));
    }
    return fail(ErrorCode::io,
                fmt::format("serial {}: open failed: {}", path.string(), errno_text(err)));
  }
  std::unique_ptr<SerialPort> port(new SerialPort(fd, path));

  termios tio{};
  if (::tcgetattr(fd, &tio) != 0) {
    const int err = errno;
    if (err == ENOTTY) {
      return fail(ErrorCode::io, fmt::format("serial {}: not a serial device (tcgetattr: {}); "
                                             "configure the tty path of the scale or scanner",
                                             path.string(), errno_text(err)));
    }
    if (is_vanished(err)) return std::unexpected(device_error(path, "tcgetattr", err));
    return fail(ErrorCode::io,
                fmt::format("serial {}: tcgetattr failed: {}", path.string(), errno_text(err)));
  }
  ::cfmakeraw(&tio);
  tio.c_cflag |= CLOCAL | CREAD;
  tio.c_cflag &= ~static_cast<tcflag_t>(CRTSCTS | CSIZE | PARENB | PARODD | CSTOPB);
  tio.c_cflag |= settings.data_bits == 7 ? CS7 : CS8;
  if (settings.parity != SerialSettings::Parity::none) {
    tio.c_cflag |= PARENB;
    if (settings.parity == SerialSettings::Parity::odd) tio.c_cflag |= PARODD;
  }
  if (settings.stop_bits == 2) tio.c_cflag |= CSTOPB;
  tio.c_iflag &= ~static_cast<tcflag_t>(IXON | IXOFF | IXANY);
  // Non-blocking reads return what is there; poll() does the waiting.
  tio.c_cc[VMIN] = 0;
  tio.c_cc[VTIME] = 0;
  ::cfsetispeed(&tio, baud->speed);
  ::cfsetospeed(&tio, baud->speed);
  if (::tcsetattr(fd, TCSANOW, &tio) != 0) {
    const int err = errno;
    if (is_vanished(err)) return std::unexpected(device_error(path, "tcsetattr", err));
    return fail(ErrorCode::io,
                fmt::format("serial {}: tcsetattr failed: {}", path.string(), errno_text(err)));
  }
  // Bytes that piled up while nobody listened are stale readings.
  ::tcflush(fd, TCIFLUSH);
  return port;
}

SerialPort::~SerialPort() {
  if (m_fd >= 0) ::close(m_fd);
}

Result<std::size_t> SerialPort::read(std::span<std::byte> buffer,
                                     std::chrono::steady_clock::time_point deadline,
                                     std::stop_token stop) {
  if (buffer.empty()) return std::size_t{0};
  while (!stop.stop_requested()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return std::size_t{0};
    const auto wait = std::min<std::chrono::steady_clock::duration>(deadline - now, k_stop_check);
    const int timeout_ms = static_cast<int>(
        std::max<std::int64_t>(1, std::chrono::ceil<std::chrono::milliseconds>(wait).count()));
    pollfd pfd{m_fd, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      return fail(ErrorCode::io,
                  fmt::format("serial {}: poll failed: {}", m_path.string(), errno_text(err)));
    }
    if (ready == 0) continue;
    if ((pfd.revents & POLLNVAL) != 0) {
      return std::unexpected(device_error(m_path, "poll", EBADF));
    }
    // Read first even on POLLHUP: the last bytes before a hangup still count.
    const ssize_t n = ::read(m_fd, buffer.data(), buffer.size());
    if (n > 0) return static_cast<std::size_t>(n);
    if (n == 0) {
      return fail(ErrorCode::device_unavailable,
                  fmt::format("serial {}: the device closed (end of file); it is reopened when "
                              "it comes back",
                              m_path.string()));
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      if ((pfd.revents & (POLLHUP | POLLERR)) != 0) {
        return fail(ErrorCode::device_unavailable,
                    fmt::format("serial {}: the device hung up; it is reopened when it comes back",
                                m_path.string()));
      }
      continue;
    }
    if (is_vanished(err)) return std::unexpected(device_error(m_path, "read", err));
    return fail(ErrorCode::io,
                fmt::format("serial {}: read failed: {}", m_path.string(), errno_text(err)));
  }
  return std::size_t{0};
}

Status SerialPort::write(std::string_view bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(m_fd, bytes.data() + done, bytes.size() - done);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    const int err = n < 0 ? errno : EIO;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      // The output buffer is full: wait for room rather than spin, bounded so a stuck device
      // does not hang the caller forever.
      pollfd pfd{m_fd, POLLOUT, 0};
      const int ready = ::poll(&pfd, 1, 1000);
      if (ready == 0) {
        return fail(ErrorCode::device_unavailable,
                    fmt::format("serial {}: write stalled for 1 s; check the cable and flow "
                                "control of the device",
                                m_path.string()));
      }
      if (ready > 0 && (pfd.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0) {
        return std::unexpected(device_error(m_path, "write", EIO));
      }
      continue;
    }
    if (is_vanished(err)) return std::unexpected(device_error(m_path, "write", err));
    return fail(ErrorCode::io,
                fmt::format("serial {}: write failed: {}", m_path.string(), errno_text(err)));
  }
  return {};
}

}  // namespace agent
