// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/store.hpp>

#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <limits>
#include <map>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/node/query.hpp>
#include <reflow/node/verifier.hpp>

#include "fault_vfs.hpp"
#include "pg_cluster.hpp"
#include "temp_dir.hpp"
#include "verified_events.hpp"

namespace ingest {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

constexpr std::int64_t k_t0 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z

// A registered (or not) device with its signing key.
struct Device {
  std::string id;
  agent::DeviceKey key;
  std::string header;

  std::string topic() const { return "reflow/v1/" + id + "/events"; }
};

Json fields_for(const std::string& action) {
  Json fields = {{"action", action}, {"hasPointInTime", "2026-01-01T00:00:00Z"}};
  if (action == "use" || action == "work") {
    fields["resourceInventoriedAs"] = "printer-1";
    fields["effortQuantity"] = {{"hasNumericalValue", 1.5}, {"hasUnit", "hour"}};
  } else {
    fields["resourceInventoriedAs"] = "spool-7";
    fields["resourceQuantity"] = {{"hasNumericalValue", 12}, {"hasUnit", "gram"}};
  }
  return fields;
}

// Turns the rejections of the current schema back into those of versions 1 and 2.
// What a file looked like before version 5: no export ledger; before version 4: no log either.
constexpr const char* k_ledger_as_in_version_4 = "DROP TABLE export_ledger;";
constexpr const char* k_log_as_in_version_3 =
    "DROP TABLE export_ledger; DROP TABLE log_leaves; DROP TABLE log_nodes;";
constexpr const char* k_rejections_as_in_version_2 =
    "DROP TABLE export_ledger; DROP TABLE log_leaves; DROP TABLE log_nodes;"
    "DROP INDEX rejections_envelope; DROP INDEX rejections_capped;"
    "DROP TABLE rejections_not_kept;"
    "ALTER TABLE rejections DROP COLUMN capped;"
    "ALTER TABLE rejections DROP COLUMN envelope_sha256;"
    "ALTER TABLE rejections DROP COLUMN count;"
    "ALTER TABLE rejections DROP COLUMN last_seen_ms;";

struct EventSpec {
  std::int64_t seq = 1;
  std::string prev;  // empty for seq 1
  std::int64_t recorded_ms = k_t0;
  std::string action = "use";
  std::string note;  // makes a different event with the same seq
};

// The store implementations the shared tests run against.
enum class Backend { sqlite, postgresql };

std::string backend_name(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::sqlite ? "sqlite" : "postgresql";
}

// The fixture of every store test; backend() says which store it opens: SqliteStoreTest for the
// SQLite store's own file and schema tests, StoreTest for those every store must pass.
class StoreTestBase : public ::testing::Test {
 protected:
  virtual Backend backend() const { return Backend::sqlite; }

  fs::path db_path() const { return m_dir / "data" / "ingest.db"; }

  void SetUp() override {
    m_faults.write_error = SQLITE_OK;
    if (backend() == Backend::postgresql) {
#if !REFLOW_HAVE_POSTGRESQL
      GTEST_SKIP() << "built without the PostgreSQL store (REFLOW_POSTGRESQL=OFF: no libpqxx, as "
                      "in cross builds)";
#endif
      std::string why;
      m_pg = reflow_test::PgCluster::shared(why);
      if (m_pg == nullptr) GTEST_SKIP() << why;
      m_pg_url = m_pg->create_schema();
      ASSERT_FALSE(m_pg_url.empty()) << "cannot create a schema in the test cluster";
    }
    m_store = open_store();
  }
  void TearDown() override {
    m_faults.write_error = SQLITE_OK;
    m_store.reset();
    if (m_pg != nullptr && !m_pg_url.empty()) m_pg->drop_schema(m_pg_url);
  }

  std::unique_ptr<Store> open_store(const RejectionLimits& limits = {}) {
    auto store = backend() == Backend::postgresql ? open_postgres_store(m_pg_url, {}, limits)
                                                  : open_sqlite_store(db_path(), limits);
    EXPECT_TRUE(store) << store.error().message;
    return store ? std::move(*store) : nullptr;
  }

  Device& device(const std::string& id, bool registered = true) {
    auto key = agent::DeviceKey::generate(m_dir / (id + std::to_string(m_devices.size()) + ".key"));
    EXPECT_TRUE(key) << key.error().message;
    std::string header = agent::jws_protected_header_b64(key->public_jwk().kid);
    m_devices.push_back(std::make_unique<Device>(Device{id, std::move(*key), std::move(header)}));
    if (registered) {
      EXPECT_TRUE(m_store->add_device(id, m_devices.back()->key.public_jwk(), k_t0));
    }
    return *m_devices.back();
  }

  std::string new_stream() {
    return m_ulids.next(k_t0);
  }

  VerifiedEvent make(const Device& d, const std::string& stream, const EventSpec& spec) {
    agent::EventStamp s;
    s.id = m_ulids.next(k_t0);
    s.device = d.id;
    s.stream = stream;
    s.seq = spec.seq;
    s.prev = spec.prev;
    s.recorded_unix_ms = spec.recorded_ms;
    s.clock = agent::ClockSync::synced;
    Json fields = fields_for(spec.action);
    if (!spec.note.empty()) fields["note"] = spec.note;
    const std::string payload =
        agent::make_event_payload(s, fields, agent::EventSource{"sim", "printer", ""});
    const agent::Jws jws = agent::jws_sign(d.key, d.header, payload);
    VerifiedEvent e;
    e.topic = d.topic();
    e.envelope = jws.to_envelope();
    e.kid = d.key.public_jwk().kid;
    e.payload = payload;
    e.device = d.id;
    e.stream = stream;
    e.seq = spec.seq;
    e.prev = spec.prev;
    e.id = s.id;
    e.action = spec.action;
    e.recorded_unix_ms = spec.recorded_ms;
    e.signing_input_sha256 = agent::sha256_b64url(jws.signing_input());
    return e;
  }

  // Events first..last of one stream, each linked to the one before.
  std::vector<VerifiedEvent> chain(const Device& d, const std::string& stream, std::int64_t count,
                                   std::int64_t recorded_ms = k_t0,
                                   const std::string& action = "use") {
    std::vector<VerifiedEvent> out;
    std::string prev;
    for (std::int64_t seq = 1; seq <= count; ++seq) {
      out.push_back(make(d, stream, EventSpec{seq, prev, recorded_ms + seq, action, ""}));
      prev = out.back().signing_input_sha256;
    }
    return out;
  }

  // A rejection on the topic of device "junk" that names no stream or seq.
  static Rejection junk_rejection(std::string envelope = "garbage",
                                  RejectReason reason = RejectReason::malformed_jws,
                                  std::string detail = "not JSON") {
    return Rejection{"reflow/v1/junk/events", "junk",       std::move(envelope), reason,
                     std::move(detail),       std::nullopt, std::nullopt};
  }

  static Incoming in(const VerifiedEvent& e) {
    return Incoming{e, std::nullopt};
  }
  static Incoming in(const Rejection& r) {
    return Incoming{std::nullopt, r};
  }

  std::vector<PutResult> put(const std::vector<Incoming>& batch, std::int64_t now = k_t0) {
    return put_into(*m_store, batch, now);
  }

  static std::vector<PutResult> put_into(Store& store, const std::vector<Incoming>& batch,
                                         std::int64_t now) {
    auto r = store.put(batch, now);
    EXPECT_TRUE(r) << r.error().message;
    if (!r) return {};
    EXPECT_EQ(r->size(), batch.size());
    return *r;
  }

  std::optional<AckPoint> ack(const std::string& device) {
    auto r = m_store->ack_point(device);
    EXPECT_TRUE(r) << r.error().message;
    return r ? *r : std::nullopt;
  }

  std::vector<StoredEvent> events(const EventFilter& filter = {}, Store* store = nullptr) {
    std::vector<StoredEvent> out;
    auto s = (store ? store : m_store.get())->for_each_event(filter, [&](const StoredEvent& e) {
      out.push_back(e);
      return true;
    });
    EXPECT_TRUE(s) << s.error().message;
    return out;
  }

  std::vector<StoredRejection> rejections(std::optional<std::string_view> device = std::nullopt,
                                          Store* store = nullptr) {
    std::vector<StoredRejection> out;
    auto s =
        (store ? store : m_store.get())->for_each_rejection(device, [&](const StoredRejection& r) {
          out.push_back(r);
          return true;
        });
    EXPECT_TRUE(s) << s.error().message;
    return out;
  }

  DeviceStats stats_of(const std::string& device, Store* store = nullptr) {
    auto all = (store ? store : m_store.get())->stats();
    EXPECT_TRUE(all) << all.error().message;
    if (all) {
      for (auto& d : *all)
        if (d.device == device) return d;
    }
    ADD_FAILURE() << "no stats for " << device;
    return {};
  }

  Rejection verified_rejection(Device& d, std::string_view envelope,
                               std::string topic_device = "") {
    if (topic_device.empty()) topic_device = d.id;
    auto r =
        verify_envelope(*m_store, "reflow/v1/" + topic_device + "/events", topic_device, envelope);
    EXPECT_TRUE(r) << r.error().message;
    if (!r) return {};
    EXPECT_FALSE(r->has_value());
    return r->has_value() ? Rejection{} : r->error();
  }

  static void expect_outcome(const PutResult& r, PutOutcome outcome,
                             std::optional<RejectReason> reason = std::nullopt) {
    EXPECT_EQ(r.outcome, outcome) << r.detail;
    if (reason) {
      ASSERT_TRUE(r.reason.has_value()) << r.detail;
      EXPECT_EQ(to_string(*r.reason), to_string(*reason)) << r.detail;
      EXPECT_FALSE(r.detail.empty());
    }
  }

  // Installed before the store opens its connections: SQLite takes the default VFS at open.
  reflow_test::FaultVfs& m_faults = reflow_test::FaultVfs::install();
  reflow_test::TempDir m_dir;
  std::unique_ptr<Store> m_store;
  std::vector<std::unique_ptr<Device>> m_devices;
  agent::UlidGenerator m_ulids;
  reflow_test::PgCluster* m_pg = nullptr;
  std::string m_pg_url;  ///< postgresql: this test's own schema
};

class SqliteStoreTest : public StoreTestBase {};

class PostgresStoreTest : public StoreTestBase {
 protected:
  Backend backend() const override { return Backend::postgresql; }
};

class StoreTest : public StoreTestBase, public ::testing::WithParamInterface<Backend> {
 protected:
  Backend backend() const override { return GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest,
                         ::testing::Values(Backend::sqlite, Backend::postgresql), backend_name);

TEST_P(StoreTest, StoresEventsAndAcksTheContiguousPoint) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  auto evs = chain(d, s, 3);
  EXPECT_FALSE(ack(d.id).has_value());
  auto r = put({in(evs[0]), in(evs[1]), in(evs[2])});
  ASSERT_EQ(r.size(), 3u);
  for (const auto& x : r)
    expect_outcome(x, PutOutcome::stored);
  auto a = ack(d.id);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->stream, s);
  EXPECT_EQ(a->seq, 3);

  auto stored = events();
  ASSERT_EQ(stored.size(), 3u);
  EXPECT_EQ(stored[1].seq, 2);
  EXPECT_EQ(stored[1].payload, evs[1].payload);
  EXPECT_EQ(stored[1].envelope, evs[1].envelope);
  EXPECT_EQ(stored[1].id, evs[1].id);
  EXPECT_EQ(stored[1].kid, evs[1].kid);
  EXPECT_EQ(stored[1].action, "use");
  EXPECT_EQ(stored[1].recorded_unix_ms, evs[1].recorded_unix_ms);
  EXPECT_EQ(stored[1].received_unix_ms, k_t0);
}

TEST_P(StoreTest, DuplicateChangesNothingButEquivocationIsRejectedAndFirstKept) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  auto evs = chain(d, s, 2);
  put({in(evs[0]), in(evs[1])});

  // The same signed bytes re-sent (the agent resends until acked), also inside one batch.
  VerifiedEvent twin = make(d, s,
                            EventSpec{2, evs[0].signing_input_sha256, k_t0 + 2, "use",
                                      "a different event with the same seq"});
  auto r = put({in(evs[1]), in(evs[0]), in(twin)}, k_t0 + 10);
  ASSERT_EQ(r.size(), 3u);
  expect_outcome(r[0], PutOutcome::duplicate);
  expect_outcome(r[1], PutOutcome::duplicate);
  expect_outcome(r[2], PutOutcome::rejected, RejectReason::equivocation);

  auto stored = events();
  ASSERT_EQ(stored.size(), 2u);
  EXPECT_EQ(stored[1].envelope, evs[1].envelope);
  auto rej = rejections();
  ASSERT_EQ(rej.size(), 1u);
  EXPECT_EQ(rej[0].reason, RejectReason::equivocation);
  EXPECT_EQ(rej[0].envelope, twin.envelope);
  EXPECT_EQ(rej[0].stream, s);
  EXPECT_EQ(rej[0].seq, 2);
  EXPECT_EQ(rej[0].device, d.id);
  EXPECT_EQ(rej[0].topic, d.topic());
  EXPECT_EQ(rej[0].received_unix_ms, k_t0 + 10);
  EXPECT_EQ(ack(d.id)->seq, 2);
}

TEST_P(StoreTest, DuplicateWithinOneBatchIsStoredOnce) {
  Device& d = device("fablab-mk4-01");
  auto evs = chain(d, new_stream(), 1);
  auto r = put({in(evs[0]), in(evs[0])});
  ASSERT_EQ(r.size(), 2u);
  expect_outcome(r[0], PutOutcome::stored);
  expect_outcome(r[1], PutOutcome::duplicate);
  EXPECT_EQ(events().size(), 1u);
}

TEST_P(StoreTest, AckHeldAtGapThenAdvancesPastItWhenFilled) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  auto evs = chain(d, s, 6);
  put({in(evs[0]), in(evs[1]), in(evs[3]), in(evs[4])});
  EXPECT_EQ(ack(d.id)->seq, 2);
  EXPECT_EQ(stats_of(d.id).gaps, 1);

  put({in(evs[2])});
  EXPECT_EQ(ack(d.id)->seq, 5);
  EXPECT_EQ(stats_of(d.id).gaps, 0);

  put({in(evs[5])});
  EXPECT_EQ(ack(d.id)->seq, 6);
}

TEST_P(StoreTest, AckIsZeroUntilSeqOneArrives) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  auto evs = chain(d, s, 3);
  put({in(evs[2]), in(evs[1])});
  auto a = ack(d.id);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->stream, s);
  EXPECT_EQ(a->seq, 0);
  put({in(evs[0])});
  EXPECT_EQ(ack(d.id)->seq, 3);
}

TEST_P(StoreTest, ChainBreakWhenStoredPredecessorDisagrees) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  auto evs = chain(d, s, 3);
  put({in(evs[0]), in(evs[1])});
  VerifiedEvent forged =
      make(d, s, EventSpec{3, agent::sha256_b64url("not seq 2"), k_t0 + 3, "use", ""});
  auto r = put({in(forged), in(evs[2])});
  ASSERT_EQ(r.size(), 2u);
  expect_outcome(r[0], PutOutcome::rejected, RejectReason::chain_break);
  expect_outcome(r[1], PutOutcome::stored);
  EXPECT_EQ(ack(d.id)->seq, 3);
  DeviceStats st = stats_of(d.id);
  EXPECT_FALSE(st.chain_intact);
  ASSERT_EQ(st.streams.size(), 1u);
  EXPECT_FALSE(st.streams[0].chain_intact);
  EXPECT_EQ(st.rejections["chain_break"], 1);
}

// A held successor cannot judge the predecessor that arrives after it: the predecessor is checked
// against its own stored predecessor, and the held successor is judged by it (issue 14 item 12).
TEST_P(StoreTest, ChainBreakWhenHeldSuccessorDisagreesMovesTheSuccessorOut) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  auto evs = chain(d, s, 4);
  // Seq 4 arrives first across the gap; then a seq 3, linked to seq 2, that seq 4 does not
  // vouch for.
  put({in(evs[0]), in(evs[1]), in(evs[3])});
  VerifiedEvent other =
      make(d, s, EventSpec{3, evs[1].signing_input_sha256, k_t0 + 3, "use", "another seq 3"});
  auto r = put({in(other)});
  ASSERT_EQ(r.size(), 1u);
  expect_outcome(r[0], PutOutcome::stored);
  EXPECT_EQ(ack(d.id)->seq, 3);
  EXPECT_FALSE(stats_of(d.id).chain_intact);
  auto rej = rejections();
  ASSERT_EQ(rej.size(), 1u);
  EXPECT_EQ(rej[0].reason, RejectReason::chain_break);
  EXPECT_EQ(rej[0].envelope, evs[3].envelope);

  // The first seq 3 stored is kept.
  r = put({in(evs[2])});
  expect_outcome(r[0], PutOutcome::rejected, RejectReason::equivocation);
  EXPECT_EQ(ack(d.id)->seq, 3);
}

TEST_P(StoreTest, IntactChainAcrossGapFill) {
  Device& d = device("fablab-mk4-01");
  auto evs = chain(d, new_stream(), 5);
  put({in(evs[4]), in(evs[0]), in(evs[2])});
  put({in(evs[3]), in(evs[1])});
  DeviceStats st = stats_of(d.id);
  EXPECT_TRUE(st.chain_intact);
  EXPECT_EQ(st.rejections.size(), 0u);
  EXPECT_EQ(ack(d.id)->seq, 5);
}

TEST_P(StoreTest, RevokedKeyKeepsOldStreamsButCannotStartNewOnes) {
  Device& d = device("fablab-mk4-01");
  const std::string old_stream = new_stream();
  auto evs = chain(d, old_stream, 3, k_t0);
  put({in(evs[0]), in(evs[2])}, k_t0 + 10);

  const std::int64_t revoked_at = k_t0 + 1000;
  ASSERT_TRUE(m_store->revoke_device(d.id, revoked_at));

  // Recorded before the revocation, filling a gap below seq 3 (stored before it): accepted end to
  // end.
  auto v = verify_envelope(*m_store, d.topic(), d.id, evs[1].envelope);
  ASSERT_TRUE(v && v->has_value());
  // Recorded after: the verifier refuses it.
  VerifiedEvent late =
      make(d, old_stream, EventSpec{4, evs[2].signing_input_sha256, revoked_at + 5, "use", "late"});
  Rejection late_rejection = verified_rejection(d, late.envelope);
  EXPECT_EQ(late_rejection.reason, RejectReason::key_revoked);
  // A fresh stream, back-dated before the revocation: the store refuses it.
  auto fresh = chain(d, new_stream(), 1, k_t0);

  auto r = put({in(**v), in(late_rejection), in(fresh[0])}, revoked_at + 10);
  ASSERT_EQ(r.size(), 3u);
  expect_outcome(r[0], PutOutcome::stored);
  expect_outcome(r[1], PutOutcome::rejected, RejectReason::key_revoked);
  expect_outcome(r[2], PutOutcome::rejected, RejectReason::key_revoked);
  EXPECT_EQ(ack(d.id)->stream, old_stream);
  EXPECT_EQ(ack(d.id)->seq, 3);
  EXPECT_EQ(stats_of(d.id).rejections["key_revoked"], 2);
  EXPECT_TRUE(stats_of(d.id).revoked);
}

TEST_P(StoreTest, KeepsEveryRejectionReasonBesideGoodEventsInOneBatch) {
  Device& d = device("fablab-mk4-01");
  Device& stranger = device("stranger", /*registered=*/false);
  Device& retired = device("retired-01");
  ASSERT_TRUE(m_store->revoke_device(retired.id, k_t0 + 100));

  const std::string s = new_stream();
  auto evs = chain(d, s, 4);
  put({in(evs[0])});

  auto sign = [&](Device& who, const std::string& bytes) {
    return agent::jws_sign(who.key, who.header, bytes).to_envelope();
  };
  Json bad_unit = Json::parse(evs[1].payload);
  bad_unit["effortQuantity"]["hasUnit"] = "grams";
  agent::Jws bad_sig = agent::jws_sign(d.key, d.header, evs[1].payload);
  bad_sig.signature_b64 = agent::jws_sign(d.key, d.header, evs[2].payload).signature_b64;
  Json hs256 = {{"alg", "HS256"}, {"kid", d.key.public_jwk().kid}};
  VerifiedEvent retired_late = make(retired, new_stream(), EventSpec{1, "", k_t0 + 200, "use", ""});
  Json other_device = Json::parse(evs[1].payload);
  other_device["device"] = "someone-else";

  std::vector<Rejection> verified = {
      verified_rejection(d, std::string(agent::k_max_envelope_bytes + 10, '{')),
      verified_rejection(
          d, agent::jws_sign(d.key, agent::base64url_encode(hs256.dump()), evs[1].payload)
                 .to_envelope()),
      verified_rejection(stranger, make(stranger, new_stream(), EventSpec{}).envelope),
      verified_rejection(d, bad_sig.to_envelope()),
      verified_rejection(d, sign(d, other_device.dump())),
      verified_rejection(d, sign(d, bad_unit.dump())),
      verified_rejection(retired, retired_late.envelope),
  };
  const std::vector<RejectReason> expected = {
      RejectReason::oversized,     RejectReason::malformed_jws,   RejectReason::unknown_kid,
      RejectReason::bad_signature, RejectReason::device_mismatch, RejectReason::invalid_event,
      RejectReason::key_revoked};
  ASSERT_EQ(verified.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i)
    EXPECT_EQ(to_string(verified[i].reason), to_string(expected[i])) << verified[i].detail;

  VerifiedEvent equivocating = make(d, s, EventSpec{1, "", k_t0, "use", "second seq 1"});
  VerifiedEvent broken = make(d, s, EventSpec{3, agent::sha256_b64url("x"), k_t0, "use", ""});

  std::vector<Incoming> batch;
  batch.push_back(in(evs[1]));
  for (const auto& r : verified)
    batch.push_back(in(r));
  batch.push_back(in(equivocating));
  batch.push_back(in(broken));
  batch.push_back(in(evs[2]));
  batch.push_back(in(evs[3]));
  auto r = put(batch, k_t0 + 500);
  ASSERT_EQ(r.size(), batch.size());
  expect_outcome(r[0], PutOutcome::stored);
  for (std::size_t i = 0; i < expected.size(); ++i)
    expect_outcome(r[1 + i], PutOutcome::rejected, expected[i]);
  expect_outcome(r[8], PutOutcome::rejected, RejectReason::equivocation);
  expect_outcome(r[9], PutOutcome::rejected, RejectReason::chain_break);
  expect_outcome(r[10], PutOutcome::stored);
  expect_outcome(r[11], PutOutcome::stored);

  EXPECT_EQ(ack(d.id)->seq, 4);
  auto stored = rejections();
  ASSERT_EQ(stored.size(), 9u);
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(stored[i].reason, expected[i]);
    EXPECT_EQ(stored[i].envelope, verified[i].envelope);
    EXPECT_EQ(stored[i].detail, verified[i].detail);
  }
  EXPECT_EQ(stored[8].reason, RejectReason::chain_break);
  EXPECT_EQ(stored[0].envelope.size(), agent::k_max_envelope_bytes + 10);
  EXPECT_FALSE(stored[0].stream.has_value());
  EXPECT_EQ(stored[4].stream, s);
  EXPECT_EQ(stored[4].seq, 2);
}

TEST_P(StoreTest, AckPointFollowsTheMostRecentStream) {
  Device& d = device("fablab-mk4-01");
  const std::string first = new_stream();
  const std::string second = new_stream();
  auto a = chain(d, first, 3);
  auto b = chain(d, second, 2);
  put({in(a[0]), in(a[1])});
  put({in(b[0])});
  EXPECT_EQ(ack(d.id)->stream, second);
  EXPECT_EQ(ack(d.id)->seq, 1);
  // The old stream's agent (e.g. before a quarantine) delivers one more.
  put({in(a[2])});
  EXPECT_EQ(ack(d.id)->stream, first);
  EXPECT_EQ(ack(d.id)->seq, 3);
  // A duplicate is not activity.
  put({in(b[0]), in(b[1]), in(a[2])});
  EXPECT_EQ(ack(d.id)->stream, second);
  EXPECT_EQ(ack(d.id)->seq, 2);
  EXPECT_FALSE(ack("nobody").has_value());
}

TEST_P(StoreTest, ReopenedFileStillHasEverything) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  auto evs = chain(d, s, 3);
  const Rejection junk = junk_rejection();
  put({in(evs[0]), in(evs[2]), in(junk)}, k_t0 + 7);
  m_store.reset();

  m_store = open_store();
  ASSERT_TRUE(m_store);
  auto keys = m_store->list_keys();
  ASSERT_TRUE(keys);
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ((*keys)[0].device, d.id);
  EXPECT_EQ((*keys)[0].jwk.kid, d.key.public_jwk().kid);
  EXPECT_EQ((*keys)[0].jwk.x, d.key.public_jwk().x);
  EXPECT_EQ(ack(d.id)->seq, 1);
  EXPECT_EQ(events().size(), 1u);  // seq 3 is held beyond the gap
  EXPECT_EQ(stats_of(d.id).events, 2);
  auto rej = rejections();
  ASSERT_EQ(rej.size(), 1u);
  EXPECT_EQ(rej[0].envelope, "garbage");
  EXPECT_EQ(rej[0].received_unix_ms, k_t0 + 7);

  // The chain state survives too: seq 2 fills the gap and links both ways.
  auto r = put({in(evs[1])});
  expect_outcome(r[0], PutOutcome::stored);
  EXPECT_EQ(ack(d.id)->seq, 3);
  EXPECT_TRUE(stats_of(d.id).chain_intact);
  auto stored = events();
  ASSERT_EQ(stored.size(), 3u);
  EXPECT_EQ(stored[2].envelope, evs[2].envelope);
  EXPECT_EQ(stored[2].payload, evs[2].payload);  // decoded from the envelope (schema 2)
}

// The service acks what put() stored, and the agent then deletes it: a batch half stored when
// the disk filled up or failed would be acked in part and the rest lost on a retry that
// counts it as a duplicate. A failed put() must leave nothing of its batch.
TEST_F(SqliteStoreTest, WriteFailureStoresNothingOfTheBatchAndARetryStoresIt) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  const std::string s2 = new_stream();
  auto evs = chain(d, s, 5);
  auto other = chain(d, s2, 1);
  put({in(evs[0]), in(evs[1])});
  const Rejection junk = junk_rejection();
  // Events of a known and of a new stream, a gap and a rejection: every kind of row put() writes.
  const std::vector<Incoming> batch = {in(evs[2]), in(evs[4]), in(other[0]), in(junk)};

  const struct {
    int sqlite_error;
    agent::ErrorCode code;
  } faults[] = {{SQLITE_FULL, agent::ErrorCode::no_space},
                {SQLITE_IOERR_WRITE, agent::ErrorCode::io}};
  for (const auto& fault : faults) {
    SCOPED_TRACE(sqlite3_errstr(fault.sqlite_error));
    m_faults.write_error = fault.sqlite_error;
    auto failed = m_store->put(batch, k_t0 + 5);
    m_faults.write_error = SQLITE_OK;
    ASSERT_FALSE(failed.has_value());
    EXPECT_EQ(agent::to_string(failed.error().code), agent::to_string(fault.code))
        << failed.error().message;
    EXPECT_NE(failed.error().message.find(db_path().string()), std::string::npos)
        << failed.error().message;

    auto a = ack(d.id);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->stream, s);
    EXPECT_EQ(a->seq, 2);
    EXPECT_EQ(events().size(), 2u);
    EXPECT_TRUE(rejections().empty());
    const DeviceStats st = stats_of(d.id);
    EXPECT_EQ(st.events, 2);
    EXPECT_EQ(st.gaps, 0);
    EXPECT_EQ(st.streams.size(), 1u);
  }

  auto r = put(batch, k_t0 + 6);
  ASSERT_EQ(r.size(), 4u);
  expect_outcome(r[0], PutOutcome::stored);
  expect_outcome(r[1], PutOutcome::stored);
  expect_outcome(r[2], PutOutcome::stored);
  expect_outcome(r[3], PutOutcome::rejected, RejectReason::malformed_jws);
  EXPECT_EQ(events().size(), 4u);  // and seq 5, held beyond the gap
  EXPECT_EQ(rejections().size(), 1u);

  // Stored for good, not only in the connection that saw the errors.
  m_store.reset();
  m_store = open_store();
  ASSERT_TRUE(m_store);
  EXPECT_EQ(events().size(), 4u);
  EXPECT_EQ(stats_of(d.id).events, 5);
  EXPECT_EQ(stats_of(d.id).gaps, 1);
  auto a = ack(d.id);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->stream, s2);
  EXPECT_EQ(a->seq, 1);
}

TEST_F(SqliteStoreTest, ExistingOnlyRefusesAMissingStoreAndCreatesNothing) {
  const fs::path path = m_dir / "never-run" / "ingest.db";
  auto store = open_sqlite_store(path, {}, StoreOpen::existing_only);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, agent::ErrorCode::not_found);
  EXPECT_EQ(store.error().message,
            fmt::format("no store at {}: has `reflow-ingest run` ever run with this config?",
                        path.string()));
  EXPECT_FALSE(fs::exists(path.parent_path()));
}

TEST_F(SqliteStoreTest, ExistingOnlyOpensTheStoreAndKeepsItsWalForReadOnlyReaders) {
  device("dev-a");
  m_store.reset();
  // Persisted -wal and -shm let a reader without write access to the directory open the file.
  EXPECT_TRUE(fs::exists(db_path().string() + "-wal"));
  EXPECT_TRUE(fs::exists(db_path().string() + "-shm"));
  auto store = open_sqlite_store(db_path(), {}, StoreOpen::existing_only);
  ASSERT_TRUE(store) << store.error().message;
  auto keys = (*store)->list_keys();
  ASSERT_TRUE(keys) << keys.error().message;
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ(keys->front().device, "dev-a");
}

TEST_F(SqliteStoreTest, RefusesAFileThatIsNotAnSqliteDatabase) {
  const fs::path path = m_dir / "notes.db";
  std::ofstream(path) << std::string(8192, 'x');
  auto store = open_sqlite_store(path);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, agent::ErrorCode::corruption);
  EXPECT_NE(store.error().message.find("not an SQLite database"), std::string::npos)
      << store.error().message;
}

TEST_F(SqliteStoreTest, RefusesSomeoneElsesSqliteDatabase) {
  const fs::path path = m_dir / "other.db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE inventory(x)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  auto store = open_sqlite_store(path);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, agent::ErrorCode::corruption);
  EXPECT_NE(store.error().message.find("not a reflow-ingest database"), std::string::npos)
      << store.error().message;
}

TEST_F(SqliteStoreTest, RefusesANewerSchemaVersion) {
  m_store.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version=99", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  auto store = open_sqlite_store(db_path());
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, agent::ErrorCode::corruption);
  EXPECT_NE(store.error().message.find("schema version 99 is newer"), std::string::npos)
      << store.error().message;
}

TEST_F(PostgresStoreTest, ExistingOnlyRefusesAnEmptyDatabaseAndCreatesNothing) {
  const std::string empty = m_pg->create_schema();
  ASSERT_FALSE(empty.empty());
  auto store = open_postgres_store(empty, {}, {}, StoreOpen::existing_only);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, agent::ErrorCode::not_found);
  EXPECT_NE(store.error().message.find("has `reflow-ingest run` ever run"), std::string::npos)
      << store.error().message;
  // Nothing was created: a foreign table now makes the database someone else's.
  ASSERT_TRUE(m_pg->run(empty, "CREATE TABLE inventory(x integer)"));
  store = open_postgres_store(empty);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, agent::ErrorCode::corruption);
  EXPECT_NE(store.error().message.find("not a reflow-ingest database (1 tables"), std::string::npos)
      << store.error().message;
  m_pg->drop_schema(empty);
}

TEST_F(PostgresStoreTest, RefusesANewerSchemaVersion) {
  m_store.reset();
  ASSERT_TRUE(
      m_pg->run(m_pg_url, "UPDATE reflow_meta SET value = '99' WHERE name = 'schema_version'"));
  auto store = open_postgres_store(m_pg_url);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, agent::ErrorCode::corruption);
  EXPECT_NE(store.error().message.find("schema version \"99\""), std::string::npos)
      << store.error().message;
}

TEST_F(PostgresStoreTest, ConnectionErrorsNeverShowThePassword) {
  const fs::path password = m_dir / "db-password";
  std::ofstream(password) << "s3cret-from-file\n";
  auto store = open_postgres_store(fmt::format("postgresql://reflow:s3cret-in-url@/nodb?host={}",
                                               (m_dir / "no-server").string()),
                                   password);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, agent::ErrorCode::io);
  EXPECT_EQ(store.error().message.find("s3cret"), std::string::npos) << store.error().message;
  EXPECT_NE(store.error().message.find("postgresql://reflow:***@/nodb"), std::string::npos)
      << store.error().message;
}

// Everything a store answers, as one text: two stores holding the same rows read the same.
std::string everything_in(Store& store, const std::vector<std::string>& devices) {
  std::string out;
  auto s = store.for_each_event({}, [&](const StoredEvent& e) {
    out += fmt::format("event {} {} {} {} {} {} {}\n", e.device, e.stream, e.seq, e.id,
                       e.received_unix_ms, e.kid, e.envelope);
    return true;
  });
  EXPECT_TRUE(s) << s.error().message;
  s = store.for_each_rejection(std::nullopt, [&](const StoredRejection& r) {
    out +=
        fmt::format("rejection {} {} {} {} {} {} {} {}\n", r.device, r.topic, to_string(r.reason),
                    r.detail, r.seq.value_or(0), r.count, r.last_seen_unix_ms, r.envelope);
    return true;
  });
  EXPECT_TRUE(s) << s.error().message;
  auto keys = store.list_keys();
  EXPECT_TRUE(keys) << keys.error().message;
  for (const auto& k : keys.value_or(std::vector<DeviceKeyRecord>{}))
    out += fmt::format("key {} {} {} {}\n", k.jwk.kid, k.device, k.added_unix_ms,
                       k.revoked_unix_ms.value_or(-1));
  auto stats = store.stats();
  EXPECT_TRUE(stats) << stats.error().message;
  for (const auto& d : stats.value_or(std::vector<DeviceStats>{})) {
    out += fmt::format("stats {} {} {} {} {} {}\n", d.device, d.events, d.gaps, d.chain_intact,
                       d.revoked, d.rejections_not_kept);
    for (const auto& st : d.streams)
      out += fmt::format("  stream {} {} {} {}\n", st.stream, st.events, st.contiguous, st.max_seq);
  }
  for (const auto& device : devices) {
    auto ack = store.ack_point(device);
    EXPECT_TRUE(ack) << ack.error().message;
    if (ack && *ack) out += fmt::format("ack {} {} {}\n", device, (*ack)->stream, (*ack)->seq);
  }
  auto ledger = store.ledger_entries("https://zenflows.example");
  EXPECT_TRUE(ledger) << ledger.error().message;
  for (const auto& l : ledger.value_or(std::vector<LedgerEntry>{}))
    out += fmt::format("ledger {} {} {} {} {}\n", to_string(l.kind), l.ref, l.recorded, l.server_id,
                       l.note);
  auto log = store.log_checkpoint();
  EXPECT_TRUE(log) << log.error().message;
  if (log) out += fmt::format("log {} {}\n", log->size, agent::base64url_encode(log->root));
  return out;
}

// reflow-ingest migrate: a SQLite store with chains, a filled gap, a displaced held event,
// repeated rejections, a revoked key and the export ledger reads the same from PostgreSQL; a
// re-run copies only what the SQLite store gained since, and the copy takes new events after.
TEST_F(PostgresStoreTest, MigrateCopiesASqliteStoreAndARerunCopiesOnlyTheRest) {
  std::unique_ptr<Store> pg = std::move(m_store);
  auto sqlite = open_sqlite_store(db_path());
  ASSERT_TRUE(sqlite) << sqlite.error().message;
  m_store = std::move(*sqlite);  // device() and put() work on m_store
  Device& a = device("fablab-mk4-01");
  Device& b = device("recycler-01");
  const std::string s1 = new_stream();
  auto evs = chain(a, s1, 6);
  // Seq 4 from elsewhere arrives first and is held, then seq 3 decides against it.
  const VerifiedEvent stray = make(a, s1, EventSpec{4, "bm90LXRoZS1wcmV2", k_t0 + 4, "use", ""});
  put({in(evs[0]), in(evs[1]), in(stray)});
  put({in(evs[2]), in(evs[3]), in(junk_rejection()), in(junk_rejection())});
  const std::string s2 = new_stream();
  auto other = chain(b, s2, 2, k_t0, "produce");
  put({in(other[0]), in(other[1])});
  ASSERT_TRUE(m_store->revoke_device("recycler-01", k_t0 + 100));
  ASSERT_TRUE(
      m_store->ledger_intent(LedgerEntry{"https://zenflows.example", LedgerKind::event, evs[0].id,
                                         false, "", "n1", evs[0].id, "", k_t0, 0},
                             k_t0));
  const std::vector<std::string> devices{"fablab-mk4-01", "recycler-01", "junk"};

  std::vector<std::string> lines;
  auto first = migrate_sqlite_to_postgres(db_path(), m_pg_url, {},
                                          [&](std::string_view line) { lines.emplace_back(line); });
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_FALSE(lines.empty());
  EXPECT_EQ(everything_in(*pg, devices), everything_in(*m_store, devices));
  EXPECT_EQ(first->log.size, 7U);  // 7 stored, the displaced one's leaf included

  // Nothing new: nothing copied but the tables that change in place.
  auto again = migrate_sqlite_to_postgres(db_path(), m_pg_url, {}, [](std::string_view) {});
  ASSERT_TRUE(again) << again.error().message;
  for (const auto& t : again->tables) {
    if (t.name == "events" || t.name == "log_leaves") {
      EXPECT_EQ(t.copied, 0) << t.name;
    }
  }

  // The SQLite store went on: the re-run copies the rest.
  put({in(evs[4])});
  auto rest = migrate_sqlite_to_postgres(db_path(), m_pg_url, {}, [](std::string_view) {});
  ASSERT_TRUE(rest) << rest.error().message;
  for (const auto& t : rest->tables) {
    if (t.name == "events" || t.name == "log_leaves") {
      EXPECT_EQ(t.copied, 1) << t.name;
    }
  }
  EXPECT_EQ(everything_in(*pg, devices), everything_in(*m_store, devices));

  // The copy is a working store: the next event gets a new row after the copied ones.
  auto next = put_into(*pg, {in(evs[5])}, k_t0 + 5);
  ASSERT_EQ(next.size(), 1U);
  expect_outcome(next[0], PutOutcome::stored);
  EventFilter of_a;
  of_a.device = "fablab-mk4-01";
  EXPECT_EQ(events(of_a, pg.get()).size(), 6U);
}

TEST_F(PostgresStoreTest, MigrateRefusesADatabaseHoldingOtherEvents) {
  Device& a = device("fablab-mk4-01");
  put({in(chain(a, new_stream(), 1)[0])});  // the PostgreSQL store's own event
  auto sqlite = open_sqlite_store(db_path());
  ASSERT_TRUE(sqlite) << sqlite.error().message;
  ASSERT_TRUE((*sqlite)->add_device("fablab-mk4-01", a.key.public_jwk(), k_t0));
  put_into(**sqlite, {in(chain(a, new_stream(), 2)[0])}, k_t0);
  auto refused = migrate_sqlite_to_postgres(db_path(), m_pg_url, {}, [](std::string_view) {});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, agent::ErrorCode::rejected);
  EXPECT_NE(refused.error().message.find("is not a prefix of the log"), std::string::npos)
      << refused.error().message;
  EXPECT_EQ(events({}).size(), 1U);  // nothing written
}

// Schema 1 kept each payload beside its envelope; opening such a file drops the column and
// keeps every event, readable as before.
TEST_F(SqliteStoreTest, MigratesASchemaVersion1File) {
  Device& d = device("fablab-mk4-01");
  auto evs = chain(d, new_stream(), 3);
  put({in(evs[0]), in(evs[1])});
  m_store.reset();
  sqlite3* db = nullptr;
  auto query_int = [&](const char* sql) {
    sqlite3_stmt* stmt = nullptr;
    std::int64_t value = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
      value = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return value;
  };
  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         (std::string(k_rejections_as_in_version_2) +
                          "ALTER TABLE events ADD COLUMN payload TEXT NOT NULL DEFAULT '';"
                          "PRAGMA user_version=1")
                             .c_str(),
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);

  m_store = open_store();
  ASSERT_TRUE(m_store);
  auto stored = events();
  ASSERT_EQ(stored.size(), 2u);
  EXPECT_EQ(stored[0].payload, evs[0].payload);
  EXPECT_EQ(stored[1].envelope, evs[1].envelope);
  auto r = put({in(evs[2])});
  expect_outcome(r[0], PutOutcome::stored);
  EXPECT_EQ(ack(d.id)->seq, 3);
  EXPECT_TRUE(stats_of(d.id).chain_intact);
  m_store.reset();

  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  EXPECT_EQ(query_int("PRAGMA user_version"), 5);
  EXPECT_EQ(query_int("SELECT count(*) FROM pragma_table_info('events') WHERE name = 'payload'"),
            0);
  sqlite3_close(db);
}

// Schema 2 kept a row per arrival; opening such a file collapses the repeats into one row each.
TEST_F(SqliteStoreTest, MigratesASchemaVersion2FileCollapsingRepeatedRejections) {
  put({in(junk_rejection("a")), in(junk_rejection("b"))}, k_t0);
  m_store.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         (std::string(k_rejections_as_in_version_2) +
                          "INSERT INTO rejections(received_ms, topic, device, reason, detail, "
                          " envelope) SELECT received_ms + 5, topic, device, reason, detail, "
                          " envelope FROM rejections WHERE CAST(envelope AS TEXT) = 'a';"
                          "INSERT INTO rejections(received_ms, topic, device, reason, detail, "
                          " envelope) SELECT received_ms + 9, topic, device, reason, detail, "
                          " envelope FROM rejections WHERE CAST(envelope AS TEXT) = 'a' AND "
                          " received_ms = (SELECT min(received_ms) FROM rejections);"
                          "PRAGMA user_version=2")
                             .c_str(),
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);

  m_store = open_store();
  ASSERT_TRUE(m_store);
  auto rej = rejections();
  ASSERT_EQ(rej.size(), 2u);
  EXPECT_EQ(rej[0].envelope, "b");
  EXPECT_EQ(rej[0].count, 1);
  EXPECT_EQ(rej[1].envelope, "a");
  EXPECT_EQ(rej[1].count, 3);
  EXPECT_EQ(rej[1].received_unix_ms, k_t0);
  EXPECT_EQ(rej[1].last_seen_unix_ms, k_t0 + 9);
  // And repeats are counted from now on.
  auto r = put({in(junk_rejection("b"))}, k_t0 + 20);
  EXPECT_EQ(r[0].kept, RejectionKept::repeat);
  EXPECT_EQ(stats_of("junk").rejections.at("malformed_jws"), 5);
}

// The verifiable log (issue 19): every stored envelope is a leaf, in the order stored; what is
// not stored (duplicates, rejections) is not. After each batch the checkpoint's root is the
// RFC 9162 root of the envelopes so far, every event's inclusion proof verifies against it, and
// every earlier checkpoint is consistent with every later one.
TEST_P(StoreTest, LogHoldsEveryStoredEnvelopeInOrderWithProofs) {
  Device& a = device("fablab-mk4-01");
  Device& b = device("saw-02");
  auto first = chain(a, new_stream(), 5);
  auto second = chain(b, new_stream(), 4);
  const std::vector<std::vector<Incoming>> batches = {
      {in(first[0]), in(first[1])},
      {in(second[0]), in(first[2]), in(junk_rejection("x"))},
      {in(first[2]), in(second[1]), in(second[2]), in(second[3])},  // first[2] is a duplicate
      {in(first[4])},                                               // held at a gap
      {in(first[3])}};
  auto initial = m_store->log_checkpoint();
  ASSERT_TRUE(initial) << initial.error().message;
  EXPECT_EQ(initial->size, 0u);
  EXPECT_EQ(initial->root, agent::merkle::empty_root());

  agent::merkle::MemoryTree expected;
  std::vector<const VerifiedEvent*> logged;
  std::vector<LogCheckpoint> checkpoints = {*initial};
  for (const auto& batch : batches) {
    for (const auto& r : put(batch)) {
      (void)r;
    }
    for (const Incoming& item : batch) {
      if (!item.event) continue;
      const bool seen = std::any_of(logged.begin(), logged.end(), [&](const VerifiedEvent* e) {
        return e->envelope == item.event->envelope;
      });
      if (seen) continue;
      logged.push_back(&*item.event);
      expected.append(agent::merkle::leaf_hash(item.event->envelope));
    }
    auto checkpoint = m_store->log_checkpoint();
    ASSERT_TRUE(checkpoint) << checkpoint.error().message;
    ASSERT_EQ(checkpoint->size, expected.size());
    ASSERT_EQ(agent::merkle::to_hex(checkpoint->root),
              agent::merkle::to_hex(expected.root(expected.size())));
    checkpoints.push_back(*checkpoint);
  }
  ASSERT_EQ(logged.size(), 9u);

  const LogCheckpoint& last = checkpoints.back();
  for (std::size_t i = 0; i < logged.size(); ++i) {
    auto entries = m_store->log_entries(logged[i]->id);
    ASSERT_TRUE(entries) << entries.error().message;
    ASSERT_EQ(entries->size(), 1u);
    const LogEntry& entry = entries->front();
    EXPECT_EQ(entry.index, i);
    EXPECT_EQ(entry.device, logged[i]->device);
    EXPECT_EQ(entry.seq, logged[i]->seq);
    EXPECT_EQ(entry.leaf, agent::merkle::leaf_hash(logged[i]->envelope));
    auto proof = m_store->log_inclusion_proof(entry.index, last.size);
    ASSERT_TRUE(proof) << proof.error().message;
    EXPECT_TRUE(
        agent::merkle::verify_inclusion(entry.index, last.size, entry.leaf, *proof, last.root))
        << "leaf " << i;
    // What a signed ack carries: the same leaf, proof and checkpoint, by (device, stream, seq).
    auto inclusion = m_store->log_inclusion(logged[i]->device, logged[i]->stream, logged[i]->seq);
    ASSERT_TRUE(inclusion) << inclusion.error().message;
    ASSERT_TRUE(inclusion->has_value());
    EXPECT_EQ((*inclusion)->entry.index, i);
    EXPECT_EQ((*inclusion)->entry.leaf, entry.leaf);
    EXPECT_EQ((*inclusion)->checkpoint.size, last.size);
    EXPECT_EQ((*inclusion)->checkpoint.root, last.root);
    EXPECT_EQ((*inclusion)->proof, *proof);
  }
  auto not_stored = m_store->log_inclusion(logged[0]->device, logged[0]->stream, 99);
  ASSERT_TRUE(not_stored) << not_stored.error().message;
  EXPECT_FALSE(not_stored->has_value());
  for (const auto& older : checkpoints) {
    for (const auto& newer : checkpoints) {
      if (older.size > newer.size) continue;
      auto proof = m_store->log_consistency_proof(older.size, newer.size);
      ASSERT_TRUE(proof) << proof.error().message;
      EXPECT_TRUE(
          agent::merkle::verify_consistency(older.size, newer.size, older.root, newer.root, *proof))
          << older.size << " → " << newer.size;
    }
  }
  auto none = m_store->log_entries("01J000000000000000000000XX");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
  auto beyond = m_store->log_inclusion_proof(0, last.size + 1);
  ASSERT_FALSE(beyond);
  EXPECT_EQ(beyond.error().code, agent::ErrorCode::invalid_argument);
  EXPECT_FALSE(m_store->log_consistency_proof(2, last.size + 1));
  EXPECT_FALSE(m_store->log_consistency_proof(3, 2));
}

// A held event that its predecessor then displaces to the rejections keeps its leaf: the log
// only grows, and its proofs still verify.
TEST_P(StoreTest, LogKeepsTheLeafOfADisplacedHeldEvent) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  auto good = chain(d, s, 2);
  EventSpec wrong;
  wrong.seq = 3;
  wrong.prev = "not-the-hash-of-seq-2";
  auto held = make(d, s, wrong);
  put({in(good[0]), in(held)});
  put({in(good[1])});  // seq 2 decides: held seq 3 is displaced
  ASSERT_EQ(rejections().size(), 1u);
  auto checkpoint = m_store->log_checkpoint();
  ASSERT_TRUE(checkpoint);
  EXPECT_EQ(checkpoint->size, 3u);
  agent::merkle::MemoryTree expected;
  for (const auto* e : {&good[0], &held, &good[1]})
    expected.append(agent::merkle::leaf_hash(e->envelope));
  EXPECT_EQ(checkpoint->root, expected.root(3));
}

// Opening a version 3 file builds its log from the stored events in the order stored.
TEST_F(SqliteStoreTest, MigratesASchemaVersion3FileBuildingItsLog) {
  Device& d = device("fablab-mk4-01");
  auto evs = chain(d, new_stream(), 6);
  put({in(evs[0]), in(evs[1]), in(evs[2])});
  put({in(evs[3]), in(evs[4])});
  auto before = m_store->log_checkpoint();
  ASSERT_TRUE(before);
  ASSERT_EQ(before->size, 5u);
  m_store.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, (std::string(k_log_as_in_version_3) + "PRAGMA user_version=3").c_str(),
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);

  m_store = open_store();
  ASSERT_TRUE(m_store);
  auto after = m_store->log_checkpoint();
  ASSERT_TRUE(after) << after.error().message;
  EXPECT_EQ(after->size, before->size);
  EXPECT_EQ(after->root, before->root);
  put({in(evs[5])});
  auto grown = m_store->log_checkpoint();
  ASSERT_TRUE(grown);
  EXPECT_EQ(grown->size, 6u);
  auto proof = m_store->log_consistency_proof(5, 6);
  ASSERT_TRUE(proof);
  EXPECT_TRUE(agent::merkle::verify_consistency(5, 6, before->root, grown->root, *proof));
}

using test_store::ledger_row;

// Opening a version 4 file adds the empty export ledger and keeps everything else.
TEST_F(SqliteStoreTest, MigratesASchemaVersion4FileAddingAnEmptyExportLedger) {
  Device& d = device("fablab-mk4-01");
  auto evs = chain(d, new_stream(), 3);
  put({in(evs[0]), in(evs[1])});
  auto before = m_store->log_checkpoint();
  ASSERT_TRUE(before);
  m_store.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(
      sqlite3_exec(db, (std::string(k_ledger_as_in_version_4) + "PRAGMA user_version=4").c_str(),
                   nullptr, nullptr, nullptr),
      SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);

  m_store = open_store();
  ASSERT_TRUE(m_store);
  EXPECT_EQ(events().size(), 2u);
  auto after = m_store->log_checkpoint();
  ASSERT_TRUE(after);
  EXPECT_EQ(after->root, before->root);
  auto ledger = m_store->ledger_entries("http://zenflows.test/api");
  ASSERT_TRUE(ledger) << ledger.error().message;
  EXPECT_TRUE(ledger->empty());
  LedgerEntry intent = ledger_row("http://zenflows.test/api", LedgerKind::process, "job-1", "n");
  EXPECT_TRUE(m_store->ledger_intent(intent, k_t0));
  put({in(evs[2])});
  EXPECT_EQ(ack(d.id)->seq, 3);
  m_store.reset();
  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &stmt, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int64(stmt, 0), 5);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

// The ledger's rows: an intent before the request, recorded with the answer's ids (a produce's
// new resource beside its event), dropped when the server refused; per server; durable.
TEST_P(StoreTest, ExportLedgerWritesIntentsRecordsAnswersAndDropsRefusals) {
  const std::string server = "http://zenflows.test/api";
  LedgerEntry produce =
      ledger_row(server, LedgerKind::event, "dev-a/S/3",
                 "part (reflow event 01E, device dev-a, stream S seq 3)", "01E", "part-1");
  ASSERT_TRUE(m_store->ledger_intent(produce, k_t0));
  auto twice = m_store->ledger_intent(produce, k_t0 + 1);
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.error().code, agent::ErrorCode::rejected);
  EXPECT_NE(twice.error().message.find("another `export --post`"), std::string::npos);

  auto rows = m_store->ledger_entries(server);
  ASSERT_TRUE(rows);
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_FALSE(rows->at(0).recorded);
  EXPECT_EQ(rows->at(0).note, produce.note);
  EXPECT_EQ(rows->at(0).intent_unix_ms, k_t0);
  EXPECT_TRUE(m_store->ledger_entries("http://other.test/api")->empty());

  ASSERT_TRUE(m_store->ledger_record(server, LedgerKind::event, "dev-a/S/3",
                                     "01SERVEREVENT0000000000000", "01SERVERRES0URCE0000000000",
                                     k_t0 + 5));
  auto again = m_store->ledger_record(server, LedgerKind::event, "dev-a/S/3", "01X", "", k_t0);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, agent::ErrorCode::not_found);
  auto forget_recorded = m_store->ledger_forget(server, LedgerKind::event, "dev-a/S/3");
  ASSERT_FALSE(forget_recorded);
  EXPECT_EQ(forget_recorded.error().code, agent::ErrorCode::not_found);

  LedgerEntry process =
      ledger_row(server, LedgerKind::process, "job-1", "job-1 (reflow export 01M)");
  ASSERT_TRUE(m_store->ledger_intent(process, k_t0 + 6));
  ASSERT_TRUE(m_store->ledger_forget(server, LedgerKind::process, "job-1"));

  m_store.reset();
  m_store = open_store();
  ASSERT_TRUE(m_store);
  rows = m_store->ledger_entries(server);
  ASSERT_TRUE(rows);
  ASSERT_EQ(rows->size(), 2u);  // ordered by kind: event, resource
  EXPECT_EQ(rows->at(0).kind, LedgerKind::event);
  EXPECT_TRUE(rows->at(0).recorded);
  EXPECT_EQ(rows->at(0).server_id, "01SERVEREVENT0000000000000");
  EXPECT_EQ(rows->at(0).recorded_unix_ms, k_t0 + 5);
  EXPECT_EQ(rows->at(1).kind, LedgerKind::resource);
  EXPECT_EQ(rows->at(1).ref, "part-1");
  EXPECT_TRUE(rows->at(1).recorded);
  EXPECT_EQ(rows->at(1).server_id, "01SERVERRES0URCE0000000000");
  EXPECT_EQ(rows->at(1).event_id, "01E");
}

TEST_P(StoreTest, RegistryRefusesKeysOfOtherDevicesAndRevokedKeys) {
  Device& d = device("fablab-mk4-01");
  EXPECT_TRUE(m_store->add_device(d.id, d.key.public_jwk(), k_t0 + 5));  // no-op

  auto taken = m_store->add_device("thief", d.key.public_jwk(), k_t0);
  ASSERT_FALSE(taken);
  EXPECT_EQ(taken.error().code, agent::ErrorCode::rejected);

  auto invalid = m_store->add_device("Bad/Id", d.key.public_jwk(), k_t0);
  ASSERT_FALSE(invalid);
  EXPECT_EQ(invalid.error().code, agent::ErrorCode::invalid_argument);

  auto unknown = m_store->revoke_device("nobody", k_t0);
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, agent::ErrorCode::not_found);

  ASSERT_TRUE(m_store->revoke_device(d.id, k_t0 + 100));
  auto again = m_store->add_device(d.id, d.key.public_jwk(), k_t0 + 200);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, agent::ErrorCode::rejected);
  // A second revocation keeps the first time.
  ASSERT_TRUE(m_store->revoke_device(d.id, k_t0 + 300));

  auto found = m_store->find_key(d.key.public_jwk().kid);
  ASSERT_TRUE(found && found->has_value());
  EXPECT_EQ((*found)->device, d.id);
  EXPECT_EQ((*found)->added_unix_ms, k_t0);
  EXPECT_EQ((*found)->revoked_unix_ms, k_t0 + 100);
  auto missing = m_store->find_key("no-such-kid");
  ASSERT_TRUE(missing);
  EXPECT_FALSE(missing->has_value());

  Device& rotated = device("fablab-mk4-01", /*registered=*/false);  // re-enrolled, new key
  ASSERT_TRUE(m_store->add_device(rotated.id, rotated.key.public_jwk(), k_t0 + 400));
  Device& other = device("a-first");
  auto keys = m_store->list_keys();
  ASSERT_TRUE(keys);
  ASSERT_EQ(keys->size(), 3u);
  EXPECT_EQ((*keys)[0].device, other.id);
  EXPECT_EQ((*keys)[1].jwk.kid, d.key.public_jwk().kid);
  EXPECT_EQ((*keys)[2].jwk.kid, rotated.key.public_jwk().kid);
  EXPECT_FALSE((*keys)[2].revoked_unix_ms.has_value());
  EXPECT_FALSE(stats_of(d.id).revoked);  // one key is still valid
}

TEST_P(StoreTest, StatsCountGapsRejectionsAndStreams) {
  Device& d = device("fablab-mk4-01");
  Device& quiet = device("quiet-01");
  const std::string first = new_stream();
  const std::string second = new_stream();
  auto a = chain(d, first, 6);
  auto b = chain(d, second, 2);
  put({in(a[0]), in(a[1]), in(a[3]), in(a[5])}, k_t0 + 1);
  put({in(b[0]), in(b[1])}, k_t0 + 2);
  VerifiedEvent twin = make(d, first, EventSpec{2, a[0].signing_input_sha256, k_t0, "use", "x"});
  put({in(twin)}, k_t0 + 3);
  const Rejection junk = junk_rejection("x", RejectReason::oversized, "too big");
  put({in(junk), in(junk)}, k_t0 + 4);

  auto all = m_store->stats();
  ASSERT_TRUE(all) << all.error().message;
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].device, d.id);
  EXPECT_EQ((*all)[1].device, "junk");
  EXPECT_EQ((*all)[2].device, quiet.id);

  const DeviceStats& st = (*all)[0];
  EXPECT_TRUE(st.registered);
  EXPECT_FALSE(st.revoked);
  EXPECT_EQ(st.events, 6);
  EXPECT_EQ(st.gaps, 2);
  EXPECT_TRUE(st.chain_intact);
  EXPECT_EQ(st.last_seen_unix_ms, k_t0 + 3);
  EXPECT_EQ(st.rejections.size(), 1u);
  EXPECT_EQ(st.rejections.at("equivocation"), 1);
  ASSERT_EQ(st.streams.size(), 2u);
  EXPECT_EQ(st.streams[0].stream, first);
  EXPECT_EQ(st.streams[0].events, 4);
  EXPECT_EQ(st.streams[0].contiguous, 2);
  EXPECT_EQ(st.streams[0].max_seq, 6);
  EXPECT_EQ(st.streams[0].gaps, 2);
  EXPECT_EQ(st.streams[0].first_seen_unix_ms, k_t0 + 1);
  EXPECT_EQ(st.streams[0].last_seen_unix_ms, k_t0 + 1);
  EXPECT_EQ(st.streams[1].stream, second);
  EXPECT_EQ(st.streams[1].contiguous, 2);
  EXPECT_EQ(st.streams[1].gaps, 0);

  const DeviceStats& junk_stats = (*all)[1];
  EXPECT_FALSE(junk_stats.registered);
  EXPECT_EQ(junk_stats.events, 0);
  EXPECT_EQ(junk_stats.rejections.at("oversized"), 2);
  EXPECT_EQ(junk_stats.last_seen_unix_ms, k_t0 + 4);

  const DeviceStats& quiet_stats = (*all)[2];
  EXPECT_TRUE(quiet_stats.registered);
  EXPECT_FALSE(quiet_stats.last_seen_unix_ms.has_value());
  EXPECT_TRUE(quiet_stats.streams.empty());
}

// A device that published before the operator ran `device add` has unknown_kid rejections from
// then; once registered they must not read as a fault that goes on (issue 15).
TEST_P(StoreTest, StatsKeepRejectionsFromBeforeRegistrationApart) {
  Device& late = device("late-01", /*registered=*/false);
  Rejection early{"reflow/v1/late-01/events", "late-01",    "early",     RejectReason::unknown_kid,
                  "kid not in the registry",  std::nullopt, std::nullopt};
  put({in(early)}, k_t0 + 1);
  EXPECT_EQ(stats_of("late-01").rejections.at("unknown_kid"), 1);
  EXPECT_TRUE(stats_of("late-01").rejections_before_registration.empty());

  ASSERT_TRUE(m_store->add_device("late-01", late.key.public_jwk(), k_t0 + 10));
  Rejection later = early;
  later.envelope = "later";
  later.reason = RejectReason::oversized;
  put({in(later), in(later)}, k_t0 + 20);

  const DeviceStats st = stats_of("late-01");
  EXPECT_TRUE(st.registered);
  EXPECT_EQ(st.rejections, (std::map<std::string, std::int64_t>{{"oversized", 2}}));
  EXPECT_EQ(st.rejections_before_registration,
            (std::map<std::string, std::int64_t>{{"unknown_kid", 1}}));
  const auto json = device_stats_json(st);
  EXPECT_EQ(json["rejections_before_registration"]["unknown_kid"], 1);
  EXPECT_EQ(json["rejections"]["oversized"], 2);
  const std::string table = format_stats_text({st});
  EXPECT_NE(table.find("oversized=2; unknown_kid=1 before registration"), std::string::npos)
      << table;
}

TEST_P(StoreTest, ForEachEventFiltersAndOrders) {
  Device& d = device("fablab-mk4-01");
  Device& e = device("another-02");
  // Named so that name order and first-seen order differ.
  const std::string late_name = "01KDXE6E00ZZZZZZZZZZZZZZZZ";
  const std::string early_name = "01KDXE6E000000000000000000";
  auto a = chain(d, late_name, 3, k_t0, "use");
  auto b = chain(d, early_name, 2, k_t0 + 1000, "produce");
  auto c = chain(e, new_stream(), 2, k_t0 + 500, "produce");
  // `late_name` is seen first, so it comes first although it sorts last by name.
  put({in(a[2]), in(a[0])});
  put({in(b[0]), in(c[1])});
  put({in(a[1]), in(b[1]), in(c[0])});

  auto seqs = [](const std::vector<StoredEvent>& evs) {
    std::vector<std::string> out;
    for (const auto& x : evs)
      out.push_back(fmt::format("{}/{}/{}", x.device, x.stream.back(), x.seq));
    return out;
  };
  const char last = c[0].stream.back();
  EXPECT_EQ(seqs(events()),
            (std::vector<std::string>{fmt::format("another-02/{}/1", last),
                                      fmt::format("another-02/{}/2", last), "fablab-mk4-01/Z/1",
                                      "fablab-mk4-01/Z/2", "fablab-mk4-01/Z/3", "fablab-mk4-01/0/1",
                                      "fablab-mk4-01/0/2"}));

  EventFilter by_device;
  by_device.device = d.id;
  EXPECT_EQ(events(by_device).size(), 5u);

  EventFilter since;
  since.since_unix_ms = k_t0 + 501;
  EXPECT_EQ(seqs(events(since)),
            (std::vector<std::string>{fmt::format("another-02/{}/1", last),
                                      fmt::format("another-02/{}/2", last), "fablab-mk4-01/0/1",
                                      "fablab-mk4-01/0/2"}));

  EventFilter produce_of_d;
  produce_of_d.device = d.id;
  produce_of_d.action = "produce";
  EXPECT_EQ(seqs(events(produce_of_d)),
            (std::vector<std::string>{"fablab-mk4-01/0/1", "fablab-mk4-01/0/2"}));

  EventFilter all_three;
  all_three.device = d.id;
  all_three.action = "use";
  all_three.since_unix_ms = k_t0 + 2;
  EXPECT_EQ(seqs(events(all_three)),
            (std::vector<std::string>{"fablab-mk4-01/Z/2", "fablab-mk4-01/Z/3"}));

  EventFilter until;  // recorded < until
  until.until_unix_ms = k_t0 + 500;
  EXPECT_EQ(seqs(events(until)), (std::vector<std::string>{"fablab-mk4-01/Z/1", "fablab-mk4-01/Z/2",
                                                           "fablab-mk4-01/Z/3"}));

  // Keyset paging: after an event, the rest in the same order, across streams and devices.
  EventFilter after;
  after.after = EventCursor{e.id, c[0].stream, 2};
  EXPECT_EQ(seqs(events(after)),
            (std::vector<std::string>{"fablab-mk4-01/Z/1", "fablab-mk4-01/Z/2", "fablab-mk4-01/Z/3",
                                      "fablab-mk4-01/0/1", "fablab-mk4-01/0/2"}));
  after.after = EventCursor{d.id, late_name, 3};
  EXPECT_EQ(seqs(events(after)),
            (std::vector<std::string>{"fablab-mk4-01/0/1", "fablab-mk4-01/0/2"}));
  after.after = EventCursor{d.id, late_name, 0};  // from the stream's first event
  after.action = "use";
  EXPECT_EQ(seqs(events(after)), (std::vector<std::string>{"fablab-mk4-01/Z/1", "fablab-mk4-01/Z/2",
                                                           "fablab-mk4-01/Z/3"}));
  after.after = EventCursor{d.id, "01KDXE6E00NOTSTORED0000000", 1};
  after.action.reset();
  EXPECT_TRUE(events(after).empty());

  int calls = 0;
  ASSERT_TRUE(m_store->for_each_event({}, [&](const StoredEvent&) { return ++calls < 2; }));
  EXPECT_EQ(calls, 2);

  EXPECT_EQ(rejections(std::string_view("another-02")).size(), 0u);
}

TEST_P(StoreTest, SecondStoreReadsWhileTheFirstWrites) {
  Device& d = device("fablab-mk4-01");
  constexpr int k_batches = 30;
  constexpr int k_per_batch = 50;
  auto evs = chain(d, new_stream(), k_batches * k_per_batch);
  std::unique_ptr<Store> reader = open_store();
  ASSERT_TRUE(reader);

  std::atomic<bool> write_failed{false};
  std::thread writer([&] {
    for (int b = 0; b < k_batches; ++b) {
      std::vector<Incoming> batch;
      for (int i = 0; i < k_per_batch; ++i)
        batch.push_back(in(evs[b * k_per_batch + i]));
      if (!m_store->put(batch, k_t0 + b)) write_failed = true;
    }
  });

  std::size_t last_count = 0;
  bool went_backwards = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (last_count < evs.size() && std::chrono::steady_clock::now() < deadline) {
    std::size_t count = 0;
    auto s = reader->for_each_event({}, [&](const StoredEvent&) {
      ++count;
      return true;
    });
    ASSERT_TRUE(s) << s.error().message;
    // A reader sees whole batches only: a commit is all or nothing.
    EXPECT_EQ(count % k_per_batch, 0u);
    auto st = reader->stats();
    ASSERT_TRUE(st) << st.error().message;
    if (count < last_count) went_backwards = true;
    last_count = count;
  }
  writer.join();
  EXPECT_FALSE(write_failed);
  EXPECT_FALSE(went_backwards);
  EXPECT_EQ(last_count, evs.size());
  auto a = reader->ack_point(d.id);
  ASSERT_TRUE(a && a->has_value());
  EXPECT_EQ((*a)->seq, k_batches * k_per_batch);
}

TEST_F(SqliteStoreTest, ReadersAreNotBlockedByAnOpenWriteTransaction) {
  Device& d = device("fablab-mk4-01");
  auto evs = chain(d, new_stream(), 2);
  put({in(evs[0])});
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN IMMEDIATE; DELETE FROM events;", nullptr, nullptr, nullptr),
            SQLITE_OK);
  // Another process holds the write lock mid-transaction: reads still see the last commit.
  std::unique_ptr<Store> reader = open_store();
  ASSERT_TRUE(reader);
  EXPECT_EQ(events({}, reader.get()).size(), 1u);
  EXPECT_EQ(stats_of(d.id, reader.get()).events, 1);
  EXPECT_EQ(events().size(), 1u);
  ASSERT_EQ(sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  auto r = put({in(evs[1])});
  expect_outcome(r[0], PutOutcome::stored);
}

// Not an assertion: prints put() throughput for the lead (batches of 512, as the service does).
// Issue 14 item 12: a successor with a wrong `prev` that arrived before its predecessor used to
// make the honest predecessor a chain break forever, wedging the stream's ack.
TEST_P(StoreTest, WrongPrevSuccessorArrivingFirstDoesNotWedgeTheStream) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  auto evs = chain(d, s, 3);
  VerifiedEvent wrong =
      make(d, s, EventSpec{3, agent::sha256_b64url("not seq 2"), k_t0 + 3, "use", "wrong prev"});
  auto r = put({in(evs[0]), in(wrong)});
  expect_outcome(r[1], PutOutcome::stored);  // held: seq 2 is not there to check it
  EXPECT_EQ(ack(d.id)->seq, 1);
  EXPECT_EQ(events().size(), 1u);  // a held event is not returned (nor exported)

  r = put({in(evs[1])}, k_t0 + 10);
  expect_outcome(r[0], PutOutcome::stored);
  EXPECT_NE(r[0].detail.find("seq 3"), std::string::npos) << r[0].detail;
  EXPECT_EQ(ack(d.id)->seq, 2);
  auto rej = rejections();
  ASSERT_EQ(rej.size(), 1u);
  EXPECT_EQ(rej[0].reason, RejectReason::chain_break);
  EXPECT_EQ(rej[0].envelope, wrong.envelope);
  EXPECT_EQ(rej[0].seq, 3);
  EXPECT_EQ(rej[0].received_unix_ms, k_t0 + 10);

  // The agent resends its real seq 3: accepted and acked.
  r = put({in(evs[2])}, k_t0 + 20);
  expect_outcome(r[0], PutOutcome::stored);
  EXPECT_EQ(ack(d.id)->seq, 3);
  auto stored = events();
  ASSERT_EQ(stored.size(), 3u);
  EXPECT_EQ(stored[2].envelope, evs[2].envelope);
  DeviceStats st = stats_of(d.id);
  EXPECT_EQ(st.streams[0].events, 3);
  EXPECT_EQ(st.streams[0].max_seq, 3);
}

// A held event is decided by its predecessor even when that predecessor is itself held.
TEST_P(StoreTest, HeldEventsAreConfirmedOnlyOnceTheirChainReachesSeqOne) {
  Device& d = device("fablab-mk4-01");
  auto evs = chain(d, new_stream(), 4);
  put({in(evs[3]), in(evs[2])});
  EXPECT_EQ(ack(d.id)->seq, 0);
  EXPECT_TRUE(events().empty());
  put({in(evs[1])});
  EXPECT_TRUE(events().empty());
  put({in(evs[0])});
  EXPECT_EQ(ack(d.id)->seq, 4);
  EXPECT_EQ(events().size(), 4u);
  EXPECT_TRUE(stats_of(d.id).chain_intact);
}

// Issue 14 item 2: the node compared revocation with `recorded`, which the device writes, so a
// revoked key could add back-dated events to a stream the node already had.
TEST_P(StoreTest, RevokedKeyCannotExtendAStreamWithBackDatedEvents) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  auto evs = chain(d, s, 6, k_t0);
  put({in(evs[0]), in(evs[1]), in(evs[4])}, k_t0 + 10);
  const std::int64_t revoked_at = k_t0 + 1000;
  ASSERT_TRUE(m_store->revoke_device(d.id, revoked_at));

  // seq 6, recorded before the revocation by the device's clock: the verifier lets it through,
  // but nothing the node stored vouches for it.
  auto v = verify_envelope(*m_store, d.topic(), d.id, evs[5].envelope);
  ASSERT_TRUE(v && v->has_value());
  auto r = put({in(**v)}, revoked_at + 10);
  expect_outcome(r[0], PutOutcome::rejected, RejectReason::key_revoked);
  // seq 4 fills a gap below seq 5, which the node stored before the revocation and whose `prev`
  // binds seq 4; seq 3 is not bound by anything stored (yet).
  r = put({in(evs[2]), in(evs[3])}, revoked_at + 20);
  expect_outcome(r[0], PutOutcome::rejected, RejectReason::key_revoked);
  expect_outcome(r[1], PutOutcome::stored);
  // Now seq 4 binds seq 3: the gap fills from the top, one resend at a time.
  r = put({in(evs[2])}, revoked_at + 30);
  expect_outcome(r[0], PutOutcome::stored);
  EXPECT_EQ(ack(d.id)->seq, 5);
  // Nor can a new stream start, back-dated or not.
  auto fresh = chain(d, new_stream(), 1, k_t0);
  r = put({in(fresh[0])}, revoked_at + 40);
  expect_outcome(r[0], PutOutcome::rejected, RejectReason::key_revoked);
  EXPECT_EQ(stats_of(d.id).rejections["key_revoked"], 3);
}

// Issue 14 item 2: `recorded` may not go backwards within a stream, in either arrival order.
TEST_P(StoreTest, RefusesRecordedGoingBackwardsInAStream) {
  Device& d = device("fablab-mk4-01");
  const std::string s = new_stream();
  auto first = make(d, s, EventSpec{1, "", k_t0 + 100, "use", ""});
  auto earlier =
      make(d, s, EventSpec{2, first.signing_input_sha256, k_t0 + 50, "use", "back-dated"});
  auto r = put({in(first), in(earlier)});
  expect_outcome(r[1], PutOutcome::rejected, RejectReason::recorded_backwards);
  EXPECT_NE(r[1].detail.find("recorded"), std::string::npos) << r[1].detail;
  auto same_ms = make(d, s, EventSpec{2, first.signing_input_sha256, k_t0 + 100, "use", ""});
  r = put({in(same_ms)});
  expect_outcome(r[0], PutOutcome::stored);

  // Held seq 4 recorded before the seq 3 that then arrives: seq 4 is the one moved out.
  auto third = make(d, s, EventSpec{3, same_ms.signing_input_sha256, k_t0 + 200, "use", ""});
  auto held = make(d, s, EventSpec{4, third.signing_input_sha256, k_t0 + 10, "use", ""});
  put({in(held)});
  r = put({in(third)});
  expect_outcome(r[0], PutOutcome::stored);
  EXPECT_EQ(ack(d.id)->seq, 3);
  auto rej = rejections();
  ASSERT_EQ(rej.size(), 2u);
  EXPECT_EQ(rej[1].reason, RejectReason::recorded_backwards);
  EXPECT_EQ(rej[1].seq, 4);
}

// Issue 14 item 13: every rejected envelope was stored, repeats included.
TEST_P(StoreTest, TheSameRejectedEnvelopeIsOneRowWithACount) {
  const Rejection junk = junk_rejection();
  const std::vector<Incoming> hundred(100, in(junk));
  for (int i = 0; i < 10; ++i) {
    auto r = put(hundred, k_t0 + i);
    ASSERT_EQ(r.size(), 100u);
    EXPECT_EQ(r[0].kept, i == 0 ? RejectionKept::new_row : RejectionKept::repeat);
    EXPECT_EQ(r[99].kept, RejectionKept::repeat);
  }
  auto rej = rejections();
  ASSERT_EQ(rej.size(), 1u);
  EXPECT_EQ(rej[0].count, 1000);
  EXPECT_EQ(rej[0].received_unix_ms, k_t0);
  EXPECT_EQ(rej[0].last_seen_unix_ms, k_t0 + 9);
  DeviceStats st = stats_of("junk");
  EXPECT_EQ(st.rejections.at("malformed_jws"), 1000);
  EXPECT_EQ(st.rejections_not_kept, 0);
  EXPECT_EQ(st.last_seen_unix_ms, k_t0 + 9);
}

TEST_P(StoreTest, AnUnknownSenderCannotMakeTheNodeKeepMoreThanItsCap) {
  std::vector<Incoming> batch;
  for (int i = 0; i < 10'000; ++i)
    batch.push_back(in(junk_rejection(fmt::format("garbage {}", i))));
  auto r = put(batch);
  ASSERT_EQ(r.size(), batch.size());
  const RejectionLimits limits;
  EXPECT_EQ(r.front().kept, RejectionKept::new_row);
  EXPECT_EQ(r.back().kept, RejectionKept::counted);
  EXPECT_EQ(static_cast<std::int64_t>(rejections().size()), limits.rows_per_device);
  DeviceStats st = stats_of("junk");
  EXPECT_EQ(st.rejections.at("malformed_jws"), 10'000);
  EXPECT_EQ(st.rejections_not_kept, 10'000 - limits.rows_per_device);

  // A registered device's authenticated rejections are not capped by a stranger's garbage.
  Device& d = device("fablab-mk4-01");
  auto evs = chain(d, new_stream(), 2);
  put({in(evs[0])});
  auto twin = make(d, evs[0].stream, EventSpec{1, "", k_t0, "use", "equivocating"});
  r = put({in(twin)});
  EXPECT_EQ(r[0].kept, RejectionKept::new_row);
}

TEST_P(StoreTest, RejectionCapsHoldPerDeviceInBytesAndInTotal) {
  RejectionLimits limits;
  limits.rows_per_device = 5;
  limits.bytes_per_device = 100;
  limits.rows_total = 8;
  m_store.reset();
  m_store = open_store(limits);
  ASSERT_TRUE(m_store);

  auto from = [](std::string device, std::string envelope) {
    return Rejection{"reflow/v1/" + device + "/events",
                     device,
                     std::move(envelope),
                     RejectReason::malformed_jws,
                     "not JSON",
                     std::nullopt,
                     std::nullopt};
  };
  // 60 bytes each: the second already passes a's byte cap.
  put({in(from("a", std::string(60, 'x'))), in(from("a", std::string(60, 'y')))});
  for (int i = 0; i < 10; ++i)
    put({in(from("b", fmt::format("b{}", i)))});
  for (int i = 0; i < 10; ++i)
    put({in(from(fmt::format("c{}", i), "c"))});
  EXPECT_EQ(rejections(std::string_view("a")).size(), 1u);
  EXPECT_EQ(rejections(std::string_view("b")).size(), 5u);
  EXPECT_EQ(rejections().size(), 8u);  // a: 1, b: 5, c0 and c1
  EXPECT_EQ(stats_of("a").rejections_not_kept, 1);
  EXPECT_EQ(stats_of("b").rejections_not_kept, 5);
  EXPECT_EQ(stats_of("*").rejections_not_kept, 8);
  EXPECT_EQ(stats_of("*").rejections.at("malformed_jws"), 8);
  EXPECT_EQ(stats_of("c0").rejections.at("malformed_jws"), 1);
}

// Issue 14 item 14: a seq near 2^63 in two streams made the device's gap total overflow.
TEST_P(StoreTest, GapTotalsSaturateInsteadOfOverflowing) {
  Device& d = device("fablab-mk4-01");
  constexpr std::int64_t k_huge = std::numeric_limits<std::int64_t>::max();
  put({in(make(d, new_stream(), EventSpec{k_huge, agent::sha256_b64url("a"), k_t0, "use", ""})),
       in(make(d, new_stream(), EventSpec{k_huge, agent::sha256_b64url("b"), k_t0, "use", ""}))});
  DeviceStats st = stats_of(d.id);
  ASSERT_EQ(st.streams.size(), 2u);
  EXPECT_EQ(st.streams[0].gaps, k_huge - 1);
  EXPECT_EQ(st.gaps, k_huge);
}

TEST_F(SqliteStoreTest, ReportsPutThroughput) {
  Device& d = device("fablab-mk4-01");
  constexpr int k_batch = 512;
  constexpr int k_batches = 100;
  auto evs = chain(d, new_stream(), k_batch * k_batches);
  std::vector<std::vector<Incoming>> batches(k_batches);
  for (int b = 0; b < k_batches; ++b)
    for (int i = 0; i < k_batch; ++i)
      batches[b].push_back(in(evs[b * k_batch + i]));
  const auto start = std::chrono::steady_clock::now();
  for (const auto& batch : batches)
    put(batch);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("put(): %d events (%zu-byte envelopes) in %.3f s = %.0f events/s\n",
              k_batch * k_batches, evs[0].envelope.size(), seconds, k_batch * k_batches / seconds);
  EXPECT_EQ(ack(d.id)->seq, k_batch * k_batches);
}

}  // namespace
}  // namespace ingest
