// SPDX-License-Identifier: AGPL-3.0-or-later
// The `gpio` driver: a digital input (machine-on contact, opto-isolated mains detector, relay)
// gives `use` sessions of a machine; an S0 pulse output of an energy meter gives `consume` of
// electricity in kilowattHour. Lines are found by name through libgpiod v1, debounced in software
// on the kernel's edge timestamps (docs/reference/drivers.md §7.1, §7.2).
#include <algorithm>
#include <future>
#include <limits>
#include <mutex>
#include <thread>

#include <reflow/core/units.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/device/driver_table.hpp>
#include <reflow/drivers/driver_state.hpp>
#include <reflow/drivers/driver_thread.hpp>
#include <reflow/drivers/valueflows.hpp>

#include "debouncer.hpp"
#include "gpio_driver.hpp"

namespace agent {
namespace gpio {
namespace {

constexpr std::chrono::seconds k_retry_min{1};
constexpr std::chrono::minutes k_retry_max{5};
// With nothing pending the thread still wakes now and then; nothing depends on it.
constexpr std::chrono::hours k_idle_wake{1};
constexpr std::int64_t k_never = std::numeric_limits<std::int64_t>::max();
constexpr std::string_view k_state_file = "state.json";

std::int64_t to_ns(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

std::int64_t to_ns(std::chrono::milliseconds d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

std::chrono::steady_clock::time_point from_ns(std::int64_t ns) {
  return std::chrono::steady_clock::time_point(
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::nanoseconds(ns)));
}

Error required(const DriverTable& table, std::string_view key, std::string_view example) {
  return table.error(key,
                     fmt::format("is required for kind \"gpio\"; add e.g. {} = {}", key, example));
}

class GpioDriver final : public Driver {
 public:
  GpioDriver(GpioConfig config, Env& env, Logger& log, EdgeSourceFactory open_line)
      : m_config(std::move(config)),
        m_env(env),
        m_log(log),
        m_open_line(std::move(open_line)),
        m_component(fmt::format("driver gpio/{}", m_config.name)),
        m_debouncer(to_ns(m_config.debounce)) {
    m_worker.set_state("not started");
  }
  ~GpioDriver() override { stop(); }

  Status start(EventSink& sink, const std::filesystem::path& state_dir) override {
    if (m_worker.running()) return {};
    m_state_file = state_dir / k_state_file;
    auto state = load_driver_state(m_state_file);
    if (!state) return std::unexpected(state.error());
    // Open once here so that a wrong line name shows up at once in the log and in `status`; the
    // agent retries start(). Losing the line later is handled in the thread, with backoff.
    auto source = m_open_line(m_config.line);
    if (!source) {
      note_error(source.error());
      return std::unexpected(source.error());
    }
    m_source = std::move(*source);
    m_restored = std::move(*state);
    m_first_open = true;
    return m_worker.start(m_component, [this, &sink](std::stop_token stop) { run(sink, stop); });
  }

  void stop() override { m_worker.stop(); }

  DriverHealth health() const override { return m_worker.health(); }

 private:
  struct Pending {
    nlohmann::ordered_json fields;
    EventSource source;
  };

  // The steady and wall clocks read together, so that an edge's steady timestamp maps to wall
  // time. Retried when the steady clock moved in between (a test advancing FakeEnv, a preemption).
  void read_clocks() {
    for (int attempt = 0; attempt < 100; ++attempt) {
      const std::int64_t before = to_ns(m_env.steady_now());
      const std::int64_t wall = m_env.now_unix_ms();
      const std::int64_t after = to_ns(m_env.steady_now());
      m_now_ns = after;
      m_now_wall_ms = wall;
      if (after - before < 1'000'000) return;
    }
  }

  std::int64_t wall_ms(std::int64_t steady_ns) const {
    return m_now_wall_ms - (m_now_ns - steady_ns) / 1'000'000;
  }

  void run(EventSink& sink, std::stop_token stop) {
    auto backoff = std::chrono::milliseconds(k_retry_min);
    bool need_level = true;
    while (!stop.stop_requested()) {
      if (!m_source) {
        auto source = m_open_line(m_config.line);
        if (!source) {
          note_error(source.error());
          if (!m_env.sleep_for(backoff, stop)) break;
          backoff = std::min<std::chrono::milliseconds>(backoff * 2, k_retry_max);
          continue;
        }
        m_source = std::move(*source);
      }
      if (need_level) {
        auto level = m_source->level();
        if (!level) {
          note_error(level.error());
          m_source.reset();
          if (!m_env.sleep_for(backoff, stop)) break;
          backoff = std::min<std::chrono::milliseconds>(backoff * 2, k_retry_max);
          continue;
        }
        read_clocks();
        if (m_first_open)
          restore(*level, sink);
        else
          resume(*level);
        m_first_open = false;
        need_level = false;
        backoff = k_retry_min;
        note_ok();
      }
      flush(sink);
      const std::int64_t deadline_ns = next_deadline_ns();
      auto edges = m_source->wait(from_ns(deadline_ns), stop);
      if (!edges) {
        note_error(edges.error());
        m_source.reset();
        need_level = true;
        if (!m_env.sleep_for(backoff, stop)) break;
        backoff = std::min<std::chrono::milliseconds>(backoff * 2, k_retry_max);
        continue;
      }
      read_clocks();
      for (const Edge& edge : *edges) {
        const std::int64_t at = std::min(edge.timestamp_ns, m_now_ns);
        advance_to(at, sink);
        m_debouncer.feed(Edge{edge.kind, at});
      }
      // The source vouches for no edge only up to its last edge, or up to the deadline when it
      // returned none. Edges after that may have happened already and wait unread (the thread can
      // be preempted between the read and read_clocks()), so playing confirmations up to now could
      // confirm a level that one of them cancels: a bounce cut a session in two. The next wait()
      // has the pending confirmation as its deadline and plays it once nothing came before.
      if (edges->empty()) advance_to(std::min(deadline_ns, m_now_ns), sink);
      update_state_text();
    }
    m_source.reset();
    // Before the first open the state file was not taken in: keep it as it is.
    if (m_first_open) return;
    read_clocks();
    if (m_open_begin_ms) m_last_seen_ms = m_now_wall_ms;
    save_state();
    set_state_text("stopped");
  }

  // The first open after start(): continue what the state file holds.
  void restore(bool active, EventSink& sink) {
    m_debouncer.reset(active);
    m_unsent.clear();
    m_flush_retry_ns = 0;
    m_open_begin_ms.reset();
    m_open_estimated = false;
    const nlohmann::json& s = m_restored;
    if (auto it = s.find("unsent"); it != s.end() && it->is_array())
      for (const auto& u : *it) {
        if (!u.contains("fields") || !u.contains("source")) continue;
        const auto& src = u["source"];
        m_unsent.push_back({nlohmann::ordered_json::parse(u["fields"].dump()),
                            EventSource{src.value("driver", "gpio"), src.value("instance", ""),
                                        src.value("ref", "")}});
      }
    if (m_config.mode == Mode::pulse) {
      m_impulses_total = s.value("impulses_total", std::int64_t{0});
      m_impulses_pending = s.value("impulses_pending", std::int64_t{0});
      m_period_begin_ms = s.value("period_begin_unix_ms", m_now_wall_ms);
      m_next_report_ns = m_now_ns + to_ns(m_config.report_every);
      if (m_impulses_pending > 0)
        m_log.info(m_component, "continuing with {} impulses counted before the restart",
                   m_impulses_pending);
      return;
    }
    if (auto it = s.find("open_session"); it != s.end() && it->is_object()) {
      const std::int64_t begin = it->value("begin_unix_ms", std::int64_t{0});
      const std::int64_t last_seen = it->value("last_seen_unix_ms", begin);
      const bool estimated = it->value("method", std::string("measured")) == "estimated";
      if (active) {
        m_open_begin_ms = begin;
        m_open_estimated = estimated;
        m_log.info(m_component, "line {} still active: continuing the session begun {}",
                   m_config.line.line, format_rfc3339_ms(begin));
      } else {
        // It ended while the agent was down; the last time the agent saw it active is the best
        // known end, and a lower bound.
        m_log.info(m_component,
                   "the session begun {} ended while the agent was stopped; "
                   "recording it up to {} (estimated)",
                   format_rfc3339_ms(begin), format_rfc3339_ms(last_seen));
        end_session(begin, last_seen, true, sink);
        save_state();
      }
      return;
    }
    if (active) {
      // The machine was on before the agent started: the session begins now, at the earliest.
      m_open_begin_ms = m_now_wall_ms;
      m_open_estimated = true;
      m_last_seen_ms = m_now_wall_ms;
      m_log.info(m_component, "line {} is active at start: session begins now (estimated)",
                 m_config.line.line);
      save_state();
    }
  }

  // A reopen after the line was lost: a level that changed meanwhile counts from now, debounced.
  void resume(bool active) {
    if (active != m_debouncer.raw())
      m_debouncer.feed(Edge{active ? Edge::Kind::rising : Edge::Kind::falling, m_now_ns});
  }

  std::int64_t next_deadline_ns() const {
    std::int64_t next = m_now_ns + to_ns(std::chrono::milliseconds(k_idle_wake));
    if (auto confirm = m_debouncer.confirm_at()) next = std::min(next, *confirm);
    if (m_config.mode == Mode::pulse) next = std::min(next, m_next_report_ns);
    if (!m_unsent.empty()) next = std::min(next, m_flush_retry_ns);
    return next;
  }

  // Plays debounce confirmations and report times up to `t_ns` in time order, so the outcome
  // depends on the timestamps alone, not on when the thread happened to wake.
  void advance_to(std::int64_t t_ns, EventSink& sink) {
    for (;;) {
      const std::int64_t confirm = m_debouncer.confirm_at().value_or(k_never);
      const std::int64_t report = m_config.mode == Mode::pulse ? m_next_report_ns : k_never;
      if (std::min(confirm, report) > t_ns) return;
      if (confirm <= report) {
        if (auto transition = m_debouncer.settle(confirm)) on_transition(*transition, sink);
      } else {
        report_energy(report, sink);
        m_next_report_ns += to_ns(m_config.report_every);
      }
    }
  }

  void on_transition(const Debouncer::Transition& t, EventSink& sink) {
    if (m_config.mode == Mode::pulse) {
      if (t.active) ++m_impulses_pending;
      return;
    }
    if (t.active) {
      if (m_open_begin_ms) return;
      m_open_begin_ms = wall_ms(t.at_ns);
      m_open_estimated = false;
      m_last_seen_ms = *m_open_begin_ms;
      save_state();
      return;
    }
    if (!m_open_begin_ms) return;
    const std::int64_t begin = *m_open_begin_ms;
    const bool estimated = m_open_estimated;
    m_open_begin_ms.reset();
    end_session(begin, wall_ms(t.at_ns), estimated, sink);
    save_state();
  }

  void end_session(std::int64_t begin_ms, std::int64_t end_ms, bool estimated, EventSink& sink) {
    const std::int64_t length_ms = end_ms - begin_ms;
    if (length_ms <= 0 || length_ms < m_config.min_on.count()) {
      m_log.info(m_component, "dropped a session of {} at {} (shorter than min_on {})",
                 format_duration(std::chrono::milliseconds(std::max<std::int64_t>(length_ms, 0))),
                 format_rfc3339_ms(begin_ms), format_duration(m_config.min_on));
      return;
    }
    nlohmann::ordered_json meta;
    meta["line"] = m_config.line.line;
    meta["method"] = estimated ? "estimated" : "measured";

    auto use = vf::use(m_config.resource, static_cast<double>(length_ms) / 3'600'000.0,
                       format_rfc3339_ms(begin_ms), format_rfc3339_ms(end_ms),
                       fmt::format("gpio:{}:job-{}", m_config.name, begin_ms));
    use["meta"] = std::move(meta);
    m_unsent.push_back(
        {std::move(use), EventSource{"gpio", m_config.name, fmt::format("session {}", begin_ms)}});
    flush(sink);
  }

  // One `consume` for the impulses counted in the period that ends at `at_ns`; none when there
  // were none (the period then restarts).
  void report_energy(std::int64_t at_ns, EventSink& sink) {
    const std::int64_t end_ms = wall_ms(at_ns);
    if (m_impulses_pending > 0) {
      const std::int64_t n = m_impulses_pending;
      nlohmann::ordered_json meta;
      meta["line"] = m_config.line.line;
      meta["impulses"] = n;
      meta["impulses_per_kwh"] = m_config.impulses_per_kwh;
      meta["method"] = "measured";

      nlohmann::ordered_json consume;
      consume["action"] = "consume";
      consume["resourceInventoriedAs"] = m_config.resource;
      consume["resourceQuantity"] =
          vf::quantity(static_cast<double>(n) / m_config.impulses_per_kwh, "kilowattHour");
      const std::int64_t begin_ms = std::min(m_period_begin_ms, end_ms);
      consume["hasBeginning"] = format_rfc3339_ms(begin_ms);
      consume["hasEnd"] = format_rfc3339_ms(end_ms);
      // An S0 meter knows no machine session: the period is the process that consumed it.
      consume["inputOf"] = vf::period_process("gpio", m_config.name, begin_ms);
      consume["meta"] = std::move(meta);
      // The meter's impulse numbers identify the event: a node sees overlaps and gaps.
      m_unsent.push_back(
          {std::move(consume),
           EventSource{"gpio", m_config.name,
                       fmt::format("impulses {}-{}", m_impulses_total + 1, m_impulses_total + n)}});
      m_impulses_total += n;
      m_impulses_pending = 0;
    }
    m_period_begin_ms = end_ms;
    flush(sink);
  }

  // Submits unsent events in order, each only after the one before it was committed; the state
  // is saved after each commit, so a restart neither repeats nor loses one.
  void flush(EventSink& sink) {
    if (m_unsent.empty() || m_now_ns < m_flush_retry_ns) return;
    while (!m_unsent.empty()) {
      Pending& next = m_unsent.front();
      auto done = std::make_shared<std::promise<Result<Committed>>>();
      auto committed_future = done->get_future();
      Status queued = sink.submit(next.fields, next.source,
                                  [done](Result<Committed> r) { done->set_value(std::move(r)); });
      Result<Committed> committed =
          queued ? committed_future.get() : Result<Committed>(std::unexpected(queued.error()));
      if (!committed) {
        m_flush_retry_ns = m_now_ns + to_ns(std::chrono::milliseconds(k_retry_max)) / 10;
        m_log.warning(m_component, "event {} not recorded, retrying later: {}", next.source.ref,
                      committed.error().message);
        m_worker.note_error(committed.error().message, m_env.now_unix_ms());
        return;
      }
      m_log.info(m_component, "recorded {} ({})", next.source.ref,
                 next.fields["action"].get<std::string>());
      m_unsent.erase(m_unsent.begin());
      m_worker.update([](DriverHealth& h) { ++h.events; });
      save_state();
    }
    m_flush_retry_ns = 0;
  }

  void save_state() {
    if (m_state_file.empty()) return;
    nlohmann::json s = nlohmann::json::object();
    if (m_config.mode == Mode::pulse) {
      s["impulses_total"] = m_impulses_total;
      s["impulses_pending"] = m_impulses_pending;
      s["period_begin_unix_ms"] = m_period_begin_ms;
    } else if (m_open_begin_ms) {
      s["open_session"] = {{"begin_unix_ms", *m_open_begin_ms},
                           {"last_seen_unix_ms", std::max(m_last_seen_ms, *m_open_begin_ms)},
                           {"method", m_open_estimated ? "estimated" : "measured"}};
    }
    if (!m_unsent.empty()) {
      auto& list = s["unsent"] = nlohmann::json::array();
      for (const Pending& p : m_unsent)
        list.push_back({{"fields", nlohmann::json::parse(p.fields.dump())},
                        {"source",
                         {{"driver", p.source.driver},
                          {"instance", p.source.instance},
                          {"ref", p.source.ref}}}});
    }
    if (Status saved = save_driver_state(m_state_file, s); !saved)
      m_log.error(m_component, "{}", saved.error().message);
  }

  void note_error(const Error& error) {
    bool changed = false;
    m_worker.update([&](DriverHealth& h) {
      changed = h.last_error != error.message || !m_failing;
      ++h.errors;
      h.last_error = error.message;
      h.last_error_unix_ms = m_env.now_unix_ms();
      h.state = fmt::format("waiting for line {}", m_config.line.line);
      m_failing = true;
    });
    if (changed) m_log.warning(m_component, "{}", error.message);
  }

  void note_ok() {
    bool recovered = false;
    m_worker.update([&](DriverHealth&) { recovered = std::exchange(m_failing, false); });
    if (recovered) m_log.info(m_component, "line {} is back", m_config.line.line);
    update_state_text();
  }

  void update_state_text() {
    std::string text;
    if (m_config.mode == Mode::pulse)
      text = fmt::format("counting impulses on {} ({} this period)", m_config.line.line,
                         m_impulses_pending);
    else if (m_open_begin_ms)
      text = fmt::format("watching {}: active since {}", m_config.line.line,
                         format_rfc3339_ms(*m_open_begin_ms));
    else
      text = fmt::format("watching {}: inactive", m_config.line.line);
    set_state_text(std::move(text));
  }

  void set_state_text(std::string text) { m_worker.set_state(std::move(text)); }

  GpioConfig m_config;
  Env& m_env;
  Logger& m_log;
  EdgeSourceFactory m_open_line;
  std::string m_component;
  std::filesystem::path m_state_file;

  // Owned by the thread once started.
  std::unique_ptr<EdgeSource> m_source;
  nlohmann::json m_restored;
  bool m_first_open = true;
  Debouncer m_debouncer;
  std::int64_t m_now_ns = 0;
  std::int64_t m_now_wall_ms = 0;
  std::optional<std::int64_t> m_open_begin_ms;
  bool m_open_estimated = false;
  std::int64_t m_last_seen_ms = 0;
  std::int64_t m_impulses_total = 0;
  std::int64_t m_impulses_pending = 0;
  std::int64_t m_period_begin_ms = 0;
  std::int64_t m_next_report_ns = 0;
  std::vector<Pending> m_unsent;
  std::int64_t m_flush_retry_ns = 0;

  bool m_failing = false;  // changed with the health (under its lock)

  DriverThread<DriverHealth> m_worker;  // last: joined before the members it uses go
};

class GpioKind final : public DriverKind {
 public:
  std::string_view kind() const override { return "gpio"; }
  std::string_view summary() const override {
    return "GPIO line by name (libgpiod): a machine-on contact gives use sessions, an S0 energy "
           "meter's pulses give consume of electricity in kWh";
  }
  const std::vector<DriverKeyInfo>& keys() const override { return gpio_keys(); }

  Result<std::unique_ptr<Driver>> create(const DriverConfig& config, Env& env,
                                         Logger& log) const override {
    auto parsed = parse_gpio_config(config);
    if (!parsed) return std::unexpected(parsed.error());
    return make_gpio_driver(std::move(*parsed), env, log, [&env](const LineRequest& request) {
      return open_gpiod_edge_source(request, env);
    });
  }
};

}  // namespace

const std::vector<DriverKeyInfo>& gpio_keys() {
  static const std::vector<DriverKeyInfo> keys = {
      {"line", "string", "(required)",
       "GPIO line name as `gpioinfo` lists it (\"GPIO17\", a device-tree label); never a chip "
       "number"},
      {"mode", "string", "\"input\"",
       "\"input\": active level = machine session (use); \"pulse\": S0 meter impulses (consume "
       "of electricity)"},
      {"resource", "string", "(required)",
       "resource reference: the machine (input) or the metered circuit (pulse)"},
      {"active", "string", "\"high\"", "which level is active: \"high\" or \"low\""},
      {"bias", "string", "\"none\"",
       "internal resistor: \"none\", \"pull-up\" or \"pull-down\" (kernel 5.5 or later)"},
      {"debounce", "duration", "\"50ms\" (input), \"20ms\" (pulse)",
       "a level counts once it held this long; shorter than the meter's pulse width"},
      {"min_on", "duration", "\"1s\"", "input: sessions shorter than this are dropped"},
      {"impulses_per_kwh", "number", "1000", "pulse: the meter's constant (imp/kWh)"},
      {"report_every", "duration", "\"15m\"",
       "pulse: period of the consume events (none for a period without impulses)"},
  };
  return keys;
}

Result<GpioConfig> parse_gpio_config(const DriverConfig& config) {
  DriverTable table(config);
  if (Status keys = table.check_keys(gpio_keys()); !keys) return std::unexpected(keys.error());
  GpioConfig gpio;
  gpio.name = config.name;
  gpio.line.consumer = fmt::format("reflow-agent/{}", config.name);

  auto line = table.string("line", "");
  if (!line) return std::unexpected(line.error());
  if (line->empty()) return std::unexpected(required(table, "line", "\"GPIO17\""));
  gpio.line.line = *line;

  auto resource = table.string("resource", "");
  if (!resource) return std::unexpected(resource.error());
  if (resource->empty())
    return std::unexpected(required(table, "resource", "\"machine:laser-01\""));
  gpio.resource = *resource;

  auto mode = table.choice("mode", "input", {"input", "pulse"});
  auto active = table.choice("active", "high", {"high", "low"});
  auto bias = table.choice("bias", "none", {"none", "pull-up", "pull-down"});
  for (const auto* r : {&mode, &active, &bias})
    if (!*r) return std::unexpected(r->error());
  gpio.mode = *mode == "pulse" ? Mode::pulse : Mode::input;
  gpio.line.active_low = *active == "low";
  gpio.line.bias = *bias == "pull-up"     ? Bias::pull_up
                   : *bias == "pull-down" ? Bias::pull_down
                                          : Bias::none;

  // S0 pulses are 30–90 ms wide, too short for a contact's 50 ms.
  auto debounce =
      table.duration("debounce", std::chrono::milliseconds(gpio.mode == Mode::pulse ? 20 : 50));
  auto min_on = table.duration("min_on", std::chrono::seconds(1));
  auto impulses = table.positive_number("impulses_per_kwh", 1000);
  auto report_every = table.duration("report_every", std::chrono::minutes(15));
  if (!debounce) return std::unexpected(debounce.error());
  if (!min_on) return std::unexpected(min_on.error());
  if (!impulses) return std::unexpected(impulses.error());
  if (!report_every) return std::unexpected(report_every.error());
  if (report_every->count() <= 0)
    return std::unexpected(table.error("report_every", "must be longer than 0s"));
  gpio.debounce = *debounce;
  gpio.min_on = *min_on;
  gpio.impulses_per_kwh = *impulses;
  gpio.report_every = *report_every;
  return gpio;
}

std::unique_ptr<Driver> make_gpio_driver(GpioConfig config, Env& env, Logger& log,
                                         EdgeSourceFactory open_line) {
  return std::make_unique<GpioDriver>(std::move(config), env, log, std::move(open_line));
}

}  // namespace gpio

const DriverKind& gpio_driver_kind() {
  static const gpio::GpioKind kind;
  return kind;
}

}  // namespace agent
