// SPDX-License-Identifier: AGPL-3.0-or-later
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <reflow/core/event.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/drivers/badge.hpp>
#include <reflow/drivers/driver_state.hpp>
#include <reflow/drivers/members.hpp>
#include <reflow/drivers/spoolman.hpp>
#include <reflow/drivers/valueflows.hpp>

#include "capturing_sink.hpp"
#include "files.hpp"
#include "history.hpp"
#include "http_replay.hpp"
#include "pty.hpp"
#include "temp_dir.hpp"

namespace agent {

const DriverKind& moonraker_driver_kind();

namespace {

const std::filesystem::path k_testdata =
    std::filesystem::path(REFLOW_SOURCE_DIR) / "drivers" / "moonraker" / "testdata";

// One step of the fake clock: longer than any poll interval or backoff the tests use.
constexpr std::int64_t k_step_ms = 10 * 60 * 1000;

using reflow_test::read_text;

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

std::string replace_all(std::string text, std::string_view from, std::string_view to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

// A FakeEnv that also counts the driver's pauses, so that a test can advance the clock and then
// wait until the driver has finished the poll it triggered (it pauses again).
class StepEnv final : public Env {
 public:
  std::int64_t now_unix_ms() override { return m_fake.now_unix_ms(); }
  std::chrono::steady_clock::time_point steady_now() override { return m_fake.steady_now(); }
  ClockSync clock_sync() override { return m_fake.clock_sync(); }
  bool sleep_until(std::chrono::steady_clock::time_point deadline, std::stop_token stop) override {
    {
      std::lock_guard lock(m_mutex);
      ++m_pauses;
    }
    m_changed.notify_all();
    return m_fake.sleep_until(deadline, std::move(stop));
  }

  // Waits until the driver paused `n` times in all (bounded).
  bool wait_pauses(std::size_t n) {
    std::unique_lock lock(m_mutex);
    return m_changed.wait_for(lock, std::chrono::seconds(30), [&] { return m_pauses >= n; });
  }
  // Ends the current pause and waits until the next poll is done.
  bool next_poll() {
    std::size_t n;
    {
      std::lock_guard lock(m_mutex);
      n = m_pauses;
    }
    m_fake.advance_ms(k_step_ms);
    return wait_pauses(n + 1);
  }
  std::int64_t pauses() {
    std::lock_guard lock(m_mutex);
    return static_cast<std::int64_t>(m_pauses);
  }

 private:
  FakeEnv m_fake;
  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::size_t m_pauses = 0;
};

using reflow_test::CapturingSink;

nlohmann::json history_job(const std::string& id, const std::string& status, double start,
                           double filament_mm) {
  return {{"job_id", id},
          {"user", nullptr},
          {"filename", "part_" + id + ".gcode"},
          {"exists", true},
          {"status", status},
          {"start_time", start},
          {"end_time",
           status == "in_progress" ? nlohmann::json(nullptr) : nlohmann::json(start + 3700.0)},
          {"print_duration", 3600.0},
          {"total_duration", 3700.0},
          {"filament_used", filament_mm},
          {"metadata", {{"filament_type", "PLA"}}},
          {"auxiliary_data", nlohmann::json::array()}};
}

nlohmann::json page_of(std::vector<nlohmann::json> jobs) {
  nlohmann::json page;
  page["result"]["count"] = jobs.size();
  page["result"]["jobs"] = jobs;
  return page;
}

nlohmann::json ok(const nlohmann::json& body) {
  return {{"status", 200}, {"body", body.dump()}};
}

class MoonrakerDriverTest : public ::testing::Test {
 protected:
  // Writes a replay script with the history route's responses (and any other routes).
  std::filesystem::path script(std::vector<nlohmann::json> history,
                               std::vector<nlohmann::json> other_routes = {}) {
    nlohmann::json routes = nlohmann::json::array();
    routes.push_back({{"method", "GET"}, {"path", "/server/history/list"}, {"responses", history}});
    for (auto& route : other_routes)
      routes.push_back(route);
    const auto file = m_dir / fmt::format("script-{}.json", m_scripts++);
    write_text(file, nlohmann::json({{"routes", routes}}).dump(2));
    return file;
  }

  Result<std::unique_ptr<Driver>> create(const std::string& keys) {
    auto config = parse_config(
        "[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"/tmp/d\"\n\n"
        "[[driver]]\nkind = \"moonraker\"\nname = \"voron\"\n" +
            keys,
        "agent.toml");
    if (!config) return std::unexpected(config.error());
    return moonraker_driver_kind().create(config->drivers.at(0), m_env, m_log);
  }

  std::unique_ptr<Driver> make(const std::string& keys) {
    auto driver = create(keys);
    EXPECT_TRUE(driver) << driver.error().message;
    return driver ? std::move(*driver) : nullptr;
  }

  std::string keys_for(const reflow_test::HttpReplayServer& server, const std::string& extra = "") {
    return fmt::format(
        "url = \"{}\"\nresource = \"printer:voron-01\"\nfilament = \"spool:pla-black-01\"\n{}",
        server.url(), extra);
  }

  // Starts the driver and waits until its first poll is done.
  void start(Driver& driver, CapturingSink& sink) {
    const auto before = m_env.pauses();
    ASSERT_TRUE(driver.start(sink, m_state_dir));
    ASSERT_TRUE(m_env.wait_pauses(static_cast<std::size_t>(before) + 1));
  }

  static std::vector<nlohmann::json> requests_to(const reflow_test::HttpReplayServer& server,
                                                 std::string_view method, std::string_view path) {
    std::vector<nlohmann::json> found;
    for (auto& request : server.requests())
      if (request["method"] == method && request["path"] == path) found.push_back(request);
    return found;
  }

  reflow_test::TempDir m_dir;
  std::filesystem::path m_state_dir = [this] {
    auto dir = m_dir / "state";
    std::filesystem::create_directories(dir);
    return dir;
  }();
  StepEnv m_env;
  Logger m_log{LogLevel::error};
  int m_scripts = 0;
};

// Every event of `job` passes the writer's validation (validate_submission).
void expect_events_valid(const moonraker::HistoryJob& job) {
  moonraker::JobContext context;
  context.name = "prusa";
  context.printer = "printer:prusa-mk4";
  context.filament = "spool:42";
  const auto events = moonraker::job_events(job, context);
  EXPECT_FALSE(events.empty()) << job.job_id;
  for (const auto& event : events) {
    auto valid = validate_submission(event);
    EXPECT_TRUE(valid.has_value()) << valid.error().message;
  }
}

TEST(MoonrakerMassTest, ThousandMillimetresOfPlaWeighAboutThreeGrams) {
  // 1000 mm × π × (1.75 mm / 2)² = 2405.28 mm³ = 2.40528 cm³; × 1.24 g/cm³ = 2.98255 g.
  const double grams = spoolman::filament_grams(1000, 1.75, 1.24);
  EXPECT_NEAR(grams, 2.98, 0.005);
  EXPECT_NEAR(grams, 2.98255, 1e-5);
  EXPECT_DOUBLE_EQ(spoolman::filament_grams(2000, 1.75, 1.24), 2 * grams);
  EXPECT_NEAR(spoolman::filament_grams(1000, 2.85, 1.24), 7.910, 0.001);
}

TEST(MoonrakerHistoryTest, RefusesEntriesWithMissingOrMistypedFields) {
  auto good = history_job("000001", "completed", 1767196800.0, 100);
  ASSERT_TRUE(moonraker::parse_job(good));
  for (const char* field : {"job_id", "status", "start_time", "filament_used", "print_duration"}) {
    auto broken = good;
    broken[field] = "x";
    if (std::string_view(field) == "status") broken[field] = "exploded";
    if (std::string_view(field) == "job_id") broken[field] = 7;
    auto job = moonraker::parse_job(broken);
    ASSERT_FALSE(job) << field;
    EXPECT_EQ(job.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(job.error().message.find(field), std::string::npos) << job.error().message;
  }
  auto backwards = good;
  backwards["end_time"] = 1767196000.0;
  EXPECT_FALSE(moonraker::parse_job(backwards));
}

// Found by tests/fuzz (moonraker_history): a job ending in 2182 gave events the writer refuses
// (PROTOCOL §4 Limits: times up to 2099), so the job would be lost instead of reported as
// malformed. Every finished job parse_job accepts must give events that pass validate_submission.
TEST(MoonrakerHistoryTest, RefusesJobsBeyondTheProtocolsTimeRange) {
  auto late_end = history_job("000016", "completed", 1767196800.48, 100);
  late_end["end_time"] = 6711798630.98;  // 2182
  auto job = moonraker::parse_job(late_end);
  ASSERT_FALSE(job);
  EXPECT_NE(job.error().message.find("end_time"), std::string::npos) << job.error().message;
  EXPECT_NE(job.error().message.find("after 2099"), std::string::npos) << job.error().message;

  auto late_start = history_job("000017", "completed", 4102444800.0, 100);
  EXPECT_FALSE(moonraker::parse_job(late_start));

  auto long_running = history_job("000018", "completed", 4102444000.0, 100);
  long_running.erase("end_time");
  long_running["total_duration"] = 1000.0;
  EXPECT_FALSE(moonraker::parse_job(long_running));

  // The last millisecond the protocol takes is still a job.
  auto edge = history_job("000019", "completed", 1767196800.0, 100);
  edge["end_time"] = 4102444799.998;
  auto ok = moonraker::parse_job(edge);
  ASSERT_TRUE(ok) << ok.error().message;
  expect_events_valid(*ok);
}

// Found by tests/fuzz (moonraker_history, tests/fuzz/corpus/moonraker_history/
// regression-print-duration): a print_duration of 1.8e103 s gave a `use` of 5e99 hours, beyond
// PROTOCOL §4's quantity limit (1e12), so the writer refused it and the job was lost instead of
// reported as malformed. No job lasts longer than from its start to 2099, nor uses more filament
// than k_max_filament_mm.
TEST(MoonrakerHistoryTest, RefusesDurationsAndFilamentBeyondTheProtocolsLimits) {
  const auto good = history_job("000020", "completed", 1767196800.0, 100);
  struct Case {
    const char* field;
    double value;
  };
  for (const Case& c : {Case{"print_duration", 1.8e103}, Case{"total_duration", 1.8e103},
                        Case{"print_duration", 4102444800.0 - 1767196800.0 + 1},
                        Case{"filament_used", 1e9 + 1}, Case{"filament_used", 1e300}}) {
    auto bad = good;
    bad[c.field] = c.value;
    auto job = moonraker::parse_job(bad);
    ASSERT_FALSE(job) << c.field << " " << c.value;
    EXPECT_EQ(job.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(job.error().message.find(c.field), std::string::npos) << job.error().message;
  }
  // The longest print and the most filament taken still give events the writer takes.
  auto longest = good;
  longest["print_duration"] = 4102444800.0 - 1767196800.0 - 1;
  longest["filament_used"] = spoolman::k_max_filament_mm;
  auto ok = moonraker::parse_job(longest);
  ASSERT_TRUE(ok) << ok.error().message;
  expect_events_valid(*ok);
  // …with the thickest, densest filament a config or Spoolman may give.
  moonraker::JobContext context;
  context.name = "prusa";
  context.printer = "printer:prusa-mk4";
  context.filament = "spool:42";
  context.diameter_mm = spoolman::k_max_diameter_mm;
  context.density_g_cm3 = spoolman::k_max_density_g_cm3;
  for (const auto& event : moonraker::job_events(*ok, context)) {
    auto valid = validate_submission(event);
    EXPECT_TRUE(valid.has_value()) << valid.error().message;
  }
}

// Found by tests/fuzz (moonraker_history): a user name holding a control character gave a `use`
// whose meta.user the writer refuses (PROTOCOL §4 Limits), and so does a file name, job id or
// filament type. parse_job refuses such a job, naming the field, so that it is reported as
// malformed instead of passing as a job whose events cannot be written.
TEST(MoonrakerHistoryTest, RefusesStringsTheProtocolRefuses) {
  const auto good = history_job("000016", "completed", 1767196800.48, 100);
  const std::string long_name(k_max_string_bytes + 1, 'a');
  struct Case {
    const char* field;
    nlohmann::json value;
  };
  for (const Case& c : {Case{"user", "T\x12RUSTED_USER"}, Case{"filename", "part\x1b[2J.gcode"},
                        Case{"filename", long_name},
                        Case{"job_id",
                             "0000\x7f"
                             "16"},
                        Case{"user", "admin\xc2\x9b"}, Case{"job_id", std::string(65, '0')}}) {
    auto bad = good;
    bad[c.field] = c.value;
    auto job = moonraker::parse_job(bad);
    ASSERT_FALSE(job) << c.field;
    EXPECT_NE(job.error().message.find(c.field), std::string::npos) << job.error().message;
  }
  auto bad_type = good;
  bad_type["metadata"] = {{"filament_type", "PLA\x01"}};
  auto job = moonraker::parse_job(bad_type);
  ASSERT_FALSE(job);
  EXPECT_NE(job.error().message.find("filament_type"), std::string::npos) << job.error().message;

  // TAB and LF are text the protocol takes, and so is any other character.
  auto fine = good;
  fine["user"] = "Ana\tMaría";
  fine["filename"] = "two\nlines – ünïcode.gcode";
  auto ok = moonraker::parse_job(fine);
  ASSERT_TRUE(ok) << ok.error().message;
  expect_events_valid(*ok);

  // The longest file name and job id taken still give events the writer takes.
  auto longest = good;
  longest["job_id"] = std::string(64, 'f');
  longest["filename"] = std::string(k_max_string_bytes, 'a');
  auto longest_job = moonraker::parse_job(longest);
  ASSERT_TRUE(longest_job) << longest_job.error().message;
  expect_events_valid(*longest_job);
}

// One process per job: the printer's use and the filament's consume are its inputs, the named part
// its output, and consume always names an inventoried resource (zenflows decrements it): the
// spool when one is known, else the filament stock; the G-code's filament type goes to meta.
TEST(MoonrakerHistoryTest, AJobsEventsChainThroughItsProcessAndConsumeASpoolOrTheStock) {
  auto job = moonraker::parse_job(history_job("000031", "completed", 1767196800.0, 1000));
  ASSERT_TRUE(job) << job.error().message;
  moonraker::JobContext context;
  context.name = "voron";
  context.printer = "printer:voron-01";
  context.filament_stock = "stock:pla";
  auto events = moonraker::job_events(*job, context);
  ASSERT_EQ(events.size(), 3u);
  for (const auto& event : events) {
    Status zenflows = vf::check_zenflows_rules(event);
    EXPECT_TRUE(zenflows) << zenflows.error().message;
  }
  EXPECT_EQ(events[0]["inputOf"], "moonraker:voron:job-000031");
  EXPECT_EQ(events[1]["inputOf"], "moonraker:voron:job-000031");
  EXPECT_EQ(events[2]["outputOf"], "moonraker:voron:job-000031");
  EXPECT_EQ(events[1]["resourceInventoriedAs"], "stock:pla");
  EXPECT_FALSE(events[1].contains("resourceConformsTo"));
  EXPECT_EQ(events[1]["meta"]["filament_type"], "PLA");
  EXPECT_EQ(events[2]["resourceInventoriedAs"],
            "part_000031.gcode, job 000031 on printer:voron-01");
  EXPECT_EQ(events[2]["resourceConformsTo"], "part_000031.gcode");

  context.filament = "spool:42";
  EXPECT_EQ(moonraker::job_events(*job, context)[1]["resourceInventoriedAs"], "spool:42");
}

// Golden cases: drivers/moonraker/testdata/<case>/ holds the replay script (Moonraker's and
// Spoolman's recorded answers), driver.toml (the keys; "@SERVER@" is the replay server) and
// expected.jsonl (the producer fields submitted, in order). The driver polls once per response
// of the history route.
class MoonrakerGoldenTest : public MoonrakerDriverTest,
                            public ::testing::WithParamInterface<std::string> {};

TEST_P(MoonrakerGoldenTest, EmitsTheExpectedEvents) {
  const auto dir = k_testdata / GetParam();
  reflow_test::HttpReplayServer server(dir / "script.json");
  const auto script = nlohmann::json::parse(read_text(dir / "script.json"));
  std::size_t polls = 0;
  for (const auto& route : script["routes"])
    if (route["path"] == "/server/history/list") polls = route["responses"].size();
  ASSERT_GT(polls, 0u);

  CapturingSink sink;
  auto driver = make(replace_all(read_text(dir / "driver.toml"), "@SERVER@", server.url()));
  ASSERT_TRUE(driver);
  start(*driver, sink);
  for (std::size_t i = 1; i < polls; ++i)
    ASSERT_TRUE(m_env.next_poll());
  ASSERT_TRUE(m_env.next_poll());  // one more: nothing new may appear
  const DriverHealth health = driver->health();
  driver->stop();

  const auto events = sink.events();
  // REFLOW_UPDATE_GOLDEN=1 rewrites expected.jsonl from what the driver did (review the diff).
  if (std::getenv("REFLOW_UPDATE_GOLDEN")) {
    std::string text;
    for (const auto& e : events)
      text += e.fields.dump() + "\n";
    write_text(dir / "expected.jsonl", text);
  }
  std::vector<nlohmann::ordered_json> expected;
  std::istringstream lines(read_text(dir / "expected.jsonl"));
  for (std::string line; std::getline(lines, line);)
    if (!line.empty()) expected.push_back(nlohmann::ordered_json::parse(line));
  ASSERT_EQ(events.size(), expected.size());
  for (std::size_t i = 0; i < events.size(); ++i) {
    // Every event is one zenflows records: its process link, what its action needs.
    Status zenflows = vf::check_zenflows_rules(expected[i]);
    EXPECT_TRUE(zenflows) << "event " << i << ": " << zenflows.error().message;
    EXPECT_EQ(events[i].fields, expected[i])
        << "event " << i << "\n got:      " << events[i].fields.dump()
        << "\n expected: " << expected[i].dump();
    EXPECT_EQ(events[i].source.driver, "moonraker");
    EXPECT_EQ(events[i].source.instance, "voron");
    EXPECT_EQ(events[i].source.ref, "job " + events[i].fields["meta"]["job_id"].get<std::string>());
  }
  EXPECT_EQ(health.events, expected.size());
  EXPECT_EQ(health.errors, 0u) << health.last_error;
  EXPECT_EQ(health.malformed, 0u) << health.last_error;

  // Requests to Spoolman's write API, when the case expects any.
  std::vector<nlohmann::json> expected_requests;
  std::istringstream request_lines(read_text(dir / "expected_requests.jsonl"));
  for (std::string line; std::getline(request_lines, line);)
    if (!line.empty()) expected_requests.push_back(nlohmann::json::parse(line));
  std::vector<nlohmann::json> puts;
  for (auto& request : server.requests())
    if (request["method"] == "PUT") puts.push_back(request);
  ASSERT_EQ(puts.size(), expected_requests.size());
  for (std::size_t i = 0; i < puts.size(); ++i) {
    EXPECT_EQ(puts[i]["path"], expected_requests[i]["path"]);
    EXPECT_EQ(nlohmann::json::parse(puts[i]["body"].get<std::string>()),
              expected_requests[i]["body"]);
    EXPECT_EQ(puts[i]["headers"]["content-type"], "application/json");
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, MoonrakerGoldenTest,
                         ::testing::Values("completed", "cancelled", "error",
                                           "in_progress_then_completed", "two_jobs_one_poll",
                                           "zero_filament", "out_of_order", "spoolman"));

TEST_F(MoonrakerDriverTest, AsksForHistorySinceTheCursorInAscendingPagesWithTheApiKey) {
  std::vector<nlohmann::json> first_page;
  for (int i = 0; i < 50; ++i)
    first_page.push_back(history_job(fmt::format("{:06}", i + 1), "completed",
                                     1767150000.0 + i * 10'000.0 / 50, 10));
  auto full = page_of(first_page);
  full["result"]["count"] = 51;
  auto rest = page_of({history_job("000051", "completed", 1767170000.0, 10)});
  rest["result"]["count"] = 51;
  reflow_test::HttpReplayServer server(script({ok(full), ok(rest), ok(page_of({}))}));
  CapturingSink sink;
  auto driver = make(keys_for(server, "api_key = \"0123abcd\"\n"));
  ASSERT_TRUE(driver);
  start(*driver, sink);
  ASSERT_TRUE(m_env.next_poll());
  driver->stop();

  EXPECT_EQ(sink.events().size(), 51u * 3);
  auto history = requests_to(server, "GET", "/server/history/list");
  ASSERT_GE(history.size(), 3u);
  // First start: FakeEnv's 2026-01-01T00:00:00Z minus the default backfill of one day.
  EXPECT_EQ(history[0]["query"], "since=1767139200&order=asc&limit=50&start=0");
  EXPECT_EQ(history[1]["query"], "since=1767139200&order=asc&limit=50&start=50");
  // The next poll starts from the latest handled job.
  EXPECT_EQ(history[2]["query"], "since=1767170000&order=asc&limit=50&start=0");
  for (auto& request : history)
    EXPECT_EQ(request["headers"]["x-api-key"], "0123abcd");
}

TEST_F(MoonrakerDriverTest, PrinterOfflineIsCountedAndRetriedThenJobsArrive) {
  const auto job = history_job("000007", "completed", 1767196800.0, 1000);
  reflow_test::HttpReplayServer server(script({ok(page_of({job}))}));
  server.stop();
  CapturingSink sink;
  auto driver = make(keys_for(server));
  ASSERT_TRUE(driver);
  start(*driver, sink);
  ASSERT_TRUE(m_env.next_poll());
  DriverHealth offline = driver->health();
  EXPECT_EQ(offline.errors, 2u);
  EXPECT_NE(offline.last_error.find("unreachable"), std::string::npos) << offline.last_error;
  EXPECT_NE(offline.state.find("retrying"), std::string::npos) << offline.state;
  EXPECT_TRUE(sink.events().empty());

  server.restart();
  ASSERT_TRUE(m_env.next_poll());
  ASSERT_TRUE(m_env.next_poll());
  const DriverHealth back = driver->health();
  driver->stop();
  const auto events = sink.events();
  ASSERT_EQ(events.size(), 3u);  // once, not once per poll
  EXPECT_EQ(events[1].fields["resourceQuantity"]["hasNumericalValue"], 2.983);
  EXPECT_EQ(back.errors, 2u);
  EXPECT_EQ(back.state, "polling");
  EXPECT_EQ(back.events, 3u);
}

TEST_F(MoonrakerDriverTest, SlowOrDroppedAnswersAreTimeoutsCountedAndRetried) {
  const auto job = history_job("000011", "completed", 1767196800.0, 100);
  // The printer accepts the request and never answers, then drops a connection, then answers.
  reflow_test::HttpReplayServer server(
      script({{{"hang", true}}, {{"close", true}}, ok(page_of({job}))}));
  CapturingSink sink;
  auto driver = make(keys_for(server, "timeout = \"300ms\"\n"));
  ASSERT_TRUE(driver);
  start(*driver, sink);
  EXPECT_EQ(driver->health().errors, 1u);
  ASSERT_TRUE(m_env.next_poll());
  EXPECT_EQ(driver->health().errors, 2u);
  EXPECT_TRUE(sink.events().empty());
  ASSERT_TRUE(m_env.next_poll());
  driver->stop();
  EXPECT_EQ(sink.events().size(), 3u);
  EXPECT_EQ(driver->health().errors, 2u);
}

TEST_F(MoonrakerDriverTest, HttpErrorsAreCountedAndNameTheFix) {
  const auto job = history_job("000008", "cancelled", 1767196800.0, 500);
  reflow_test::HttpReplayServer server(script({{{"status", 401}, {"body", "Unauthorized"}},
                                               {{"status", 403}, {"body", "Forbidden"}},
                                               {{"status", 500}, {"body", "Internal error"}},
                                               ok(page_of({job}))}));
  CapturingSink sink;
  auto driver = make(keys_for(server));
  ASSERT_TRUE(driver);
  start(*driver, sink);
  DriverHealth unauthorized = driver->health();
  EXPECT_EQ(unauthorized.errors, 1u);
  EXPECT_NE(unauthorized.last_error.find("HTTP 401"), std::string::npos);
  EXPECT_NE(unauthorized.last_error.find("api_key"), std::string::npos);
  ASSERT_TRUE(m_env.next_poll());
  EXPECT_NE(driver->health().last_error.find("HTTP 403"), std::string::npos);
  ASSERT_TRUE(m_env.next_poll());
  EXPECT_NE(driver->health().last_error.find("HTTP 500"), std::string::npos);
  EXPECT_TRUE(sink.events().empty());
  ASSERT_TRUE(m_env.next_poll());
  ASSERT_TRUE(m_env.next_poll());
  const DriverHealth health = driver->health();
  driver->stop();
  const auto events = sink.events();
  ASSERT_EQ(events.size(), 2u);  // cancelled: use and consume, no produce
  EXPECT_EQ(events[0].fields["action"], "use");
  EXPECT_EQ(events[1].fields["action"], "consume");
  EXPECT_EQ(events[1].fields["meta"]["status"], "cancelled");
  EXPECT_EQ(health.errors, 3u);
  EXPECT_EQ(health.malformed, 0u);
}

TEST_F(MoonrakerDriverTest, MalformedAnswersAreCountedAndGiveNoEvent) {
  const auto good = history_job("000009", "completed", 1767196800.0, 100);
  auto broken = history_job("000010", "completed", 1767197000.0, 100);
  broken["filament_used"] = "lots";
  reflow_test::HttpReplayServer server(script({
      {{"status", 200}, {"body", "<html>not json</html>"}},
      {{"status", 200}, {"body", "{\"result\":{\"count\":1}}"}},
      {{"status", 200}, {"body", "{\"jsonrpc\":\"2.0\",\"result\":{\"count\":1,\"jo"}},
      ok(page_of({good, broken})),
  }));
  CapturingSink sink;
  auto driver = make(keys_for(server));
  ASSERT_TRUE(driver);
  start(*driver, sink);
  ASSERT_TRUE(m_env.next_poll());
  ASSERT_TRUE(m_env.next_poll());
  EXPECT_EQ(driver->health().malformed, 3u);
  EXPECT_TRUE(sink.events().empty());
  ASSERT_TRUE(m_env.next_poll());
  ASSERT_TRUE(m_env.next_poll());
  const DriverHealth health = driver->health();
  driver->stop();
  const auto events = sink.events();
  ASSERT_EQ(events.size(), 3u);  // the good job only; the broken entry is skipped once
  for (const auto& e : events)
    EXPECT_EQ(e.source.ref, "job 000009");
  EXPECT_EQ(health.malformed, 4u);
  EXPECT_NE(health.last_error.find("job 000010"), std::string::npos) << health.last_error;
  EXPECT_EQ(health.errors, 0u);
}

TEST_F(MoonrakerDriverTest, RestartBetweenTwoJobsNeitherLosesNorRepeats) {
  const auto first = history_job("000030", "completed", 1767196800.0, 100);
  const auto second = history_job("000031", "error", 1767201000.0, 200);
  reflow_test::HttpReplayServer server(script({ok(page_of({first}))}));
  {
    CapturingSink sink;
    auto driver = make(keys_for(server));
    ASSERT_TRUE(driver);
    start(*driver, sink);
    driver->stop();
    ASSERT_EQ(sink.events().size(), 3u);
  }
  server.load(script({ok(page_of({first, second}))}));
  CapturingSink sink;
  auto driver = make(keys_for(server));
  ASSERT_TRUE(driver);
  start(*driver, sink);
  ASSERT_TRUE(m_env.next_poll());
  driver->stop();
  const auto events = sink.events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].fields["inputOf"], "moonraker:voron:job-000031");
  EXPECT_EQ(events[1].fields["meta"]["status"], "error");
  auto history = requests_to(server, "GET", "/server/history/list");
  EXPECT_NE(history.back()["query"].get<std::string>().find("since=1767201000"), std::string::npos);
}

TEST_F(MoonrakerDriverTest, RefusedEventIsRetriedAndARestartResumesInsideTheJob) {
  const auto job = history_job("000040", "completed", 1767196800.0, 100);
  reflow_test::HttpReplayServer server(script({ok(page_of({job}))}));
  {
    CapturingSink sink;
    sink.fail_call(1);  // the agent refuses the consume event (outbox full)
    auto driver = make(keys_for(server));
    ASSERT_TRUE(driver);
    start(*driver, sink);
    driver->stop();
    ASSERT_EQ(sink.events().size(), 1u);
    EXPECT_EQ(driver->health().errors, 1u);
  }
  CapturingSink sink;
  auto driver = make(keys_for(server));
  ASSERT_TRUE(driver);
  start(*driver, sink);
  ASSERT_TRUE(m_env.next_poll());
  driver->stop();
  const auto events = sink.events();
  ASSERT_EQ(events.size(), 2u);  // use was committed before the restart: not repeated
  EXPECT_EQ(events[0].fields["action"], "consume");
  EXPECT_EQ(events[1].fields["action"], "produce");
}

TEST_F(MoonrakerDriverTest, SpoolmanUseIsReportedOnceAndRetriedUntilAccepted) {
  const auto dir = k_testdata / "spoolman";
  const auto job = nlohmann::json::parse(read_text(dir / "history.json"));
  const std::string spool = read_text(dir / "spool.json");
  nlohmann::json spool_route = {{"method", "GET"},
                                {"path", "/api/v1/spool/7"},
                                {"responses", {{{"status", 200}, {"body", spool}}}}};
  nlohmann::json use_route = {
      {"method", "PUT"},
      {"path", "/api/v1/spool/7/use"},
      {"responses",
       {{{"status", 500}, {"body", "database is locked"}}, {{"status", 200}, {"body", spool}}}}};
  reflow_test::HttpReplayServer server(script({ok(job)}, {spool_route, use_route}));
  const std::string keys = fmt::format(
      "url = \"{0}\"\nresource = \"printer:voron-01\"\nspoolman_url = \"{0}\"\n"
      "spool_id = 7\nspoolman_report = \"length\"\n",
      server.url());
  {
    CapturingSink sink;
    auto driver = make(keys);
    ASSERT_TRUE(driver);
    start(*driver, sink);  // events committed; Spoolman answers 500
    ASSERT_EQ(sink.events().size(), 3u);
    EXPECT_EQ(sink.events()[1].fields["resourceInventoriedAs"], "spoolman:spool-7");
    EXPECT_EQ(driver->health().errors, 1u);
    driver->stop();
  }
  EXPECT_EQ(requests_to(server, "PUT", "/api/v1/spool/7/use").size(), 1u);
  {
    CapturingSink sink;
    auto driver = make(keys);
    ASSERT_TRUE(driver);
    start(*driver, sink);  // after the restart: reported again, accepted
    ASSERT_TRUE(m_env.next_poll());
    ASSERT_TRUE(m_env.next_poll());
    driver->stop();
    EXPECT_TRUE(sink.events().empty());
  }
  CapturingSink sink;
  auto driver = make(keys);
  ASSERT_TRUE(driver);
  start(*driver, sink);
  driver->stop();
  EXPECT_TRUE(sink.events().empty());
  const auto puts = requests_to(server, "PUT", "/api/v1/spool/7/use");
  ASSERT_EQ(puts.size(), 2u);  // the failed one and the accepted one; never again
  EXPECT_EQ(nlohmann::json::parse(puts[1]["body"].get<std::string>()),
            nlohmann::json({{"use_length", 6000.0}}));
}

TEST_F(MoonrakerDriverTest, SpoolmanUnreachableHoldsTheJobBackRatherThanGuessTheDensity) {
  const auto job = history_job("000050", "completed", 1767196800.0, 1000);
  nlohmann::json spool = {
      {"id", 3},
      {"filament", {{"density", 1.04}, {"diameter", 1.75}, {"material", "ABS"}, {"name", "ABS"}}}};
  nlohmann::json spool_route = {
      {"method", "GET"},
      {"path", "/api/v1/spool/3"},
      {"responses", {{{"close", true}}, {{"status", 200}, {"body", "{\"id\":3}"}}, ok(spool)}}};
  reflow_test::HttpReplayServer server(script({ok(page_of({job}))}, {spool_route}));
  CapturingSink sink;
  auto driver =
      make(keys_for(server, fmt::format("spoolman_url = \"{}\"\nspool_id = 3\n", server.url())));
  ASSERT_TRUE(driver);
  start(*driver, sink);
  ASSERT_TRUE(m_env.next_poll());
  EXPECT_TRUE(sink.events().empty());
  EXPECT_EQ(driver->health().errors, 1u);
  EXPECT_EQ(driver->health().malformed, 1u);
  ASSERT_TRUE(m_env.next_poll());
  driver->stop();
  const auto events = sink.events();
  ASSERT_EQ(events.size(), 3u);
  // 1000 mm of 1.75 mm ABS at 1.04 g/cm³, Spoolman's density, not the configured 1.24.
  EXPECT_EQ(events[1].fields["resourceQuantity"]["hasNumericalValue"], 2.501);
  EXPECT_EQ(events[1].fields["meta"]["density_g_cm3"], 1.04);
  EXPECT_EQ(events[1].fields["meta"]["spool_id"], 3);
  // Without spoolman_report, nothing is written to Spoolman.
  EXPECT_TRUE(requests_to(server, "PUT", "/api/v1/spool/3/use").empty());
}

// A spool whose density Spoolman gives as 1e30 g/cm³ would weigh a job's filament beyond
// PROTOCOL §4's quantity limit: the answer is malformed and the job waits, as when Spoolman is
// unreachable, rather than be weighed with it.
TEST_F(MoonrakerDriverTest, SpoolmanDensityBeyondAnySolidIsMalformed) {
  const auto job = history_job("000051", "completed", 1767196800.0, 1000);
  nlohmann::json spool = {
      {"id", 3},
      {"filament", {{"density", 1e30}, {"diameter", 1.75}, {"material", "ABS"}, {"name", "ABS"}}}};
  nlohmann::json spool_route = {
      {"method", "GET"}, {"path", "/api/v1/spool/3"}, {"responses", {ok(spool)}}};
  reflow_test::HttpReplayServer server(script({ok(page_of({job}))}, {spool_route}));
  CapturingSink sink;
  auto driver =
      make(keys_for(server, fmt::format("spoolman_url = \"{}\"\nspool_id = 3\n", server.url())));
  ASSERT_TRUE(driver);
  start(*driver, sink);
  ASSERT_TRUE(m_env.next_poll());
  driver->stop();
  EXPECT_TRUE(sink.events().empty());
  EXPECT_GE(driver->health().malformed, 1u);
}

TEST_F(MoonrakerDriverTest, CorruptCursorRefusesToStart) {
  write_text(m_state_dir / "cursor.json", "{\"since\":\"yesterday\"}");
  CapturingSink sink;
  auto driver = make("url = \"http://127.0.0.1:1\"\nresource = \"printer:voron-01\"\n");
  ASSERT_TRUE(driver);
  auto started = driver->start(sink, m_state_dir);
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, ErrorCode::corruption);
  EXPECT_NE(started.error().message.find("cursor.json"), std::string::npos);
}

TEST_F(MoonrakerDriverTest, BadConfigIsRefusedNamingTheKey) {
  struct Case {
    std::string keys;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {"resource = \"printer:a\"\n", "agent.toml:6: driver.voron.url: is required"},
           {"url = \"http://p:7125\"\n", "agent.toml:6: driver.voron.resource: is required"},
           {"url = \"ws://p:7125\"\nresource = \"printer:a\"\n",
            "agent.toml:9: driver.voron.url: expected a URL"},
           {"url = \"http://p\"\nresource = \"printer:a\"\nfilament_density_g_cm3 = 0\n",
            "agent.toml:11: driver.voron.filament_density_g_cm3: expected a number > 0"},
           {"url = \"http://p\"\nresource = \"printer:a\"\nfilament_density_g_cm3 = 30\n",
            "agent.toml:11: driver.voron.filament_density_g_cm3: expected a number > 0 and ≤ 25; "
            "got 30"},
           {"url = \"http://p\"\nresource = \"printer:a\"\nfilament_diameter_mm = inf\n",
            "agent.toml:11: driver.voron.filament_diameter_mm: expected a number > 0 and ≤ 10; "
            "got inf"},
           {"url = \"http://p\"\nresource = \"printer:a\"\nspool_id = 4\n",
            "agent.toml:11: driver.voron.spool_id: needs spoolman_url"},
           {"url = \"http://p\"\nresource = \"printer:a\"\nspoolman_report = \"length\"\n",
            "agent.toml:11: driver.voron.spoolman_report: needs spool_id"},
           {"url = \"http://p\"\nresource = \"printer:a\"\nspoolman_report = \"yes\"\n",
            "agent.toml:11: driver.voron.spoolman_report: expected one of \"off\", \"length\", "
            "\"weight\"; got \"yes\""},
           {"url = \"http://p\"\nresource = \"printer:a\"\npoll_interval = \"0s\"\n",
            "agent.toml:11: driver.voron.poll_interval: must be longer than 0"},
           {"url = \"http://p\"\nresource = \"printer:a\"\nfilament_stock = \"\"\n",
            "agent.toml:11: driver.voron.filament_stock: expected a non-empty string"},
       }) {
    auto driver = create(c.keys);
    ASSERT_FALSE(driver) << c.keys;
    EXPECT_EQ(driver.error().code, ErrorCode::invalid_config);
    EXPECT_NE(driver.error().message.find(c.message), std::string::npos) << driver.error().message;
  }
}

TEST_F(MoonrakerDriverTest, AJobStartedAfterAMembersBadgeAtThePrinterIsTheirs) {
  // An RDM6300 beside the printer (a real pseudo-terminal); ada is enrolled by the keyed hash of
  // her card. The job that starts 5 min after her badge is hers; one that started an hour before
  // it is nobody's.
  reflow_test::Pty reader;
  ASSERT_TRUE(reader.ok());
  auto secret = load_or_create_site_secret(site_secret_path(m_dir.path()));
  ASSERT_TRUE(secret) << secret.error().message;
  write_text(m_dir / "members.toml",
             fmt::format("[[member]]\nhandle = \"ada\"\nagent = \"person:ada\"\nbadges = "
                         "[\"{}\"]\n",
                         badge_hash(*secret, "0415A3B2C1")));
  const double t0 = 1'767'225'600.0;  // the FakeEnv's start
  const auto before = history_job("000040", "completed", t0 - 3600, 100);
  const auto after = history_job("000041", "completed", t0 + 300, 200);
  reflow_test::HttpReplayServer server(script({ok(page_of({})), ok(page_of({before, after}))}));
  auto config = parse_config(
      fmt::format("[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = "
                  "\"{}\"\n[members]\nfile = \"{}\"\nprovider = \"org:fablab\"\n\n"
                  "[[driver]]\nkind = \"moonraker\"\nname = \"voron\"\n{}"
                  "[driver.badge]\nsource = \"serial\"\ndevice = \"{}\"\nwindow = \"10m\"\n",
                  m_dir.path().string(), (m_dir / "members.toml").string(), keys_for(server),
                  reader.name()),
      "agent.toml");
  ASSERT_TRUE(config) << config.error().message;
  auto driver = moonraker_driver_kind().create(config->drivers.at(0), m_env, m_log);
  ASSERT_TRUE(driver) << driver.error().message;
  CapturingSink sink;
  start(**driver, sink);
  const auto state_has = [&](std::string_view text) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while ((*driver)->health().state.find(text) == std::string::npos)
      if (std::chrono::steady_clock::now() > give_up)
        return false;
      else
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return true;
  };
  ASSERT_TRUE(state_has("reader open")) << (*driver)->health().state;
  // STX, the card's 10 hex digits, their XOR checksum, ETX (RDM6300 datasheet).
  ASSERT_TRUE(
      reader.write("\x02"
                   "0415A3B2C1"
                   "C1\x03"));
  ASSERT_TRUE(state_has("known 1")) << (*driver)->health().state;
  ASSERT_TRUE(m_env.next_poll());
  const auto health = (*driver)->health();
  (*driver)->stop();
  const auto events = sink.fields();
  std::vector<nlohmann::ordered_json> uses;
  for (const auto& e : events) {
    const std::string process = e.value("inputOf", "");
    if (process == "moonraker:voron:job-000041") {
      EXPECT_EQ(e.value("receiver", ""), "person:ada") << e.dump();
    }
    if (process == "moonraker:voron:job-000040") {
      EXPECT_FALSE(e.contains("receiver")) << e.dump();
    }
    if (e.value("action", "") == "use") uses.push_back(e);
  }
  ASSERT_EQ(uses.size(), 2u);
  EXPECT_FALSE(uses[0].contains("provider"));
  EXPECT_EQ(uses[1].value("provider", ""), "org:fablab");
  EXPECT_NE(health.state.find("sessions without badge 1, last member ada"), std::string::npos)
      << health.state;
}

}  // namespace
}  // namespace agent
