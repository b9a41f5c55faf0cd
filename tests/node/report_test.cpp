// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-ingest report usage` over a hand-made month of a makerspace: two members, a printer
// whose jobs consume filament, a laser, and events without a member. Every figure below is
// computed by hand from the events.
#include <reflow/node/report.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/units.hpp>

namespace ingest::report {
namespace {

using Json = nlohmann::ordered_json;

Json quantity(double value, const char* unit) {
  return {{"hasNumericalValue", value}, {"hasUnit", unit}};
}

StoredEvent event(std::int64_t seq, const std::string& recorded, Json fields) {
  Json payload = {{"v", 1},
                  {"id", "01JBQ8Z6V2X4W6Y8A0C2E4G6" + std::to_string(10 + seq)},
                  {"device", "fablab-mk4-01"},
                  {"seq", seq},
                  {"recorded", recorded}};
  for (auto& [key, value] : fields.items())
    payload[key] = value;
  StoredEvent e;
  e.device = "fablab-mk4-01";
  e.seq = seq;
  e.id = payload["id"];
  e.action = fields.value("action", "");
  e.recorded_unix_ms = *agent::parse_rfc3339(recorded);
  e.payload = payload.dump();
  return e;
}

// November: Ana prints job 1 (1.5 h, 30 g of spool 7, a part) and uses the laser for 30 minutes;
// Ben prints job 2 (5400 s = 1.5 h, 12.5 g of spool 7), whose consume names him itself; a third
// job has no member (0.25 h, 4 g). December: Ana works 2 hours on the shredder (work: provider).
std::vector<StoredEvent> month() {
  return {
      event(1, "2026-11-02T11:00:00Z",
            {{"action", "use"},
             {"resourceInventoriedAs", "printer:mk4"},
             {"receiver", "member:ana"},
             {"provider", "org:fablab"},
             {"effortQuantity", quantity(1.5, "hour")},
             {"hasBeginning", "2026-11-02T09:30:00Z"},
             {"hasEnd", "2026-11-02T11:00:00Z"},
             {"inputOf", "moonraker:mk4:job-1"}}),
      // The consume comes before the process's use in the store: attribution must not depend on
      // the order.
      event(2, "2026-11-03T08:00:00Z",
            {{"action", "consume"},
             {"resourceInventoriedAs", "spoolman:spool-7"},
             {"resourceQuantity", quantity(12.5, "gram")},
             {"hasPointInTime", "2026-11-03T08:00:00Z"},
             {"receiver", "member:ben"},
             {"inputOf", "moonraker:mk4:job-2"}}),
      event(3, "2026-11-02T11:00:01Z",
            {{"action", "consume"},
             {"resourceInventoriedAs", "spoolman:spool-7"},
             {"resourceQuantity", quantity(30, "gram")},
             {"hasPointInTime", "2026-11-02T11:00:00Z"},
             {"inputOf", "moonraker:mk4:job-1"}}),
      event(4, "2026-11-02T11:00:02Z",
            {{"action", "produce"},
             {"resourceInventoriedAs", "part:knob"},
             {"resourceQuantity", quantity(1, "one")},
             {"hasPointInTime", "2026-11-02T11:00:00Z"},
             {"outputOf", "moonraker:mk4:job-1"}}),
      event(5, "2026-11-03T08:00:01Z",
            {{"action", "use"},
             {"resourceInventoriedAs", "printer:mk4"},
             {"receiver", "member:ben"},
             {"effortQuantity", quantity(5400, "second-Time")},
             {"hasBeginning", "2026-11-03T06:30:00Z"},
             {"hasEnd", "2026-11-03T08:00:00Z"},
             {"inputOf", "moonraker:mk4:job-2"}}),
      event(6, "2026-11-20T10:00:00Z",
            {{"action", "use"},
             {"resourceInventoriedAs", "laser:trotec"},
             {"receiver", "member:ana"},
             {"effortQuantity", quantity(30, "minute-Time")},
             {"hasBeginning", "2026-11-20T09:30:00Z"},
             {"hasEnd", "2026-11-20T10:00:00Z"}}),
      event(7, "2026-11-25T12:00:00Z",
            {{"action", "use"},
             {"resourceInventoriedAs", "printer:mk4"},
             {"effortQuantity", quantity(0.25, "hour")},
             {"hasBeginning", "2026-11-25T11:45:00Z"},
             {"hasEnd", "2026-11-25T12:00:00Z"},
             {"inputOf", "moonraker:mk4:job-3"}}),
      event(8, "2026-11-25T12:00:01Z",
            {{"action", "consume"},
             {"resourceInventoriedAs", "spoolman:spool-7"},
             {"resourceQuantity", quantity(4, "gram")},
             {"hasPointInTime", "2026-11-25T12:00:00Z"},
             {"inputOf", "moonraker:mk4:job-3"}}),
      event(9, "2026-12-01T12:00:00Z",
            {{"action", "work"},
             {"provider", "member:ana"},
             {"resourceConformsTo", "shredding"},
             {"effortQuantity", quantity(2, "hour")},
             {"hasBeginning", "2026-12-01T10:00:00Z"},
             {"hasEnd", "2026-12-01T12:00:00Z"}}),
  };
}

UsageOptions options(By by, Period period) {
  UsageOptions o;
  o.by = by;
  o.period = period;
  return o;
}

const UsageRow* find(const std::vector<UsageRow>& rows, std::string_view period,
                     std::string_view key) {
  for (const auto& row : rows)
    if (row.period == period && row.key == key) return &row;
  return nullptr;
}

TEST(ReportTest, ByMemberPerMonthGivesHoursAndTheMaterialOfTheirJobs) {
  const auto rows = usage(month(), options(By::member, Period::month));
  ASSERT_EQ(rows.size(), 4u);  // ana, ben, (none) in November; ana in December

  const UsageRow* ana = find(rows, "2026-11", "member:ana");
  ASSERT_NE(ana, nullptr);
  EXPECT_DOUBLE_EQ(ana->use_hours, 2.0);  // 1.5 h printing + 30 min laser
  EXPECT_EQ(ana->sessions, 2);
  EXPECT_EQ(ana->events, 4);  // use, consume and produce of job 1, the laser's use
  EXPECT_EQ(ana->consumed, (std::map<ResourceUnit, double>{{{"spoolman:spool-7", "gram"}, 30}}));
  EXPECT_EQ(ana->produced, (std::map<ResourceUnit, double>{{{"part:knob", "one"}, 1}}));
  EXPECT_EQ(ana->machines,
            (std::map<std::string, std::int64_t>{{"laser:trotec", 1}, {"printer:mk4", 1}}));

  const UsageRow* ben = find(rows, "2026-11", "member:ben");
  ASSERT_NE(ben, nullptr);
  EXPECT_DOUBLE_EQ(ben->use_hours, 1.5);  // 5400 s
  EXPECT_EQ(ben->consumed, (std::map<ResourceUnit, double>{{{"spoolman:spool-7", "gram"}, 12.5}}));

  const UsageRow* none = find(rows, "2026-11", "");
  ASSERT_NE(none, nullptr);
  EXPECT_DOUBLE_EQ(none->use_hours, 0.25);
  EXPECT_EQ(none->consumed, (std::map<ResourceUnit, double>{{{"spoolman:spool-7", "gram"}, 4}}));

  const UsageRow* december = find(rows, "2026-12", "member:ana");
  ASSERT_NE(december, nullptr);
  EXPECT_DOUBLE_EQ(december->use_hours, 2.0);  // work: the provider is the member
  EXPECT_TRUE(december->machines.empty());

  // Sorted by period, then key ("" first).
  EXPECT_EQ(rows[0].key, "");
  EXPECT_EQ(rows[3].period, "2026-12");
}

TEST(ReportTest, ByMachineSumsEveryJobAndNamesItsMembers) {
  const auto rows = usage(month(), options(By::machine, Period::all));
  const UsageRow* printer = find(rows, "all", "printer:mk4");
  ASSERT_NE(printer, nullptr);
  EXPECT_DOUBLE_EQ(printer->use_hours, 3.25);
  EXPECT_EQ(printer->sessions, 3);
  EXPECT_EQ(printer->consumed,
            (std::map<ResourceUnit, double>{{{"spoolman:spool-7", "gram"}, 46.5}}));
  EXPECT_EQ(printer->members,
            (std::map<std::string, std::int64_t>{{"member:ana", 1}, {"member:ben", 1}}));
  const UsageRow* laser = find(rows, "all", "laser:trotec");
  ASSERT_NE(laser, nullptr);
  EXPECT_DOUBLE_EQ(laser->use_hours, 0.5);
  // The shredding work has no machine.
  const UsageRow* none = find(rows, "all", "");
  ASSERT_NE(none, nullptr);
  EXPECT_DOUBLE_EQ(none->use_hours, 2.0);
}

TEST(ReportTest, ByResourceGroupsMaterialsByTheirOwnReference) {
  const auto rows = usage(month(), options(By::resource, Period::all));
  const UsageRow* spool = find(rows, "all", "spoolman:spool-7");
  ASSERT_NE(spool, nullptr);
  EXPECT_EQ(spool->events, 3);
  EXPECT_EQ(spool->sessions, 0);
  EXPECT_EQ(spool->consumed,
            (std::map<ResourceUnit, double>{{{"spoolman:spool-7", "gram"}, 46.5}}));
  EXPECT_TRUE(spool->members.empty());  // consumes are not sessions
  EXPECT_NE(find(rows, "all", "part:knob"), nullptr);
  EXPECT_NE(find(rows, "all", "shredding"), nullptr);
}

TEST(ReportTest, FromAndToSelectByTheEventsOwnTime) {
  // Job 1's use began 09:30 on Nov 2 and was recorded at 11:00: its time is its beginning.
  const auto rows = usage(month(), {.by = By::member,
                                    .period = Period::all,
                                    .from_unix_ms = *agent::parse_rfc3339("2026-11-02T09:30:00Z"),
                                    .to_unix_ms = *agent::parse_rfc3339("2026-11-03T06:30:00Z")});
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].key, "member:ana");
  EXPECT_DOUBLE_EQ(rows[0].use_hours, 1.5);
  EXPECT_EQ(rows[0].events, 3);  // job 1's use, consume and produce; not Ben's job (to is open)
}

TEST(ReportTest, PeriodsAreUtcDaysIsoWeeksAndMonths) {
  const auto at = [](const char* t) { return *agent::parse_rfc3339(t); };
  EXPECT_EQ(period_of(at("2026-11-30T23:59:59.999Z"), Period::day), "2026-11-30");
  EXPECT_EQ(period_of(at("2026-11-30T23:30:00-01:00"), Period::day), "2026-12-01");
  EXPECT_EQ(period_of(at("2026-11-21T12:00:00Z"), Period::month), "2026-11");
  // ISO 8601 weeks: Monday first, the week of the year's first Thursday is week 1.
  EXPECT_EQ(period_of(at("2026-11-16T00:00:00Z"), Period::week), "2026-W47");  // a Monday
  EXPECT_EQ(period_of(at("2026-11-22T23:59:59Z"), Period::week), "2026-W47");  // its Sunday
  EXPECT_EQ(period_of(at("2027-01-01T12:00:00Z"), Period::week), "2026-W53");  // a Friday
  EXPECT_EQ(period_of(at("2025-12-29T12:00:00Z"), Period::week), "2026-W01");  // a Monday
  EXPECT_EQ(period_of(at("2026-11-21T12:00:00Z"), Period::all), "all");
  EXPECT_TRUE(parse_by("member"));
  EXPECT_FALSE(parse_by("person"));
  EXPECT_FALSE(parse_period("year"));
}

TEST(ReportTest, TableCsvAndJsonShowTheSameFigures) {
  const auto rows = usage(month(), options(By::member, Period::month));
  const std::string table = format_usage_table(rows, By::member);
  EXPECT_NE(table.find("PERIOD   MEMBER      HOURS  SESSIONS  CONSUMED"), std::string::npos)
      << table;
  EXPECT_NE(table.find("2026-11  member:ana  2.000  2         30 gram spoolman:spool-7"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("(none)"), std::string::npos);
  EXPECT_NE(table.find("laser:trotec×1, printer:mk4×1"), std::string::npos) << table;
  EXPECT_EQ(format_usage_table({}, By::member), "no events in the period\n");

  const std::string csv = format_usage_csv(rows, By::member);
  EXPECT_EQ(csv.substr(0, csv.find("\r\n")),
            "period,member,hours,sessions,events,flow,resource,quantity,unit");
  EXPECT_NE(csv.find("2026-11,member:ana,2,2,4,consume,spoolman:spool-7,30,gram\r\n"),
            std::string::npos)
      << csv;
  EXPECT_NE(csv.find("2026-11,member:ana,2,2,4,produce,part:knob,1,one\r\n"), std::string::npos);
  EXPECT_NE(csv.find("2026-12,member:ana,2,1,1,,,,\r\n"), std::string::npos) << csv;

  const auto* ben = find(rows, "2026-11", "member:ben");
  ASSERT_NE(ben, nullptr);
  EXPECT_EQ(usage_json(*ben, By::member).dump(),
            R"({"period":"2026-11","member":"member:ben","hours":1.5,"sessions":1,"events":2,)"
            R"("consumed":[{"resource":"spoolman:spool-7","quantity":12.5,"unit":"gram"}],)"
            R"("produced":[],"machines":{"printer:mk4":1}})");
  EXPECT_TRUE(usage_json(rows[0], By::member)["member"].is_null());
}

// The month above, plus the printer's service after job 2 (a modify of the machine with its
// note) and a modify of a part, which is no machine's service.
std::vector<StoredEvent> month_with_services() {
  auto events = month();
  events.push_back(event(10, "2026-11-03T12:00:00Z",
                         {{"action", "modify"},
                          {"resourceInventoriedAs", "printer:mk4"},
                          {"resourceQuantity", quantity(1, "one")},
                          {"hasPointInTime", "2026-11-03T12:00:00Z"},
                          {"note", "nozzle replaced"}}));
  events.push_back(event(11, "2026-11-30T12:00:00Z",
                         {{"action", "modify"},
                          {"resourceInventoriedAs", "part:knob"},
                          {"resourceQuantity", quantity(1, "one")},
                          {"hasPointInTime", "2026-11-30T12:00:00Z"}}));
  return events;
}

TEST(MaintenanceReportTest, CountsUseSinceTheLastServiceAgainstEachInterval) {
  using std::chrono::hours;
  using std::chrono::minutes;
  const auto rows = maintenance(month_with_services(),
                                {.default_interval = minutes(20),
                                 .intervals = {{"printer:mk4", hours(3)}, {"kiln:1", hours(50)}}});
  ASSERT_EQ(rows.size(), 3u);  // the laser, the printer, and the kiln without any use
  // The most overdue first: the laser's 30 minutes against the default 20.
  EXPECT_EQ(rows[0].machine, "laser:trotec");
  EXPECT_DOUBLE_EQ(rows[0].hours_since, 0.5);
  EXPECT_EQ(rows[0].sessions_since, 1);
  EXPECT_FALSE(rows[0].last_service_ms.has_value());
  ASSERT_TRUE(rows[0].hours_left.has_value());
  EXPECT_NEAR(*rows[0].hours_left, -1.0 / 6, 1e-12);
  EXPECT_TRUE(rows[0].overdue());
  // The printer: jobs 1 and 2 (3 h) before its service, job 3 (0.25 h) after.
  EXPECT_EQ(rows[1].machine, "printer:mk4");
  EXPECT_DOUBLE_EQ(rows[1].hours_total, 3.25);
  EXPECT_DOUBLE_EQ(rows[1].hours_since, 0.25);
  EXPECT_EQ(rows[1].sessions_since, 1);
  EXPECT_EQ(rows[1].last_service_ms, *agent::parse_rfc3339("2026-11-03T12:00:00Z"));
  EXPECT_EQ(rows[1].last_service_note, "nozzle replaced");
  EXPECT_DOUBLE_EQ(*rows[1].hours_left, 2.75);
  EXPECT_FALSE(rows[1].overdue());
  EXPECT_EQ(rows[2].machine, "kiln:1");
  EXPECT_DOUBLE_EQ(rows[2].hours_since, 0);
  EXPECT_DOUBLE_EQ(*rows[2].hours_left, 50);
}

TEST(MaintenanceReportTest, WithoutIntervalsMachinesAreListedAfterTheDueOnes) {
  const auto rows =
      maintenance(month_with_services(), {.intervals = {{"laser:trotec", std::chrono::hours(1)}}});
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].machine, "laser:trotec");
  EXPECT_DOUBLE_EQ(*rows[0].hours_left, 0.5);
  EXPECT_EQ(rows[1].machine, "printer:mk4");
  EXPECT_FALSE(rows[1].interval_hours.has_value());
  EXPECT_FALSE(rows[1].overdue());
}

TEST(MaintenanceReportTest, TableCsvAndJsonShowTheSameFigures) {
  const auto rows =
      maintenance(month_with_services(), {.default_interval = std::chrono::minutes(20),
                                          .intervals = {{"printer:mk4", std::chrono::hours(3)}}});
  const std::string table = format_maintenance_table(rows);
  EXPECT_NE(table.find("MACHINE       USE SINCE  SESSIONS  LAST SERVICE"), std::string::npos)
      << table;
  EXPECT_NE(table.find("0.3333 h  overdue by 0.17 h"), std::string::npos) << table;
  EXPECT_NE(table.find("0.25 h     1         2026-11-03 nozzle replaced  3 h       due in 2.75 h"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("never"), std::string::npos);
  EXPECT_EQ(format_maintenance_table({}), "no machines\n");

  const std::string csv = format_maintenance_csv(rows);
  EXPECT_EQ(csv.substr(0, csv.find("\r\n")),
            "machine,hours_since_service,sessions_since_service,hours_total,last_service,"
            "last_service_note,interval_hours,hours_left,overdue");
  EXPECT_NE(csv.find("printer:mk4,0.25,1,3.25,2026-11-03T12:00:00.000Z,nozzle replaced,3,2.75,"
                     "false\r\n"),
            std::string::npos)
      << csv;

  EXPECT_EQ(maintenance_json(rows[1]).dump(),
            R"({"machine":"printer:mk4","hours_since_service":0.25,"sessions_since_service":1,)"
            R"("hours_total":3.25,"last_service":{"time":"2026-11-03T12:00:00.000Z",)"
            R"("note":"nozzle replaced"},"interval_hours":3.0,"hours_left":2.75,)"
            R"("overdue":false})");
  EXPECT_TRUE(maintenance_json(rows[0])["last_service"].is_null());
}

// Unknown cards as the badge drivers emit them (PROTOCOL §4.1): a cite of the machine.
StoredEvent unknown_card(std::int64_t seq, const std::string& device, const std::string& machine,
                         const std::string& hash, const std::string& at) {
  StoredEvent e = event(seq, at,
                        {{"action", "cite"},
                         {"resourceInventoriedAs", machine},
                         {"resourceQuantity", quantity(1, "one")},
                         {"hasPointInTime", at},
                         {"inputOf", "mcu:laser:badge-" + std::to_string(seq)},
                         {"note", "unknown badge"},
                         {"meta", {{"badge", "unknown"}, {"badge_hash", hash}}}});
  e.device = device;
  return e;
}

const std::string k_card_a(43, 'A');
const std::string k_card_b = std::string(42, 'b') + "-";

// A week at two devices: card A twice at the laser, card B once at the laser and once at the
// printer of another device; an old sighting, a hash of the wrong shape, a known member's use.
std::vector<StoredEvent> sightings() {
  return {
      unknown_card(1, "fablab-laser", "machine:laser", k_card_a, "2026-11-20T10:00:00Z"),
      unknown_card(2, "fablab-laser", "machine:laser", k_card_b, "2026-11-21T09:00:00Z"),
      unknown_card(3, "fablab-laser", "machine:laser", k_card_a, "2026-11-22T18:30:00Z"),
      unknown_card(4, "fablab-mk4-01", "printer:mk4", k_card_b, "2026-11-21T12:00:00Z"),
      unknown_card(5, "fablab-laser", "machine:laser", k_card_a, "2026-10-01T08:00:00Z"),
      unknown_card(6, "fablab-laser", "machine:laser", "0a1b2c3d4e", "2026-11-22T19:00:00Z"),
      event(7, "2026-11-22T20:00:00Z",
            {{"action", "use"},
             {"resourceInventoriedAs", "machine:laser"},
             {"receiver", "member:ana"},
             {"effortQuantity", quantity(0.5, "hour")},
             {"hasBeginning", "2026-11-22T19:30:00Z"},
             {"hasEnd", "2026-11-22T20:00:00Z"},
             {"inputOf", "mcu:laser:session-1"}}),
  };
}

TEST(UnknownCardsTest, ListsEachCardPerDeviceAndMachineMostRecentFirst) {
  const auto rows = unknown_cards(sightings(), *agent::parse_rfc3339("2026-11-15T00:00:00Z"));
  ASSERT_EQ(rows.size(), 3U);
  EXPECT_EQ(rows[0].device, "fablab-laser");
  EXPECT_EQ(rows[0].machine, "machine:laser");
  EXPECT_EQ(rows[0].hash, k_card_a);
  EXPECT_EQ(rows[0].times, 2);  // the October sighting is before --since
  EXPECT_EQ(rows[0].first_seen_ms, *agent::parse_rfc3339("2026-11-20T10:00:00Z"));
  EXPECT_EQ(rows[0].last_seen_ms, *agent::parse_rfc3339("2026-11-22T18:30:00Z"));
  EXPECT_EQ(rows[1].device, "fablab-mk4-01");
  EXPECT_EQ(rows[1].machine, "printer:mk4");
  EXPECT_EQ(rows[1].hash, k_card_b);
  EXPECT_EQ(rows[2].device, "fablab-laser");
  EXPECT_EQ(rows[2].hash, k_card_b);
  EXPECT_EQ(rows[2].times, 1);

  EXPECT_EQ(unknown_cards(sightings(), *agent::parse_rfc3339("2026-11-23T00:00:00Z")).size(), 0U);
  EXPECT_EQ(unknown_cards(sightings(), 0)[0].times, 3);
}

TEST(UnknownCardsTest, AreNeitherUseNorMaterialInTheUsageReport) {
  UsageOptions options;
  options.period = Period::all;
  const auto rows = usage(sightings(), options);
  ASSERT_EQ(rows.size(), 1U);
  EXPECT_EQ(rows[0].key, "machine:laser");
  EXPECT_EQ(rows[0].events, 1);
  EXPECT_EQ(rows[0].sessions, 1);
}

TEST(UnknownCardsTest, TableAndJsonShowTheSameCards) {
  const auto rows = unknown_cards(sightings(), *agent::parse_rfc3339("2026-11-15T00:00:00Z"));
  const std::string table = format_unknown_cards_table(rows);
  EXPECT_NE(table.find("LAST SEEN                 DEVICE         MACHINE        TIMES  BADGE"),
            std::string::npos)
      << table;
  EXPECT_NE(
      table.find("2026-11-22T18:30:00.000Z  fablab-laser   machine:laser  2      " + k_card_a),
      std::string::npos)
      << table;
  EXPECT_EQ(format_unknown_cards_table({}), "no unknown cards in the period\n");
  EXPECT_EQ(unknown_card_json(rows[1]).dump(),
            R"({"device":"fablab-mk4-01","machine":"printer:mk4","badge":")" + k_card_b +
                R"(","times":1,"first_seen":"2026-11-21T12:00:00.000Z",)"
                R"("last_seen":"2026-11-21T12:00:00.000Z"})");
}

}  // namespace
}  // namespace ingest::report
