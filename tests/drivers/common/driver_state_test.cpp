// SPDX-License-Identifier: AGPL-3.0-or-later
#include <fstream>

#include <gtest/gtest.h>

#include <reflow/drivers/driver_state.hpp>

#include "temp_dir.hpp"

namespace agent {
namespace {

class DriverStateTest : public ::testing::Test {
 protected:
  reflow_test::TempDir m_dir;
  std::filesystem::path m_file = m_dir / "state.json";
};

TEST_F(DriverStateTest, SavedStateLoadsBack) {
  nlohmann::json state = {{"last_job", 123}, {"counter_wh", 4567.5}, {"file", "benchy.gcode"}};
  ASSERT_TRUE(save_driver_state(m_file, state));
  auto loaded = load_driver_state(m_file);
  ASSERT_TRUE(loaded) << loaded.error().message;
  EXPECT_EQ(*loaded, state);

  ASSERT_TRUE(save_driver_state(m_file, {{"last_job", 124}}));
  loaded = load_driver_state(m_file);
  ASSERT_TRUE(loaded) << loaded.error().message;
  EXPECT_EQ(*loaded, nlohmann::json({{"last_job", 124}}));
}

TEST_F(DriverStateTest, MissingFileIsAnEmptyObject) {
  auto loaded = load_driver_state(m_file);
  ASSERT_TRUE(loaded) << loaded.error().message;
  EXPECT_TRUE(loaded->is_object());
  EXPECT_TRUE(loaded->empty());
}

TEST_F(DriverStateTest, GarbageIsCorruptionNamingTheFile) {
  for (const char* text : {"{\"last_job\": 12", "[1,2,3]", "42", ""}) {
    std::ofstream(m_file, std::ios::trunc) << text;
    auto loaded = load_driver_state(m_file);
    ASSERT_FALSE(loaded) << text;
    EXPECT_EQ(loaded.error().code, ErrorCode::corruption) << text;
    EXPECT_NE(loaded.error().message.find(m_file.string()), std::string::npos)
        << loaded.error().message;
  }
}

TEST_F(DriverStateTest, ReplaceLeavesNoTemporaryFile) {
  ASSERT_TRUE(save_driver_state(m_file, {{"last_job", 1}}));
  ASSERT_TRUE(save_driver_state(m_file, {{"last_job", 2}}));
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(m_dir.path()))
    names.push_back(entry.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"state.json"});
}

TEST_F(DriverStateTest, UnwritableDirectoryIsAnIoError) {
  auto saved = save_driver_state(m_dir / "missing" / "state.json", {{"last_job", 1}});
  ASSERT_FALSE(saved);
  EXPECT_EQ(saved.error().code, ErrorCode::io);
}

}  // namespace
}  // namespace agent
