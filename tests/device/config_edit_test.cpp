// SPDX-License-Identifier: AGPL-3.0-or-later
// Editing the agent's config in place for `reflow-agent enroll BUNDLE`
// (agent/device/src/config_edit.cpp): new values in, everything else kept byte for byte, and a
// refusal where a line-by-line edit cannot be trusted.
#include <reflow/device/config_edit.hpp>

#include <gtest/gtest.h>

namespace {

using agent::ErrorCode;
using agent::set_mqtt_string_keys;

TEST(ConfigEditTest, ReplacesValuesInPlaceKeepingCommentsAndAddsMissingKeys) {
  const std::string text =
      "# my agent\n[agent]\ndevice_id = \"a\"\n\n[mqtt]\n# the node\nurl = 'mqtt://old:1'  # old\n"
      "keepalive = \"30s\"\n\n# after\n[outbox]\nquota = \"1MiB\"\n";
  auto out = set_mqtt_string_keys(
      text, {{"url", "mqtts://n:8883"}, {"ca_file", "/etc/x \"y\".pem"}}, "agent.toml");
  ASSERT_TRUE(out) << out.error().message;
  EXPECT_EQ(
      *out,
      "# my agent\n[agent]\ndevice_id = \"a\"\n\n[mqtt]\n# the node\nurl = \"mqtts://n:8883\""
      "  # old\nkeepalive = \"30s\"\nca_file = \"/etc/x \\\"y\\\".pem\"\n\n# after\n[outbox]\n"
      "quota = \"1MiB\"\n");
}

TEST(ConfigEditTest, AppendsAnMqttTableWhenThereIsNone) {
  auto out = set_mqtt_string_keys("[agent]\ndevice_id = \"a\"", {{"url", "mqtts://n"}}, "a.toml");
  ASSERT_TRUE(out) << out.error().message;
  EXPECT_EQ(*out, "[agent]\ndevice_id = \"a\"\n\n[mqtt]\nurl = \"mqtts://n\"\n");
}

TEST(ConfigEditTest, RefusesWhatALineEditCannotBeTrustedWith) {
  for (const std::string& text : {
           std::string("[mqtt]\nurl = \"\"\"\nmqtt://x\"\"\"\n"),  // multi-line string
           std::string("mqtt.url = \"mqtt://x\"\n"),               // dotted keys
           std::string("mqtt = { url = \"mqtt://x\" }\n"),         // inline table
           std::string("[mqtt\n"),                                 // not TOML at all
       }) {
    auto out = set_mqtt_string_keys(text, {{"url", "mqtts://n"}}, "a.toml");
    ASSERT_FALSE(out) << text << " gave " << *out;
    EXPECT_EQ(out.error().code, ErrorCode::invalid_config);
    EXPECT_NE(out.error().message.find("a.toml"), std::string::npos) << out.error().message;
  }
  auto out =
      set_mqtt_string_keys("[mqtt]\nurl = \"\"\"\nx\"\"\"\n", {{"url", "mqtts://n"}}, "a.toml");
  ASSERT_FALSE(out);
  EXPECT_NE(out.error().message.find("by hand: url = \"mqtts://n\""), std::string::npos)
      << out.error().message;
}

}  // namespace
