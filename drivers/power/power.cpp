// SPDX-License-Identifier: AGPL-3.0-or-later
// The `power` driver: a smart plug (Shelly Gen1, Shelly Gen2/Gen3, Tasmota) on the site's MQTT
// broker. Power readings become usage sessions (session_tracker.hpp); each finished session
// becomes `use` of the machine in hours, with the energy in `meta`, and `consume` of electricity
// in kilowattHour when configured.
//
// Threads: the subscriber's thread parses each message and steps the session tracker; the
// driver's own thread closes sessions whose merge window ended and retries refused events; the
// sink's writer thread reports commits. All three share one Core under one mutex. The Core is
// shared with the submit callbacks, so a commit reported after stop() is still saved.
#include <algorithm>
#include <deque>
#include <mutex>
#include <thread>

#include <reflow/core/units.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/drivers/driver_state.hpp>
#include <reflow/drivers/mqtt_subscriber.hpp>

#include "power_logic.hpp"

namespace agent {
namespace {

using power::PendingSession;
using power::PowerConfig;
using power::SessionTracker;

constexpr std::int64_t k_retry_min_ms = 1'000;
constexpr std::int64_t k_retry_max_ms = 60'000;
constexpr auto k_idle_wait = std::chrono::hours(1);

// One event of a pending session in flight to the sink.
enum class Which { use, consume };

struct Core : std::enable_shared_from_this<Core> {
  Core(PowerConfig c, Env& e, Logger& l, SessionTracker t)
      : config(std::move(c)), env(e), log(l), tracker(std::move(t)) {}

  const PowerConfig config;
  Env& env;
  Logger& log;
  std::string component;
  std::filesystem::path state_file;

  std::mutex mutex;
  SessionTracker tracker;
  std::deque<PendingSession> pending;
  // Events handed to the sink and not yet answered, by session start: never submitted twice.
  std::vector<std::pair<std::int64_t, Which>> in_flight;
  std::int64_t retry_at_ms = 0;
  std::int64_t retry_delay_ms = k_retry_min_ms;
  std::stop_source wake;  // wakes the driver's thread: a new deadline or a retry

  BadgeAttribution* badges = nullptr;  // owned by the driver; set before any message

  DriverHealth health;
  std::string connection = "connecting";
  std::optional<bool> plug_online;
  std::uint64_t messages = 0;
  bool last_was_malformed = false;

  // Caller holds the mutex.
  void save() {
    nlohmann::json state;
    state["version"] = 1;
    state["session"] = tracker.to_json();
    state["pending"] = nlohmann::json::array();
    for (const PendingSession& p : pending)
      state["pending"].push_back(power::to_json(p));
    if (Status saved = save_driver_state(state_file, state); !saved)
      error(fmt::format("cannot save the session state: {}", saved.error().message));
  }

  void error(std::string message) {
    ++health.errors;
    health.last_error = message;
    health.last_error_unix_ms = env.now_unix_ms();
    log.error(component, "{}", message);
  }

  // Caller holds the mutex.
  void apply(const power::TrackerStep& step) {
    for (const power::PowerSession& session : step.closed) {
      PendingSession p;
      p.session = session;
      p.consume_done = !power::session_events(config, session).consume.has_value();
      // "Badge then use": decided once, when the session closes, and saved with it.
      if (badges != nullptr) {
        p.who = badges->for_session(session.start_ms);
        if (!p.who) badges->count_unbadged_session();
      }
      pending.push_back(p);
      log.info(component, "session {} – {} ({}): {}", format_rfc3339_ms(session.start_ms),
               format_rfc3339_ms(session.end_ms), to_string(session.end),
               session.energy_wh ? fmt::format("{:.0f} Wh", *session.energy_wh)
                                 : std::string("no energy counter"));
    }
    if (step.dropped > 0)
      log.info(component, "{} session(s) shorter than min_on, not recorded", step.dropped);
    if (step.changed) save();
  }
};

class PowerDriver final : public Driver {
 public:
  PowerDriver(PowerConfig config, Env& env, Logger& log)
      : m_config(std::move(config)), m_env(env), m_log(log) {}
  ~PowerDriver() override { stop(); }

  Status start(EventSink& sink, const std::filesystem::path& state_dir) override {
    if (m_thread.joinable()) return {};
    const std::filesystem::path state_file = state_dir / "state.json";
    auto state = load_driver_state(state_file);
    if (!state) return std::unexpected(state.error());
    auto tracker = SessionTracker::from_json(m_config.session,
                                             state->value("session", nlohmann::json::object()));
    if (!tracker)
      return fail(ErrorCode::corruption,
                  fmt::format("{}: {}; move the file away to start afresh (an open session is then "
                              "lost)",
                              state_file.string(), tracker.error().message));
    auto core = std::make_shared<Core>(m_config, m_env, m_log, std::move(*tracker));
    core->component = fmt::format("driver power/{}", m_config.name);
    if (m_config.badge && !m_badges) {
      auto badges =
          BadgeAttribution::open(*m_config.badge, m_config.name, state_dir, m_log, core->component);
      if (!badges) return std::unexpected(badges.error());
      m_badges = std::move(*badges);
      m_reader = make_badge_reader(*m_config.badge, *m_badges, m_env, m_log, core->component);
    }
    core->badges = m_badges.get();
    core->state_file = state_file;
    for (const auto& item : state->value("pending", nlohmann::json::array())) {
      auto pending = power::pending_from_json(item);
      if (!pending)
        return fail(ErrorCode::corruption,
                    fmt::format("{}: {}", state_file.string(), pending.error().message));
      core->pending.push_back(*pending);
    }
    if (core->tracker.session_open() || !core->pending.empty())
      m_log.info(core->component, "resuming: {}, {} finished session(s) to record",
                 core->tracker.describe(), core->pending.size());

    MqttSubscriberOptions options;
    options.url = m_config.url;
    options.client_id = m_config.client_id;
    options.username = m_config.username;
    options.password_file = m_config.password_file;
    options.ca_file = m_config.ca_file;
    options.topics = power::plug_topics(m_config.plug);
    auto subscriber = std::make_unique<MqttSubscriber>(std::move(options), m_env, m_log);
    Status started = subscriber->start(
        [core, &sink](const MqttMessage& message) { on_message(*core, sink, message); },
        [core](bool connected, const std::string& reason) {
          on_connection(*core, connected, reason);
        });
    if (!started) return started;
    m_core = core;
    m_subscriber = std::move(subscriber);
    if (m_reader) m_reader->start();
    m_thread = std::jthread([core, &sink](std::stop_token stop) { run(*core, sink, stop); });
    return {};
  }

  void stop() override {
    if (m_reader) m_reader->stop();
    if (m_subscriber) m_subscriber->stop();  // no message arrives after this
    if (m_thread.joinable()) {
      m_thread.request_stop();
      m_thread.join();
    }
    m_subscriber.reset();
    if (m_core) {
      std::lock_guard lock(m_core->mutex);
      m_core->connection = "stopped";
    }
  }

  DriverHealth health() const override {
    if (!m_core) {
      DriverHealth stopped;
      stopped.state = "stopped";
      return stopped;
    }
    std::lock_guard lock(m_core->mutex);
    DriverHealth h = m_core->health;
    const std::string plug = !m_core->plug_online   ? "plug not heard"
                             : *m_core->plug_online ? "plug online"
                                                    : "plug offline";
    h.state = fmt::format("{}; {}; {}; {} to record ({} messages)", m_core->connection, plug,
                          m_core->tracker.describe(), m_core->pending.size(), m_core->messages);
    if (m_badges) h.state += fmt::format("; {}; {}", m_badges->status(), m_reader->status());
    if (m_reader) h.malformed += m_reader->bad_frames();
    return h;
  }

 private:
  static void on_connection(Core& core, bool connected, const std::string& reason) {
    std::lock_guard lock(core.mutex);
    if (connected) {
      core.connection = "connected";
      core.log.info(core.component, "connected to {}", core.config.url);
      return;
    }
    if (core.connection == "connected" || core.connection == "connecting")
      core.error(fmt::format("broker {} not connected: {}", core.config.url, reason));
    core.connection = fmt::format("disconnected ({})", reason);
  }

  static void on_message(Core& core, EventSink& sink, const MqttMessage& message) {
    {
      std::lock_guard lock(core.mutex);
      const std::int64_t now = core.env.now_unix_ms();
      ++core.messages;
      auto reading = power::parse_plug_message(core.config.plug, message.topic, message.payload);
      if (!reading) {
        ++core.health.malformed;
        if (!core.last_was_malformed)
          core.log.warning(core.component, "skipping malformed message: {}",
                           reading.error().message);
        else
          core.log.debug(core.component, "skipping malformed message: {}", reading.error().message);
        core.last_was_malformed = true;
        return;
      }
      core.last_was_malformed = false;
      const power::PlugReading usable = power::usable_reading(*reading, message.retained);
      if (usable.online && usable.online != core.plug_online) {
        if (*usable.online)
          core.log.info(core.component, "plug {} online", core.config.plug.root);
        else
          core.log.warning(core.component, "plug {} offline", core.config.plug.root);
      }
      if (usable.online) core.plug_online = usable.online;
      const power::TrackerStep step = core.tracker.on_reading(usable, now);
      core.apply(step);
      // A pause has a deadline the driver's thread must wait for.
      if (step.changed) core.wake.request_stop();
    }
    submit_due(core.shared_from_this(), sink);
  }

  static void run(Core& core, EventSink& sink, std::stop_token stop) {
    while (!stop.stop_requested()) {
      std::stop_source wake;
      {
        std::lock_guard lock(core.mutex);
        core.wake = wake;
        core.apply(core.tracker.on_time(core.env.now_unix_ms()));
      }
      submit_due(core.shared_from_this(), sink);

      auto deadline = core.env.steady_now() + k_idle_wait;
      {
        std::lock_guard lock(core.mutex);
        const std::int64_t now = core.env.now_unix_ms();
        std::optional<std::int64_t> due = core.tracker.deadline_ms();
        if (has_unsubmitted(core)) due = due ? std::min(*due, core.retry_at_ms) : core.retry_at_ms;
        if (due)
          deadline = std::min(deadline,
                              core.env.steady_now() +
                                  std::chrono::milliseconds(std::max<std::int64_t>(0, *due - now)));
      }
      std::stop_callback on_stop(stop, [&wake] { wake.request_stop(); });
      core.env.sleep_until(deadline, wake.get_token());
    }
  }

  // Caller holds the mutex.
  static bool in_flight(const Core& core, std::int64_t start_ms, Which which) {
    return std::find(core.in_flight.begin(), core.in_flight.end(), std::pair{start_ms, which}) !=
           core.in_flight.end();
  }

  // Caller holds the mutex.
  static bool has_unsubmitted(const Core& core) {
    for (const PendingSession& p : core.pending)
      if ((!p.use_done && !in_flight(core, p.session.start_ms, Which::use)) ||
          (!p.consume_done && !in_flight(core, p.session.start_ms, Which::consume)))
        return true;
    return false;
  }

  // Hands the events of finished sessions to the sink, unless a refusal asked to wait. The sink
  // may answer inside submit(), so the mutex is not held across it.
  static void submit_due(const std::shared_ptr<Core>& shared, EventSink& sink) {
    Core& core = *shared;
    struct Job {
      std::int64_t start_ms;
      Which which;
      nlohmann::ordered_json fields;
      std::string ref;
    };
    std::vector<Job> jobs;
    {
      std::lock_guard lock(core.mutex);
      if (core.env.now_unix_ms() < core.retry_at_ms) return;
      for (const PendingSession& p : core.pending) {
        power::SessionEvents events = power::session_events(core.config, p.session, p.who);
        const std::int64_t start = p.session.start_ms;
        if (!p.use_done && !in_flight(core, start, Which::use))
          jobs.push_back({start, Which::use, std::move(events.use), events.ref});
        if (!p.consume_done && events.consume && !in_flight(core, start, Which::consume))
          jobs.push_back({start, Which::consume, std::move(*events.consume), events.ref});
      }
      for (const Job& job : jobs)
        core.in_flight.emplace_back(job.start_ms, job.which);
    }
    // The callbacks hold the Core: a commit answered after stop() is still recorded.
    for (Job& job : jobs) {
      const std::int64_t start = job.start_ms;
      const Which which = job.which;
      auto done = [shared, start, which](Result<Committed> committed) {
        on_committed(*shared, start, which, committed);
      };
      Status queued = sink.submit(std::move(job.fields),
                                  EventSource{"power", core.config.name, std::move(job.ref)},
                                  std::move(done), QueueFull::refuse);
      if (!queued) on_committed(core, start, which, std::unexpected(queued.error()));
    }
  }

  static void on_committed(Core& core, std::int64_t start_ms, Which which,
                           const Result<Committed>& committed) {
    std::lock_guard lock(core.mutex);
    std::erase(core.in_flight, std::pair{start_ms, which});
    auto it = std::find_if(core.pending.begin(), core.pending.end(),
                           [&](const PendingSession& p) { return p.session.start_ms == start_ms; });
    if (it == core.pending.end()) return;
    const char* name = which == Which::use ? "use" : "consume";
    if (!committed && committed.error().code == ErrorCode::rejected) {
      // The same event would be refused forever: a bug, not a reason to stop recording.
      core.error(fmt::format("session {}: {} event refused, dropped: {}",
                             format_rfc3339_ms(start_ms), name, committed.error().message));
    } else if (!committed) {
      core.retry_at_ms = core.env.now_unix_ms() + core.retry_delay_ms;
      if (committed.error().code != ErrorCode::shutting_down)
        core.error(fmt::format("session {}: {} event not recorded, retrying in {}: {}",
                               format_rfc3339_ms(start_ms), name,
                               format_duration(std::chrono::milliseconds(core.retry_delay_ms)),
                               committed.error().message));
      core.retry_delay_ms = std::min(core.retry_delay_ms * 2, k_retry_max_ms);
      core.wake.request_stop();
      return;
    } else {
      ++core.health.events;
      core.retry_delay_ms = k_retry_min_ms;
    }
    (which == Which::use ? it->use_done : it->consume_done) = true;
    if (it->use_done && it->consume_done) core.pending.erase(it);
    core.save();
  }

  PowerConfig m_config;
  Env& m_env;
  Logger& m_log;
  std::unique_ptr<BadgeAttribution> m_badges;  // [driver.badge]; set at start()
  std::unique_ptr<BadgeReader> m_reader;
  std::shared_ptr<Core> m_core;
  std::unique_ptr<MqttSubscriber> m_subscriber;
  std::jthread m_thread;
};

class PowerKind final : public DriverKind {
 public:
  std::string_view kind() const override { return "power"; }
  std::string_view summary() const override {
    return "smart plug on the site's MQTT broker (Shelly Gen1/Gen2, Tasmota): use of the machine "
           "per power session, consume of electricity";
  }
  const std::vector<DriverKeyInfo>& keys() const override { return power::power_keys(); }

  Result<std::unique_ptr<Driver>> create(const DriverConfig& config, Env& env,
                                         Logger& log) const override {
    auto power = power::read_power_config(config);
    if (!power) return std::unexpected(power.error());
    return std::make_unique<PowerDriver>(std::move(*power), env, log);
  }
};

}  // namespace

const DriverKind& power_driver_kind() {
  static const PowerKind kind;
  return kind;
}

}  // namespace agent
