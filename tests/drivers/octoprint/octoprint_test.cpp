// SPDX-License-Identifier: AGPL-3.0-or-later
// The octoprint driver against a real HTTP server replaying OctoPrint's (and Spoolman's) recorded
// answers: golden cases in drivers/octoprint/testdata/<case>/ (case.json: config and steps;
// the replay scripts; expected.jsonl: the fields and source of each event, in order), plus
// failure, backoff and restart behaviour. Time is a FakeEnv: each step advances it and waits
// until the driver has polled and sleeps again.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <reflow/device/config.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/drivers/driver_state.hpp>
#include <reflow/drivers/members.hpp>
#include <reflow/drivers/valueflows.hpp>

#include "capturing_sink.hpp"
#include "files.hpp"
#include "http_replay.hpp"
#include "pty.hpp"
#include "temp_dir.hpp"

namespace agent {

const DriverKind& octoprint_driver_kind();

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

const std::filesystem::path k_testdata =
    std::filesystem::path(REFLOW_SOURCE_DIR) / "drivers" / "octoprint" / "testdata";

using reflow_test::read_text;
using reflow_test::write_text;

using reflow_test::CapturingSink;

class OctoPrintDriverTest : public ::testing::Test {
 protected:
  Result<std::unique_ptr<Driver>> create(const std::string& url, const std::string& extra) {
    auto config = parse_config(
        "[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"/tmp/d\"\n\n"
        "[[driver]]\nkind = \"octoprint\"\nname = \"mk3\"\nurl = \"" +
            url +
            "/\"\napi_key = \"A1B2C3D4E5\"\nresource = \"printer:mk3-01\"\n"
            "poll_interval = \"10s\"\nmax_backoff = \"40s\"\n" +
            extra,
        "test.toml");
    if (!config) return std::unexpected(config.error());
    return octoprint_driver_kind().create(config->drivers.at(0), m_env, m_log);
  }

  // Something the driver does on every poll: a request reaches the server or an error is counted.
  std::size_t evidence() const {
    const DriverHealth h = m_driver->health();
    return m_server->requests().size() + h.errors + h.malformed;
  }

  void start_driver(const std::string& extra, EventSink& sink) {
    auto driver = create(m_server->url(), extra);
    ASSERT_TRUE(driver) << driver.error().message;
    m_driver = std::move(*driver);
    const std::size_t before = m_server->requests().size();
    ASSERT_TRUE(m_driver->start(sink, m_state.path()));
    // The first poll happens at once.
    wait_until([&] { return evidence() > before; });
    ASSERT_TRUE(m_env.wait_for_sleepers(1));
  }

  // Advances the clock by exactly the delay the driver is expected to wait, then waits until it
  // has polled and sleeps again. A driver that waits longer makes this fail.
  void poll_after(std::int64_t seconds) {
    const std::size_t before = evidence();
    m_env.advance_ms(seconds * 1000);
    wait_until([&] { return evidence() > before; });
    ASSERT_TRUE(m_env.wait_for_sleepers(1));
  }

  template <typename Condition>
  void wait_until(Condition condition) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!condition()) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the driver did not poll";
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // polling a condition
    }
  }

  // Runs drivers/octoprint/testdata/<name>/case.json and compares with expected.jsonl
  // (REFLOW_UPDATE_GOLDEN=1 rewrites expected.jsonl instead; review the diff).
  void run_case(const std::string& name) {
    const auto dir = k_testdata / name;
    const json spec = json::parse(read_text(dir / "case.json"));
    std::string config = spec.at("config");
    CapturingSink sink;
    for (const json& step : spec.at("steps")) {
      SCOPED_TRACE(step.dump());
      if (step.contains("load")) {
        if (!m_server)
          m_server = std::make_unique<reflow_test::HttpReplayServer>(dir / step["load"]);
        else
          m_server->load(dir / step["load"]);
      }
      if (step.contains("start")) {
        if (!m_server)
          m_server = std::make_unique<reflow_test::HttpReplayServer>(
              dir /
              (std::filesystem::exists(dir / "script.json") ? "script.json" : "printing.json"));
        if (auto at = config.find("{url}"); at != std::string::npos)
          config.replace(at, 5, m_server->url());
        start_driver(config, sink);
        if (HasFatalFailure()) return;
      }
      if (step.contains("stop_server")) m_server->stop();
      if (step.contains("restart_server")) m_server->restart();
      if (step.contains("restart_driver")) {
        m_driver->stop();
        m_env.advance_ms(step.value("advance_s", 0) * 1000);
        start_driver(config, sink);
        if (HasFatalFailure()) return;
      }
      if (step.contains("poll_after_s")) {
        poll_after(step["poll_after_s"]);
        if (HasFatalFailure()) return;
      }
    }
    m_driver->stop();

    std::string actual;
    for (const auto& event : sink.lines())
      actual += event.dump() + "\n";
    if (std::getenv("REFLOW_UPDATE_GOLDEN")) {
      std::ofstream(dir / "expected.jsonl") << actual;
      return;
    }
    std::vector<json> expected;
    std::istringstream lines(read_text(dir / "expected.jsonl"));
    for (std::string line; std::getline(lines, line);)
      if (!line.empty()) expected.push_back(json::parse(line));
    const auto events = sink.lines();
    ASSERT_EQ(events.size(), expected.size()) << "events:\n" << actual;
    for (std::size_t i = 0; i < events.size(); ++i) {
      // Every event is one zenflows records: its process link, what its action needs.
      Status zenflows = vf::check_zenflows_rules(nlohmann::ordered_json::parse(expected[i].dump()));
      EXPECT_TRUE(zenflows) << "event " << i << ": " << zenflows.error().message;
      EXPECT_EQ(json::parse(events[i].dump()), expected[i])
          << "event " << i << " differs; events:\n"
          << actual;
    }
  }

  reflow_test::TempDir m_state;
  FakeEnv m_env;
  Logger m_log{LogLevel::error};
  std::unique_ptr<reflow_test::HttpReplayServer> m_server;
  std::unique_ptr<Driver> m_driver;
};

TEST_F(OctoPrintDriverTest, FinishedJobGivesUseConsumeAndProduceSharingOneProcess) {
  run_case("done");
  // Every request carried the API key.
  for (const json& request : m_server->requests())
    EXPECT_EQ(request["headers"].value("x-api-key", ""), "A1B2C3D4E5") << request.dump();
}

TEST_F(OctoPrintDriverTest, CancelledJobIsOneEndWithProRatedFilamentAndNoProduce) {
  run_case("cancel");
}

TEST_F(OctoPrintDriverTest, PrinterErrorEndsTheJobAsFailed) {
  run_case("failure");
}

TEST_F(OctoPrintDriverTest, JobLostWhileOctoPrintWasDownIsClosedAsInterruptedOnceItIsBack) {
  run_case("offline_reboot");
  EXPECT_EQ(m_driver->health().errors, 3u);
}

TEST_F(OctoPrintDriverTest, JobStillPrintingAfterAnOutageContinuesAndEndsOnce) {
  run_case("offline_still_printing");
}

TEST_F(OctoPrintDriverTest, RestartMidJobNeitherLosesNorRepeatsTheJob) {
  run_case("restart_mid_job");
}

TEST_F(OctoPrintDriverTest, RestartBetweenJobsDoesNotRepeatTheFinishedOne) {
  run_case("restart_between_jobs");
}

TEST_F(OctoPrintDriverTest, ErrorsAndMalformedAnswersAreCountedAndGiveNoEvent) {
  run_case("http_errors");
  const DriverHealth health = m_driver->health();
  EXPECT_EQ(health.errors, 4u);     // 401, 403, timeout, 500
  EXPECT_EQ(health.malformed, 2u);  // truncated JSON, completion "12%"
}

TEST_F(OctoPrintDriverTest, SpoolGivesReferenceAndDensityAndUsageIsReportedOnce) {
  run_case("spoolman");
  std::vector<json> puts;
  for (const json& request : m_server->requests())
    if (request["method"] == "PUT") puts.push_back(request);
  ASSERT_EQ(puts.size(), 1u);
  EXPECT_EQ(puts[0]["path"], "/api/v1/spool/3/use");
  EXPECT_EQ(json::parse(puts[0]["body"].get<std::string>()), json({{"use_weight", 2.474}}));
}

TEST_F(OctoPrintDriverTest, RefusedApiKeyIsReportedWithExponentialBackoff) {
  m_server = std::make_unique<reflow_test::HttpReplayServer>(k_testdata / "http_errors" /
                                                             "forbidden.json");
  CapturingSink sink;
  start_driver("filament = \"spool:pla-black-01\"\n", sink);
  ASSERT_FALSE(HasFatalFailure());
  auto expect_retry_in = [&](std::string_view delay, std::uint64_t errors) {
    const DriverHealth h = m_driver->health();
    EXPECT_NE(h.state.find(fmt::format("retry in {}", delay)), std::string::npos) << h.state;
    EXPECT_EQ(h.errors, errors);
    EXPECT_NE(h.last_error.find("api_key"), std::string::npos) << h.last_error;
    EXPECT_EQ(h.last_error_unix_ms, m_env.now_unix_ms());
  };
  expect_retry_in("10.0s", 1);
  poll_after(10);
  expect_retry_in("20.0s", 2);
  poll_after(20);
  expect_retry_in("40.0s", 3);
  poll_after(40);
  expect_retry_in("40.0s", 4);  // max_backoff
  m_driver->stop();
  EXPECT_TRUE(sink.events().empty());
}

TEST_F(OctoPrintDriverTest, EventsNotYetCommittedAtStopAreSubmittedAfterRestart) {
  m_server = std::make_unique<reflow_test::HttpReplayServer>(k_testdata / "done" / "script.json");
  const std::string config = "filament = \"spool:pla-black-01\"\n";
  std::vector<ordered_json> first;
  {
    CapturingSink holding(/*hold=*/true);
    start_driver(config, holding);
    ASSERT_FALSE(HasFatalFailure());
    for (int i = 0; i < 3; ++i) {
      const std::size_t before = evidence();
      m_env.advance_ms(10'000);
      wait_until([&] { return evidence() > before; });
      if (i < 2) {
        ASSERT_TRUE(m_env.wait_for_sleepers(1));
      }
    }
    ASSERT_EQ(holding.wait_for(3).size(), 3u);  // submitted, never committed
    m_driver->stop();
    first = holding.lines();
  }
  CapturingSink sink;
  start_driver(config, sink);  // OctoPrint still shows the finished job
  ASSERT_FALSE(HasFatalFailure());
  poll_after(10);
  m_driver->stop();
  ASSERT_EQ(first.size(), 3u);
  EXPECT_EQ(sink.lines(), first);

  CapturingSink after;  // committed now: a further restart repeats nothing
  start_driver(config, after);
  ASSERT_FALSE(HasFatalFailure());
  m_driver->stop();
  EXPECT_TRUE(after.events().empty());
}

TEST_F(OctoPrintDriverTest, CorruptStateRefusesToStartRatherThanGuess) {
  ASSERT_TRUE(save_driver_state(m_state / "state.json", json{{"job", 5}}));
  m_server = std::make_unique<reflow_test::HttpReplayServer>(k_testdata / "done" / "script.json");
  auto driver = create(m_server->url(), "filament = \"spool:pla-black-01\"\n");
  ASSERT_TRUE(driver) << driver.error().message;
  CapturingSink sink;
  Status started = (*driver)->start(sink, m_state.path());
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, ErrorCode::corruption);
  EXPECT_NE(started.error().message.find("state.json"), std::string::npos);
}

TEST_F(OctoPrintDriverTest, AJobStartedAfterAMembersBadgeAtThePrinterIsTheirs) {
  // An RDM6300 beside the printer (a real pseudo-terminal); ada is enrolled by the keyed hash of
  // her card. The replayed OctoPrint prints a job that started 16 min 40 s before her badge
  // (nobody's), then one that starts 25 s after it (hers: within the 10 min window).
  reflow_test::Pty reader;
  ASSERT_TRUE(reader.ok());
  auto secret = load_or_create_site_secret(site_secret_path(m_state.path()));
  ASSERT_TRUE(secret) << secret.error().message;
  write_text(m_state / "members.toml",
             fmt::format("[[member]]\nhandle = \"ada\"\nagent = \"person:ada\"\nbadges = "
                         "[\"{}\"]\n",
                         badge_hash(*secret, "0415A3B2C1")));
  m_server = std::make_unique<reflow_test::HttpReplayServer>(k_testdata / "restart_between_jobs" /
                                                             "script.json");
  auto config = parse_config(
      fmt::format("[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"{}\"\n"
                  "[members]\nfile = \"{}\"\nprovider = \"org:fablab\"\n\n"
                  "[[driver]]\nkind = \"octoprint\"\nname = \"mk3\"\nurl = \"{}/\"\n"
                  "api_key = \"A1B2C3D4E5\"\nresource = \"printer:mk3-01\"\n"
                  "poll_interval = \"10s\"\nmax_backoff = \"40s\"\n"
                  "filament = \"spool:pla-black-01\"\n"
                  "[driver.badge]\nsource = \"serial\"\ndevice = \"{}\"\nwindow = \"10m\"\n",
                  m_state.path().string(), (m_state / "members.toml").string(), m_server->url(),
                  reader.name()),
      "test.toml");
  ASSERT_TRUE(config) << config.error().message;
  auto driver = octoprint_driver_kind().create(config->drivers.at(0), m_env, m_log);
  ASSERT_TRUE(driver) << driver.error().message;
  m_driver = std::move(*driver);
  CapturingSink sink;
  const std::size_t before = m_server->requests().size();
  ASSERT_TRUE(m_driver->start(sink, m_state.path()));
  wait_until([&] { return evidence() > before; });
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  const auto state_has = [&](std::string_view text) {
    return m_driver->health().state.find(text) != std::string::npos;
  };
  wait_until([&] { return state_has("reader open"); });
  // STX, the card's 10 hex digits, their XOR checksum, ETX (RDM6300 datasheet).
  ASSERT_TRUE(
      reader.write("\x02"
                   "0415A3B2C1"
                   "C1\x03"));
  wait_until([&] { return state_has("known 1"); });
  for (const std::int64_t seconds : {10, 10, 10, 900}) {
    poll_after(seconds);
    if (HasFatalFailure()) return;
  }
  const auto health = m_driver->health();
  m_driver->stop();
  std::size_t hers = 0;
  std::size_t nobodys = 0;
  for (const auto& e : sink.fields()) {
    const std::string process = e.value("inputOf", e.value("outputOf", ""));
    if (process == "octoprint:mk3:job-1767225625") {
      ++hers;
      // The member receives the use and the filament; the makerspace provides the use.
      const std::string action = e.value("action", "");
      EXPECT_EQ(e.value("receiver", ""), action == "produce" ? "" : "person:ada") << e.dump();
      EXPECT_EQ(e.value("provider", ""), action == "use" ? "org:fablab" : "") << e.dump();
    } else {
      ++nobodys;
      EXPECT_FALSE(e.contains("receiver")) << e.dump();
      EXPECT_FALSE(e.contains("provider")) << e.dump();
    }
    EXPECT_TRUE(vf::check_zenflows_rules(e)) << e.dump();
  }
  EXPECT_GT(hers, 0U);
  EXPECT_GT(nobodys, 0U);
  EXPECT_NE(health.state.find("sessions without badge 1, last member ada"), std::string::npos)
      << health.state;
}

TEST_F(OctoPrintDriverTest, ConfigErrorsNameTheKey) {
  struct Case {
    std::string extra;
    std::string key;
  };
  for (const Case& c : std::vector<Case>{
           {"", "test.toml:6: driver.mk3.filament: required unless spool_id"},
           {"filament = \"f\"\nspoolman_report = \"both\"\n",
            "test.toml:15: driver.mk3.spoolman_report: expected one of \"off\", \"length\", "
            "\"weight\"; got \"both\""},
           {"filament = \"f\"\nspoolman_report = \"weight\"\n",
            "test.toml:15: driver.mk3.spoolman_report: needs spoolman_url and spool_id"},
           {"filament = \"f\"\nfilament_density_g_cm3 = 0\n",
            "test.toml:15: driver.mk3.filament_density_g_cm3"},
           {"filament = \"f\"\ncolour = \"red\"\n", "test.toml:15: driver.mk3.colour"},
       }) {
    auto driver = create("http://octopi.local", c.extra);
    ASSERT_FALSE(driver) << c.extra;
    EXPECT_EQ(driver.error().code, ErrorCode::invalid_config);
    EXPECT_NE(driver.error().message.find(c.key), std::string::npos) << driver.error().message;
  }
  auto bad_url = create("ftp://octopi.local", "filament = \"f\"\n");
  ASSERT_FALSE(bad_url);
  EXPECT_NE(bad_url.error().message.find("test.toml:9: driver.mk3.url: expected http://"),
            std::string::npos)
      << bad_url.error().message;
}

}  // namespace
}  // namespace agent
