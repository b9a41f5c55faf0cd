// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/event.hpp>

#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <gtest/gtest.h>

#include <reflow/core/jose.hpp>

namespace agent {
namespace {

using Json = nlohmann::ordered_json;

// One mutation of a valid input and the text its error must contain.
struct Case {
  std::string name;
  std::function<void(Json&)> mutate;
  std::string expected;  // empty: the mutated input must still be valid
};

class EventTest : public ::testing::Test {
 protected:
  static Json valid_submission() {
    return Json::parse(R"({"action":"use","hasPointInTime":"2026-01-01T00:00:00Z",
        "resourceInventoriedAs":"printer-1",
        "effortQuantity":{"hasNumericalValue":1.5,"hasUnit":"hour"}})");
  }

  static EventStamp stamp(std::int64_t seq) {
    EventStamp s;
    s.id = "01KDXE6E000000000000000001";
    s.device = "fablab-mk4-01";
    s.stream = "01KDXE6E00ABCDEFGHJKMNPQRS";
    s.seq = seq;
    s.prev = seq == 1 ? "" : sha256_b64url("previous signing input");
    s.recorded_unix_ms = 1'767'225'600'123;
    s.clock = ClockSync::synced;
    return s;
  }

  static Json valid_event(std::int64_t seq = 2) {
    return Json::parse(make_event_payload(stamp(seq), valid_submission(),
                                          EventSource{"sim", "printer", "job 123"}));
  }

  // Runs each case against `base` through `validate` and checks the outcome.
  static void run(const std::vector<Case>& cases, const Json& base,
                  const std::function<Status(const Json&)>& validate) {
    for (const auto& c : cases) {
      Json input = base;
      c.mutate(input);
      Status result = validate(input);
      if (c.expected.empty()) {
        EXPECT_TRUE(result.has_value())
            << c.name << ": unexpected error: " << result.error().message;
        continue;
      }
      ASSERT_FALSE(result.has_value()) << c.name << ": accepted " << input.dump();
      EXPECT_EQ(result.error().code, ErrorCode::rejected) << c.name;
      EXPECT_NE(result.error().message.find(c.expected), std::string::npos)
          << c.name << ": want \"" << c.expected << "\" in: " << result.error().message;
    }
  }

  static void run_submission(const std::vector<Case>& cases) {
    run(cases, valid_submission(), [](const Json& j) { return validate_submission(j); });
  }
};

TEST_F(EventTest, AcceptsAValidSubmission) {
  auto result = validate_submission(valid_submission());
  EXPECT_TRUE(result.has_value()) << result.error().message;
}

TEST_F(EventTest, RefusesANonObject) {
  auto result = validate_submission(Json::array());
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, ErrorCode::rejected);
  EXPECT_NE(result.error().message.find("expected a JSON object"), std::string::npos);
}

// Found by tests/fuzz (event_payload): a message quoting a value was cut inside a UTF-8
// character, and the node serves the message as JSON (a rejection's detail), which then threw.
TEST_F(EventTest, AMessageQuotingAValueIsValidUtf8WhereverTheCutFalls) {
  for (std::size_t pad = 50; pad < 64; ++pad) {
    SCOPED_TRACE(pad);
    const Json value(std::string(pad, 'a') + "€€€€");
    for (const auto& result : {validate_submission(value), validate_event_payload(value)}) {
      ASSERT_FALSE(result.has_value());
      EXPECT_NO_THROW((void)Json(result.error().message).dump()) << result.error().message;
    }
  }
}

TEST_F(EventTest, RefusesFieldsTheAgentFillsAndUnknownFields) {
  run_submission({
      {"seq", [](Json& j) { j["seq"] = 3; }, "seq: filled by the agent; remove it"},
      {"v", [](Json& j) { j["v"] = 1; }, "v: filled by the agent; remove it"},
      {"id", [](Json& j) { j["id"] = "x"; }, "id: filled by the agent; remove it"},
      {"prev", [](Json& j) { j["prev"] = nullptr; }, "prev: filled by the agent"},
      {"source", [](Json& j) { j["source"] = Json::object(); }, "source: filled by the agent"},
      {"unknown", [](Json& j) { j["colour"] = "red"; },
       "colour: unknown field (expected one of: action, hasPointInTime"},
      {"all producer fields",
       [](Json& j) {
         j["provider"] = "a";
         j["receiver"] = "b";
         j["toResourceInventoriedAs"] = "c";
         j["resourceConformsTo"] = "d";
         j["resourceClassifiedAs"] = Json::array({"e"});
         j["resourceQuantity"] = Json{{"hasNumericalValue", 2}, {"hasUnit", "gram"}};
         j["inputOf"] = "f";
         j["outputOf"] = "g";
         j["atLocation"] = "h";
         j["toLocation"] = "i";
         j["note"] = "j";
         j["meta"] = Json::object();
       },
       ""},
  });
}

TEST_F(EventTest, RequiresAKnownAction) {
  run_submission({
      {"missing", [](Json& j) { j.erase("action"); }, "action: required"},
      {"unknown", [](Json& j) { j["action"] = "print"; },
       R"(action: unknown ValueFlows action "print" (expected one of: use, work,)"},
      {"wrong case", [](Json& j) { j["action"] = "Use"; }, "action: unknown"},
      {"not a string", [](Json& j) { j["action"] = 5; }, "action: unknown ValueFlows action 5"},
      {"deliverService", [](Json& j) { j["action"] = "deliverService"; }, ""},
  });
}

TEST_F(EventTest, RequiresOneUtcTimeForm) {
  run_submission({
      {"both forms", [](Json& j) { j["hasBeginning"] = "2026-01-01T00:00:00Z"; },
       "hasPointInTime and hasBeginning/hasEnd: use one time form, not both"},
      {"point and end", [](Json& j) { j["hasEnd"] = "2026-01-01T00:00:00Z"; },
       "use one time form, not both"},
      {"none", [](Json& j) { j.erase("hasPointInTime"); },
       "hasPointInTime or hasBeginning/hasEnd: required"},
      {"not RFC 3339", [](Json& j) { j["hasPointInTime"] = "yesterday"; },
       "hasPointInTime: expected an RFC 3339"},
      {"not a string", [](Json& j) { j["hasPointInTime"] = 1767225600; },
       "hasPointInTime: expected an RFC 3339 UTC time string"},
      {"offset", [](Json& j) { j["hasPointInTime"] = "2026-01-01T01:00:00+01:00"; },
       R"(hasPointInTime: must be in UTC, ending in "Z")"},
      {"fraction", [](Json& j) { j["hasPointInTime"] = "2026-01-01T00:00:00.250Z"; }, ""},
      {"beginning after end",
       [](Json& j) {
         j.erase("hasPointInTime");
         j["hasBeginning"] = "2026-01-01T00:00:01Z";
         j["hasEnd"] = "2026-01-01T00:00:00Z";
       },
       R"(hasBeginning: "2026-01-01T00:00:01Z" is after hasEnd "2026-01-01T00:00:00Z")"},
      {"end not UTC",
       [](Json& j) {
         j.erase("hasPointInTime");
         j["hasBeginning"] = "2026-01-01T00:00:00Z";
         j["hasEnd"] = "2026-01-01T02:00:00+01:00";
       },
       "hasEnd: must be in UTC"},
      {"beginning bad",
       [](Json& j) {
         j.erase("hasPointInTime");
         j["hasBeginning"] = "2026-13-01T00:00:00Z";
       },
       "hasBeginning: expected an RFC 3339"},
      {"interval",
       [](Json& j) {
         j.erase("hasPointInTime");
         j["hasBeginning"] = "2026-01-01T00:00:00Z";
         j["hasEnd"] = "2026-01-01T01:30:00Z";
       },
       ""},
      {"empty interval",
       [](Json& j) {
         j.erase("hasPointInTime");
         j["hasBeginning"] = "2026-01-01T00:00:00Z";
         j["hasEnd"] = "2026-01-01T00:00:00Z";
       },
       ""},
      {"beginning only",
       [](Json& j) {
         j.erase("hasPointInTime");
         j["hasBeginning"] = "2026-01-01T00:00:00Z";
       },
       ""},
      {"end only",
       [](Json& j) {
         j.erase("hasPointInTime");
         j["hasEnd"] = "2026-01-01T00:00:00Z";
       },
       ""},
  });
}

TEST_F(EventTest, RequiresQuantitiesWithPositiveValueAndOm2Unit) {
  run_submission({
      {"not an object", [](Json& j) { j["effortQuantity"] = 1.5; },
       "effortQuantity: expected {\"hasNumericalValue\""},
      {"value missing", [](Json& j) { j["effortQuantity"].erase("hasNumericalValue"); },
       "effortQuantity.hasNumericalValue: required"},
      {"zero", [](Json& j) { j["effortQuantity"]["hasNumericalValue"] = 0; },
       "effortQuantity.hasNumericalValue: expected a number > 0; got 0"},
      {"negative", [](Json& j) { j["effortQuantity"]["hasNumericalValue"] = -2; },
       "expected a number > 0; got -2"},
      {"string", [](Json& j) { j["effortQuantity"]["hasNumericalValue"] = "1"; },
       R"(expected a number > 0; got "1")"},
      {"bool", [](Json& j) { j["effortQuantity"]["hasNumericalValue"] = true; },
       "expected a number > 0; got true"},
      {"unit missing", [](Json& j) { j["effortQuantity"].erase("hasUnit"); },
       "effortQuantity.hasUnit: required"},
      {"unknown unit",
       [](Json& j) {
         j["resourceQuantity"] = Json{{"hasNumericalValue", 3}, {"hasUnit", "grams"}};
       },
       R"(resourceQuantity.hasUnit: unknown OM2 unit "grams" (expected one of: one, hour, )"
       R"(minute-Time, second-Time, gram, kilogram, millimetre, metre, litre, kilowattHour))"},
      {"extra member", [](Json& j) { j["effortQuantity"]["precision"] = 1; },
       "effortQuantity.precision: unknown member"},
      {"integer value and unit one",
       [](Json& j) {
         j["effortQuantity"] = Json{{"hasNumericalValue", 2}, {"hasUnit", "one"}};
       },
       ""},
      {"small value",
       [](Json& j) {
         j["effortQuantity"] = Json{{"hasNumericalValue", 0.001}, {"hasUnit", "kilowattHour"}};
       },
       ""},
  });
}

TEST_F(EventTest, RequiresThePerActionMinimum) {
  auto consume = [](Json& j) {
    j.erase("effortQuantity");
    j["action"] = "consume";
    j["resourceQuantity"] = Json{{"hasNumericalValue", 12.5}, {"hasUnit", "gram"}};
  };
  run_submission({
      {"use without effort", [](Json& j) { j.erase("effortQuantity"); },
       R"(effortQuantity: required for action "use")"},
      {"work without effort",
       [](Json& j) {
         j["action"] = "work";
         j.erase("effortQuantity");
       },
       R"(effortQuantity: required for action "work")"},
      {"work", [](Json& j) { j["action"] = "work"; }, ""},
      {"consume", consume, ""},
      {"consume without quantity",
       [&](Json& j) {
         consume(j);
         j.erase("resourceQuantity");
       },
       R"(resourceQuantity: required for action "consume")"},
      {"consume without resource",
       [&](Json& j) {
         consume(j);
         j.erase("resourceInventoriedAs");
       },
       R"(resourceInventoriedAs or resourceConformsTo: required for action "consume")"},
      {"consume with conformsTo",
       [&](Json& j) {
         consume(j);
         j.erase("resourceInventoriedAs");
         j["resourceConformsTo"] = "PLA filament";
       },
       ""},
      {"transferCustody without quantity",
       [](Json& j) {
         j["action"] = "transferCustody";
         j.erase("effortQuantity");
       },
       R"(resourceQuantity: required for action "transferCustody")"},
      {"lower without quantity",
       [](Json& j) {
         j["action"] = "lower";
         j.erase("effortQuantity");
       },
       R"(resourceQuantity: required for action "lower")"},
      {"cite needs neither",
       [](Json& j) {
         j["action"] = "cite";
         j.erase("effortQuantity");
       },
       ""},
      {"pickup needs neither",
       [](Json& j) {
         j["action"] = "pickup";
         j.erase("effortQuantity");
         j.erase("resourceInventoriedAs");
       },
       ""},
  });
}

TEST_F(EventTest, ChecksStringAndObjectFields) {
  run_submission({
      {"provider not a string", [](Json& j) { j["provider"] = 5; },
       "provider: expected a non-empty string; got 5"},
      {"empty reference", [](Json& j) { j["resourceInventoriedAs"] = ""; },
       "resourceInventoriedAs: expected a non-empty string"},
      {"location object", [](Json& j) { j["atLocation"] = Json::object(); },
       "atLocation: expected a non-empty string"},
      {"inputOf", [](Json& j) { j["inputOf"] = Json::array(); }, "inputOf: expected"},
      {"note not a string", [](Json& j) { j["note"] = 5; }, "note: expected a string"},
      {"empty note", [](Json& j) { j["note"] = ""; }, ""},
      {"classifiedAs string", [](Json& j) { j["resourceClassifiedAs"] = "filament"; },
       "resourceClassifiedAs: expected an array of strings"},
      {"classifiedAs number item",
       [](Json& j) {
         j["resourceClassifiedAs"] = Json::array({"a", 1});
       },
       "resourceClassifiedAs[1]: expected a non-empty string"},
      {"classifiedAs",
       [](Json& j) {
         j["resourceClassifiedAs"] = Json::array({"a", "b"});
       },
       ""},
      {"meta array", [](Json& j) { j["meta"] = Json::array(); },
       "meta: expected an object of driver facts"},
      {"meta nested",
       [](Json& j) {
         j["meta"] = Json{{"file", "a.gcode"}, {"kWh", {{"v", 1}}}};
       },
       ""},
  });
}

TEST_F(EventTest, BoundsStringsAndTheWholeSubmission) {
  run_submission({
      {"long note", [](Json& j) { j["note"] = std::string(k_max_string_bytes + 1, 'n'); },
       "note: string is 1025 bytes; at most 1024"},
      {"longest note", [](Json& j) { j["note"] = std::string(k_max_string_bytes, 'n'); }, ""},
      {"long meta string",
       [](Json& j) {
         j["meta"] = Json{{"file", std::string(k_max_string_bytes + 1, 'f')}};
       },
       "meta.file: string is 1025 bytes"},
      {"long array item",
       [](Json& j) {
         j["resourceClassifiedAs"] = Json::array({"a", std::string(k_max_string_bytes + 1, 'c')});
       },
       "resourceClassifiedAs[1]: string is 1025 bytes"},
      {"too big",
       [](Json& j) {
         Json meta = Json::object();
         // Not "k" + std::to_string(i): GCC 12 at -O3 warns about it (-Wrestrict, a false
         // positive in libstdc++'s operator+), which -Werror turns into a failed Release build.
         for (int i = 0; i < 20; ++i)
           meta[fmt::format("k{}", i)] = std::string(1000, 'm');
         j["meta"] = meta;
       },
       "at most 16384 are allowed"},
      {"invalid UTF-8", [](Json& j) { j["note"] = "caf\xc3"; }, "note: string is not valid UTF-8"},
      {"UTF-8", [](Json& j) { j["note"] = "café ☕"; }, ""},
  });
}

TEST_F(EventTest, MakesPayloadWithStampFieldsFirstAndSourceLast) {
  Json fields = Json::parse(R"({"action":"use","hasPointInTime":"2026-01-01T00:00:00Z",
      "effortQuantity":{"hasNumericalValue":2,"hasUnit":"minute-Time"},"note":"é"})");
  EventStamp s = stamp(1);
  s.clock = ClockSync::unsynced;
  EXPECT_EQ(make_event_payload(s, fields, EventSource{"emit", "control", ""}),
            R"({"v":1,"id":"01KDXE6E000000000000000001","device":"fablab-mk4-01",)"
            R"("stream":"01KDXE6E00ABCDEFGHJKMNPQRS","seq":1,"prev":null,)"
            R"("recorded":"2026-01-01T00:00:00.123Z","clock":"unsynced","action":"use",)"
            R"("hasPointInTime":"2026-01-01T00:00:00Z",)"
            R"("effortQuantity":{"hasNumericalValue":2,"hasUnit":"minute-Time"},"note":"é",)"
            R"("source":{"driver":"emit","instance":"control"}})");
}

TEST_F(EventTest, MakesPayloadWithPrevAndSourceRef) {
  Json event = valid_event(7);
  EXPECT_EQ(event["seq"], 7);
  EXPECT_EQ(event["prev"], sha256_b64url("previous signing input"));
  EXPECT_EQ(event["clock"], "synced");
  EXPECT_EQ(event["source"].dump(), R"({"driver":"sim","instance":"printer","ref":"job 123"})");
}

TEST_F(EventTest, PayloadRoundTripsThroughValidation) {
  for (std::int64_t seq : {1, 2, 1'000'000}) {
    const std::string payload =
        make_event_payload(stamp(seq), valid_submission(), EventSource{"sim", "printer", ""});
    Json parsed = Json::parse(payload);
    auto result = validate_event_payload(parsed);
    EXPECT_TRUE(result.has_value()) << payload << ": " << result.error().message;
    EXPECT_EQ(parsed.dump(), payload) << "payload bytes are canonical nlohmann output";
  }
}

TEST_F(EventTest, ValidatesStampFieldsOfAPayload) {
  const std::vector<Case> cases = {
      {"v missing", [](Json& j) { j.erase("v"); }, "v: required"},
      {"v 2", [](Json& j) { j["v"] = 2; }, "v: expected 1 (protocol version); got 2"},
      {"v string", [](Json& j) { j["v"] = "1"; }, "v: expected 1"},
      {"id", [](Json& j) { j["id"] = "event-1"; }, R"(id: expected a ULID)"},
      {"id lower case", [](Json& j) { j["id"] = "01kdxe6e000000000000000001"; },
       "id: expected a ULID"},
      {"stream", [](Json& j) { j["stream"] = 5; }, "stream: expected a ULID"},
      {"device", [](Json& j) { j["device"] = "Fablab/1"; }, R"(device: expected a device id)"},
      {"device missing", [](Json& j) { j.erase("device"); }, "device: required"},
      {"seq 0", [](Json& j) { j["seq"] = 0; },
       "seq: expected an integer from 1 to 2^53 − 1; got 0"},
      {"seq negative", [](Json& j) { j["seq"] = -3; },
       "seq: expected an integer from 1 to 2^53 − 1"},
      {"seq fraction", [](Json& j) { j["seq"] = 1.5; },
       "seq: expected an integer from 1 to 2^53 − 1"},
      {"seq string", [](Json& j) { j["seq"] = "2"; },
       "seq: expected an integer from 1 to 2^53 − 1"},
      {"prev null after seq 1", [](Json& j) { j["prev"] = nullptr; },
       "prev: expected the base64url SHA-256 (43 characters) of seq 1's signing input; got null"},
      {"prev short", [](Json& j) { j["prev"] = "abc"; }, "prev: expected the base64url SHA-256"},
      {"prev not base64url", [](Json& j) { j["prev"] = std::string(43, '!'); },
       "prev: expected the base64url SHA-256"},
      {"prev at seq 1",
       [](Json& j) {
         j["seq"] = 1;
         j["prev"] = sha256_b64url("x");
       },
       "prev: must be null for seq 1"},
      {"seq 1 with null prev",
       [](Json& j) {
         j["seq"] = 1;
         j["prev"] = nullptr;
       },
       ""},
      {"recorded not UTC", [](Json& j) { j["recorded"] = "2026-01-01T01:00:00.000+01:00"; },
       "recorded: must be in UTC"},
      {"recorded garbage", [](Json& j) { j["recorded"] = "now"; },
       "recorded: expected an RFC 3339"},
      // Issue 14 item 10: PROTOCOL §4 Limits.
      {"recorded without milliseconds", [](Json& j) { j["recorded"] = "2026-01-01T00:00:00Z"; },
       "recorded: expected RFC 3339 UTC with milliseconds"},
      {"recorded with microseconds", [](Json& j) { j["recorded"] = "2026-01-01T00:00:00.000001Z"; },
       "recorded: expected RFC 3339 UTC with milliseconds"},
      {"recorded lower-case t", [](Json& j) { j["recorded"] = "2026-01-01t00:00:00.000Z"; },
       "recorded: expected RFC 3339 UTC with milliseconds"},
      {"recorded in year 9999", [](Json& j) { j["recorded"] = "9999-12-31T23:59:59.999Z"; },
       "recorded: \"9999-12-31T23:59:59.999Z\" is outside 1970"},
      {"recorded quoted escaped, never raw", [](Json& j) { j["recorded"] = "\x1b[31m"; },
       R"(recorded: expected an RFC 3339 time such as "2026-11-21T09:40:19Z"; got "\u001b[31m")"},
      {"recorded at the epoch", [](Json& j) { j["recorded"] = "1970-01-01T00:00:00.000Z"; }, ""},
      {"seq 2^53 - 1", [](Json& j) { j["seq"] = 9007199254740991LL; }, ""},
      {"seq 2^53", [](Json& j) { j["seq"] = 9007199254740992LL; },
       "seq: expected an integer from 1 to 2^53 − 1"},
      {"seq near 2^63", [](Json& j) { j["seq"] = 9223372036854775807LL; },
       "seq: expected an integer from 1 to 2^53 − 1"},
      {"control character in source.ref", [](Json& j) { j["source"]["ref"] = "job\x1b[2J"; },
       "source.ref: control character at byte 4"},
      {"clock", [](Json& j) { j["clock"] = "maybe"; },
       R"(clock: expected "synced" or "unsynced"; got "maybe")"},
      {"source missing", [](Json& j) { j.erase("source"); }, "source: required"},
      {"source string", [](Json& j) { j["source"] = "sim"; }, "source: expected"},
      {"source driver empty", [](Json& j) { j["source"]["driver"] = ""; },
       "source.driver: expected a non-empty string"},
      {"source instance missing", [](Json& j) { j["source"].erase("instance"); },
       "source.instance: required"},
      {"source ref number", [](Json& j) { j["source"]["ref"] = 123; },
       "source.ref: expected a string"},
      {"source ref absent", [](Json& j) { j["source"].erase("ref"); }, ""},
      {"source extra", [](Json& j) { j["source"]["host"] = "pi"; }, "source.host: unknown member"},
      {"producer field", [](Json& j) { j["action"] = "print"; },
       "action: unknown ValueFlows action"},
      {"unknown field", [](Json& j) { j["signature"] = "x"; }, "signature: unknown field"},
  };
  run(cases, valid_event(2), [](const Json& j) { return validate_event_payload(j); });

  auto not_object = validate_event_payload(Json("event"));
  ASSERT_FALSE(not_object.has_value());
  EXPECT_EQ(not_object.error().code, ErrorCode::rejected);
}

// Issue 14 item 10: bounded, sane content, refused at emit (validate_submission) with the field
// named. What parse_json_strict refuses in text (BOM, repeats, 1e400) has its own tests; these
// are the values a driver can build in C++ too.
TEST_F(EventTest, RefusesContentBeyondTheProtocolLimits) {
  auto deep = [](std::size_t levels) {  // `levels` objects nested in each other, then a string
    Json root = Json::object();
    Json* inner = &root;
    for (std::size_t i = 1; i < levels; ++i)
      inner = &((*inner)["x"] = Json::object());
    (*inner)["x"] = "leaf";
    return root;
  };
  const std::vector<Case> cases = {
      {"smallest quantity", [](Json& j) { j["effortQuantity"]["hasNumericalValue"] = 1e-9; }, ""},
      {"largest quantity", [](Json& j) { j["effortQuantity"]["hasNumericalValue"] = 1e12; }, ""},
      {"quantity too small", [](Json& j) { j["effortQuantity"]["hasNumericalValue"] = 1e-10; },
       "effortQuantity.hasNumericalValue: 1e-10 is outside 1e-09 … 1e+12"},
      {"subnormal quantity", [](Json& j) { j["effortQuantity"]["hasNumericalValue"] = 5e-324; },
       "effortQuantity.hasNumericalValue: 5e-324 is beyond what every JSON reader holds"},
      {"huge quantity", [](Json& j) { j["effortQuantity"]["hasNumericalValue"] = 1.7e308; },
       "effortQuantity.hasNumericalValue: 1.7e+308 is outside"},
      {"integer beyond 2^53 in meta",
       [](Json& j) {
         j["meta"] = {{"bytes", 9007199254740993ULL}};
       },
       "meta.bytes: 9007199254740993 is beyond what every JSON reader holds exactly"},
      {"negative integer beyond 2^53 in meta",
       [](Json& j) {
         j["meta"] = {{"n", -9007199254740993LL}};
       },
       "meta.n: -9007199254740993"},
      {"subnormal in meta",
       [](Json& j) {
         j["meta"] = {{"tiny", 5e-324}};
       },
       "meta.tiny:"},
      {"escape sequence in note", [](Json& j) { j["note"] = "ok\x1b]0;pwned\x07"; },
       "note: control character at byte 3"},
      {"carriage return in a reference", [](Json& j) { j["provider"] = "alice\rbob"; },
       "provider: control character at byte 6"},
      {"C1 control in meta",
       [](Json& j) {
         j["meta"] = {{"file", "a\xc2\x9b"}};
       },
       "meta.file: control character at byte 2"},
      {"tab and newline in a note", [](Json& j) { j["note"] = "line 1\n\tline 2"; }, ""},
      {"non-ASCII text", [](Json& j) { j["note"] = "Füllmenge: 5 €"; }, ""},
      {"control character in a member name",
       [](Json& j) {
         j["meta"] = {{"a\nb", 1}};
       },
       "meta: a member name holds a control character"},
      {"nesting to depth 16", [&](Json& j) { j["meta"] = deep(15); }, ""},
      {"nesting to depth 17", [&](Json& j) { j["meta"] = deep(16); },
       "nested deeper than 16 levels"},
      {"meta thousands deep", [&](Json& j) { j["meta"] = deep(5000); },
       "nested deeper than 16 levels"},
      {"time in year 9999", [](Json& j) { j["hasPointInTime"] = "9999-01-01T00:00:00Z"; },
       "hasPointInTime: \"9999-01-01T00:00:00Z\" is outside 1970"},
      {"time before 1970", [](Json& j) { j["hasPointInTime"] = "1969-12-31T23:59:59Z"; },
       "is outside 1970"},
      {"escape sequence as a time", [](Json& j) { j["hasPointInTime"] = "\x1b[31m"; },
       "hasPointInTime: control character at byte 1"},
  };
  run(cases, valid_submission(), [](const Json& j) { return validate_submission(j); });
}

}  // namespace
}  // namespace agent
