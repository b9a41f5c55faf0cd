// SPDX-License-Identifier: AGPL-3.0-or-later
// The firmware's main logic without a board (issue 18): hello until configured, the agent's
// config applied, clamp samples → RMS → sessions, the running input, S0 pulses and badges into
// sequenced messages kept in the resend ring, heartbeats, resending and acks
// (docs/firmware-link.md, "LINK §N"). The board layer (or the host simulator, reflow-fw-sim)
// implements the small interfaces below and calls the App's handlers from its main loop. No heap,
// no exceptions, no RTTI, like firmware/core.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "reflow/fw/inputs.hpp"
#include "reflow/fw/link.hpp"
#include "reflow/fw/measure.hpp"
#include "reflow/fw/messages.hpp"
#include "reflow/fw/resend_ring.hpp"

namespace reflow::fw {

/// The board's monotonic clock: milliseconds since boot (LINK §2), never decreasing.
class Clock {
 public:
  virtual std::uint64_t now_ms() = 0;

 protected:
  ~Clock() = default;
};

/// The UART towards the agent, transmit side: writes every byte given (blocking or buffered).
class ByteSink {
 public:
  virtual void write(std::span<const std::uint8_t> bytes) = 0;

 protected:
  ~ByteSink() = default;
};

/// The boot counter persisted in flash (LINK §3 `boot`).
class BootCounter {
 public:
  /// Increments the stored counter and returns the new value (1 on a blank store). False in
  /// `ok` when the store failed: the app then runs with the returned value and reports error
  /// 4 (flash, LINK §4.8).
  virtual std::uint32_t increment(bool& ok) = 0;

 protected:
  ~BootCounter() = default;
};

/// Timing of the app's own messages (LINK §4.1, §4.7, §5, §4.5).
inline constexpr std::uint64_t k_hello_interval_ms = 1'000;
inline constexpr std::uint64_t k_heartbeat_interval_ms = 5'000;
inline constexpr std::uint64_t k_resend_after_ms = 2'000;
inline constexpr std::uint64_t k_pulses_interval_ms = 1'000;

/// The main logic. The board layer calls begin() once, then from its loop: on_rx_byte() for each
/// byte from the agent, on_sample() for each clamp ADC sample (at the configured rate),
/// on_running() and on_s0() with the inputs' levels, on_badge_byte() for each byte from the badge
/// reader, and poll() at least every few milliseconds for the timers. Everything happens in those
/// calls (single-threaded; an ISR should only queue bytes and samples). About 3 KiB of static
/// state, mostly the resend ring.
class App {
 public:
  /// `identity`: firmware version, board id and capabilities for hello.
  App(Clock& clock, ByteSink& uart, BootCounter& boot_counter, const Hello& identity)
      : m_clock(clock), m_uart(uart), m_boot_counter(boot_counter), m_identity(identity) {}

  /// Increments the boot counter, ends any partial frame on the line (a 0x00) and sends hello.
  void begin();
  /// One byte from the agent: config (LINK §4.2) and ack (LINK §4.9) are acted on; frames for
  /// another boot (except config) and unknown types are ignored; bad frames are counted.
  void on_rx_byte(std::uint8_t byte);
  /// One clamp sample in ADC counts, taken now. Ignored until configured.
  void on_sample(std::uint16_t counts);
  /// The running contact's raw level now (debounced here; sessions of source 2).
  void on_running(bool level);
  /// The S0 input's level now (true: active).
  void on_s0(bool active);
  /// One byte from the badge reader (RDM6300 frames).
  void on_badge_byte(std::uint8_t byte);
  /// Timers: hello until configured, heartbeat, resend, pulses.
  void poll();
  /// Counts a sample the board lost (the loop was late): the heartbeat's dropped_samples.
  void note_dropped_sample() { ++m_dropped_samples; }

  std::uint32_t boot() const { return m_boot; }
  bool configured() const { return m_configured; }
  const Config& config() const { return m_config; }
  /// Messages waiting for an ack.
  std::size_t unacked() const { return m_ring.size(); }
  /// The last seq given to a sequenced message (0: none yet).
  std::uint32_t last_seq() const { return m_seq; }
  bool in_session() const { return m_sessions.in_session(); }
  const FrameDecoder& decoder() const { return m_decoder; }
  std::uint32_t dropped_frames() const { return m_ring.dropped(); }

 private:
  void send_payload(std::span<const std::uint8_t> payload);
  void send_hello();
  void send_heartbeat();
  /// Gives the message the next seq, keeps it in the ring and sends it.
  template <typename Body>
  void send_sequenced(const Body& body);
  void handle_frame(std::span<const std::uint8_t> payload);
  void apply_config(const Config& config, std::span<const std::uint8_t> body);
  void resend_all();

  Clock& m_clock;
  ByteSink& m_uart;
  BootCounter& m_boot_counter;
  Hello m_identity;

  std::uint32_t m_boot = 0;
  std::uint32_t m_seq = 0;
  bool m_configured = false;
  Config m_config{};
  std::uint32_t m_config_crc = 0;

  FrameDecoder m_decoder;
  ResendRing m_ring;
  RmsMeter m_rms;
  SessionDetector m_sessions;
  Debouncer m_running;
  S0Counter m_s0;
  Em4100Parser m_badge;
  std::uint32_t m_badge_bad_seen = 0;
  TagId m_last_tag{};
  std::uint64_t m_last_tag_ms = 0;
  bool m_have_tag = false;

  std::uint32_t m_running_session_next = 1;
  std::uint32_t m_running_session = 0;
  std::uint64_t m_running_start_ms = 0;

  std::uint32_t m_window_n = 0;
  std::uint64_t m_window_start_ms = 0;
  std::uint32_t m_dropped_samples = 0;

  std::uint32_t m_pulses_sent = 0;
  std::uint64_t m_pulses_sent_ms = 0;
  bool m_pulses_ever_sent = false;

  std::uint64_t m_hello_ms = 0;
  std::uint64_t m_heartbeat_ms = 0;
  std::uint64_t m_progress_ms = 0;  // last ack that freed something, or last (re)send
};

}  // namespace reflow::fw
