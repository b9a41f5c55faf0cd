// SPDX-License-Identifier: AGPL-3.0-or-later
// agent::SerialPort against a real pseudo-terminal pair: the slave side is what the agent opens,
// the master side plays the device.
#include <termios.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include <reflow/drivers/serial_port.hpp>

#include "pty.hpp"

namespace {

using namespace std::chrono_literals;

class SerialPortTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(m_pty.ok()) << "openpty failed"; }

  // Reads what the port wrote, waiting up to a generous bound.
  std::string read_master(std::size_t want) { return m_pty.read(want, 10s); }

  std::string read_port(agent::SerialPort& port, std::size_t want) {
    std::string out;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (out.size() < want && std::chrono::steady_clock::now() < deadline) {
      std::array<std::byte, 64> buf{};
      auto n = port.read(buf, deadline, std::stop_token{});
      if (!n) break;
      out.append(reinterpret_cast<const char*>(buf.data()), *n);
    }
    return out;
  }

  reflow_test::Pty m_pty;
};

TEST_F(SerialPortTest, AppliesRawModeAndLineSettings) {
  agent::SerialSettings settings;
  settings.baud = 4800;
  settings.data_bits = 7;
  settings.parity = agent::SerialSettings::Parity::odd;
  settings.stop_bits = 2;
  auto port = agent::SerialPort::open(m_pty.name(), settings);
  ASSERT_TRUE(port) << port.error().message;

  termios tio{};
  ASSERT_EQ(::tcgetattr(m_pty.slave(), &tio), 0);
  EXPECT_EQ(::cfgetispeed(&tio), B4800);
  EXPECT_EQ(::cfgetospeed(&tio), B4800);
  EXPECT_EQ(tio.c_lflag & (ICANON | ECHO | ISIG), 0u);
  EXPECT_EQ(tio.c_oflag & OPOST, 0u);
  EXPECT_EQ(tio.c_iflag & (ICRNL | INLCR | IXON | IXOFF), 0u);
  EXPECT_EQ(tio.c_cflag & CRTSCTS, 0u);
  EXPECT_NE(tio.c_cflag & CSTOPB, 0u);
  // Linux ptys force CS8 and clear PARENB whatever is set (pty_set_termios), so only the parity's
  // odd/even bit is observable here; a real UART keeps all of them.
  EXPECT_NE(tio.c_cflag & PARODD, 0u);
}

TEST_F(SerialPortTest, DefaultsTo8N1) {
  auto port = agent::SerialPort::open(m_pty.name(), agent::SerialSettings{});
  ASSERT_TRUE(port) << port.error().message;
  termios tio{};
  ASSERT_EQ(::tcgetattr(m_pty.slave(), &tio), 0);
  EXPECT_EQ(::cfgetispeed(&tio), B9600);
  EXPECT_EQ(tio.c_cflag & CSIZE, static_cast<tcflag_t>(CS8));
  EXPECT_EQ(tio.c_cflag & (PARENB | CSTOPB), 0u);
}

TEST_F(SerialPortTest, CarriesBytesBothWaysUnchanged) {
  auto port = agent::SerialPort::open(m_pty.name(), agent::SerialSettings{});
  ASSERT_TRUE(port) << port.error().message;

  ASSERT_TRUE((*port)->write("SI\r\n"));
  EXPECT_EQ(read_master(4), "SI\r\n");  // raw mode: no CR/LF translation

  const std::string frame = "ST,GS,+  1.234,kg\r\n\x03";
  ASSERT_TRUE(m_pty.write(frame));
  EXPECT_EQ(read_port(**port, frame.size()), frame);
}

TEST_F(SerialPortTest, ReturnsZeroBytesAtTheDeadline) {
  auto port = agent::SerialPort::open(m_pty.name(), agent::SerialSettings{});
  ASSERT_TRUE(port) << port.error().message;
  std::array<std::byte, 16> buf{};
  const auto deadline = std::chrono::steady_clock::now() + 50ms;
  auto n = (*port)->read(buf, deadline, std::stop_token{});
  ASSERT_TRUE(n) << n.error().message;
  EXPECT_EQ(*n, 0u);
  EXPECT_GE(std::chrono::steady_clock::now(), deadline);
}

TEST_F(SerialPortTest, ReturnsZeroBytesWhenStopIsRequested) {
  auto port = agent::SerialPort::open(m_pty.name(), agent::SerialSettings{});
  ASSERT_TRUE(port) << port.error().message;
  std::stop_source stop;
  std::jthread stopper([&] { stop.request_stop(); });
  std::array<std::byte, 16> buf{};
  // A deadline far away: only the stop request can end this read.
  auto n = (*port)->read(buf, std::chrono::steady_clock::now() + 1h, stop.get_token());
  ASSERT_TRUE(n) << n.error().message;
  EXPECT_EQ(*n, 0u);
}

TEST_F(SerialPortTest, ReportsDeviceUnavailableWhenTheOtherSideCloses) {
  auto port = agent::SerialPort::open(m_pty.name(), agent::SerialSettings{});
  ASSERT_TRUE(port) << port.error().message;
  // The agent's own slave fd stays open; only the "device" side goes away.
  m_pty.close_master();
  std::array<std::byte, 16> buf{};
  auto n = (*port)->read(buf, std::chrono::steady_clock::now() + 10s, std::stop_token{});
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error().code, agent::ErrorCode::device_unavailable) << n.error().message;
}

TEST_F(SerialPortTest, OpeningAMissingPathIsDeviceUnavailable) {
  auto port = agent::SerialPort::open("/dev/serial/by-id/usb-no-such-scale-if00-port0",
                                      agent::SerialSettings{});
  ASSERT_FALSE(port);
  EXPECT_EQ(port.error().code, agent::ErrorCode::device_unavailable);
  EXPECT_NE(port.error().message.find("usb-no-such-scale"), std::string::npos);
}

TEST_F(SerialPortTest, RejectsABaudRateTermiosDoesNotHave) {
  agent::SerialSettings settings;
  settings.baud = 9601;
  auto port = agent::SerialPort::open(m_pty.name(), settings);
  ASSERT_FALSE(port);
  EXPECT_EQ(port.error().code, agent::ErrorCode::invalid_argument);
  EXPECT_NE(port.error().message.find("9601"), std::string::npos);
}

TEST_F(SerialPortTest, ParsesParityNames) {
  EXPECT_EQ(agent::parse_parity("none").value(), agent::SerialSettings::Parity::none);
  EXPECT_EQ(agent::parse_parity("even").value(), agent::SerialSettings::Parity::even);
  EXPECT_EQ(agent::parse_parity("odd").value(), agent::SerialSettings::Parity::odd);
  auto bad = agent::parse_parity("mark");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, agent::ErrorCode::invalid_argument);
  EXPECT_NE(bad.error().message.find("mark"), std::string::npos);
}

}  // namespace
