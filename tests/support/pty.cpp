// SPDX-License-Identifier: AGPL-3.0-or-later
#include "pty.hpp"

#include <poll.h>
#include <pty.h>
#include <termios.h>
#include <unistd.h>

#include <array>

namespace reflow_test {

Pty::Pty(Termios termios) {
  std::array<char, 128> name{};
  if (::openpty(&m_master, &m_slave, name.data(), nullptr, nullptr) != 0) {
    m_master = m_slave = -1;
    return;
  }
  m_name = name.data();
  if (termios == Termios::raw) {
    ::termios tio{};
    ::tcgetattr(m_slave, &tio);
    ::cfmakeraw(&tio);
    ::tcsetattr(m_slave, TCSANOW, &tio);
  }
}

Pty::~Pty() {
  close();
}

bool Pty::write(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(m_master, bytes.data(), bytes.size());
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

std::string Pty::read_some(std::chrono::milliseconds wait) {
  pollfd pfd{m_master, POLLIN, 0};
  if (::poll(&pfd, 1, static_cast<int>(wait.count())) <= 0) return {};
  std::array<char, 256> buf{};
  const ssize_t n = ::read(m_master, buf.data(), buf.size());
  if (n <= 0) return {};
  return std::string(buf.data(), static_cast<std::size_t>(n));
}

std::string Pty::read(std::size_t want, std::chrono::steady_clock::duration bound) {
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (out.size() < want && std::chrono::steady_clock::now() < deadline)
    out += read_some();
  return out;
}

bool Pty::expect(std::string_view text, std::chrono::steady_clock::duration bound) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (true) {
    if (const auto pos = m_input.find(text); pos != std::string::npos) {
      m_input.erase(0, pos + text.size());
      return true;
    }
    if (std::chrono::steady_clock::now() >= deadline) return false;
    m_input += read_some();
  }
}

void Pty::close_slave() {
  if (m_slave >= 0) ::close(m_slave);
  m_slave = -1;
}

void Pty::close_master() {
  if (m_master >= 0) ::close(m_master);
  m_master = -1;
}

}  // namespace reflow_test
