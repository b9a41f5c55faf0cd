// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/vf_export.hpp>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <reflow/core/jose.hpp>
#include <reflow/core/units.hpp>
#include <reflow/node/store.hpp>

#include "temp_dir.hpp"
#include "verified_events.hpp"

namespace ingest {
namespace {

using Json = nlohmann::ordered_json;

StoredEvent make_event(const std::string& device, std::int64_t seq, const std::string& id,
                       Json fields) {
  Json payload = {{"v", 1},
                  {"id", id},
                  {"device", device},
                  {"stream", "01JBQ8Z6V2X4W6Y8A0C2E4G6J8"},
                  {"seq", seq},
                  {"prev", nullptr},
                  {"recorded", "2026-11-01T12:00:00.000Z"},
                  {"clock", "synced"}};
  for (auto& [key, value] : fields.items())
    payload[key] = value;
  payload["source"] = {{"driver", "sim"}, {"instance", "bench"}, {"ref", ""}};
  StoredEvent e;
  e.device = device;
  e.stream = "01JBQ8Z6V2X4W6Y8A0C2E4G6J8";
  e.seq = seq;
  e.id = id;
  e.action = fields.value("action", "");
  e.recorded_unix_ms = *agent::parse_rfc3339("2026-11-01T12:00:00.000Z") + seq;
  e.payload = payload.dump();
  return e;
}

Json export_quantity(Json value, const char* unit) {
  return {{"hasNumericalValue", value}, {"hasUnit", unit}};
}

IngestConfig full_config() {
  IngestConfig config;
  config.default_agent = "01AGENTDEFAV1T000000000000";
  config.units = {{"hour", "01VN1TH0VR0000000000000000"},
                  {"gram", "01VN1TGRAM0000000000000000"},
                  {"one", "01VN1T0NE00000000000000000"}};
  config.ids = {{"printer-mk4", "01RESPR1NTER00000000000000"},
                {"spool-3", "01RESSP0010000000000000000"},
                {"pla-part", "01SPECPART0000000000000000"},
                {"fablab", "0110CFAB1AB000000000000000"},
                {"alice", "01AGENTA11CE00000000000000"}};
  return config;
}

// A print job on two devices: the printer's use (2 h) and consume (12.5 g), the scale's produce.
std::vector<StoredEvent> print_job() {
  return {
      make_event("scale-01", 1, "01JBQ9000000000000000000C1",
                 {{"action", "produce"},
                  {"hasPointInTime", "2026-11-01T11:30:00Z"},
                  {"resourceInventoriedAs", "part-9"},
                  {"resourceConformsTo", "pla-part"},
                  {"resourceQuantity", export_quantity(1, "one")},
                  {"outputOf", "job-42"},
                  {"atLocation", "fablab"}}),
      make_event("printer-01", 1, "01JBQ9000000000000000000B1",
                 {{"action", "use"},
                  {"hasBeginning", "2026-11-01T09:00:00Z"},
                  {"hasEnd", "2026-11-01T11:00:00Z"},
                  {"provider", "alice"},
                  {"resourceInventoriedAs", "printer-mk4"},
                  {"resourceConformsTo", "pla-part"},
                  {"effortQuantity", export_quantity(2, "hour")},
                  {"inputOf", "job-42"}}),
      make_event("printer-01", 2, "01JBQ9000000000000000000B2",
                 {{"action", "consume"},
                  {"hasPointInTime", "2026-11-01T11:00:00Z"},
                  {"resourceInventoriedAs", "spool-3"},
                  {"resourceQuantity", export_quantity(12.5, "gram")},
                  {"inputOf", "job-42"}}),
  };
}

class VfExportTest : public ::testing::Test {};

TEST_F(VfExportTest, GroupsTheEventsOfAProcessIntoOneCreateProcessSentFirst) {
  VfExport plan = build_vf_export(print_job(), full_config());
  EXPECT_TRUE(plan.missing.empty()) << describe_missing(plan.missing);
  ASSERT_EQ(plan.requests.size(), 4u);
  const VfRequest& process = plan.requests[0];
  EXPECT_EQ(process.kind, VfRequestKind::create_process);
  EXPECT_EQ(process.variables, Json::parse(R"({"process":{"name":"job-42",
                "note":"reflow process job-42 recorded by printer-01, scale-01",
                "hasBeginning":"2026-11-01T09:00:00Z","hasEnd":"2026-11-01T11:30:00Z"}})"));
  // Then the events in time order: use (09:00), consume (11:00), produce (11:30).
  EXPECT_EQ(plan.requests[1].event_id, "01JBQ9000000000000000000B1");
  EXPECT_EQ(plan.requests[2].event_id, "01JBQ9000000000000000000B2");
  EXPECT_EQ(plan.requests[3].event_id, "01JBQ9000000000000000000C1");
  for (std::size_t i = 1; i < 4; ++i) {
    EXPECT_EQ(plan.requests[i].kind, VfRequestKind::create_economic_event);
    EXPECT_FALSE(plan.requests[i].pending.empty());
  }
}

TEST_F(VfExportTest, MapsEventFieldsToZenflowsCreateParams) {
  VfExport plan = build_vf_export(print_job(), full_config());
  ASSERT_EQ(plan.requests.size(), 4u);
  // use: both resource and spec given; zenflows wants one: the known resource wins.
  EXPECT_EQ(plan.requests[1].variables, Json::parse(R"json({"event":{
      "action":"use",
      "provider":"01AGENTA11CE00000000000000",
      "receiver":"01AGENTDEFAV1T000000000000",
      "inputOf":"job-42",
      "resourceInventoriedAs":"01RESPR1NTER00000000000000",
      "effortQuantity":{"hasNumericalValue":2,"hasUnit":"01VN1TH0VR0000000000000000"},
      "hasBeginning":"2026-11-01T09:00:00Z",
      "hasEnd":"2026-11-01T11:00:00Z",
      "note":"(reflow event 01JBQ9000000000000000000B1, device printer-01, stream 01JBQ8Z6V2X4W6Y8A0C2E4G6J8 seq 1, source sim/bench)"}})json"));
  EXPECT_EQ(plan.requests[1].pending, (std::map<std::string, std::string>{{"inputOf", "job-42"}}));
  const Json& consume = plan.requests[2].variables["event"];
  EXPECT_EQ(consume["resourceQuantity"],
            Json::parse(R"({"hasNumericalValue":12.5,"hasUnit":"01VN1TGRAM0000000000000000"})"));
  EXPECT_EQ(consume["resourceInventoriedAs"], "01RESSP0010000000000000000");
}

TEST_F(VfExportTest, AnUnknownBadgesSightingStaysAtTheNode) {
  auto events = print_job();
  events.push_back(
      make_event("printer-01", 3, "01JBQ9000000000000000000B3",
                 {{"action", "cite"},
                  {"hasPointInTime", "2026-11-01T10:00:00Z"},
                  {"resourceInventoriedAs", "printer-mk4"},
                  {"resourceQuantity", export_quantity(1, "one")},
                  {"note", "unknown badge"},
                  {"meta", {{"badge", "unknown"}, {"badge_hash", std::string(43, 'A')}}}}));
  VfExport plan = build_vf_export(events, full_config());
  EXPECT_TRUE(plan.missing.empty()) << describe_missing(plan.missing);
  ASSERT_EQ(plan.requests.size(), 4u);  // the process and the job's three events, as without it
  for (const VfRequest& request : plan.requests)
    EXPECT_NE(request.event_id, "01JBQ9000000000000000000B3");
}

TEST_F(VfExportTest, ProduceOfAnUnknownResourceCreatesItAndLaterEventsWaitForItsId) {
  auto events = print_job();
  events.push_back(make_event("scale-01", 2, "01JBQ9000000000000000000C2",
                              {{"action", "transferCustody"},
                               {"hasPointInTime", "2026-11-01T12:00:00Z"},
                               {"resourceInventoriedAs", "part-9"},
                               {"resourceQuantity", export_quantity(1, "one")},
                               {"toLocation", "fablab"}}));
  VfExport plan = build_vf_export(events, full_config());
  ASSERT_TRUE(plan.missing.empty()) << describe_missing(plan.missing);
  ASSERT_EQ(plan.requests.size(), 5u);
  const VfRequest& produce = plan.requests[3];
  EXPECT_EQ(produce.creates, "part-9");
  EXPECT_FALSE(produce.variables["event"].contains("resourceInventoriedAs"));
  EXPECT_EQ(produce.variables["event"]["resourceConformsTo"], "01SPECPART0000000000000000");
  EXPECT_EQ(produce.variables["event"]["atLocation"], "0110CFAB1AB000000000000000");
  EXPECT_EQ(produce.variables["newInventoriedResource"],
            Json::parse(R"({"name":"part-9","trackingIdentifier":"part-9"})"));
  const VfRequest& transfer = plan.requests[4];
  EXPECT_EQ(transfer.pending,
            (std::map<std::string, std::string>{{"resourceInventoriedAs", "part-9"}}));
  EXPECT_EQ(transfer.variables["event"]["resourceInventoriedAs"], "part-9");
}

// A print job as the printer drivers (sim, moonraker, octoprint) record it: one process, the
// printer's use and the spool's consume its inputs, a new part named after file, job and printer
// its output. zenflows creates the part from newInventoriedResource and requires its name.
TEST_F(VfExportTest, APrinterJobsPartIsCreatedWithItsNameAsTheJobsOutput) {
  const std::string part = "benchy.gcode, job 1 on printer-mk4";
  std::vector<StoredEvent> events = {
      make_event("printer-01", 1, "01JBQ9000000000000000000D1",
                 {{"action", "use"},
                  {"resourceInventoriedAs", "printer-mk4"},
                  {"effortQuantity", export_quantity(0.5, "hour")},
                  {"hasBeginning", "2026-11-01T09:00:00.000Z"},
                  {"hasEnd", "2026-11-01T09:30:00.000Z"},
                  {"inputOf", "sim:printer:job-1"}}),
      make_event("printer-01", 2, "01JBQ9000000000000000000D2",
                 {{"action", "consume"},
                  {"resourceInventoriedAs", "spool-3"},
                  {"resourceQuantity", export_quantity(14.2, "gram")},
                  {"hasPointInTime", "2026-11-01T09:30:00.000Z"},
                  {"inputOf", "sim:printer:job-1"}}),
      make_event("printer-01", 3, "01JBQ9000000000000000000D3",
                 {{"action", "produce"},
                  {"resourceInventoriedAs", part},
                  {"resourceConformsTo", "pla-part"},
                  {"resourceQuantity", export_quantity(1, "one")},
                  {"hasPointInTime", "2026-11-01T09:30:00.000Z"},
                  {"outputOf", "sim:printer:job-1"}}),
  };
  VfExport plan = build_vf_export(events, full_config());
  ASSERT_TRUE(plan.missing.empty()) << describe_missing(plan.missing);
  ASSERT_EQ(plan.requests.size(), 4u);
  EXPECT_EQ(plan.requests[0].kind, VfRequestKind::create_process);
  EXPECT_EQ(plan.requests[0].creates, "sim:printer:job-1");
  EXPECT_EQ(plan.requests[1].pending.at("inputOf"), "sim:printer:job-1");
  EXPECT_EQ(plan.requests[2].pending.at("inputOf"), "sim:printer:job-1");
  const VfRequest& produce = plan.requests[3];
  EXPECT_EQ(produce.pending,
            (std::map<std::string, std::string>{{"outputOf", "sim:printer:job-1"}}));
  EXPECT_EQ(produce.creates, part);
  EXPECT_FALSE(produce.variables["event"].contains("resourceInventoriedAs"));
  EXPECT_EQ(produce.variables["event"]["resourceConformsTo"], "01SPECPART0000000000000000");
  EXPECT_EQ(produce.variables["newInventoriedResource"]["name"], part);

  // What the drivers sent before: a specification alone gives zenflows no name for the part.
  auto unnamed = events;
  Json payload = Json::parse(unnamed[2].payload);
  payload.erase("resourceInventoriedAs");
  unnamed[2].payload = payload.dump();
  VfExport old = build_vf_export(unnamed, full_config());
  ASSERT_EQ(old.requests.size(), 4u);
  EXPECT_FALSE(old.requests[3].variables.contains("newInventoriedResource"));
}

TEST_F(VfExportTest, AProcessListedInIdsIsUsedNotCreated) {
  IngestConfig config = full_config();
  config.ids["job-42"] = "01PR0CESSJ0B42000000000000";
  VfExport plan = build_vf_export(print_job(), config);
  ASSERT_EQ(plan.requests.size(), 3u);
  for (const auto& r : plan.requests) {
    EXPECT_EQ(r.kind, VfRequestKind::create_economic_event);
    EXPECT_FALSE(r.pending.contains("inputOf"));
  }
  EXPECT_EQ(plan.requests[0].variables["event"]["inputOf"], "01PR0CESSJ0B42000000000000");
}

TEST_F(VfExportTest, MissingIdsAreLeftAsLocalReferencesAndListedOnce) {
  IngestConfig config = full_config();
  config.ids.erase("spool-3");
  config.ids.erase("alice");
  config.units.erase("gram");
  config.default_agent.clear();
  VfExport plan = build_vf_export(print_job(), config);
  const Json& use = plan.requests[1].variables["event"];
  EXPECT_EQ(use["provider"], "alice");
  EXPECT_FALSE(use.contains("receiver"));
  const Json& consume = plan.requests[2].variables["event"];
  EXPECT_EQ(consume["resourceInventoriedAs"], "spool-3");
  EXPECT_EQ(consume["resourceQuantity"]["hasUnit"], "gram");

  std::vector<std::pair<std::string, std::string>> missing;
  for (const auto& m : plan.missing)
    missing.emplace_back(m.kind, m.reference);
  EXPECT_EQ(missing, (std::vector<std::pair<std::string, std::string>>{
                         {"agent", "alice"},
                         {"agent", "(no receiver: set [export] default_agent)"},
                         {"agent", "(no provider: set [export] default_agent)"},
                         {"resource", "spool-3"},
                         {"unit", "gram"}}));
  EXPECT_EQ(plan.missing[0].first_event, "01JBQ9000000000000000000B1");
  std::string text = describe_missing(plan.missing);
  EXPECT_NE(text.find("[export.units]\n  \"gram\" = \"SERVER-UNIT-ID\""), std::string::npos);
  EXPECT_NE(text.find("\"spool-3\" = \"SERVER-ID\"  # resource"), std::string::npos);
}

TEST_F(VfExportTest, BodyIsTheConstantQueryWithTheDataInVariablesOnly) {
  auto events = print_job();
  events.resize(1);
  // A note that would break out of a pasted GraphQL string.
  events[0] = make_event("scale-01", 1, "01JBQ9000000000000000000C1",
                         {{"action", "raise"},
                          {"hasPointInTime", "2026-11-01T11:30:00Z"},
                          {"resourceInventoriedAs", "spool-3"},
                          {"resourceQuantity", export_quantity(1, "gram")},
                          {"note", "\"}) { deleteProcess(id: \"x\") } #\n caf\xc3\xa9"}});
  VfExport plan = build_vf_export(events, full_config());
  ASSERT_EQ(plan.requests.size(), 1u);
  const std::string body = vf_request_body(plan.requests[0]);
  for (char c : body)
    ASSERT_LT(static_cast<unsigned char>(c), 0x80) << body;
  Json parsed = Json::parse(body);
  std::vector<std::string> keys;
  for (auto& [key, _] : parsed.items())
    keys.push_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{"query", "variables"}));
  EXPECT_EQ(parsed["query"], vf_mutation_text(VfRequestKind::create_economic_event));
  EXPECT_TRUE(parsed["variables"]["event"]["note"].get<std::string>().starts_with(
      "\"}) { deleteProcess(id: \"x\") } #\n caf\xc3\xa9 (reflow event"));
  EXPECT_EQ(vf_mutation_text(VfRequestKind::create_process).find("deleteProcess"),
            std::string::npos);
}

// --- export --check: the events of a real SQLite store, checked without sending anything ---

class VfCheckSqliteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(test_store::open_store_and_key(m_dir.path(), m_store, m_key));
  }

  void put(const std::vector<StoredEvent>& events) {
    test_store::put_verified(*m_store, *m_key, events, m_last_hash,
                             *agent::parse_rfc3339("2026-11-02T00:00:00Z"));
  }

  VfCheck check(const IngestConfig& config, const EventFilter& filter = {}) {
    auto result = check_vf_export(*m_store, filter, config);
    EXPECT_TRUE(result) << result.error().message;
    return result ? *result : VfCheck{};
  }

  reflow_test::TempDir m_dir;
  std::unique_ptr<Store> m_store;
  std::optional<agent::DeviceKey> m_key;
  test_store::LastHashes m_last_hash;
};

// What the drivers sent before issue 16 and a station's intake: each a way zenflows refuses.
std::vector<StoredEvent> bad_events() {
  return {
      // A consume with neither process nor inventoried resource (moonraker without a spool).
      make_event("station-01", 1, "01JBQ9000000000000000000D1",
                 {{"action", "consume"},
                  {"hasPointInTime", "2026-11-01T12:00:00Z"},
                  {"resourceConformsTo", "pla-part"},
                  {"resourceQuantity", export_quantity(3, "gram")}}),
      // An intake recorded as accept, of a batch the config has no id for, weighed in litres.
      make_event("station-01", 2, "01JBQ9000000000000000000D2",
                 {{"action", "accept"},
                  {"hasPointInTime", "2026-11-01T12:01:00Z"},
                  {"resourceInventoriedAs", "batch-17"},
                  {"resourceQuantity", export_quantity(2, "litre")}}),
  };
}

TEST_F(VfCheckSqliteTest, ListsEveryProblemOfEveryStoredEventWithItsFieldAndRule) {
  auto events = print_job();
  for (auto& e : bad_events())
    events.push_back(e);
  put(events);
  const VfCheck result = check(full_config());
  ASSERT_EQ(result.events.size(), 5u);
  EXPECT_EQ(result.refused, 2u);
  EXPECT_EQ(result.problems, 5u);
  // Sent in time order: the print job's three, which pass, then the two bad ones.
  for (std::size_t i = 0; i < 3; ++i)
    EXPECT_TRUE(result.events[i].problems.empty()) << result.events[i].problems[0].message;
  const VfEventCheck& consume = result.events[3];
  EXPECT_EQ(consume.id, "01JBQ9000000000000000000D1");
  EXPECT_EQ(consume.device, "station-01");
  EXPECT_EQ(consume.action, "consume");
  ASSERT_EQ(consume.problems.size(), 2u);
  EXPECT_EQ(consume.problems[0].field, "inputOf");
  EXPECT_EQ(consume.problems[0].rule, R"(required for action "consume")");
  EXPECT_EQ(consume.problems[0].section, "valueflows.md §2c");
  EXPECT_EQ(consume.problems[1].field, "resourceInventoriedAs");
  const VfEventCheck& accept = result.events[4];
  ASSERT_EQ(accept.problems.size(), 3u);
  EXPECT_EQ(accept.problems[0].field, "inputOf");
  EXPECT_EQ(accept.problems[1].field, "resourceInventoriedAs");
  EXPECT_EQ(accept.problems[1].rule, R"(resource "batch-17" has no server id in [export.ids])");
  EXPECT_EQ(accept.problems[1].section, "valueflows.md §2b");
  EXPECT_EQ(accept.problems[2].field, "resourceQuantity.hasUnit");
  EXPECT_EQ(accept.problems[2].rule, R"(unit "litre" has no server id in [export.units])");
  EXPECT_EQ(accept.problems[2].section, "valueflows.md §1f");

  const std::string text = format_vf_check_text(result);
  EXPECT_NE(text.find("01JBQ9000000000000000000B1 use (device printer-01): ok\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("01JBQ9000000000000000000D1 consume (device station-01): 2 problems\n"
                      "  inputOf: required for action \"consume\" (zenflows, valueflows.md §2c: a "
                      "consume is an input of a process)\n"),
            std::string::npos)
      << text;
  EXPECT_TRUE(
      text.ends_with("checked 5 events: 2 would be refused by zenflows (5 problems), 3 pass\n"))
      << text;

  const Json json = vf_check_json(result);
  EXPECT_EQ(json["checked"], 5);
  EXPECT_EQ(json["refused"], 2);
  EXPECT_EQ(json["problems"], 5);
  ASSERT_EQ(json["events"].size(), 5u);
  EXPECT_EQ(json["events"][0]["problems"], Json::array());
  EXPECT_EQ(json["events"][3]["id"], "01JBQ9000000000000000000D1");
  EXPECT_EQ(json["events"][3]["problems"][0],
            Json::parse(R"json({"field":"inputOf","rule":"required for action \"consume\"",
                "section":"valueflows.md §2c","message":"inputOf: required for action \"consume\" (zenflows, valueflows.md §2c: a consume is an input of a process)"})json"));
}

// The same filter as the export: only what would be sent is checked.
TEST_F(VfCheckSqliteTest, ChecksOnlyTheEventsTheExportWouldSend) {
  auto events = print_job();
  for (auto& e : bad_events())
    events.push_back(e);
  put(events);
  EventFilter filter;
  filter.device = "printer-01";
  const VfCheck result = check(full_config(), filter);
  EXPECT_EQ(result.events.size(), 2u);
  EXPECT_EQ(result.refused, 0u);
  EXPECT_EQ(format_vf_check_text(result),
            "01JBQ9000000000000000000B1 use (device printer-01): ok\n"
            "01JBQ9000000000000000000B2 consume (device printer-01): ok\n"
            "checked 2 events: 0 would be refused by zenflows (0 problems), 2 pass\n");
}

// An agent's action keeps one agent even when default_agent fills one side in; without
// default_agent, the side the event leaves out is missing.
TEST_F(VfCheckSqliteTest, ChecksTheAgentsTheExportFillsIn) {
  put({make_event("scale-01", 1, "01JBQ9000000000000000000C1",
                  {{"action", "produce"},
                   {"hasPointInTime", "2026-11-01T11:30:00Z"},
                   {"provider", "alice"},
                   {"resourceInventoriedAs", "spool-3"},
                   {"resourceQuantity", export_quantity(1, "one")},
                   {"outputOf", "job-42"}})});
  IngestConfig config = full_config();
  VfCheck result = check(config);
  ASSERT_EQ(result.events.size(), 1u);
  ASSERT_EQ(result.events[0].problems.size(), 1u);
  EXPECT_EQ(result.events[0].problems[0].field, "provider, receiver");
  EXPECT_EQ(result.events[0].problems[0].rule,
            R"(must be the same agent for action "produce" ([export] default_agent filled in )"
            R"(one of them))");
  EXPECT_EQ(result.events[0].problems[0].section, "valueflows.md §2c");

  config.default_agent.clear();
  result = check(config);
  ASSERT_EQ(result.events[0].problems.size(), 1u);
  EXPECT_EQ(result.events[0].problems[0].field, "receiver");
  EXPECT_EQ(result.events[0].problems[0].rule, "no value and no [export] default_agent");

  IngestConfig with_bob = full_config();
  with_bob.ids["bob"] = "01AGENTB0B0000000000000000";
  put({make_event("scale-01", 2, "01JBQ9000000000000000000C2",
                  {{"action", "transfer"},
                   {"hasPointInTime", "2026-11-01T11:40:00Z"},
                   {"provider", "alice"},
                   {"receiver", "bob"},
                   {"resourceInventoriedAs", "spool-3"},
                   {"resourceQuantity", export_quantity(1, "one")}})});
  result = check(with_bob);
  ASSERT_EQ(result.events.size(), 2u);
  EXPECT_TRUE(result.events[1].problems.empty());  // a transfer is between two agents
}

}  // namespace
}  // namespace ingest
