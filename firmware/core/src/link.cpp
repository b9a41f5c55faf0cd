// SPDX-License-Identifier: AGPL-3.0-or-later
#include "reflow/fw/link.hpp"

namespace reflow::fw {
namespace {

// The 256-entry table of the reflected CRC-32 (1 KiB of flash), built at compile time.
constexpr std::array<std::uint32_t, 256> make_crc_table() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k)
      c = (c & 1U) != 0 ? 0xEDB88320U ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr auto k_crc_table = make_crc_table();

}  // namespace

std::uint32_t crc32(std::span<const std::uint8_t> bytes, std::uint32_t crc) {
  crc = ~crc;
  for (const std::uint8_t b : bytes)
    crc = k_crc_table[(crc ^ b) & 0xFFU] ^ (crc >> 8);
  return ~crc;
}

std::size_t cobs_encode(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
  if (out.size() < in.size() + cobs_max_overhead(in.size())) return 0;
  std::size_t code_at = 0;  // where the current block's code byte goes
  std::size_t o = 1;
  std::uint8_t code = 1;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const std::uint8_t b = in[i];
    if (b == 0) {
      out[code_at] = code;
      code_at = o++;
      code = 1;
      continue;
    }
    out[o++] = b;
    // A full block of 254 data bytes has no implied zero after it; the paper's encoding opens
    // the next block only when more data follows (01 … FE encodes as FF 01 … FE).
    if (++code == 0xFF && i + 1 < in.size()) {
      out[code_at] = code;
      code_at = o++;
      code = 1;
    }
  }
  out[code_at] = code;
  return o;
}

std::ptrdiff_t cobs_decode(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
  if (in.empty()) return -1;
  std::size_t i = 0;
  std::size_t o = 0;
  while (i < in.size()) {
    const std::uint8_t code = in[i++];
    if (code == 0) return -1;
    const std::size_t run = code - 1U;
    if (run > in.size() - i || o + run > out.size()) return -1;
    for (std::size_t k = 0; k < run; ++k) {
      if (in[i] == 0) return -1;
      out[o++] = in[i++];
    }
    // A block shorter than 254 stands for its data and a zero, except at the very end.
    if (code != 0xFF && i < in.size()) {
      if (o >= out.size()) return -1;
      out[o++] = 0;
    }
  }
  return static_cast<std::ptrdiff_t>(o);
}

std::size_t encode_frame(std::span<const std::uint8_t> payload, std::span<std::uint8_t> out) {
  if (payload.empty() || payload.size() > k_max_payload_bytes) return 0;
  std::array<std::uint8_t, k_max_payload_bytes + k_crc_bytes> plain{};
  for (std::size_t i = 0; i < payload.size(); ++i)
    plain[i] = payload[i];
  const std::uint32_t crc = crc32(payload);
  for (std::size_t k = 0; k < k_crc_bytes; ++k) {
    plain[payload.size() + k] = static_cast<std::uint8_t>(crc >> (8 * k));
  }
  const std::size_t n = payload.size() + k_crc_bytes;
  if (out.empty()) return 0;
  const std::size_t encoded = cobs_encode({plain.data(), n}, out.first(out.size() - 1));
  if (encoded == 0) return 0;
  out[encoded] = 0;
  return encoded + 1;
}

bool FrameDecoder::feed(std::uint8_t byte) {
  if (byte != 0) {
    if (m_discarding) return false;
    if (m_raw_size == m_raw.size() - 1) {  // the delimiter would not fit: over-long
      ++m_overruns;
      m_discarding = true;
      m_raw_size = 0;
      return false;
    }
    m_raw[m_raw_size++] = byte;
    return false;
  }
  const std::size_t raw_size = m_raw_size;
  m_raw_size = 0;
  if (m_discarding) {
    m_discarding = false;
    return false;
  }
  if (raw_size == 0) return false;  // a delimiter before a frame, or two in a row
  const std::ptrdiff_t n = cobs_decode({m_raw.data(), raw_size}, m_payload);
  // The smallest message is its 10-byte header (LINK §3).
  if (n < static_cast<std::ptrdiff_t>(10 + k_crc_bytes) ||
      n > static_cast<std::ptrdiff_t>(k_max_payload_bytes + k_crc_bytes)) {
    ++m_bad_frames;
    return false;
  }
  const std::size_t size = static_cast<std::size_t>(n) - k_crc_bytes;
  std::uint32_t crc = 0;
  for (std::size_t k = 0; k < k_crc_bytes; ++k) {
    crc |= static_cast<std::uint32_t>(m_payload[size + k]) << (8 * k);
  }
  if (crc != crc32({m_payload.data(), size})) {
    ++m_bad_frames;
    return false;
  }
  m_payload_size = size;
  ++m_frames;
  return true;
}

void FrameDecoder::reset() {
  m_raw_size = 0;
  m_payload_size = 0;
  m_discarding = false;
}

}  // namespace reflow::fw
