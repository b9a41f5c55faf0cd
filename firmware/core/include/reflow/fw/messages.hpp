// SPDX-License-Identifier: AGPL-3.0-or-later
// The link's messages (docs/firmware-link.md §3–§4, "LINK §N") and their fixed little-endian
// layouts. Each encode_* writes a whole payload (header and body) into a buffer of
// k_max_payload_bytes and returns its length; each decode_* reads a body (the bytes after the
// header) and fails on a body shorter than its fields, ignoring bytes after them (minor versions).
// Units are OM2: milliampere, millicoulomb, millijoule, millivolt; times are the board's monotonic
// milliseconds since boot.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "reflow/fw/link.hpp"

namespace reflow::fw {

/// The link's major version, the header's first byte (LINK §3).
inline constexpr std::uint8_t k_link_version = 1;
/// The minor version this code speaks (LINK §4.1 `link_minor`).
inline constexpr std::uint8_t k_link_minor = 0;
/// Bytes of the header: version u8, type u8, boot u32, seq u32.
inline constexpr std::size_t k_header_bytes = 10;

/// Message types (LINK §4).
enum class MessageType : std::uint8_t {
  hello = 1,
  config = 2,
  session_start = 3,
  session_end = 4,
  pulses = 5,
  badge = 6,
  heartbeat = 7,
  error = 8,
  ack = 9,
};

/// LINK §3. `seq` is 0 for hello, heartbeat and every agent → board message.
struct Header {
  std::uint8_t version = k_link_version;
  MessageType type = MessageType::hello;
  std::uint32_t boot = 0;
  std::uint32_t seq = 0;
};

/// Capability bits of hello (LINK §4.1).
enum Capability : std::uint32_t {
  k_cap_current = 1U << 0,
  k_cap_running_input = 1U << 1,
  k_cap_s0 = 1U << 2,
  k_cap_badge = 1U << 3,
};

/// LINK §4.1.
struct Hello {
  std::uint32_t fw_version = 0;             ///< major << 16 | minor << 8 | patch
  std::array<std::uint8_t, 12> board_id{};  ///< the MCU's 96-bit unique id
  std::uint32_t capabilities = 0;           ///< Capability bits
  std::uint8_t link_minor = k_link_minor;
};

/// LINK §4.2: thresholds and calibration, sent by the agent.
struct Config {
  std::uint32_t ua_per_count = 0;  ///< microampere per ADC count
  std::uint16_t sample_rate_hz = 0;
  std::uint16_t window_samples = 0;
  std::uint32_t on_threshold_ma = 0;
  std::uint32_t off_threshold_ma = 0;
  std::uint32_t busy_threshold_ma = 0;  ///< 0: no idle/busy levels
  std::uint32_t min_on_ms = 0;
  std::uint32_t gap_merge_ms = 0;
  std::uint32_t voltage_mv = 0;
  std::uint16_t power_factor_permille = 1000;
  std::uint16_t debounce_ms = 0;
  std::uint16_t s0_min_pulse_ms = 30;
};
/// Bytes of a config body.
inline constexpr std::size_t k_config_body_bytes = 38;

/// Where a session was seen (LINK §4.3).
enum class SessionSource : std::uint8_t { current = 1, running_input = 2 };

/// LINK §4.3.
struct SessionStart {
  std::uint32_t session = 0;
  SessionSource source = SessionSource::current;
  std::uint64_t start_ms = 0;
};

/// LINK §4.4.
struct SessionEnd {
  std::uint32_t session = 0;
  SessionSource source = SessionSource::current;
  std::uint64_t start_ms = 0;
  std::uint64_t end_ms = 0;
  std::uint64_t charge_mc = 0;  ///< millicoulomb
  std::uint64_t energy_mj = 0;  ///< millijoule, estimated
  std::uint32_t peak_ma = 0;
  std::uint64_t busy_ms = 0;
};

/// LINK §4.5.
struct Pulses {
  std::uint64_t at_ms = 0;
  std::uint32_t total = 0;  ///< S0 pulses since boot
};

/// LINK §4.6.
struct Badge {
  std::uint64_t at_ms = 0;
  std::array<std::uint8_t, 5> tag{};  ///< EM4100 data bits, version/customer byte first
};

/// LINK §4.7.
struct Heartbeat {
  std::uint64_t uptime_ms = 0;
  std::uint32_t dropped_samples = 0;
  std::uint32_t dropped_frames = 0;
  std::uint32_t bad_frames = 0;
  std::uint32_t config_crc = 0;
  std::uint8_t unacked = 0;
};

/// LINK §4.8 codes.
enum class ErrorCode : std::uint16_t {
  config_refused = 1,
  adc_overrun = 2,
  badge_frame = 3,
  flash = 4,
};

/// LINK §4.8.
struct Error {
  ErrorCode code = ErrorCode::config_refused;
  std::uint32_t detail = 0;
};

/// LINK §4.9: cumulative acknowledgement of every message of the header's boot with seq ≤ `seq`.
struct Ack {
  std::uint32_t seq = 0;
};

/// A payload buffer of the largest size.
using PayloadBuffer = std::array<std::uint8_t, k_max_payload_bytes>;

/// Payload writers: header (with the type set to match) then body into `out`; return the length.
std::size_t encode(Header header, const Hello& body, PayloadBuffer& out);
std::size_t encode(Header header, const Config& body, PayloadBuffer& out);
std::size_t encode(Header header, const SessionStart& body, PayloadBuffer& out);
std::size_t encode(Header header, const SessionEnd& body, PayloadBuffer& out);
std::size_t encode(Header header, const Pulses& body, PayloadBuffer& out);
std::size_t encode(Header header, const Badge& body, PayloadBuffer& out);
std::size_t encode(Header header, const Heartbeat& body, PayloadBuffer& out);
std::size_t encode(Header header, const Error& body, PayloadBuffer& out);
std::size_t encode(Header header, const Ack& body, PayloadBuffer& out);

/// Reads the header of a payload. False when it is shorter than k_header_bytes or its version is
/// not k_link_version (LINK §3: the receiver drops it). The type is not checked (LINK §6: unknown
/// types are acknowledged and ignored).
bool decode_header(std::span<const std::uint8_t> payload, Header& out);
/// The body of a payload (after the header); empty when the payload is shorter than the header.
std::span<const std::uint8_t> body_of(std::span<const std::uint8_t> payload);

/// Body readers: false when `body` is shorter than the type's fields or holds a value outside its
/// enumeration (source, error code).
bool decode(std::span<const std::uint8_t> body, Hello& out);
bool decode(std::span<const std::uint8_t> body, Config& out);
bool decode(std::span<const std::uint8_t> body, SessionStart& out);
bool decode(std::span<const std::uint8_t> body, SessionEnd& out);
bool decode(std::span<const std::uint8_t> body, Pulses& out);
bool decode(std::span<const std::uint8_t> body, Badge& out);
bool decode(std::span<const std::uint8_t> body, Heartbeat& out);
bool decode(std::span<const std::uint8_t> body, Error& out);
bool decode(std::span<const std::uint8_t> body, Ack& out);

/// Checks a config the board is asked to apply (LINK §4.2). Returns 0 when valid, else 1 + the
/// byte offset in the body of the first field refused (the error's `detail` is that offset):
/// a zero sample rate, window or calibration, off above on, busy below on, a power factor over
/// 1000, a zero voltage.
std::uint32_t check_config(const Config& config);

}  // namespace reflow::fw
