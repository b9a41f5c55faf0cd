// SPDX-License-Identifier: AGPL-3.0-or-later
// The `octoprint` driver: polls OctoPrint's REST API (GET /api/printer for the state flags, then
// GET /api/job) and turns each print job into, sharing one process reference, `use` of the printer
// (measured print time, hours), `consume` of filament (the slicer's estimate scaled by progress,
// grams, "method":"estimated") and, for a finished job, `produce` of one new, named part
// ("<file>, job <start unix s> on <resource>", the job token of the process reference).
//
// OctoPrint has no job id and, for one cancel, announces both PrintCancelled and PrintFailed
// (reference §1.3); polling sees exactly one transition out of the printing states instead, and
// keys the job by (origin, path, start time estimated as first-seen time − printTime).
//
// With a [driver.badge] table a job that starts within the window after a member's badge at the
// printer is that member's ("badge then use", README "Badges and members"), as with moonraker.
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <optional>
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
#include <reflow/drivers/valueflows.hpp>

#include "octoprint_api.hpp"

namespace agent::octoprint {
namespace {

using octoprint::JobFile;
using octoprint::Observation;

// A print of the same file whose estimated start lies this far after the last time we saw the
// previous one running is a new print (a restart of the file while we were not looking).
constexpr std::int64_t k_new_job_slack_ms = 60'000;
// While printing, the job's progress is saved at most this often (SD-card wear); state changes
// (start, cancelling, error, end) are saved at once.
constexpr std::int64_t k_save_interval_ms = 60'000;
// Consecutive polls where /api/printer says idle but /api/job still says printing before the
// flags are trusted (one such poll is a transition between the two requests).
constexpr int k_max_inconclusive = 3;

const std::vector<DriverKeyInfo>& octoprint_keys() {
  static const std::vector<DriverKeyInfo> keys = [] {
    std::vector<DriverKeyInfo> rows = {
        {"url", "string", "(required)", "OctoPrint's address, e.g. \"http://octopi.local\""},
        {"api_key", "string", "(required)",
         "OctoPrint API key (User Settings → API Key, or an Application Key), sent as X-Api-Key"},
        {"resource", "string", "(required)", "resource reference of the printer (`use`)"},
        {"filament", "string", "(spool reference)",
         "resource reference of the filament (`consume`); required unless spool_id is set"},
    };
    std::ranges::copy(spoolman::filament_constant_key_rows(), std::back_inserter(rows));
    rows.insert(rows.end(),
                {
                    {"poll_interval", "duration", "\"5s\"", "time between two polls of OctoPrint"},
                    {"max_backoff", "duration", "\"5m\"",
                     "longest wait between retries while OctoPrint is unreachable or answers "
                     "with an error"},
                    {"request_timeout", "duration", "\"10s\"", "time one HTTP request may take"},
                    badge_key_info(),
                });
    std::ranges::copy(spoolman::spoolman_key_rows(), std::back_inserter(rows));
    return rows;
  }();
  return keys;
}

struct OctoPrintConfig {
  std::string name;
  std::string url;
  std::string api_key;
  std::string resource;
  std::string filament;
  double diameter_mm = 1.75;
  double density_g_cm3 = 1.24;
  std::chrono::milliseconds poll_interval{5'000};
  std::chrono::milliseconds max_backoff{300'000};
  std::chrono::milliseconds request_timeout{10'000};
  std::string spoolman_url;
  std::int64_t spool_id = 0;
  spoolman::Report report = spoolman::Report::off;
  /// [driver.badge] ("serial" or "evdev": a reader beside the printer); none: jobs carry no
  /// member.
  std::optional<BadgeConfig> badge;

  bool spoolman() const { return !spoolman_url.empty() && spool_id > 0; }
  std::string filament_reference() const {
    if (!filament.empty()) return filament;
    return spoolman::spool_reference(spool_id);
  }
};

// The job being printed, as far as the driver has seen it. Persisted so that a restart mid-job
// neither loses nor repeats it.
struct Job {
  JobFile file;
  std::int64_t start_ms = 0;      // first-seen time − printTime
  std::int64_t last_seen_ms = 0;  // last poll that saw it printing
  double print_time_s = 0;        // progress.printTime, last value seen
  double progress = 0;            // progress.completion, percent, last value seen
  std::optional<double> file_filament_mm;
  bool saw_cancelling = false;
  bool saw_error = false;
  std::optional<double> spool_density_g_cm3;  // from Spoolman, when it answered
  std::optional<double> spool_diameter_mm;
};

nlohmann::json optional_json(const std::optional<double>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

nlohmann::json job_to_json(const Job& job) {
  return {{"origin", job.file.origin},
          {"path", job.file.path},
          {"name", job.file.name},
          {"start_ms", job.start_ms},
          {"last_seen_ms", job.last_seen_ms},
          {"print_time_s", job.print_time_s},
          {"progress", job.progress},
          {"file_filament_mm", optional_json(job.file_filament_mm)},
          {"saw_cancelling", job.saw_cancelling},
          {"saw_error", job.saw_error},
          {"spool_density_g_cm3", optional_json(job.spool_density_g_cm3)},
          {"spool_diameter_mm", optional_json(job.spool_diameter_mm)}};
}

std::optional<Job> job_from_json(const nlohmann::json& j) {
  auto str = [&](const char* k) { return j.contains(k) && j[k].is_string(); };
  auto num = [&](const char* k) { return j.contains(k) && j[k].is_number(); };
  auto num_or_null = [&](const char* k) {
    return j.contains(k) && (j[k].is_number() || j[k].is_null());
  };
  auto boolean = [&](const char* k) { return j.contains(k) && j[k].is_boolean(); };
  if (!j.is_object() || !str("origin") || !str("path") || !str("name") || !num("start_ms") ||
      !num("last_seen_ms") || !num("print_time_s") || !num("progress") ||
      !num_or_null("file_filament_mm") || !boolean("saw_cancelling") || !boolean("saw_error") ||
      !num_or_null("spool_density_g_cm3") || !num_or_null("spool_diameter_mm"))
    return std::nullopt;
  auto opt = [&](const char* k) {
    return j[k].is_null() ? std::optional<double>{} : std::optional<double>{j[k].get<double>()};
  };
  Job job;
  job.file = {j["origin"], j["path"], j["name"]};
  job.start_ms = j["start_ms"];
  job.last_seen_ms = j["last_seen_ms"];
  job.print_time_s = j["print_time_s"];
  job.progress = j["progress"];
  job.file_filament_mm = opt("file_filament_mm");
  job.saw_cancelling = j["saw_cancelling"];
  job.saw_error = j["saw_error"];
  job.spool_density_g_cm3 = opt("spool_density_g_cm3");
  job.spool_diameter_mm = opt("spool_diameter_mm");
  return job;
}

std::int64_t seconds_to_ms(double s) {
  return static_cast<std::int64_t>(std::llround(s * 1000));
}

class OctoPrintDriver final : public Driver {
 public:
  OctoPrintDriver(OctoPrintConfig config, Env& env, Logger& log)
      : m_config(std::move(config)),
        m_env(env),
        m_log(log),
        m_component(fmt::format("driver octoprint/{}", m_config.name)) {
    m_worker.set_state("starting");
  }
  ~OctoPrintDriver() override { stop(); }

  Status start(EventSink& sink, const std::filesystem::path& state_dir) override {
    m_state_file = state_dir / "state.json";
    auto state = load_driver_state(m_state_file);
    if (!state) return std::unexpected(state.error());
    if (Status loaded = load(*state); !loaded) return loaded;
    if (m_job)
      m_log.info(m_component, "resuming job {} ({}), started {}", m_job->file.name,
                 m_job->file.origin, format_rfc3339_ms(m_job->start_ms));
    if (m_config.badge && !m_badges) {
      auto badges =
          BadgeAttribution::open(*m_config.badge, m_config.name, state_dir, m_log, m_component);
      if (!badges) return std::unexpected(badges.error());
      m_badges = std::move(*badges);
      m_reader = make_badge_reader(*m_config.badge, *m_badges, m_env, m_log, m_component);
    }
    if (m_reader) m_reader->start();
    return m_worker.start(m_component, [this, &sink](std::stop_token stop) { run(sink, stop); });
  }

  void stop() override {
    if (m_reader) m_reader->stop();
    m_worker.stop();
  }

  DriverHealth health() const override {
    DriverHealth h = m_worker.health();
    if (m_badges) h.state += fmt::format("; {}", m_badges->status());
    if (m_reader) {
      h.state += fmt::format("; {}", m_reader->status());
      h.malformed += m_reader->bad_frames();
    }
    return h;
  }

 private:
  Status load(const nlohmann::json& state) {
    auto corrupt = [&](std::string_view what) {
      return fail(ErrorCode::corruption,
                  fmt::format("{}: {}; the driver does not guess (that could lose or repeat a "
                              "job): fix or remove the file and restart",
                              m_state_file.string(), what));
    };
    if (state.contains("job") && !state["job"].is_null()) {
      m_job = job_from_json(state["job"]);
      if (!m_job) return corrupt("`job` is malformed");
    }
    for (const char* list : {"pending_events", "pending_spoolman"}) {
      if (!state.contains(list)) continue;
      if (!state[list].is_array()) return corrupt(fmt::format("`{}` is not an array", list));
    }
    m_pending_events = state.value("pending_events", nlohmann::json::array());
    m_pending_spoolman = state.value("pending_spoolman", nlohmann::json::array());
    for (const auto& e : m_pending_events)
      if (!e.is_object() || !e.contains("fields") || !e["fields"].is_object() ||
          !e.contains("ref") || !e["ref"].is_string())
        return corrupt("an entry of `pending_events` is malformed");
    for (const auto& e : m_pending_spoolman)
      if (!e.is_object() || !e.contains("spool_id") || !e["spool_id"].is_number_integer() ||
          !e.contains("body") || !e["body"].is_object())
        return corrupt("an entry of `pending_spoolman` is malformed");
    return {};
  }

  void save() {
    nlohmann::json state;
    state["version"] = 1;
    state["job"] = m_job ? job_to_json(*m_job) : nlohmann::json(nullptr);
    state["pending_events"] = m_pending_events;
    state["pending_spoolman"] = m_pending_spoolman;
    if (Status saved = save_driver_state(m_state_file, state); !saved) {
      m_log.error(m_component, "{}", saved.error().message);
      record_error(saved.error().message);
      return;
    }
    m_last_save_ms = m_env.now_unix_ms();
  }

  void run(EventSink& sink, std::stop_token stop) {
    m_http = std::make_unique<HttpClient>();
    while (!stop.stop_requested()) {
      const bool ok = poll_once();
      if (!flush_events(sink, stop)) return;
      flush_spoolman();
      std::chrono::milliseconds delay = m_config.poll_interval;
      if (ok) {
        m_failures = 0;
      } else {
        // Exponential backoff: poll_interval, ×2, ×4 … up to max_backoff.
        const int doublings = std::min(m_failures, 20);
        delay = std::min(m_config.max_backoff,
                         m_config.poll_interval * (std::chrono::milliseconds::rep{1} << doublings));
        ++m_failures;
      }
      set_state(ok ? idle_or_printing_text()
                   : fmt::format("{} (retry in {})", m_problem, format_duration(delay)));
      if (!m_env.sleep_for(delay, stop)) return;
    }
  }

  std::string idle_or_printing_text() const {
    if (m_job) return fmt::format("printing {} ({:.0f}%)", m_job->file.name, m_job->progress);
    return fmt::format("idle (OctoPrint: {})", m_last_state_text);
  }

  // --- polling -----------------------------------------------------------------------------

  Result<HttpResponse> get(std::string_view path) {
    HttpRequest request;
    request.url = m_config.url + std::string(path);
    request.headers = {{"X-Api-Key", m_config.api_key}};
    request.timeout = m_config.request_timeout;
    return m_http->perform(request);
  }

  // One poll: false when OctoPrint could not be read (the caller backs off).
  bool poll_once() {
    Observation obs;
    auto printer = get("/api/printer?exclude=temperature,sd");
    if (!printer) return request_failed("/api/printer", printer.error().message);
    if (printer->status != 200 && printer->status != 409)
      return http_failed("/api/printer", *printer);
    auto job = get("/api/job");
    if (!job) return request_failed("/api/job", job.error().message);
    if (job->status != 200) return http_failed("/api/job", *job);

    Status parsed = octoprint::parse_printer(printer->status, printer->body, obs);
    if (parsed) parsed = octoprint::parse_job(job->body, obs);
    if (!parsed) {
      m_worker.update([](DriverHealth& h) { ++h.malformed; });
      problem("malformed answer", parsed.error().message, /*count_error=*/false);
      return false;
    }
    if (!m_problem.empty()) m_log.info(m_component, "OctoPrint answers again at {}", m_config.url);
    m_problem.clear();
    m_last_state_text = obs.state_text;
    observe(obs);
    return true;
  }

  bool request_failed(std::string_view path, const std::string& message) {
    problem("OctoPrint unreachable", fmt::format("GET {}{}: {}", m_config.url, path, message),
            true);
    return false;
  }

  bool http_failed(std::string_view path, const HttpResponse& response) {
    if (response.status == 401 || response.status == 403) {
      problem(fmt::format("API key refused (HTTP {})", response.status),
              fmt::format("GET {}{}: HTTP {}: OctoPrint refused the API key; set api_key to a "
                          "valid key (OctoPrint → User Settings → API Key, or Application Keys)",
                          m_config.url, path, response.status),
              true);
      return false;
    }
    problem(fmt::format("HTTP {}", response.status),
            fmt::format(
                "GET {}{}: HTTP {}: {}", m_config.url, path, response.status,
                agent::shortened_text(agent::printable_text(response.body.substr(0, 800)), 200)),
            true);
    return false;
  }

  // Logs a problem once per change of kind, and counts it.
  void problem(const std::string& kind, const std::string& message, bool count_error) {
    if (kind != m_problem) m_log.warning(m_component, "{}", message);
    m_problem = kind;
    record_error(message, count_error);
  }

  void record_error(const std::string& message, bool count_error = true) {
    m_worker.update([&](DriverHealth& h) {
      if (count_error) ++h.errors;
      h.last_error = message;
      h.last_error_unix_ms = m_env.now_unix_ms();
    });
  }

  void set_state(std::string state) { m_worker.set_state(std::move(state)); }

  // --- the job state machine -----------------------------------------------------------------

  bool same_file(const Observation& obs) const {
    return m_job && obs.file && obs.file->origin == m_job->file.origin &&
           obs.file->path == m_job->file.path;
  }

  void observe(const Observation& obs) {
    const std::int64_t now = m_env.now_unix_ms();
    if (m_job) {
      bool same_job = same_file(obs);
      if (same_job && (obs.active || obs.text_active) && obs.print_time_s &&
          now - seconds_to_ms(*obs.print_time_s) > m_job->last_seen_ms + k_new_job_slack_ms)
        same_job = false;  // the same file printed again, started after we last saw the old one
      if (obs.active && same_job) {
        m_inconclusive = 0;
        update_job(obs, now);
        return;
      }
      if (!obs.active && obs.text_active && same_job && ++m_inconclusive < k_max_inconclusive) {
        m_log.debug(m_component, "/api/printer says idle, /api/job says \"{}\"; asking again",
                    obs.state_text);
        return;
      }
      m_inconclusive = 0;
      close_job(classify(obs, same_job, now), obs, same_job, now);
    }
    if (!m_job && obs.active) open_job(obs, now);
  }

  // How the job ended. Only what the printer shows is believed: a job whose end we did not see
  // (OctoPrint was unreachable, or the agent stopped) and that is not visibly finished, failed
  // or cancelled is "interrupted", and only a visibly finished job produces something.
  std::string classify(const Observation& obs, bool same_job, std::int64_t now) const {
    if (!same_job) return "interrupted";
    if (obs.completion && *obs.completion >= 100.0) return "done";
    if (obs.error || m_job->saw_error) return "failed";
    const bool recent = now - m_job->last_seen_ms <= recent_ms();
    if (!obs.connected) return recent ? "failed" : "interrupted";
    if (obs.cancelling || m_job->saw_cancelling) return "cancelled";
    // Back to idle with the file still selected and short of 100 %: OctoPrint cancels this way
    // (PrintCancelled, then PrintFailed reason "cancelled": one end, not two).
    return recent ? "cancelled" : "interrupted";
  }

  // How long since the last sighting still counts as "we watched it end".
  std::int64_t recent_ms() const {
    return 3 * m_config.poll_interval.count() + 2 * m_config.request_timeout.count();
  }

  void open_job(const Observation& obs, std::int64_t now) {
    if (!obs.file) {
      m_worker.update([](DriverHealth& h) { ++h.malformed; });
      problem("printing without a file",
              "OctoPrint says it is printing but /api/job names no "
              "file; waiting for the next poll",
              false);
      return;
    }
    Job job;
    job.file = *obs.file;
    job.start_ms = now - (obs.print_time_s ? seconds_to_ms(*obs.print_time_s) : 0);
    job.last_seen_ms = now;
    job.print_time_s = obs.print_time_s.value_or(0);
    job.progress = obs.completion.value_or(0);
    job.file_filament_mm = obs.file_filament_mm;
    job.saw_cancelling = obs.cancelling;
    job.saw_error = obs.error;
    m_job = std::move(job);
    fetch_spool();
    m_log.info(m_component, "job started: {} ({}), started {}", m_job->file.name,
               m_job->file.origin, format_rfc3339_ms(m_job->start_ms));
    save();
  }

  void update_job(const Observation& obs, std::int64_t now) {
    Job& job = *m_job;
    const bool flags_changed =
        (obs.cancelling && !job.saw_cancelling) || (obs.error && !job.saw_error);
    job.last_seen_ms = now;
    if (obs.print_time_s) job.print_time_s = *obs.print_time_s;
    if (obs.completion) job.progress = *obs.completion;
    if (obs.file_filament_mm) job.file_filament_mm = obs.file_filament_mm;
    job.saw_cancelling = job.saw_cancelling || obs.cancelling;
    job.saw_error = job.saw_error || obs.error;
    if (!job.spool_density_g_cm3) fetch_spool();
    if (flags_changed || now - m_last_save_ms >= k_save_interval_ms) save();
  }

  // The spool's density and diameter, asked once per job (and again each poll until Spoolman
  // answers). Without an answer the configured values are used; the event says which.
  void fetch_spool() {
    if (!m_config.spoolman() || !m_job || m_job->spool_density_g_cm3) return;
    auto spool = spoolman_client().spool(m_config.spool_id);
    if (!spool) {
      spoolman_problem(spool.error().message);
      return;
    }
    spoolman_ok();
    m_job->spool_density_g_cm3 = spool->density_g_cm3;
    m_job->spool_diameter_mm = spool->diameter_mm;
  }

  void close_job(const std::string& status, const Observation& obs, bool same_job,
                 std::int64_t now) {
    Job job = *m_job;
    if (same_job && status == "done") {
      job.progress = 100;
      if (obs.print_time_s) job.print_time_s = *obs.print_time_s;
      if (obs.file_filament_mm) job.file_filament_mm = obs.file_filament_mm;
    }
    std::int64_t end_ms = job.last_seen_ms;
    if (status == "done")  // the final printTime is exact; pauses are not in it, so never < seen
      end_ms =
          std::max(job.last_seen_ms, std::min(now, job.start_ms + seconds_to_ms(job.print_time_s)));
    append_events(job, status, end_ms);
    m_job.reset();
    save();
  }

  void append_events(const Job& job, const std::string& status, std::int64_t end_ms) {
    const std::int64_t start_s = job.start_ms / 1000;
    const std::string process = fmt::format("octoprint:{}:job-{}", m_config.name, start_s);
    const std::string ref = fmt::format("job {} {}:{}", start_s, job.file.origin, job.file.path);
    const std::string begin = format_rfc3339_ms(job.start_ms);
    const std::string end = format_rfc3339_ms(end_ms);
    // "Badge then use": the job's start (on the agent's clock, as the badges') against the
    // members' badges at this printer.
    std::optional<Attribution> who;
    if (m_badges) {
      who = m_badges->for_session(job.start_ms);
      if (!who) m_badges->count_unbadged_session();
    }
    auto add = [&](nlohmann::ordered_json fields) {
      if (who) attribute(fields, *who);
      m_pending_events.push_back({{"fields", std::move(fields)}, {"ref", ref}});
    };

    const double hours = vf::round_to(job.print_time_s / 3600.0, 6);
    std::string summary = fmt::format("job {} {}: ", job.file.name, status);
    if (hours > 0) {
      auto use = vf::use(m_config.resource, hours, begin, end, process);
      use["meta"] = {{"method", "measured"},
                     {"status", status},
                     {"file", job.file.name},
                     {"print_time_s", job.print_time_s}};
      add(std::move(use));
      summary += fmt::format("use {} h", hours);
    } else {
      summary += "no print time, no use";
    }

    const double density = job.spool_density_g_cm3.value_or(m_config.density_g_cm3);
    const double diameter = job.spool_diameter_mm.value_or(m_config.diameter_mm);
    if (!job.file_filament_mm) {
      summary += "; OctoPrint had no filament estimate for the file, no consume";
    } else {
      const double mm = *job.file_filament_mm * job.progress / 100.0;
      const double grams = vf::round_to(spoolman::filament_grams(mm, diameter, density), 3);
      if (grams > 0) {
        auto consume = vf::consume(vf::ResourceRef::inventoried(m_config.filament_reference()),
                                   vf::quantity(grams, "gram"), end, process);
        consume["meta"] = {{"method", "estimated"},
                           {"filament_mm", vf::round_to(mm, 2)},
                           {"progress", vf::round_to(job.progress, 2)},
                           {"status", status},
                           {"file", job.file.name},
                           {"density_g_cm3", density},
                           {"diameter_mm", diameter}};
        add(std::move(consume));
        summary += fmt::format(", consume {} g (estimated)", grams);
        if (m_config.report != spoolman::Report::off && m_config.spool_id > 0) {
          nlohmann::json body;
          if (m_config.report == spoolman::Report::weight)
            body["use_weight"] = grams;
          else
            body["use_length"] = vf::round_to(mm, 2);
          m_pending_spoolman.push_back(
              {{"spool_id", m_config.spool_id}, {"body", body}, {"process", process}});
        }
      }
    }

    if (status == "done") {
      auto produce =
          vf::produce(vf::part_reference(job.file.name, std::to_string(start_s), m_config.resource),
                      job.file.name, vf::quantity(1, "one"), end, process);
      produce["meta"] = {{"status", status}, {"file", job.file.name}};
      add(std::move(produce));
      summary += ", produce 1";
    }
    m_log.info(m_component, "{}", summary);
  }

  // --- handing events to the agent -----------------------------------------------------------

  // Submits every pending event and waits until each is answered. Committed ones leave the
  // pending list (saved); refused ones stay for the next round, except those the agent rejects
  // as invalid, which can never pass. False when stopped while waiting (they stay pending and are
  // submitted again after a restart: at worst a duplicate, never a loss).
  bool flush_events(EventSink& sink, std::stop_token stop) {
    if (m_pending_events.empty()) return true;
    struct Answers {
      std::mutex mutex;
      std::condition_variable_any changed;
      std::vector<std::optional<Result<Committed>>> results;
      std::size_t answered = 0;
    };
    auto answers = std::make_shared<Answers>();
    const std::size_t n = m_pending_events.size();
    answers->results.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      const auto& pending = m_pending_events[i];
      nlohmann::ordered_json fields = nlohmann::ordered_json::parse(pending["fields"].dump());
      Status queued =
          sink.submit(std::move(fields), EventSource{"octoprint", m_config.name, pending["ref"]},
                      [answers, i](Result<Committed> r) {
                        std::lock_guard lock(answers->mutex);
                        answers->results[i] = std::move(r);
                        ++answers->answered;
                        answers->changed.notify_all();
                      });
      if (!queued) {
        std::lock_guard lock(answers->mutex);
        answers->results[i] = std::unexpected(queued.error());
        ++answers->answered;
      }
    }
    std::unique_lock lock(answers->mutex);
    if (!answers->changed.wait(lock, stop, [&] { return answers->answered == n; })) return false;
    nlohmann::json remaining = nlohmann::json::array();
    std::uint64_t committed = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const auto& result = *answers->results[i];
      if (result) {
        ++committed;
      } else if (result.error().code == ErrorCode::rejected) {
        m_log.error(m_component, "event dropped, the agent rejects it: {}", result.error().message);
        record_error(result.error().message);
      } else {
        m_log.warning(m_component, "event not stored yet ({}); trying again later",
                      result.error().message);
        remaining.push_back(m_pending_events[i]);
      }
    }
    lock.unlock();
    m_worker.update([&](DriverHealth& h) { h.events += committed; });
    m_pending_events = std::move(remaining);
    save();
    return true;
  }

  // Reports each pending consume to Spoolman once: it leaves the list (saved) when Spoolman
  // accepted it, or refused it for good (no such spool, a request it can never accept).
  void flush_spoolman() {
    if (m_pending_spoolman.empty() || m_config.spoolman_url.empty()) return;
    bool changed = false;
    while (!m_pending_spoolman.empty()) {
      const auto& report = m_pending_spoolman.front();
      const auto spool_id = report["spool_id"].get<std::int64_t>();
      const auto& body = report["body"];
      Status sent = body.contains("use_weight")
                        ? spoolman_client().use_weight(spool_id, body["use_weight"].get<double>())
                        : spoolman_client().use_length(spool_id, body["use_length"].get<double>());
      if (!sent && sent.error().code != ErrorCode::not_found &&
          sent.error().code != ErrorCode::invalid_argument) {
        spoolman_problem(sent.error().message);
        break;  // keep it, try again after the next poll
      }
      if (sent) {
        spoolman_ok();
      } else {
        const std::string message = fmt::format("{}; dropped", sent.error().message);
        m_log.error(m_component, "{}", message);
        record_error(message);
      }
      m_pending_spoolman.erase(m_pending_spoolman.begin());
      changed = true;
    }
    if (changed) save();
  }

  spoolman::Client& spoolman_client() {
    if (!m_spoolman) m_spoolman.emplace(m_config.spoolman_url, m_config.request_timeout);
    return *m_spoolman;
  }

  void spoolman_problem(const std::string& message) {
    if (!m_spoolman_problem) m_log.warning(m_component, "Spoolman: {}", message);
    m_spoolman_problem = true;
    record_error(message);
  }

  void spoolman_ok() {
    if (m_spoolman_problem) m_log.info(m_component, "Spoolman answers again");
    m_spoolman_problem = false;
  }

  OctoPrintConfig m_config;
  Env& m_env;
  Logger& m_log;
  const std::string m_component;
  std::filesystem::path m_state_file;
  std::unique_ptr<HttpClient> m_http;          // made on the driver's thread, used only there
  std::optional<spoolman::Client> m_spoolman;  // made when first needed, on the driver's thread

  // Owned by the driver's thread after start().
  std::optional<Job> m_job;
  nlohmann::json m_pending_events = nlohmann::json::array();
  nlohmann::json m_pending_spoolman = nlohmann::json::array();
  std::int64_t m_last_save_ms = 0;
  int m_failures = 0;
  int m_inconclusive = 0;
  std::string m_problem;  // kind of the current problem, "" when OctoPrint answers
  bool m_spoolman_problem = false;
  std::string m_last_state_text = "unknown";

  std::unique_ptr<BadgeAttribution> m_badges;  // with [driver.badge]
  std::unique_ptr<BadgeReader> m_reader;       // fed into m_badges; stopped before it goes
  DriverThread<DriverHealth> m_worker;         // last: joined before the members it uses go
};

class OctoPrintKind final : public DriverKind {
 public:
  std::string_view kind() const override { return "octoprint"; }
  std::string_view summary() const override {
    return "OctoPrint printers (REST polling): use, estimated filament consume and produce per "
           "print job; optional Spoolman spool";
  }
  const std::vector<DriverKeyInfo>& keys() const override { return octoprint_keys(); }

  Result<std::unique_ptr<Driver>> create(const DriverConfig& config, Env& env,
                                         Logger& log) const override {
    DriverTable table(config);
    if (Status keys = table.check_keys(octoprint_keys()); !keys)
      return std::unexpected(keys.error());
    auto invalid = [&](std::string_view key, std::string_view what) {
      return std::unexpected(table.error(key, what));
    };
    OctoPrintConfig c;
    c.name = config.name;
    auto url = table.string("url", "");
    auto api_key = table.string("api_key", "");
    auto printer = spoolman::read_printer_keys(table);
    auto poll = table.duration("poll_interval", std::chrono::seconds(5));
    auto backoff = table.duration("max_backoff", std::chrono::minutes(5));
    auto timeout = table.duration("request_timeout", std::chrono::seconds(10));
    for (const Error* e :
         {url ? nullptr : &url.error(), api_key ? nullptr : &api_key.error(),
          printer ? nullptr : &printer.error(), poll ? nullptr : &poll.error(),
          backoff ? nullptr : &backoff.error(), timeout ? nullptr : &timeout.error()})
      if (e) return std::unexpected(*e);
    const spoolman::PrinterKeys& p = *printer;

    auto base_url = [](std::string u) {
      while (u.ends_with('/'))
        u.pop_back();
      return u;
    };
    auto is_http = [](const std::string& u) {
      return u.starts_with("http://") || u.starts_with("https://");
    };
    if (url->empty())
      return invalid("url", "required: OctoPrint's address, e.g. \"http://octopi.local\"");
    if (!is_http(*url))
      return invalid("url", fmt::format("expected http:// or https://; got \"{}\"", *url));
    if (api_key->empty())
      return invalid("api_key", "required: an OctoPrint API key (User Settings → API Key)");
    if (p.resource.empty())
      return invalid("resource",
                     "required: the printer's resource reference, e.g. "
                     "\"printer:mk3-01\"");
    if (!p.spoolman_url.empty() && !is_http(p.spoolman_url))
      return invalid("spoolman_url",
                     fmt::format("expected http:// or https://; got \"{}\"", p.spoolman_url));
    if (p.filament.empty() && p.spool_id == 0)
      return invalid("filament",
                     "required unless spool_id is set: the filament's resource "
                     "reference, e.g. \"spool:pla-black-03\"");
    if (*poll < std::chrono::milliseconds(100))
      return invalid("poll_interval", "expected at least 100ms");
    if (*backoff < *poll) return invalid("max_backoff", "expected at least poll_interval");
    c.report = p.report;
    if (c.report != spoolman::Report::off && (p.spoolman_url.empty() || p.spool_id == 0))
      return invalid("spoolman_report", "needs spoolman_url and spool_id");

    c.url = base_url(*url);
    c.api_key = *api_key;
    c.resource = p.resource;
    c.filament = p.filament;
    c.diameter_mm = p.diameter_mm;
    c.density_g_cm3 = p.density_g_cm3;
    c.poll_interval = *poll;
    c.max_backoff = *backoff;
    c.request_timeout = *timeout;
    c.spoolman_url = base_url(p.spoolman_url);
    c.spool_id = p.spool_id;
    auto badge = parse_badge_config(config, {"serial", "evdev"});
    if (!badge) return std::unexpected(badge.error());
    c.badge = std::move(*badge);
    return std::make_unique<OctoPrintDriver>(std::move(c), env, log);
  }
};

}  // namespace
}  // namespace agent::octoprint

namespace agent {

const DriverKind& octoprint_driver_kind() {
  static const octoprint::OctoPrintKind kind;
  return kind;
}

}  // namespace agent
