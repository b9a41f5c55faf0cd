// SPDX-License-Identifier: AGPL-3.0-or-later
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <reflow/device/config.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/drivers/valueflows.hpp>

#include "files.hpp"
#include "temp_dir.hpp"

namespace agent {
namespace {

const std::filesystem::path k_drivers_dir = std::filesystem::path(REFLOW_SOURCE_DIR) / "drivers";

using reflow_test::read_text;

// A config around a driver's sample.toml, parsed by the real config parser.
Result<AgentConfig> config_with(const std::string& driver_tables) {
  return parse_config(
      "[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"/tmp/d\"\n\n" +
          driver_tables,
      "sample.toml");
}

// Records submissions and commits each at once with the next seq.
class RecordingSink final : public EventSink {
 public:
  Status submit(nlohmann::ordered_json fields, EventSource source, SubmitCallback done,
                QueueFull) override {
    if (Status valid = validate_submission(fields); !valid) return valid;
    std::int64_t seq;
    {
      std::lock_guard lock(m_mutex);
      m_events.push_back({std::move(fields), std::move(source)});
      seq = static_cast<std::int64_t>(m_events.size());
    }
    m_changed.notify_all();
    done(Committed{seq, "id"});
    return {};
  }

  struct Event {
    nlohmann::ordered_json fields;
    EventSource source;
  };

  // Waits (bounded, for a condition) until `n` events arrived; returns them.
  std::vector<Event> wait_for(std::size_t n) {
    std::unique_lock lock(m_mutex);
    m_changed.wait_for(lock, std::chrono::seconds(30), [&] { return m_events.size() >= n; });
    return m_events;
  }

 private:
  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::vector<Event> m_events;
};

const DriverKind* kind_named(std::string_view name) {
  for (const DriverKind* kind : builtin_driver_kinds())
    if (kind->kind() == name) return kind;
  return nullptr;
}

TEST(DriverRegistryTest, EveryBuiltinKindHasSampleAndReadmeDocumentingEveryKey) {
  ASSERT_FALSE(builtin_driver_kinds().empty());
  for (const DriverKind* kind : builtin_driver_kinds()) {
    SCOPED_TRACE(std::string(kind->kind()));
    const auto dir = k_drivers_dir / std::string(kind->kind());
    const std::string readme = read_text(dir / "README.md");
    ASSERT_FALSE(readme.empty()) << "missing " << (dir / "README.md");
    for (const DriverKeyInfo& key : kind->keys())
      EXPECT_NE(readme.find(fmt::format("`{}`", key.key)), std::string::npos)
          << "README.md does not document `" << key.key << "`";

    auto config = config_with(read_text(dir / "sample.toml"));
    ASSERT_TRUE(config) << config.error().message;
    ASSERT_FALSE(config->drivers.empty());
    Logger log(LogLevel::error);
    for (const DriverConfig& dc : config->drivers) {
      EXPECT_EQ(dc.kind, kind->kind());
      auto driver = kind->create(dc, Env::real(), log);
      EXPECT_TRUE(driver) << driver.error().message;
    }
  }
}

TEST(DriverRegistryTest, KnownKindsNameTheirBuildOption) {
  for (const KnownDriverKind& known : known_driver_kinds())
    EXPECT_TRUE(known.cmake_option.starts_with("REFLOW_DRIVER_")) << known.kind;
}

class SimDriverTest : public ::testing::Test {
 protected:
  std::unique_ptr<Driver> make(const std::string& extra_keys) {
    auto config = config_with(
        "[[driver]]\nkind = \"sim\"\nname = \"p1\"\njob_duration = \"10s\"\n" + extra_keys);
    EXPECT_TRUE(config) << config.error().message;
    if (!config) return nullptr;
    auto driver = kind_named("sim")->create(config->drivers.at(0), m_env, m_log);
    EXPECT_TRUE(driver) << driver.error().message;
    return driver ? std::move(*driver) : nullptr;
  }

  reflow_test::TempDir m_dir;
  FakeEnv m_env;
  Logger m_log{LogLevel::error};
};

TEST_F(SimDriverTest, EachJobGivesUseConsumeProduceSharingOneProcess) {
  RecordingSink sink;
  auto driver = make("jobs = 1\nfilament_grams = 20\nprinter = \"printer:mk4\"\n");
  ASSERT_TRUE(driver);
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  m_env.advance_ms(10'000);  // the simulated job ends
  auto events = sink.wait_for(3);
  driver->stop();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].fields["action"], "use");
  EXPECT_EQ(events[0].fields["resourceInventoriedAs"], "printer:mk4");
  EXPECT_EQ(events[0].fields["effortQuantity"]["hasUnit"], "hour");
  EXPECT_DOUBLE_EQ(events[0].fields["effortQuantity"]["hasNumericalValue"].get<double>(),
                   10.0 / 3600.0);
  EXPECT_EQ(events[1].fields["action"], "consume");
  EXPECT_EQ(events[1].fields["resourceQuantity"]["hasNumericalValue"], 20.0);
  EXPECT_EQ(events[1].fields["resourceQuantity"]["hasUnit"], "gram");
  EXPECT_EQ(events[2].fields["action"], "produce");
  EXPECT_EQ(events[2].fields["resourceConformsTo"], "benchy.gcode");
  // A new, named part (zenflows: newInventoriedResource.name), so its trace reaches the job.
  EXPECT_EQ(events[2].fields["resourceInventoriedAs"], "benchy.gcode, job 1 on printer:mk4");
  EXPECT_EQ(events[2].fields["resourceQuantity"]["hasUnit"], "one");
  EXPECT_EQ(events[0].fields["inputOf"], "sim:p1:job-1");
  EXPECT_EQ(events[1].fields["inputOf"], "sim:p1:job-1");
  EXPECT_EQ(events[2].fields["outputOf"], "sim:p1:job-1");
  for (const auto& e : events) {
    Status zenflows = vf::check_zenflows_rules(e.fields);
    EXPECT_TRUE(zenflows) << zenflows.error().message;
    EXPECT_EQ(e.source.driver, "sim");
    EXPECT_EQ(e.source.instance, "p1");
    EXPECT_EQ(e.source.ref, "job 1");
  }
}

TEST_F(SimDriverTest, RestartContinuesWithTheNextJobNeitherRepeatingNorSkipping) {
  {
    RecordingSink sink;
    auto driver = make("jobs = 2\n");
    ASSERT_TRUE(driver->start(sink, m_dir.path()));
    ASSERT_TRUE(m_env.wait_for_sleepers(1));
    m_env.advance_ms(10'000);
    ASSERT_EQ(sink.wait_for(3).size(), 3u);
    driver->stop();  // stopped during job 2: it is not recorded
  }
  RecordingSink sink;
  auto driver = make("jobs = 2\n");
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  m_env.advance_ms(10'000);
  auto events = sink.wait_for(3);
  driver->stop();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].fields["inputOf"], "sim:p1:job-2");
  EXPECT_EQ(events[0].source.ref, "job 2");
}

TEST_F(SimDriverTest, HealthCountsCommittedEventsAndSaysWhenFinished) {
  RecordingSink sink;
  auto driver = make("jobs = 1\n");
  ASSERT_TRUE(driver);
  ASSERT_TRUE(driver->start(sink, m_dir.path()));
  EXPECT_EQ(driver->health().state, "running");
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  m_env.advance_ms(10'000);
  // The state changes after the job's three events were committed; wait for it, bounded.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (driver->health().state != "finished" && std::chrono::steady_clock::now() < give_up)
    std::this_thread::yield();
  const DriverHealth health = driver->health();
  driver->stop();
  EXPECT_EQ(health.state, "finished");
  EXPECT_EQ(health.events, 3u);
  EXPECT_EQ(health.errors, 0u);
  EXPECT_EQ(health.last_error, "");

  std::ifstream state(m_dir / "state.json");
  std::string text((std::istreambuf_iterator<char>(state)), std::istreambuf_iterator<char>());
  EXPECT_EQ(nlohmann::json::parse(text, nullptr, false), nlohmann::json({{"last_job", 1}}));
}

TEST_F(SimDriverTest, DamagedStateFileRefusesToStart) {
  std::ofstream(m_dir / "state.json") << "{\"last_job\": 1";
  RecordingSink sink;
  auto driver = make("jobs = 1\n");
  ASSERT_TRUE(driver);
  auto started = driver->start(sink, m_dir.path());
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, ErrorCode::corruption);
}

TEST_F(SimDriverTest, BadKeyIsRefusedWithFileLineAndKey) {
  auto config = config_with("[[driver]]\nkind = \"sim\"\nname = \"p1\"\njob_duration = 10\n");
  ASSERT_TRUE(config) << config.error().message;
  auto driver = kind_named("sim")->create(config->drivers.at(0), m_env, m_log);
  ASSERT_FALSE(driver);
  EXPECT_EQ(driver.error().code, ErrorCode::invalid_config);
  EXPECT_NE(driver.error().message.find("sample.toml:9: driver.p1.job_duration"), std::string::npos)
      << driver.error().message;

  auto unknown = config_with("[[driver]]\nkind = \"sim\"\nname = \"p1\"\ncolour = \"red\"\n");
  ASSERT_TRUE(unknown);
  auto refused = kind_named("sim")->create(unknown->drivers.at(0), m_env, m_log);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("driver.p1.colour: unknown key"), std::string::npos)
      << refused.error().message;
}

}  // namespace
}  // namespace agent
