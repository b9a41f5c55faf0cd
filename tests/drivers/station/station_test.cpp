// SPDX-License-Identifier: AGPL-3.0-or-later
// The station's workflow through its seams: fake scanner and scale readers that the test makes
// scan and weigh, fake feedback lines that record what was set and when, all on FakeEnv time.
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include <reflow/core/event.hpp>
#include <reflow/core/units.hpp>
#include <reflow/core/zenflows_rules.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/drivers/driver_state.hpp>

#include "capturing_sink.hpp"
#include "station_driver.hpp"
#include "temp_dir.hpp"

namespace agent {
const DriverKind& station_driver_kind();

namespace station {
namespace {

using reflow_test::CapturingSink;
using ordered_json = nlohmann::ordered_json;

constexpr std::int64_t k_start_unix_ms = 1'767'225'600'000;  // FakeEnv's 2026-01-01T00:00:00Z
constexpr std::string_view k_batch = "urn:example:batch:0042";

Result<AgentConfig> agent_config(const std::string& driver_tables) {
  return parse_config(
      "[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"/tmp/d\"\n\n" +
          driver_tables,
      "station.toml");
}

// A scanner the test drives: scan() calls the station's callback as the reader's thread would.
class FakeScanner final : public barcode::ScannerReader {
 public:
  explicit FakeScanner(Env& env) : m_env(env) {}
  Status start(std::function<void(const barcode::Scan&)> on_scan) override {
    std::lock_guard lock(m_mutex);
    m_on_scan = std::move(on_scan);
    return {};
  }
  void stop() override {
    std::lock_guard lock(m_mutex);
    m_on_scan = nullptr;
  }
  barcode::ScannerHealth health() const override {
    barcode::ScannerHealth h;
    h.state = "connected";
    return h;
  }
  void scan(std::string code, std::string label) {
    std::lock_guard lock(m_mutex);
    ASSERT_TRUE(m_on_scan) << "the station did not start the scanner";
    m_on_scan(
        barcode::Scan{std::move(code), std::move(label), m_env.now_unix_ms(), m_env.steady_now()});
  }

 private:
  Env& m_env;
  std::mutex m_mutex;
  std::function<void(const barcode::Scan&)> m_on_scan;
};

class FakeScale final : public scale::ScaleReader {
 public:
  explicit FakeScale(Env& env) : m_env(env) {}
  Status start(std::function<void(const scale::Weight&)> on_weight) override {
    std::lock_guard lock(m_mutex);
    m_on_weight = std::move(on_weight);
    return {};
  }
  void stop() override {
    std::lock_guard lock(m_mutex);
    m_on_weight = nullptr;
  }
  scale::ScaleHealth health() const override {
    scale::ScaleHealth h;
    h.state = "connected";
    return h;
  }
  void weigh(double kilograms, bool net = false) {
    std::lock_guard lock(m_mutex);
    ASSERT_TRUE(m_on_weight) << "the station did not start the scale";
    m_on_weight(scale::Weight{kilograms, net, m_env.now_unix_ms(), m_env.steady_now()});
  }

 private:
  Env& m_env;
  std::mutex m_mutex;
  std::function<void(const scale::Weight&)> m_on_weight;
};

// Every level a fake output line was set to, with the FakeEnv time in ms since the test began.
struct OutputLog {
  struct Set {
    std::string line;
    bool on;
    std::int64_t at_ms;
    bool operator==(const Set&) const = default;
  };
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<Set> sets;
  std::vector<OutputRequest> requests;

  std::vector<Set> of(std::string_view line) {
    std::lock_guard lock(mutex);
    std::vector<Set> out;
    for (const Set& s : sets)
      if (s.line == line) out.push_back(s);
    return out;
  }
  bool wait_for(std::size_t n) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, std::chrono::seconds(30), [&] { return sets.size() >= n; });
  }
  std::size_t size() {
    std::lock_guard lock(mutex);
    return sets.size();
  }
};

void PrintTo(const OutputLog::Set& s, std::ostream* os) {
  *os << s.line << (s.on ? " on @" : " off @") << s.at_ms;
}

class FakeOutput final : public OutputLine {
 public:
  FakeOutput(std::string line, OutputLog& log, Env& env)
      : m_line(std::move(line)), m_log(log), m_env(env) {}
  Status set(bool on) override {
    {
      std::lock_guard lock(m_log.mutex);
      m_log.sets.push_back({m_line, on, m_env.now_unix_ms() - k_start_unix_ms});
    }
    m_log.changed.notify_all();
    return {};
  }

 private:
  std::string m_line;
  OutputLog& m_log;
  Env& m_env;
};

const std::string k_patterns =
    "scanner_patterns = \"\"\"\nbatch = ^urn:example:batch:[0-9A-Za-z-]+$\n"
    "spool = ^WEB\\\\+SPOOLMAN:S-[0-9]+$\n\"\"\"\n";

const std::string k_intake =
    "[[driver]]\nkind = \"station\"\nname = \"intake\"\naction = \"transferCustody\"\n"
    "to_resource = \"{batch}@fablab-recycling\"\n"
    "provider = \"agent:green-shed-collective\"\nreceiver = \"agent:fablab-recycling\"\n"
    "at_location = \"place:fablab-intake\"\ntare = 1.2\n"
    "scanner = \"/dev/serial/by-id/usb-Example_Scanner-if00\"\nscanner_mode = \"serial\"\n" +
    k_patterns +
    "scale = \"/dev/serial/by-id/usb-Example_Scale-if00-port0\"\n"
    "scale_protocol = \"st_gs\"\n";

class StationDriverTest : public ::testing::Test {
 protected:
  StationConfig config(const std::string& table) {
    auto parsed = agent_config(table);
    EXPECT_TRUE(parsed) << parsed.error().message;
    if (!parsed) return {};
    auto station = parse_station_config(parsed->drivers.at(0));
    EXPECT_TRUE(station) << station.error().message;
    return station ? *station : StationConfig{};
  }

  Error config_error(const std::string& table) {
    auto parsed = agent_config(table);
    EXPECT_TRUE(parsed) << parsed.error().message;
    if (!parsed) return {};
    auto station = parse_station_config(parsed->drivers.at(0));
    EXPECT_FALSE(station) << "accepted:\n" << table;
    return station ? Error{} : station.error();
  }

  std::unique_ptr<Driver> make(StationConfig station) {
    StationDevices devices;
    devices.scanner = [this](const barcode::ScannerConfig& c) {
      m_scanner_config = c;
      auto reader = std::make_unique<FakeScanner>(m_env);
      m_scanner = reader.get();
      return reader;
    };
    devices.scale = [this](const scale::ScaleConfig& c) {
      m_scale_config = c;
      auto reader = std::make_unique<FakeScale>(m_env);
      m_scale = reader.get();
      return reader;
    };
    devices.output = [this](const OutputRequest& request) -> Result<std::unique_ptr<OutputLine>> {
      {
        std::lock_guard lock(m_outputs.mutex);
        m_outputs.requests.push_back(request);
      }
      return std::make_unique<FakeOutput>(request.line, m_outputs, m_env);
    };
    return make_station_driver(std::move(station), m_env, m_log, std::move(devices));
  }

  // Waits (bounded) until the driver's health state says `text`: the way to know it has handled
  // what the test fed it.
  static bool wait_state(const Driver& driver, std::string_view text) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (driver.health().state.find(text) == std::string::npos) {
      if (std::chrono::steady_clock::now() > until) {
        ADD_FAILURE() << "state never said \"" << text << "\"; it says \"" << driver.health().state
                      << "\"";
        return false;
      }
      std::this_thread::yield();
    }
    return true;
  }

  // Moves FakeEnv time once the driver's thread waits.
  void advance(std::int64_t ms) {
    ASSERT_TRUE(m_env.wait_for_sleepers(1));
    m_env.advance_ms(ms);
  }

  std::int64_t elapsed_ms() { return m_env.now_unix_ms() - k_start_unix_ms; }

  reflow_test::TempDir m_dir;
  FakeEnv m_env;
  Logger m_log{LogLevel::error};
  FakeScanner* m_scanner = nullptr;
  FakeScale* m_scale = nullptr;
  std::optional<barcode::ScannerConfig> m_scanner_config;
  std::optional<scale::ScaleConfig> m_scale_config;
  OutputLog m_outputs;
};

TEST_F(StationDriverTest, ScanThenStableWeightGivesOneIntakeOfTheNetWeight) {
  CapturingSink sink;
  auto driver = make(config(k_intake));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  ASSERT_TRUE(m_scanner && m_scale);
  EXPECT_EQ(m_scanner_config->path, "/dev/serial/by-id/usb-Example_Scanner-if00");
  EXPECT_EQ(m_scale_config->path, "/dev/serial/by-id/usb-Example_Scale-if00-port0");

  m_scanner->scan(std::string(k_batch), "batch");
  ASSERT_TRUE(wait_state(*driver, "waiting for the weight of urn:example:batch:0042"));
  advance(5'000);  // the operator lifts the bin onto the scale
  m_scale->weigh(13.545);
  auto events = sink.wait_for(1);
  ASSERT_TRUE(wait_state(*driver, "waiting for a batch scan"));
  driver->stop();

  ASSERT_EQ(events.size(), 1u);
  const ordered_json& e = events[0].fields;
  EXPECT_TRUE(validate_submission(e)) << e.dump();
  EXPECT_TRUE(vf::check_zenflows_rules(e)) << vf::check_zenflows_rules(e).error().message;
  // Intake (issue 16): custody of the provider's batch passes into the receiver's resource.
  EXPECT_EQ(e["action"], "transferCustody");
  EXPECT_EQ(e["resourceInventoriedAs"], k_batch);
  EXPECT_EQ(e["toResourceInventoriedAs"], std::string(k_batch) + "@fablab-recycling");
  EXPECT_EQ(e["resourceQuantity"]["hasUnit"], "kilogram");
  EXPECT_EQ(e["resourceQuantity"]["hasNumericalValue"].dump(), "12.345") << "net of the tare";
  EXPECT_EQ(e["hasPointInTime"], format_rfc3339_ms(k_start_unix_ms + 5'000));
  EXPECT_EQ(e["provider"], "agent:green-shed-collective");
  EXPECT_EQ(e["receiver"], "agent:fablab-recycling");
  EXPECT_EQ(e["atLocation"], "place:fablab-intake");
  EXPECT_EQ(e["meta"]["station"], "intake");
  EXPECT_EQ(e["meta"]["method"], "weighed");
  EXPECT_EQ(e["meta"]["gross_kg"].dump(), "13.545");
  EXPECT_EQ(e["meta"]["tare_kg"].dump(), "1.2");
  EXPECT_EQ(e["meta"]["scale_net"], false);
  EXPECT_EQ(e["meta"]["scanned"], format_rfc3339_ms(k_start_unix_ms));
  EXPECT_EQ(events[0].source.driver, "station");
  EXPECT_EQ(events[0].source.instance, "intake");
  EXPECT_EQ(events[0].source.ref, "record 1");

  const DriverHealth health = driver->health();
  EXPECT_EQ(health.events, 1u);
  EXPECT_EQ(health.malformed, 0u);
  EXPECT_EQ(health.errors, 0u);
}

TEST_F(StationDriverTest, GramUnitGivesGramsWithoutFloatingPointNoise) {
  CapturingSink sink;
  auto driver = make(config(k_intake + "unit = \"gram\"\n"));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scanner->scan(std::string(k_batch), "batch");
  ASSERT_TRUE(wait_state(*driver, "waiting for the weight"));
  m_scale->weigh(1.5, /*net=*/true);  // 1.5 kg - 1.2 kg is 0.30000000000000004 in doubles
  auto events = sink.wait_for(1);
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["resourceQuantity"].dump(),
            R"({"hasNumericalValue":300.0,"hasUnit":"gram"})");
  EXPECT_EQ(events[0].fields["meta"]["scale_net"], true);
}

TEST_F(StationDriverTest, ScanWithoutWeightInTheWindowEmitsNothing) {
  CapturingSink sink;
  auto driver = make(config(k_intake + "window = \"10s\"\n"));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scanner->scan(std::string(k_batch), "batch");
  ASSERT_TRUE(wait_state(*driver, "waiting for the weight"));
  advance(10'000);  // the window ends
  ASSERT_TRUE(wait_state(*driver, "1 scan(s) without weight"));
  ASSERT_TRUE(wait_state(*driver, "waiting for a batch scan"));
  m_scale->weigh(5.0);  // too late: a weight without a scan
  ASSERT_TRUE(wait_state(*driver, "1 weight(s) without scan"));
  const DriverHealth health = driver->health();
  driver->stop();
  EXPECT_TRUE(sink.events().empty());
  EXPECT_EQ(health.malformed, 2u);
  EXPECT_NE(health.last_error.find("with no batch scanned"), std::string::npos)
      << health.last_error;
}

TEST_F(StationDriverTest, WeightJustInsideTheWindowCompletesTheRecord) {
  CapturingSink sink;
  auto driver = make(config(k_intake + "window = \"10s\"\n"));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scanner->scan(std::string(k_batch), "batch");
  ASSERT_TRUE(wait_state(*driver, "waiting for the weight"));
  advance(9'999);
  m_scale->weigh(2.2);
  auto events = sink.wait_for(1);
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["resourceQuantity"]["hasNumericalValue"].dump(), "1.0");
}

TEST_F(StationDriverTest, WeightWithoutScanEmitsNothingAndTheNextGoodRecordIsAlone) {
  CapturingSink sink;
  auto driver = make(config(k_intake));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scale->weigh(7.0);
  ASSERT_TRUE(wait_state(*driver, "1 weight(s) without scan"));
  m_scale->weigh(0);  // the pan emptied: neither a record nor a miss
  m_scanner->scan(std::string(k_batch), "batch");
  m_scale->weigh(4.2);
  auto events = sink.wait_for(1);
  ASSERT_TRUE(wait_state(*driver, "1 recorded"));
  const DriverHealth health = driver->health();
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["resourceQuantity"]["hasNumericalValue"].dump(), "3.0");
  EXPECT_EQ(health.malformed, 1u);
  EXPECT_NE(health.state.find("1 weight(s) without scan"), std::string::npos) << health.state;
}

TEST_F(StationDriverTest, ZeroAndTareOnlyWeightsAreNeitherRecordsNorMisses) {
  CapturingSink sink;
  auto driver = make(config(k_intake));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scale->weigh(0);    // empty pan
  m_scale->weigh(1.2);  // the empty bin: exactly the tare
  m_scanner->scan(std::string(k_batch), "batch");
  m_scale->weigh(1.1);  // armed, still only the bin (less than the tare): keeps waiting
  m_scale->weigh(0);
  m_scale->weigh(9.7);
  auto events = sink.wait_for(1);
  ASSERT_TRUE(wait_state(*driver, "1 recorded"));
  const DriverHealth health = driver->health();
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["resourceQuantity"]["hasNumericalValue"].dump(), "8.5");
  EXPECT_EQ(health.malformed, 0u) << health.state;
}

TEST_F(StationDriverTest, OtherLabelsAreIgnoredAndKeepTheArmedBatch) {
  CapturingSink sink;
  auto driver = make(config(k_intake));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scanner->scan("WEB+SPOOLMAN:S-12", "spool");
  ASSERT_TRUE(wait_state(*driver, "1 other label(s)"));
  m_scanner->scan(std::string(k_batch), "batch");
  m_scanner->scan("hello", "");  // no pattern matched
  ASSERT_TRUE(wait_state(*driver, "2 other label(s)"));
  ASSERT_TRUE(wait_state(*driver, "waiting for the weight of urn:example:batch:0042"));
  m_scale->weigh(3.2);
  auto events = sink.wait_for(1);
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["resourceInventoriedAs"], k_batch);
}

TEST_F(StationDriverTest, NewScanReplacesTheArmedBatch) {
  CapturingSink sink;
  auto driver = make(config(k_intake));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scanner->scan("urn:example:batch:0001", "batch");
  m_scanner->scan("urn:example:batch:0001", "batch");  // read twice: not a miss
  m_scanner->scan("urn:example:batch:0002", "batch");
  ASSERT_TRUE(wait_state(*driver, "waiting for the weight of urn:example:batch:0002"));
  m_scale->weigh(2.2);
  auto events = sink.wait_for(1);
  ASSERT_TRUE(wait_state(*driver, "1 recorded"));
  const DriverHealth health = driver->health();
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["resourceInventoriedAs"], "urn:example:batch:0002");
  EXPECT_NE(health.state.find("1 scan(s) without weight"), std::string::npos) << health.state;
  EXPECT_EQ(health.malformed, 1u);
}

TEST_F(StationDriverTest, CountOnlyStationRecordsOnePerBatchScan) {
  CapturingSink sink;
  auto driver =
      make(config("[[driver]]\nkind = \"station\"\nname = \"shelf\"\naction = \"transfer\"\n"
                  "scanner = \"/dev/input/by-id/usb-Example_Scanner-event-kbd\"\n" +
                  k_patterns));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  EXPECT_EQ(m_scale, nullptr) << "a count-only station opens no scale";
  m_scanner->scan("urn:example:batch:0007", "batch");
  m_scanner->scan("WEB+SPOOLMAN:S-3", "spool");
  m_scanner->scan("urn:example:batch:0008", "batch");
  auto events = sink.wait_for(2);
  driver->stop();
  ASSERT_EQ(events.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    const ordered_json& e = events[i].fields;
    EXPECT_TRUE(validate_submission(e));
    EXPECT_TRUE(vf::check_zenflows_rules(e)) << e.dump();
    EXPECT_EQ(e["action"], "transfer");
    EXPECT_EQ(e["resourceQuantity"].dump(), R"({"hasNumericalValue":1.0,"hasUnit":"one"})");
    EXPECT_EQ(e["meta"]["method"], "counted");
    EXPECT_EQ(events[i].source.ref, fmt::format("record {}", i + 1));
  }
  EXPECT_EQ(events[0].fields["resourceInventoriedAs"], "urn:example:batch:0007");
  EXPECT_EQ(events[1].fields["resourceInventoriedAs"], "urn:example:batch:0008");
}

// After an intake into "{batch}@fablab-recycling", a hand-over station names that resource as
// the giver's and the next group's as the receiver's, every `{batch}` replaced.
TEST_F(StationDriverTest, ResourceAndToResourceNameBothSidesOfAHandOver) {
  CapturingSink sink;
  auto driver = make(
      config("[[driver]]\nkind = \"station\"\nname = \"hand-over\"\naction = \"transferCustody\"\n"
             "provider = \"agent:fablab-recycling\"\nreceiver = \"agent:shredder-crew\"\n"
             "resource = \"{batch}@fablab-recycling\"\n"
             "to_resource = \"{batch}@shredder-crew/{batch}\"\n"
             "scanner = \"/dev/input/by-id/usb-Example_Scanner-event-kbd\"\n" +
             k_patterns));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scanner->scan("urn:example:batch:0007", "batch");
  auto events = sink.wait_for(1);
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  const ordered_json& e = events[0].fields;
  EXPECT_TRUE(validate_submission(e)) << e.dump();
  EXPECT_TRUE(vf::check_zenflows_rules(e)) << e.dump();
  EXPECT_EQ(e["resourceInventoriedAs"], "urn:example:batch:0007@fablab-recycling");
  EXPECT_EQ(e["toResourceInventoriedAs"],
            "urn:example:batch:0007@shredder-crew/urn:example:batch:0007");
}

const std::string k_shredder =
    "[[driver]]\nkind = \"station\"\nname = \"shredder\"\nprocess = \"shred\"\n"
    "provider = \"agent:fablab-recycling\"\nreceiver = \"agent:fablab-recycling\"\n"
    "at_location = \"place:fablab-shredder\"\nresource = \"{batch}@fablab-recycling\"\n"
    "output_label = \"flakes\"\noutput_conforms_to = \"pet-flakes\"\n"
    "scanner = \"/dev/ttyACM0\"\nscanner_patterns = \"\"\"\n"
    "batch = ^urn:example:batch:[0-9]+$\nflakes = ^urn:example:flakes:[0-9]+$\n\"\"\"\n"
    "scale = \"/dev/ttyUSB0\"\nscale_resolution = 0.005\n";

// A shredder (issue 16): scan and weigh the inputs, then the outputs; each a consume (inputOf) or
// produce (outputOf) of one process; the next input after an output opens the next process.
TEST_F(StationDriverTest, ProcessStationConsumesInputsAndProducesOutputsOfOneProcess) {
  CapturingSink sink;
  auto driver = make(config(k_shredder));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  ASSERT_TRUE(wait_state(*driver, "(no process open: scan an input)"));
  auto record = [&](std::string code, std::string label, double kg) {
    m_scanner->scan(std::move(code), std::move(label));
    m_scale->weigh(kg);
  };
  record("urn:example:batch:1", "batch", 2.4);
  record("urn:example:batch:2", "batch", 1.1);
  record("urn:example:flakes:1", "flakes", 3.3);
  ASSERT_TRUE(wait_state(*driver, "(process station:test-01:shredder:shred-1: outputs)"));
  record("urn:example:batch:3", "batch", 5.0);  // the next process
  auto events = sink.wait_for(4);
  ASSERT_TRUE(wait_state(*driver, "(process station:test-01:shredder:shred-2: inputs)"));
  driver->stop();

  ASSERT_EQ(events.size(), 4u);
  for (const auto& ev : events) {
    EXPECT_TRUE(validate_submission(ev.fields)) << ev.fields.dump();
    EXPECT_TRUE(vf::check_zenflows_rules(ev.fields))
        << vf::check_zenflows_rules(ev.fields).error().message;
    EXPECT_EQ(ev.fields["provider"], "agent:fablab-recycling");
    EXPECT_EQ(ev.fields["receiver"], "agent:fablab-recycling");
    EXPECT_EQ(ev.fields["atLocation"], "place:fablab-shredder");
  }
  const ordered_json& in1 = events[0].fields;
  EXPECT_EQ(in1["action"], "consume");
  EXPECT_EQ(in1["resourceInventoriedAs"], "urn:example:batch:1@fablab-recycling");
  EXPECT_EQ(in1["resourceQuantity"].dump(), R"({"hasNumericalValue":2.4,"hasUnit":"kilogram"})");
  EXPECT_EQ(in1["inputOf"], "station:test-01:shredder:shred-1");
  EXPECT_FALSE(in1.contains("outputOf"));
  EXPECT_EQ(in1["meta"]["role"], "input");
  EXPECT_EQ(events[1].fields["inputOf"], "station:test-01:shredder:shred-1");
  const ordered_json& out = events[2].fields;
  EXPECT_EQ(out["action"], "produce");
  EXPECT_EQ(out["resourceInventoriedAs"], "urn:example:flakes:1");
  EXPECT_EQ(out["resourceConformsTo"], "pet-flakes");
  EXPECT_EQ(out["resourceQuantity"]["hasNumericalValue"].dump(), "3.3");
  EXPECT_EQ(out["outputOf"], "station:test-01:shredder:shred-1");
  EXPECT_FALSE(out.contains("inputOf"));
  EXPECT_EQ(out["meta"]["role"], "output");
  EXPECT_EQ(events[3].fields["inputOf"], "station:test-01:shredder:shred-2");
  EXPECT_EQ(events[3].source.ref, "record 4");

  auto state = load_driver_state(m_dir.path() / "state.json");
  ASSERT_TRUE(state) << state.error().message;
  EXPECT_EQ((*state)["next_process"], 3);
  EXPECT_EQ((*state)["open_process"], 2);
  EXPECT_EQ((*state)["open_process_ref"], "station:test-01:shredder:shred-2");
  EXPECT_EQ((*state)["outputs_started"], false);
}

// Two sites' stations of the same name make different processes: the device id is in the
// reference (the node's export makes one zenflows Process per reference).
TEST_F(StationDriverTest, ProcessReferencesOfSameNamedStationsOnTwoDevicesDiffer) {
  StationConfig here = config(k_shredder);
  StationConfig there = here;
  there.device_id = "other-site-02";
  EXPECT_EQ(process_reference(here, 7), "station:test-01:shredder:shred-7");
  EXPECT_EQ(process_reference(there, 7), "station:other-site-02:shredder:shred-7");
}

// A process opened before references carried the device id (state.json without
// open_process_ref) keeps its old reference until it ends, so that its inputs and outputs stay
// in one process; the next process gets the new reference.
TEST_F(StationDriverTest, ProcessOpenedBeforeTheUpgradeKeepsItsOldReferenceUntilItEnds) {
  ASSERT_TRUE(save_driver_state(
      m_dir.path() / "state.json",
      {{"next_record", 3}, {"next_process", 4}, {"open_process", 3}, {"outputs_started", false}}));
  CapturingSink sink;
  auto driver = make(config(k_shredder));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  ASSERT_TRUE(wait_state(*driver, "(process station:shredder:shred-3: inputs)"));
  m_scanner->scan("urn:example:flakes:9", "flakes");
  m_scale->weigh(1.5);
  m_scanner->scan("urn:example:batch:10", "batch");
  m_scale->weigh(2.5);
  auto events = sink.wait_for(2);
  ASSERT_TRUE(wait_state(*driver, "(process station:test-01:shredder:shred-4: inputs)"));
  driver->stop();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].fields["outputOf"], "station:shredder:shred-3");
  EXPECT_EQ(events[1].fields["inputOf"], "station:test-01:shredder:shred-4");
}

// The open process survives a restart: outputs weighed after it go out of the same process.
TEST_F(StationDriverTest, ProcessStationKeepsItsOpenProcessAcrossARestart) {
  {
    CapturingSink sink;
    auto driver = make(config(k_shredder));
    ASSERT_TRUE(driver->start(sink, m_dir.path()));
    m_scanner->scan("urn:example:batch:7", "batch");
    m_scale->weigh(2.0);
    ASSERT_EQ(sink.wait_for(1).size(), 1u);
    ASSERT_TRUE(wait_state(*driver, "1 recorded"));
    driver->stop();
  }
  CapturingSink sink;
  auto driver = make(config(k_shredder));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  ASSERT_TRUE(wait_state(*driver, "(process station:test-01:shredder:shred-1: inputs)"));
  m_scanner->scan("urn:example:flakes:7", "flakes");
  m_scale->weigh(1.9);
  auto events = sink.wait_for(1);
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["action"], "produce");
  EXPECT_EQ(events[0].fields["outputOf"], "station:test-01:shredder:shred-1");
  EXPECT_EQ(events[0].source.ref, "record 2");
}

const std::string k_extruder =
    "[[driver]]\nkind = \"station\"\nname = \"extruder\"\nprocess = \"extrude\"\n"
    "provider = \"agent:fablab-recycling\"\nreceiver = \"agent:fablab-recycling\"\n"
    "machine = \"machine:extruder-01\"\nbatch_label = \"flakes\"\noutput_label = \"spool\"\n"
    "output_conforms_to = \"pet-filament\"\nscanner = \"/dev/ttyACM0\"\nscanner_patterns = \"\"\"\n"
    "flakes = ^urn:example:flakes:[0-9]+$\nspool = ^urn:example:spool:[0-9]+$\n\"\"\"\n"
    "scale = \"/dev/ttyUSB0\"\nscale_resolution = 0.005\n";

// An extruder with `machine` (issue 16): each output also records the machine's use, an input of
// the process for the hours since the first input or the previous output, valid per zenflows'
// rules (valueflows.md §2c: inputOf, effortQuantity, the resource used).
TEST_F(StationDriverTest, ProcessStationWithMachineRecordsItsUseInHoursBeforeEachOutput) {
  CapturingSink sink;
  auto driver = make(config(k_extruder));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scanner->scan("urn:example:flakes:7", "flakes");
  m_scale->weigh(12.5);
  ASSERT_EQ(sink.wait_for(1).size(), 1u);
  advance(90 * 60 * 1000);  // 1.5 h of extruding
  m_scanner->scan("urn:example:spool:3", "spool");
  m_scale->weigh(1.2);
  ASSERT_EQ(sink.wait_for(3).size(), 3u);
  advance(20 * 60 * 1000 + 1);  // and a second spool
  m_scanner->scan("urn:example:spool:4", "spool");
  m_scale->weigh(1.1);
  auto events = sink.wait_for(5);
  driver->stop();

  ASSERT_EQ(events.size(), 5u);
  std::vector<std::string> actions;
  for (const auto& ev : events) {
    actions.push_back(ev.fields["action"]);
    EXPECT_TRUE(validate_submission(ev.fields)) << ev.fields.dump();
    EXPECT_TRUE(vf::check_zenflows_rules(ev.fields))
        << vf::check_zenflows_rules(ev.fields).error().message;
  }
  EXPECT_EQ(actions, (std::vector<std::string>{"consume", "use", "produce", "use", "produce"}));
  const std::string process = "station:test-01:extruder:extrude-1";
  const ordered_json& use = events[1].fields;
  EXPECT_EQ(use.dump(),
            R"({"action":"use","resourceInventoriedAs":"machine:extruder-01",)"
            R"("effortQuantity":{"hasNumericalValue":1.5,"hasUnit":"hour"},)"
            R"("hasBeginning":"2026-01-01T00:00:00.000Z","hasEnd":"2026-01-01T01:30:00.000Z",)"
            R"("inputOf":"station:test-01:extruder:extrude-1","provider":"agent:fablab-recycling",)"
            R"("receiver":"agent:fablab-recycling","meta":{"station":"extruder","record":2,)"
            R"("role":"machine","method":"timed"}})");
  EXPECT_EQ(events[1].source.ref, "record 2");
  EXPECT_EQ(events[2].fields["outputOf"], process);
  EXPECT_EQ(events[2].fields["hasPointInTime"], "2026-01-01T01:30:00.000Z");
  const ordered_json& second = events[3].fields;
  EXPECT_EQ(second["inputOf"], process);
  EXPECT_EQ(second["hasBeginning"], "2026-01-01T01:30:00.000Z");
  EXPECT_EQ(second["hasEnd"], "2026-01-01T01:50:00.001Z");
  // 20 min and 1 ms: nine decimals of an hour keep the millisecond.
  EXPECT_EQ(second["effortQuantity"]["hasNumericalValue"].get<double>(), 0.333333611);

  auto state = load_driver_state(m_dir.path() / "state.json");
  ASSERT_TRUE(state) << state.error().message;
  EXPECT_EQ((*state)["machine_since"], k_start_unix_ms + 110 * 60 * 1000 + 1);
}

// The machine's use is checked at start-up like every event the station makes.
TEST_F(StationDriverTest, MachineIsForProcessStationsAndMustBeAResource) {
  const Error one_action = config_error(k_intake + "machine = \"machine:x\"\n");
  EXPECT_NE(one_action.message.find("driver.intake.machine"), std::string::npos)
      << one_action.message;
  EXPECT_NE(one_action.message.find("process station only"), std::string::npos)
      << one_action.message;
}

TEST_F(StationDriverTest, ProcessStationOutputBeforeAnyInputRecordsNothing) {
  CapturingSink sink;
  auto driver = make(config(k_shredder));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scanner->scan("urn:example:flakes:1", "flakes");
  ASSERT_TRUE(wait_state(*driver, "waiting for a batch scan"));
  m_scale->weigh(3.0);  // nothing armed: a weight without scan too
  ASSERT_TRUE(wait_state(*driver, "1 weight(s) without scan"));
  const DriverHealth health = driver->health();
  driver->stop();
  EXPECT_TRUE(sink.events().empty());
  EXPECT_EQ(health.malformed, 2u);
  EXPECT_NE(health.state.find("no process open"), std::string::npos) << health.state;
}

TEST_F(StationDriverTest, WithoutPatternsEveryCodeIsABatch) {
  CapturingSink sink;
  auto driver =
      make(config("[[driver]]\nkind = \"station\"\nname = \"s\"\naction = \"transferCustody\"\n"
                  "scanner = \"/dev/ttyACM0\"\nscale = \"/dev/ttyUSB0\"\n"));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scanner->scan("4006381333931", "code");
  m_scale->weigh(0.25);
  auto events = sink.wait_for(1);
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["resourceInventoriedAs"], "4006381333931");
}

TEST_F(StationDriverTest, FeedbackPlaysArmedOkAndErrorPatterns) {
  CapturingSink sink;
  auto driver = make(config(k_intake + "led_line = \"GPIO22\"\nbuzzer_line = \"GPIO23\"\n"
                                       "buzzer_active = \"low\"\n"));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  ASSERT_TRUE(m_outputs.wait_for(2));  // both lines off at start
  {
    std::lock_guard lock(m_outputs.mutex);
    ASSERT_EQ(m_outputs.requests.size(), 2u);
    EXPECT_EQ(m_outputs.requests[0].line, "GPIO22");
    EXPECT_FALSE(m_outputs.requests[0].active_low);
    EXPECT_EQ(m_outputs.requests[1].line, "GPIO23");
    EXPECT_TRUE(m_outputs.requests[1].active_low);
    EXPECT_EQ(m_outputs.requests[1].consumer, "reflow-agent/intake");
  }
  // Moves time to `at_ms` (never past a change) and waits until `count` sets were made.
  auto step = [&](std::int64_t at_ms, std::size_t count) {
    if (at_ms > elapsed_ms()) advance(at_ms - elapsed_ms());
    ASSERT_TRUE(m_outputs.wait_for(count)) << "at " << at_ms << " ms";
  };
  m_scanner->scan(std::string(k_batch), "batch");  // armed: slow blink and a chirp
  step(0, 4);
  step(50, 5);          // chirp ends
  m_scale->weigh(5.0);  // committed at once: ok, 2 s light and a 200 ms beep
  step(50, 6);
  step(250, 7);
  step(2'050, 8);
  m_scale->weigh(6.0);  // a weight without a scan: error, fast blinks and three beeps
  step(2'050, 10);
  for (auto [t, count] : std::vector<std::pair<std::int64_t, std::size_t>>{{2'150, 12},
                                                                           {2'250, 14},
                                                                           {2'350, 16},
                                                                           {2'450, 18},
                                                                           {2'550, 20},
                                                                           {2'650, 21},
                                                                           {2'750, 22},
                                                                           {2'850, 23},
                                                                           {2'950, 24}})
    step(t, count);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  driver->stop();

  using Set = OutputLog::Set;
  EXPECT_EQ(m_outputs.of("GPIO22"), (std::vector<Set>{{"GPIO22", false, 0},
                                                      {"GPIO22", true, 0},
                                                      {"GPIO22", false, 2'050},
                                                      {"GPIO22", true, 2'050},
                                                      {"GPIO22", false, 2'150},
                                                      {"GPIO22", true, 2'250},
                                                      {"GPIO22", false, 2'350},
                                                      {"GPIO22", true, 2'450},
                                                      {"GPIO22", false, 2'550},
                                                      {"GPIO22", true, 2'650},
                                                      {"GPIO22", false, 2'750},
                                                      {"GPIO22", true, 2'850},
                                                      {"GPIO22", false, 2'950}}));
  EXPECT_EQ(m_outputs.of("GPIO23"), (std::vector<Set>{{"GPIO23", false, 0},
                                                      {"GPIO23", true, 0},
                                                      {"GPIO23", false, 50},
                                                      {"GPIO23", true, 50},
                                                      {"GPIO23", false, 250},
                                                      {"GPIO23", true, 2'050},
                                                      {"GPIO23", false, 2'150},
                                                      {"GPIO23", true, 2'250},
                                                      {"GPIO23", false, 2'350},
                                                      {"GPIO23", true, 2'450},
                                                      {"GPIO23", false, 2'550}}));
}

TEST_F(StationDriverTest, RecordNotCommittedAtStopIsSubmittedOnceAfterRestart) {
  std::vector<ordered_json> first;
  {
    CapturingSink holding(/*hold_answers=*/true);
    auto driver = make(config(k_intake));
    ASSERT_TRUE(driver->start(holding, m_dir.path()));
    m_scanner->scan(std::string(k_batch), "batch");
    m_scale->weigh(3.0);
    ASSERT_EQ(holding.wait_for(1).size(), 1u);  // submitted, never committed
    driver->stop();
    first = holding.lines();
  }
  auto state = load_driver_state(m_dir.path() / "state.json");
  ASSERT_TRUE(state) << state.error().message;
  EXPECT_EQ((*state)["next_record"], 2);
  ASSERT_EQ((*state)["unsent"].size(), 1u);
  EXPECT_EQ((*state)["unsent"][0]["ref"], "record 1");

  {
    CapturingSink sink;
    auto driver = make(config(k_intake));
    ASSERT_TRUE(driver->start(sink, m_dir.path()));
    auto events = sink.wait_for(1);
    ASSERT_TRUE(wait_state(*driver, "1 recorded"));
    driver->stop();
    EXPECT_EQ(sink.lines(), first) << "the same event, byte for byte";
  }
  state = load_driver_state(m_dir.path() / "state.json");
  ASSERT_TRUE(state);
  EXPECT_TRUE((*state)["unsent"].empty());

  CapturingSink after;  // committed now: a further restart repeats nothing, numbers go on
  auto driver = make(config(k_intake));
  ASSERT_TRUE(driver->start(after, m_dir.path()));
  m_scanner->scan("urn:example:batch:0043", "batch");
  m_scale->weigh(4.0);
  auto events = after.wait_for(1);
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].source.ref, "record 2");
  EXPECT_EQ(events[0].fields["resourceInventoriedAs"], "urn:example:batch:0043");
}

// A sink whose answers the test gives by hand, also after the driver stopped.
class ManualSink final : public EventSink {
 public:
  Status submit(ordered_json fields, EventSource source, SubmitCallback done, QueueFull) override {
    if (Status valid = validate_submission(fields); !valid) return valid;
    std::lock_guard lock(m_mutex);
    m_calls.push_back({std::move(fields), std::move(source), std::move(done)});
    m_changed.notify_all();
    return {};
  }
  bool wait_for(std::size_t n) {
    std::unique_lock lock(m_mutex);
    return m_changed.wait_for(lock, std::chrono::seconds(30), [&] { return m_calls.size() >= n; });
  }
  void answer(std::size_t i, Result<Committed> result) {
    SubmitCallback done;
    {
      std::lock_guard lock(m_mutex);
      done = m_calls.at(i).done;
    }
    done(std::move(result));
  }

 private:
  struct Call {
    ordered_json fields;
    EventSource source;
    SubmitCallback done;
  };
  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::vector<Call> m_calls;
};

TEST_F(StationDriverTest, CommitAnsweredAfterStopIsNotSubmittedAgain) {
  ManualSink manual;
  {
    auto driver = make(config(k_intake));
    ASSERT_TRUE(driver->start(manual, m_dir.path()));
    m_scanner->scan(std::string(k_batch), "batch");
    m_scale->weigh(3.0);
    ASSERT_TRUE(manual.wait_for(1));
    driver->stop();
  }
  manual.answer(0, Committed{1, "01J"});  // the agent's writer commits it during shutdown
  CapturingSink sink;
  auto driver = make(config(k_intake));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scanner->scan("urn:example:batch:0043", "batch");
  m_scale->weigh(4.0);
  auto events = sink.wait_for(1);
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].source.ref, "record 2");
}

TEST_F(StationDriverTest, RefusedRecordIsRetriedUntilCommitted) {
  CapturingSink sink;
  sink.set_refuse(true);  // the agent's queue is full
  auto driver = make(config(k_intake));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  m_scanner->scan(std::string(k_batch), "batch");
  m_scale->weigh(3.0);
  ASSERT_TRUE(sink.wait_for_attempts(1));
  ASSERT_TRUE(wait_state(*driver, "waiting for a batch scan"));
  EXPECT_TRUE(sink.events().empty());
  sink.set_refuse(false);
  advance(1'000);  // the first retry
  auto events = sink.wait_for(1);
  ASSERT_TRUE(wait_state(*driver, "1 recorded"));
  const DriverHealth health = driver->health();
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].source.ref, "record 1");
  EXPECT_EQ(health.errors, 1u);
}

TEST_F(StationDriverTest, CorruptStateRefusesToStartRatherThanGuess) {
  ASSERT_TRUE(
      save_driver_state(m_dir.path() / "state.json",
                        {{"next_process", 2}, {"open_process", 1}, {"open_process_ref", 7}}));
  {
    CapturingSink sink;
    auto driver = make(config(k_shredder));
    auto started = driver->start(sink, m_dir.path());
    ASSERT_FALSE(started);
    EXPECT_NE(started.error().message.find("open_process_ref"), std::string::npos)
        << started.error().message;
  }
  ASSERT_TRUE(save_driver_state(m_dir.path() / "state.json", {{"unsent", {{{"record", 1}}}}}));
  CapturingSink sink;
  auto driver = make(config(k_intake));
  Status started = driver->start(sink, m_dir.path());
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, ErrorCode::corruption);
}

TEST_F(StationDriverTest, ConfigErrorsNameTheKey) {
  const std::string base =
      "[[driver]]\nkind = \"station\"\nname = \"s\"\nscanner = \"/dev/ttyACM0\"\n";
  EXPECT_NE(config_error(base + "scale = \"/dev/ttyUSB0\"\n").message.find("action"),
            std::string::npos);
  const Error use = config_error(base + "action = \"use\"\nscale = \"/dev/ttyUSB0\"\n");
  EXPECT_NE(use.message.find("driver.s.action"), std::string::npos) << use.message;
  EXPECT_NE(use.message.find("effortQuantity"), std::string::npos) << use.message;
  EXPECT_NE(config_error(base + "action = \"transfer\"\nscale_protocol = \"st_gs\"\n")
                .message.find("scale_protocol"),
            std::string::npos);
  EXPECT_NE(config_error(base + "action = \"transfer\"\ntare = 2\n").message.find("tare"),
            std::string::npos);
  EXPECT_NE(config_error(base + "action = \"transfer\"\nbatch_label = \"lot\"\n" + k_patterns)
                .message.find("batch_label"),
            std::string::npos);
  EXPECT_NE(config_error(base + "action = \"transfer\"\nscale = \"/dev/ttyUSB0\"\nunit = \"lb\"\n")
                .message.find("unit"),
            std::string::npos);
  EXPECT_NE(
      config_error(base + "action = \"transfer\"\nscale = \"/dev/ttyUSB0\"\nwindow = \"0s\"\n")
          .message.find("window"),
      std::string::npos);
  EXPECT_NE(config_error(base + "action = \"transfer\"\nled_line = \"GPIO5\"\n"
                                "buzzer_line = \"GPIO5\"\n")
                .message.find("buzzer_line"),
            std::string::npos);
  EXPECT_NE(config_error(base + "action = \"transfer\"\nbogus = 1\n").message.find("bogus"),
            std::string::npos);
  // to_resource: only where the batch goes into another resource, and not the batch itself.
  const Error into = config_error(base + "action = \"consume\"\nto_resource = \"stock:pet\"\n");
  EXPECT_NE(into.message.find("driver.s.to_resource"), std::string::npos) << into.message;
  EXPECT_NE(into.message.find("\"consume\""), std::string::npos) << into.message;
  EXPECT_NE(config_error(base + "action = \"transfer\"\nto_resource = \"{batch}\"\n")
                .message.find("to_resource"),
            std::string::npos);
  EXPECT_NE(config_error(base + "action = \"transfer\"\nresource = \"\"\n")
                .message.find("driver.s.resource"),
            std::string::npos);
  // A consume or produce needs a process (zenflows, valueflows.md §2c): a process station.
  const Error consume = config_error(base + "action = \"consume\"\n");
  EXPECT_NE(consume.message.find("driver.s.action"), std::string::npos) << consume.message;
  EXPECT_NE(consume.message.find("inputOf"), std::string::npos) << consume.message;
  EXPECT_NE(consume.message.find("set process"), std::string::npos) << consume.message;
  EXPECT_NE(config_error(base + "action = \"accept\"\n").message.find("inputOf"),
            std::string::npos);
  const std::string shredder = base + "process = \"shred\"\n" + k_patterns;
  EXPECT_NE(config_error(shredder + "output_conforms_to = \"pet-flakes\"\n")
                .message.find("driver.s.output_label"),
            std::string::npos);
  EXPECT_NE(config_error(shredder + "output_label = \"spool\"\n")
                .message.find("driver.s.output_conforms_to"),
            std::string::npos);
  EXPECT_NE(
      config_error(shredder + "output_label = \"flakes\"\noutput_conforms_to = \"pet-flakes\"\n")
          .message.find("no scanner pattern is named \"flakes\""),
      std::string::npos);
  EXPECT_NE(config_error(shredder + "output_label = \"batch\"\noutput_conforms_to = \"x\"\n")
                .message.find("must differ from batch_label"),
            std::string::npos);
  EXPECT_NE(config_error(shredder + "action = \"consume\"\noutput_label = \"spool\"\n"
                                    "output_conforms_to = \"x\"\n")
                .message.find("driver.s.action"),
            std::string::npos);
  EXPECT_NE(config_error(shredder + "output_label = \"spool\"\noutput_conforms_to = \"x\"\n"
                                    "provider = \"agent:a\"\nreceiver = \"agent:b\"\n")
                .message.find("must be the same agent"),
            std::string::npos);
  EXPECT_NE(config_error(base + "process = \"shred it\"\n").message.find("driver.s.process"),
            std::string::npos);
  EXPECT_NE(config_error(base + "action = \"transfer\"\noutput_label = \"spool\"\n")
                .message.find("process station only"),
            std::string::npos);
  EXPECT_NE(config_error(base).message.find("driver.s.action"), std::string::npos);
  // tare = 0 is the default spelled out, and allowed.
  EXPECT_EQ(config(base + "action = \"transfer\"\nscale = \"/dev/ttyUSB0\"\ntare = 0\n").tare_kg,
            0);
}

TEST_F(StationDriverTest, KindDescribesTheScannerAndScaleKeysWithTheirPrefixes) {
  const auto& keys = station_driver_kind().keys();
  auto has = [&](std::string_view name) {
    return std::any_of(keys.begin(), keys.end(),
                       [&](const DriverKeyInfo& k) { return k.key == name; });
  };
  for (std::string_view name :
       {"action", "process", "output_label", "output_resource", "output_conforms_to", "window",
        "tare", "unit", "batch_label", "led_line", "buzzer_line", "scanner", "scanner_mode",
        "scanner_patterns", "scale", "scale_protocol"})
    EXPECT_TRUE(has(name)) << name;
}

}  // namespace
}  // namespace station
}  // namespace agent
