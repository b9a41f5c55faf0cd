// SPDX-License-Identifier: AGPL-3.0-or-later
// reflow-fw-sim: the firmware's main logic (reflow_fw_app) on the host, the stand-in for the
// board until the STM32 port exists. It makes a pseudo-terminal (openpty) and plays the board on
// its master side; the agent's mcu driver opens the slave (printed on stdout, and linked at
// --link). Clamp samples are synthesised: a 50 Hz sine of the RMS current given per --session,
// or ADC counts read from a file (--samples), both timed from the agent's first config (the
// board samples nothing before it). The board's clock is virtual: it runs --speed
// times faster than real time, so tests see minutes of a machine in seconds without sleeping.
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <termios.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "reflow/fw/app.hpp"

namespace {

using reflow::fw::App;

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) {
  g_stop = 1;
}

class VirtualClock final : public reflow::fw::Clock {
 public:
  std::uint64_t now_ms() override { return m_now_ms; }
  void set(std::uint64_t ms) { m_now_ms = ms; }

 private:
  std::uint64_t m_now_ms = 0;
};

class FdSink final : public reflow::fw::ByteSink {
 public:
  explicit FdSink(int fd) : m_fd(fd) {}
  void write(std::span<const std::uint8_t> bytes) override {
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(m_fd, bytes.data() + done, bytes.size() - done);
      if (n > 0) {
        done += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno != EAGAIN && errno != EINTR) return;  // nobody reads: the line drops it
      pollfd pfd{m_fd, POLLOUT, 0};
      if (::poll(&pfd, 1, 100) <= 0) return;
    }
  }

 private:
  int m_fd;
};

// The boot counter "in flash": a text file holding the last value.
class FileBootCounter final : public reflow::fw::BootCounter {
 public:
  explicit FileBootCounter(std::filesystem::path path) : m_path(std::move(path)) {}
  std::uint32_t increment(bool& ok) override {
    std::uint32_t value = 0;
    if (std::ifstream in(m_path); in) in >> value;
    ++value;
    std::ofstream out(m_path, std::ios::trunc);
    out << value << '\n';
    out.flush();
    ok = static_cast<bool>(out);
    return value;
  }

 private:
  std::filesystem::path m_path;
};

struct Session {
  std::uint64_t start_ms = 0;
  std::uint64_t length_ms = 0;
  double amps = 0;
};

struct BadgeRead {
  std::uint64_t at_ms = 0;
  std::string hex;  // 10 hex characters
};

// Parses "START_MS:LENGTH_MS:AMPS".
Session parse_session(const std::string& text) {
  Session s;
  char extra = 0;
  double amps = 0;
  unsigned long long start = 0;
  unsigned long long length = 0;
  if (std::sscanf(text.c_str(), "%llu:%llu:%lf%c", &start, &length, &amps, &extra) != 3 || amps < 0)
    throw CLI::ValidationError("--session", "expected START_MS:LENGTH_MS:AMPS, got " + text);
  s.start_ms = start;
  s.length_ms = length;
  s.amps = amps;
  return s;
}

// The RDM6300's frame for a tag: STX, 10 hex, 2 hex XOR checksum, ETX.
std::string rdm6300_frame(const std::string& hex) {
  unsigned checksum = 0;
  for (std::size_t i = 0; i < 10; i += 2)
    checksum ^= static_cast<unsigned>(std::stoul(hex.substr(i, 2), nullptr, 16));
  return fmt::format("\x02{}{:02X}\x03", hex, checksum);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"reflow-fw-sim: the machine node's firmware logic on a pseudo-terminal (issue 18)"};
  std::string link;
  std::filesystem::path boot_file = "fw-sim-boot";
  double speed = 1.0;
  std::vector<std::string> session_texts;
  std::vector<std::string> badge_texts;
  std::filesystem::path samples_file;
  std::uint64_t exit_after_ms = 0;
  unsigned mid_rail = 2048;
  cli.add_option("--link", link, "symlink to create at this path, pointing at the pty's slave");
  cli.add_option("--boot-file", boot_file, "the persisted boot counter (a text file)")
      ->capture_default_str();
  cli.add_option("--speed", speed, "board milliseconds per real millisecond")
      ->check(CLI::Range(0.001, 100000.0))
      ->capture_default_str();
  cli.add_option("--session", session_texts,
                 "START_MS:LENGTH_MS:AMPS: a 50 Hz load of AMPS RMS, START_MS after the board was "
                 "configured");
  cli.add_option("--samples", samples_file,
                 "ADC counts, one per line, played from the configuration on at its rate")
      ->check(CLI::ExistingFile);
  cli.add_option("--badge", badge_texts, "AT_MS:TAG: a badge read (TAG: 10 hex characters)");
  cli.add_option("--mid-rail", mid_rail, "ADC counts of the clamp's bias")->capture_default_str();
  cli.add_option("--exit-after", exit_after_ms,
                 "board ms after which to exit (0: run until a signal)");
  CLI11_PARSE(cli, argc, argv);

  std::vector<Session> sessions;
  for (const auto& t : session_texts)
    sessions.push_back(parse_session(t));
  std::vector<BadgeRead> badges;
  for (const auto& t : badge_texts) {
    const auto colon = t.find(':');
    if (colon == std::string::npos || t.size() - colon - 1 != 10) {
      std::fprintf(stderr, "--badge: expected AT_MS:TAG (10 hex characters), got %s\n", t.c_str());
      return 2;
    }
    badges.push_back({std::stoull(t.substr(0, colon)), t.substr(colon + 1)});
  }
  std::vector<std::uint16_t> recorded;
  if (!samples_file.empty()) {
    std::ifstream in(samples_file);
    for (unsigned v = 0; in >> v;)
      recorded.push_back(static_cast<std::uint16_t>(v));
  }

  int master = -1;
  int slave = -1;
  std::array<char, 128> name{};
  if (::openpty(&master, &slave, name.data(), nullptr, nullptr) != 0) {
    std::perror("openpty");
    return 1;
  }
  termios tio{};
  ::tcgetattr(slave, &tio);
  ::cfmakeraw(&tio);
  ::tcsetattr(slave, TCSANOW, &tio);
  ::fcntl(master, F_SETFL, ::fcntl(master, F_GETFL) | O_NONBLOCK);
  if (!link.empty()) {
    std::error_code ec;
    std::filesystem::remove(link, ec);
    std::filesystem::create_symlink(name.data(), link, ec);
    if (ec) {
      std::fprintf(stderr, "cannot link %s: %s\n", link.c_str(), ec.message().c_str());
      return 1;
    }
  }
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);

  VirtualClock clock;
  FdSink uart(master);
  FileBootCounter boot_counter(boot_file);
  reflow::fw::Hello identity;
  identity.fw_version = 0x000100;  // 0.1.0
  for (std::size_t i = 0; i < identity.board_id.size(); ++i)
    identity.board_id[i] = static_cast<std::uint8_t>(0xB0 + i);
  identity.capabilities = reflow::fw::k_cap_current | reflow::fw::k_cap_badge;
  App app(clock, uart, boot_counter, identity);
  app.begin();
  std::printf("pty %s boot %u\n", name.data(), app.boot());
  std::fflush(stdout);

  const auto real_start = std::chrono::steady_clock::now();
  std::uint64_t samples_taken = 0;  // since configured
  std::uint64_t sampling_from_ms = 0;
  bool was_configured = false;
  std::size_t next_badge = 0;
  std::uint32_t last_seq_logged = 0;
  std::size_t unacked_logged = 0;
  while (g_stop == 0) {
    const double real_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - real_start)
            .count();
    const auto target_ms = static_cast<std::uint64_t>(real_ms * speed);
    if (exit_after_ms != 0 && target_ms >= exit_after_ms) break;

    // Advance the board one millisecond at a time so every timer and sample sees its time.
    for (std::uint64_t ms = clock.now_ms() + 1; ms <= target_ms; ++ms) {
      clock.set(ms);
      if (app.configured() && !was_configured) {
        was_configured = true;
        sampling_from_ms = ms;
        samples_taken = 0;
        std::fprintf(stderr, "configured at %llu ms\n", static_cast<unsigned long long>(ms));
      }
      if (app.configured()) {
        const auto& c = app.config();
        const std::uint64_t due = (ms - sampling_from_ms) * c.sample_rate_hz / 1000;
        for (; samples_taken < due; ++samples_taken) {
          const double t = static_cast<double>(samples_taken) / c.sample_rate_hz;
          const auto since_config_ms = samples_taken * 1000 / c.sample_rate_hz;
          std::uint16_t counts = static_cast<std::uint16_t>(mid_rail);
          if (samples_taken < recorded.size()) {
            counts = recorded[samples_taken];
          } else {
            for (const Session& s : sessions) {
              if (since_config_ms < s.start_ms || since_config_ms >= s.start_ms + s.length_ms)
                continue;
              const double peak_counts = s.amps * std::numbers::sqrt2 * 1e6 / c.ua_per_count;
              counts = static_cast<std::uint16_t>(
                  std::lround(mid_rail + peak_counts * std::sin(2 * std::numbers::pi * 50.0 * t)));
            }
          }
          app.on_sample(counts);
        }
      }
      for (; next_badge < badges.size() && badges[next_badge].at_ms <= ms; ++next_badge)
        for (const char ch : rdm6300_frame(badges[next_badge].hex))
          app.on_badge_byte(static_cast<std::uint8_t>(ch));
      app.poll();
    }
    if (app.last_seq() != last_seq_logged || app.unacked() != unacked_logged) {
      last_seq_logged = app.last_seq();
      unacked_logged = app.unacked();
      std::fprintf(stderr, "sent seq %u at %llu ms, %zu unacked\n", last_seq_logged,
                   static_cast<unsigned long long>(clock.now_ms()), app.unacked());
    }

    pollfd pfd{master, POLLIN, 0};
    if (::poll(&pfd, 1, 1) > 0 && (pfd.revents & POLLIN) != 0) {
      std::array<std::uint8_t, 256> buf{};
      const ssize_t n = ::read(master, buf.data(), buf.size());
      for (ssize_t i = 0; i < n; ++i)
        app.on_rx_byte(buf[static_cast<std::size_t>(i)]);
    }
  }
  if (!link.empty()) {
    std::error_code ec;
    std::filesystem::remove(link, ec);
  }
  ::close(slave);
  ::close(master);
  return 0;
}
