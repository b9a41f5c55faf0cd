// SPDX-License-Identifier: AGPL-3.0-or-later
// The `moonraker` driver: Klipper printers through Moonraker's job history. Each finished job
// yields, sharing the process "moonraker:<name>:job-<job_id>", `use` of the printer (hours of
// print_duration), `consume` of filament (grams from the measured millimetres; the spool, or else
// the printer's filament stock) and, for completed jobs, `produce` of one new, named part.
// Optionally the filament comes from a Spoolman spool, and the length used is reported back to
// Spoolman. With a [driver.badge] table a job that starts within the window after a member's
// badge at the printer is that member's ("badge then use", README "Badges and members").
#include <algorithm>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <reflow/core/http.hpp>
#include <reflow/core/text.hpp>
#include <reflow/core/units.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/device/driver_table.hpp>
#include <reflow/drivers/badge.hpp>
#include <reflow/drivers/driver_state.hpp>
#include <reflow/drivers/driver_thread.hpp>
#include <reflow/drivers/printer_keys.hpp>
#include <reflow/drivers/spoolman.hpp>

#include "history.hpp"

namespace agent::moonraker {
namespace {

constexpr std::int64_t k_page_limit = 50;
constexpr int k_max_pages = 20;  // a poll reads at most 1000 jobs; the rest come next poll
constexpr std::chrono::milliseconds k_max_backoff = std::chrono::minutes(5);

const std::vector<DriverKeyInfo>& moonraker_keys() {
  static const std::vector<DriverKeyInfo> keys = [] {
    std::vector<DriverKeyInfo> rows = {
        {"url", "string", "(required)", "Moonraker's base URL: \"http://printer.local:7125\""},
        {"api_key", "string", "(none)",
         "Moonraker API key (X-Api-Key); not needed when this host is a trusted client"},
        {"resource", "string", "(required)", "resource reference of the printer (`use`)"},
        {"filament", "string", "(none)",
         "resource reference of the spool (`consume`) when no spool_id is set"},
        {"filament_stock", "string", "\"<resource>:filament-stock\"",
         "resource reference of the filament stock that `consume` names when no spool is known "
         "(neither spool_id nor filament)"},
    };
    std::ranges::copy(spoolman::filament_constant_key_rows(), std::back_inserter(rows));
    rows.insert(rows.end(),
                {
                    {"poll_interval", "duration", "\"10s\"",
                     "how often the job history is read; the retry backoff starts here"},
                    {"timeout", "duration", "\"10s\"", "time allowed for one HTTP request"},
                    {"backfill", "duration", "\"1d\"",
                     "on the very first start, also record jobs that started this long before"},
                    badge_key_info(),
                });
    std::ranges::copy(spoolman::spoolman_key_rows(), std::back_inserter(rows));
    return rows;
  }();
  return keys;
}

struct MoonrakerConfig {
  std::string name;
  std::string url;
  std::string api_key;
  std::string resource;
  std::string filament;
  std::string filament_stock;
  double diameter_mm = 1.75;
  double density_g_cm3 = 1.24;
  std::chrono::milliseconds poll_interval{10'000};
  std::chrono::milliseconds timeout{10'000};
  std::chrono::milliseconds backfill{86'400'000};
  std::string spoolman_url;
  std::int64_t spool_id = 0;
  spoolman::Report report = spoolman::Report::off;
  /// [driver.badge] ("serial" or "evdev": a reader beside the printer); none: jobs carry no
  /// member.
  std::optional<BadgeConfig> badge;
};

// The cursor. Moonraker's `since` filters on start_time, but jobs finish out of start order (a
// long print started first ends last), so `since` alone would skip or repeat jobs. The cursor
// is a watermark below which every job is handled, plus the ids of the handled jobs above it.
struct HandledJob {
  std::string job_id;
  double start_time = 0;
};

struct PendingUse {
  std::string job_id;
  std::int64_t spool_id = 0;
  double length_mm = 0;  // with spoolman_report = "length"
  double weight_g = 0;   // with spoolman_report = "weight" (the consume event's grams)
};

struct Cursor {
  double since = 0;                             // every job started at or before it is handled
  std::vector<HandledJob> handled;              // handled (or skipped) jobs started after it
  std::map<std::string, std::int64_t> partial;  // job_id → its first events already committed
  std::vector<PendingUse> spoolman_pending;     // committed jobs not yet reported to Spoolman
  std::string last_job_id;                      // for people reading the file

  bool is_handled(std::string_view job_id) const {
    return std::any_of(handled.begin(), handled.end(),
                       [&](const HandledJob& h) { return h.job_id == job_id; });
  }
};

nlohmann::json to_json(const Cursor& cursor) {
  nlohmann::json state;
  state["since"] = cursor.since;
  state["last_job_id"] = cursor.last_job_id;
  state["handled"] = nlohmann::json::array();
  for (const HandledJob& h : cursor.handled)
    state["handled"].push_back({{"job_id", h.job_id}, {"start_time", h.start_time}});
  state["partial"] = cursor.partial;
  state["spoolman_pending"] = nlohmann::json::array();
  for (const PendingUse& p : cursor.spoolman_pending) {
    nlohmann::json use = {{"job_id", p.job_id}, {"spool_id", p.spool_id}};
    if (p.weight_g > 0)
      use["use_weight_g"] = p.weight_g;
    else
      use["use_length_mm"] = p.length_mm;
    state["spoolman_pending"].push_back(std::move(use));
  }
  return state;
}

// An empty object (first start) gives nullopt. Anything unexpected is corruption: guessing would
// repeat or lose jobs.
Result<std::optional<Cursor>> from_json(const nlohmann::json& state,
                                        const std::filesystem::path& file) {
  if (state.empty()) return std::optional<Cursor>();
  try {
    Cursor cursor;
    cursor.since = state.at("since").get<double>();
    cursor.last_job_id = state.value("last_job_id", "");
    for (const auto& h : state.at("handled"))
      cursor.handled.push_back(
          {h.at("job_id").get<std::string>(), h.at("start_time").get<double>()});
    cursor.partial = state.at("partial").get<std::map<std::string, std::int64_t>>();
    for (const auto& p : state.at("spoolman_pending")) {
      PendingUse use{p.at("job_id").get<std::string>(), p.at("spool_id").get<std::int64_t>()};
      if (p.contains("use_weight_g"))
        use.weight_g = p.at("use_weight_g").get<double>();
      else
        use.length_mm = p.at("use_length_mm").get<double>();
      cursor.spoolman_pending.push_back(std::move(use));
    }
    return std::optional<Cursor>(std::move(cursor));
  } catch (const nlohmann::json::exception& e) {
    return fail(ErrorCode::corruption,
                fmt::format("{}: not a moonraker driver cursor ({}); restore it from a backup, or "
                            "delete it to start again from `backfill` ago (jobs may repeat)",
                            file.string(), e.what()));
  }
}

class MoonrakerDriver final : public Driver {
 public:
  MoonrakerDriver(MoonrakerConfig config, Env& env, Logger& log)
      : m_config(std::move(config)),
        m_env(env),
        m_log(log),
        m_component(fmt::format("driver moonraker/{}", m_config.name)) {}
  ~MoonrakerDriver() override { stop(); }

  Status start(EventSink& sink, const std::filesystem::path& state_dir) override {
    m_state_file = state_dir / "cursor.json";
    auto state = load_driver_state(m_state_file);
    if (!state) return std::unexpected(state.error());
    auto cursor = from_json(*state, m_state_file);
    if (!cursor) return std::unexpected(cursor.error());
    if (*cursor) {
      m_cursor = std::move(**cursor);
      m_log.info(m_component, "resuming after job {} (history since {})",
                 m_cursor.last_job_id.empty() ? "(none)" : m_cursor.last_job_id,
                 format_rfc3339_ms(static_cast<std::int64_t>(m_cursor.since * 1000)));
    } else {
      const auto from_ms = m_env.now_unix_ms() - m_config.backfill.count();
      m_cursor.since = static_cast<double>(from_ms / 1000);
      m_log.info(m_component, "first start: recording jobs started since {}",
                 format_rfc3339_ms(from_ms / 1000 * 1000));
    }
    if (m_config.badge && !m_badges) {
      auto badges =
          BadgeAttribution::open(*m_config.badge, m_config.name, state_dir, m_log, m_component);
      if (!badges) return std::unexpected(badges.error());
      m_badges = std::move(*badges);
      m_reader = make_badge_reader(*m_config.badge, *m_badges, m_env, m_log, m_component);
    }
    set_state("polling");
    if (m_reader) m_reader->start();
    return m_worker.start(m_component, [this, &sink](std::stop_token stop) { run(sink, stop); });
  }

  void stop() override {
    if (m_reader) m_reader->stop();
    m_worker.stop();
  }

  DriverHealth health() const override {
    DriverHealth h = m_worker.health();
    if (m_badges) h.state += fmt::format("; {}; {}", m_badges->status(), m_reader->status());
    if (m_reader) h.malformed += m_reader->bad_frames();
    return h;
  }

 private:
  // Which peer a problem is about, so that each is logged once per change, not every poll.
  enum class Peer { printer, spoolman, sink, state };

  void run(EventSink& sink, std::stop_token stop) {
    int failures = 0;
    while (!stop.stop_requested()) {
      const bool ok = poll(sink, stop);
      failures = ok ? 0 : std::min(failures + 1, 16);
      auto delay = m_config.poll_interval;
      for (int i = 0; i < failures && delay < k_max_backoff; ++i)
        delay *= 2;
      if (failures > 0) delay = std::min(delay, std::max(k_max_backoff, m_config.poll_interval));
      if (failures > 0) set_state(fmt::format("retrying in {}", format_duration(delay)));
      if (!m_env.sleep_for(delay, stop)) return;
    }
  }

  // One poll: read the history, record the finished jobs not handled yet, advance the cursor,
  // report to Spoolman. False when something failed (the caller backs off).
  bool poll(EventSink& sink, const std::stop_token& stop) {
    auto raw_jobs = fetch_history();
    if (!raw_jobs) return false;
    recovered(Peer::printer);

    struct Entry {
      std::optional<moonraker::HistoryJob> job;  // nullopt: malformed, skipped
      std::string job_id;
      double start_time = 0;
    };
    std::vector<Entry> entries;
    for (const nlohmann::json& raw : *raw_jobs) {
      auto job = moonraker::parse_job(raw);
      if (job) {
        entries.push_back({*job, job->job_id, job->start_time});
        continue;
      }
      // A malformed entry that can still be placed is skipped for good; one that cannot is
      // reported once and left where it is.
      const std::string id = raw.is_object() && raw.contains("job_id") && raw["job_id"].is_string()
                                 ? raw["job_id"].get<std::string>()
                                 : "";
      const std::string key =
          id.empty() ? agent::shortened_text(
                           raw.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), 200)
                     : id;
      if (m_reported_malformed.insert(key).second)
        malformed(fmt::format("Moonraker {}/server/history/list: {}; the job is skipped",
                              m_config.url, job.error().message));
      const auto start = raw.is_object() ? raw.find("start_time") : raw.end();
      if (!id.empty() && start != raw.end() && start->is_number())
        entries.push_back({std::nullopt, id, start->get<double>()});
    }
    std::stable_sort(entries.begin(), entries.end(),
                     [](const Entry& a, const Entry& b) { return a.start_time < b.start_time; });

    bool ok = true;
    std::optional<spoolman::Spool> spool;
    for (const Entry& entry : entries) {
      if (stop.stop_requested()) return true;
      if (handled(entry.job_id, entry.start_time)) continue;
      if (!entry.job) {
        m_cursor.handled.push_back({entry.job_id, entry.start_time});
        continue;
      }
      if (!entry.job->finished()) continue;
      if (m_config.spool_id > 0 && !spool) {
        spool = fetch_spool();
        if (!spool) {
          ok = false;
          break;
        }
      }
      if (!handle_job(sink, *entry.job, spool)) {
        ok = false;
        break;
      }
    }

    // Advance the watermark over the leading run of handled jobs; keep the ids at the boundary
    // in case Moonraker's `since` comparison includes it.
    double since = m_cursor.since;
    for (const Entry& entry : entries) {
      if (!handled(entry.job_id, entry.start_time)) break;
      since = std::max(since, entry.start_time);
    }
    const auto before = to_json(m_cursor);
    m_cursor.since = since;
    std::erase_if(m_cursor.handled, [&](const HandledJob& h) { return h.start_time < since; });
    if (to_json(m_cursor) != before) save();

    if (!report_to_spoolman()) ok = false;
    if (ok) set_state("polling");
    return ok;
  }

  // Jobs started before the watermark are handled by definition (Moonraker should not even list
  // them); those at or above it are handled when their id is recorded.
  bool handled(const std::string& job_id, double start_time) const {
    return start_time < m_cursor.since || m_cursor.is_handled(job_id);
  }

  // Every page of jobs started after the watermark, oldest first.
  Result<std::vector<nlohmann::json>> fetch_history() {
    std::vector<nlohmann::json> jobs;
    for (int page_no = 0; page_no < k_max_pages; ++page_no) {
      HttpRequest request;
      request.url = fmt::format("{}/server/history/list?since={}&order=asc&limit={}&start={}",
                                m_config.url, m_cursor.since, k_page_limit, jobs.size());
      request.timeout = m_config.timeout;
      request.headers.emplace_back("Accept", "application/json");
      if (!m_config.api_key.empty()) request.headers.emplace_back("X-Api-Key", m_config.api_key);
      auto response = m_http.perform(request);
      if (!response) {
        problem(Peer::printer, false,
                fmt::format("Moonraker unreachable: {}; is the printer on and `url` right?",
                            response.error().message));
        return std::unexpected(response.error());
      }
      if (response->status != 200) {
        const std::string hint =
            response->status == 401 || response->status == 403
                ? "set `api_key` to Moonraker's API key, or add this host to [authorization] "
                  "trusted_clients in moonraker.conf"
                : "see Moonraker's log (moonraker.log)";
        auto error = fail(ErrorCode::rejected,
                          fmt::format("Moonraker GET {}: HTTP {}: {}; {}", request.url,
                                      response->status, response->body.substr(0, 200), hint));
        problem(Peer::printer, false, error.error().message);
        return error;
      }
      auto page = moonraker::parse_history_page(response->body);
      if (!page) {
        auto error = fail(ErrorCode::invalid_argument,
                          fmt::format("Moonraker GET {}: {}; is `url` a Moonraker server?",
                                      request.url, page.error().message));
        problem(Peer::printer, true, error.error().message);
        return error;
      }
      const std::size_t got = page->jobs.size();
      for (auto& job : page->jobs)
        jobs.push_back(std::move(job));
      if (got < static_cast<std::size_t>(k_page_limit)) break;
      if (page->count > 0 && jobs.size() >= static_cast<std::size_t>(page->count)) break;
    }
    return jobs;
  }

  std::optional<spoolman::Spool> fetch_spool() {
    auto spool = spoolman_client().spool(m_config.spool_id);
    if (!spool) {
      problem(Peer::spoolman, spool.error().code == ErrorCode::invalid_argument,
              fmt::format("{}; jobs wait until Spoolman answers", spool.error().message));
      return std::nullopt;
    }
    recovered(Peer::spoolman);
    return *spool;
  }

  spoolman::Client& spoolman_client() {
    if (!m_spoolman) m_spoolman.emplace(m_config.spoolman_url, m_config.timeout);
    return *m_spoolman;
  }

  // Submits the job's events one by one, each after the previous one is committed, saving the
  // progress, so that a restart resumes inside a job without repeating an event.
  bool handle_job(EventSink& sink, const moonraker::HistoryJob& job,
                  const std::optional<spoolman::Spool>& spool) {
    moonraker::JobContext context;
    context.name = m_config.name;
    context.printer = m_config.resource;
    context.filament = m_config.filament;
    context.filament_stock = m_config.filament_stock;
    context.diameter_mm = m_config.diameter_mm;
    context.density_g_cm3 = m_config.density_g_cm3;
    if (spool) {
      context.filament = spoolman::spool_reference(spool->id);
      context.diameter_mm = spool->diameter_mm;
      context.density_g_cm3 = spool->density_g_cm3;
      context.spool_id = spool->id;
    }
    auto events = moonraker::job_events(job, context);
    if (m_badges) {
      // Moonraker's start_time is Unix seconds, the badges' time Unix ms of the agent's clock.
      const auto who = m_badges->for_session(static_cast<std::int64_t>(job.start_time * 1000));
      if (who)
        for (auto& fields : events)
          attribute(fields, *who);
      else if (!m_cursor.partial.contains(job.job_id))
        m_badges->count_unbadged_session();
    }
    for (const auto& fields : events)
      if (Status valid = validate_submission(fields); !valid) {
        malformed(fmt::format("job {}: would give an invalid event ({}); the job is skipped",
                              job.job_id, valid.error().message));
        m_cursor.handled.push_back({job.job_id, job.start_time});
        return true;
      }

    const EventSource source{"moonraker", m_config.name, fmt::format("job {}", job.job_id)};
    std::size_t next = 0;
    if (auto it = m_cursor.partial.find(job.job_id); it != m_cursor.partial.end())
      next = static_cast<std::size_t>(
          std::clamp<std::int64_t>(it->second, 0, static_cast<std::int64_t>(events.size())));
    for (; next < events.size(); ++next) {
      auto promise = std::make_shared<std::promise<Result<Committed>>>();
      auto committed = promise->get_future();
      Status queued = sink.submit(events[next], source, [promise](Result<Committed> r) {
        promise->set_value(std::move(r));
      });
      if (!queued) promise->set_value(std::unexpected(queued.error()));
      if (auto r = committed.get(); !r) {
        problem(Peer::sink, false,
                fmt::format("job {}: the agent refused an event ({}); trying again later",
                            job.job_id, r.error().message));
        return false;
      }
      {
        m_worker.update([](DriverHealth& h) { ++h.events; });
      }
      m_cursor.partial[job.job_id] = static_cast<std::int64_t>(next + 1);
      if (next + 1 < events.size()) save();
    }
    recovered(Peer::sink);
    m_cursor.partial.erase(job.job_id);
    m_cursor.handled.push_back({job.job_id, job.start_time});
    m_cursor.last_job_id = job.job_id;
    if (m_config.report == spoolman::Report::length && spool && job.filament_used_mm > 0)
      m_cursor.spoolman_pending.push_back({job.job_id, spool->id, job.filament_used_mm, 0});
    if (m_config.report == spoolman::Report::weight && spool)
      for (const auto& fields : events)
        if (fields["action"] == "consume")
          m_cursor.spoolman_pending.push_back(
              {job.job_id, spool->id, 0,
               fields["resourceQuantity"]["hasNumericalValue"].get<double>()});
    save();
    m_log.info(m_component, "job {} ({}, {}): {} event(s)", job.job_id, job.status, job.filename,
               events.size());
    return true;
  }

  // Reports each committed job's filament to Spoolman once: the job leaves the pending list
  // (saved) only after Spoolman accepted it, or refused it for good (no such spool, a request it
  // can never accept), which is logged and counted rather than retried forever.
  bool report_to_spoolman() {
    while (!m_cursor.spoolman_pending.empty()) {
      const PendingUse use = m_cursor.spoolman_pending.front();
      const std::string amount = use.weight_g > 0 ? fmt::format("{} g", use.weight_g)
                                                  : fmt::format("{} mm", use.length_mm);
      Status sent = use.weight_g > 0 ? spoolman_client().use_weight(use.spool_id, use.weight_g)
                                     : spoolman_client().use_length(use.spool_id, use.length_mm);
      const bool never = !sent && (sent.error().code == ErrorCode::not_found ||
                                   sent.error().code == ErrorCode::invalid_argument);
      if (!sent && !never) {
        problem(Peer::spoolman, false,
                fmt::format("job {}: reporting {} to Spoolman failed: {}; trying again later",
                            use.job_id, amount, sent.error().message));
        return false;
      }
      if (never)
        problem(Peer::spoolman, false,
                fmt::format("job {}: Spoolman refuses {} for good: {}; not reported", use.job_id,
                            amount, sent.error().message));
      else
        recovered(Peer::spoolman);
      m_cursor.spoolman_pending.erase(m_cursor.spoolman_pending.begin());
      save();
      if (!never)
        m_log.info(m_component, "job {}: reported {} to Spoolman spool {}", use.job_id, amount,
                   use.spool_id);
    }
    return true;
  }

  void save() {
    if (Status saved = save_driver_state(m_state_file, to_json(m_cursor)); !saved)
      problem(Peer::state, false,
              fmt::format("cannot save the cursor: {}; a restart may repeat jobs",
                          saved.error().message));
  }

  void set_state(std::string state) { m_worker.set_state(std::move(state)); }

  // Counts `message` as malformed (is_malformed) or as an error, and keeps it as the last error.
  void count_problem(bool is_malformed, const std::string& message) {
    m_worker.update([&](DriverHealth& h) {
      ++(is_malformed ? h.malformed : h.errors);
      h.last_error = message;
      h.last_error_unix_ms = m_env.now_unix_ms();
    });
  }

  void malformed(const std::string& message) {
    count_problem(true, message);
    m_log.warning(m_component, "{}", message);
  }

  void problem(Peer peer, bool is_malformed, const std::string& message) {
    count_problem(is_malformed, message);
    std::string& last = m_last_problem[peer];
    if (last != message) m_log.warning(m_component, "{}", message);
    last = message;
  }

  void recovered(Peer peer) {
    std::string& last = m_last_problem[peer];
    if (!last.empty()) m_log.info(m_component, "{}", recovery_text(peer));
    last.clear();
  }

  static std::string_view recovery_text(Peer peer) {
    switch (peer) {
      case Peer::printer:
        return "Moonraker answers again";
      case Peer::spoolman:
        return "Spoolman answers again";
      case Peer::sink:
        return "the agent accepts events again";
      case Peer::state:
        return "the cursor is saved again";
    }
    return "";
  }

  MoonrakerConfig m_config;
  Env& m_env;
  Logger& m_log;
  const std::string m_component;
  std::filesystem::path m_state_file;
  Cursor m_cursor;  // only the driver thread touches it once started
  HttpClient m_http;
  std::optional<spoolman::Client> m_spoolman;
  std::map<Peer, std::string> m_last_problem;
  std::set<std::string> m_reported_malformed;
  std::unique_ptr<BadgeAttribution> m_badges;  // with [driver.badge]
  std::unique_ptr<BadgeReader> m_reader;       // fed into m_badges; stopped before it goes
  DriverThread<DriverHealth> m_worker;         // last: joined before the members it uses go
};

// A base URL without its trailing slashes; "" stays "" (an optional key left out).
Result<std::string> base_url(const DriverTable& table, std::string_view key, std::string url) {
  if (url.empty()) return url;
  if (!url.starts_with("http://") && !url.starts_with("https://"))
    return std::unexpected(
        table.error(key, fmt::format("expected a URL starting with http:// or https:// such as "
                                     "\"http://printer.local:7125\"; got \"{}\"",
                                     url)));
  while (url.ends_with('/'))
    url.pop_back();
  return url;
}

class MoonrakerKind final : public DriverKind {
 public:
  std::string_view kind() const override { return "moonraker"; }
  std::string_view summary() const override {
    return "Klipper printers through Moonraker's job history: use, consume and produce per job; "
           "Spoolman spools";
  }
  const std::vector<DriverKeyInfo>& keys() const override { return moonraker_keys(); }

  Result<std::unique_ptr<Driver>> create(const DriverConfig& config, Env& env,
                                         Logger& log) const override {
    DriverTable table(config);
    if (Status keys = table.check_keys(moonraker_keys()); !keys)
      return std::unexpected(keys.error());
    auto url = table.string("url", "");
    auto api_key = table.string("api_key", "");
    auto printer = spoolman::read_printer_keys(table);
    auto stock = table.string("filament_stock", "");
    auto poll = table.duration("poll_interval", std::chrono::seconds(10));
    auto timeout = table.duration("timeout", std::chrono::seconds(10));
    auto backfill = table.duration("backfill", std::chrono::hours(24));
    for (const Error* e : {url ? nullptr : &url.error(), api_key ? nullptr : &api_key.error(),
                           printer ? nullptr : &printer.error(), stock ? nullptr : &stock.error(),
                           poll ? nullptr : &poll.error(), timeout ? nullptr : &timeout.error(),
                           backfill ? nullptr : &backfill.error()})
      if (e) return std::unexpected(*e);
    const auto missing = [&](std::string_view key, std::string_view example) {
      return std::unexpected(table.error(
          key, fmt::format("is required for kind \"moonraker\"; add e.g. {} = {}", key, example)));
    };
    if (url->empty()) return missing("url", "\"http://printer.local:7125\"");
    if (printer->resource.empty()) return missing("resource", "\"printer:voron-01\"");

    MoonrakerConfig c;
    c.name = config.name;
    auto moonraker_url = base_url(table, "url", *url);
    if (!moonraker_url) return std::unexpected(moonraker_url.error());
    c.url = *moonraker_url;
    auto spoolman = base_url(table, "spoolman_url", printer->spoolman_url);
    if (!spoolman) return std::unexpected(spoolman.error());
    c.spoolman_url = *spoolman;
    c.api_key = *api_key;
    c.resource = printer->resource;
    c.filament = printer->filament;
    c.filament_stock =
        stock->empty() ? fmt::format("{}:filament-stock", printer->resource) : *stock;
    c.diameter_mm = printer->diameter_mm;
    c.density_g_cm3 = printer->density_g_cm3;
    c.poll_interval = *poll;
    c.timeout = *timeout;
    c.backfill = *backfill;
    c.spool_id = printer->spool_id;
    c.report = printer->report;
    if (c.poll_interval.count() <= 0)
      return std::unexpected(table.error("poll_interval", "must be longer than 0"));
    if (c.timeout.count() <= 0)
      return std::unexpected(table.error("timeout", "must be longer than 0"));
    if (c.spool_id > 0 && c.spoolman_url.empty())
      return std::unexpected(table.error(
          "spool_id",
          fmt::format("needs spoolman_url (the Spoolman server that knows spool {})", c.spool_id)));
    if (c.report != spoolman::Report::off && c.spool_id == 0)
      return std::unexpected(table.error(
          "spoolman_report", "needs spool_id (the spool to report to) and spoolman_url"));
    auto badge = parse_badge_config(config, {"serial", "evdev"});
    if (!badge) return std::unexpected(badge.error());
    c.badge = std::move(*badge);
    return std::make_unique<MoonrakerDriver>(std::move(c), env, log);
  }
};

}  // namespace
}  // namespace agent::moonraker

namespace agent {

const DriverKind& moonraker_driver_kind() {
  static const moonraker::MoonrakerKind kind;
  return kind;
}

}  // namespace agent
