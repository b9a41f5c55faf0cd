// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/vf_export.hpp>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <reflow/core/units.hpp>

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

Json quantity(Json value, const char* unit) {
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
                  {"resourceQuantity", quantity(1, "one")},
                  {"outputOf", "job-42"},
                  {"atLocation", "fablab"}}),
      make_event("printer-01", 1, "01JBQ9000000000000000000B1",
                 {{"action", "use"},
                  {"hasBeginning", "2026-11-01T09:00:00Z"},
                  {"hasEnd", "2026-11-01T11:00:00Z"},
                  {"provider", "alice"},
                  {"resourceInventoriedAs", "printer-mk4"},
                  {"resourceConformsTo", "pla-part"},
                  {"effortQuantity", quantity(2, "hour")},
                  {"inputOf", "job-42"}}),
      make_event("printer-01", 2, "01JBQ9000000000000000000B2",
                 {{"action", "consume"},
                  {"hasPointInTime", "2026-11-01T11:00:00Z"},
                  {"resourceInventoriedAs", "spool-3"},
                  {"resourceQuantity", quantity(12.5, "gram")},
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

TEST_F(VfExportTest, ProduceOfAnUnknownResourceCreatesItAndLaterEventsWaitForItsId) {
  auto events = print_job();
  events.push_back(make_event("scale-01", 2, "01JBQ9000000000000000000C2",
                              {{"action", "transferCustody"},
                               {"hasPointInTime", "2026-11-01T12:00:00Z"},
                               {"resourceInventoriedAs", "part-9"},
                               {"resourceQuantity", quantity(1, "one")},
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
                  {"effortQuantity", quantity(0.5, "hour")},
                  {"hasBeginning", "2026-11-01T09:00:00.000Z"},
                  {"hasEnd", "2026-11-01T09:30:00.000Z"},
                  {"inputOf", "sim:printer:job-1"}}),
      make_event("printer-01", 2, "01JBQ9000000000000000000D2",
                 {{"action", "consume"},
                  {"resourceInventoriedAs", "spool-3"},
                  {"resourceQuantity", quantity(14.2, "gram")},
                  {"hasPointInTime", "2026-11-01T09:30:00.000Z"},
                  {"inputOf", "sim:printer:job-1"}}),
      make_event("printer-01", 3, "01JBQ9000000000000000000D3",
                 {{"action", "produce"},
                  {"resourceInventoriedAs", part},
                  {"resourceConformsTo", "pla-part"},
                  {"resourceQuantity", quantity(1, "one")},
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
                          {"resourceQuantity", quantity(1, "gram")},
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

}  // namespace
}  // namespace ingest
