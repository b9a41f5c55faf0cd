// SPDX-License-Identifier: AGPL-3.0-or-later
// The `mcu` driver (issue 18). One thread owns the serial port: it reads bytes, cuts them into
// frames with the firmware's FrameDecoder, answers hello (and a heartbeat of a boot it has not
// configured) with the config, maps board times to UTC with the offset of the last hello or
// heartbeat, and turns each sequenced message (LINK §6: in seq order, one at a time) into events.
// A message is acknowledged only once its events are committed and the cursor (boot, seq) is
// saved: the board resends what is not acknowledged (LINK §5), and the cursor makes a resent
// message that was already committed a duplicate, acknowledged again but not processed twice.
#include <algorithm>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <fmt/format.h>

#include <reflow/core/units.hpp>
#include <reflow/drivers/driver_state.hpp>
#include <reflow/drivers/serial_port.hpp>
#include <reflow/drivers/valueflows.hpp>
#include <reflow/fw/link.hpp>
#include <reflow/fw/resend_ring.hpp>

#include "mcu_driver.hpp"

namespace agent {
namespace mcu {
namespace {

namespace fw = reflow::fw;
using namespace std::chrono_literals;

constexpr auto k_reopen_delay = 5s;
constexpr auto k_read_slice = 50ms;  // how soon a commit's ack goes out
// Sequenced messages held while an earlier one's events are being committed; more are dropped
// and come again from the board's ring (LINK §5).
constexpr std::size_t k_max_queued = 2 * fw::k_ring_slots;

std::string hex(std::span<const std::uint8_t> bytes) {
  std::string out;
  for (const std::uint8_t b : bytes)
    out += fmt::format("{:02x}", b);
  return out;
}

std::string version_text(std::uint32_t v) {
  return fmt::format("{}.{}.{}", v >> 16, (v >> 8) & 0xFF, v & 0xFF);
}

// The cursor and a message whose events are partly committed, persisted in state.json.
struct Cursor {
  std::uint32_t boot = 0;
  std::uint32_t seq = 0;  // last seq of `boot` whose events are all committed
  std::uint32_t partial_seq = 0;
  std::set<std::string> partial_done;  // events of partial_seq already committed
};

// What the writer thread reports back to the driver's thread.
struct Answer {
  std::uint32_t boot = 0;
  std::uint32_t seq = 0;
  std::string which;
  Status result;
};

struct Shared {
  std::mutex mutex;
  std::deque<Answer> answers;
  DriverHealth health;
  std::string link = "starting";
  std::string board;  // "firmware 0.1.0, board …"
  std::uint32_t boot = 0;
  std::uint64_t uptime_ms = 0;
  std::uint64_t link_errors = 0;
  std::uint64_t lost_messages = 0;   // gaps in seq
  std::uint64_t duplicates = 0;      // resent messages already committed
  std::uint64_t dropped_frames = 0;  // the board's ring overflows (heartbeat)
  std::uint64_t badges = 0;
  std::uint64_t refused_events = 0;  // invalid events skipped (never in practice)
  bool configured = false;
};

class McuDriver final : public Driver {
 public:
  McuDriver(McuConfig config, Env& env, Logger& log)
      : m_config(std::move(config)),
        m_component(fmt::format("driver mcu/{}", m_config.name)),
        m_env(env),
        m_log(log),
        m_shared(std::make_shared<Shared>()) {
    fw::PayloadBuffer p{};
    fw::encode(fw::Header{}, m_config.board, p);
    m_config_crc = fw::crc32({p.data() + fw::k_header_bytes, fw::k_config_body_bytes});
  }
  ~McuDriver() override { stop(); }

  Status start(EventSink& sink, const std::filesystem::path& state_dir) override {
    if (m_thread.joinable()) return {};
    m_state_file = state_dir / "state.json";
    auto state = load_driver_state(m_state_file);
    if (!state) return std::unexpected(state.error());
    try {
      m_cursor.boot = state->value("boot", 0U);
      m_cursor.seq = state->value("seq", 0U);
      m_cursor.partial_seq = state->value("partial_seq", 0U);
      for (const auto& d : state->value("partial_done", nlohmann::json::array()))
        m_cursor.partial_done.insert(d.get<std::string>());
    } catch (const nlohmann::json::exception& e) {
      return fail(ErrorCode::corruption, fmt::format("{}: {}; move the file away to start afresh",
                                                     m_state_file.string(), e.what()));
    }
    if (m_config.badge && !m_badges) {
      auto badges =
          BadgeAttribution::open(*m_config.badge, m_config.name, state_dir, m_log, m_component);
      if (!badges) return std::unexpected(badges.error());
      m_badges = std::move(*badges);
      m_reader = make_badge_reader(*m_config.badge, *m_badges, m_env, m_log, m_component);
    }
    m_sink = &sink;
    if (m_reader) m_reader->start();
    m_thread = std::jthread([this](std::stop_token stop) { run(stop); });
    return {};
  }

  void stop() override {
    if (m_reader) m_reader->stop();
    if (m_thread.joinable()) {
      m_thread.request_stop();
      m_thread.join();
    }
    std::lock_guard lock(m_shared->mutex);
    m_shared->link = "stopped";
  }

  DriverHealth health() const override {
    std::lock_guard lock(m_shared->mutex);
    const Shared& s = *m_shared;
    DriverHealth h = s.health;
    h.state = fmt::format(
        "{}; {}; boot {}, uptime {} s, {}; link errors {}, dropped frames {} (board ring), lost "
        "{}, duplicates {}, {}{}",
        s.link, s.board.empty() ? "no hello yet" : s.board, s.boot, s.uptime_ms / 1000,
        s.configured ? "configured" : "not configured", s.link_errors, s.dropped_frames,
        s.lost_messages, s.duplicates,
        m_badges ? m_badges->status() : fmt::format("badges {} (no badge table)", s.badges),
        m_reader ? "; " + m_reader->status() : "");
    h.malformed = s.link_errors + s.refused_events + (m_reader ? m_reader->bad_frames() : 0);
    return h;
  }

 private:
  struct Message {
    fw::Header header;
    std::vector<std::uint8_t> body;
    std::int64_t received_unix_ms = 0;
  };

  void set_link(std::string text) {
    std::lock_guard lock(m_shared->mutex);
    m_shared->link = std::move(text);
  }
  void error(std::string message) {
    m_log.error(m_component, "{}", message);
    std::lock_guard lock(m_shared->mutex);
    ++m_shared->health.errors;
    m_shared->health.last_error = std::move(message);
    m_shared->health.last_error_unix_ms = m_env.now_unix_ms();
  }

  void run(std::stop_token stop) {
    while (!stop.stop_requested()) {
      auto port = SerialPort::open(m_config.path,
                                   SerialSettings{115200, 8, SerialSettings::Parity::none, 1});
      if (!port) {
        set_link(fmt::format("waiting for {}", m_config.path));
        error(port.error().message);
        m_env.sleep_until(m_env.steady_now() + k_reopen_delay, stop);
        continue;
      }
      m_port = std::move(*port);
      m_decoder.reset();
      set_link("open");
      m_log.info(m_component, "opened {}", m_config.path);
      serve(stop);
      m_port.reset();
    }
  }

  void serve(std::stop_token stop) {
    std::array<std::byte, 256> buffer{};
    while (!stop.stop_requested()) {
      take_answers();
      auto n = m_port->read(buffer, std::chrono::steady_clock::now() + k_read_slice, stop);
      if (!n) {
        error(fmt::format("{}: {}", m_config.path, n.error().message));
        set_link(fmt::format("waiting for {}", m_config.path));
        m_env.sleep_until(m_env.steady_now() + k_reopen_delay, stop);
        return;
      }
      for (std::size_t i = 0; i < *n; ++i) {
        const auto bad_before = m_decoder.bad_frames() + m_decoder.overruns();
        const bool complete = m_decoder.feed(static_cast<std::uint8_t>(buffer[i]));
        if (m_decoder.bad_frames() + m_decoder.overruns() != bad_before) link_error("bad frame");
        if (complete) on_frame(m_decoder.payload());
      }
    }
  }

  void link_error(std::string_view what) {
    std::lock_guard lock(m_shared->mutex);
    ++m_shared->link_errors;
    m_log.debug(m_component, "{} on the line", what);
  }

  void send(const fw::PayloadBuffer& payload, std::size_t size) {
    std::array<std::uint8_t, fw::k_max_frame_bytes> frame{};
    const std::size_t n = fw::encode_frame({payload.data(), size}, frame);
    if (Status s = m_port->write({reinterpret_cast<const char*>(frame.data()), n}); !s)
      error(fmt::format("{}: {}", m_config.path, s.error().message));
  }

  void send_config(std::uint32_t boot) {
    fw::PayloadBuffer p{};
    const std::size_t n = fw::encode(
        fw::Header{fw::k_link_version, fw::MessageType::config, boot, 0}, m_config.board, p);
    send(p, n);
    m_config_sent_for = boot;
    m_mismatched = 0;
    m_log.info(m_component, "sent the config to boot {}", boot);
  }

  void send_ack(std::uint32_t boot, std::uint32_t seq) {
    fw::PayloadBuffer p{};
    const std::size_t n =
        fw::encode(fw::Header{fw::k_link_version, fw::MessageType::ack, boot, 0}, fw::Ack{seq}, p);
    send(p, n);
  }

  // A new boot counter: the board reset (LINK §3). What was open is lost (LINK §5).
  void on_boot(std::uint32_t boot) {
    if (boot == m_boot) return;
    if (m_boot != 0) {
      m_log.warning(
          m_component, "board rebooted: boot {} → {}{}", m_boot, boot,
          m_open_sessions.empty()
              ? ""
              : fmt::format("; {} open session(s) lost with the reset", m_open_sessions.size()));
    }
    m_boot = boot;
    m_offset_ms.reset();
    m_open_sessions.clear();
    // Board badges are in board ms of the old boot: a new clock.
    if (m_badges && m_config.badge->source == BadgeConfig::Source::mcu) m_badges->forget_badges();
    m_queue.clear();
    m_in_flight.reset();
    if (m_cursor.boot != boot) {
      m_cursor = Cursor{boot, 0, 0, {}};
      save_cursor();
    }
    std::lock_guard lock(m_shared->mutex);
    m_shared->boot = boot;
    m_shared->configured = false;
  }

  void on_frame(std::span<const std::uint8_t> payload) {
    fw::Header h;
    if (!fw::decode_header(payload, h)) {
      link_error("frame of another link version");
      return;
    }
    const auto body = fw::body_of(payload);
    const std::int64_t now = m_env.now_unix_ms();
    on_boot(h.boot);
    switch (h.type) {
      case fw::MessageType::hello: {
        fw::Hello hello;
        if (!fw::decode(body, hello)) return link_error("short hello");
        {
          std::lock_guard lock(m_shared->mutex);
          m_shared->board = fmt::format("firmware {}, board {}", version_text(hello.fw_version),
                                        hex(hello.board_id));
        }
        m_log.info(m_component, "hello from board {} (firmware {}, boot {})", hex(hello.board_id),
                   version_text(hello.fw_version), h.boot);
        send_config(h.boot);
        return;
      }
      case fw::MessageType::heartbeat: {
        fw::Heartbeat hb;
        if (!fw::decode(body, hb)) return link_error("short heartbeat");
        m_offset_ms = now - static_cast<std::int64_t>(hb.uptime_ms);
        const bool configured = hb.config_crc == m_config_crc;
        {
          std::lock_guard lock(m_shared->mutex);
          m_shared->uptime_ms = hb.uptime_ms;
          m_shared->dropped_frames = hb.dropped_frames;
          m_shared->configured = configured;
        }
        // LINK §4.2: a boot this agent has not configured (it restarted): the config makes
        // the board resend every unacknowledged message at once (LINK §5).
        if (m_config_sent_for != h.boot) {
          send_config(h.boot);
        } else if (!configured && ++m_mismatched == 2) {
          // The first may have left the board before the config arrived.
          m_log.warning(m_component,
                        "the board runs another config than this driver's (it "
                        "refused it? see the board's error)");
        } else if (configured) {
          m_mismatched = 0;
        }
        return;
      }
      default:
        break;
    }
    if (h.seq == 0) return;  // LINK §6: only sequenced messages are processed and acked
    Message m{h, {body.begin(), body.end()}, now};
    if (m_queue.size() >= k_max_queued) return;  // the board's ring has it
    m_queue.push_back(std::move(m));
    process_next();
  }

  // Board ms → Unix ms: the offset of the last heartbeat; without one, the receipt time.
  std::int64_t to_unix_ms(std::uint64_t board_ms, const Message& m) const {
    if (!m_offset_ms) return m.received_unix_ms;
    return *m_offset_ms + static_cast<std::int64_t>(board_ms);
  }

  // Starts the next queued message when none is in flight.
  void process_next() {
    while (!m_in_flight && !m_queue.empty()) {
      Message m = std::move(m_queue.front());
      m_queue.pop_front();
      if (m.header.boot != m_boot) continue;
      const std::uint32_t seq = m.header.seq;
      if (seq <= m_cursor.seq) {  // LINK §6: a duplicate, acked again
        {
          std::lock_guard lock(m_shared->mutex);
          ++m_shared->duplicates;
        }
        send_ack(m_boot, m_cursor.seq);
        continue;
      }
      if (seq > m_cursor.seq + 1) {
        const std::uint32_t lost = seq - m_cursor.seq - 1;
        m_log.warning(m_component,
                      "{} message(s) lost before seq {} of boot {} (the board's "
                      "ring overflowed)",
                      lost, seq, m_boot);
        std::lock_guard lock(m_shared->mutex);
        m_shared->lost_messages += lost;
      }
      auto events = events_of(m);
      if (m_cursor.partial_seq == seq)
        std::erase_if(events,
                      [&](const auto& e) { return m_cursor.partial_done.contains(e.first); });
      if (events.empty()) {
        committed(seq);
        continue;
      }
      m_in_flight = InFlight{seq, events.size(), false};
      for (auto& [which, fields] : events) {
        const EventSource source{"mcu", m_config.name, fmt::format("boot {} seq {}", m_boot, seq)};
        const std::uint32_t boot = m_boot;
        auto shared = m_shared;
        Status submitted = m_sink->submit(std::move(fields), source,
                                          [shared, boot, seq, which](Result<Committed> r) {
                                            std::lock_guard lock(shared->mutex);
                                            Answer a{boot, seq, which, {}};
                                            if (!r) a.result = std::unexpected(r.error());
                                            shared->answers.push_back(std::move(a));
                                          });
        if (!submitted) {
          --m_in_flight->outstanding;
          if (submitted.error().code == ErrorCode::rejected) {
            // Invalid whatever happens: retrying would stall the link for good. Skipped, counted.
            std::lock_guard lock(m_shared->mutex);
            ++m_shared->refused_events;
          } else {
            m_in_flight->failed = true;
          }
          error(fmt::format("event of boot {} seq {} refused: {}", m_boot, seq,
                            submitted.error().message));
        }
      }
      if (m_in_flight->outstanding == 0) finish_in_flight();
    }
  }

  struct InFlight {
    std::uint32_t seq = 0;
    std::size_t outstanding = 0;
    bool failed = false;
  };

  void take_answers() {
    std::deque<Answer> answers;
    {
      std::lock_guard lock(m_shared->mutex);
      answers.swap(m_shared->answers);
    }
    for (Answer& a : answers) {
      if (!m_in_flight || a.boot != m_boot || a.seq != m_in_flight->seq) continue;
      --m_in_flight->outstanding;
      if (a.result) {
        {
          std::lock_guard lock(m_shared->mutex);
          ++m_shared->health.events;
        }
        if (m_cursor.partial_seq != a.seq) {
          m_cursor.partial_seq = a.seq;
          m_cursor.partial_done.clear();
        }
        m_cursor.partial_done.insert(a.which);
        save_cursor();
      } else {
        m_in_flight->failed = true;
        error(fmt::format("event not committed: {}", a.result.error().message));
      }
      if (m_in_flight->outstanding == 0) finish_in_flight();
    }
    process_next();
  }

  void finish_in_flight() {
    const InFlight done = *m_in_flight;
    m_in_flight.reset();
    if (done.failed) {
      // Not acknowledged: the board resends it (LINK §5); what did commit is in the cursor.
      m_queue.clear();
      return;
    }
    committed(done.seq);
  }

  // Every event of `seq` is committed: the cursor moves, then the board may forget it.
  void committed(std::uint32_t seq) {
    m_cursor.seq = seq;
    m_cursor.partial_seq = 0;
    m_cursor.partial_done.clear();
    if (!save_cursor()) return;  // not acked: the resend is then a duplicate or a retry
    send_ack(m_boot, seq);
  }

  bool save_cursor() {
    nlohmann::json state;
    state["version"] = 1;
    state["boot"] = m_cursor.boot;
    state["seq"] = m_cursor.seq;
    state["partial_seq"] = m_cursor.partial_seq;
    state["partial_done"] = m_cursor.partial_done;
    if (Status s = save_driver_state(m_state_file, state); !s) {
      error(fmt::format("cannot save the cursor: {}", s.error().message));
      return false;
    }
    return true;
  }

  // The events a sequenced message makes, each named for the partial-commit record.
  std::vector<std::pair<std::string, nlohmann::ordered_json>> events_of(const Message& m) {
    std::vector<std::pair<std::string, nlohmann::ordered_json>> out;
    switch (m.header.type) {
      case fw::MessageType::session_start: {
        fw::SessionStart s;
        if (!fw::decode(m.body, s)) {
          link_error("short session start");
          return out;
        }
        m_open_sessions.insert(s.session);
        m_log.info(m_component, "session {} started at {}", s.session,
                   format_rfc3339_ms(to_unix_ms(s.start_ms, m)));
        return out;
      }
      case fw::MessageType::session_end: {
        fw::SessionEnd s;
        if (!fw::decode(m.body, s)) {
          link_error("short session end");
          return out;
        }
        m_open_sessions.erase(s.session);
        // Under 1.8 ms rounds to 0 hours, which no event may carry (PROTOCOL §4 Limits).
        if (s.end_ms < s.start_ms + 2) return out;
        const bool clamp = s.source == fw::SessionSource::current;
        const std::string process =
            fmt::format("mcu:{}:boot-{}-{}-{}", m_config.name, m.header.boot,
                        clamp ? "session" : "input", s.session);
        const std::string begin = format_rfc3339_ms(to_unix_ms(s.start_ms, m));
        const std::string end = format_rfc3339_ms(to_unix_ms(s.end_ms, m));
        nlohmann::ordered_json meta;
        meta["method"] = clamp ? "estimated" : "measured";
        meta["source"] = clamp ? "current clamp" : "running input";
        meta["boot"] = m.header.boot;
        meta["session"] = s.session;
        if (clamp) {
          meta["charge_ah"] = vf::round_to(static_cast<double>(s.charge_mc) / 3'600'000.0, 6);
          meta["peak_a"] = vf::round_to(s.peak_ma / 1000.0, 3);
          if (s.busy_ms > 0) meta["busy_hours"] = vf::round_to(s.busy_ms / 3'600'000.0, 6);
        }
        const double kwh = vf::round_to(static_cast<double>(s.energy_mj) / 3.6e9, 6);
        if (kwh > 0) meta["energy_kwh"] = kwh;
        // "Badge then use": the member whose badge came within the window before the start.
        std::optional<Attribution> who;
        if (m_badges) {
          // Board badges compare in board ms (one clock, one boot); a serial reader's in UTC.
          who = m_config.badge->source == BadgeConfig::Source::mcu
                    ? m_badges->for_session(static_cast<std::int64_t>(s.start_ms))
                    : m_badges->for_session(to_unix_ms(s.start_ms, m));
          if (!who && m_cursor.partial_seq != m.header.seq) m_badges->count_unbadged_session();
        }
        // Handover (board badges only: their times are the session's clock): a new member's
        // badge during the session closes the previous part and starts the member's own.
        struct Part {
          std::uint64_t start_ms;
          std::uint64_t end_ms;
          std::optional<Attribution> who;
        };
        std::vector<Part> parts{{s.start_ms, s.end_ms, who}};
        if (m_badges && m_config.badge->source == BadgeConfig::Source::mcu) {
          for (auto& [at, next] : m_badges->handovers(static_cast<std::int64_t>(s.start_ms),
                                                      static_cast<std::int64_t>(s.end_ms), who)) {
            const auto at_ms = static_cast<std::uint64_t>(at);
            if (at_ms < parts.back().start_ms + 2 || s.end_ms < at_ms + 2) continue;
            parts.back().end_ms = at_ms;
            parts.push_back(Part{at_ms, s.end_ms, std::move(next)});
          }
        }
        const double total_ms = static_cast<double>(s.end_ms - s.start_ms);
        for (std::size_t i = 0; i < parts.size(); ++i) {
          const Part& part = parts[i];
          // One part keeps the names of before; parts are named apart for the partial-commit
          // record, and carry their share of the session in meta.
          const std::string suffix = parts.size() == 1 ? "" : fmt::format("#{}", i + 1);
          nlohmann::ordered_json part_meta = meta;
          if (parts.size() > 1) {
            part_meta["part"] = i + 1;
            part_meta["parts"] = parts.size();
          }
          const std::string part_begin =
              parts.size() == 1 ? begin : format_rfc3339_ms(to_unix_ms(part.start_ms, m));
          const std::string part_end =
              parts.size() == 1 ? end : format_rfc3339_ms(to_unix_ms(part.end_ms, m));
          auto use = vf::use(m_config.resource,
                             vf::round_to((part.end_ms - part.start_ms) / 3'600'000.0, 6),
                             part_begin, part_end, process);
          if (part.who) attribute(use, *part.who);
          use["meta"] = part_meta;
          out.emplace_back("use" + suffix, std::move(use));
          // The energy shared by time: the board reports one total per session.
          const double part_kwh =
              parts.size() == 1
                  ? kwh
                  : vf::round_to(kwh * static_cast<double>(part.end_ms - part.start_ms) / total_ms,
                                 6);
          if (clamp && !m_config.electricity.empty() && part_kwh > 0) {
            auto consume = vf::consume(vf::ResourceRef::inventoried(m_config.electricity),
                                       vf::quantity(part_kwh, "kilowattHour"), part_end, process);
            if (part.who) attribute(consume, *part.who);
            consume["meta"] = part_meta;
            out.emplace_back("consume" + suffix, std::move(consume));
          }
        }
        m_log.info(m_component, "session {} {} – {}: {} kWh", s.session, begin, end, kwh);
        return out;
      }
      case fw::MessageType::badge: {
        fw::Badge b;
        if (!fw::decode(m.body, b)) {
          link_error("short badge");
          return out;
        }
        {
          std::lock_guard lock(m_shared->mutex);
          ++m_shared->badges;
        }
        // The raw tag goes to the badge module, which keeps only its keyed hash; without a
        // badge table it is counted and never logged (issue 17: a card id never leaves here).
        if (m_badges && m_config.badge->source == BadgeConfig::Source::mcu) {
          std::string tag = hex(b.tag);
          const auto unknown =
              m_badges->on_card(tag, static_cast<std::int64_t>(b.at_ms), to_unix_ms(b.at_ms, m));
          std::fill(tag.begin(), tag.end(), '\0');
          // Recorded for the node's `members` list (its keyed hash only), for enrolment.
          if (unknown)
            out.emplace_back(
                "unknown-badge",
                unknown_badge_event(
                    m_config.resource, *unknown, to_unix_ms(b.at_ms, m),
                    fmt::format("mcu:{}:boot-{}-badge-{}", m_config.name, m.header.boot, b.at_ms)));
        } else {
          m_log.info(m_component,
                     "badge read at {} (not attributed: no [driver.badge] table "
                     "with source \"mcu\")",
                     format_rfc3339_ms(to_unix_ms(b.at_ms, m)));
        }
        return out;
      }
      case fw::MessageType::error: {
        fw::Error e;
        if (fw::decode(m.body, e))
          error(fmt::format("board error {} (detail {})", static_cast<int>(e.code), e.detail));
        return out;
      }
      case fw::MessageType::pulses: {
        fw::Pulses p;
        if (fw::decode(m.body, p)) m_log.debug(m_component, "S0 pulses: {} since boot", p.total);
        return out;
      }
      default:
        return out;  // LINK §6: an unknown type is acknowledged and ignored
    }
  }

  const McuConfig m_config;
  const std::string m_component;
  Env& m_env;
  Logger& m_log;
  std::uint32_t m_config_crc = 0;
  std::filesystem::path m_state_file;
  EventSink* m_sink = nullptr;

  // The driver's thread only:
  std::unique_ptr<SerialPort> m_port;
  fw::FrameDecoder m_decoder;
  Cursor m_cursor;
  std::uint32_t m_boot = 0;
  int m_mismatched = 0;  // heartbeats without this driver's config since it was sent
  std::uint32_t m_config_sent_for = 0;
  std::optional<std::int64_t> m_offset_ms;
  std::set<std::uint32_t> m_open_sessions;
  std::deque<Message> m_queue;
  std::optional<InFlight> m_in_flight;

  std::unique_ptr<BadgeAttribution> m_badges;  // set at start() when configured
  std::unique_ptr<BadgeReader> m_reader;       // sources "serial" and "evdev"

  std::shared_ptr<Shared> m_shared;
  std::jthread m_thread;  // last: joined before the members it uses go
};

class McuKind final : public DriverKind {
 public:
  std::string_view kind() const override { return "mcu"; }
  std::string_view summary() const override {
    return "a machine-node board (firmware/) on a serial port: current clamp sessions, running "
           "input, badges";
  }
  const std::vector<DriverKeyInfo>& keys() const override { return mcu_keys(); }
  Result<std::unique_ptr<Driver>> create(const DriverConfig& config, Env& env,
                                         Logger& log) const override {
    auto parsed = parse_mcu_config(config);
    if (!parsed) return std::unexpected(parsed.error());
    return make_mcu_driver(std::move(*parsed), env, log);
  }
};

}  // namespace

const std::vector<DriverKeyInfo>& mcu_keys() {
  static const std::vector<DriverKeyInfo> keys = {
      {"path", "string", "(required)",
       "the board's serial device (/dev/serial/by-id/… for a USB adapter, /dev/ttyAMA0 for the "
       "Pi's header UART); 115200 8N1"},
      {"resource", "string", "(required)", "the machine: resourceInventoriedAs of `use` events"},
      {"electricity", "string", "\"\"",
       "the metered supply for `consume` in kilowattHour; empty: no consume events"},
      {"ua_per_count", "integer", "24170",
       "calibration: microampere of primary current per ADC count (SCT-013-030 on a 12-bit "
       "3.3 V ADC: 24170)"},
      {"sample_rate_hz", "integer", "2000", "ADC sampling rate"},
      {"window_samples", "integer", "2000", "samples per RMS window"},
      {"on_ma", "integer", "500", "a session starts at or above this RMS current (mA)"},
      {"off_ma", "integer", "300", "… and ends below this one (mA, at most on_ma)"},
      {"busy_ma", "integer", "0", "above this the machine is busy rather than idle (0: no levels)"},
      {"min_on", "duration", "\"5s\"", "shortest session (an inrush spike makes none)"},
      {"gap_merge", "duration", "\"30s\"", "a drop below off_ma shorter than this is merged"},
      {"voltage", "number", "230", "supply voltage (V), for the energy estimate"},
      {"power_factor", "number", "1.0", "power factor (at most 1), for the energy estimate"},
      {"debounce", "duration", "\"50ms\"", "the running input's debounce time"},
      {"s0_min_pulse", "duration", "\"30ms\"", "shortest valid S0 pulse"},
      badge_key_info(),
  };
  return keys;
}

Result<McuConfig> parse_mcu_config(const DriverConfig& config) {
  DriverTable table(config);
  if (Status keys = table.check_keys(mcu_keys()); !keys) return std::unexpected(keys.error());
  McuConfig out;
  out.name = config.name;
  auto path = table.required_string("path");
  if (!path) return std::unexpected(path.error());
  out.path = *path;
  auto resource = table.required_string("resource");
  if (!resource) return std::unexpected(resource.error());
  out.resource = *resource;
  auto electricity = table.string("electricity", "");
  if (!electricity) return std::unexpected(electricity.error());
  out.electricity = *electricity;

  constexpr std::int64_t u32max = 0xFFFF'FFFF;
  auto ua = table.integer("ua_per_count", 24170, 1, u32max);
  auto rate = table.integer("sample_rate_hz", 2000, 1, 65535);
  auto window = table.integer("window_samples", 2000, 1, 65535);
  auto on = table.integer("on_ma", 500, 1, u32max);
  auto off = table.integer("off_ma", 300, 0, u32max);
  auto busy = table.integer("busy_ma", 0, 0, u32max);
  for (const auto* r : {&ua, &rate, &window, &on, &off, &busy})
    if (!*r) return std::unexpected(r->error());
  auto min_on = table.duration("min_on", 5s);
  auto gap = table.duration("gap_merge", 30s);
  auto debounce = table.duration("debounce", 50ms);
  auto s0 = table.duration("s0_min_pulse", 30ms);
  for (const auto* r : {&min_on, &gap, &debounce, &s0})
    if (!*r) return std::unexpected(r->error());
  auto voltage = table.positive_number("voltage", 230, 1000);
  if (!voltage) return std::unexpected(voltage.error());
  auto pf = table.positive_number("power_factor", 1.0, 1.0);
  if (!pf) return std::unexpected(pf.error());
  if (*off > *on)
    return std::unexpected(table.error("off_ma", fmt::format("must be at most on_ma ({})", *on)));
  if (*busy != 0 && *busy < *on)
    return std::unexpected(
        table.error("busy_ma", fmt::format("must be 0 or at least on_ma ({})", *on)));
  if (min_on->count() > u32max) return std::unexpected(table.error("min_on", "is too long"));
  if (gap->count() > u32max) return std::unexpected(table.error("gap_merge", "is too long"));
  if (debounce->count() > 65535)
    return std::unexpected(table.error("debounce", "must be at most 65535ms"));
  if (s0->count() > 65535)
    return std::unexpected(table.error("s0_min_pulse", "must be at most 65535ms"));

  auto badge = parse_badge_config(config, {"mcu", "serial", "evdev"});
  if (!badge) return std::unexpected(badge.error());
  out.badge = std::move(*badge);

  fw::Config& b = out.board;
  b.ua_per_count = static_cast<std::uint32_t>(*ua);
  b.sample_rate_hz = static_cast<std::uint16_t>(*rate);
  b.window_samples = static_cast<std::uint16_t>(*window);
  b.on_threshold_ma = static_cast<std::uint32_t>(*on);
  b.off_threshold_ma = static_cast<std::uint32_t>(*off);
  b.busy_threshold_ma = static_cast<std::uint32_t>(*busy);
  b.min_on_ms = static_cast<std::uint32_t>(min_on->count());
  b.gap_merge_ms = static_cast<std::uint32_t>(gap->count());
  b.voltage_mv = static_cast<std::uint32_t>(*voltage * 1000.0 + 0.5);
  b.power_factor_permille = static_cast<std::uint16_t>(*pf * 1000.0 + 0.5);
  b.debounce_ms = static_cast<std::uint16_t>(debounce->count());
  b.s0_min_pulse_ms = static_cast<std::uint16_t>(s0->count());
  if (const std::uint32_t refused = fw::check_config(b); refused != 0)
    return std::unexpected(table.error("on_ma", fmt::format("the board would refuse this config "
                                                            "(field at offset {})",
                                                            refused - 1)));
  return out;
}

std::unique_ptr<Driver> make_mcu_driver(McuConfig config, Env& env, Logger& log) {
  return std::make_unique<McuDriver>(std::move(config), env, log);
}

}  // namespace mcu

const DriverKind& mcu_driver_kind() {
  static const mcu::McuKind kind;
  return kind;
}

}  // namespace agent
