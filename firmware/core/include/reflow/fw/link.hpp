// SPDX-License-Identifier: AGPL-3.0-or-later
// The link's framing (docs/firmware-link.md §1, "LINK §1"): COBS, CRC-32 and the frame codec with
// resynchronisation. Freestanding: no heap, no exceptions; every buffer's bound is a constant here.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace reflow::fw {

/// Header (10 bytes, LINK §3) plus the largest body.
inline constexpr std::size_t k_max_payload_bytes = 64;
/// CRC-32 appended to the payload.
inline constexpr std::size_t k_crc_bytes = 4;
/// Bytes COBS adds to `n` input bytes: one per started block of 254 (Cheshire & Baker 1999, §3),
/// and one for an empty input.
constexpr std::size_t cobs_max_overhead(std::size_t n) {
  return n / 254 + 1;
}
/// A frame on the line: COBS(payload ‖ CRC) and the 0x00 delimiter (LINK §1.2: 70 bytes).
inline constexpr std::size_t k_max_frame_bytes =
    k_max_payload_bytes + k_crc_bytes + cobs_max_overhead(k_max_payload_bytes + k_crc_bytes) + 1;

/// CRC-32 of IEEE 802.3 as zlib's crc32(): polynomial 0x04C11DB7 reflected (0xEDB88320), initial
/// value and final XOR 0xFFFFFFFF; crc32("123456789") = 0xCBF43926. `crc` continues an earlier
/// call (pass its result); start with 0.
std::uint32_t crc32(std::span<const std::uint8_t> bytes, std::uint32_t crc = 0);

/// COBS-encodes `in` into `out` (S. Cheshire, M. Baker, "Consistent Overhead Byte Stuffing",
/// IEEE/ACM Trans. Networking 7(2), 1999). The result has no 0x00 byte and no delimiter. Returns
/// the encoded length, or 0 when `out` is shorter than in.size() + cobs_max_overhead(in.size()).
std::size_t cobs_encode(std::span<const std::uint8_t> in, std::span<std::uint8_t> out);

/// Decodes COBS bytes (without the delimiter) into `out`. Returns the decoded length, or -1 when
/// the input is not valid COBS (a 0x00 byte, or a code byte pointing past the end) or does not fit
/// in `out`. An empty input decodes to -1 too: an empty frame carries nothing.
std::ptrdiff_t cobs_decode(std::span<const std::uint8_t> in, std::span<std::uint8_t> out);

/// Builds one frame (LINK §1): COBS(payload ‖ CRC-32 little-endian) ‖ 0x00 into `out`. Returns its
/// length, or 0 when the payload is empty or longer than k_max_payload_bytes, or `out` is too short
/// (k_max_frame_bytes always suffices).
std::size_t encode_frame(std::span<const std::uint8_t> payload, std::span<std::uint8_t> out);

/// Cuts a byte stream into frames and checks them (LINK §1.1). Feed it every received byte; when
/// feed() returns true, payload() holds one frame's payload (header and body, CRC removed) until
/// the next feed(). Garbage, over-long runs, bad COBS and bad CRCs are dropped and counted; the
/// next 0x00 starts afresh. Holds two fixed buffers (about 140 bytes); not thread-safe (one reader,
/// e.g. the UART receive loop).
class FrameDecoder {
 public:
  /// Takes one byte; true when it completed a valid frame.
  bool feed(std::uint8_t byte);
  /// The last valid frame's payload (valid after feed() returned true, until the next feed()).
  std::span<const std::uint8_t> payload() const { return {m_payload.data(), m_payload_size}; }

  /// Frames that passed COBS and CRC.
  std::uint32_t frames() const { return m_frames; }
  /// Frames dropped: bad COBS, too short for a CRC and header, or CRC mismatch.
  std::uint32_t bad_frames() const { return m_bad_frames; }
  /// Runs of bytes dropped because they exceeded k_max_frame_bytes before a 0x00.
  std::uint32_t overruns() const { return m_overruns; }
  /// Forgets a partial frame (after the line was reopened).
  void reset();

 private:
  std::array<std::uint8_t, k_max_frame_bytes> m_raw{};
  std::array<std::uint8_t, k_max_frame_bytes> m_payload{};
  std::size_t m_raw_size = 0;
  std::size_t m_payload_size = 0;
  bool m_discarding = false;  // an over-long run: drop bytes up to the next 0x00
  std::uint32_t m_frames = 0;
  std::uint32_t m_bad_frames = 0;
  std::uint32_t m_overruns = 0;
};

}  // namespace reflow::fw
