// SPDX-License-Identifier: AGPL-3.0-or-later
// Golden cases of the power driver (drivers/power/testdata/<case>/): the driver table, the
// recorded plug messages and the expected events, shared by the logic and the broker tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/device/config.hpp>
#include <reflow/drivers/valueflows.hpp>

#include "power_logic.hpp"

namespace agent::power::testing {

/// The FakeEnv's default start: `at_ms` in messages.jsonl counts from here.
inline constexpr std::int64_t k_case_start_ms = 1'767'225'600'000;

inline const std::filesystem::path k_testdata =
    std::filesystem::path(REFLOW_SOURCE_DIR) / "drivers" / "power" / "testdata";

/// One line of messages.jsonl: a message, or (no topic) time passing.
struct CaseMessage {
  std::optional<std::string> topic;
  std::string payload;
  bool retained = false;
  std::int64_t at_ms = 0;  ///< after k_case_start_ms
};

struct GoldenCase {
  DriverConfig driver;
  PowerConfig config;
  std::vector<CaseMessage> messages;
  std::vector<nlohmann::ordered_json> expected;
};

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

inline std::vector<nlohmann::ordered_json> read_jsonl(const std::filesystem::path& path) {
  std::vector<nlohmann::ordered_json> lines;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) lines.push_back(nlohmann::ordered_json::parse(line));
  return lines;
}

/// A `[[driver]]` table parsed by the real config parser, as the agent reads it.
inline Result<DriverConfig> driver_config(const std::string& driver_table) {
  auto config = parse_config(
      "[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"/tmp/d\"\n\n" +
          driver_table,
      "agent.toml");
  if (!config) return std::unexpected(config.error());
  if (config->drivers.size() != 1) return fail(ErrorCode::internal, "expected one [[driver]]");
  return config->drivers.front();
}

/// Loads a case; `broker_url` replaces the url key (for the broker tests).
inline GoldenCase load_case(const std::string& name, const std::string& extra_keys = "") {
  const auto dir = k_testdata / name;
  GoldenCase golden;
  auto driver = driver_config(read_text(dir / "driver.toml") + extra_keys);
  EXPECT_TRUE(driver) << driver.error().message;
  if (!driver) return golden;
  golden.driver = *driver;
  auto config = read_power_config(golden.driver);
  EXPECT_TRUE(config) << config.error().message;
  if (config) golden.config = *config;
  for (const auto& line : read_jsonl(dir / "messages.jsonl")) {
    CaseMessage message;
    if (line.contains("topic")) {
      message.topic = line.at("topic").get<std::string>();
      message.payload = line.at("payload").get<std::string>();
    }
    message.retained = line.value("retained", false);
    message.at_ms = line.at("at_ms").get<std::int64_t>();
    golden.messages.push_back(std::move(message));
  }
  golden.expected = read_jsonl(dir / "expected.jsonl");
  return golden;
}

/// JSON equality with numbers compared to 1e-9 relative (hours are ms / 3 600 000).
inline bool same_json(const nlohmann::ordered_json& a, const nlohmann::ordered_json& b) {
  if (a.is_number() && b.is_number()) {
    const double x = a.get<double>(), y = b.get<double>();
    return std::fabs(x - y) <= 1e-9 * std::max({1.0, std::fabs(x), std::fabs(y)});
  }
  if (a.type() != b.type()) return false;
  if (a.is_object()) {
    if (a.size() != b.size()) return false;
    for (auto it = a.begin(); it != a.end(); ++it)
      if (!b.contains(it.key()) || !same_json(it.value(), b.at(it.key()))) return false;
    return true;
  }
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (!same_json(a[i], b[i])) return false;
    return true;
  }
  return a == b;
}

inline void expect_events(const std::vector<nlohmann::ordered_json>& actual,
                          const std::vector<nlohmann::ordered_json>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (std::size_t i = 0; i < actual.size(); ++i) {
    EXPECT_TRUE(validate_submission(actual[i])) << actual[i].dump();
    // zenflows records it: the session's process link, what its action needs.
    Status zenflows = vf::check_zenflows_rules(expected[i]);
    EXPECT_TRUE(zenflows) << "event " << i << ": " << zenflows.error().message;
    EXPECT_TRUE(same_json(actual[i], expected[i]))
        << "event " << i << "\n  actual:   " << actual[i].dump()
        << "\n  expected: " << expected[i].dump();
  }
}

}  // namespace agent::power::testing
