// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/json_strict.hpp>

#include <string>

#include <gtest/gtest.h>

namespace agent {
namespace {

std::string error_of(std::string_view text) {
  auto parsed = parse_json_strict(text);
  EXPECT_FALSE(parsed.has_value()) << text;
  return parsed ? std::string() : parsed.error().message;
}

TEST(JsonStrictTest, ParsesOrdinaryDocumentsLikeNlohmann) {
  const std::string text =
      R"({"b":1,"a":[true,null,-2,0.5,"x\u00e9"],"c":{"d":{}},"e":-0,"f":9007199254740991})";
  auto parsed = parse_json_strict(text);
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(*parsed, nlohmann::ordered_json::parse(text));
  EXPECT_EQ(parsed->dump(), nlohmann::ordered_json::parse(text).dump());  // order kept
  EXPECT_TRUE(parse_json_strict("  [1, 2]\n"));
  EXPECT_TRUE(parse_json_strict("\"just a string\""));
}

TEST(JsonStrictTest, RefusesRepeatedMemberNamesAtAnyDepth) {
  EXPECT_NE(error_of(R"({"seq":1,"seq":2})").find("member \"seq\" appears twice"),
            std::string::npos);
  const std::string nested = error_of(R"({"meta":{"parts":[{"a":1},{"a":1,"a":2}]}})");
  EXPECT_NE(nested.find("$.meta.parts[1].a"), std::string::npos) << nested;
  // The same name in sibling objects is fine.
  EXPECT_TRUE(parse_json_strict(R"([{"a":1},{"a":2}])"));
}

TEST(JsonStrictTest, FindsRepeatsInLargeObjectsToo) {
  std::string text = "{";
  for (int i = 0; i < 500; ++i)
    text += "\"k" + std::to_string(i) + "\":0,";
  EXPECT_TRUE(parse_json_strict(text + "\"last\":1}"));
  EXPECT_NE(error_of(text + "\"k7\":1}").find("\"k7\" appears twice"), std::string::npos);
}

TEST(JsonStrictTest, RefusesAByteOrderMark) {
  EXPECT_NE(error_of("\xEF\xBB\xBF{}").find("byte order mark"), std::string::npos);
}

TEST(JsonStrictTest, BoundsNesting) {
  std::string ok(k_max_json_depth, '[');
  ok += std::string(k_max_json_depth, ']');
  EXPECT_TRUE(parse_json_strict(ok));
  std::string deep(k_max_json_depth + 1, '[');
  deep += std::string(k_max_json_depth + 1, ']');
  EXPECT_NE(error_of(deep).find("nested deeper than 16"), std::string::npos);
  // Thousands deep costs nothing: the parse stops at the limit.
  std::string hostile(100000, '[');
  EXPECT_NE(error_of(hostile).find("nested deeper"), std::string::npos);
}

TEST(JsonStrictTest, NumbersEveryReaderReadsTheSame) {
  EXPECT_TRUE(parse_json_strict("[9007199254740991,-9007199254740991,1e300,2.5e-300,0.0,0e5]"));
  EXPECT_NE(error_of("[9007199254740992]").find("beyond ±(2^53 − 1)"), std::string::npos);
  EXPECT_NE(error_of("[-9007199254740992]").find("beyond"), std::string::npos);
  EXPECT_NE(error_of("[9223372036854775807]").find("beyond"), std::string::npos);
  EXPECT_NE(error_of("[123456789012345678901234567890]").find("beyond"), std::string::npos);
  EXPECT_NE(error_of("[1e400]").find("1e400 is too large"), std::string::npos);
  EXPECT_NE(error_of("[1.8e308]").find("too large"), std::string::npos);
  EXPECT_NE(error_of("[1e-400]").find("1e-400 is too small"), std::string::npos);
  EXPECT_NE(error_of("[5e-324]").find("too small"), std::string::npos);
}

TEST(JsonStrictTest, SyntaxErrorsSayLineAndColumnAndNameNaN) {
  EXPECT_EQ(error_of("{\"a\":\n  NaN}").substr(0, 19), "line 2, column 3: N");
  EXPECT_NE(error_of("{\"a\":NaN}").find("NaN is not a JSON number"), std::string::npos);
  EXPECT_NE(error_of("[-Infinity]").find("-Infinity is not a JSON number"), std::string::npos);
  const std::string missing = error_of("{\"a\":1,}");
  EXPECT_EQ(missing.rfind("line 1, column 8: ", 0), 0U) << missing;
  EXPECT_NE(error_of("{} {}").find("line 1, column 4"), std::string::npos);
  EXPECT_FALSE(parse_json_strict(""));
}

TEST(JsonStrictTest, RefusesInvalidUtf8AndQuotesNoRawBytes) {
  const std::string message = error_of("{\"a\xff\":1}");
  EXPECT_EQ(message.find('\xff'), std::string::npos);
  EXPECT_NE(message.find("line 1"), std::string::npos);
}

TEST(JsonStringAtTest, FollowsMemberNamesAndGivesEmptyWhereThePathEnds) {
  const auto answer = nlohmann::json::parse(
      R"({"data": {"createProcess": {"process": {"id": "01HX", "n": 3}}, "list": [1]}})");
  EXPECT_EQ(string_at(answer, {"data", "createProcess", "process", "id"}), "01HX");
  EXPECT_EQ(string_at(answer, {"data", "createProcess", "process", "missing"}), "");
  EXPECT_EQ(string_at(answer, {"data", "createProcess", "process", "n"}), "");  // not a string
  EXPECT_EQ(string_at(answer, {"data", "list", "0"}), "");                      // not an object
  EXPECT_EQ(string_at(nlohmann::json(nullptr), {"data"}), "");
}

}  // namespace
}  // namespace agent
