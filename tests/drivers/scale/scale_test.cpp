// SPDX-License-Identifier: AGPL-3.0-or-later
// The scale reader and the `scale` kind through real pseudo-terminals: the test holds the master
// side and plays the scale; the reader opens a symlink to the slave, so the test can remove the
// link and point it at a new pty to simulate unplug and replug. Time is a FakeEnv.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/driver.hpp>

#include "frames.hpp"
#include "pty.hpp"
#include "scale_reader.hpp"
#include "temp_dir.hpp"

namespace agent {
const DriverKind& scale_driver_kind();  // what the generated registry calls
}  // namespace agent

namespace {

using namespace std::chrono_literals;
using agent::scale::Protocol;

const std::filesystem::path k_testdata =
    std::filesystem::path(REFLOW_SOURCE_DIR) / "drivers" / "scale" / "testdata";
constexpr auto k_bound = 20s;  // generous: a loaded CI machine, never a timing assertion

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The scale's side of a pseudo-terminal pair, raw from the start: a hidraw stand-in gets no
// termios from the reader.
using reflow_test::Pty;
constexpr auto k_raw = Pty::Termios::raw;

class ScaleReaderTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (m_reader) m_reader->stop();
  }

  // Points the configured by-id style path at `pty`.
  void plug(const Pty& pty) {
    std::filesystem::remove(m_link);
    std::filesystem::create_symlink(pty.name(), m_link);
  }
  void unplug(Pty& pty) {
    std::filesystem::remove(m_link);
    pty.close();
  }

  void start(Protocol protocol, int stable_readings = 3) {
    agent::scale::ScaleConfig config;
    config.path = m_link.string();
    config.protocol = protocol;
    config.stable_readings = stable_readings;
    config.poll_interval = 500ms;
    m_reader = agent::scale::make_scale_reader(config, m_env, m_log, "scale test");
    ASSERT_TRUE(m_reader->start([this](const agent::scale::Weight& w) {
      {
        std::lock_guard lock(m_mutex);
        m_weights.push_back(w);
      }
      m_changed.notify_all();
    }));
  }

  bool wait_until(const std::function<bool()>& condition) {
    const auto deadline = std::chrono::steady_clock::now() + k_bound;
    std::unique_lock lock(m_mutex);
    while (!condition()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      // Health changes are not signalled: look again every few milliseconds.
      m_changed.wait_for(lock, 5ms);
    }
    return true;
  }
  bool wait_for_weights(std::size_t count) {
    return wait_until([&] { return m_weights.size() >= count; });
  }
  bool wait_for_state(std::string_view state) {
    return wait_until([&] { return m_reader->health().state == state; });
  }
  bool wait_for_errors(std::uint64_t count) {
    return wait_until([&] { return m_reader->health().errors >= count; });
  }

  std::vector<agent::scale::Weight> weights() {
    std::lock_guard lock(m_mutex);
    return m_weights;
  }

  static std::vector<nlohmann::json> expected(const std::string& name) {
    std::vector<nlohmann::json> out;
    std::istringstream lines(read_file(k_testdata / name / "expected.jsonl"));
    for (std::string line; std::getline(lines, line);)
      if (!line.empty()) out.push_back(nlohmann::json::parse(line));
    return out;
  }

  void expect_weights(const std::string& name, bool at_now = true) {
    const auto want = expected(name);
    const auto got = weights();
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      SCOPED_TRACE(i);
      EXPECT_NEAR(got[i].kilograms, want[i]["kilograms"].get<double>(), 1e-9);
      EXPECT_EQ(got[i].net, want[i]["net"].get<bool>());
      if (at_now) {
        EXPECT_EQ(got[i].unix_ms, m_env.now_unix_ms());
      }
    }
  }

  // Replays a recorded stream in 7-byte pieces (frames split across reads) and waits until the
  // reader has taken every frame in it, so that no weight can still be on its way.
  void replay(const std::string& name, Protocol protocol, bool has_overload = true) {
    const std::string stream = read_file(k_testdata / name / "stream.bin");
    ASSERT_FALSE(stream.empty());
    agent::scale::FrameSplitter counter(protocol);
    std::vector<std::string> frames;
    counter.feed(stream, frames);

    Pty pty(k_raw);
    ASSERT_TRUE(pty.ok());
    plug(pty);
    start(protocol);
    ASSERT_TRUE(wait_for_state("connected"));
    for (std::size_t i = 0; i < stream.size(); i += 7)
      pty.write(stream.substr(i, 7));
    ASSERT_TRUE(wait_until([&] { return m_reader->health().frames >= frames.size(); }))
        << m_reader->health().frames << " of " << frames.size() << " frames";
    expect_weights(name);
    const auto health = m_reader->health();
    EXPECT_EQ(health.frames, frames.size());
    EXPECT_GT(health.malformed, 0u) << "every recording holds some garbage";
    if (has_overload) {
      EXPECT_GT(health.overloads, 0u) << "the recording holds an overload";
    }
    EXPECT_EQ(health.weights, expected(name).size());
    EXPECT_EQ(health.errors, 0u);
  }

  reflow_test::TempDir m_dir;
  std::filesystem::path m_link = m_dir / "usb-Scale_Indicator-if00-port0";
  agent::FakeEnv m_env;
  agent::Logger m_log{agent::LogLevel::error};
  std::unique_ptr<agent::scale::ScaleReader> m_reader;
  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::vector<agent::scale::Weight> m_weights;
};

TEST_F(ScaleReaderTest, ReplaysStGsIndicatorOnlyStableWeights) {
  replay("st_gs", Protocol::st_gs);
}

TEST_F(ScaleReaderTest, ReplaysAndBalance) {
  replay("and", Protocol::and_standard);
}

TEST_F(ScaleReaderTest, ReplaysOhausBalance) {
  replay("ohaus", Protocol::ohaus, /*has_overload=*/false);  // its overload output is unverified
}

TEST_F(ScaleReaderTest, ReplaysToledoContinuousWithChecksum) {
  replay("toledo", Protocol::toledo);
}

TEST_F(ScaleReaderTest, ReplaysToledoContinuousWithoutChecksum) {
  replay("toledo_no_checksum", Protocol::toledo);
}

TEST_F(ScaleReaderTest, ReplaysHidScaleReports) {
  replay("hid", Protocol::hid);
}

TEST_F(ScaleReaderTest, PollsMtSicsWithSiOnTheEnvClock) {
  std::vector<std::string> replies;
  std::istringstream lines(read_file(k_testdata / "mt_sics" / "replies.txt"));
  for (std::string line; std::getline(lines, line);)
    replies.push_back(line + "\n");
  ASSERT_FALSE(replies.empty());

  Pty pty(k_raw);
  ASSERT_TRUE(pty.ok());
  plug(pty);
  start(Protocol::mt_sics);
  for (std::size_t i = 0; i < replies.size(); ++i) {
    SCOPED_TRACE(i);
    ASSERT_TRUE(pty.expect("SI\r\n", k_bound)) << "the reader did not ask";
    pty.write(replies[i]);
    ASSERT_TRUE(wait_until([&] { return m_reader->health().frames >= i + 1; }));
    m_env.advance_ms(500);  // the next poll is due
  }
  expect_weights("mt_sics", /*at_now=*/false);
  // Each weight carries the Env time of the reply that settled it: replies are 500 ms apart.
  const auto got = weights();
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[1].unix_ms - got[0].unix_ms, 6 * 500);  // replies 4 and 10
  const auto health = m_reader->health();
  EXPECT_EQ(health.malformed, 1u);  // "S X 12.0 kg"
  EXPECT_EQ(health.overloads, 3u);  // "S +" twice, "S -"
}

TEST_F(ScaleReaderTest, SurvivesUnplugAndReplugWithBackoff) {
  const std::string frames = "ST,GS,+  1.234,kg\r\nST,GS,+  1.234,kg\r\nST,GS,+  1.234,kg\r\n";
  auto first = std::make_unique<Pty>(k_raw);
  ASSERT_TRUE(first->ok());
  plug(*first);
  start(Protocol::st_gs);
  ASSERT_TRUE(wait_for_state("connected"));
  first->write(frames);
  ASSERT_TRUE(wait_for_weights(1));

  unplug(*first);
  ASSERT_TRUE(wait_for_errors(1));
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  EXPECT_EQ(m_reader->health().state, "waiting for device");

  // Still gone after the first second: the reader tries, fails and waits longer.
  m_env.advance_ms(1'000);
  ASSERT_TRUE(wait_for_errors(2));
  ASSERT_TRUE(m_env.wait_for_sleepers(1));

  Pty second(k_raw);
  ASSERT_TRUE(second.ok());
  plug(second);
  m_env.advance_ms(2'000);
  ASSERT_TRUE(wait_for_state("connected"));
  second.write(frames);
  // The same value after a reconnect is a new weighing.
  ASSERT_TRUE(wait_for_weights(2));
  EXPECT_DOUBLE_EQ(weights()[1].kilograms, 1.234);
  const auto health = m_reader->health();
  EXPECT_EQ(health.errors, 2u);
  EXPECT_NE(health.last_error.find("usb-Scale_Indicator"), std::string::npos) << health.last_error;
}

TEST_F(ScaleReaderTest, WaitsForAScaleThatIsNotThereYet) {
  start(Protocol::st_gs);
  ASSERT_TRUE(wait_for_errors(1));
  EXPECT_EQ(m_reader->health().state, "waiting for device");
  // Backoff doubles up to 30 s: 1, 2, 4, 8, 16, 30, 30.
  for (const int ms : {1'000, 2'000, 4'000, 8'000, 16'000, 30'000}) {
    ASSERT_TRUE(m_env.wait_for_sleepers(1));
    const auto before = m_reader->health().errors;
    m_env.advance_ms(ms);
    ASSERT_TRUE(wait_for_errors(before + 1)) << "no retry after " << ms << " ms";
  }
  Pty pty(k_raw);
  ASSERT_TRUE(pty.ok());
  plug(pty);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  m_env.advance_ms(30'000);
  ASSERT_TRUE(wait_for_state("connected"));
  pty.write("ST,GS,+  0.000,kg\r\nST,GS,+  0.000,kg\r\nST,GS,+  0.000,kg\r\n");
  ASSERT_TRUE(wait_for_weights(1));
  EXPECT_EQ(weights()[0].kilograms, 0.0);  // stable zero is reported
}

// ---- config and the `scale` kind ----

class ScaleConfigTest : public ::testing::Test {
 protected:
  static agent::Result<agent::AgentConfig> config_with(const std::string& driver) {
    return agent::parse_config(
        "[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"/tmp/d\"\n\n" +
            driver,
        "agent.toml");
  }
};

TEST_F(ScaleConfigTest, ReadsPrefixedKeysForTheStation) {
  auto config = config_with(
      "[[driver]]\nkind = \"station\"\nname = \"intake\"\n"
      "scale = \"/dev/serial/by-id/usb-FTDI-if00-port0\"\nscale_protocol = \"toledo\"\n"
      "scale_baud = 4800\nscale_parity = \"even\"\nscale_data_bits = 7\nscale_stop_bits = 2\n"
      "scale_stable_readings = 5\nscale_poll_interval = \"250ms\"\nscale_resolution = 0.005\n");
  ASSERT_TRUE(config) << config.error().message;
  agent::DriverTable table(config->drivers.at(0));
  auto scale = agent::scale::parse_scale_config(table, "scale_");
  ASSERT_TRUE(scale) << scale.error().message;
  EXPECT_EQ(scale->path, "/dev/serial/by-id/usb-FTDI-if00-port0");
  EXPECT_EQ(scale->protocol, Protocol::toledo);
  EXPECT_EQ(scale->serial.baud, 4800);
  EXPECT_EQ(scale->serial.parity, agent::SerialSettings::Parity::even);
  EXPECT_EQ(scale->serial.data_bits, 7);
  EXPECT_EQ(scale->serial.stop_bits, 2);
  EXPECT_EQ(scale->stable_readings, 5);
  EXPECT_EQ(scale->poll_interval, 250ms);
  EXPECT_DOUBLE_EQ(scale->resolution_kg, 0.005);

  const auto& keys = agent::scale::scale_keys("scale_");
  ASSERT_FALSE(keys.empty());
  EXPECT_EQ(keys[0].key, "scale");
  EXPECT_EQ(keys[1].key, "scale_protocol");
  EXPECT_EQ(agent::scale::scale_keys("")[0].key, "path");
}

TEST_F(ScaleConfigTest, NamesTheKeyAndLineOfAWrongValue) {
  auto config = config_with(
      "[[driver]]\nkind = \"scale\"\nname = \"s1\"\npath = \"/dev/ttyUSB0\"\nbaud = 9601\n");
  ASSERT_TRUE(config) << config.error().message;
  agent::DriverTable table(config->drivers.at(0));
  auto scale = agent::scale::parse_scale_config(table, "");
  ASSERT_FALSE(scale);
  EXPECT_EQ(scale.error().code, agent::ErrorCode::invalid_config);
  EXPECT_NE(scale.error().message.find("agent.toml:"), std::string::npos);
  EXPECT_NE(scale.error().message.find("baud"), std::string::npos);
  EXPECT_NE(scale.error().message.find("9601"), std::string::npos);

  auto protocol = config_with(
      "[[driver]]\nkind = \"scale\"\nname = \"s1\"\npath = \"/dev/ttyUSB0\"\nprotocol = \"x\"\n");
  ASSERT_TRUE(protocol);
  agent::DriverTable table2(protocol->drivers.at(0));
  auto bad = agent::scale::parse_scale_config(table2, "");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("mt_sics"), std::string::npos) << bad.error().message;

  auto missing = config_with("[[driver]]\nkind = \"scale\"\nname = \"s1\"\n");
  ASSERT_TRUE(missing);
  agent::DriverTable table3(missing->drivers.at(0));
  auto no_path = agent::scale::parse_scale_config(table3, "");
  ASSERT_FALSE(no_path);
  EXPECT_NE(no_path.error().message.find("path"), std::string::npos);
}

// Accepts nothing: the scale kind must never submit.
class NoEventsSink final : public agent::EventSink {
 public:
  agent::Status submit(nlohmann::ordered_json, agent::EventSource, agent::SubmitCallback,
                       agent::QueueFull) override {
    ++submitted;
    return agent::fail(agent::ErrorCode::internal, "the scale kind submitted an event");
  }
  std::atomic<int> submitted{0};
};

TEST_F(ScaleReaderTest, ScaleKindShowsTheLastWeightInHealthAndEmitsNothing) {
  Pty pty(k_raw);
  ASSERT_TRUE(pty.ok());
  plug(pty);
  auto config = agent::parse_config(
      "[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"/tmp/d\"\n\n"
      "[[driver]]\nkind = \"scale\"\nname = \"bench\"\npath = \"" +
          m_link.string() + "\"\nprotocol = \"st_gs\"\n",
      "agent.toml");
  ASSERT_TRUE(config) << config.error().message;
  auto driver = agent::scale_driver_kind().create(config->drivers.at(0), m_env, m_log);
  ASSERT_TRUE(driver) << driver.error().message;
  NoEventsSink sink;
  ASSERT_TRUE((*driver)->start(sink, m_dir.path()));
  ASSERT_TRUE(wait_until([&] { return (*driver)->health().state.starts_with("connected"); }));
  pty.write("ST,GS,+  2.345,kg\r\nST,GS,+  2.345,kg\r\nST,GS,+  2.345,kg\r\n");
  ASSERT_TRUE(wait_until([&] {
    return (*driver)->health().state.find("2.345 kg") != std::string::npos;
  })) << (*driver)->health().state;
  (*driver)->stop();
  const auto health = (*driver)->health();
  EXPECT_EQ(health.events, 0u);
  EXPECT_EQ(sink.submitted.load(), 0);
}

}  // namespace
