// SPDX-License-Identifier: AGPL-3.0-or-later
// The `sim` driver: a simulated 3D printer for demos, tests and the benchmark. Each job takes
// `job_duration` of wall time and yields, sharing one process reference, `use` of the printer
// (effortQuantity in hours, measured), `consume` of filament (grams) and `produce` of one new,
// named part (vf::part_reference), so that the part traces back to the spool and the printer.
#include <future>
#include <mutex>
#include <thread>

#include <reflow/core/units.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/device/driver_table.hpp>
#include <reflow/drivers/driver_state.hpp>
#include <reflow/drivers/driver_thread.hpp>
#include <reflow/drivers/valueflows.hpp>

namespace agent::sim {
namespace {

const std::vector<DriverKeyInfo>& sim_keys() {
  static const std::vector<DriverKeyInfo> keys = {
      {"printer", "string", "\"printer:sim-01\"", "resource reference of the printer (`use`)"},
      {"filament", "string", "\"spool:sim-pla-01\"", "resource reference of the spool (`consume`)"},
      {"part", "string", "\"benchy.gcode\"",
       "resourceConformsTo of the printed part (`produce`); the new part is named \"<part>, job "
       "<N> on <printer>\""},
      {"jobs", "integer", "0", "jobs to run, then stop; 0 runs forever"},
      {"job_duration", "duration", "\"10s\"", "wall time one simulated job takes"},
      {"filament_grams", "number", "12.5", "grams of filament one job consumes"},
  };
  return keys;
}

struct SimConfig {
  std::string name;
  std::string printer;
  std::string filament;
  std::string part;
  std::int64_t jobs = 0;
  std::chrono::milliseconds job_duration{10'000};
  double filament_grams = 12.5;
};

class SimDriver final : public Driver {
 public:
  SimDriver(SimConfig config, Env& env, Logger& log)
      : m_config(std::move(config)), m_env(env), m_log(log) {}
  ~SimDriver() override { stop(); }

  // The cursor, {"last_job": N}, is the number of the last job whose three events were all
  // committed: a restart continues with job N + 1.
  Status start(EventSink& sink, const std::filesystem::path& state_dir) override {
    m_state_file = state_dir / "state.json";
    auto state = load_driver_state(m_state_file);
    if (!state) return std::unexpected(state.error());
    const auto last = state->value("last_job", nlohmann::json());
    const std::int64_t first_job = last.is_number_integer() ? last.get<std::int64_t>() : 0;
    m_worker.set_state("running");
    return m_worker.start(
        "driver sim/" + m_config.name,
        [this, &sink, first_job](std::stop_token stop) { run(sink, first_job, stop); });
  }

  void stop() override { m_worker.stop(); }

  DriverHealth health() const override { return m_worker.health(); }

 private:
  void run(EventSink& sink, std::int64_t first_job, std::stop_token stop) {
    std::int64_t job = first_job;
    const std::string component = fmt::format("driver sim/{}", m_config.name);
    if (job > 0) m_log.info(component, "resuming after job {}", job);
    while (!stop.stop_requested() && (m_config.jobs == 0 || job < m_config.jobs)) {
      ++job;
      const std::int64_t begin_ms = m_env.now_unix_ms();
      const auto begin_steady = m_env.steady_now();
      if (!m_env.sleep_for(m_config.job_duration, stop)) return;  // stopped mid-job: no events
      const std::int64_t end_ms = begin_ms + std::chrono::duration_cast<std::chrono::milliseconds>(
                                                 m_env.steady_now() - begin_steady)
                                                 .count();
      if (!submit_job(sink, job, begin_ms, end_ms, component)) {
        --job;  // try the same job again after a pause
        if (!m_env.sleep_for(m_config.job_duration, stop)) return;
        continue;
      }
      if (Status saved = save_driver_state(m_state_file, {{"last_job", job}}); !saved) {
        m_log.error(component, "{}", saved.error().message);
        m_worker.note_error(saved.error().message, m_env.now_unix_ms());
      }
    }
    if (!stop.stop_requested()) {
      m_worker.set_state("finished");
      m_log.info(component, "all {} jobs done", m_config.jobs);
    }
  }

  // Submits the job's three events and waits until all are committed. False when one was refused.
  bool submit_job(EventSink& sink, std::int64_t job, std::int64_t begin_ms, std::int64_t end_ms,
                  const std::string& component) {
    const std::string process = fmt::format("sim:{}:job-{}", m_config.name, job);
    const std::string ref = fmt::format("job {}", job);
    const std::string begin = format_rfc3339_ms(begin_ms);
    const std::string end = format_rfc3339_ms(end_ms);
    const double hours = static_cast<double>(end_ms - begin_ms) / 3'600'000.0;

    nlohmann::ordered_json meta;
    meta["job"] = job;
    meta["file"] = m_config.part;

    auto use = vf::use(m_config.printer, hours > 0 ? hours : 1e-9, begin, end, process);
    use["meta"] = meta;

    auto consume = vf::consume(vf::ResourceRef::inventoried(m_config.filament),
                               vf::quantity(m_config.filament_grams, "gram"), end, process);
    consume["meta"] = meta;
    consume["meta"]["method"] = "simulated";

    auto produce =
        vf::produce(vf::part_reference(m_config.part, std::to_string(job), m_config.printer),
                    m_config.part, vf::quantity(1, "one"), end, process);
    produce["meta"] = meta;

    std::vector<std::future<Result<Committed>>> results;
    for (auto* fields : {&use, &consume, &produce}) {
      auto promise = std::make_shared<std::promise<Result<Committed>>>();
      results.push_back(promise->get_future());
      Status queued =
          sink.submit(std::move(*fields), EventSource{"sim", m_config.name, ref},
                      [promise](Result<Committed> r) { promise->set_value(std::move(r)); });
      if (!queued) promise->set_value(std::unexpected(queued.error()));
    }
    bool all = true;
    for (auto& result : results) {
      auto r = result.get();
      if (!r) {
        m_log.warning(component, "job {}: event refused: {}", job, r.error().message);
        m_worker.note_error(fmt::format("job {}: event refused: {}", job, r.error().message),
                            m_env.now_unix_ms());
        all = false;
      } else {
        m_worker.update([](DriverHealth& h) { ++h.events; });
      }
    }
    if (all)
      m_log.info(component, "job {} done: use {:.4f} h, consume {} g, produce 1 {}", job, hours,
                 m_config.filament_grams, m_config.part);
    return all;
  }

  SimConfig m_config;
  Env& m_env;
  Logger& m_log;
  std::filesystem::path m_state_file;
  DriverThread<DriverHealth> m_worker;  // last: joined before the members it uses go
};

class SimKind final : public DriverKind {
 public:
  std::string_view kind() const override { return "sim"; }
  std::string_view summary() const override {
    return "simulated 3D printer: use, consume and produce events per job (demos, tests, "
           "benchmark)";
  }
  const std::vector<DriverKeyInfo>& keys() const override { return sim_keys(); }

  Result<std::unique_ptr<Driver>> create(const DriverConfig& config, Env& env,
                                         Logger& log) const override {
    DriverTable table(config);
    if (Status keys = table.check_keys(sim_keys()); !keys) return std::unexpected(keys.error());
    SimConfig sim;
    sim.name = config.name;
    auto printer = table.string("printer", "printer:sim-01");
    auto filament = table.string("filament", "spool:sim-pla-01");
    auto part = table.string("part", "benchy.gcode");
    auto jobs = table.integer("jobs", 0, 0, 1'000'000'000);
    auto duration = table.duration("job_duration", std::chrono::seconds(10));
    auto grams = table.positive_number("filament_grams", 12.5);
    for (const Error* e :
         {printer ? nullptr : &printer.error(), filament ? nullptr : &filament.error(),
          part ? nullptr : &part.error(), jobs ? nullptr : &jobs.error(),
          duration ? nullptr : &duration.error(), grams ? nullptr : &grams.error()})
      if (e) return std::unexpected(*e);
    sim.printer = *printer;
    sim.filament = *filament;
    sim.part = *part;
    sim.jobs = *jobs;
    sim.job_duration = *duration;
    sim.filament_grams = *grams;
    return std::make_unique<SimDriver>(std::move(sim), env, log);
  }
};

}  // namespace
}  // namespace agent::sim

namespace agent {

const DriverKind& sim_driver_kind() {
  static const sim::SimKind kind;
  return kind;
}

}  // namespace agent
