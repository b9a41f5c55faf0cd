// SPDX-License-Identifier: AGPL-3.0-or-later
// The gpio driver through its EdgeSource seam: recorded edge sequences replayed on FakeEnv time
// (bouncing contacts, long sessions across a restart, S0 pulses), and the real libgpiod backend
// where this machine allows it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include <reflow/device/config.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/drivers/driver_state.hpp>
#include <reflow/drivers/valueflows.hpp>

#include "capturing_sink.hpp"
#include "files.hpp"
#include "gpio_driver.hpp"
#include "replay_edge_source.hpp"
#include "temp_dir.hpp"

namespace agent {
const DriverKind& gpio_driver_kind();

namespace gpio {
namespace {

const std::filesystem::path k_testdata =
    std::filesystem::path(REFLOW_SOURCE_DIR) / "drivers" / "gpio" / "testdata";
constexpr std::int64_t k_start_unix_ms = 1'767'225'600'000;  // FakeEnv's 2026-01-01T00:00:00Z

using reflow_test::read_text;

std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

Result<AgentConfig> agent_config(const std::string& driver_tables) {
  return parse_config(
      "[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"/tmp/d\"\n\n" +
          driver_tables,
      "driver.toml");
}

using reflow_test::CapturingSink;

class GpioDriverTest : public ::testing::Test {
 protected:
  GpioConfig config(const std::string& table) {
    auto parsed = agent_config(table);
    EXPECT_TRUE(parsed) << parsed.error().message;
    if (!parsed) return {};
    auto gpio = parse_gpio_config(parsed->drivers.at(0));
    EXPECT_TRUE(gpio) << gpio.error().message;
    return gpio ? *gpio : GpioConfig{};
  }

  std::unique_ptr<Driver> make(GpioConfig gpio, EdgeRecording recording) {
    return make_gpio_driver(
        std::move(gpio), m_env, m_log,
        [this, recording](const LineRequest& request) -> Result<std::unique_ptr<EdgeSource>> {
          m_requests.push_back(request);
          return std::make_unique<ReplayEdgeSource>(recording, m_env, &m_monitor);
        });
  }

  // Moves FakeEnv time forward in steps, each once the driver has taken in everything up to the
  // current time and waits for the clock (ReplayMonitor says why wait_for_sleepers() is not
  // enough), and returns once it has taken in the last step too. The driver works on edge
  // timestamps, so the outcome does not depend on the step size.
  void advance(std::int64_t total_ms, std::int64_t step_ms = 1000) {
    for (std::int64_t done = 0; done < total_ms; done += step_ms) {
      ASSERT_TRUE(m_monitor.wait_idle_at(m_env.steady_now()));
      m_env.advance_ms(step_ms);
    }
    ASSERT_TRUE(m_monitor.wait_idle_at(m_env.steady_now()));
  }

  // Waits (bounded) until the driver reports `text` in its health state: the way to know it has
  // processed the edges so far before the test stops it.
  static bool wait_health(const Driver& driver, std::string_view text) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (driver.health().state.find(text) == std::string::npos) {
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::yield();
    }
    return true;
  }

  // Runs testdata/<name>: driver.toml, edges.jsonl → the events in expected.jsonl, exactly.
  std::vector<CapturingSink::Event> run_golden(const std::string& name) {
    const auto dir = k_testdata / name;
    auto recording = load_edge_recording(dir / "edges.jsonl");
    EXPECT_TRUE(recording) << recording.error().message;
    if (!recording) return {};
    const auto expected = read_jsonl(dir / "expected.jsonl");
    EXPECT_FALSE(expected.empty());
    const std::int64_t last_ms = recording->edges.back().timestamp_ns / 1'000'000;
    CapturingSink sink;
    auto driver = make(config(read_text(dir / "driver.toml")), *recording);
    EXPECT_TRUE(driver->start(sink, m_dir.path()));
    advance(last_ms + 20 * 60 * 1000);  // past the recording, a report period and min_on
    auto events = sink.wait_for(expected.size());
    EXPECT_TRUE(m_env.wait_for_sleepers(1));
    driver->stop();
    events = sink.wait_for(expected.size());
    EXPECT_EQ(events.size(), expected.size());
    for (std::size_t i = 0; i < std::min(events.size(), expected.size()); ++i) {
      // Every event is one zenflows records: its process link, what its action needs.
      Status zenflows = vf::check_zenflows_rules(nlohmann::ordered_json::parse(expected[i].dump()));
      EXPECT_TRUE(zenflows) << name << " event " << i << ": " << zenflows.error().message;
      EXPECT_EQ(nlohmann::json::parse(events[i].fields.dump()), expected[i])
          << name << " event " << i;
      EXPECT_EQ(events[i].source.driver, "gpio");
    }
    return events;
  }

  reflow_test::TempDir m_dir;
  FakeEnv m_env;
  ReplayMonitor m_monitor;
  Logger m_log{LogLevel::error};
  std::vector<LineRequest> m_requests;
};

const std::string k_laser =
    "[[driver]]\nkind = \"gpio\"\nname = \"laser\"\nline = \"GPIO17\"\n"
    "resource = \"machine:laser-01\"\nactive = \"low\"\nbias = \"pull-up\"\n";

EdgeRecording recording(bool initially_active, std::vector<Edge> edges) {
  return EdgeRecording{initially_active, std::move(edges)};
}

constexpr std::int64_t k_s = 1'000'000'000;

TEST_F(GpioDriverTest, BouncingContactGivesOneSession) {
  auto events = run_golden("bouncing_contact");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].source.instance, "laser");
  EXPECT_EQ(events[0].source.ref, "session 1767225601020");
  ASSERT_FALSE(m_requests.empty());
  EXPECT_EQ(m_requests[0].line, "GPIO17");
  EXPECT_TRUE(m_requests[0].active_low);
  EXPECT_EQ(m_requests[0].bias, Bias::pull_up);
  EXPECT_EQ(m_requests[0].consumer, "reflow-agent/laser");
}

// Hands out one edge per wait() and moves the clock `lag_ms` past it before returning, as when
// the driver's thread is preempted between reading an edge and reading the clock while the next
// edge (a bounce) already waits unread; the clock never goes back. Once all edges are out it
// waits for the deadline.
class LaggingEdgeSource final : public EdgeSource {
 public:
  LaggingEdgeSource(std::vector<Edge> edges, FakeEnv& env, std::int64_t lag_ms)
      : m_edges(std::move(edges)), m_env(env), m_lag_ms(lag_ms) {}

  Result<bool> level() override { return false; }

  Result<std::vector<Edge>> wait(std::chrono::steady_clock::time_point deadline,
                                 std::stop_token stop) override {
    if (m_next < m_edges.size()) {
      const Edge edge = m_edges[m_next++];
      const std::int64_t now_ms =
          m_env.steady_now().time_since_epoch() / std::chrono::milliseconds(1);
      if (const std::int64_t ahead = edge.timestamp_ns / 1'000'000 + m_lag_ms - now_ms; ahead > 0)
        m_env.advance_ms(ahead);
      return std::vector<Edge>{edge};
    }
    if (m_env.steady_now() < deadline) m_env.sleep_until(deadline, stop);
    return std::vector<Edge>{};
  }

 private:
  std::vector<Edge> m_edges;
  FakeEnv& m_env;
  std::int64_t m_lag_ms;
  std::size_t m_next = 0;
};

TEST_F(GpioDriverTest, BounceReadLateDoesNotCutSession) {
  using namespace std::chrono_literals;
  constexpr std::int64_t k_ms = 1'000'000;
  ASSERT_EQ(m_env.steady_now().time_since_epoch(), 0ns);  // edge timestamps below are absolute
  const std::vector<Edge> edges{
      {Edge::Kind::rising, 1000 * k_ms},   {Edge::Kind::falling, 1010 * k_ms},
      {Edge::Kind::rising, 1020 * k_ms},   {Edge::Kind::falling, 30'000 * k_ms},
      {Edge::Kind::rising, 30'010 * k_ms}, {Edge::Kind::falling, 60'000 * k_ms},
  };
  CapturingSink sink;
  // debounce 50 ms; each edge is taken in 100 ms late, after the one that cancels it happened.
  auto driver =
      make_gpio_driver(config(k_laser + "debounce = \"50ms\"\nmin_on = \"1s\"\n"), m_env, m_log,
                       [&](const LineRequest&) -> Result<std::unique_ptr<EdgeSource>> {
                         return std::make_unique<LaggingEdgeSource>(edges, m_env, 100);
                       });
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  auto events = sink.wait_for(1);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));  // only the idle wait after the last edge sleeps
  driver->stop();
  events = sink.wait_for(1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["hasBeginning"], "2026-01-01T00:00:01.020Z");
  EXPECT_EQ(events[0].fields["hasEnd"], "2026-01-01T00:01:00.000Z");
}

TEST_F(GpioDriverTest, DropsBlipShorterThanMinOn) {
  run_golden("short_blip");
}

TEST_F(GpioDriverTest, PulsesGiveExactKilowattHours) {
  auto events = run_golden("pulses_exact");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].source.ref, "impulses 1-1500");
  EXPECT_EQ(events[0].source.instance, "meter");
}

TEST_F(GpioDriverTest, CountsBouncingPulsesOnceAndIgnoresSpikes) {
  auto events = run_golden("pulses_with_bounce");
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].source.ref, "impulses 1-4");
  EXPECT_EQ(events[1].source.ref, "impulses 5-10");
}

TEST_F(GpioDriverTest, ContinuesLongSessionAcrossRestart) {
  CapturingSink sink;
  {
    auto driver = make(config(k_laser), recording(false, {{Edge::Kind::rising, 1 * k_s}}));
    ASSERT_TRUE(driver->start(sink, m_dir.path()));
    advance(2 * 3600 * 1000, 60'000);
    ASSERT_TRUE(wait_health(*driver, "active since 2026-01-01T00:00:01.000Z"));
    driver->stop();
  }
  EXPECT_TRUE(sink.wait_for(0).empty()) << "a session still held at stop is not emitted";
  auto state = load_driver_state(m_dir.path() / "state.json");
  ASSERT_TRUE(state) << state.error().message;
  EXPECT_EQ((*state)["open_session"]["begin_unix_ms"], k_start_unix_ms + 1000);

  m_env.advance_ms(10 * 60 * 1000);  // the agent is down for ten minutes; the machine runs on
  auto driver = make(config(k_laser), recording(true, {{Edge::Kind::falling, 30 * 60 * k_s}}));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  advance(31 * 60 * 1000, 60'000);
  auto events = sink.wait_for(1);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  const auto& use = events[0].fields;
  EXPECT_EQ(use["hasBeginning"], "2026-01-01T00:00:01.000Z");
  EXPECT_EQ(use["hasEnd"], "2026-01-01T02:40:00.000Z");
  EXPECT_DOUBLE_EQ(use["effortQuantity"]["hasNumericalValue"].get<double>(),
                   9'599'000.0 / 3'600'000.0);
  EXPECT_EQ(use["meta"]["method"], "measured");
  EXPECT_EQ(use["inputOf"], "gpio:laser:job-1767225601000");
  state = load_driver_state(m_dir.path() / "state.json");
  ASSERT_TRUE(state);
  EXPECT_FALSE(state->contains("open_session"));
}

TEST_F(GpioDriverTest, SessionThatEndedWhileStoppedEndsAtLastSeenAsEstimated) {
  CapturingSink sink;
  {
    auto driver = make(config(k_laser), recording(false, {{Edge::Kind::rising, 1 * k_s}}));
    ASSERT_TRUE(driver->start(sink, m_dir.path()));
    advance(3600 * 1000, 60'000);
    ASSERT_TRUE(wait_health(*driver, "active since 2026-01-01T00:00:01.000Z"));
    driver->stop();
  }
  m_env.advance_ms(3600 * 1000);
  auto driver = make(config(k_laser), recording(false, {}));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  auto events = sink.wait_for(1);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["hasBeginning"], "2026-01-01T00:00:01.000Z");
  EXPECT_EQ(events[0].fields["hasEnd"], "2026-01-01T01:00:00.000Z");
  EXPECT_EQ(events[0].fields["meta"]["method"], "estimated");
}

TEST_F(GpioDriverTest, KeepsRefusedEventAcrossRestart) {
  CapturingSink sink;
  sink.set_refuse(true);
  {
    auto driver =
        make(config(k_laser),
             recording(false, {{Edge::Kind::rising, 1 * k_s}, {Edge::Kind::falling, 61 * k_s}}));
    ASSERT_TRUE(driver->start(sink, m_dir.path()));
    advance(70 * 1000);
    ASSERT_TRUE(sink.wait_for_attempts(1));
    ASSERT_TRUE(m_env.wait_for_sleepers(1));
    driver->stop();
  }
  EXPECT_TRUE(sink.wait_for(0).empty());
  sink.set_refuse(false);
  auto driver = make(config(k_laser), recording(false, {}));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  auto events = sink.wait_for(1);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["hasBeginning"], "2026-01-01T00:00:01.000Z");
  EXPECT_EQ(events[0].fields["hasEnd"], "2026-01-01T00:01:01.000Z");
  EXPECT_EQ(driver->health().events, 1u);
}

TEST_F(GpioDriverTest, KeepsCountedImpulsesAcrossRestart) {
  const std::string meter =
      "[[driver]]\nkind = \"gpio\"\nname = \"meter\"\nline = \"GPIO27\"\nmode = \"pulse\"\n"
      "resource = \"electricity:laser-circuit\"\nimpulses_per_kwh = 800\nreport_every = \"1h\"\n";
  std::vector<Edge> pulses;
  for (std::int64_t i = 1; i <= 4; ++i)
    pulses.push_back({Edge::Kind::rising, i * k_s}),
        pulses.push_back({Edge::Kind::falling, i * k_s + k_s / 10});
  CapturingSink sink;
  {
    auto driver = make(config(meter), recording(false, pulses));
    ASSERT_TRUE(driver->start(sink, m_dir.path()));
    advance(60 * 1000);
    ASSERT_TRUE(wait_health(*driver, "(4 this period)"));
    driver->stop();
  }
  EXPECT_TRUE(sink.wait_for(0).empty());
  auto driver = make(config(meter), recording(false, pulses));
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  advance(3600 * 1000, 60'000);
  auto events = sink.wait_for(1);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  driver->stop();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["meta"]["impulses"], 8);
  EXPECT_DOUBLE_EQ(events[0].fields["resourceQuantity"]["hasNumericalValue"].get<double>(),
                   8.0 / 800.0);
  EXPECT_EQ(events[0].fields["hasBeginning"], "2026-01-01T00:00:00.000Z");
  EXPECT_EQ(events[0].fields["hasEnd"], "2026-01-01T01:01:00.000Z");
  EXPECT_EQ(events[0].source.ref, "impulses 1-8");
}

TEST_F(GpioDriverTest, RejectsUnknownModeNamingFileLineAndKey) {
  auto parsed = agent_config(k_laser + "mode = \"pulses\"\n");
  ASSERT_TRUE(parsed) << parsed.error().message;
  auto gpio = parse_gpio_config(parsed->drivers.at(0));
  ASSERT_FALSE(gpio);
  EXPECT_EQ(gpio.error().code, ErrorCode::invalid_config);
  EXPECT_NE(gpio.error().message.find("driver.toml:13: driver.laser.mode: expected one of "
                                      "\"input\", \"pulse\"; got \"pulses\""),
            std::string::npos)
      << gpio.error().message;
}

TEST_F(GpioDriverTest, RequiresLineName) {
  auto parsed = agent_config("[[driver]]\nkind = \"gpio\"\nname = \"x\"\nresource = \"m\"\n");
  ASSERT_TRUE(parsed) << parsed.error().message;
  auto gpio = parse_gpio_config(parsed->drivers.at(0));
  ASSERT_FALSE(gpio);
  EXPECT_NE(gpio.error().message.find("driver.toml:6: driver.x.line: is required"),
            std::string::npos)
      << gpio.error().message;
}

// The real libgpiod backend: no line of this name exists here (nor on any sane machine).
TEST_F(GpioDriverTest, MissingLineIsDeviceUnavailableNamingLineAndGpioinfo) {
  auto parsed = agent_config(
      "[[driver]]\nkind = \"gpio\"\nname = \"door\"\nline = \"REFLOW-NO-SUCH-LINE\"\n"
      "resource = \"machine:door\"\n");
  ASSERT_TRUE(parsed) << parsed.error().message;
  auto driver = gpio_driver_kind().create(parsed->drivers.at(0), m_env, m_log);
  ASSERT_TRUE(driver) << driver.error().message;
  CapturingSink sink;
  Status started = (*driver)->start(sink, m_dir.path());
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, ErrorCode::device_unavailable);
  EXPECT_NE(started.error().message.find("\"REFLOW-NO-SUCH-LINE\""), std::string::npos)
      << started.error().message;
  EXPECT_NE(started.error().message.find("gpioinfo"), std::string::npos) << started.error().message;
  const DriverHealth health = (*driver)->health();
  EXPECT_EQ(health.errors, 1u);
  EXPECT_EQ(health.last_error, started.error().message);
  EXPECT_EQ(health.state, "waiting for line REFLOW-NO-SUCH-LINE");
  (*driver)->stop();
}

// The kernel's simulated GPIO chip (gpio-sim, Linux 5.19+) drives the real libgpiod path end to
// end. It needs CONFIG_GPIO_SIM, configfs mounted at /sys/kernel/config, and root.
class GpioSimTest : public ::testing::Test {
 protected:
  static constexpr const char* k_configfs = "/sys/kernel/config/gpio-sim";
};

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  ASSERT_TRUE(out.flush()) << "cannot write " << path;
}

TEST_F(GpioSimTest, RealLineGivesSession) {
  if (!std::filesystem::exists(k_configfs))
    GTEST_SKIP() << "this kernel has no gpio-sim (" << k_configfs
                 << " is missing: needs CONFIG_GPIO_SIM, `modprobe gpio-sim` and configfs); the "
                    "driver is covered through the EdgeSource seam instead";
  if (::geteuid() != 0) GTEST_SKIP() << "creating a gpio-sim chip needs root";

  const std::string line_name = fmt::format("REFLOW-SIM-{}", ::getpid());
  const std::filesystem::path chip = std::filesystem::path(k_configfs) / line_name;
  std::filesystem::create_directories(chip / "bank0" / "line0");
  write_file(chip / "bank0" / "num_lines", "1");
  write_file(chip / "bank0" / "line0" / "name", line_name);
  write_file(chip / "live", "1");
  const std::string dev_name =
      read_text(chip / "dev_name").substr(0, read_text(chip / "dev_name").find('\n'));
  const std::string chip_name = read_text(chip / "bank0" / "chip_name")
                                    .substr(0, read_text(chip / "bank0" / "chip_name").find('\n'));
  const auto pull =
      std::filesystem::path("/sys/devices/platform") / dev_name / chip_name / "sim_gpio0" / "pull";

  auto parsed = agent_config(fmt::format(
      "[[driver]]\nkind = \"gpio\"\nname = \"sim\"\nline = \"{}\"\nresource = \"machine:sim\"\n"
      "bias = \"pull-down\"\ndebounce = \"0ms\"\nmin_on = \"0s\"\n",
      line_name));
  ASSERT_TRUE(parsed) << parsed.error().message;
  Logger log(LogLevel::error);
  auto driver = gpio_driver_kind().create(parsed->drivers.at(0), Env::real(), log);
  ASSERT_TRUE(driver) << driver.error().message;
  reflow_test::TempDir dir;
  CapturingSink sink;
  ASSERT_TRUE((*driver)->start(sink, dir.path()));
  const auto wait_state = [&](std::string_view text) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while ((*driver)->health().state.find(text) == std::string::npos &&
           std::chrono::steady_clock::now() < until)
      std::this_thread::yield();
    return (*driver)->health().state.find(text) != std::string::npos;
  };
  ASSERT_TRUE(wait_state("inactive"));
  write_file(pull, "pull-up");
  ASSERT_TRUE(wait_state("active since"));
  const std::int64_t since = Env::real().now_unix_ms();
  while (Env::real().now_unix_ms() < since + 5)
    std::this_thread::yield();
  write_file(pull, "pull-down");
  auto events = sink.wait_for(1);
  (*driver)->stop();
  write_file(chip / "live", "0");
  std::filesystem::remove(chip / "bank0" / "line0");
  std::filesystem::remove(chip / "bank0");
  std::filesystem::remove(chip);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fields["action"], "use");
  EXPECT_EQ(events[0].fields["meta"]["line"], line_name);
}

}  // namespace
}  // namespace gpio
}  // namespace agent
