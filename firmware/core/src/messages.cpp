// SPDX-License-Identifier: AGPL-3.0-or-later
#include "reflow/fw/messages.hpp"

namespace reflow::fw {
namespace {

// Little-endian writer into a payload buffer; every message fits (the sizes are static).
class Writer {
 public:
  explicit Writer(PayloadBuffer& out) : m_out(out) {}
  void u8(std::uint8_t v) { m_out[m_size++] = v; }
  void u16(std::uint16_t v) { put(v, 2); }
  void u32(std::uint32_t v) { put(v, 4); }
  void u64(std::uint64_t v) { put(v, 8); }
  template <std::size_t N>
  void bytes(const std::array<std::uint8_t, N>& v) {
    for (const std::uint8_t b : v)
      u8(b);
  }
  void header(Header h, MessageType type) {
    u8(h.version);
    u8(static_cast<std::uint8_t>(type));
    u32(h.boot);
    u32(h.seq);
  }
  std::size_t size() const { return m_size; }

 private:
  void put(std::uint64_t v, std::size_t n) {
    for (std::size_t k = 0; k < n; ++k)
      u8(static_cast<std::uint8_t>(v >> (8 * k)));
  }
  PayloadBuffer& m_out;
  std::size_t m_size = 0;
};

// Little-endian reader over a body; ok() turns false on the first read past the end.
class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> in) : m_in(in) {}
  std::uint8_t u8() { return static_cast<std::uint8_t>(get(1)); }
  std::uint16_t u16() { return static_cast<std::uint16_t>(get(2)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(get(4)); }
  std::uint64_t u64() { return get(8); }
  template <std::size_t N>
  void bytes(std::array<std::uint8_t, N>& v) {
    for (std::uint8_t& b : v)
      b = u8();
  }
  bool ok() const { return m_ok; }

 private:
  std::uint64_t get(std::size_t n) {
    if (!m_ok || m_in.size() - m_pos < n) {
      m_ok = false;
      return 0;
    }
    std::uint64_t v = 0;
    for (std::size_t k = 0; k < n; ++k)
      v |= static_cast<std::uint64_t>(m_in[m_pos++]) << (8 * k);
    return v;
  }
  std::span<const std::uint8_t> m_in;
  std::size_t m_pos = 0;
  bool m_ok = true;
};

bool read_source(Reader& r, SessionSource& out) {
  const std::uint8_t v = r.u8();
  if (v != static_cast<std::uint8_t>(SessionSource::current) &&
      v != static_cast<std::uint8_t>(SessionSource::running_input)) {
    return false;
  }
  out = static_cast<SessionSource>(v);
  return true;
}

}  // namespace

std::size_t encode(Header h, const Hello& b, PayloadBuffer& out) {
  Writer w(out);
  w.header(h, MessageType::hello);
  w.u32(b.fw_version);
  w.bytes(b.board_id);
  w.u32(b.capabilities);
  w.u8(b.link_minor);
  return w.size();
}

std::size_t encode(Header h, const Config& b, PayloadBuffer& out) {
  Writer w(out);
  w.header(h, MessageType::config);
  w.u32(b.ua_per_count);
  w.u16(b.sample_rate_hz);
  w.u16(b.window_samples);
  w.u32(b.on_threshold_ma);
  w.u32(b.off_threshold_ma);
  w.u32(b.busy_threshold_ma);
  w.u32(b.min_on_ms);
  w.u32(b.gap_merge_ms);
  w.u32(b.voltage_mv);
  w.u16(b.power_factor_permille);
  w.u16(b.debounce_ms);
  w.u16(b.s0_min_pulse_ms);
  return w.size();
}

std::size_t encode(Header h, const SessionStart& b, PayloadBuffer& out) {
  Writer w(out);
  w.header(h, MessageType::session_start);
  w.u32(b.session);
  w.u8(static_cast<std::uint8_t>(b.source));
  w.u64(b.start_ms);
  return w.size();
}

std::size_t encode(Header h, const SessionEnd& b, PayloadBuffer& out) {
  Writer w(out);
  w.header(h, MessageType::session_end);
  w.u32(b.session);
  w.u8(static_cast<std::uint8_t>(b.source));
  w.u64(b.start_ms);
  w.u64(b.end_ms);
  w.u64(b.charge_mc);
  w.u64(b.energy_mj);
  w.u32(b.peak_ma);
  w.u64(b.busy_ms);
  return w.size();
}

std::size_t encode(Header h, const Pulses& b, PayloadBuffer& out) {
  Writer w(out);
  w.header(h, MessageType::pulses);
  w.u64(b.at_ms);
  w.u32(b.total);
  return w.size();
}

std::size_t encode(Header h, const Badge& b, PayloadBuffer& out) {
  Writer w(out);
  w.header(h, MessageType::badge);
  w.u64(b.at_ms);
  w.bytes(b.tag);
  return w.size();
}

std::size_t encode(Header h, const Heartbeat& b, PayloadBuffer& out) {
  Writer w(out);
  w.header(h, MessageType::heartbeat);
  w.u64(b.uptime_ms);
  w.u32(b.dropped_samples);
  w.u32(b.dropped_frames);
  w.u32(b.bad_frames);
  w.u32(b.config_crc);
  w.u8(b.unacked);
  return w.size();
}

std::size_t encode(Header h, const Error& b, PayloadBuffer& out) {
  Writer w(out);
  w.header(h, MessageType::error);
  w.u16(static_cast<std::uint16_t>(b.code));
  w.u32(b.detail);
  return w.size();
}

std::size_t encode(Header h, const Ack& b, PayloadBuffer& out) {
  Writer w(out);
  w.header(h, MessageType::ack);
  w.u32(b.seq);
  return w.size();
}

bool decode_header(std::span<const std::uint8_t> payload, Header& out) {
  if (payload.size() < k_header_bytes) return false;
  Reader r(payload);
  out.version = r.u8();
  out.type = static_cast<MessageType>(r.u8());
  out.boot = r.u32();
  out.seq = r.u32();
  return out.version == k_link_version;
}

std::span<const std::uint8_t> body_of(std::span<const std::uint8_t> payload) {
  if (payload.size() < k_header_bytes) return {};
  return payload.subspan(k_header_bytes);
}

bool decode(std::span<const std::uint8_t> body, Hello& out) {
  Reader r(body);
  out.fw_version = r.u32();
  r.bytes(out.board_id);
  out.capabilities = r.u32();
  out.link_minor = r.u8();
  return r.ok();
}

bool decode(std::span<const std::uint8_t> body, Config& out) {
  Reader r(body);
  out.ua_per_count = r.u32();
  out.sample_rate_hz = r.u16();
  out.window_samples = r.u16();
  out.on_threshold_ma = r.u32();
  out.off_threshold_ma = r.u32();
  out.busy_threshold_ma = r.u32();
  out.min_on_ms = r.u32();
  out.gap_merge_ms = r.u32();
  out.voltage_mv = r.u32();
  out.power_factor_permille = r.u16();
  out.debounce_ms = r.u16();
  out.s0_min_pulse_ms = r.u16();
  return r.ok();
}

bool decode(std::span<const std::uint8_t> body, SessionStart& out) {
  Reader r(body);
  out.session = r.u32();
  if (!read_source(r, out.source)) return false;
  out.start_ms = r.u64();
  return r.ok();
}

bool decode(std::span<const std::uint8_t> body, SessionEnd& out) {
  Reader r(body);
  out.session = r.u32();
  if (!read_source(r, out.source)) return false;
  out.start_ms = r.u64();
  out.end_ms = r.u64();
  out.charge_mc = r.u64();
  out.energy_mj = r.u64();
  out.peak_ma = r.u32();
  out.busy_ms = r.u64();
  return r.ok();
}

bool decode(std::span<const std::uint8_t> body, Pulses& out) {
  Reader r(body);
  out.at_ms = r.u64();
  out.total = r.u32();
  return r.ok();
}

bool decode(std::span<const std::uint8_t> body, Badge& out) {
  Reader r(body);
  out.at_ms = r.u64();
  r.bytes(out.tag);
  return r.ok();
}

bool decode(std::span<const std::uint8_t> body, Heartbeat& out) {
  Reader r(body);
  out.uptime_ms = r.u64();
  out.dropped_samples = r.u32();
  out.dropped_frames = r.u32();
  out.bad_frames = r.u32();
  out.config_crc = r.u32();
  out.unacked = r.u8();
  return r.ok();
}

bool decode(std::span<const std::uint8_t> body, Error& out) {
  Reader r(body);
  const std::uint16_t code = r.u16();
  if (code < static_cast<std::uint16_t>(ErrorCode::config_refused) ||
      code > static_cast<std::uint16_t>(ErrorCode::flash)) {
    return false;
  }
  out.code = static_cast<ErrorCode>(code);
  out.detail = r.u32();
  return r.ok();
}

bool decode(std::span<const std::uint8_t> body, Ack& out) {
  Reader r(body);
  out.seq = r.u32();
  return r.ok();
}

std::uint32_t check_config(const Config& c) {
  if (c.ua_per_count == 0) return 1 + 0;
  if (c.sample_rate_hz == 0) return 1 + 4;
  if (c.window_samples == 0) return 1 + 6;
  if (c.off_threshold_ma > c.on_threshold_ma) return 1 + 12;
  if (c.busy_threshold_ma != 0 && c.busy_threshold_ma < c.on_threshold_ma) return 1 + 16;
  if (c.voltage_mv == 0) return 1 + 28;
  if (c.power_factor_permille > 1000) return 1 + 32;
  return 0;
}

}  // namespace reflow::fw
