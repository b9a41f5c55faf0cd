// SPDX-License-Identifier: AGPL-3.0-or-later
#include "reflow/fw/app.hpp"

namespace reflow::fw {
namespace {

// The RDM6300 repeats a frame while a tag stays in the field (a few per second): the same tag
// within this time of its last frame is the same presentation (LINK §4.6).
constexpr std::uint64_t k_badge_repeat_ms = 1'000;

}  // namespace

void App::begin() {
  bool ok = true;
  m_boot = m_boot_counter.increment(ok);
  const std::uint8_t delimiter = 0;
  m_uart.write({&delimiter, 1});  // LINK §1: ends any partial frame left on the line
  const std::uint64_t now = m_clock.now_ms();
  m_heartbeat_ms = now;
  m_progress_ms = now;
  send_hello();
  if (!ok) send_sequenced(Error{ErrorCode::flash, 0});
}

void App::send_payload(std::span<const std::uint8_t> payload) {
  std::array<std::uint8_t, k_max_frame_bytes> frame{};
  const std::size_t n = encode_frame(payload, frame);
  if (n > 0) m_uart.write({frame.data(), n});
}

void App::send_hello() {
  PayloadBuffer p{};
  const std::size_t n =
      encode(Header{k_link_version, MessageType::hello, m_boot, 0}, m_identity, p);
  send_payload({p.data(), n});
  m_hello_ms = m_clock.now_ms();
}

void App::send_heartbeat() {
  Heartbeat hb;
  hb.uptime_ms = m_clock.now_ms();
  hb.dropped_samples = m_dropped_samples;
  hb.dropped_frames = m_ring.dropped();
  hb.bad_frames = m_decoder.bad_frames() + m_decoder.overruns();
  hb.config_crc = m_config_crc;
  hb.unacked = static_cast<std::uint8_t>(m_ring.size());
  PayloadBuffer p{};
  const std::size_t n = encode(Header{k_link_version, MessageType::heartbeat, m_boot, 0}, hb, p);
  send_payload({p.data(), n});
  m_heartbeat_ms = hb.uptime_ms;
}

template <typename Body>
void App::send_sequenced(const Body& body) {
  PayloadBuffer p{};
  const std::uint32_t seq = ++m_seq;
  const std::size_t n = encode(Header{k_link_version, MessageType::hello, m_boot, seq}, body, p);
  m_ring.push(seq, {p.data(), n});  // LINK §5: a full ring drops its oldest and counts it
  if (m_ring.size() == 1) m_progress_ms = m_clock.now_ms();
  send_payload({p.data(), n});
}

void App::resend_all() {
  for (std::size_t i = 0; i < m_ring.size(); ++i)
    send_payload(m_ring.payload_at(i));
  m_progress_ms = m_clock.now_ms();
}

void App::on_rx_byte(std::uint8_t byte) {
  if (m_decoder.feed(byte)) handle_frame(m_decoder.payload());
}

void App::handle_frame(std::span<const std::uint8_t> payload) {
  Header h;
  if (!decode_header(payload, h)) return;  // a wrong version: the decoder counted nothing
  const auto body = body_of(payload);
  if (h.type == MessageType::config) {
    Config c;
    if (decode(body, c)) apply_config(c, body.first(k_config_body_bytes));
    return;
  }
  if (h.boot != m_boot) return;  // LINK §3: a stale frame for an earlier boot
  if (h.type == MessageType::ack) {
    Ack a;
    if (decode(body, a) && m_ring.ack(a.seq) > 0) m_progress_ms = m_clock.now_ms();
  }
}

void App::apply_config(const Config& config, std::span<const std::uint8_t> body) {
  if (const std::uint32_t refused = check_config(config); refused != 0) {
    send_sequenced(Error{ErrorCode::config_refused, refused});  // the old config stays
    return;
  }
  const bool changed_window = !m_configured || config.window_samples != m_config.window_samples ||
                              config.ua_per_count != m_config.ua_per_count;
  m_config = config;
  m_config_crc = crc32(body);
  m_configured = true;
  if (changed_window) {
    m_rms.configure(config.ua_per_count, config.window_samples);
    m_window_n = 0;
  }
  m_sessions.configure(config);
  m_running.set_debounce_ms(config.debounce_ms);
  m_s0.set_min_pulse_ms(config.s0_min_pulse_ms);
  send_heartbeat();  // LINK §4.2: tells the agent which config is in force
  resend_all();      // LINK §5: the agent restarted or the link came back
}

void App::on_sample(std::uint16_t counts) {
  if (!m_configured) return;
  const std::uint64_t now = m_clock.now_ms();
  if (m_window_n++ == 0) m_window_start_ms = now;
  if (!m_rms.add(counts)) return;
  m_window_n = 0;
  const auto length_ms = static_cast<std::uint32_t>(
      static_cast<std::uint64_t>(m_config.window_samples) * 1000 / m_config.sample_rate_hz);
  const SessionUpdate u = m_sessions.window(m_window_start_ms, length_ms, m_rms.rms_ma());
  if (u.started) send_sequenced(u.start);
  if (u.ended) send_sequenced(u.end);
}

void App::on_running(bool level) {
  if (!m_configured) return;
  const std::uint64_t now = m_clock.now_ms();
  const Edge edge = m_running.feed(level, now);
  if (edge == Edge::rising) {
    m_running_session = m_running_session_next++;
    m_running_start_ms = m_running.edge_ms();
    send_sequenced(
        SessionStart{m_running_session, SessionSource::running_input, m_running_start_ms});
  } else if (edge == Edge::falling && m_running_session != 0) {
    SessionEnd end;
    end.session = m_running_session;
    end.source = SessionSource::running_input;
    end.start_ms = m_running_start_ms;
    end.end_ms = m_running.edge_ms();
    send_sequenced(end);
    m_running_session = 0;
  }
}

void App::on_s0(bool active) {
  if (!m_configured) return;
  m_s0.feed(active, m_clock.now_ms());
}

void App::on_badge_byte(std::uint8_t byte) {
  const bool read = m_badge.feed(byte);
  if (m_badge.bad_frames() != m_badge_bad_seen) {
    m_badge_bad_seen = m_badge.bad_frames();
    send_sequenced(Error{ErrorCode::badge_frame, m_badge_bad_seen});
  }
  if (!read) return;
  const std::uint64_t now = m_clock.now_ms();
  const bool repeat =
      m_have_tag && m_badge.tag() == m_last_tag && now - m_last_tag_ms < k_badge_repeat_ms;
  m_last_tag = m_badge.tag();
  m_last_tag_ms = now;
  m_have_tag = true;
  if (!repeat) send_sequenced(Badge{now, m_badge.tag()});
}

void App::poll() {
  const std::uint64_t now = m_clock.now_ms();
  if (!m_configured && now - m_hello_ms >= k_hello_interval_ms) send_hello();
  if (now - m_heartbeat_ms >= k_heartbeat_interval_ms) send_heartbeat();
  if (m_configured && m_s0.total() != m_pulses_sent &&
      (!m_pulses_ever_sent || now - m_pulses_sent_ms >= k_pulses_interval_ms)) {
    m_pulses_sent = m_s0.total();
    m_pulses_sent_ms = now;
    m_pulses_ever_sent = true;
    send_sequenced(Pulses{m_s0.last_pulse_ms(), m_pulses_sent});
  }
  // LINK §5: the oldest unacknowledged message again when no ack came for 2 s.
  if (!m_ring.empty() && now - m_progress_ms >= k_resend_after_ms) {
    send_payload(m_ring.payload_at(0));
    m_progress_ms = now;
  }
}

}  // namespace reflow::fw
