// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/query.hpp>

#include <reflow/core/text.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include <reflow/core/jose.hpp>
#include <reflow/core/units.hpp>

#include "temp_dir.hpp"
#include "verified_events.hpp"

namespace ingest {
namespace {

using Json = nlohmann::ordered_json;

// The Store interface over vectors: the queries need nothing else, and the SQLite store's own
// behaviour is tested in tests/node/sqlite_store_test.cpp.
class FakeStore : public Store {
 public:
  std::vector<StoredEvent> events;
  std::vector<StoredRejection> rejections;
  std::vector<DeviceStats> device_stats;
  std::vector<EventFilter> filters_seen;

  Status add_device(std::string_view, const agent::PublicJwk&, std::int64_t) override { return {}; }
  Status revoke_device(std::string_view, std::int64_t) override { return {}; }
  Result<std::optional<DeviceKeyRecord>> find_key(std::string_view) override {
    return std::nullopt;
  }
  Result<std::vector<DeviceKeyRecord>> list_keys() override {
    return std::vector<DeviceKeyRecord>{};
  }
  Result<std::vector<PutResult>> put(std::span<const Incoming>, std::int64_t) override {
    return std::vector<PutResult>{};
  }
  Result<std::optional<AckPoint>> ack_point(std::string_view) override { return std::nullopt; }
  Status for_each_event(const EventFilter& filter,
                        const std::function<bool(const StoredEvent&)>& fn) override {
    filters_seen.push_back(filter);
    for (const auto& e : events) {
      if (filter.device && e.device != *filter.device) continue;
      if (filter.action && e.action != *filter.action) continue;
      if (filter.since_unix_ms && e.recorded_unix_ms < *filter.since_unix_ms) continue;
      if (!fn(e)) break;
    }
    return {};
  }
  Status for_each_rejection(std::optional<std::string_view> device,
                            const std::function<bool(const StoredRejection&)>& fn) override {
    for (const auto& r : rejections) {
      if (device && r.device != *device) continue;
      if (!fn(r)) break;
    }
    return {};
  }
  Result<std::vector<DeviceStats>> stats() override { return device_stats; }
};

constexpr const char* k_stream = "01JBQ8Z6V2X4W6Y8A0C2E4G6J8";

std::int64_t ms(std::string_view rfc3339) {
  return *agent::parse_rfc3339(rfc3339);
}

// A stored event whose payload is `fields` plus the stamp fields, serialized like the agent does.
StoredEvent make_event(const std::string& device, std::int64_t seq, const std::string& id,
                       const std::string& recorded, Json fields) {
  Json payload;
  payload["v"] = 1;
  payload["id"] = id;
  payload["device"] = device;
  payload["stream"] = k_stream;
  payload["seq"] = seq;
  payload["prev"] = nullptr;
  payload["recorded"] = recorded;
  payload["clock"] = "synced";
  for (auto& [key, value] : fields.items())
    payload[key] = value;
  payload["source"] = {{"driver", "sim"}, {"instance", "test"}, {"ref", ""}};
  StoredEvent e;
  e.device = device;
  e.stream = k_stream;
  e.seq = seq;
  e.id = id;
  e.action = fields.value("action", "");
  e.kid = "kid";
  e.recorded_unix_ms = ms(recorded);
  e.received_unix_ms = e.recorded_unix_ms + 5;
  e.payload = payload.dump();
  e.envelope = "{}";
  return e;
}

// `value` stays an integer when given one: 1000, not 1000.0.
Json quantity(Json value, const char* unit) {
  return {{"hasNumericalValue", value}, {"hasUnit", unit}};
}

class QueryTest : public ::testing::Test {
 protected:
  FakeStore m_store;
};

TEST_F(QueryTest, SinceAcceptsRfc3339AndDatesAsUtcMidnight) {
  EXPECT_EQ(*parse_since("2026-11-01"), ms("2026-11-01T00:00:00Z"));
  EXPECT_EQ(*parse_since("2026-11-01T10:00:00+01:00"), ms("2026-11-01T09:00:00Z"));
  auto bad = parse_since("yesterday");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, agent::ErrorCode::invalid_argument);
  EXPECT_NE(bad.error().message.find("\"yesterday\""), std::string::npos);
  EXPECT_FALSE(parse_since("2026-13-45"));
}

TEST_F(QueryTest, JsonlPrintsTheStoredPayloadBytesUnchanged) {
  StoredEvent e = make_event("dev-a", 1, "01JBQ90000000000000000000A", "2026-11-01T10:00:00.000Z",
                             {{"action", "use"}});
  // Not what nlohmann would write: the bytes must come out as stored, not re-serialized.
  e.payload = R"({"v":1,  "id":"01JBQ90000000000000000000A","note":"caf\u00e9 1.50"})";
  m_store.events.push_back(e);
  std::ostringstream out;
  ASSERT_TRUE(write_events(m_store, {}, EventFormat::jsonl, out));
  EXPECT_EQ(out.str(), e.payload + "\n");
}

TEST_F(QueryTest, JsonlKeepsOneEventPerLineWhenThePayloadHasNewlines) {
  StoredEvent e = make_event("dev-a", 1, "01JBQ90000000000000000000A", "2026-11-01T10:00:00.000Z",
                             {{"action", "use"}});
  e.payload = "{\"v\":1,\r\n\"id\":\"x\"}";
  EXPECT_EQ(event_jsonl_line(e), "{\"v\":1,  \"id\":\"x\"}");
}

TEST_F(QueryTest, CsvHasTheHeaderAndQuotesFieldsPerRfc4180) {
  m_store.events.push_back(make_event("dev-a", 7, "01JBQ90000000000000000000A",
                                      "2026-11-01T10:00:00.123Z",
                                      {{"action", "consume"},
                                       {"hasBeginning", "2026-11-01T09:00:00Z"},
                                       {"hasEnd", "2026-11-01T09:30:00Z"},
                                       {"provider", "lab"},
                                       {"resourceInventoriedAs", "spool-3"},
                                       {"resourceQuantity", quantity(12.5, "gram")},
                                       {"inputOf", "job 42"},
                                       {"note", "said \"hi\", then\nleft"}}));
  std::ostringstream out;
  ASSERT_TRUE(write_events(m_store, {}, EventFormat::csv, out));
  EXPECT_EQ(out.str(),
            "device,stream,seq,id,recorded,action,hasPointInTime,hasBeginning,hasEnd,provider,"
            "receiver,resourceInventoriedAs,toResourceInventoriedAs,resourceConformsTo,"
            "resourceQuantity,resourceUnit,effortQuantity,effortUnit,inputOf,outputOf,atLocation,"
            "toLocation,note\r\n"
            "dev-a,01JBQ8Z6V2X4W6Y8A0C2E4G6J8,7,01JBQ90000000000000000000A,"
            "2026-11-01T10:00:00.123Z,consume,,2026-11-01T09:00:00Z,2026-11-01T09:30:00Z,lab,,"
            "spool-3,,,12.5,gram,,,job 42,,,,\"said \"\"hi\"\", then\nleft\"\r\n");
}

TEST_F(QueryTest, CsvOfNoEventsIsTheHeaderOnly) {
  std::ostringstream out;
  ASSERT_TRUE(write_events(m_store, {}, EventFormat::csv, out));
  const std::string text = out.str();
  EXPECT_EQ(text.find("device,stream,seq,id,recorded,action,"), 0u);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);
}

TEST_F(QueryTest, CsvFieldQuotesOnlyWhenNeeded) {
  using agent::csv_field;
  EXPECT_EQ(csv_field("plain text"), "plain text");
  EXPECT_EQ(csv_field("a,b"), "\"a,b\"");
  EXPECT_EQ(csv_field("cr\rhere"), "\"cr\rhere\"");
  EXPECT_EQ(csv_field("\""), "\"\"\"\"");
  EXPECT_EQ(csv_field(""), "");
}

// Issue 14 item 11: nothing a device supplied can forge output. A spreadsheet must open every
// cell as text, and a terminal must show escape sequences as text.
TEST_F(QueryTest, CsvNeutralisesFormulasAndEscapesControls) {
  m_store.events.push_back(make_event("dev-a", 7, "01JBQ90000000000000000000A",
                                      "2026-11-01T10:00:00.123Z",
                                      {{"action", "use"},
                                       {"hasPointInTime", "2026-11-01T09:00:00Z"},
                                       {"provider", "=HYPERLINK(\"http://x\",\"y\")"},
                                       {"receiver", "@SUM(A1)"},
                                       {"inputOf", "+1"},
                                       {"outputOf", "-1+cmd|' /C calc'!A0"},
                                       {"atLocation", "\tlab"},
                                       {"note", "bell\x07 and \x1b[31mred"}}));
  std::ostringstream out;
  ASSERT_TRUE(write_events(m_store, {}, EventFormat::csv, out));
  const std::string text = out.str();
  const std::string row = text.substr(text.find("\r\n") + 2);
  EXPECT_NE(row.find(R"x("'=HYPERLINK(""http://x"",""y"")")x"), std::string::npos) << row;
  EXPECT_NE(row.find(",'@SUM(A1),"), std::string::npos) << row;
  EXPECT_NE(row.find(",'+1,"), std::string::npos) << row;
  EXPECT_NE(row.find(",'-1+cmd|' /C calc'!A0,"), std::string::npos) << row;
  EXPECT_NE(row.find(",'\tlab,"), std::string::npos) << row;
  EXPECT_NE(row.find("bell\\x07 and \\x1b[31mred"), std::string::npos) << row;
  EXPECT_EQ(row.find('\x1b'), std::string::npos);
  EXPECT_EQ(row.find('\x07'), std::string::npos);
}

TEST_F(QueryTest, EventsPassTheFilterToTheStore) {
  m_store.events.push_back(make_event("dev-a", 1, "01JBQ90000000000000000000A",
                                      "2026-11-01T10:00:00.000Z", {{"action", "use"}}));
  m_store.events.push_back(make_event("dev-b", 1, "01JBQ90000000000000000000B",
                                      "2026-11-02T10:00:00.000Z", {{"action", "use"}}));
  EventFilter filter;
  filter.device = "dev-b";
  filter.since_unix_ms = *parse_since("2026-11-02");
  std::ostringstream out;
  ASSERT_TRUE(write_events(m_store, filter, EventFormat::jsonl, out));
  EXPECT_EQ(out.str(), m_store.events[1].payload + "\n");
  ASSERT_EQ(m_store.filters_seen.size(), 1u);
  EXPECT_EQ(m_store.filters_seen[0].device, "dev-b");
}

TEST_F(QueryTest, RejectionsAreJsonLinesWithNullsForUnknownStreamAndSeq) {
  StoredRejection unknown;
  unknown.device = "dev-a";
  unknown.topic = "reflow/v1/dev-a/events";
  unknown.reason = RejectReason::malformed_jws;
  unknown.detail = "not JSON";
  unknown.received_unix_ms = ms("2026-11-01T10:00:00Z");
  unknown.envelope = std::string("\xff\xfe garbage", 10);  // not UTF-8: must not throw
  StoredRejection chain = unknown;
  chain.reason = RejectReason::chain_break;
  chain.stream = k_stream;
  chain.seq = 4;
  chain.envelope = "{\"protected\":\"x\"}";
  m_store.rejections = {unknown, chain};

  std::ostringstream out;
  ASSERT_TRUE(write_rejections(m_store, std::nullopt, out));
  std::istringstream lines(out.str());
  std::string line;
  std::vector<Json> parsed;
  while (std::getline(lines, line))
    parsed.push_back(Json::parse(line));
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed[0]["received"], "2026-11-01T10:00:00.000Z");
  EXPECT_EQ(parsed[0]["reason"], "malformed_jws");
  EXPECT_TRUE(parsed[0]["stream"].is_null());
  EXPECT_TRUE(parsed[0]["seq"].is_null());
  EXPECT_EQ(parsed[1]["reason"], "chain_break");
  EXPECT_EQ(parsed[1]["seq"], 4);
  EXPECT_EQ(parsed[1]["envelope"], "{\"protected\":\"x\"}");
  std::vector<std::string> keys;
  for (auto& [key, _] : parsed[1].items())
    keys.push_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{"received", "last_seen", "count", "device", "topic",
                                            "reason", "detail", "stream", "seq", "envelope"}));
}

std::vector<DeviceStats> sample_stats() {
  DeviceStats a;
  a.device = "fablab-mk4-01";
  a.registered = true;
  a.last_seen_unix_ms = ms("2026-11-01T10:00:00Z");
  a.events = 120;
  a.gaps = 2;
  a.chain_intact = false;
  a.rejections = {{"bad_signature", 3}, {"chain_break", 1}};
  StreamStats s;
  s.stream = k_stream;
  s.events = 120;
  s.contiguous = 100;
  s.max_seq = 122;
  s.gaps = 2;
  s.chain_intact = false;
  s.first_seen_unix_ms = ms("2026-10-01T00:00:00Z");
  s.last_seen_unix_ms = ms("2026-11-01T10:00:00Z");
  a.streams = {s};
  DeviceStats b;
  b.device = "x";
  return {a, b};
}

TEST_F(QueryTest, StatsTextIsAnAlignedTable) {
  EXPECT_EQ(format_stats_text(sample_stats()),
            "DEVICE         STATUS        LAST SEEN                 EVENTS  GAPS  CHAIN   "
            "STREAMS  REJECTIONS\n"
            "fablab-mk4-01  registered    2026-11-01T10:00:00.000Z  120     2     broken  1        "
            "bad_signature=3,chain_break=1\n"
            "x              unregistered  -                         0       0     intact  0        "
            "-\n");
  EXPECT_EQ(format_stats_text({}), "no devices\n");
}

TEST_F(QueryTest, StatsJsonHasEveryFieldPerDevice) {
  auto stats = sample_stats();
  Json a = device_stats_json(stats[0]);
  EXPECT_EQ(a["device"], "fablab-mk4-01");
  EXPECT_EQ(a["last_seen"], "2026-11-01T10:00:00.000Z");
  EXPECT_EQ(a["events"], 120);
  EXPECT_EQ(a["gaps"], 2);
  EXPECT_EQ(a["chain"], "broken");
  EXPECT_EQ(a["rejections"]["bad_signature"], 3);
  ASSERT_EQ(a["streams"].size(), 1u);
  EXPECT_EQ(a["streams"][0]["contiguous"], 100);
  EXPECT_EQ(a["streams"][0]["max_seq"], 122);
  EXPECT_EQ(a["streams"][0]["first_seen"], "2026-10-01T00:00:00.000Z");
  Json b = device_stats_json(stats[1]);
  EXPECT_TRUE(b["last_seen"].is_null());
  EXPECT_EQ(b["registered"], false);
  EXPECT_TRUE(b["rejections"].is_object());
}

// A spool raised into stock; a print job consumes 12 g of it and uses the printer for 2 h; the
// part it outputs is handed over (transferCustody) into the shop's inventory.
std::vector<StoredEvent> print_job_history() {
  return {
      make_event("scale-01", 1, "01JBQ9000000000000000000A1", "2026-11-01T08:00:00.000Z",
                 {{"action", "raise"},
                  {"hasPointInTime", "2026-11-01T08:00:00Z"},
                  {"resourceInventoriedAs", "spool-3"},
                  {"resourceQuantity", quantity(1000, "gram")}}),
      make_event("printer-01", 1, "01JBQ9000000000000000000B1", "2026-11-01T11:00:00.000Z",
                 {{"action", "produce"},
                  {"hasPointInTime", "2026-11-01T11:00:00Z"},
                  {"resourceInventoriedAs", "part-9"},
                  {"resourceQuantity", quantity(1, "one")},
                  {"outputOf", "job-42"}}),
      make_event("printer-01", 2, "01JBQ9000000000000000000B2", "2026-11-01T11:00:01.000Z",
                 {{"action", "use"},
                  {"hasBeginning", "2026-11-01T09:00:00Z"},
                  {"hasEnd", "2026-11-01T11:00:00Z"},
                  {"resourceInventoriedAs", "printer-mk4"},
                  {"effortQuantity", quantity(2, "hour")},
                  {"inputOf", "job-42"}}),
      make_event("printer-01", 3, "01JBQ9000000000000000000B3", "2026-11-01T11:00:02.000Z",
                 {{"action", "consume"},
                  {"hasPointInTime", "2026-11-01T10:00:00Z"},
                  {"resourceInventoriedAs", "spool-3"},
                  {"resourceQuantity", quantity(12.5, "gram")},
                  {"inputOf", "job-42"}}),
      make_event("printer-01", 4, "01JBQ9000000000000000000B4", "2026-11-01T12:00:00.000Z",
                 {{"action", "transferCustody"},
                  {"hasPointInTime", "2026-11-01T12:00:00Z"},
                  {"resourceInventoriedAs", "part-9"},
                  {"toResourceInventoriedAs", "shop-part-9"},
                  {"resourceQuantity", quantity(1, "one")}}),
  };
}

TEST_F(QueryTest, TraceWalksBackThroughProcessesToConsumedMaterials) {
  auto tree = trace_resource(print_job_history(), "shop-part-9");
  ASSERT_TRUE(tree) << tree.error().message;
  EXPECT_EQ(format_trace_text(*tree),
            "resource shop-part-9\n"
            "  2026-11-01T12:00:00Z  transferCustody  1 one  device printer-01  event "
            "01JBQ9000000000000000000B4\n"
            "    resource part-9\n"
            "      2026-11-01T11:00:00Z  produce  1 one  device printer-01  event "
            "01JBQ9000000000000000000B1\n"
            "        process job-42\n"
            "          2026-11-01T09:00:00Z..2026-11-01T11:00:00Z  use  effort 2 hour  device "
            "printer-01  event 01JBQ9000000000000000000B2\n"
            "          2026-11-01T10:00:00Z  consume  12.5 gram  device printer-01  event "
            "01JBQ9000000000000000000B3\n"
            "            resource spool-3\n"
            "              2026-11-01T08:00:00Z  raise  1000 gram  device scale-01  event "
            "01JBQ9000000000000000000A1\n"
            "              2026-11-01T10:00:00Z  consume  12.5 gram  device printer-01  event "
            "01JBQ9000000000000000000B3\n"
            "      2026-11-01T12:00:00Z  transferCustody  1 one  device printer-01  event "
            "01JBQ9000000000000000000B4\n");
}

// Issue 14 item 11: a resource or process name with newlines and escape sequences (stored
// before PROTOCOL §4 Limits, or from an older agent) prints as text, on its own line.
TEST_F(QueryTest, TraceTextEscapesWhatDevicesWrote) {
  const std::vector<StoredEvent> events = {
      make_event("printer-01", 1, "01JBQ9000000000000000000B1", "2026-11-01T11:00:01.000Z",
                 {{"action", "produce"},
                  {"hasPointInTime", "2026-11-01T11:00:00Z"},
                  {"resourceInventoriedAs", "part\nresource forged\x1b[2J"},
                  {"resourceQuantity", quantity(1, "one")},
                  {"outputOf",
                   "job\r\xc2\x9b"
                   "31m"}}),
  };
  auto tree = trace_resource(events, "part\nresource forged\x1b[2J");
  ASSERT_TRUE(tree) << tree.error().message;
  const std::string text = format_trace_text(*tree);
  EXPECT_EQ(text.rfind("resource part\\x0aresource forged\\x1b[2J\n", 0), 0u) << text;
  EXPECT_NE(text.find("process job\\x0d\\xc2\\x9b31m\n"), std::string::npos) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 3) << text;
  EXPECT_EQ(text.find('\x1b'), std::string::npos);
}

TEST_F(QueryTest, TraceJsonIsNestedWithTypes) {
  auto tree = trace_resource(print_job_history(), "part-9");
  ASSERT_TRUE(tree);
  Json json = trace_to_json(*tree);
  EXPECT_EQ(json["type"], "resource");
  EXPECT_EQ(json["id"], "part-9");
  ASSERT_EQ(json["children"].size(), 2u);
  const Json& produce = json["children"][0];
  EXPECT_EQ(produce["type"], "event");
  EXPECT_EQ(produce["id"], "01JBQ9000000000000000000B1");
  EXPECT_EQ(produce["action"], "produce");
  EXPECT_EQ(produce["device"], "printer-01");
  EXPECT_EQ(produce["resourceQuantity"]["hasNumericalValue"], 1);
  const Json& process = produce["children"][0];
  EXPECT_EQ(process["type"], "process");
  EXPECT_EQ(process["id"], "job-42");
  ASSERT_EQ(process["children"].size(), 2u);
  EXPECT_EQ(process["children"][1]["action"], "consume");
  EXPECT_EQ(process["children"][1]["children"][0]["type"], "resource");
  EXPECT_EQ(process["children"][1]["children"][0]["id"], "spool-3");
  EXPECT_EQ(json["children"][1]["action"], "transferCustody");
  EXPECT_TRUE(json["children"][1]["children"].empty());
}

TEST_F(QueryTest, TraceEndsOnCyclesAndMarksRepeatedNodes) {
  // A repair: the chair is accepted into a process and comes out of it modified.
  std::vector<StoredEvent> events = {
      make_event("bench-01", 1, "01JBQ9000000000000000000C1", "2026-11-01T08:00:00.000Z",
                 {{"action", "accept"},
                  {"hasPointInTime", "2026-11-01T08:00:00Z"},
                  {"resourceInventoriedAs", "chair-1"},
                  {"resourceQuantity", quantity(1, "one")},
                  {"inputOf", "repair-7"}}),
      make_event("bench-01", 2, "01JBQ9000000000000000000C2", "2026-11-01T09:00:00.000Z",
                 {{"action", "modify"},
                  {"hasPointInTime", "2026-11-01T09:00:00Z"},
                  {"resourceInventoriedAs", "chair-1"},
                  {"resourceQuantity", quantity(1, "one")},
                  {"outputOf", "repair-7"}}),
  };
  auto tree = trace_resource(events, "chair-1");
  ASSERT_TRUE(tree);
  Json json = trace_to_json(*tree);
  ASSERT_EQ(json["children"].size(), 2u);
  const Json& modify = json["children"][1];
  EXPECT_EQ(modify["action"], "modify");
  const Json& process = modify["children"][0];
  ASSERT_EQ(process["children"].size(), 1u);
  const Json& again = process["children"][0]["children"][0];
  EXPECT_EQ(again["type"], "resource");
  EXPECT_EQ(again["id"], "chair-1");
  EXPECT_EQ(again["repeated"], true);
  EXPECT_TRUE(again["children"].empty());
  EXPECT_NE(format_trace_text(*tree).find("resource chair-1  (see above)"), std::string::npos);
}

// A return: the pallet goes from the workshop (A) to the shop (B) and back again. Each
// transfer into a resource leads to its source, so the walk meets A again and stops there.
TEST_F(QueryTest, TraceEndsOnATransferCycle) {
  const std::vector<StoredEvent> events = {
      make_event("desk-01", 1, "01JBQ9000000000000000000D1", "2026-11-01T08:00:00.000Z",
                 {{"action", "transferCustody"},
                  {"hasPointInTime", "2026-11-01T08:00:00Z"},
                  {"resourceInventoriedAs", "pallet-A"},
                  {"toResourceInventoriedAs", "pallet-B"},
                  {"resourceQuantity", quantity(1, "one")}}),
      make_event("desk-01", 2, "01JBQ9000000000000000000D2", "2026-11-01T09:00:00.000Z",
                 {{"action", "transferCustody"},
                  {"hasPointInTime", "2026-11-01T09:00:00Z"},
                  {"resourceInventoriedAs", "pallet-B"},
                  {"toResourceInventoriedAs", "pallet-A"},
                  {"resourceQuantity", quantity(1, "one")}}),
  };
  auto tree = trace_resource(events, "pallet-A");
  ASSERT_TRUE(tree) << tree.error().message;
  EXPECT_EQ(format_trace_text(*tree),
            "resource pallet-A\n"
            "  2026-11-01T08:00:00Z  transferCustody  1 one  device desk-01  event "
            "01JBQ9000000000000000000D1\n"
            "  2026-11-01T09:00:00Z  transferCustody  1 one  device desk-01  event "
            "01JBQ9000000000000000000D2\n"
            "    resource pallet-B\n"
            "      2026-11-01T08:00:00Z  transferCustody  1 one  device desk-01  event "
            "01JBQ9000000000000000000D1\n"
            "        resource pallet-A  (see above)\n"
            "      2026-11-01T09:00:00Z  transferCustody  1 one  device desk-01  event "
            "01JBQ9000000000000000000D2\n");
}

// A recycling station's chain (issue 16): two households hand in bags (intake = transferCustody
// into the station's batch, toResourceInventoriedAs), the desk hands batch A over to the
// shredder, the shredder consumes both batches and produces flakes, the extruder consumes the
// flakes (using the extruder) and produces pellets.
std::vector<StoredEvent> recycling_chain() {
  const Json station = "did:reflow:station-7";
  return {
      make_event("desk-01", 1, "01JBQ9000000000000000000E1", "2026-11-02T09:00:00.000Z",
                 {{"action", "transferCustody"},
                  {"hasPointInTime", "2026-11-02T09:00:00Z"},
                  {"provider", "did:reflow:household-5"},
                  {"receiver", station},
                  {"resourceInventoriedAs", "bag-5"},
                  {"toResourceInventoriedAs", "intake-A"},
                  {"resourceQuantity", quantity(2.4, "kilogram")}}),
      make_event("desk-01", 2, "01JBQ9000000000000000000E2", "2026-11-02T09:30:00.000Z",
                 {{"action", "transferCustody"},
                  {"hasPointInTime", "2026-11-02T09:30:00Z"},
                  {"provider", "did:reflow:school-2"},
                  {"receiver", station},
                  {"resourceInventoriedAs", "bag-2"},
                  {"toResourceInventoriedAs", "intake-B"},
                  {"resourceQuantity", quantity(1.1, "kilogram")}}),
      make_event("desk-01", 3, "01JBQ9000000000000000000E3", "2026-11-02T10:00:00.000Z",
                 {{"action", "transferCustody"},
                  {"hasPointInTime", "2026-11-02T10:00:00Z"},
                  {"provider", station},
                  {"receiver", "did:reflow:shredder-crew"},
                  {"resourceInventoriedAs", "intake-A"},
                  {"toResourceInventoriedAs", "shred-in-A"},
                  {"resourceQuantity", quantity(2.4, "kilogram")}}),
      make_event("shredder-01", 1, "01JBQ9000000000000000000F1", "2026-11-02T11:00:00.000Z",
                 {{"action", "consume"},
                  {"hasPointInTime", "2026-11-02T11:00:00Z"},
                  {"resourceInventoriedAs", "shred-in-A"},
                  {"resourceQuantity", quantity(2.4, "kilogram")},
                  {"inputOf", "shred-1"}}),
      make_event("shredder-01", 2, "01JBQ9000000000000000000F2", "2026-11-02T11:05:00.000Z",
                 {{"action", "consume"},
                  {"hasPointInTime", "2026-11-02T11:05:00Z"},
                  {"resourceInventoriedAs", "intake-B"},
                  {"resourceQuantity", quantity(1.1, "kilogram")},
                  {"inputOf", "shred-1"}}),
      make_event("shredder-01", 3, "01JBQ9000000000000000000F3", "2026-11-02T11:30:00.000Z",
                 {{"action", "produce"},
                  {"hasPointInTime", "2026-11-02T11:30:00Z"},
                  {"resourceInventoriedAs", "flakes-1"},
                  {"resourceQuantity", quantity(3.3, "kilogram")},
                  {"outputOf", "shred-1"}}),
      make_event("extruder-01", 1, "01JBQ9000000000000000000G1", "2026-11-02T13:00:00.000Z",
                 {{"action", "consume"},
                  {"hasPointInTime", "2026-11-02T13:00:00Z"},
                  {"resourceInventoriedAs", "flakes-1"},
                  {"resourceQuantity", quantity(3.3, "kilogram")},
                  {"inputOf", "extrude-1"}}),
      make_event("extruder-01", 2, "01JBQ9000000000000000000G2", "2026-11-02T14:00:00.000Z",
                 {{"action", "use"},
                  {"hasBeginning", "2026-11-02T13:00:00Z"},
                  {"hasEnd", "2026-11-02T14:00:00Z"},
                  {"resourceInventoriedAs", "extruder-felfil"},
                  {"effortQuantity", quantity(1, "hour")},
                  {"inputOf", "extrude-1"}}),
      make_event("extruder-01", 3, "01JBQ9000000000000000000G3", "2026-11-02T14:00:01.000Z",
                 {{"action", "produce"},
                  {"hasPointInTime", "2026-11-02T14:00:00Z"},
                  {"resourceInventoriedAs", "pellets-1"},
                  {"resourceQuantity", quantity(3.1, "kilogram")},
                  {"outputOf", "extrude-1"}}),
  };
}

// The passport of a pellet batch: pellets <- extruder <- flakes <- shredder <- both intake
// batches (a branch: two consumed inputs of one process) <- the providers' hand-ins.
const char* const k_pellets_passport =
    "resource pellets-1\n"
    "  2026-11-02T14:00:00Z  produce  3.1 kilogram  device extruder-01  event "
    "01JBQ9000000000000000000G3\n"
    "    process extrude-1\n"
    "      2026-11-02T13:00:00Z  consume  3.3 kilogram  device extruder-01  event "
    "01JBQ9000000000000000000G1\n"
    "        resource flakes-1\n"
    "          2026-11-02T11:30:00Z  produce  3.3 kilogram  device shredder-01  event "
    "01JBQ9000000000000000000F3\n"
    "            process shred-1\n"
    "              2026-11-02T11:00:00Z  consume  2.4 kilogram  device shredder-01  event "
    "01JBQ9000000000000000000F1\n"
    "                resource shred-in-A\n"
    "                  2026-11-02T10:00:00Z  transferCustody  2.4 kilogram  provider "
    "did:reflow:station-7  receiver did:reflow:shredder-crew  device desk-01  event "
    "01JBQ9000000000000000000E3\n"
    "                    resource intake-A\n"
    "                      2026-11-02T09:00:00Z  transferCustody  2.4 kilogram  provider "
    "did:reflow:household-5  receiver did:reflow:station-7  device desk-01  event "
    "01JBQ9000000000000000000E1\n"
    "                        resource bag-5\n"
    "                          2026-11-02T09:00:00Z  transferCustody  2.4 kilogram  provider "
    "did:reflow:household-5  receiver did:reflow:station-7  device desk-01  event "
    "01JBQ9000000000000000000E1\n"
    "                      2026-11-02T10:00:00Z  transferCustody  2.4 kilogram  provider "
    "did:reflow:station-7  receiver did:reflow:shredder-crew  device desk-01  event "
    "01JBQ9000000000000000000E3\n"
    "                  2026-11-02T11:00:00Z  consume  2.4 kilogram  device shredder-01  event "
    "01JBQ9000000000000000000F1\n"
    "              2026-11-02T11:05:00Z  consume  1.1 kilogram  device shredder-01  event "
    "01JBQ9000000000000000000F2\n"
    "                resource intake-B\n"
    "                  2026-11-02T09:30:00Z  transferCustody  1.1 kilogram  provider "
    "did:reflow:school-2  receiver did:reflow:station-7  device desk-01  event "
    "01JBQ9000000000000000000E2\n"
    "                    resource bag-2\n"
    "                      2026-11-02T09:30:00Z  transferCustody  1.1 kilogram  provider "
    "did:reflow:school-2  receiver did:reflow:station-7  device desk-01  event "
    "01JBQ9000000000000000000E2\n"
    "                  2026-11-02T11:05:00Z  consume  1.1 kilogram  device shredder-01  event "
    "01JBQ9000000000000000000F2\n"
    "          2026-11-02T13:00:00Z  consume  3.3 kilogram  device extruder-01  event "
    "01JBQ9000000000000000000G1\n"
    "      2026-11-02T13:00:00Z..2026-11-02T14:00:00Z  use  effort 1 hour  device extruder-01  "
    "event 01JBQ9000000000000000000G2\n";

TEST_F(QueryTest, TraceOfAPelletBatchReachesBothIntakeBatchesAndTheirProviders) {
  auto tree = trace_resource(recycling_chain(), "pellets-1");
  ASSERT_TRUE(tree) << tree.error().message;
  EXPECT_EQ(format_trace_text(*tree), k_pellets_passport);
}

TEST_F(QueryTest, TraceJsonOfAnIntakeBatchNamesItsProvider) {
  auto tree = trace_resource(recycling_chain(), "intake-B");
  ASSERT_TRUE(tree) << tree.error().message;
  Json json = trace_to_json(*tree);
  ASSERT_EQ(json["children"].size(), 2u);
  const Json& intake = json["children"][0];
  EXPECT_EQ(intake["action"], "transferCustody");
  EXPECT_EQ(intake["provider"], "did:reflow:school-2");
  EXPECT_EQ(intake["receiver"], "did:reflow:station-7");
  EXPECT_EQ(intake["toResourceInventoriedAs"], "intake-B");
  ASSERT_EQ(intake["children"].size(), 1u);
  EXPECT_EQ(intake["children"][0]["id"], "bag-2");
  // Forward events (the shredder's consume) are part of the batch's life, but lead nowhere.
  EXPECT_EQ(json["children"][1]["action"], "consume");
  EXPECT_TRUE(json["children"][1]["children"].empty());
}

TEST_F(QueryTest, TraceOfAnUnknownResourceIsNotFound) {
  auto tree = trace_resource(print_job_history(), "nothing");
  ASSERT_FALSE(tree);
  EXPECT_EQ(tree.error().code, agent::ErrorCode::not_found);
  EXPECT_NE(tree.error().message.find("\"nothing\""), std::string::npos);
}

TEST_F(QueryTest, TraceReadsTheEventsThroughTheStore) {
  m_store.events = print_job_history();
  auto tree = trace_resource(m_store, "spool-3");
  ASSERT_TRUE(tree);
  EXPECT_EQ(tree->children.size(), 2u);
  EXPECT_EQ(tree->children[0].event["action"], "raise");
}

// The same questions against the real SQLite store.
class QuerySqliteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(test_store::open_store_and_key(m_dir.path(), m_store, m_key));
  }

  void put(const std::vector<StoredEvent>& events) {
    test_store::LastHashes last_hash;
    test_store::put_verified(*m_store, *m_key, events, last_hash, ms("2026-11-02T00:00:00Z"));
  }

  reflow_test::TempDir m_dir;
  std::unique_ptr<Store> m_store;
  std::optional<agent::DeviceKey> m_key;
};

TEST_F(QuerySqliteTest, JsonlAndTraceWorkOnTheSqliteStore) {
  auto events = print_job_history();
  put(events);
  std::ostringstream out;
  EventFilter filter;
  filter.device = "scale-01";
  ASSERT_TRUE(write_events(*m_store, filter, EventFormat::jsonl, out));
  EXPECT_EQ(out.str(), events[0].payload + "\n");

  auto tree = trace_resource(*m_store, "shop-part-9");
  ASSERT_TRUE(tree) << tree.error().message;
  EXPECT_EQ(format_trace_text(*tree), format_trace_text(*trace_resource(events, "shop-part-9")));
}

// The node-level passport of a pellet batch over a real SQLite file filled with verified,
// chained envelopes from three devices (desk, shredder, extruder).
TEST_F(QuerySqliteTest, TraceOfARecyclingChainOnTheSqliteStore) {
  put(recycling_chain());
  auto tree = trace_resource(*m_store, "pellets-1");
  ASSERT_TRUE(tree) << tree.error().message;
  EXPECT_EQ(format_trace_text(*tree), k_pellets_passport);
  auto missing = trace_resource(*m_store, "pellets-2");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, agent::ErrorCode::not_found);
}

TEST_F(QuerySqliteTest, CsvAndStatsWorkOnTheSqliteStore) {
  auto events = print_job_history();
  put(events);
  std::ostringstream out;
  EventFilter filter;
  filter.action = "consume";
  ASSERT_TRUE(write_events(*m_store, filter, EventFormat::csv, out));
  std::string text = out.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2);
  EXPECT_NE(text.find(",consume,2026-11-01T10:00:00Z,,,,,spool-3,,,12.5,gram,,,job-42,"),
            std::string::npos);

  auto stats = m_store->stats();
  ASSERT_TRUE(stats) << stats.error().message;
  std::string table = format_stats_text(*stats);
  EXPECT_NE(table.find("printer-01"), std::string::npos);
  EXPECT_NE(table.find("scale-01"), std::string::npos);
}

}  // namespace
}  // namespace ingest
