// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/outbox.hpp>

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/mount.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include <reflow/core/jose.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/core/units.hpp>

#include "fault_vfs.hpp"
#include "temp_dir.hpp"

namespace agent {
namespace {

namespace fs = std::filesystem;

using reflow_test::FaultVfs;

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// The envelope of seq `seq`, `size` bytes, recognisable when read back.
std::string envelope_for(std::int64_t seq, std::size_t size = 200) {
  std::string text = "{\"seq\":" + std::to_string(seq) + ",\"pad\":\"";
  text.resize(std::max(size, text.size() + 2), 'x');
  text[text.size() - 2] = '"';
  text.back() = '}';
  return text;
}

class OutboxTest : public ::testing::Test {
 protected:
  void SetUp() override { m_faults.write_error = SQLITE_OK; }
  void TearDown() override {
    m_faults.write_error = SQLITE_OK;
    m_faults.full_while_exists = nullptr;
    m_faults.record_unsynced = false;
    m_faults.power_restored();
  }

  OutboxOptions options(std::string device = "fablab-mk4-01") const {
    OutboxOptions o;
    o.path = m_dir / "outbox.db";
    o.device_id = std::move(device);
    return o;
  }

  std::unique_ptr<Outbox> open(const OutboxOptions& o) {
    auto outbox = Outbox::open(o, m_env, m_log);
    EXPECT_TRUE(outbox.has_value()) << outbox.error().message;
    return outbox ? std::move(*outbox) : nullptr;
  }
  std::unique_ptr<Outbox> open() { return open(options()); }

  // SQLite's `PRAGMA integrity_check` of the outbox file at `path` answers "ok" (what a power cut
  // must leave: the file as of its last synced commit).
  static void expect_integrity_ok(const std::filesystem::path& path) {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(raw, "PRAGMA integrity_check", -1, &stmt, nullptr), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)), "ok");
    sqlite3_finalize(stmt);
    sqlite3_close(raw);
  }

  // The next `n` events after `head` (seq, id and recorded follow from the seq; the envelope
  // is `envelope(event, head)` with the head before the event) and the head that follows them.
  template <typename MakeEnvelope>
  static std::pair<std::vector<OutboxEvent>, ChainHead> chain_after(ChainHead head, int n,
                                                                    MakeEnvelope envelope) {
    std::vector<OutboxEvent> events;
    for (int i = 0; i < n; ++i) {
      OutboxEvent e;
      e.seq = head.last_seq + 1;
      e.id = "01JD0000000000000000" + std::to_string(1000000 + e.seq).substr(1);
      e.recorded_unix_ms = 1'767'225'600'000 + e.seq * 1000;
      e.envelope = envelope(e, head);
      head.last_seq = e.seq;
      head.last_hash = "hash-" + std::to_string(e.seq);
      head.recorded_floor_ms = e.recorded_unix_ms;
      events.push_back(std::move(e));
    }
    return {std::move(events), head};
  }

  // Builds the next `n` events after the outbox's head and the head that follows them.
  std::pair<std::vector<OutboxEvent>, ChainHead> next_batch(const Outbox& outbox, int n,
                                                            std::size_t size = 200) {
    return chain_after(outbox.head(), n, [size](const OutboxEvent& e, const ChainHead&) {
      return envelope_for(e.seq, size);
    });
  }

  void append(Outbox& outbox, int n, std::size_t size = 200) {
    auto [events, head] = next_batch(outbox, n, size);
    auto status = outbox.append(events, head);
    ASSERT_TRUE(status.has_value()) << status.error().message;
  }

  std::vector<OutboxEvent> export_all(const fs::path& path, std::size_t& skipped,
                                      std::int64_t from_seq = 1) {
    std::vector<OutboxEvent> out;
    auto status = Outbox::export_file(
        path, from_seq, [&](const OutboxEvent& e) { out.push_back(e); }, skipped);
    EXPECT_TRUE(status.has_value()) << status.error().message;
    return out;
  }

  // A valid outbox of `n` events of `size` bytes, closed (so checkpointed: no WAL left).
  std::string make_closed_outbox(int n, std::size_t size = 200) {
    auto outbox = open();
    append(*outbox, n, size);
    std::string stream = outbox->head().stream;
    outbox.reset();
    EXPECT_FALSE(fs::exists(m_dir / "outbox.db-wal"));
    return stream;
  }

  // Appends `n` events really signed with a fresh device key (payloads of about `size` bytes);
  // `envelopes` gets them in seq order. Returns the key.
  DeviceKey sign_into(Outbox& outbox, int n, std::size_t size,
                      std::vector<std::string>& envelopes) {
    auto key = DeviceKey::generate(m_dir / "device.key");
    EXPECT_TRUE(key.has_value()) << key.error().message;
    const std::string protected_b64 = jws_protected_header_b64(key->public_jwk().kid);
    auto [events, head] =
        chain_after(outbox.head(), n, [&](const OutboxEvent& e, const ChainHead& before) {
          nlohmann::ordered_json payload{{"v", 1},
                                         {"id", e.id},
                                         {"device", "fablab-mk4-01"},
                                         {"stream", before.stream},
                                         {"seq", e.seq},
                                         {"recorded", format_rfc3339_ms(e.recorded_unix_ms)},
                                         {"note", std::string(size, 'n')}};
          envelopes.push_back(jws_sign(*key, protected_b64, payload.dump()).to_envelope());
          return envelopes.back();
        });
    auto status = outbox.append(events, head);
    EXPECT_TRUE(status.has_value()) << status.error().message;
    return std::move(*key);
  }

  // A closed outbox (no WAL left) of `n` signed events.
  DeviceKey make_signed(int n, std::size_t size, std::vector<std::string>& envelopes) {
    auto outbox = open();
    auto key = sign_into(*outbox, n, size, envelopes);
    outbox.reset();
    EXPECT_FALSE(fs::exists(m_dir / "outbox.db-wal"));
    return key;
  }

  // Every envelope whose bytes are still whole in `damaged` came back, verified, once, in seq
  // order, and nothing else did.
  static void expect_all_intact_recovered(const std::vector<OutboxEvent>& out,
                                          const std::vector<std::string>& envelopes,
                                          const std::string& damaged, const DeviceKey& key) {
    std::vector<std::int64_t> expected;
    for (std::size_t i = 0; i < envelopes.size(); ++i)
      if (damaged.find(envelopes[i]) != std::string::npos)
        expected.push_back(static_cast<std::int64_t>(i) + 1);
    std::vector<std::int64_t> got;
    for (const OutboxEvent& e : out) {
      got.push_back(e.seq);
      ASSERT_GE(e.seq, 1);
      ASSERT_LE(static_cast<std::size_t>(e.seq), envelopes.size());
      EXPECT_EQ(e.envelope, envelopes[static_cast<std::size_t>(e.seq) - 1]);
      EXPECT_TRUE(jws_verify(e.envelope, key.public_jwk()).has_value());
      EXPECT_EQ(e.recorded_unix_ms, 1'767'225'600'000 + e.seq * 1000);
    }
    EXPECT_EQ(got, expected);
  }

  // Installed before any database is opened: SQLite takes the default VFS at open.
  FaultVfs& m_faults = FaultVfs::install();
  reflow_test::TempDir m_dir;
  FakeEnv m_env;
  Logger m_log{LogLevel::error};
};

TEST_F(OutboxTest, NewOutboxHasStreamAndSeqZero) {
  auto outbox = open();
  ASSERT_TRUE(outbox);
  ChainHead head = outbox->head();
  EXPECT_TRUE(is_valid_ulid(head.stream)) << head.stream;
  EXPECT_EQ(head.last_seq, 0);
  EXPECT_EQ(head.last_hash, "");
  EXPECT_EQ(head.recorded_floor_ms, 0);
  OutboxStats stats = outbox->stats();
  EXPECT_EQ(stats.stream, head.stream);
  EXPECT_EQ(stats.acked_seq, 0);
  EXPECT_EQ(stats.backlog_events, 0);
  EXPECT_EQ(stats.backlog_bytes, 0u);
  EXPECT_FALSE(stats.oldest_unacked_recorded_ms);
  EXPECT_FALSE(stats.quarantined);
  EXPECT_GT(stats.file_bytes, 0u);
  EXPECT_EQ(outbox->quota_free_bytes(), options().quota_bytes);
}

TEST_F(OutboxTest, TwoNewOutboxesHaveDifferentStreams) {
  auto first = open();
  std::string stream = first->head().stream;
  first.reset();
  fs::remove(m_dir / "outbox.db");
  auto second = open();
  EXPECT_NE(second->head().stream, stream);
}

TEST_F(OutboxTest, KeepsTheNodesVerifiedLogAcrossRestart) {
  merkle::Hash root{};
  root.fill(0xab);
  {
    auto outbox = open();
    EXPECT_FALSE(outbox->verified_log().has_value());
    EXPECT_FALSE(outbox->node_sends_consistency());
    ASSERT_TRUE(outbox->record_verified_log(7, root, false).has_value());
    EXPECT_FALSE(outbox->node_sends_consistency());
    root.fill(0xcd);
    ASSERT_TRUE(outbox->record_verified_log(9, root, true).has_value());
  }
  auto outbox = open();
  auto log = outbox->verified_log();
  ASSERT_TRUE(log.has_value());
  EXPECT_EQ(log->first, 9u);
  EXPECT_EQ(log->second, root);
  EXPECT_TRUE(outbox->node_sends_consistency());
}

TEST_F(OutboxTest, KeepsTheLeavesOfAckedEventsAfterPruningThemForAnAudit) {
  std::string stream;
  {
    auto outbox = open();
    append(*outbox, 3);
    stream = outbox->head().stream;
    merkle::Hash root{};
    root.fill(0x11);
    ASSERT_TRUE(outbox->record_verified_log(5, root, true).has_value());
    // An ack of seq 2 proved at leaf 4: seqs 1 and 2 are kept, only seq 2 with its index.
    ASSERT_TRUE(outbox->record_acked_leaves(2, 4).has_value());
    ASSERT_TRUE(outbox->apply_ack(stream, 2).has_value());
    // The same ack again changes nothing.
    ASSERT_TRUE(outbox->record_acked_leaves(2, 4).has_value());
  }
  auto state = Outbox::read_audit_state(options().path);
  ASSERT_TRUE(state.has_value()) << state.error().message;
  EXPECT_EQ(state->stream, stream);
  ASSERT_TRUE(state->verified_log.has_value());
  EXPECT_EQ(state->verified_log->first, 5u);
  ASSERT_EQ(state->leaves.size(), 2u);
  EXPECT_EQ(state->leaves[0].seq, 1);
  EXPECT_EQ(state->leaves[0].leaf, merkle::leaf_hash(envelope_for(1)));
  EXPECT_FALSE(state->leaves[0].leaf_index.has_value());
  EXPECT_EQ(state->leaves[1].seq, 2);
  EXPECT_EQ(state->leaves[1].leaf, merkle::leaf_hash(envelope_for(2)));
  EXPECT_EQ(state->leaves[1].leaf_index, std::optional<std::uint64_t>(4));
  EXPECT_FALSE(state->leaves[1].id.empty());
}

// The audit saves the checkpoint it proved while the agent holds the file open: the agent reads
// it as its verified log at once; a stale `from` (the agent verified another log since) changes
// nothing.
TEST_F(OutboxTest, AnAuditSavesTheLogItProvedOnlyOverTheLogItStartedFrom) {
  auto outbox = open();
  merkle::Hash root{};
  root.fill(0x11);
  ASSERT_TRUE(outbox->record_verified_log(5, root, true).has_value());
  merkle::Hash newer{};
  newer.fill(0x22);
  auto saved = Outbox::save_audited_log(options().path, {5, root}, {8, newer});
  ASSERT_TRUE(saved.has_value()) << saved.error().message;
  EXPECT_TRUE(*saved);
  auto log = outbox->verified_log();
  ASSERT_TRUE(log.has_value());
  EXPECT_EQ(log->first, 8u);
  EXPECT_EQ(log->second, newer);
  EXPECT_TRUE(outbox->node_sends_consistency());

  merkle::Hash other{};
  other.fill(0x33);
  saved = Outbox::save_audited_log(options().path, {5, root}, {9, other});
  ASSERT_TRUE(saved.has_value()) << saved.error().message;
  EXPECT_FALSE(*saved);
  EXPECT_EQ(outbox->verified_log()->first, 8u);
  auto state = Outbox::read_audit_state(options().path);
  ASSERT_TRUE(state.has_value()) << state.error().message;
  ASSERT_TRUE(state->verified_log.has_value());
  EXPECT_EQ(state->verified_log->first, 8u);
  EXPECT_EQ(state->verified_log->second, newer);
}

TEST_F(OutboxTest, KeepsUnackedEventsAcrossRestart) {
  ChainHead before;
  {
    auto outbox = open();
    append(*outbox, 3);
    append(*outbox, 2);
    before = outbox->head();
  }
  auto outbox = open();
  ChainHead after = outbox->head();
  EXPECT_EQ(after.stream, before.stream);
  EXPECT_EQ(after.last_seq, 5);
  EXPECT_EQ(after.last_hash, "hash-5");
  EXPECT_EQ(after.recorded_floor_ms, before.recorded_floor_ms);
  auto events = outbox->read_from(1, 100);
  ASSERT_TRUE(events.has_value()) << events.error().message;
  ASSERT_EQ(events->size(), 5u);
  for (std::int64_t seq = 1; seq <= 5; ++seq) {
    const OutboxEvent& e = (*events)[static_cast<std::size_t>(seq - 1)];
    EXPECT_EQ(e.seq, seq);
    EXPECT_EQ(e.envelope, envelope_for(seq));
    EXPECT_EQ(e.recorded_unix_ms, 1'767'225'600'000 + seq * 1000);
  }
  OutboxStats stats = outbox->stats();
  EXPECT_EQ(stats.backlog_events, 5);
  EXPECT_EQ(stats.backlog_bytes, 5 * envelope_for(1).size());
  EXPECT_EQ(stats.oldest_unacked_recorded_ms, 1'767'225'600'000 + 1000);
  EXPECT_FALSE(stats.quarantined);
}

TEST_F(OutboxTest, ReadFromReturnsEventsInSeqOrderWithinLimit) {
  auto outbox = open();
  append(*outbox, 10);
  auto some = outbox->read_from(4, 3);
  ASSERT_TRUE(some.has_value());
  ASSERT_EQ(some->size(), 3u);
  EXPECT_EQ((*some)[0].seq, 4);
  EXPECT_EQ((*some)[1].seq, 5);
  EXPECT_EQ((*some)[2].seq, 6);
  EXPECT_EQ((*some)[2].id, "01JD0000000000000000000006");

  auto tail = outbox->read_from(9, 100);
  ASSERT_TRUE(tail.has_value());
  ASSERT_EQ(tail->size(), 2u);
  EXPECT_EQ(tail->back().seq, 10);

  EXPECT_TRUE(outbox->read_from(11, 100)->empty());
  EXPECT_TRUE(outbox->read_from(1, 0)->empty());
}

TEST_F(OutboxTest, RejectsBatchThatDoesNotFollowTheHead) {
  auto outbox = open();
  append(*outbox, 2);
  auto [events, head] = next_batch(*outbox, 2);
  events[1].seq = 5;
  auto status = outbox->append(events, head);
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code, ErrorCode::invalid_argument);
  EXPECT_EQ(outbox->head().last_seq, 2);
  EXPECT_TRUE(outbox->read_from(3, 10)->empty());
}

TEST_F(OutboxTest, AckPrunesOnlyWhatItCoversAndPersists) {
  std::string stream;
  {
    auto outbox = open();
    append(*outbox, 10);
    stream = outbox->head().stream;
    auto acked = outbox->apply_ack(stream, 4);
    ASSERT_TRUE(acked.has_value()) << acked.error().message;
    EXPECT_EQ(*acked, 4);
    auto rest = outbox->read_from(1, 100);
    ASSERT_EQ(rest->size(), 6u);
    EXPECT_EQ(rest->front().seq, 5);
    OutboxStats stats = outbox->stats();
    EXPECT_EQ(stats.acked_seq, 4);
    EXPECT_EQ(stats.backlog_events, 6);
    EXPECT_EQ(stats.backlog_bytes, 6 * envelope_for(1).size());
    EXPECT_EQ(stats.oldest_unacked_recorded_ms, 1'767'225'600'000 + 5 * 1000);
    // An older ack never moves acked back.
    EXPECT_EQ(*outbox->apply_ack(stream, 2), 4);
  }
  auto outbox = open();
  OutboxStats stats = outbox->stats();
  EXPECT_EQ(stats.stream, stream);
  EXPECT_EQ(stats.acked_seq, 4);
  EXPECT_EQ(stats.last_seq, 10);
  EXPECT_EQ(stats.backlog_bytes, 6 * envelope_for(1).size());
  EXPECT_EQ(stats.oldest_unacked_recorded_ms, 1'767'225'600'000 + 5 * 1000);
  EXPECT_EQ(outbox->read_from(1, 100)->front().seq, 5);
}

TEST_F(OutboxTest, AckForAnotherStreamChangesNothing) {
  auto outbox = open();
  append(*outbox, 5);
  auto acked = outbox->apply_ack("01ARZ3NDEKTSV4RRFFQ69G5FAV", 5);
  ASSERT_TRUE(acked.has_value());
  EXPECT_EQ(*acked, 0);
  EXPECT_EQ(outbox->read_from(1, 100)->size(), 5u);
  EXPECT_EQ(outbox->stats().acked_seq, 0);
  EXPECT_EQ(outbox->stats().backlog_events, 5);
}

TEST_F(OutboxTest, AckBeyondLastSeqIsRefusedAndPrunesNothing) {
  auto outbox = open();
  append(*outbox, 3);
  const OutboxStats before = outbox->stats();
  auto acked = outbox->apply_ack(outbox->head().stream, 1000);
  ASSERT_FALSE(acked.has_value());
  EXPECT_EQ(acked.error().code, ErrorCode::rejected);
  // The message names both values, so the log says what the node claimed and what exists.
  EXPECT_NE(acked.error().message.find("1000"), std::string::npos) << acked.error().message;
  EXPECT_NE(acked.error().message.find("last committed seq 3"), std::string::npos)
      << acked.error().message;
  OutboxStats stats = outbox->stats();
  EXPECT_EQ(stats.acked_seq, 0);
  EXPECT_EQ(stats.backlog_events, 3);
  EXPECT_EQ(stats.backlog_bytes, before.backlog_bytes);
  EXPECT_EQ(outbox->read_from(1, 100)->size(), 3u);
  // Still refused after a restart (a retained ack is delivered again), and a valid ack works.
  outbox.reset();
  outbox = open();
  EXPECT_FALSE(outbox->apply_ack(outbox->head().stream, 4).has_value());
  EXPECT_EQ(outbox->stats().backlog_events, 3);
  auto valid = outbox->apply_ack(outbox->head().stream, 3);
  ASSERT_TRUE(valid.has_value()) << valid.error().message;
  EXPECT_EQ(*valid, 3);
  EXPECT_EQ(outbox->stats().backlog_events, 0);
}

TEST_F(OutboxTest, RefusesWholeBatchWhenQuotaIsFullUntilAnAckFreesSpace) {
  OutboxOptions o = options();
  o.quota_bytes = 10 * 100;
  auto outbox = open(o);
  append(*outbox, 8, 100);
  EXPECT_EQ(outbox->quota_free_bytes(), 200u);

  auto [events, head] = next_batch(*outbox, 3, 100);
  auto refused = outbox->append(events, head);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::no_space);
  EXPECT_NE(refused.error().message.find("outbox quota full: 8 unacked events (800 B) of 1000 B"),
            std::string::npos)
      << refused.error().message;
  EXPECT_EQ(outbox->head().last_seq, 8);
  EXPECT_TRUE(outbox->read_from(9, 10)->empty());
  OutboxStats stats = outbox->stats();
  EXPECT_EQ(stats.refused_quota, 3u);
  EXPECT_EQ(stats.refused_io, 0u);
  EXPECT_EQ(stats.backlog_bytes, 800u);

  ASSERT_EQ(*outbox->apply_ack(outbox->head().stream, 5), 5);
  EXPECT_EQ(outbox->quota_free_bytes(), 700u);
  auto accepted = outbox->append(events, head);
  ASSERT_TRUE(accepted.has_value()) << accepted.error().message;
  EXPECT_EQ(outbox->head().last_seq, 11);
  EXPECT_EQ(outbox->stats().backlog_bytes, 600u);
  EXPECT_EQ(outbox->stats().refused_quota, 3u);

  // The backlog is recomputed from the file at open.
  outbox.reset();
  outbox = open(o);
  EXPECT_EQ(outbox->stats().backlog_bytes, 600u);
  EXPECT_EQ(outbox->quota_free_bytes(), 400u);
}

TEST_F(OutboxTest, QuarantinesGarbageFileAndStartsNewStream) {
  std::string garbage;
  for (int i = 0; i < 200; ++i)
    garbage += "this is not an SQLite database, line " + std::to_string(i) + "\n";
  write_bytes(m_dir / "outbox.db", garbage);

  auto outbox = open();
  ASSERT_TRUE(outbox);
  OutboxStats stats = outbox->stats();
  ASSERT_TRUE(stats.quarantined);
  EXPECT_EQ(*stats.quarantined, (m_dir / "outbox.db.corrupt-20260101T000000Z").string());
  EXPECT_EQ(read_bytes(*stats.quarantined), garbage);
  EXPECT_TRUE(is_valid_ulid(stats.stream));
  EXPECT_EQ(stats.last_seq, 0);
  append(*outbox, 2);
  outbox.reset();

  // The new file is a good outbox: it opens without another quarantine.
  outbox = open();
  EXPECT_FALSE(outbox->stats().quarantined);
  EXPECT_EQ(outbox->head().last_seq, 2);
}

TEST_F(OutboxTest, QuarantinesTruncatedDatabase) {
  const std::string stream = make_closed_outbox(300, 1000);
  const fs::path db = m_dir / "outbox.db";
  const std::string bytes = read_bytes(db);
  ASSERT_GT(bytes.size(), 100'000u);
  const std::string truncated = bytes.substr(0, bytes.size() / 2);
  write_bytes(db, truncated);

  auto outbox = open();
  ASSERT_TRUE(outbox);
  OutboxStats stats = outbox->stats();
  ASSERT_TRUE(stats.quarantined);
  EXPECT_EQ(read_bytes(*stats.quarantined), truncated);
  EXPECT_NE(stats.stream, stream);
  EXPECT_EQ(stats.last_seq, 0);
}

TEST_F(OutboxTest, QuarantinesDatabaseWithDamagedPages) {
  const std::string stream = make_closed_outbox(300, 1000);
  const fs::path db = m_dir / "outbox.db";
  std::string bytes = read_bytes(db);
  // Overwrite a run of pages in the middle of the events table.
  const std::size_t page = 4096;
  ASSERT_GT(bytes.size(), 40 * page);
  for (std::size_t i = 20 * page; i < 24 * page; ++i)
    bytes[i] = static_cast<char>(0xA5);
  write_bytes(db, bytes);

  auto outbox = open();
  ASSERT_TRUE(outbox);
  OutboxStats stats = outbox->stats();
  ASSERT_TRUE(stats.quarantined);
  EXPECT_EQ(read_bytes(*stats.quarantined), bytes);
  EXPECT_NE(stats.stream, stream);
}

TEST_F(OutboxTest, QuarantinesOutboxOfAnotherDevice) {
  std::string stream;
  {
    auto outbox = open(options("printer-01"));
    append(*outbox, 4);
    stream = outbox->head().stream;
  }
  const std::string bytes = read_bytes(m_dir / "outbox.db");
  auto outbox = open(options("printer-02"));
  ASSERT_TRUE(outbox);
  OutboxStats stats = outbox->stats();
  ASSERT_TRUE(stats.quarantined);
  EXPECT_NE(stats.stream, stream);
  EXPECT_EQ(stats.last_seq, 0);
  EXPECT_EQ(read_bytes(*stats.quarantined), bytes);

  // Nothing was lost: the moved file still holds the other device's events.
  std::size_t skipped = 99;
  auto events = export_all(*stats.quarantined, skipped);
  EXPECT_EQ(skipped, 0u);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[3].envelope, envelope_for(4));
}

TEST_F(OutboxTest, QuarantinesUnknownSchemaVersion) {
  make_closed_outbox(1);
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((m_dir / "outbox.db").c_str(), &db), SQLITE_OK);
    EXPECT_EQ(sqlite3_exec(db, "UPDATE meta SET schema_version = 99", nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  auto outbox = open();
  EXPECT_TRUE(outbox->stats().quarantined);
  EXPECT_EQ(outbox->head().last_seq, 0);
}

TEST_F(OutboxTest, QuarantinesDatabaseWithoutOutboxTables) {
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((m_dir / "outbox.db").c_str(), &db), SQLITE_OK);
    EXPECT_EQ(sqlite3_exec(db, "CREATE TABLE other(x)", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  auto outbox = open();
  ASSERT_TRUE(outbox->stats().quarantined);
  EXPECT_TRUE(fs::exists(*outbox->stats().quarantined));
}

TEST_F(OutboxTest, ExportReadsLiveOutboxWithoutModifyingIt) {
  auto outbox = open();
  append(*outbox, 6);
  ASSERT_EQ(*outbox->apply_ack(outbox->head().stream, 2), 2);
  const fs::path db = m_dir / "outbox.db";
  const std::string db_before = read_bytes(db);
  const std::string wal_before = read_bytes(m_dir / "outbox.db-wal");
  ASSERT_FALSE(wal_before.empty());

  std::size_t skipped = 99;
  auto events = export_all(db, skipped, 4);
  EXPECT_EQ(skipped, 0u);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].seq, 4);
  EXPECT_EQ(events[2].seq, 6);
  EXPECT_EQ(events[2].envelope, envelope_for(6));
  EXPECT_EQ(read_bytes(db), db_before);
  EXPECT_EQ(read_bytes(m_dir / "outbox.db-wal"), wal_before);

  // The live outbox keeps working while and after it is exported.
  append(*outbox, 1);
  EXPECT_EQ(outbox->head().last_seq, 7);
}

TEST_F(OutboxTest, ExportReadsQuarantinedOutboxWithItsWal) {
  // A file quarantined while its last commits were still in the WAL: the WAL moves with it.
  auto live = open(options("printer-01"));
  append(*live, 5);
  const fs::path db = m_dir / "outbox.db";
  const fs::path copy = m_dir / "copy.db";
  fs::copy_file(db, copy);
  fs::copy_file(m_dir / "outbox.db-wal", m_dir / "copy.db-wal");
  live.reset();
  fs::remove(db);
  fs::rename(copy, db);
  fs::rename(m_dir / "copy.db-wal", m_dir / "outbox.db-wal");

  auto outbox = open(options("printer-02"));
  ASSERT_TRUE(outbox->stats().quarantined);
  const fs::path moved = *outbox->stats().quarantined;
  ASSERT_TRUE(fs::exists(moved.string() + "-wal"));
  const std::string db_before = read_bytes(moved);
  const std::string wal_before = read_bytes(moved.string() + "-wal");

  std::size_t skipped = 99;
  auto events = export_all(moved, skipped);
  EXPECT_EQ(skipped, 0u);
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[4].envelope, envelope_for(5));
  EXPECT_EQ(read_bytes(moved), db_before);
  EXPECT_EQ(read_bytes(moved.string() + "-wal"), wal_before);
}

TEST_F(OutboxTest, ExportSkipsUnreadableRowsOfDamagedFile) {
  make_closed_outbox(300, 1000);
  const fs::path db = m_dir / "outbox.db";
  std::string bytes = read_bytes(db);
  const std::size_t page = 4096;
  for (std::size_t i = 20 * page + 100; i < 21 * page; ++i)
    bytes[i] = static_cast<char>(0xA5);
  write_bytes(db, bytes);

  std::size_t skipped = 0;
  auto events = export_all(db, skipped);
  EXPECT_GT(skipped, 0u);
  EXPECT_GT(events.size(), 200u);
  EXPECT_EQ(events.size() + skipped, 300u);
  for (const OutboxEvent& e : events)
    EXPECT_EQ(e.envelope, envelope_for(e.seq, 1000));
  EXPECT_EQ(read_bytes(db), bytes);
}

TEST_F(OutboxTest, RecoversEveryIntactEnvelopeOfATruncatedOutbox) {
  std::vector<std::string> envelopes;
  auto key = make_signed(300, 1000, envelopes);
  const fs::path db = m_dir / "outbox.db";
  const std::string bytes = read_bytes(db);
  const std::string truncated = bytes.substr(0, bytes.size() / 2);
  write_bytes(db, truncated);

  // What plain export gets out of it (the bug: nothing, or an error).
  std::size_t skipped = 0;
  std::vector<OutboxEvent> plain;
  (void)Outbox::export_file(
      db, 1, [&](const OutboxEvent& e) { plain.push_back(e); }, skipped);

  std::vector<OutboxEvent> out;
  auto report = Outbox::recover_file(db, key.public_jwk(), 1,
                                     [&](const OutboxEvent& e) { out.push_back(e); });
  ASSERT_TRUE(report.has_value()) << report.error().message;
  expect_all_intact_recovered(out, envelopes, truncated, key);
  EXPECT_EQ(report->recovered, out.size());
  EXPECT_GT(out.size(), 100u);
  EXPECT_GT(out.size(), plain.size());
  // The envelope cut by the truncation (if any) is a damaged region, not a silent loss.
  EXPECT_LE(report->damaged_regions, 1u);
  EXPECT_EQ(read_bytes(db), truncated);
}

TEST_F(OutboxTest, RecoversEveryEnvelopeWhenTheFirstPageIsZeroed) {
  std::vector<std::string> envelopes;
  auto key = make_signed(300, 1000, envelopes);
  const fs::path db = m_dir / "outbox.db";
  std::string bytes = read_bytes(db);
  std::fill(bytes.begin(), bytes.begin() + 4096, '\0');
  write_bytes(db, bytes);

  std::size_t skipped = 0;
  auto plain = Outbox::export_file(
      db, 1, [](const OutboxEvent&) {}, skipped);
  EXPECT_FALSE(plain.has_value());  // SQLite no longer sees a database

  std::vector<OutboxEvent> out;
  auto report = Outbox::recover_file(db, key.public_jwk(), 1,
                                     [&](const OutboxEvent& e) { out.push_back(e); });
  ASSERT_TRUE(report.has_value()) << report.error().message;
  EXPECT_EQ(out.size(), 300u);
  EXPECT_EQ(report->recovered, 300u);
  EXPECT_EQ(report->damaged_regions, 0u);
  expect_all_intact_recovered(out, envelopes, bytes, key);
}

TEST_F(OutboxTest, RecoveryKeepsOnlyEnvelopesThatVerifyAndCountsDamagedOnes) {
  std::vector<std::string> envelopes;
  auto key = make_signed(50, 500, envelopes);
  const fs::path db = m_dir / "outbox.db";
  std::string bytes = read_bytes(db);
  // Flip one byte inside the signature of seq 7 and zero the first page.
  const std::size_t at = bytes.find(envelopes[6]);
  ASSERT_NE(at, std::string::npos);
  bytes[at + envelopes[6].size() - 5] ^= 0x01;
  std::fill(bytes.begin(), bytes.begin() + 4096, '\0');
  write_bytes(db, bytes);

  std::vector<std::int64_t> seqs;
  auto report = Outbox::recover_file(db, key.public_jwk(), 1,
                                     [&](const OutboxEvent& e) { seqs.push_back(e.seq); });
  ASSERT_TRUE(report.has_value()) << report.error().message;
  // The tampered envelope is left out and counted (stale fragments of cells in pages' free space
  // that are cut before their seq cannot be told apart from a loss, so they count too).
  EXPECT_GE(report->damaged_regions, 1u);
  std::vector<std::int64_t> expected;
  for (std::int64_t seq = 1; seq <= 50; ++seq)
    if (seq != 7) expected.push_back(seq);
  EXPECT_EQ(seqs, expected);
  std::vector<std::int64_t> from_ten;
  ASSERT_TRUE(Outbox::recover_file(db, key.public_jwk(), 10, [&](const OutboxEvent& e) {
                from_ten.push_back(e.seq);
              }).has_value());
  ASSERT_EQ(from_ten.size(), 41u);
  EXPECT_EQ(from_ten.front(), 10);

  // Another device's key verifies nothing.
  auto other = DeviceKey::generate(m_dir / "other.key");
  ASSERT_TRUE(other.has_value());
  auto none = Outbox::recover_file(db, other->public_jwk(), 1, [](const OutboxEvent&) {});
  ASSERT_TRUE(none.has_value());
  EXPECT_EQ(none->recovered, 0u);
  EXPECT_GE(none->damaged_regions, 50u);
}

TEST_F(OutboxTest, RecoveryLeavesOutPrunedEventsWhenTheFileSaysTheyWereAcked) {
  std::vector<std::string> envelopes;
  auto outbox = open();
  auto key = sign_into(*outbox, 40, 500, envelopes);
  ASSERT_TRUE(outbox->apply_ack(outbox->head().stream, 30).has_value());
  outbox.reset();
  const fs::path db = m_dir / "outbox.db";
  std::vector<std::int64_t> seqs;
  auto report = Outbox::recover_file(db, key.public_jwk(), 1,
                                     [&](const OutboxEvent& e) { seqs.push_back(e.seq); });
  ASSERT_TRUE(report.has_value()) << report.error().message;
  ASSERT_EQ(seqs.size(), 10u);
  EXPECT_EQ(seqs.front(), 31);
  EXPECT_EQ(report->recovered, 10u);
}

TEST_F(OutboxTest, ExportOfGarbageIsCorruption) {
  const fs::path path = m_dir / "garbage.db";
  write_bytes(path, std::string(8192, 'g'));
  std::size_t skipped = 0;
  auto status = Outbox::export_file(
      path, 1, [](const OutboxEvent&) {}, skipped);
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code, ErrorCode::corruption);
  EXPECT_NE(status.error().message.find(path.string()), std::string::npos);
  EXPECT_EQ(read_bytes(path), std::string(8192, 'g'));

  auto missing = Outbox::export_file(
      m_dir / "none.db", 1, [](const OutboxEvent&) {}, skipped);
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, ErrorCode::io);
}

TEST_F(OutboxTest, DiskFullIsNoSpaceAndOutboxKeepsWorking) {
  auto outbox = open();
  append(*outbox, 3);
  const OutboxStats before = outbox->stats();

  auto [events, head] = next_batch(*outbox, 50, 2000);
  m_faults.write_error = SQLITE_FULL;
  auto status = outbox->append(events, head);
  m_faults.write_error = SQLITE_OK;
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code, ErrorCode::no_space);
  EXPECT_NE(status.error().message.find("outbox.db"), std::string::npos) << status.error().message;
  OutboxStats after = outbox->stats();
  EXPECT_EQ(after.refused_io, 1u);
  EXPECT_EQ(after.refused_quota, 0u);
  EXPECT_EQ(after.last_seq, 3);
  EXPECT_EQ(after.backlog_bytes, before.backlog_bytes);
  EXPECT_EQ(outbox->head().last_hash, "hash-3");
  EXPECT_TRUE(outbox->read_from(4, 100)->empty());

  auto retry = outbox->append(events, head);
  ASSERT_TRUE(retry.has_value()) << retry.error().message;
  EXPECT_EQ(outbox->head().last_seq, 53);
  outbox.reset();
  outbox = open();
  EXPECT_EQ(outbox->head().last_seq, 53);
  EXPECT_EQ(outbox->read_from(1, 100)->size(), 53u);
}

TEST_F(OutboxTest, RefusesNewEventsBelowMinFreeButStillPrunesAndAcceptsAgainOnceSpaceIsFree) {
  std::atomic<std::uint64_t> free{100ull << 20};
  OutboxOptions o = options();
  o.min_free_bytes = 10ull << 20;
  o.reserve_bytes = 0;
  o.quota_bytes = 1ull << 20;
  o.free_space = [&](const fs::path& dir) -> std::optional<std::uint64_t> {
    EXPECT_EQ(dir, m_dir.path());
    return free.load();
  };
  auto outbox = open(o);
  append(*outbox, 5);
  EXPECT_TRUE(outbox->stats().accepting);
  EXPECT_FALSE(outbox->room().disk_bound);

  // Something filled the disk: 10 MiB + 1000 bytes left, the batch needs twice its 10,000 bytes.
  free = (10ull << 20) + 1000;
  auto [events, head] = next_batch(*outbox, 50);
  auto refused = outbox->append(events, head);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::no_space);
  // The refusal states the real condition: what is free and what is required.
  EXPECT_NE(refused.error().message.find(format_size(free)), std::string::npos)
      << refused.error().message;
  EXPECT_NE(refused.error().message.find("10.0 MiB kept free (outbox.min_free)"), std::string::npos)
      << refused.error().message;
  EXPECT_EQ(refused.error().message.find("quota"), std::string::npos) << refused.error().message;
  OutboxStats stats = outbox->stats();
  EXPECT_EQ(stats.refused_disk, 50u);
  EXPECT_EQ(stats.refused_quota, 0u);
  EXPECT_EQ(stats.disk_free_bytes, free.load());
  EXPECT_EQ(stats.min_free_bytes, 10ull << 20);
  EXPECT_EQ(stats.last_seq, 5);
  EXPECT_TRUE(outbox->room().disk_bound);
  EXPECT_EQ(outbox->room().bytes, 500u);
  EXPECT_NE(outbox->room_error(10'000).message.find("outbox.min_free"), std::string::npos);

  // Acks are still recorded and prune.
  free = 1000;
  EXPECT_FALSE(outbox->stats().accepting);
  auto acked = outbox->apply_ack(outbox->head().stream, 5);
  ASSERT_TRUE(acked.has_value()) << acked.error().message;
  EXPECT_EQ(outbox->stats().backlog_events, 0);

  // Space freed: accepted again with nothing else happening.
  free = 100ull << 20;
  auto accepted = outbox->append(events, head);
  ASSERT_TRUE(accepted.has_value()) << accepted.error().message;
  EXPECT_EQ(outbox->head().last_seq, 55);
  EXPECT_TRUE(outbox->stats().accepting);
}

TEST_F(OutboxTest, GivesUpTheReserveToRecordAnAckWhenTheDiskIsFull) {
  std::atomic<std::uint64_t> free{100ull << 20};
  OutboxOptions o = options();
  o.min_free_bytes = 0;
  o.reserve_bytes = 64 * 1024;
  o.free_space = [&](const fs::path&) -> std::optional<std::uint64_t> { return free.load(); };
  const fs::path reserve = m_dir / "outbox.db.reserve";
  auto outbox = open(o);
  ASSERT_TRUE(fs::exists(reserve));
  EXPECT_GE(fs::file_size(reserve), 64u * 1024);
  EXPECT_TRUE(outbox->stats().reserve_held);
  append(*outbox, 10);

  // The disk is full to the last block until the reserve is deleted.
  const std::string reserve_text = reserve.string();
  m_faults.full_while_exists = reserve_text.c_str();
  free = 0;
  auto acked = outbox->apply_ack(outbox->head().stream, 10);
  ASSERT_TRUE(acked.has_value()) << acked.error().message;
  EXPECT_EQ(*acked, 10);
  EXPECT_FALSE(fs::exists(reserve));
  EXPECT_FALSE(outbox->stats().reserve_held);
  EXPECT_EQ(outbox->stats().backlog_events, 0);
  m_faults.full_while_exists = nullptr;

  // Once there is room the reserve is put back.
  free = 100ull << 20;
  append(*outbox, 1);
  EXPECT_TRUE(fs::exists(reserve));
  EXPECT_TRUE(outbox->stats().reserve_held);
  outbox.reset();
  outbox = open(o);
  EXPECT_EQ(outbox->stats().acked_seq, 10);
}

TEST_F(OutboxTest, WithoutReserveAnAckOnAFullDiskFailsAndKeepsEverything) {
  OutboxOptions o = options();
  o.reserve_bytes = 0;
  o.min_free_bytes = 0;
  auto outbox = open(o);
  append(*outbox, 4);
  m_faults.write_error = SQLITE_FULL;
  auto acked = outbox->apply_ack(outbox->head().stream, 4);
  m_faults.write_error = SQLITE_OK;
  ASSERT_FALSE(acked.has_value());
  EXPECT_EQ(acked.error().code, ErrorCode::no_space);
  EXPECT_EQ(outbox->stats().backlog_events, 4);
  EXPECT_FALSE(fs::exists(m_dir / "outbox.db.reserve"));
}

TEST_F(OutboxTest, ShrinksFileAndWalWhenTheBacklogIsGone) {
  OutboxOptions o = options();
  o.reserve_bytes = 0;
  o.min_free_bytes = 0;
  auto outbox = open(o);
  for (int i = 0; i < 40; ++i)
    append(*outbox, 100, 1000);
  const std::uint64_t full = outbox->stats().file_bytes;
  ASSERT_GT(full, 4'000'000u);
  // Part of the backlog acked: nothing to give back yet that a new event would not reuse.
  ASSERT_TRUE(outbox->apply_ack(outbox->head().stream, 2000).has_value());
  ASSERT_TRUE(outbox->apply_ack(outbox->head().stream, 4000).has_value());
  const OutboxStats empty = outbox->stats();
  EXPECT_EQ(empty.backlog_events, 0);
  EXPECT_LT(empty.file_bytes, 64u * 1024) << "from " << full;
  EXPECT_EQ(fs::file_size(m_dir / "outbox.db-wal"), 0u);
  // Still a working outbox.
  append(*outbox, 3);
  outbox.reset();
  outbox = open(o);
  EXPECT_EQ(outbox->head().last_seq, 4003);
  EXPECT_EQ(outbox->read_from(1, 10)->size(), 3u);
}

TEST_F(OutboxTest, ShrinksAnOutboxMadeWithoutAutoVacuum) {
  OutboxOptions o = options();
  o.reserve_bytes = 0;
  o.min_free_bytes = 0;
  open(o).reset();
  {
    // As outboxes were made before auto_vacuum: VACUUM with auto_vacuum=NONE.
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open((m_dir / "outbox.db").c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw, "PRAGMA auto_vacuum=NONE; VACUUM", nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_int64 mode = -1;
    sqlite3_stmt* stmt = nullptr;
    sqlite3_prepare_v2(raw, "PRAGMA auto_vacuum", -1, &stmt, nullptr);
    if (sqlite3_step(stmt) == SQLITE_ROW) mode = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(raw);
    ASSERT_EQ(mode, 0);
  }
  auto outbox = open(o);
  for (int i = 0; i < 30; ++i)
    append(*outbox, 100, 1000);
  ASSERT_GT(outbox->stats().file_bytes, 3'000'000u);
  ASSERT_TRUE(outbox->apply_ack(outbox->head().stream, 3000).has_value());
  EXPECT_LT(outbox->stats().file_bytes, 64u * 1024);
  append(*outbox, 2);
  EXPECT_EQ(outbox->read_from(1, 10)->size(), 2u);
}

// An ack that covers a week's backlog prunes it in bounded transactions: one transaction would
// first write every page it touches into the WAL, so a large backlog needs as much free disk as
// it has bytes to be pruned, exactly when the disk is full.
TEST_F(OutboxTest, PrunesALargeBacklogInTransactionsOfBoundedSize) {
  OutboxOptions o = options();
  o.reserve_bytes = 0;
  o.min_free_bytes = 0;
  auto outbox = open(o);
  for (int i = 0; i < 30; ++i)
    append(*outbox, 1000, 1000);
  ASSERT_GT(outbox->stats().file_bytes, 30'000'000u);
  // All but the last: the backlog is not gone, so nothing shrinks the WAL afterwards.
  const std::int64_t last = outbox->head().last_seq;
  auto acked = outbox->apply_ack(outbox->head().stream, last - 1);
  ASSERT_TRUE(acked.has_value()) << acked.error().message;
  EXPECT_EQ(*acked, last - 1);
  EXPECT_EQ(outbox->stats().backlog_events, 1);
  // SQLite checkpoints a WAL beyond 1000 pages (4 MiB) after a commit and then writes it from
  // the start again; one transaction of 30 MB cannot be checkpointed before it commits.
  EXPECT_LT(fs::file_size(m_dir / "outbox.db-wal"), 8u * 1024 * 1024);
  // Recorded: a reopened outbox has the ack and only the last event.
  outbox.reset();
  outbox = open(o);
  EXPECT_EQ(outbox->stats().acked_seq, last - 1);
  auto rest = outbox->read_from(1, 10);
  ASSERT_TRUE(rest.has_value());
  ASSERT_EQ(rest->size(), 1u);
  EXPECT_EQ(rest->front().seq, last);
}

// The same on a real 8 MiB file system. Mounting one needs root (CI and the dev container run
// as root); elsewhere the test is skipped and the probe and VFS tests above cover the logic.
TEST_F(OutboxTest, OnARealFullFileSystemAcksStillPruneAndEventsResumeWhenSpaceIsFreed) {
  const fs::path mnt = m_dir / "small";
  fs::create_directory(mnt);
  if (::geteuid() != 0 || ::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=8m") != 0)
    GTEST_SKIP() << "mounting a small tmpfs needs root";
  struct Unmount {
    fs::path at;
    ~Unmount() { ::umount2(at.c_str(), MNT_DETACH); }
  } unmount{mnt};

  OutboxOptions o = options();
  o.path = mnt / "outbox.db";
  o.min_free_bytes = 1 << 20;
  o.reserve_bytes = 2 << 20;
  o.quota_bytes = 64ull << 20;  // the disk, not the quota, is the limit here
  auto outbox = open(o);
  ASSERT_TRUE(outbox);
  EXPECT_TRUE(outbox->stats().reserve_held);

  // Fill until the threshold refuses.
  Status refused;
  for (int i = 0; i < 1000 && refused.has_value(); ++i) {
    auto [events, head] = next_batch(*outbox, 20, 1000);
    refused = outbox->append(events, head);
  }
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::no_space);
  EXPECT_NE(refused.error().message.find("outbox.min_free"), std::string::npos)
      << refused.error().message;
  const OutboxStats full = outbox->stats();
  EXPECT_EQ(full.refused_disk, 20u);
  EXPECT_GT(full.backlog_events, 500);

  // Something else takes every block left.
  {
    std::ofstream filler(mnt / "filler", std::ios::binary);
    const std::string chunk(4096, 'f');
    while (filler.write(chunk.data(), static_cast<std::streamsize>(chunk.size())) &&
           filler.flush()) {
    }
  }
  ASSERT_LT(statvfs_free_bytes(mnt).value_or(0), 64u * 1024);

  // The node acknowledges everything: recorded and pruned although the disk is full.
  auto acked = outbox->apply_ack(outbox->head().stream, outbox->head().last_seq);
  ASSERT_TRUE(acked.has_value()) << acked.error().message << "; reserve "
                                 << fs::exists(mnt / "outbox.db.reserve") << ", free "
                                 << statvfs_free_bytes(mnt).value_or(0) << ", db "
                                 << fs::file_size(mnt / "outbox.db") << ", wal "
                                 << fs::file_size(mnt / "outbox.db-wal");
  EXPECT_EQ(outbox->stats().backlog_events, 0);
  EXPECT_LT(outbox->stats().file_bytes, full.file_bytes / 4);

  // The filler goes: events are accepted again and the reserve comes back, without a restart.
  fs::remove(mnt / "filler");
  auto [events, head] = next_batch(*outbox, 20, 1000);
  auto again = outbox->append(events, head);
  ASSERT_TRUE(again.has_value()) << again.error().message;
  EXPECT_TRUE(outbox->stats().reserve_held);
  EXPECT_TRUE(outbox->stats().accepting);
}

TEST_F(OutboxTest, IoErrorIsIoAndNothingIsWritten) {
  auto outbox = open();
  append(*outbox, 2);
  auto [events, head] = next_batch(*outbox, 5);
  m_faults.write_error = SQLITE_IOERR_WRITE;
  auto status = outbox->append(events, head);
  m_faults.write_error = SQLITE_OK;
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code, ErrorCode::io);
  EXPECT_EQ(outbox->stats().refused_io, 1u);
  EXPECT_EQ(outbox->head().last_seq, 2);

  auto retry = outbox->append(events, head);
  ASSERT_TRUE(retry.has_value()) << retry.error().message;
  outbox.reset();
  outbox = open();
  EXPECT_FALSE(outbox->stats().quarantined);
  EXPECT_EQ(outbox->read_from(1, 100)->size(), 7u);
}

TEST_F(OutboxTest, FullDurabilitySyncsTheWalAtEveryCommit) {
  OutboxOptions o = options();
  o.durability = Durability::full;
  auto outbox = open(o);
  m_faults.wal_syncs = 0;
  append(*outbox, 1);
  append(*outbox, 1);
  EXPECT_GE(m_faults.wal_syncs.load(), 2);
}

TEST_F(OutboxTest, NormalDurabilityDoesNotSyncAtCommit) {
  OutboxOptions o = options();
  o.durability = Durability::normal;
  auto outbox = open(o);
  append(*outbox, 1);  // the first commit after open may checkpoint
  m_faults.wal_syncs = 0;
  append(*outbox, 1);
  append(*outbox, 1);
  EXPECT_EQ(m_faults.wal_syncs.load(), 0);
  EXPECT_EQ(outbox->head().last_seq, 3);
}

// With durability full a prune is committed without an fsync (the ack is the node's, and the
// node keeps it retained): the appends that answer producers still sync.
TEST_F(OutboxTest, FullDurabilitySyncsAppendsButNotPrunes) {
  OutboxOptions o = options();
  o.durability = Durability::full;
  auto outbox = open(o);
  append(*outbox, 3);
  m_faults.wal_syncs = 0;
  ASSERT_EQ(*outbox->apply_ack(outbox->head().stream, 2), 2);
  EXPECT_EQ(m_faults.wal_syncs.load(), 0);
  append(*outbox, 1);
  EXPECT_GE(m_faults.wal_syncs.load(), 1);
  m_faults.wal_syncs = 0;
  ASSERT_EQ(*outbox->apply_ack(outbox->head().stream, 4), 4);
  append(*outbox, 1);
  EXPECT_GE(m_faults.wal_syncs.load(), 1);
  EXPECT_EQ(outbox->head().last_seq, 5);
}

// Power cuts at random points of appends and acks, many rounds, every write that was not
// synced lost: every answered event is in the reopened outbox, in order and intact, and the
// database passes integrity_check. An ack may be lost with the prune that recorded it, but only
// one recorded after the last append: the events it covered are republished, which PROTOCOL §5
// expects (duplicates), and the node's retained ack prunes them again. Nothing unacked is gone.
TEST_F(OutboxTest, APowerCutKeepsEveryAnsweredEventAndLosesAtMostTheAcksSinceTheLastAppend) {
  std::mt19937 random(20261207);
  int acks_lost = 0;
  for (int round = 0; round < 40; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    OutboxOptions o = options();
    fs::create_directories(m_dir / std::to_string(round));
    o.path = m_dir / std::to_string(round) / "outbox.db";
    o.durability = Durability::full;
    o.reserve_bytes = 0;
    o.min_free_bytes = 0;
    auto outbox = open(o);
    ASSERT_TRUE(outbox);
    const std::string stream = outbox->head().stream;
    std::map<std::int64_t, std::string> answered;  // seq → envelope, appended and answered
    std::int64_t acked = 0;                        // the node's ack as the outbox recorded it
    std::int64_t acked_at_last_append = 0;
    m_faults.record_unsynced = true;
    const int steps = std::uniform_int_distribution<int>(1, 40)(random);
    for (int step = 0; step < steps; ++step) {
      const std::int64_t last = outbox->head().last_seq;
      if (last > acked && std::uniform_int_distribution<int>(0, 2)(random) == 0) {
        const std::int64_t seq =
            std::uniform_int_distribution<std::int64_t>(acked + 1, last)(random);
        auto applied = outbox->apply_ack(stream, seq);
        ASSERT_TRUE(applied.has_value()) << applied.error().message;
        acked = *applied;
        continue;
      }
      const int n = std::uniform_int_distribution<int>(1, 20)(random);
      const std::size_t size = std::uniform_int_distribution<std::size_t>(100, 3000)(random);
      auto [events, head] = next_batch(*outbox, n, size);
      ASSERT_TRUE(outbox->append(events, head).has_value());
      for (const OutboxEvent& e : events)
        answered[e.seq] = e.envelope;
      acked_at_last_append = acked;
    }
    m_faults.power_cut();
    outbox.reset();  // its close writes nothing: the power is off
    m_faults.power_restored();

    expect_integrity_ok(o.path);
    outbox = open(o);
    ASSERT_TRUE(outbox);
    const OutboxStats after = outbox->stats();
    EXPECT_FALSE(after.quarantined);
    EXPECT_EQ(after.stream, stream);
    const std::int64_t last = answered.empty() ? 0 : answered.rbegin()->first;
    EXPECT_EQ(after.last_seq, last);
    EXPECT_LE(after.acked_seq, acked);
    EXPECT_GE(after.acked_seq, acked_at_last_append);
    if (after.acked_seq < acked) ++acks_lost;
    auto rest = outbox->read_from(1, 100'000);
    ASSERT_TRUE(rest.has_value());
    ASSERT_EQ(rest->size(), static_cast<std::size_t>(last - after.acked_seq));
    for (const OutboxEvent& e : *rest) {
      ASSERT_TRUE(answered.contains(e.seq));
      EXPECT_EQ(e.envelope, answered[e.seq]);
    }
    // The retained ack, delivered again at connect, prunes what it covers.
    if (acked > 0) {
      ASSERT_EQ(*outbox->apply_ack(stream, acked), acked);
      EXPECT_EQ(outbox->stats().backlog_events, last - acked);
    }
  }
  // The unsynced prune is what the cut hits; a test that never loses an ack tests nothing here.
  EXPECT_GT(acks_lost, 0);
}

// Schema 2 keeps the chain head in the last row and marks that row acked instead of deleting
// it when an ack covers every event: the head survives, and the row is never sent again.
TEST_F(OutboxTest, KeepsTheChainHeadWhenEveryEventIsAcked) {
  std::string stream;
  {
    auto outbox = open();
    append(*outbox, 3);
    stream = outbox->head().stream;
    ASSERT_EQ(*outbox->apply_ack(stream, 3), 3);
    EXPECT_TRUE(outbox->read_from(1, 10)->empty());
    EXPECT_EQ(outbox->stats().backlog_bytes, 0u);
  }
  std::size_t skipped = 0;
  EXPECT_TRUE(export_all(m_dir / "outbox.db", skipped).empty());
  EXPECT_EQ(skipped, 0u);
  {
    auto outbox = open();
    const ChainHead head = outbox->head();
    EXPECT_EQ(head.stream, stream);
    EXPECT_EQ(head.last_seq, 3);
    EXPECT_EQ(head.last_hash, "hash-3");
    EXPECT_EQ(head.recorded_floor_ms, 1'767'225'600'000 + 3 * 1000);
    const OutboxStats stats = outbox->stats();
    EXPECT_EQ(stats.acked_seq, 3);
    EXPECT_EQ(stats.backlog_events, 0);
    EXPECT_EQ(stats.backlog_bytes, 0u);
    EXPECT_FALSE(stats.oldest_unacked_recorded_ms);
    EXPECT_FALSE(stats.quarantined);
    EXPECT_TRUE(outbox->read_from(1, 10)->empty());
    append(*outbox, 2);
    auto rest = outbox->read_from(1, 10);
    ASSERT_EQ(rest->size(), 2u);
    EXPECT_EQ(rest->front().seq, 4);
    EXPECT_EQ(outbox->stats().backlog_bytes, 2 * envelope_for(1).size());
  }
  auto outbox = open();
  EXPECT_EQ(outbox->head().last_seq, 5);
  EXPECT_EQ(outbox->head().last_hash, "hash-5");
  EXPECT_EQ(outbox->stats().acked_seq, 3);
  EXPECT_EQ(outbox->read_from(1, 10)->size(), 2u);
}

// An outbox written by an agent of schema 1 (its exact tables, head and ack in `meta`) is
// migrated at open and keeps its stream, head, ack and events.
TEST_F(OutboxTest, MigratesASchema1Outbox) {
  const std::string stream = "01JD00000000000000000000AB";
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((m_dir / "outbox.db").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "PRAGMA journal_mode=WAL;"
                           "CREATE TABLE meta("
                           " id INTEGER PRIMARY KEY CHECK (id = 1),"
                           " schema_version INTEGER NOT NULL,"
                           " device_id TEXT NOT NULL,"
                           " stream TEXT NOT NULL,"
                           " last_seq INTEGER NOT NULL,"
                           " last_hash TEXT NOT NULL,"
                           " recorded_floor_ms INTEGER NOT NULL,"
                           " acked_seq INTEGER NOT NULL,"
                           " created_ms INTEGER NOT NULL);"
                           "CREATE TABLE events("
                           " seq INTEGER PRIMARY KEY,"
                           " id TEXT NOT NULL,"
                           " recorded_ms INTEGER NOT NULL,"
                           " envelope BLOB NOT NULL);",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    const std::string insert_meta = "INSERT INTO meta VALUES (1, 1, 'fablab-mk4-01', '" + stream +
                                    "', 5, 'hash-5', 1767225605000, 2, 1767225600000)";
    ASSERT_EQ(sqlite3_exec(db, insert_meta.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
    for (std::int64_t seq = 3; seq <= 5; ++seq) {
      const std::string insert = "INSERT INTO events VALUES (" + std::to_string(seq) +
                                 ", '01JD000000000000000000000" + std::to_string(seq) + "', " +
                                 std::to_string(1'767'225'600'000 + seq * 1000) + ", '" +
                                 envelope_for(seq) + "')";
      ASSERT_EQ(sqlite3_exec(db, insert.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
    }
    sqlite3_close(db);
  }
  {
    auto outbox = open();
    ASSERT_TRUE(outbox);
    EXPECT_FALSE(outbox->stats().quarantined);
    EXPECT_EQ(outbox->head().stream, stream);
    EXPECT_EQ(outbox->head().last_seq, 5);
    EXPECT_EQ(outbox->head().last_hash, "hash-5");
    EXPECT_EQ(outbox->head().recorded_floor_ms, 1'767'225'605'000);
    EXPECT_EQ(outbox->stats().acked_seq, 2);
    EXPECT_EQ(outbox->stats().backlog_bytes, 3 * envelope_for(1).size());
    auto rows = outbox->read_from(1, 10);
    ASSERT_EQ(rows->size(), 3u);
    EXPECT_EQ(rows->front().seq, 3);
    EXPECT_EQ(rows->front().envelope, envelope_for(3));
    // Every event of the old rows acked: the last one keeps meta's head.
    ASSERT_EQ(*outbox->apply_ack(stream, 5), 5);
  }
  {
    auto outbox = open();
    EXPECT_FALSE(outbox->stats().quarantined);
    EXPECT_EQ(outbox->head().last_seq, 5);
    EXPECT_EQ(outbox->head().last_hash, "hash-5");
    EXPECT_EQ(outbox->stats().acked_seq, 5);
    append(*outbox, 2);
  }
  auto outbox = open();
  EXPECT_EQ(outbox->head().last_seq, 7);
  EXPECT_EQ(outbox->head().last_hash, "hash-7");
  EXPECT_EQ(outbox->stats().acked_seq, 5);
  EXPECT_EQ(outbox->read_from(1, 10)->size(), 2u);
  outbox.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((m_dir / "outbox.db").c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT schema_version FROM meta", -1, &stmt, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int64(stmt, 0), 2);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

// A device at a makerspace's pace: one event appended, then (mostly) acked, many times, with
// power cuts at random points (every write not synced is lost). Every answered event the node
// has not acked is in the reopened outbox; nothing unacked is pruned; the chain head is the last
// answered event's; and the events republished are at most those acked since the last append
// (PROTOCOL §5 duplicates), which the node's retained ack prunes again.
TEST_F(OutboxTest, APowerCutOneEventAtATimeKeepsTheHeadAndEveryUnackedEvent) {
  std::mt19937 random(20261208);
  int acks_lost = 0;
  for (int round = 0; round < 60; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    OutboxOptions o = options();
    fs::create_directories(m_dir / std::to_string(round));
    o.path = m_dir / std::to_string(round) / "outbox.db";
    o.durability = Durability::full;
    o.reserve_bytes = 0;
    o.min_free_bytes = 0;
    auto outbox = open(o);
    ASSERT_TRUE(outbox);
    const std::string stream = outbox->head().stream;
    std::map<std::int64_t, std::string> answered;
    std::int64_t acked = 0;
    std::int64_t acked_at_last_append = 0;
    m_faults.record_unsynced = true;
    const int steps = std::uniform_int_distribution<int>(1, 30)(random);
    for (int step = 0; step < steps; ++step) {
      auto [events, head] = next_batch(*outbox, 1, 985);
      ASSERT_TRUE(outbox->append(events, head).has_value());
      answered[events.front().seq] = events.front().envelope;
      acked_at_last_append = acked;
      if (std::uniform_int_distribution<int>(0, 3)(random) != 0) {
        auto applied = outbox->apply_ack(stream, outbox->head().last_seq);
        ASSERT_TRUE(applied.has_value()) << applied.error().message;
        acked = *applied;
      }
    }
    m_faults.power_cut();
    outbox.reset();
    m_faults.power_restored();

    expect_integrity_ok(o.path);
    outbox = open(o);
    ASSERT_TRUE(outbox);
    const OutboxStats after = outbox->stats();
    EXPECT_FALSE(after.quarantined);
    const std::int64_t last = answered.rbegin()->first;
    EXPECT_EQ(after.last_seq, last);
    EXPECT_EQ(outbox->head().last_hash, "hash-" + std::to_string(last));
    // Nothing the node has not acked is gone; what comes back is acked since the last append.
    EXPECT_LE(after.acked_seq, acked);
    EXPECT_GE(after.acked_seq, acked_at_last_append);
    if (after.acked_seq < acked) ++acks_lost;
    auto rest = outbox->read_from(1, 100'000);
    ASSERT_TRUE(rest.has_value());
    ASSERT_EQ(rest->size(), static_cast<std::size_t>(last - after.acked_seq));
    std::int64_t expected_seq = after.acked_seq + 1;
    for (const OutboxEvent& e : *rest) {
      EXPECT_EQ(e.seq, expected_seq++);
      EXPECT_EQ(e.envelope, answered[e.seq]);
    }
    if (acked > 0) {
      ASSERT_EQ(*outbox->apply_ack(stream, acked), acked);
      EXPECT_EQ(outbox->stats().backlog_events, last - acked);
    }
    // The chain goes on from the recovered head.
    append(*outbox, 1);
    EXPECT_EQ(outbox->head().last_seq, last + 1);
  }
  EXPECT_GT(acks_lost, 0);
}

TEST_F(OutboxTest, UsesWalJournalMode) {
  auto outbox = open();
  append(*outbox, 1);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2((m_dir / "outbox.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr),
            SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &stmt, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)), "wal");
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  EXPECT_TRUE(fs::exists(m_dir / "outbox.db-wal"));
  EXPECT_GT(outbox->stats().file_bytes, fs::file_size(m_dir / "outbox.db"));
}

TEST_F(OutboxTest, OpenFailsWithIoWhenTheFileCannotBeCreated) {
  OutboxOptions o = options();
  o.path = m_dir / "missing-dir" / "outbox.db";
  auto outbox = Outbox::open(o, m_env, m_log);
  ASSERT_FALSE(outbox.has_value());
  EXPECT_EQ(outbox.error().code, ErrorCode::io);
  EXPECT_NE(outbox.error().message.find(o.path.string()), std::string::npos)
      << outbox.error().message;
  EXPECT_NE(outbox.error().message.find("No such file or directory"), std::string::npos)
      << outbox.error().message;
}

TEST_F(OutboxTest, StrayWalWithoutDatabaseIsNotReplayedIntoNewOutbox) {
  auto live = open();
  append(*live, 4);
  const fs::path wal = m_dir / "outbox.db-wal";
  fs::copy_file(wal, m_dir / "saved-wal");
  live.reset();
  fs::remove(m_dir / "outbox.db");
  fs::rename(m_dir / "saved-wal", wal);

  auto outbox = open();
  EXPECT_EQ(outbox->head().last_seq, 0);
  EXPECT_TRUE(outbox->read_from(1, 10)->empty());
  EXPECT_TRUE(fs::exists(m_dir / "outbox.db.orphan-20260101T000000Z-wal"));
}

}  // namespace
}  // namespace agent
