// SPDX-License-Identifier: AGPL-3.0-or-later
// The `station` driver: a recycling station's scan-and-weigh workflow. A batch label scanned on
// the station's scanner arms it; the next stable weight on its scale within `window` (net of
// `tare`) completes one record. A one-action station emits the configured action of the batch
// with the weight as resourceQuantity (`transferCustody` at intake and on hand-over, into the
// receiver's `to_resource`). A process station (`process`: shredder, extruder, sorting) emits a
// `consume` of each input label's batch (inputOf) and a `produce` of each output label's batch
// (outputOf) of one process "station:<device>:<name>:<process>-<n>" (the agent's device id makes
// it differ from a same-named station's at another site): the first input after an output opens
// the next process, numbered in state.json. A count-only station (no scale) records 1
// `one` per batch scan. An optional LED and buzzer on GPIO lines tell the operator what
// happened.
//
// Threads: the scanner's and the scale's reader threads only queue what they read; the driver's
// own thread runs the workflow, hands records to the sink and drives the feedback lines; the
// sink's writer thread reports commits. They share one Core under one mutex. The Core is shared
// with the submit callbacks, so a commit reported after stop() is still saved.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <deque>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>

#include <reflow/core/event.hpp>
#include <reflow/core/units.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/device/driver_table.hpp>
#include <reflow/drivers/driver_state.hpp>
#include <reflow/drivers/valueflows.hpp>

#include "feedback.hpp"
#include "station_driver.hpp"

namespace agent {
namespace station {
namespace {

// The actions whose event may name the receiver's resource (toResourceInventoriedAs).
bool is_transfer_action(std::string_view action) {
  return action == "transfer" || action == "transferCustody" || action == "transferAllRights" ||
         action == "move";
}

// `pattern` (the `resource` or `to_resource` key) with every `{batch}` replaced by the code.
std::string expand_batch(std::string_view pattern, std::string_view code) {
  constexpr std::string_view k_placeholder = "{batch}";
  std::string out;
  std::string_view rest = pattern;
  for (auto at = rest.find(k_placeholder); at != std::string_view::npos;
       at = rest.find(k_placeholder)) {
    out += rest.substr(0, at);
    out += code;
    rest.remove_prefix(at + k_placeholder.size());
  }
  out += rest;
  return out;
}

// The reference processes had before they carried the device id: "station:<name>:<process>-<n>".
std::string legacy_process_reference(const StationConfig& config, std::int64_t n) {
  return fmt::format("station:{}:{}-{}", config.name, config.process, n);
}

using TimePoint = std::chrono::steady_clock::time_point;
using Signal = FeedbackPlan::Signal;

constexpr std::int64_t k_retry_min_ms = 1'000;
constexpr std::int64_t k_retry_max_ms = 60'000;
constexpr auto k_idle_wake = std::chrono::hours(1);
constexpr auto k_output_retry = std::chrono::seconds(30);
constexpr std::string_view k_state_file = "state.json";
constexpr std::string_view k_absent = "\x01(absent)";

// Decimals of kilograms worth keeping: the scale's resolution when known, else milligrams.
int kilogram_decimals(const std::optional<scale::ScaleConfig>& scale) {
  if (!scale || scale->resolution_kg <= 0) return 6;
  const double decimals = std::ceil(-std::log10(scale->resolution_kg) - 1e-9);
  return static_cast<int>(std::clamp(decimals, 0.0, 6.0));
}

// A record handed (or to be handed) to the sink. `fields_text` keeps the exact bytes so that a
// record submitted again after a restart is the same event, field order included.
struct Record {
  std::int64_t number = 0;
  std::string ref;
  std::string fields_text;
  std::string summary;  // for the log: "transferCustody urn:…:0042 12.345 kilogram"
};

struct Armed {
  std::string code;
  bool output = false;  // a process station's output label (a produce), else an input
  TimePoint at{};
  std::int64_t unix_ms = 0;
};

struct Input {
  std::optional<barcode::Scan> scan;
  std::optional<scale::Weight> weight;
};

struct Core : std::enable_shared_from_this<Core> {
  Core(StationConfig c, Env& e, Logger& l)
      : config(std::move(c)),
        env(e),
        log(l),
        component(fmt::format("driver station/{}", config.name)) {}

  const StationConfig config;
  Env& env;
  Logger& log;
  const std::string component;
  std::filesystem::path state_file;

  std::mutex mutex;
  std::deque<Input> inputs;
  std::vector<Signal> signals;  // asked for by the commit callback, played by the thread
  std::stop_source wake;        // wakes the driver's thread
  std::deque<Record> unsent;    // oldest first; saved in the state file
  std::set<std::int64_t> in_flight;
  std::int64_t next_record = 1;
  // A process station's processes: the next number, the open one (inputs are going in, or
  // outputs coming out once outputs_started) and whether it has had an output.
  std::int64_t next_process = 1;
  std::optional<std::int64_t> open_process;
  // The open process's reference, saved with it: a process opened by a version that named
  // processes without the device id keeps its old reference until it ends.
  std::string open_reference;
  // With `machine`: when the machine time of the open process not yet recorded as a `use` began
  // (its first input, then its latest output), Unix ms; none when unknown.
  std::optional<std::int64_t> machine_since;
  bool outputs_started = false;
  TimePoint retry_at{};
  std::int64_t retry_delay_ms = k_retry_min_ms;
  std::optional<Armed> armed;
  bool running = false;

  DriverHealth health;
  std::uint64_t scans = 0;
  std::uint64_t weights = 0;
  std::uint64_t scans_without_weight = 0;
  std::uint64_t weights_without_scan = 0;
  std::uint64_t other_labels = 0;

  void push(Input input) {
    std::lock_guard lock(mutex);
    inputs.push_back(std::move(input));
    wake.request_stop();
  }

  // Caller holds the mutex. A workflow miss (scan without weight, weight without scan, a label
  // that is not a batch): unexpected data from the operator's side, counted as `malformed`.
  void miss_locked(const std::string& message) {
    ++health.malformed;
    health.last_error = message;
    health.last_error_unix_ms = env.now_unix_ms();
    log.warning(component, "{}", message);
  }

  // Caller holds the mutex.
  void error_locked(const std::string& message, LogLevel level = LogLevel::warning) {
    ++health.errors;
    health.last_error = message;
    health.last_error_unix_ms = env.now_unix_ms();
    log.log(level, component, message);
  }

  // Caller holds the mutex. The cursor: the next record number and the records not yet
  // committed, so that a restart submits each of them once more and repeats none that was.
  void save_locked() {
    nlohmann::json s = nlohmann::json::object();
    s["next_record"] = next_record;
    if (!config.process.empty()) {
      s["next_process"] = next_process;
      s["open_process"] = open_process ? nlohmann::json(*open_process) : nlohmann::json(nullptr);
      if (open_process) s["open_process_ref"] = open_reference;
      if (open_process && machine_since) s["machine_since"] = *machine_since;
      s["outputs_started"] = outputs_started;
    }
    auto& list = s["unsent"] = nlohmann::json::array();
    for (const Record& r : unsent)
      list.push_back({{"record", r.number},
                      {"ref", r.ref},
                      {"fields", r.fields_text},
                      {"summary", r.summary}});
    if (Status saved = save_driver_state(state_file, s); !saved)
      error_locked(saved.error().message, LogLevel::error);
  }

  Status load(const nlohmann::json& s) {
    auto corrupt = [&](std::string_view what) {
      return fail(ErrorCode::corruption,
                  fmt::format("{}: {}; the driver does not start rather than guess (a guess "
                              "repeats or loses a record); fix or remove the file",
                              state_file.string(), what));
    };
    std::lock_guard lock(mutex);
    if (auto it = s.find("next_record"); it != s.end()) {
      if (!it->is_number_integer() || it->get<std::int64_t>() < 1)
        return corrupt("next_record is not a positive integer");
      next_record = it->get<std::int64_t>();
    }
    if (auto it = s.find("next_process"); it != s.end()) {
      if (!it->is_number_integer() || it->get<std::int64_t>() < 1)
        return corrupt("next_process is not a positive integer");
      next_process = it->get<std::int64_t>();
    }
    if (auto it = s.find("open_process"); it != s.end() && !it->is_null()) {
      if (!it->is_number_integer() || it->get<std::int64_t>() < 1 ||
          it->get<std::int64_t>() >= next_process)
        return corrupt("open_process is not a process number below next_process");
      open_process = it->get<std::int64_t>();
      if (auto ref = s.find("open_process_ref"); ref != s.end()) {
        if (!ref->is_string() || ref->get<std::string>().empty())
          return corrupt("open_process_ref is not a process reference");
        open_reference = ref->get<std::string>();
      } else {
        // Saved before process references carried the device id (0.x, issue 16).
        open_reference = legacy_process_reference(config, *open_process);
      }
      if (auto since = s.find("machine_since"); since != s.end()) {
        if (!since->is_number_integer() || since->get<std::int64_t>() < 0)
          return corrupt("machine_since is not a time in Unix milliseconds");
        machine_since = since->get<std::int64_t>();
      }
    }
    if (auto it = s.find("outputs_started"); it != s.end()) {
      if (!it->is_boolean()) return corrupt("outputs_started is not true or false");
      outputs_started = it->get<bool>() && open_process.has_value();
    }
    if (auto it = s.find("unsent"); it != s.end()) {
      if (!it->is_array()) return corrupt("unsent is not an array");
      for (const auto& u : *it) {
        if (!u.is_object() || !u.contains("record") || !u["record"].is_number_integer() ||
            !u.contains("fields") || !u["fields"].is_string() || !u.contains("ref") ||
            !u["ref"].is_string())
          return corrupt("an unsent record lacks record, ref or fields");
        Record r;
        r.number = u["record"].get<std::int64_t>();
        r.ref = u["ref"].get<std::string>();
        r.fields_text = u["fields"].get<std::string>();
        r.summary = u.value("summary", r.ref);
        if (!nlohmann::ordered_json::accept(r.fields_text))
          return corrupt(fmt::format("unsent {} holds no JSON", r.ref));
        unsent.push_back(std::move(r));
      }
    }
    return {};
  }

  void on_committed(std::int64_t number, const Result<Committed>& committed) {
    std::lock_guard lock(mutex);
    in_flight.erase(number);
    auto it = std::find_if(unsent.begin(), unsent.end(),
                           [&](const Record& r) { return r.number == number; });
    if (it == unsent.end()) return;
    if (committed) {
      log.info(component, "recorded {}: {}", it->ref, it->summary);
      unsent.erase(it);
      ++health.events;
      retry_delay_ms = k_retry_min_ms;
      save_locked();
      if (running) signals.push_back(Signal::ok);
    } else if (committed.error().code == ErrorCode::rejected) {
      // The same event would be refused forever: a bug, never a reason to stop recording.
      error_locked(
          fmt::format("{} dropped, the agent rejects it: {}", it->ref, committed.error().message),
          LogLevel::error);
      unsent.erase(it);
      save_locked();
      if (running) signals.push_back(Signal::error);
    } else {
      retry_at = env.steady_now() + std::chrono::milliseconds(retry_delay_ms);
      if (committed.error().code != ErrorCode::shutting_down)
        error_locked(fmt::format("{} not recorded yet, retrying in {}: {}", it->ref,
                                 format_duration(std::chrono::milliseconds(retry_delay_ms)),
                                 committed.error().message));
      retry_delay_ms = std::min(retry_delay_ms * 2, k_retry_max_ms);
    }
    wake.request_stop();
  }
};

class StationDriver final : public Driver {
 public:
  StationDriver(StationConfig config, Env& env, Logger& log, StationDevices devices)
      : m_core(std::make_shared<Core>(std::move(config), env, log)),
        m_devices(std::move(devices)),
        m_decimals(kilogram_decimals(m_core->config.scale)) {
    m_core->health.state = "not started";
  }
  ~StationDriver() override { stop(); }

  Status start(EventSink& sink, const std::filesystem::path& state_dir) override {
    if (m_thread.joinable()) return {};
    Core& core = *m_core;
    core.state_file = state_dir / k_state_file;
    auto state = load_driver_state(core.state_file);
    if (!state) return std::unexpected(state.error());
    {
      std::lock_guard lock(core.mutex);
      core.unsent.clear();
      core.in_flight.clear();
      core.inputs.clear();
      core.armed.reset();
      core.next_process = 1;
      core.open_process.reset();
      core.open_reference.clear();
      core.machine_since.reset();
      core.outputs_started = false;
    }
    if (Status loaded = core.load(*state); !loaded) return loaded;
    if (!core.unsent.empty())
      core.log.info(core.component, "{} record(s) not committed before the restart: submitting",
                    core.unsent.size());

    {
      std::lock_guard lock(m_readers_mutex);
      m_scanner = m_devices.scanner(core.config.scanner);
      if (core.config.scale) m_scale = m_devices.scale(*core.config.scale);
    }
    std::weak_ptr<Core> weak = m_core;
    Status scanning = m_scanner->start([weak](const barcode::Scan& scan) {
      if (auto core = weak.lock()) core->push(Input{scan, std::nullopt});
    });
    if (!scanning) return scanning;
    if (m_scale) {
      Status weighing = m_scale->start([weak](const scale::Weight& weight) {
        if (auto core = weak.lock()) core->push(Input{std::nullopt, weight});
      });
      if (!weighing) {
        m_scanner->stop();
        return weighing;
      }
    }
    {
      std::lock_guard lock(core.mutex);
      core.running = true;
    }
    m_thread = std::jthread([this, &sink](std::stop_token stop) { run(sink, stop); });
    return {};
  }

  void stop() override {
    {
      std::lock_guard lock(m_readers_mutex);
      if (m_scanner) m_scanner->stop();
      if (m_scale) m_scale->stop();
    }
    if (m_thread.joinable()) {
      m_thread.request_stop();
      m_thread.join();
    }
    std::lock_guard lock(m_core->mutex);
    m_core->running = false;
  }

  DriverHealth health() const override {
    const Core& core = *m_core;
    DriverHealth h;
    std::string activity;
    std::uint64_t records, without_weight, without_scan, other;
    {
      std::lock_guard lock(m_core->mutex);
      h = core.health;
      records = core.health.events;
      without_weight = core.scans_without_weight;
      without_scan = core.weights_without_scan;
      other = core.other_labels;
      if (!core.running)
        activity = h.state;
      else if (core.armed)
        activity = fmt::format("waiting for the weight of {}", core.armed->code);
      else
        activity = "waiting for a batch scan";
      if (core.running && !core.config.process.empty())
        activity += core.open_process ? fmt::format(" (process {}: {})", core.open_reference,
                                                    core.outputs_started ? "outputs" : "inputs")
                                      : std::string(" (no process open: scan an input)");
    }
    std::string devices;
    {
      std::lock_guard lock(m_readers_mutex);
      if (m_scanner) {
        const barcode::ScannerHealth s = m_scanner->health();
        h.errors += s.errors;
        h.malformed += s.fragments + s.malformed;
        if (h.last_error.empty()) h.last_error = s.last_error;
        devices = fmt::format("; scanner {}", s.state);
      }
      if (m_scale) {
        const scale::ScaleHealth s = m_scale->health();
        h.errors += s.errors;
        h.malformed += s.malformed;
        if (h.last_error.empty()) h.last_error = s.last_error;
        devices += fmt::format(", scale {}", s.state);
      }
    }
    if (core.config.scale)
      h.state = fmt::format(
          "{}{}; {} recorded, {} scan(s) without weight, {} weight(s) without scan, {} other "
          "label(s)",
          activity, devices, records, without_weight, without_scan, other);
    else
      h.state = fmt::format("{}{}; {} recorded (count only), {} other label(s)", activity, devices,
                            records, other);
    return h;
  }

 private:
  void run(EventSink& sink, std::stop_token stop) {
    Core& core = *m_core;
    Env& env = core.env;
    open_outputs(env.steady_now());
    while (!stop.stop_requested()) {
      std::deque<Input> inputs;
      std::vector<Signal> signals;
      {
        std::lock_guard lock(core.mutex);
        inputs.swap(core.inputs);
        signals.swap(core.signals);
      }
      for (const Input& input : inputs) {
        if (input.scan) on_scan(*input.scan);
        if (input.weight) on_weight(*input.weight);
      }
      TimePoint now = env.steady_now();
      for (Signal s : signals)
        m_plan.play(s, now);
      expire(now);
      submit_due(sink, now);
      {
        // A commit answered inside submit() is played first: no flicker between weigh and ok.
        std::lock_guard lock(core.mutex);
        if (!core.signals.empty()) continue;
        m_plan.set_busy(!core.unsent.empty());
      }
      now = env.steady_now();
      apply_feedback(now);

      TimePoint deadline = now + k_idle_wake;
      std::stop_source wake;
      {
        std::lock_guard lock(core.mutex);
        if (!core.inputs.empty() || !core.signals.empty()) continue;
        if (core.armed) deadline = std::min(deadline, core.armed->at + core.config.window);
        if (core.unsent.size() > core.in_flight.size())
          deadline = std::min(deadline, std::max(core.retry_at, now));
        core.wake = std::stop_source();
        wake = core.wake;
      }
      if (has_outputs())
        if (auto change = m_plan.next_change(now)) deadline = std::min(deadline, *change);
      std::stop_callback link(stop, [wake]() mutable { wake.request_stop(); });
      env.sleep_until(deadline, wake.get_token());
    }
    m_plan = FeedbackPlan();
    apply_feedback(env.steady_now());
    m_led.reset();
    m_buzzer.reset();
    std::lock_guard lock(core.mutex);
    core.armed.reset();
    core.health.state = "stopped";
  }

  std::string process_reference(std::int64_t n) const {
    return station::process_reference(m_core->config, n);
  }

  enum class Role { input, output, other };

  Role role_of(const barcode::Scan& scan) const {
    const StationConfig& c = m_core->config;
    if (c.scanner.patterns.empty() || scan.label == c.batch_label) return Role::input;
    if (!c.process.empty() && scan.label == c.output_label) return Role::output;
    return Role::other;
  }

  void on_scan(const barcode::Scan& scan) {
    Core& core = *m_core;
    expire(scan.at);
    std::lock_guard lock(core.mutex);
    ++core.scans;
    const Role role = role_of(scan);
    if (role == Role::other) {
      ++core.other_labels;
      core.log.info(core.component, "ignored the scan \"{}\" ({}): not a `{}` label", scan.code,
                    scan.label.empty() ? "no pattern matched" : "label " + scan.label,
                    core.config.process.empty()
                        ? core.config.batch_label
                        : core.config.batch_label + "` or `" + core.config.output_label);
      m_plan.play(Signal::error, scan.at);
      return;
    }
    if (scan.code.empty() || scan.code.size() > k_max_string_bytes) {
      core.miss_locked(fmt::format("ignored a batch code of {} bytes (1 … {} allowed)",
                                   scan.code.size(), k_max_string_bytes));
      m_plan.play(Signal::error, scan.at);
      return;
    }
    const bool output = role == Role::output;
    if (output && !core.open_process) {
      core.miss_locked(fmt::format(
          "the output {} was scanned before any input: nothing recorded (scan and weigh the "
          "inputs of the process first, then its outputs)",
          scan.code));
      m_plan.play(Signal::error, scan.at);
      return;
    }
    if (!core.config.scale) {
      add_record_locked(scan.code, output, scan.unix_ms, std::nullopt);
      return;
    }
    if (core.armed) {
      if (core.armed->code == scan.code && core.armed->output == output) {
        // Scanners read a label twice when it is held still: a restart of the window, not a miss.
        core.armed->at = scan.at;
        core.armed->unix_ms = scan.unix_ms;
        m_plan.arm(scan.at);
        core.log.debug(core.component, "{} scanned again: waiting {} for its weight", scan.code,
                       format_duration(core.config.window));
        return;
      }
      ++core.scans_without_weight;
      core.miss_locked(fmt::format("the scan of {} got no weight: replaced by the scan of {}",
                                   core.armed->code, scan.code));
    }
    core.armed = Armed{scan.code, output, scan.at, scan.unix_ms};
    m_plan.arm(scan.at);
    core.log.info(core.component, "batch {} scanned: waiting {} for a stable weight", scan.code,
                  format_duration(core.config.window));
  }

  void on_weight(const scale::Weight& weight) {
    Core& core = *m_core;
    expire(weight.at);
    std::lock_guard lock(core.mutex);
    ++core.weights;
    const double gross = vf::round_to(weight.kilograms, m_decimals);
    const double net = vf::round_to(weight.kilograms - core.config.tare_kg, m_decimals);
    if (gross <= 0) {
      core.log.debug(core.component, "stable {} kg: the pan is empty", gross);
      return;
    }
    if (net <= 0) {
      core.log.info(core.component,
                    "stable {} kg is not above the tare of {} kg (an empty container?): no record",
                    gross, core.config.tare_kg);
      return;
    }
    if (!core.armed) {
      ++core.weights_without_scan;
      core.miss_locked(fmt::format(
          "a stable weight of {} kg with no batch scanned: nothing recorded (scan the batch "
          "label first, then put it on the scale within {})",
          gross, format_duration(core.config.window)));
      m_plan.play(Signal::error, weight.at);
      return;
    }
    const Armed armed = *core.armed;
    core.armed.reset();
    m_plan.disarm();
    add_record_locked(armed.code, armed.output, weight.unix_ms,
                      WeighedAs{weight, gross, net, armed.unix_ms});
  }

  // A batch scan whose window ended before a stable weight came (scan-stamped `at` first: a
  // weight that came in time completes the record even when the thread sees it late).
  void expire(TimePoint at) {
    Core& core = *m_core;
    std::lock_guard lock(core.mutex);
    if (!core.armed || at < core.armed->at + core.config.window) return;
    ++core.scans_without_weight;
    core.miss_locked(fmt::format("the scan of {} got no stable weight within {}: nothing recorded",
                                 core.armed->code, format_duration(core.config.window)));
    core.armed.reset();
    m_plan.disarm();
    m_plan.play(Signal::error, at);
  }

  struct WeighedAs {
    scale::Weight weight;
    double gross_kg;
    double net_kg;
    std::int64_t scanned_unix_ms;
  };

  // Caller holds the mutex. The record is saved before it is submitted: from here on a restart
  // submits it rather than lose it. A process station's input opens a process unless one is
  // taking inputs; its output (on_scan checked that a process is open) goes out of the open one.
  void add_record_locked(const std::string& code, bool output, std::int64_t at_unix_ms,
                         const std::optional<WeighedAs>& weighed) {
    Core& core = *m_core;
    const StationConfig& c = core.config;
    const bool is_process = !c.process.empty();
    std::string action = c.action;
    std::string process;
    if (is_process) {
      if (!output && (!core.open_process || core.outputs_started)) {
        core.open_process = core.next_process++;
        core.open_reference = process_reference(*core.open_process);
        core.machine_since = at_unix_ms;
        core.outputs_started = false;
        core.log.info(core.component, "process {} begins with the input {}", core.open_reference,
                      code);
      }
      if (output) core.outputs_started = true;
      process = core.open_reference;
      action = output ? "produce" : "consume";
      if (output && !c.machine.empty()) add_machine_use_locked(at_unix_ms);
    }
    // After the machine's use: the records are numbered in the order they are submitted.
    const std::int64_t number = core.next_record++;

    nlohmann::ordered_json fields;
    fields["action"] = action;
    fields["hasPointInTime"] = format_rfc3339_ms(at_unix_ms);
    if (!c.provider.empty()) fields["provider"] = c.provider;
    if (!c.receiver.empty()) fields["receiver"] = c.receiver;
    if (output) {
      fields["resourceInventoriedAs"] = expand_batch(c.output_resource, code);
      fields["resourceConformsTo"] = c.output_conforms_to;
    } else {
      fields["resourceInventoriedAs"] = expand_batch(c.resource, code);
    }
    if (!c.to_resource.empty())
      fields["toResourceInventoriedAs"] = expand_batch(c.to_resource, code);
    double value = 1;
    std::string_view unit = "one";
    if (weighed) {
      if (c.unit == WeightUnit::gram) {
        value = vf::round_to(weighed->net_kg * 1000, std::max(m_decimals - 3, 0));
        unit = "gram";
      } else {
        value = weighed->net_kg;
        unit = "kilogram";
      }
    }
    fields["resourceQuantity"] = vf::quantity(value, unit);
    if (!c.at_location.empty()) fields["atLocation"] = c.at_location;
    if (is_process) fields[output ? "outputOf" : "inputOf"] = process;
    nlohmann::ordered_json meta;
    meta["station"] = c.name;
    meta["record"] = number;
    if (is_process) meta["role"] = output ? "output" : "input";
    if (weighed) {
      meta["method"] = "weighed";
      meta["gross_kg"] = weighed->gross_kg;
      meta["tare_kg"] = c.tare_kg;
      meta["scale_net"] = weighed->weight.net;
      meta["scanned"] = format_rfc3339_ms(weighed->scanned_unix_ms);
    } else {
      meta["method"] = "counted";
    }
    fields["meta"] = std::move(meta);

    Record record;
    record.number = number;
    record.ref = fmt::format("record {}", number);
    record.fields_text = fields.dump();
    record.summary = is_process ? fmt::format("{} {} {} {} ({} of {})", action, code, value, unit,
                                              output ? "output" : "input", process)
                                : fmt::format("{} {} {} {}", action, code, value, unit);
    core.log.info(core.component, "{}: {} (submitting)", record.ref, record.summary);
    core.unsent.push_back(std::move(record));
    core.save_locked();
  }

  // Caller holds the mutex; the open process has an output at `end_unix_ms`. With
  // `machine`, the machine's `use` as an input of the open process for the time since its first
  // input or its previous output: effortQuantity in hours (valueflows.md §2c: use needs inputOf,
  // effortQuantity and the resource used). No time (a clock that went back, an unknown start
  // from an older state file) records none.
  void add_machine_use_locked(std::int64_t end_unix_ms) {
    Core& core = *m_core;
    const StationConfig& c = core.config;
    const std::optional<std::int64_t> since = core.machine_since;
    core.machine_since = end_unix_ms;
    if (!since || end_unix_ms <= *since) {
      core.log.info(core.component, "no use of {} recorded for process {}: {}", c.machine,
                    core.open_reference,
                    since ? "no machine time since the previous record"
                          : "its start was not recorded (state from an older version)");
      return;
    }
    // Nine decimals of an hour keep every millisecond (1 ms = 0.000000278 h).
    const double hours = vf::round_to(static_cast<double>(end_unix_ms - *since) / 3'600'000.0, 9);
    nlohmann::ordered_json fields = vf::use(c.machine, hours, format_rfc3339_ms(*since),
                                            format_rfc3339_ms(end_unix_ms), core.open_reference);
    if (!c.provider.empty()) fields["provider"] = c.provider;
    if (!c.receiver.empty()) fields["receiver"] = c.receiver;
    if (!c.at_location.empty()) fields["atLocation"] = c.at_location;
    const std::int64_t number = core.next_record++;
    nlohmann::ordered_json meta;
    meta["station"] = c.name;
    meta["record"] = number;
    meta["role"] = "machine";
    meta["method"] = "timed";
    fields["meta"] = std::move(meta);
    Record record;
    record.number = number;
    record.ref = fmt::format("record {}", number);
    record.fields_text = fields.dump();
    record.summary =
        fmt::format("use {} {} hour (machine of {})", c.machine, hours, core.open_reference);
    core.log.info(core.component, "{}: {} (submitting)", record.ref, record.summary);
    core.unsent.push_back(std::move(record));
  }

  // Hands every record not in flight to the sink, unless a refusal asked to wait. The sink may
  // answer inside submit(), so the mutex is not held across it.
  void submit_due(EventSink& sink, TimePoint now) {
    Core& core = *m_core;
    std::vector<Record> jobs;
    {
      std::lock_guard lock(core.mutex);
      if (now < core.retry_at) return;
      for (const Record& r : core.unsent)
        if (!core.in_flight.contains(r.number)) {
          jobs.push_back(r);
          core.in_flight.insert(r.number);
        }
    }
    for (Record& job : jobs) {
      const std::int64_t number = job.number;
      std::shared_ptr<Core> shared = m_core;
      Status queued = sink.submit(
          nlohmann::ordered_json::parse(job.fields_text),
          EventSource{"station", core.config.name, job.ref},
          [shared, number](Result<Committed> committed) {
            shared->on_committed(number, committed);
          },
          QueueFull::refuse);
      if (!queued) core.on_committed(number, std::unexpected(queued.error()));
    }
  }

  // --- operator feedback ---------------------------------------------------------------------

  bool has_outputs() const { return m_core->config.led || m_core->config.buzzer; }

  void open_outputs(TimePoint now) {
    if (!has_outputs() || now < m_output_retry_at) return;
    const StationConfig& c = m_core->config;
    bool failed = false;
    auto open = [&](const std::optional<OutputRequest>& request,
                    std::unique_ptr<OutputLine>& line) {
      if (!request || line) return;
      auto opened = m_devices.output(*request);
      if (opened) {
        line = std::move(*opened);
        m_levels_known = false;
        return;
      }
      failed = true;
      std::lock_guard lock(m_core->mutex);
      if (!m_output_failing)
        m_core->error_locked(
            fmt::format("feedback line {}: {} (the station works without it; "
                        "retrying every {})",
                        request->line, opened.error().message, format_duration(k_output_retry)));
    };
    open(c.led, m_led);
    open(c.buzzer, m_buzzer);
    if (failed) m_output_retry_at = now + k_output_retry;
    m_output_failing = failed;
  }

  void apply_feedback(TimePoint now) {
    if (!has_outputs()) return;
    open_outputs(now);
    const Levels want = m_plan.levels(now);
    auto set = [&](std::unique_ptr<OutputLine>& line, bool on, bool was) {
      if (!line || (m_levels_known && on == was)) return;
      if (Status s = line->set(on); !s) {
        line.reset();
        std::lock_guard lock(m_core->mutex);
        m_core->error_locked(s.error().message);
        m_output_retry_at = now + k_output_retry;
      }
    };
    set(m_led, want.led, m_levels.led);
    set(m_buzzer, want.buzzer, m_levels.buzzer);
    m_levels = want;
    m_levels_known = true;
  }

  std::shared_ptr<Core> m_core;
  StationDevices m_devices;
  const int m_decimals;

  mutable std::mutex m_readers_mutex;
  std::unique_ptr<barcode::ScannerReader> m_scanner;
  std::unique_ptr<scale::ScaleReader> m_scale;

  // Owned by the driver's thread.
  FeedbackPlan m_plan;
  std::unique_ptr<OutputLine> m_led;
  std::unique_ptr<OutputLine> m_buzzer;
  Levels m_levels;
  bool m_levels_known = false;
  TimePoint m_output_retry_at{};
  bool m_output_failing = false;

  std::jthread m_thread;
};

// --- config ----------------------------------------------------------------------------------

const std::vector<DriverKeyInfo>& own_keys() {
  static const std::vector<DriverKeyInfo> keys = {
      {"action", "string", "(required without process)",
       "what one record is at a one-action station: \"transferCustody\" (intake, hand-over), "
       "\"transfer\", \"move\" … (a PROTOCOL §4 action that carries resourceQuantity and needs no "
       "process)"},
      {"process", "string", "\"\"",
       "makes a process station (shredder, extruder, sorting): the word its processes are named "
       "by, \"shred\" giving station:<device>:<name>:shred-<n>; scans of batch_label are its "
       "inputs "
       "(consume), scans of output_label its outputs (produce)"},
      {"output_label", "string", "(required with process)",
       "process station: name of the scanner pattern whose codes are outputs"},
      {"output_resource", "string", "\"{batch}\"",
       "process station: the output's resourceInventoriedAs (the new resource's name); {batch} "
       "stands for the scanned output code"},
      {"machine", "string", "\"\"",
       "process station: the machine's resource (\"machine:extruder-01\"); each output also "
       "records its use, inputOf the process, for the hours since the process's first input or "
       "previous output (effortQuantity in hour); none if empty"},
      {"output_conforms_to", "string", "(required with process)",
       "process station: resourceConformsTo of the outputs, the kind of what comes out "
       "(\"pet-flakes\", \"pet-filament\")"},
      {"provider", "string", "\"\"", "agent reference of who hands the batch over; none if empty"},
      {"receiver", "string", "\"\"", "agent reference of who receives it; none if empty"},
      {"at_location", "string", "\"\"", "atLocation: where the station stands; none if empty"},
      {"resource", "string", "\"{batch}\"",
       "resourceInventoriedAs; {batch} stands for the scanned code (after a hand-over: the "
       "receiver's resource, as the hand-over's to_resource named it)"},
      {"to_resource", "string", "\"\"",
       "transfer, transferCustody, transferAllRights, move: toResourceInventoriedAs, the "
       "receiver's resource the batch goes into; {batch} stands for the scanned code; none if "
       "empty"},
      {"batch_label", "string", "\"batch\"",
       "name of the scanner pattern whose codes are batches (a process station's inputs); other "
       "labels are ignored (with no scanner patterns every code is a batch)"},
      {"window", "duration", "\"60s\"",
       "after a batch scan, how long the station waits for a stable weight"},
      {"tare", "number", "0", "kilograms subtracted from every weight (the empty bin or pallet)"},
      {"unit", "string", "\"kilogram\"", "unit of resourceQuantity: \"kilogram\" or \"gram\""},
      {"led_line", "string", "\"\"",
       "GPIO line name of the feedback LED (\"GPIO22\"); none if "
       "empty"},
      {"led_active", "string", "\"high\"", "the level that lights the LED: \"high\" or \"low\""},
      {"buzzer_line", "string", "\"\"",
       "GPIO line name of the feedback buzzer (\"GPIO23\"); none if empty"},
      {"buzzer_active", "string", "\"high\"",
       "the level that sounds the buzzer: \"high\" or \"low\""},
  };
  return keys;
}

// Whether a key is set at all, whatever its type (DriverTable has no "has").
bool present(const DriverTable& table, std::string_view key) {
  auto value = table.string(key, k_absent);
  return !value || *value != k_absent;
}

Result<std::optional<OutputRequest>> parse_output(const DriverTable& table, std::string_view name,
                                                  const std::string& driver_name) {
  const std::string line_key = fmt::format("{}_line", name);
  const std::string active_key = fmt::format("{}_active", name);
  auto line = table.string(line_key, "");
  if (!line) return std::unexpected(line.error());
  auto active = table.choice(active_key, "high", {"high", "low"});
  if (!active) return std::unexpected(active.error());
  if (line->empty()) return std::optional<OutputRequest>();
  return OutputRequest{*line, *active == "low", fmt::format("reflow-agent/{}", driver_name)};
}

class StationKind final : public DriverKind {
 public:
  std::string_view kind() const override { return "station"; }
  std::string_view summary() const override {
    return "recycling station: scan a batch code, weigh it, record a transferCustody/transfer, "
           "or a process's consume (inputs) and produce (outputs)";
  }
  const std::vector<DriverKeyInfo>& keys() const override { return station_keys(); }

  Result<std::unique_ptr<Driver>> create(const DriverConfig& config, Env& env,
                                         Logger& log) const override {
    auto parsed = parse_station_config(config);
    if (!parsed) return std::unexpected(parsed.error());
    const std::string name = parsed->name;
    StationDevices devices;
    devices.scanner = [&env, &log, name](const barcode::ScannerConfig& c) {
      return barcode::make_scanner_reader(c, env, log,
                                          fmt::format("driver station/{} scanner", name));
    };
    devices.scale = [&env, &log, name](const scale::ScaleConfig& c) {
      return scale::make_scale_reader(c, env, log, fmt::format("driver station/{} scale", name));
    };
    devices.output = [](const OutputRequest& request) { return open_gpiod_output_line(request); };
    return make_station_driver(std::move(*parsed), env, log, std::move(devices));
  }
};

}  // namespace

const std::vector<DriverKeyInfo>& station_keys() {
  static const std::vector<DriverKeyInfo> keys = [] {
    std::vector<DriverKeyInfo> all = own_keys();
    for (const auto* part : {&barcode::scanner_keys("scanner_"), &scale::scale_keys("scale_")})
      all.insert(all.end(), part->begin(), part->end());
    // The scale kind needs its path; a station without one counts scans instead.
    for (DriverKeyInfo& key : all)
      if (key.key == "scale") key.default_text = "(none: a count-only station)";
    return all;
  }();
  return keys;
}

Result<StationConfig> parse_station_config(const DriverConfig& config) {
  DriverTable table(config);
  if (Status keys = table.check_keys(station_keys()); !keys) return std::unexpected(keys.error());
  StationConfig station;
  station.name = config.name;
  station.device_id = config.device_id;

  auto process = table.string("process", "");
  if (!process) return std::unexpected(process.error());
  station.process = *process;
  const bool is_process = !station.process.empty();
  if (is_process && (station.process.size() > 32 ||
                     !std::all_of(station.process.begin(), station.process.end(), [](char ch) {
                       return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' ||
                              ch == '_';
                     })))
    return std::unexpected(table.error(
        "process", "must be a word of up to 32 letters, digits, - or _, e.g. \"shred\""));
  if (is_process && present(table, "action"))
    return std::unexpected(
        table.error("action",
                    "is not for a process station: it records a consume of each input "
                    "and a produce of each output; remove action, or process"));
  if (!is_process && !present(table, "action"))
    return std::unexpected(
        table.error("action",
                    "is required: set action (\"transferCustody\" at an intake or hand-over) or, "
                    "for a shredder, extruder or sorting station, process (\"shred\")"));
  auto action = is_process ? Result<std::string>("") : table.required_string("action");
  auto provider = table.string("provider", "");
  auto receiver = table.string("receiver", "");
  auto at_location = table.string("at_location", "");
  auto resource = table.string("resource", "{batch}");
  auto to_resource = table.string("to_resource", "");
  auto batch_label = table.string("batch_label", "batch");
  auto output_label = table.string("output_label", "");
  auto output_resource = table.string("output_resource", "{batch}");
  auto output_conforms_to = table.string("output_conforms_to", "");
  auto machine = table.string("machine", "");
  auto window = table.duration("window", std::chrono::seconds(60));
  auto unit = table.choice("unit", "kilogram", {"kilogram", "gram"});
  for (const auto* r :
       {&action, &provider, &receiver, &at_location, &resource, &to_resource, &batch_label,
        &output_label, &output_resource, &output_conforms_to, &machine, &unit})
    if (!*r) return std::unexpected(r->error());
  if (!window) return std::unexpected(window.error());
  if (window->count() <= 0 || *window > std::chrono::hours(1))
    return std::unexpected(table.error("window", "must be between 1ms and 1h"));
  station.action = *action;
  station.provider = *provider;
  station.receiver = *receiver;
  station.at_location = *at_location;
  station.resource = *resource;
  station.to_resource = *to_resource;
  station.output_label = *output_label;
  station.output_resource = *output_resource;
  station.output_conforms_to = *output_conforms_to;
  station.machine = *machine;
  if (station.resource.empty())
    return std::unexpected(
        table.error("resource", "must not be empty (the default is \"{batch}\")"));
  if (station.to_resource == station.resource)
    return std::unexpected(
        table.error("to_resource",
                    "must differ from resource: name the receiver's resource, e.g. "
                    "\"{batch}@fablab-recycling\" or a stock resource such as "
                    "\"stock:pet-flakes\""));
  if (!station.to_resource.empty() && !is_transfer_action(station.action))
    return std::unexpected(table.error(
        "to_resource", fmt::format("only a transfer, transferCustody, transferAllRights or move "
                                   "goes into another resource, not {}",
                                   is_process ? std::string("a process station's consume")
                                              : fmt::format("\"{}\"", station.action))));
  if (!is_process) {
    for (std::string_view key :
         {"output_label", "output_resource", "output_conforms_to", "machine"})
      if (present(table, key))
        return std::unexpected(table.error(
            key, "is for a process station only: set process (\"shred\"), or remove this key"));
  } else {
    if (station.output_label.empty())
      return std::unexpected(
          table.error("output_label",
                      "is required for a process station: the name of the scanner pattern "
                      "of its output labels (e.g. \"flakes\")"));
    if (station.output_label == *batch_label)
      return std::unexpected(
          table.error("output_label",
                      "must differ from batch_label: inputs and outputs need their own labels"));
    if (station.output_resource.empty())
      return std::unexpected(
          table.error("output_resource", "must not be empty (the default is \"{batch}\")"));
    if (station.output_conforms_to.empty())
      return std::unexpected(table.error(
          "output_conforms_to",
          "is required for a process station: the kind of its outputs (e.g. \"pet-flakes\"); a "
          "produce creates the output resource of that kind (valueflows.md §2d)"));
  }
  station.batch_label = *batch_label;
  station.window = *window;
  station.unit = *unit == "gram" ? WeightUnit::gram : WeightUnit::kilogram;

  // DriverTable's numbers are > 0; a tare of 0 is the default, so `tare = 0` is accepted too.
  if (present(table, "tare")) {
    auto tare = table.positive_number("tare", 0);
    if (!tare) {
      if (!table.integer("tare", 0, 0, 0)) return std::unexpected(tare.error());
      tare = 0.0;
    }
    if (!std::isfinite(*tare) || *tare > 100'000)
      return std::unexpected(table.error("tare", "must be a number of kilograms, 0 … 100000"));
    station.tare_kg = *tare;
  }

  // Every event the station can make must pass the agent's checks (validate_submission) and
  // zenflows' per-action rules (valueflows.md §2c-2d): a one-action station's action, a process
  // station's consume and produce.
  std::vector<nlohmann::ordered_json> probes;
  auto probe_of = [&](std::string_view probe_action) {
    nlohmann::ordered_json probe;
    probe["action"] = probe_action;
    probe["hasPointInTime"] = "2026-01-01T00:00:00.000Z";
    if (!station.provider.empty()) probe["provider"] = station.provider;
    if (!station.receiver.empty()) probe["receiver"] = station.receiver;
    const bool out = probe_action == "produce" && is_process;
    if (probe_action == "use" && is_process) {
      probe["resourceInventoriedAs"] = station.machine;
      probe["effortQuantity"] = vf::quantity(0.5, "hour");
      probe["hasBeginning"] = probe["hasPointInTime"];
      probe["hasEnd"] = "2026-01-01T00:30:00.000Z";
      probe.erase("hasPointInTime");
    } else {
      probe["resourceInventoriedAs"] =
          expand_batch(out ? station.output_resource : station.resource, "urn:example:batch:1");
      probe["resourceQuantity"] = vf::quantity(1, "kilogram");
    }
    if (out) probe["resourceConformsTo"] = station.output_conforms_to;
    if (!station.to_resource.empty())
      probe["toResourceInventoriedAs"] = expand_batch(station.to_resource, "urn:example:batch:1");
    if (!station.at_location.empty()) probe["atLocation"] = station.at_location;
    if (is_process) probe[out ? "outputOf" : "inputOf"] = "station:probe:process-1";
    return probe;
  };
  if (is_process) {
    probes.push_back(probe_of("consume"));
    probes.push_back(probe_of("produce"));
    if (!station.machine.empty()) probes.push_back(probe_of("use"));
  } else {
    probes.push_back(probe_of(station.action));
  }
  for (const nlohmann::ordered_json& probe : probes) {
    Status valid = validate_submission(probe);
    if (valid) valid = vf::check_zenflows_rules(probe);
    if (valid) continue;
    const std::string& why = valid.error().message;
    const std::string_view key = why.starts_with("provider")              ? "provider"
                                 : why.starts_with("receiver")            ? "receiver"
                                 : why.starts_with("atLocation")          ? "at_location"
                                 : is_process && probe["action"] == "use" ? "machine"
                                 : is_process                             ? "process"
                                                                          : "action";
    const bool needs_process = why.starts_with("inputOf") || why.starts_with("outputOf");
    return std::unexpected(table.error(
        key, fmt::format("a station cannot record this: {}{}", why,
                         key != "action" ? ""
                         : needs_process
                             ? "; a shredder, extruder or sorting station is a process: remove "
                               "action and set process (\"shred\"), output_label and "
                               "output_conforms_to"
                             : "; use \"transferCustody\" (intake, hand-over) or \"transfer\", "
                               "or set process for a shredder, extruder or sorting station")));
  }

  auto scanner = barcode::parse_scanner_config(table, "scanner_");
  if (!scanner) return std::unexpected(scanner.error());
  station.scanner = std::move(*scanner);
  if (!station.scanner.patterns.empty() &&
      std::none_of(station.scanner.patterns.begin(), station.scanner.patterns.end(),
                   [&](const barcode::CodePattern& p) { return p.name == station.batch_label; }))
    return std::unexpected(table.error(
        "batch_label", fmt::format("no scanner pattern is named \"{}\": name the pattern of your "
                                   "batch labels so, or set batch_label to its name",
                                   station.batch_label)));
  if (is_process &&
      std::none_of(station.scanner.patterns.begin(), station.scanner.patterns.end(),
                   [&](const barcode::CodePattern& p) { return p.name == station.output_label; }))
    return std::unexpected(table.error(
        "output_label",
        fmt::format("no scanner pattern is named \"{}\": a process station tells inputs from "
                    "outputs by their labels; add a pattern of that name to scanner_patterns",
                    station.output_label)));

  if (present(table, "scale")) {
    auto scale = scale::parse_scale_config(table, "scale_");
    if (!scale) return std::unexpected(scale.error());
    station.scale = std::move(*scale);
  } else {
    for (const DriverKeyInfo& key : scale::scale_keys("scale_"))
      if (present(table, key.key))
        return std::unexpected(
            table.error(key.key,
                        "is set but `scale` (the scale's device path) is not: set `scale`, or "
                        "remove the scale keys for a count-only station"));
    for (std::string_view key : {"tare", "unit"})
      if (present(table, key))
        return std::unexpected(table.error(
            key,
            "needs a scale: set `scale` (the scale's device path), or remove this key for "
            "a count-only station"));
  }

  auto led = parse_output(table, "led", config.name);
  if (!led) return std::unexpected(led.error());
  auto buzzer = parse_output(table, "buzzer", config.name);
  if (!buzzer) return std::unexpected(buzzer.error());
  station.led = std::move(*led);
  station.buzzer = std::move(*buzzer);
  if (station.led && station.buzzer && station.led->line == station.buzzer->line)
    return std::unexpected(
        table.error("buzzer_line", "is the same line as led_line: give each its own GPIO line"));
  return station;
}

std::unique_ptr<Driver> make_station_driver(StationConfig config, Env& env, Logger& log,
                                            StationDevices devices) {
  return std::make_unique<StationDriver>(std::move(config), env, log, std::move(devices));
}

std::string process_reference(const StationConfig& config, std::int64_t n) {
  return fmt::format("station:{}:{}:{}-{}", config.device_id, config.name, config.process, n);
}

}  // namespace station

const DriverKind& station_driver_kind() {
  static const station::StationKind kind;
  return kind;
}

}  // namespace agent
