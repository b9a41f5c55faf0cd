// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/store.hpp>

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <mutex>
#include <system_error>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/units.hpp>

#include <reflow/core/sqlite.hpp>

#include "put_core.hpp"
#include "store_rules.hpp"

namespace ingest {
namespace {

namespace fs = std::filesystem;
using agent::ErrorCode;
using agent::fail;
using agent::sqlite::bind_text;
using agent::sqlite::Blob;
using agent::sqlite::column_text;
using agent::sqlite::Cursor;
using agent::sqlite::DbPtr;
using agent::sqlite::StmtPtr;
using store_rules::k_unauthenticated_reasons;
using store_rules::reason_from_name;
using store_rules::saturating_add;
using store_rules::unauthenticated;

// Version 2 dropped events.payload: it is the envelope's payload, decoded, and the envelope is
// kept byte for byte, so for_each_event decodes it instead (about 40 % of each row, and of the
// bytes a commit writes). Version 3 keeps one rejections row per (topic, envelope bytes) with a
// count, marks the rows of unauthenticated senders (capped) and counts what the caps did not keep
// in rejections_not_kept: every repeat used to be a row (issue 14). Older files are migrated
// when opened.
// Version 4 adds the verifiable log (issue 19): the leaf hash of every stored envelope in the
// order stored, and the perfect subtrees above them (RFC 9162 §2.1), written by put() in the
// event's own transaction; opening a version 3 file builds them from its events.
// Version 5 adds the export ledger (issue 16): what `export --post` sent to which zenflows server
// and the ids it got, with the intent of a request in flight; older files get it empty.
constexpr std::int64_t k_schema_version = 5;
// PRAGMA application_id "RFLI": tells our file from any other SQLite database, so that pointing
// data_dir at the wrong place fails instead of adding tables to someone else's file.
constexpr std::int64_t k_application_id = 0x52464c49;
constexpr int k_busy_timeout_ms = 5000;
// A burst leaves at most this much WAL behind after a checkpoint.
constexpr std::int64_t k_journal_size_limit_bytes = 64 * 1024 * 1024;
// Checkpoints every 32 MiB of WAL (SQLite's default is 4 MiB) with a 32 MiB page cache: each
// checkpoint costs two fsyncs and re-reads what fell out of the cache, and at the default sizes
// that halved put() throughput (measured: ~25k → ~40k events/s in batches of 512).
constexpr std::int64_t k_wal_autocheckpoint_pages = 8192;
constexpr std::int64_t k_writer_cache_kib = 32 * 1024;

// Small, fixed-size columns come first in `events` so that filters and the chain checks read
// them from the row's first page without touching the envelope's overflow pages.
// `streams.id` orders streams by first sight (for_each_event) and `last_event` (the rowid of
// the stream's latest stored event) finds the most recently active stream (ack_point): both are
// insertion counters, unlike node times, which tie within a millisecond.
constexpr const char* k_schema_sql =
    "CREATE TABLE keys("
    " kid TEXT PRIMARY KEY,"
    " device TEXT NOT NULL,"
    " x TEXT NOT NULL,"
    " added_ms INTEGER NOT NULL,"
    " revoked_ms INTEGER);"
    "CREATE INDEX keys_device ON keys(device, added_ms);"
    "CREATE TABLE streams("
    " id INTEGER PRIMARY KEY,"
    " device TEXT NOT NULL,"
    " stream TEXT NOT NULL,"
    " first_seen_ms INTEGER NOT NULL,"
    " last_seen_ms INTEGER NOT NULL,"
    " contiguous INTEGER NOT NULL,"
    " max_seq INTEGER NOT NULL,"
    " events INTEGER NOT NULL,"
    " chain_broken INTEGER NOT NULL DEFAULT 0,"
    " last_event INTEGER NOT NULL,"
    " UNIQUE(device, stream));"
    "CREATE INDEX streams_order ON streams(device, first_seen_ms, id);"
    "CREATE TABLE events("
    " id INTEGER PRIMARY KEY,"
    " device TEXT NOT NULL,"
    " stream TEXT NOT NULL,"
    " seq INTEGER NOT NULL,"
    " recorded_ms INTEGER NOT NULL,"
    " received_ms INTEGER NOT NULL,"
    " action TEXT NOT NULL,"
    " signing_input_sha256 TEXT NOT NULL,"
    " prev TEXT,"
    " event_id TEXT NOT NULL,"
    " kid TEXT NOT NULL,"
    " envelope TEXT NOT NULL,"
    " UNIQUE(device, stream, seq));"
    "CREATE INDEX events_recorded ON events(recorded_ms);"
    "CREATE INDEX events_action ON events(action, recorded_ms);"
    "CREATE TABLE rejections("
    " id INTEGER PRIMARY KEY,"
    " received_ms INTEGER NOT NULL,"
    " topic TEXT NOT NULL,"
    " device TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " detail TEXT NOT NULL,"
    " stream TEXT,"
    " seq INTEGER,"
    " envelope BLOB NOT NULL,"
    " last_seen_ms INTEGER NOT NULL DEFAULT 0,"
    " count INTEGER NOT NULL DEFAULT 1,"
    " envelope_sha256 TEXT NOT NULL DEFAULT '',"
    " capped INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX rejections_device ON rejections(device);";
// What version 3 added beside the rejections' columns: part of k_schema_sql for a new file, and
// the end of the migration from version 2.
constexpr const char* k_rejections_v3_sql =
    "CREATE UNIQUE INDEX rejections_envelope ON rejections(topic, envelope_sha256);"
    "CREATE INDEX rejections_capped ON rejections(capped, device);"
    "CREATE TABLE rejections_not_kept("
    " device TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " count INTEGER NOT NULL,"
    " bytes INTEGER NOT NULL,"
    " last_seen_ms INTEGER NOT NULL,"
    " PRIMARY KEY(device, reason));";

// Version 4's log: log_leaves(idx) is leaf idx (0-based) with the events row it came from;
// log_nodes(level, idx) the root of the perfect subtree of the 2^level leaves from idx × 2^level,
// for level ≥ 1, written as soon as its last leaf is. Proofs and roots need O(log n) of them.
constexpr const char* k_log_sql =
    "CREATE TABLE log_leaves("
    " idx INTEGER PRIMARY KEY,"
    " event INTEGER NOT NULL,"
    " hash BLOB NOT NULL);"
    "CREATE INDEX log_leaves_event ON log_leaves(event);"
    "CREATE TABLE log_nodes("
    " level INTEGER NOT NULL,"
    " idx INTEGER NOT NULL,"
    " hash BLOB NOT NULL,"
    " PRIMARY KEY(level, idx)) WITHOUT ROWID;";

// Version 5's export ledger (store.hpp LedgerEntry): one row per (server, kind, ref), written as
// an intent (recorded = 0) before its request is sent and completed with the server's id after.
constexpr const char* k_ledger_sql =
    "CREATE TABLE export_ledger("
    " server TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " ref TEXT NOT NULL,"
    " recorded INTEGER NOT NULL,"
    " server_id TEXT,"
    " note TEXT NOT NULL,"
    " event_id TEXT NOT NULL,"
    " creates TEXT NOT NULL,"
    " intent_ms INTEGER NOT NULL,"
    " recorded_ms INTEGER,"
    " PRIMARY KEY(server, kind, ref)) WITHOUT ROWID;";

// Version 2 → 3 (the columns as k_schema_sql has them, then one row per (topic, envelope)).
// The hashes are filled in between the two parts, by C++ (SQLite has no SHA-256).
constexpr const char* k_migrate_2_columns_sql =
    "ALTER TABLE rejections ADD COLUMN last_seen_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE rejections ADD COLUMN count INTEGER NOT NULL DEFAULT 1;"
    "ALTER TABLE rejections ADD COLUMN envelope_sha256 TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE rejections ADD COLUMN capped INTEGER NOT NULL DEFAULT 0;";
constexpr const char* k_migrate_2_collapse_sql =
    "CREATE TEMP TABLE collapsed(id INTEGER PRIMARY KEY, n INTEGER, first INTEGER, last INTEGER);"
    "INSERT INTO collapsed SELECT max(id), count(*), min(received_ms), max(received_ms) "
    " FROM rejections GROUP BY topic, envelope_sha256;"
    "DELETE FROM rejections WHERE id NOT IN (SELECT id FROM collapsed);"
    "UPDATE rejections SET (count, received_ms, last_seen_ms) = "
    " (SELECT n, first, last FROM collapsed WHERE collapsed.id = rejections.id);"
    "DROP TABLE collapsed;";

// Statements prepared once per connection (keyed by these pointers): the hot path's, and the
// registry's, which write() and only_row() take as well.
constexpr const char* k_sql_insert_key =
    "INSERT INTO keys(kid, device, x, added_ms) VALUES (?1, ?2, ?3, ?4)";
constexpr const char* k_sql_count_keys = "SELECT count(*) FROM keys WHERE device = ?1";
constexpr const char* k_sql_revoke_keys =
    "UPDATE keys SET revoked_ms = ?2 WHERE device = ?1 AND revoked_ms IS NULL";
constexpr const char* k_sql_find_key =
    "SELECT device, x, added_ms, revoked_ms FROM keys WHERE kid = ?1";
constexpr const char* k_sql_load_stream =
    "SELECT id, first_seen_ms, last_seen_ms, contiguous, max_seq, events, chain_broken, "
    "last_event FROM streams WHERE device = ?1 AND stream = ?2";
constexpr const char* k_sql_insert_stream =
    "INSERT INTO streams(device, stream, first_seen_ms, last_seen_ms, contiguous, max_seq, "
    "events, chain_broken, last_event) VALUES (?1, ?2, ?3, ?3, 0, 0, 0, 0, 0)";
constexpr const char* k_sql_update_stream =
    "UPDATE streams SET last_seen_ms = ?2, contiguous = ?3, max_seq = ?4, events = ?5, "
    "chain_broken = ?6, last_event = ?7 WHERE id = ?1";
constexpr const char* k_sql_find_event =
    "SELECT signing_input_sha256, prev, recorded_ms, id FROM events "
    "WHERE device = ?1 AND stream = ?2 AND seq = ?3";
constexpr const char* k_sql_event_envelope = "SELECT envelope FROM events WHERE id = ?1";
constexpr const char* k_sql_delete_event = "DELETE FROM events WHERE id = ?1";
constexpr const char* k_sql_max_seq =
    "SELECT coalesce(max(seq), 0) FROM events WHERE device = ?1 AND stream = ?2";
constexpr const char* k_sql_seqs_after =
    "SELECT seq FROM events WHERE device = ?1 AND stream = ?2 AND seq > ?3 ORDER BY seq";
constexpr const char* k_sql_insert_event =
    "INSERT INTO events(device, stream, seq, recorded_ms, received_ms, action, "
    "signing_input_sha256, prev, event_id, kid, envelope) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
constexpr const char* k_sql_insert_rejection =
    "INSERT INTO rejections(received_ms, topic, device, reason, detail, stream, seq, envelope, "
    "last_seen_ms, count, envelope_sha256, capped) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?1, 1, ?9, ?10)";
constexpr const char* k_sql_repeat_rejection =
    "UPDATE rejections SET count = count + 1, last_seen_ms = ?3, reason = ?4, detail = ?5 "
    "WHERE topic = ?1 AND envelope_sha256 = ?2";
constexpr const char* k_sql_capped_usage =
    "SELECT count(*), total(length(envelope)) FROM rejections WHERE capped = 1 AND device = ?1";
constexpr const char* k_sql_capped_total =
    "SELECT count(*), total(length(envelope)) FROM rejections WHERE capped = 1";
constexpr const char* k_sql_device_registered = "SELECT 1 FROM keys WHERE device = ?1 LIMIT 1";
constexpr const char* k_sql_not_kept =
    "INSERT INTO rejections_not_kept(device, reason, count, bytes, last_seen_ms) "
    "VALUES (?1, ?2, 1, ?3, ?4) ON CONFLICT(device, reason) DO UPDATE SET "
    "count = count + 1, bytes = bytes + excluded.bytes, last_seen_ms = excluded.last_seen_ms";
constexpr const char* k_sql_log_size = "SELECT coalesce(max(idx) + 1, 0) FROM log_leaves";
constexpr const char* k_sql_log_insert_leaf =
    "INSERT INTO log_leaves(idx, event, hash) VALUES(?1, ?2, ?3)";
constexpr const char* k_sql_log_insert_node =
    "INSERT INTO log_nodes(level, idx, hash) VALUES(?1, ?2, ?3)";
constexpr const char* k_sql_log_leaf = "SELECT hash FROM log_leaves WHERE idx = ?1";
constexpr const char* k_sql_log_node = "SELECT hash FROM log_nodes WHERE level = ?1 AND idx = ?2";
constexpr const char* k_sql_log_entries =
    "SELECT l.idx, l.hash, e.device, e.stream, e.seq FROM events e "
    "JOIN log_leaves l ON l.event = e.id WHERE e.event_id = ?1 ORDER BY l.idx";
constexpr const char* k_sql_log_entry_of =
    "SELECT l.idx, l.hash FROM events e JOIN log_leaves l ON l.event = e.id "
    "WHERE e.device = ?1 AND e.stream = ?2 AND e.seq = ?3 ORDER BY l.idx LIMIT 1";
constexpr const char* k_sql_log_audit_of =
    "SELECT l.idx, l.hash, e.envelope FROM events e JOIN log_leaves l ON l.event = e.id "
    "WHERE e.device = ?1 AND e.stream = ?2 AND e.seq = ?3 ORDER BY l.idx LIMIT 1";
constexpr const char* k_sql_events_in_order = "SELECT id, envelope FROM events ORDER BY id";
constexpr const char* k_sql_ack_point =
    "SELECT stream, contiguous FROM streams WHERE device = ?1 ORDER BY last_event DESC LIMIT 1";

std::optional<std::string> column_optional_text(sqlite3_stmt* stmt, int col) {
  if (sqlite3_column_type(stmt, col) == SQLITE_NULL) return std::nullopt;
  return column_text(stmt, col);
}

std::optional<std::int64_t> column_optional_int(sqlite3_stmt* stmt, int col) {
  if (sqlite3_column_type(stmt, col) == SQLITE_NULL) return std::nullopt;
  return sqlite3_column_int64(stmt, col);
}

ErrorCode code_of(int rc) {
  switch (rc & 0xff) {
    case SQLITE_FULL:
      return ErrorCode::no_space;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_FORMAT:
      return ErrorCode::corruption;
    default:
      return ErrorCode::io;
  }
}

// One SQLite connection and its cached statements; used under `mutex` only.
struct Connection {
  std::mutex mutex;
  DbPtr db;  // declared before the statements so it is closed after they are finalized
  std::unordered_map<const char*, StmtPtr> statements;

  // The cached statement for `sql` (one of the k_sql_* constants), or nullptr with `rc` set.
  sqlite3_stmt* statement(const char* sql, int& rc) {
    auto it = statements.find(sql);
    if (it != statements.end()) return it->second.get();
    StmtPtr stmt;
    rc = agent::sqlite::prepare(db.get(), sql, stmt, SQLITE_PREPARE_PERSISTENT);
    if (rc != SQLITE_OK) return nullptr;
    return statements.emplace(sql, std::move(stmt)).first->second.get();
  }
};

// The migration's `capped` for rows kept before version 3: an unauthenticated reason, or a
// device the node does not know. The reasons are our constants, not input.
std::string migrate_2_capped_sql() {
  std::string reasons;
  for (RejectReason reason : k_unauthenticated_reasons)
    reasons += fmt::format("{}'{}'", reasons.empty() ? "" : ", ", to_string(reason));
  return fmt::format(
      "UPDATE rejections SET capped = (reason IN ({}) OR device NOT IN (SELECT device FROM keys));",
      reasons);
}

class SqliteStore final : public Store {
 public:
  SqliteStore(fs::path path, const RejectionLimits& limits, StoreOpen mode)
      : m_path(std::move(path)), m_limits(limits), m_mode(mode) {}

  Status open() {
    const int create = m_mode == StoreOpen::create_if_missing ? SQLITE_OPEN_CREATE : 0;
    if (auto s = open_connection(m_writer, SQLITE_OPEN_READWRITE | create); !s) return s;
    if (auto s = prepare_schema(); !s) return s;
    if (auto s = open_connection(m_reader, SQLITE_OPEN_READWRITE); !s) return s;
    if (auto s = open_connection(m_keys, SQLITE_OPEN_READWRITE); !s) return s;
    // The query connections never write; saying so turns a bug into an error, not a lock.
    if (auto s = exec(m_reader, "PRAGMA query_only=1", "configuring the query connection"); !s)
      return s;
    return exec(m_keys, "PRAGMA query_only=1", "configuring the key lookup connection");
  }

  // --- device registry ---

  Status add_device(std::string_view device, const agent::PublicJwk& jwk,
                    std::int64_t now_unix_ms) override {
    if (!agent::is_valid_device_id(device))
      return fail(ErrorCode::invalid_argument,
                  fmt::format("device id \"{}\": expected ^[a-z0-9][a-z0-9._-]{{0,63}}$ "
                              "(PROTOCOL §1)",
                              device));
    std::lock_guard lock(m_writer.mutex);
    return in_transaction([&]() -> Status {
      auto existing = find_key_locked(m_writer, jwk.kid);
      if (!existing) return std::unexpected(existing.error());
      if (existing->has_value()) {
        const DeviceKeyRecord& record = **existing;
        if (record.device != device)
          return fail(ErrorCode::rejected,
                      fmt::format("kid {} already belongs to device \"{}\"; a key signs for one "
                                  "device only: generate a new key for \"{}\"",
                                  jwk.kid, record.device, device));
        if (record.revoked_unix_ms)
          return fail(
              ErrorCode::rejected,
              fmt::format("kid {} of device \"{}\" was revoked at {}; a revoked key "
                          "cannot be added again: generate a new key",
                          jwk.kid, device, agent::format_rfc3339_ms(*record.revoked_unix_ms)));
        return {};
      }
      return write(m_writer, k_sql_insert_key, "adding a device key", jwk.kid, device,
                   agent::base64url_encode(jwk.x), now_unix_ms);
    });
  }

  Status revoke_device(std::string_view device, std::int64_t now_unix_ms) override {
    std::lock_guard lock(m_writer.mutex);
    return in_transaction([&]() -> Status {
      const char* what = "revoking a device";
      auto keys = only_row(
          m_writer, k_sql_count_keys, what, [](Cursor& row) { return row.int64(0); }, device);
      if (!keys) return std::unexpected(keys.error());
      if (*keys == 0)
        return fail(ErrorCode::not_found,
                    fmt::format("device \"{}\" has no key in the registry; see `reflow-ingest "
                                "device list`",
                                device));
      // Keys revoked earlier keep their time: events between the two revocations stay rejected.
      return write(m_writer, k_sql_revoke_keys, what, device, now_unix_ms);
    });
  }

  Result<std::optional<DeviceKeyRecord>> find_key(std::string_view kid) override {
    // Not the writer: verifying the next batch looks keys up while put() holds the writer
    // through its commit (WAL: this reads the last committed state without waiting for it).
    std::lock_guard lock(m_keys.mutex);
    return find_key_locked(m_keys, kid);
  }

  Result<std::vector<DeviceKeyRecord>> list_keys() override {
    std::lock_guard lock(m_reader.mutex);
    std::vector<DeviceKeyRecord> out;
    auto listed = each_row(m_reader,
                           "SELECT kid, device, x, added_ms, revoked_ms FROM keys "
                           "ORDER BY device, added_ms, kid",
                           "listing device keys", [&](Cursor& row) -> Status {
                             auto record = key_from_row(row.get(), row.text(0), 1);
                             if (!record) return std::unexpected(record.error());
                             out.push_back(std::move(*record));
                             return {};
                           });
    if (!listed) return std::unexpected(listed.error());
    return out;
  }

  // --- ingest ---

  Result<std::vector<PutResult>> put(std::span<const Incoming> batch,
                                     std::int64_t now_unix_ms) override {
    if (auto s = put_core::check_batch(batch); !s) return std::unexpected(s.error());
    std::lock_guard lock(m_writer.mutex);
    std::vector<PutResult> results;
    Status done = in_transaction([&]() -> Status {
      Rows rows(*this);
      auto stored = put_core::put(rows, batch, now_unix_ms, m_limits);
      if (!stored) return std::unexpected(stored.error());
      results = std::move(*stored);
      return {};
    });
    if (!done) return std::unexpected(done.error());
    return results;
  }

  Result<std::optional<AckPoint>> ack_point(std::string_view device) override {
    std::lock_guard lock(m_writer.mutex);
    return first_row(
        m_writer, k_sql_ack_point, "reading the ack point",
        [](Cursor& row) {
          return AckPoint{row.text(0), row.int64(1)};
        },
        device);
  }

  // --- queries ---

  Status for_each_event(const EventFilter& filter,
                        const std::function<bool(const StoredEvent&)>& fn) override {
    std::lock_guard lock(m_reader.mutex);
    // Held events (beyond `contiguous`: their chain does not reach seq 1 yet) are left out.
    // Only the filters that are set appear in the SQL, so the planner can use their indexes
    // (events_recorded, events_action) and sort just the matching rows. Without such a filter,
    // CROSS JOIN makes streams the outer loop: rows then come in the wanted order straight from
    // the indexes, with no sort of a whole device's payloads.
    const bool narrowed = filter.since_unix_ms || filter.action || filter.until_unix_ms;
    std::string sql = fmt::format(
        "SELECT e.device, e.stream, e.seq, e.event_id, e.action, e.kid, e.recorded_ms, "
        "e.received_ms, e.envelope FROM streams s {} events e "
        "ON e.device = s.device AND e.stream = s.stream WHERE e.seq <= s.contiguous",
        narrowed ? "JOIN" : "CROSS JOIN");
    if (filter.device) sql += " AND s.device = ?1";
    if (filter.since_unix_ms) sql += " AND e.recorded_ms >= ?2";
    if (filter.action) sql += " AND e.action = ?3";
    if (filter.until_unix_ms) sql += " AND e.recorded_ms < ?4";
    // Keyset paging: the row value of the order below, compared with the cursor's.
    if (filter.after)
      sql +=
          " AND (s.device, s.first_seen_ms, s.id, e.seq) > (SELECT c.device, c.first_seen_ms, "
          "c.id, ?7 FROM streams c WHERE c.device = ?5 AND c.stream = ?6)";
    sql += " ORDER BY s.device, s.first_seen_ms, s.id, e.seq";
    std::optional<std::string> after_device;
    std::optional<std::string> after_stream;
    std::optional<std::int64_t> after_seq;
    if (filter.after) {
      after_device = filter.after->device;
      after_stream = filter.after->stream;
      after_seq = filter.after->seq;
    }
    // An unset filter binds NULL to a parameter its SQL does not have, which SQLite ignores.
    StoredEvent event;
    return each_row(
        m_reader, sql.c_str(), "querying events",
        [&](Cursor& row) -> Result<bool> {
          event.device = row.text(0);
          event.stream = row.text(1);
          event.seq = row.int64(2);
          event.id = row.text(3);
          event.action = row.text(4);
          event.kid = row.text(5);
          event.recorded_unix_ms = row.int64(6);
          event.received_unix_ms = row.int64(7);
          event.envelope = row.text(8);
          // Stored only after verification, so the envelope parses; a failure means the file
          // was changed behind our back.
          auto parsed = agent::jws_parse(event.envelope);
          if (!parsed)
            return fail(ErrorCode::corruption,
                        fmt::format("ingest store {}: event {}/{}/{}: {}", m_path.string(),
                                    event.device, event.stream, event.seq, parsed.error().message));
          event.payload = std::move(parsed->payload);
          return fn(event);
        },
        filter.device, filter.since_unix_ms, filter.action, filter.until_unix_ms, after_device,
        after_stream, after_seq);
  }

  Status for_each_rejection(std::optional<std::string_view> device,
                            const std::function<bool(const StoredRejection&)>& fn) override {
    std::lock_guard lock(m_reader.mutex);
    std::string sql =
        "SELECT device, topic, reason, detail, stream, seq, received_ms, envelope, last_seen_ms, "
        "count FROM rejections";
    if (device) sql += " WHERE device = ?1";
    sql += " ORDER BY id";
    StoredRejection rejection;
    return each_row(
        m_reader, sql.c_str(), "querying rejections",
        [&](Cursor& row) -> Result<bool> {
          sqlite3_stmt* s = row.get();
          rejection.device = row.text(0);
          rejection.topic = row.text(1);
          const std::string reason = row.text(2);
          auto parsed = reason_from_name(reason);
          if (!parsed)
            return fail(ErrorCode::corruption,
                        fmt::format("ingest store {}: rejection with unknown reason \"{}\"",
                                    m_path.string(), reason));
          rejection.reason = *parsed;
          rejection.detail = row.text(3);
          rejection.stream = column_optional_text(s, 4);
          rejection.seq = column_optional_int(s, 5);
          rejection.received_unix_ms = row.int64(6);
          rejection.envelope = row.text(7);
          rejection.last_seen_unix_ms = row.int64(8);
          rejection.count = row.int64(9);
          return fn(rejection);
        },
        device);
  }

  // --- the export ledger ---

  Result<std::vector<LedgerEntry>> ledger_entries(std::string_view server) override {
    std::lock_guard lock(m_writer.mutex);
    const char* what = "reading the export ledger";
    StmtPtr read;
    int rc = prepare(m_writer,
                     "SELECT kind, ref, recorded, server_id, note, event_id, creates, intent_ms, "
                     "recorded_ms FROM export_ledger WHERE server = ?1 ORDER BY kind, ref",
                     read);
    if (rc != SQLITE_OK) return error(m_writer, rc, what);
    bind_text(read.get(), 1, server);
    std::vector<LedgerEntry> out;
    while ((rc = sqlite3_step(read.get())) == SQLITE_ROW) {
      LedgerEntry e;
      e.server = std::string(server);
      const std::string kind = column_text(read.get(), 0);
      e.kind = kind == "process"    ? LedgerKind::process
               : kind == "resource" ? LedgerKind::resource
                                    : LedgerKind::event;
      e.ref = column_text(read.get(), 1);
      e.recorded = sqlite3_column_int64(read.get(), 2) != 0;
      e.server_id = column_text(read.get(), 3);
      e.note = column_text(read.get(), 4);
      e.event_id = column_text(read.get(), 5);
      e.creates = column_text(read.get(), 6);
      e.intent_unix_ms = sqlite3_column_int64(read.get(), 7);
      e.recorded_unix_ms = sqlite3_column_int64(read.get(), 8);
      out.push_back(std::move(e));
    }
    if (rc != SQLITE_DONE) return error(m_writer, rc, what);
    return out;
  }

  Status ledger_intent(const LedgerEntry& entry, std::int64_t now_unix_ms) override {
    std::lock_guard lock(m_writer.mutex);
    return in_transaction([&]() -> Status {
      return ledger_insert(entry.server, entry.kind, entry.ref, false, "", entry.note,
                           entry.event_id, entry.creates, now_unix_ms, "writing an export intent");
    });
  }

  Status ledger_record(std::string_view server, LedgerKind kind, std::string_view ref,
                       std::string_view server_id, std::string_view created_resource_id,
                       std::int64_t now_unix_ms) override {
    std::lock_guard lock(m_writer.mutex);
    const char* what = "recording an export answer";
    return in_transaction([&]() -> Status {
      StmtPtr update;
      int rc = prepare(m_writer,
                       "UPDATE export_ledger SET recorded = 1, server_id = ?4, recorded_ms = ?5 "
                       "WHERE server = ?1 AND kind = ?2 AND ref = ?3 AND recorded = 0 "
                       "RETURNING creates, event_id",
                       update);
      if (rc != SQLITE_OK) return error(m_writer, rc, what);
      bind_text(update.get(), 1, server);
      bind_text(update.get(), 2, to_string(kind));
      bind_text(update.get(), 3, ref);
      bind_text(update.get(), 4, server_id);
      sqlite3_bind_int64(update.get(), 5, now_unix_ms);
      rc = sqlite3_step(update.get());
      if (rc == SQLITE_DONE)
        return fail(ErrorCode::not_found,
                    fmt::format("ingest store {}: no export intent for {} {} at {}",
                                m_path.string(), to_string(kind), ref, server));
      if (rc != SQLITE_ROW) return error(m_writer, rc, what);
      const std::string creates = column_text(update.get(), 0);
      const std::string event_id = column_text(update.get(), 1);
      if ((rc = sqlite3_step(update.get())) != SQLITE_DONE) return error(m_writer, rc, what);
      update.reset();
      if (created_resource_id.empty() || creates.empty()) return {};
      // A resource the ledger already holds keeps its first id (the builder never creates one
      // twice; this keeps a recorded answer from being lost over it).
      auto s = ledger_insert(server, LedgerKind::resource, creates, true, created_resource_id, "",
                             event_id, "", now_unix_ms, what);
      if (!s && s.error().code != ErrorCode::rejected) return s;
      return {};
    });
  }

  Status ledger_forget(std::string_view server, LedgerKind kind, std::string_view ref) override {
    std::lock_guard lock(m_writer.mutex);
    const char* what = "dropping an export intent";
    return in_transaction([&]() -> Status {
      StmtPtr erase;
      int rc = prepare(m_writer,
                       "DELETE FROM export_ledger "
                       "WHERE server = ?1 AND kind = ?2 AND ref = ?3 AND recorded = 0",
                       erase);
      if (rc != SQLITE_OK) return error(m_writer, rc, what);
      bind_text(erase.get(), 1, server);
      bind_text(erase.get(), 2, to_string(kind));
      bind_text(erase.get(), 3, ref);
      if ((rc = sqlite3_step(erase.get())) != SQLITE_DONE) return error(m_writer, rc, what);
      if (sqlite3_changes(m_writer.db.get()) == 0)
        return fail(ErrorCode::not_found,
                    fmt::format("ingest store {}: no export intent for {} {} at {}",
                                m_path.string(), to_string(kind), ref, server));
      return {};
    });
  }

  Result<LogCheckpoint> log_checkpoint() override {
    return with_log_snapshot(
        [](std::uint64_t size,
           const agent::merkle::PerfectSubtree& lookup) -> Result<LogCheckpoint> {
          return LogCheckpoint{size, agent::merkle::root(size, lookup)};
        });
  }

  Result<LogCheckpoint> log_checkpoint_at(std::uint64_t size) override {
    return with_log_snapshot(
        [&](std::uint64_t log_size,
            const agent::merkle::PerfectSubtree& lookup) -> Result<LogCheckpoint> {
          if (size > log_size) return beyond_log(size, log_size);
          return LogCheckpoint{size, agent::merkle::root(size, lookup)};
        });
  }

  Result<std::vector<LogEntry>> log_entries(std::string_view event_id) override {
    std::lock_guard lock(m_reader.mutex);
    const char* what = "reading the log";
    auto cursor = rows(m_reader, k_sql_log_entries, what, event_id);
    if (!cursor) return std::unexpected(cursor.error());
    std::vector<LogEntry> entries;
    while (true) {
      auto row = next(m_reader, *cursor, what);
      if (!row) return std::unexpected(row.error());
      if (!*row) break;
      LogEntry entry;
      entry.index = static_cast<std::uint64_t>(cursor->int64(0));
      auto leaf = column_hash(cursor->get(), 1, fmt::format("leaf {}", entry.index));
      if (!leaf) return std::unexpected(leaf.error());
      entry.leaf = *leaf;
      entry.device = cursor->text(2);
      entry.stream = cursor->text(3);
      entry.seq = cursor->int64(4);
      entries.push_back(std::move(entry));
    }
    return entries;
  }

  Result<std::optional<LogInclusion>> log_inclusion(std::string_view device,
                                                    std::string_view stream,
                                                    std::int64_t seq) override {
    return with_log_snapshot(
        [&](std::uint64_t log_size,
            const agent::merkle::PerfectSubtree& lookup) -> Result<std::optional<LogInclusion>> {
          LogInclusion out;
          auto leaf = first_row(
              m_reader, k_sql_log_entry_of, "reading the log",
              [&](Cursor& row) {
                out.entry.index = static_cast<std::uint64_t>(row.int64(0));
                return column_hash(row.get(), 1, fmt::format("leaf {}", out.entry.index));
              },
              device, stream, seq);
          if (!leaf) return std::unexpected(leaf.error());
          if (!*leaf) return std::optional<LogInclusion>{};
          out.entry.leaf = **leaf;
          out.entry.device = std::string(device);
          out.entry.stream = std::string(stream);
          out.entry.seq = seq;
          auto proof = agent::merkle::inclusion_proof(out.entry.index, log_size, lookup);
          if (!proof) return std::unexpected(proof.error());
          out.proof = std::move(*proof);
          out.checkpoint = {log_size, agent::merkle::root(log_size, lookup)};
          return out;
        });
  }

  Result<std::optional<LogAudit>> log_audit(std::string_view device, std::string_view stream,
                                            std::int64_t seq, std::uint64_t size) override {
    return with_log_snapshot(
        [&](std::uint64_t log_size,
            const agent::merkle::PerfectSubtree& lookup) -> Result<std::optional<LogAudit>> {
          if (size > log_size) return beyond_log(size, log_size);
          LogAudit out;
          auto leaf = first_row(
              m_reader, k_sql_log_audit_of, "reading the log",
              [&](Cursor& row) {
                out.entry.index = static_cast<std::uint64_t>(row.int64(0));
                out.envelope_leaf = agent::merkle::leaf_hash(row.text(2));
                return column_hash(row.get(), 1, fmt::format("leaf {}", out.entry.index));
              },
              device, stream, seq);
          if (!leaf) return std::unexpected(leaf.error());
          if (!*leaf || out.entry.index >= size) return std::optional<LogAudit>{};
          out.entry.leaf = **leaf;
          out.entry.device = std::string(device);
          out.entry.stream = std::string(stream);
          out.entry.seq = seq;
          auto proof = agent::merkle::inclusion_proof(out.entry.index, size, lookup);
          if (!proof) return std::unexpected(proof.error());
          out.proof = std::move(*proof);
          return out;
        });
  }

  Result<std::vector<agent::merkle::Hash>> log_inclusion_proof(std::uint64_t index,
                                                               std::uint64_t size) override {
    return with_log_snapshot(
        [&](std::uint64_t log_size, const agent::merkle::PerfectSubtree& lookup)
            -> Result<std::vector<agent::merkle::Hash>> {
          if (size > log_size) return beyond_log(size, log_size);
          return agent::merkle::inclusion_proof(index, size, lookup);
        });
  }

  Result<std::vector<agent::merkle::Hash>> log_consistency_proof(std::uint64_t old_size,
                                                                 std::uint64_t size) override {
    return with_log_snapshot(
        [&](std::uint64_t log_size, const agent::merkle::PerfectSubtree& lookup)
            -> Result<std::vector<agent::merkle::Hash>> {
          if (size > log_size) return beyond_log(size, log_size);
          return agent::merkle::consistency_proof(old_size, size, lookup);
        });
  }

  Result<std::vector<DeviceStats>> stats() override {
    std::lock_guard lock(m_reader.mutex);
    // One read transaction: the three queries see the same commit.
    if (auto s = exec(m_reader, "BEGIN", "reading stats"); !s) return std::unexpected(s.error());
    auto result = stats_locked();
    (void)exec(m_reader, "COMMIT", "reading stats");
    return result;
  }

 private:
  Result<std::vector<DeviceStats>> stats_locked() {
    std::map<std::string, DeviceStats> devices;
    auto device_entry = [&](std::string name) -> DeviceStats& {
      auto [it, inserted] = devices.try_emplace(name);
      if (inserted) it->second.device = std::move(name);
      return it->second;
    };
    auto bump_seen = [](DeviceStats& d, std::int64_t ms) {
      if (!d.last_seen_unix_ms || *d.last_seen_unix_ms < ms) d.last_seen_unix_ms = ms;
    };
    const char* what = "reading stats";
    auto keys =
        each_row(m_reader, "SELECT device, count(*), count(revoked_ms) FROM keys GROUP BY device",
                 what, [&](Cursor& row) -> Status {
                   DeviceStats& d = device_entry(row.text(0));
                   d.registered = true;
                   d.revoked = row.int64(1) == row.int64(2);
                   return {};
                 });
    if (!keys) return std::unexpected(keys.error());

    auto streams =
        each_row(m_reader,
                 "SELECT device, stream, events, contiguous, max_seq, chain_broken, first_seen_ms, "
                 "last_seen_ms FROM streams ORDER BY device, first_seen_ms, id",
                 what, [&](Cursor& row) -> Status {
                   DeviceStats& d = device_entry(row.text(0));
                   StreamStats st;
                   st.stream = row.text(1);
                   st.events = row.int64(2);
                   st.contiguous = row.int64(3);
                   st.max_seq = row.int64(4);
                   // Both are ≥ 0 and events ≤ max_seq, so this cannot overflow; the sums below
                   // could.
                   st.gaps = std::max<std::int64_t>(0, st.max_seq - st.events);
                   st.chain_intact = row.int64(5) == 0;
                   st.first_seen_unix_ms = row.int64(6);
                   st.last_seen_unix_ms = row.int64(7);
                   d.events += st.events;
                   d.gaps = saturating_add(d.gaps, st.gaps);
                   d.chain_intact = d.chain_intact && st.chain_intact;
                   bump_seen(d, st.last_seen_unix_ms);
                   d.streams.push_back(std::move(st));
                   return {};
                 });
    if (!streams) return std::unexpected(streams.error());

    // Kept rows (each with its repeats), then what the caps only counted; each split by
    // whether it was last seen before the device's first key was added.
    auto rejections = each_row(
        m_reader,
        "WITH registered AS (SELECT device, min(added_ms) AS at FROM keys GROUP BY device) "
        "SELECT r.device, r.reason, sum(r.count), max(r.last_seen_ms), 0, "
        " coalesce(r.last_seen_ms < g.at, 0) AS before "
        "FROM rejections r LEFT JOIN registered g ON g.device = r.device "
        "GROUP BY r.device, r.reason, before "
        "UNION ALL SELECT n.device, n.reason, n.count, n.last_seen_ms, 1, "
        " coalesce(n.last_seen_ms < g.at, 0) "
        "FROM rejections_not_kept n LEFT JOIN registered g ON g.device = n.device",
        what, [&](Cursor& row) -> Status {
          DeviceStats& d = device_entry(row.text(0));
          const std::int64_t count = row.int64(2);
          auto& counts = row.int64(5) != 0 ? d.rejections_before_registration : d.rejections;
          std::int64_t& by_reason = counts[row.text(1)];
          by_reason = saturating_add(by_reason, count);
          if (row.int64(4) != 0)
            d.rejections_not_kept = saturating_add(d.rejections_not_kept, count);
          bump_seen(d, row.int64(3));
          return {};
        });
    if (!rejections) return std::unexpected(rejections.error());

    std::vector<DeviceStats> out;
    out.reserve(devices.size());
    for (auto& [name, d] : devices)
      out.push_back(std::move(d));
    return out;
  }

  // put_core's rows: the writer's cached statements, inside put()'s transaction.
  class Rows final : public put_core::PutRows {
   public:
    explicit Rows(SqliteStore& store) : m_store(store), m_c(store.m_writer) {}

    Result<std::optional<put_core::StreamRow>> load_stream(const std::string& device,
                                                           const std::string& stream) override {
      return m_store.first_row(
          m_c, k_sql_load_stream, "reading a stream",
          [](Cursor& row) {
            return put_core::StreamRow{row.int64(0), row.int64(1), row.int64(2),      row.int64(3),
                                       row.int64(4), row.int64(5), row.int64(6) != 0, row.int64(7)};
          },
          device, stream);
    }

    Result<std::int64_t> insert_stream(const std::string& device, const std::string& stream,
                                       std::int64_t now_unix_ms) override {
      if (auto s = m_store.write(m_c, k_sql_insert_stream, "storing a stream", device, stream,
                                 now_unix_ms);
          !s)
        return std::unexpected(s.error());
      return sqlite3_last_insert_rowid(m_c.db.get());
    }

    Status update_stream(const put_core::StreamRow& st) override {
      return m_store.write(m_c, k_sql_update_stream, "updating a stream", st.row_id,
                           st.last_seen_ms, st.contiguous, st.max_seq, st.events, st.chain_broken,
                           st.last_event);
    }

    Result<std::optional<put_core::ChainLink>> find_event(const std::string& device,
                                                          const std::string& stream,
                                                          std::int64_t seq) override {
      return m_store.first_row(
          m_c, k_sql_find_event, "reading an event",
          [](Cursor& row) {
            return put_core::ChainLink{row.text(0), row.text(1), row.int64(2), row.int64(3)};
          },
          device, stream, seq);
    }

    Result<std::int64_t> contiguous_from(const std::string& device, const std::string& stream,
                                         std::int64_t from) override {
      const char* what = "reading a stream";
      auto cursor = m_store.rows(m_c, k_sql_seqs_after, what, device, stream, from);
      if (!cursor) return std::unexpected(cursor.error());
      std::int64_t reach = from;
      while (true) {
        auto row = m_store.next(m_c, *cursor, what);
        if (!row) return std::unexpected(row.error());
        if (!*row || cursor->int64(0) != reach + 1) return reach;
        ++reach;
      }
    }

    Result<std::int64_t> max_seq(const std::string& device, const std::string& stream) override {
      return m_store.only_row(
          m_c, k_sql_max_seq, "reading a stream", [](Cursor& row) { return row.int64(0); }, device,
          stream);
    }

    Result<std::int64_t> insert_event(const VerifiedEvent& e, std::int64_t now_unix_ms) override {
      const auto prev = e.prev.empty() ? std::nullopt : std::optional<std::string_view>(e.prev);
      if (auto s = m_store.write(m_c, k_sql_insert_event, "storing an event", e.device, e.stream,
                                 e.seq, e.recorded_unix_ms, now_unix_ms, e.action,
                                 e.signing_input_sha256, prev, e.id, e.kid, e.envelope);
          !s)
        return std::unexpected(s.error());
      return sqlite3_last_insert_rowid(m_c.db.get());
    }

    Result<std::string> delete_event(std::int64_t row_id) override {
      auto envelope = m_store.only_row(
          m_c, k_sql_event_envelope, "reading a held event",
          [](Cursor& row) { return row.text(0); }, row_id);
      if (!envelope) return std::unexpected(envelope.error());
      if (auto s = m_store.write(m_c, k_sql_delete_event, "removing a held event", row_id); !s)
        return std::unexpected(s.error());
      return std::move(*envelope);
    }

    Result<std::optional<std::int64_t>> revoked_ms(const std::string& kid) override {
      auto key = m_store.find_key_locked(m_c, kid);
      if (!key) return std::unexpected(key.error());
      if (!key->has_value()) return std::nullopt;
      return (*key)->revoked_unix_ms;
    }

    Result<bool> device_registered(const std::string& device) override {
      auto row = m_store.first_row(
          m_c, k_sql_device_registered, "looking up a device", [](Cursor&) { return true; },
          device);
      if (!row) return std::unexpected(row.error());
      return row->has_value();
    }

    Result<bool> repeat_rejection(std::string_view topic, std::string_view envelope_sha256,
                                  std::int64_t now_unix_ms, RejectReason reason,
                                  std::string_view detail) override {
      if (auto s = m_store.write(m_c, k_sql_repeat_rejection, "storing a rejection", topic,
                                 envelope_sha256, now_unix_ms, to_string(reason), detail);
          !s)
        return std::unexpected(s.error());
      return sqlite3_changes(m_c.db.get()) > 0;
    }

    Result<put_core::CappedUsage> capped_usage(const std::string& device) override {
      return m_store.only_row(m_c, k_sql_capped_usage, "counting rejections", capped_row, device);
    }

    Result<put_core::CappedUsage> capped_total() override {
      return m_store.only_row(m_c, k_sql_capped_total, "counting rejections", capped_row);
    }

    Status count_not_kept(std::string_view device, RejectReason reason, std::int64_t bytes,
                          std::int64_t now_unix_ms) override {
      return m_store.write(m_c, k_sql_not_kept, "counting a rejection", device, to_string(reason),
                           bytes, now_unix_ms);
    }

    Status insert_rejection(const put_core::RejectionRow& r) override {
      // A BLOB: an oversized or malformed envelope is any bytes a client sent, kept exactly.
      return m_store.write(m_c, k_sql_insert_rejection, "storing a rejection", r.received_ms,
                           r.topic, r.device, to_string(r.reason), r.detail, r.stream, r.seq,
                           Blob{r.envelope}, r.envelope_sha256, r.capped);
    }

    Result<std::uint64_t> log_size() override {
      auto n = m_store.query_int(k_sql_log_size);
      if (!n) return std::unexpected(n.error());
      return static_cast<std::uint64_t>(*n);
    }

    Status insert_log_leaf(std::uint64_t index, std::int64_t event_row,
                           const agent::merkle::Hash& hash) override {
      return m_store.write(m_c, k_sql_log_insert_leaf, "appending to the log",
                           static_cast<std::int64_t>(index), event_row, hash_blob(hash));
    }

    Status insert_log_node(unsigned level, std::uint64_t index,
                           const agent::merkle::Hash& hash) override {
      return m_store.write(m_c, k_sql_log_insert_node, "appending to the log", std::int64_t{level},
                           static_cast<std::int64_t>(index), hash_blob(hash));
    }

    Result<agent::merkle::Hash> log_hash(unsigned level, std::uint64_t index) override {
      return m_store.log_hash(m_c, level, index);
    }

   private:
    // A row of k_sql_capped_usage or k_sql_capped_total: count(*), total(length(envelope)).
    static put_core::CappedUsage capped_row(Cursor& row) {
      return put_core::CappedUsage{row.int64(0),
                                   static_cast<std::int64_t>(sqlite3_column_double(row.get(), 1))};
    }

    SqliteStore& m_store;
    Connection& m_c;
  };
  // The perfect subtree (level, index) of the log: a leaf hash at level 0.
  Result<agent::merkle::Hash> log_hash(Connection& c, unsigned level, std::uint64_t index) {
    auto read = [&](Cursor& row) {
      return column_hash(row.get(), 0, fmt::format("subtree ({}, {})", level, index));
    };
    const auto at = static_cast<std::int64_t>(index);
    auto hash =
        level == 0 ? first_row(c, k_sql_log_leaf, "reading the log", read, at)
                   : first_row(c, k_sql_log_node, "reading the log", read, std::int64_t{level}, at);
    if (!hash) return std::unexpected(hash.error());
    if (!*hash)
      return fail(ErrorCode::corruption,
                  fmt::format("ingest store {}: the log has no hash for subtree ({}, {})",
                              m_path.string(), level, index));
    return **hash;
  }

  // Column `col` of the current row as a log hash; corruption when it is not 32 bytes.
  Result<agent::merkle::Hash> column_hash(sqlite3_stmt* stmt, int col, std::string_view what) {
    agent::merkle::Hash hash{};
    if (sqlite3_column_bytes(stmt, col) != static_cast<int>(hash.size()))
      return fail(ErrorCode::corruption,
                  fmt::format("ingest store {}: the log's hash for {} is not 32 bytes",
                              m_path.string(), what));
    std::memcpy(hash.data(), sqlite3_column_blob(stmt, col), hash.size());
    return hash;
  }

  static Blob hash_blob(const agent::merkle::Hash& hash) {
    return Blob{std::string_view(reinterpret_cast<const char*>(hash.data()), hash.size())};
  }

  // Runs `body(size, lookup)` in one read transaction of the reader connection: the log's size
  // and its subtrees from one snapshot, even while `run` appends.
  template <typename Body>
  auto with_log_snapshot(Body&& body)
      -> decltype(body(std::uint64_t{}, agent::merkle::PerfectSubtree{})) {
    std::lock_guard lock(m_reader.mutex);
    sqlite3* db = m_reader.db.get();
    if (int rc = sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr); rc != SQLITE_OK)
      return error(m_reader, rc, "reading the log");
    struct EndOnExit {
      sqlite3* db;
      ~EndOnExit() {
        if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
      }
    } end{db};
    std::int64_t size = 0;
    if (int rc = agent::sqlite::query_int(db, k_sql_log_size, size); rc != SQLITE_OK)
      return error(m_reader, rc, "reading the log");
    std::optional<agent::Error> failed;
    agent::merkle::PerfectSubtree lookup = [&](unsigned level, std::uint64_t index) {
      auto hash = log_hash(m_reader, level, index);
      if (hash) return *hash;
      if (!failed) failed = hash.error();
      return agent::merkle::Hash{};
    };
    auto result = body(static_cast<std::uint64_t>(size), lookup);
    if (failed) return std::unexpected(*failed);
    return result;
  }

  std::unexpected<agent::Error> beyond_log(std::uint64_t size, std::uint64_t log_size) const {
    return fail(ErrorCode::invalid_argument,
                fmt::format("the log has {} leaves; there is no tree of {}", log_size, size));
  }

  Result<std::optional<DeviceKeyRecord>> find_key_locked(Connection& c, std::string_view kid) {
    return first_row(
        c, k_sql_find_key, "looking up a key",
        [&](Cursor& row) { return key_from_row(row.get(), std::string(kid), 0); }, kid);
  }

  // Columns from `first`: device, x, added_ms, revoked_ms.
  Result<DeviceKeyRecord> key_from_row(sqlite3_stmt* stmt, std::string kid, int first) {
    DeviceKeyRecord record;
    record.device = column_text(stmt, first);
    const std::string x = column_text(stmt, first + 1);
    auto bytes = agent::base64url_decode(x);
    if (!bytes || bytes->size() != record.jwk.x.size())
      return fail(ErrorCode::corruption,
                  fmt::format("ingest store {}: key {} of device \"{}\" has a damaged public key "
                              "\"{}\"",
                              m_path.string(), kid, record.device, x));
    std::memcpy(record.jwk.x.data(), bytes->data(), record.jwk.x.size());
    record.jwk.kid = std::move(kid);
    record.added_unix_ms = sqlite3_column_int64(stmt, first + 2);
    record.revoked_unix_ms = column_optional_int(stmt, first + 3);
    return record;
  }

  // Runs `body` between BEGIN IMMEDIATE and COMMIT on the writer (locked by the caller); rolls
  // back when it fails, so a failed batch leaves nothing behind.
  template <typename Body>
  Status in_transaction(Body&& body) {
    sqlite3* db = m_writer.db.get();
    int rc = SQLITE_OK;
    // BEGIN IMMEDIATE takes the write lock up front: waiting for it honours the busy timeout,
    // whereas upgrading a read transaction later fails at once with SQLITE_BUSY.
    if ((rc = sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr)) != SQLITE_OK)
      return error(m_writer, rc, "starting a transaction");
    Status s = [&]() -> Status {
      try {
        return body();
      } catch (const std::exception& e) {
        return fail(ErrorCode::internal,
                    fmt::format("ingest store {}: {}", m_path.string(), e.what()));
      }
    }();
    if (s) {
      rc = sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
      if (rc == SQLITE_OK) return {};
      s = error(m_writer, rc, "committing");
    }
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    return s;
  }

  std::unexpected<agent::Error> error(Connection& c, int rc, std::string_view what) const {
    const ErrorCode code = code_of(rc);
    std::string advice;
    switch (code) {
      case ErrorCode::no_space:
        advice = "; free space on its file system";
        break;
      case ErrorCode::corruption:
        advice = "; the file is damaged: restore it from a backup";
        break;
      default:
        advice = "; check that the file and its directory are readable and writable";
        break;
    }
    return fail(code, fmt::format("ingest store {}: {}: {}{}", m_path.string(), what,
                                  agent::sqlite::error_detail(c.db.get(), rc), advice));
  }

  int prepare(Connection& c, const char* sql, StmtPtr& out) {
    return agent::sqlite::prepare(c.db.get(), sql, out);
  }

  // Runs the cached statement `sql` (a k_sql_* constant) on `c` with `args` bound to ?1, ?2, …
  // (agent::sqlite::bind_value): a write, whose rows are ignored. The error names `what`.
  template <typename... Args>
  Status write(Connection& c, const char* sql, std::string_view what, const Args&... args) {
    int rc = SQLITE_OK;
    sqlite3_stmt* stmt = c.statement(sql, rc);
    if (stmt == nullptr) return error(c, rc, what);
    if ((rc = agent::sqlite::run(stmt, args...)) != SQLITE_OK) return error(c, rc, what);
    return {};
  }

  // The cached statement `sql` on `c` with `args` bound, to step through its rows (next()).
  template <typename... Args>
  Result<Cursor> rows(Connection& c, const char* sql, std::string_view what, Args&&... args) {
    int rc = SQLITE_OK;
    sqlite3_stmt* stmt = c.statement(sql, rc);
    if (stmt == nullptr) return error(c, rc, what);
    return Cursor(stmt, std::forward<Args>(args)...);
  }

  // Runs `sql`, prepared for this call only (its text varies, or it runs rarely), on `c` with
  // `args` bound, and calls `each(row)` at each row; `each` returns a Status, or a Result<bool>
  // that is false to stop early. The error names `what`.
  template <typename Each, typename... Args>
  Status each_row(Connection& c, const char* sql, std::string_view what, Each&& each,
                  Args&&... args) {
    StmtPtr stmt;
    if (int rc = prepare(c, sql, stmt); rc != SQLITE_OK) return error(c, rc, what);
    Cursor cursor(stmt.get(), std::forward<Args>(args)...);  // reset before stmt is finalized
    while (true) {
      auto row = next(c, cursor, what);
      if (!row) return std::unexpected(row.error());
      if (!*row) return {};
      auto go = each(cursor);
      if constexpr (std::is_same_v<decltype(go), Status>) {
        if (!go) return go;
      } else {
        if (!go) return std::unexpected(go.error());
        if (!*go) return {};
      }
    }
  }

  // Steps `cursor` (of `c`): true at a row, false past the last, the error naming `what` else.
  Result<bool> next(Connection& c, Cursor& cursor, std::string_view what) {
    const int rc = cursor.step();
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return error(c, rc, what);
  }

  // What `read(row)` makes of a row: T, also when it returns Result<T> (its error is passed on).
  template <typename T>
  struct RowOf {
    using type = T;
  };
  template <typename T>
  struct RowOf<Result<T>> {
    using type = T;
  };
  template <typename Read>
  using RowType = typename RowOf<std::invoke_result_t<Read&, Cursor&>>::type;

  // The first row of the cached statement `sql` on `c` with `args` bound, as `read(row)` makes
  // it (a T or a Result<T>); std::nullopt when there is no row. The error names `what`.
  template <typename Read, typename... Args>
  Result<std::optional<RowType<Read>>> first_row(Connection& c, const char* sql,
                                                 std::string_view what, Read&& read,
                                                 Args&&... args) {
    auto cursor = rows(c, sql, what, std::forward<Args>(args)...);
    if (!cursor) return std::unexpected(cursor.error());
    auto found = next(c, *cursor, what);
    if (!found) return std::unexpected(found.error());
    if (!*found) return std::optional<RowType<Read>>();
    auto row = read(*cursor);
    if constexpr (std::is_same_v<decltype(row), RowType<Read>>) {
      return std::optional<RowType<Read>>(std::move(row));
    } else {
      if (!row) return std::unexpected(row.error());
      return std::optional<RowType<Read>>(std::move(*row));
    }
  }

  // first_row for a query that always returns a row (an aggregate): its absence is an error.
  template <typename Read, typename... Args>
  Result<RowType<Read>> only_row(Connection& c, const char* sql, std::string_view what, Read&& read,
                                 Args&&... args) {
    auto row = first_row(c, sql, what, std::forward<Read>(read), std::forward<Args>(args)...);
    if (!row) return std::unexpected(row.error());
    if (!*row) return error(c, SQLITE_DONE, what);
    return std::move(**row);
  }

  Status exec(Connection& c, const char* sql, std::string_view what) {
    int rc = sqlite3_exec(c.db.get(), sql, nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return error(c, rc, what);
    return {};
  }

  Status open_connection(Connection& c, int flags) {
    if (int rc = agent::sqlite::open(m_path, flags, k_busy_timeout_ms, c.db); rc != SQLITE_OK)
      return fail(ErrorCode::io,
                  fmt::format("cannot open ingest store {}: {}; check that the "
                              "directory exists and is readable and writable",
                              m_path.string(), agent::sqlite::error_detail(c.db.get(), rc)));
    // Keep -wal and -shm when the last connection closes: a member of the reflow-ingest group
    // may read the store but not create files in its directory, and SQLite opens a WAL database
    // read-only only when those files exist (https://sqlite.org/wal.html#readonly).
    int persist = 1;
    sqlite3_file_control(c.db.get(), "main", SQLITE_FCNTL_PERSIST_WAL, &persist);
    return {};
  }

  Result<std::int64_t> query_int(const char* sql) {
    std::int64_t value = 0;
    if (int rc = agent::sqlite::query_int(m_writer.db.get(), sql, value); rc != SQLITE_OK)
      return error(m_writer, rc, "reading the schema");
    return value;
  }

  // What prepare_schema found in the file.
  enum class FileState { fresh, current, version_1, version_2, version_3, version_4 };

  // Our file: check its version, migrating an older one. An empty file: make the schema.
  // Anything else: refuse it.
  Status prepare_schema() {
    auto not_ours = [&](std::string why) {
      return fail(ErrorCode::corruption,
                  fmt::format("ingest store {}: {}; point data_dir at reflow-ingest's own "
                              "directory or move the file away",
                              m_path.string(), why));
    };
    // Reads the header twice: once to refuse a foreign file before changing anything in it (the
    // WAL switch writes), once inside the write lock in case another process just created it.
    auto inspect = [&]() -> Result<FileState> {
      auto app = query_int("PRAGMA application_id");
      if (!app) {
        if (app.error().code == ErrorCode::corruption) return not_ours("not an SQLite database");
        return std::unexpected(app.error());
      }
      auto version = query_int("PRAGMA user_version");
      if (!version) return std::unexpected(version.error());
      auto objects = query_int("SELECT count(*) FROM sqlite_master");
      if (!objects) return std::unexpected(objects.error());
      if (*app == k_application_id) {
        if (*version > k_schema_version)
          return not_ours(
              fmt::format("schema version {} is newer than this reflow-ingest "
                          "knows ({}); upgrade reflow-ingest",
                          *version, k_schema_version));
        if (*version == 1) return FileState::version_1;
        if (*version == 2) return FileState::version_2;
        if (*version == 3) return FileState::version_3;
        if (*version == 4) return FileState::version_4;
        if (*version != k_schema_version)
          return not_ours(fmt::format("unknown schema version {}", *version));
        return FileState::current;
      }
      if (*app == 0 && *objects == 0) return FileState::fresh;
      return not_ours(
          fmt::format("not a reflow-ingest database (application_id {:#x}, {} "
                      "schema objects)",
                      static_cast<std::uint32_t>(*app), *objects));
    };
    auto state = inspect();
    if (!state) return std::unexpected(state.error());

    // WAL lets `reflow-ingest events` read while `run` commits; FULL fsyncs every commit, because
    // the caller acks what put() returned and the agent then deletes it.
    std::string mode;
    if (int rc = agent::sqlite::enable_wal(m_writer.db.get(), mode); rc != SQLITE_OK)
      return error(m_writer, rc, "setting WAL mode");
    if (mode != "wal")
      return fail(ErrorCode::io, fmt::format("ingest store {}: cannot switch to WAL mode "
                                             "(journal mode stays \"{}\")",
                                             m_path.string(), mode));
    if (auto s = exec(m_writer, "PRAGMA synchronous=FULL", "configuring"); !s) return s;
    const std::string limit =
        fmt::format("PRAGMA journal_size_limit={}", k_journal_size_limit_bytes);
    if (auto s = exec(m_writer, limit.c_str(), "configuring"); !s) return s;
    const std::string checkpoint =
        fmt::format("PRAGMA wal_autocheckpoint={}; PRAGMA cache_size=-{}",
                    k_wal_autocheckpoint_pages, k_writer_cache_kib);
    if (auto s = exec(m_writer, checkpoint.c_str(), "configuring"); !s) return s;
    if (*state == FileState::current) return {};

    return in_transaction([&]() -> Status {
      auto again = inspect();
      if (!again) return std::unexpected(again.error());
      if (*again == FileState::current) return {};
      if (*again == FileState::version_1) {
        // Rewrites the table once (SQLite 3.35+); the envelope keeps every payload.
        if (auto s = exec(m_writer, "ALTER TABLE events DROP COLUMN payload",
                          "migrating the schema from version 1");
            !s)
          return s;
      }
      if (*again != FileState::fresh) {
        if (*again != FileState::version_3 && *again != FileState::version_4) {
          if (auto s = migrate_rejections(); !s) return s;
        }
        if (*again != FileState::version_4) {
          if (auto s = build_log(); !s) return s;
        }
        if (auto s = exec(m_writer, k_ledger_sql, "adding the export ledger (schema version 5)");
            !s)
          return s;
        const std::string stamp = fmt::format("PRAGMA user_version={}", k_schema_version);
        return exec(m_writer, stamp.c_str(), "migrating the schema");
      }
      if (auto s = exec(m_writer, k_schema_sql, "creating the schema"); !s) return s;
      if (auto s = exec(m_writer, k_rejections_v3_sql, "creating the schema"); !s) return s;
      if (auto s = exec(m_writer, k_log_sql, "creating the schema"); !s) return s;
      if (auto s = exec(m_writer, k_ledger_sql, "creating the schema"); !s) return s;
      const std::string stamp = fmt::format("PRAGMA application_id={}; PRAGMA user_version={}",
                                            k_application_id, k_schema_version);
      return exec(m_writer, stamp.c_str(), "creating the schema");
    });
  }

  // Version 3 → 4: the log of every stored event, in the order stored (their rowids).
  Status build_log() {
    const char* what = "building the log (schema version 4)";
    if (auto s = exec(m_writer, k_log_sql, what); !s) return s;
    Rows rows(*this);
    std::uint64_t size = 0;
    return each_row(m_writer, k_sql_events_in_order, what, [&](Cursor& row) {
      return put_core::log_append(rows, size++, row.int64(0),
                                  agent::merkle::leaf_hash(row.text(1)));
    });
  }

  // Version 2 → 3: one row per (topic, envelope bytes) with its count.
  Status migrate_rejections() {
    const char* what = "migrating the rejections to schema version 3";
    if (auto s = exec(m_writer, k_migrate_2_columns_sql, what); !s) return s;
    StmtPtr update;
    if (int rc =
            prepare(m_writer, "UPDATE rejections SET envelope_sha256 = ?2 WHERE id = ?1", update);
        rc != SQLITE_OK)
      return error(m_writer, rc, what);
    auto hashed =
        each_row(m_writer, "SELECT id, envelope FROM rejections", what, [&](Cursor& row) -> Status {
          const std::string hash = agent::sha256_b64url(row.text(1));
          if (int rc = agent::sqlite::run(update.get(), row.int64(0), hash); rc != SQLITE_OK)
            return error(m_writer, rc, what);
          return {};
        });
    if (!hashed) return hashed;
    update.reset();
    if (auto s = exec(m_writer, k_migrate_2_collapse_sql, what); !s) return s;
    if (auto s = exec(m_writer, migrate_2_capped_sql().c_str(), what); !s) return s;
    return exec(m_writer, k_rejections_v3_sql, what);
  }

  // One export_ledger row, inside the caller's transaction. A row that exists is `rejected`.
  Status ledger_insert(std::string_view server, LedgerKind kind, std::string_view ref,
                       bool recorded, std::string_view server_id, std::string_view note,
                       std::string_view event_id, std::string_view creates, std::int64_t now_ms,
                       const char* what) {
    StmtPtr insert;
    int rc = prepare(m_writer,
                     "INSERT INTO export_ledger(server, kind, ref, recorded, server_id, note, "
                     "event_id, creates, intent_ms, recorded_ms) "
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                     insert);
    if (rc != SQLITE_OK) return error(m_writer, rc, what);
    bind_text(insert.get(), 1, server);
    bind_text(insert.get(), 2, to_string(kind));
    bind_text(insert.get(), 3, ref);
    sqlite3_bind_int64(insert.get(), 4, recorded ? 1 : 0);
    if (recorded)
      bind_text(insert.get(), 5, server_id);
    else
      sqlite3_bind_null(insert.get(), 5);
    bind_text(insert.get(), 6, note);
    bind_text(insert.get(), 7, event_id);
    bind_text(insert.get(), 8, creates);
    sqlite3_bind_int64(insert.get(), 9, now_ms);
    if (recorded)
      sqlite3_bind_int64(insert.get(), 10, now_ms);
    else
      sqlite3_bind_null(insert.get(), 10);
    rc = sqlite3_step(insert.get());
    if ((rc & 0xff) == SQLITE_CONSTRAINT)
      return fail(ErrorCode::rejected,
                  fmt::format("ingest store {}: the export ledger already holds {} {} for {} "
                              "(is another `export --post` running?)",
                              m_path.string(), to_string(kind), ref, server));
    if (rc != SQLITE_DONE) return error(m_writer, rc, what);
    return {};
  }

  fs::path m_path;
  RejectionLimits m_limits;
  StoreOpen m_mode;
  // The writer serves the ingest path (registry, put, ack_point); queries that may run long or
  // call back into user code use their own connection so they never hold up put().
  Connection m_writer;
  Connection m_reader;
  Connection m_keys;  ///< find_key only
};

}  // namespace

namespace {
std::unexpected<agent::Error> no_log() {
  return fail(ErrorCode::not_found, "this store keeps no log");
}
}  // namespace

Result<LogCheckpoint> Store::log_checkpoint() {
  return no_log();
}
Result<LogCheckpoint> Store::log_checkpoint_at(std::uint64_t) {
  return no_log();
}
Result<std::vector<LogEntry>> Store::log_entries(std::string_view) {
  return no_log();
}
Result<std::optional<LogInclusion>> Store::log_inclusion(std::string_view, std::string_view,
                                                         std::int64_t) {
  return no_log();
}
Result<std::optional<LogAudit>> Store::log_audit(std::string_view, std::string_view, std::int64_t,
                                                 std::uint64_t) {
  return no_log();
}
Result<std::vector<agent::merkle::Hash>> Store::log_inclusion_proof(std::uint64_t, std::uint64_t) {
  return no_log();
}
Result<std::vector<agent::merkle::Hash>> Store::log_consistency_proof(std::uint64_t,
                                                                      std::uint64_t) {
  return no_log();
}

std::string_view to_string(LedgerKind kind) noexcept {
  switch (kind) {
    case LedgerKind::process:
      return "process";
    case LedgerKind::event:
      return "event";
    case LedgerKind::resource:
      return "resource";
  }
  return "event";
}

namespace {
std::unexpected<agent::Error> no_ledger() {
  return fail(ErrorCode::not_found, "this store keeps no export ledger");
}
}  // namespace

Result<std::vector<LedgerEntry>> Store::ledger_entries(std::string_view) {
  return no_ledger();
}
Status Store::ledger_intent(const LedgerEntry&, std::int64_t) {
  return no_ledger();
}
Status Store::ledger_record(std::string_view, LedgerKind, std::string_view, std::string_view,
                            std::string_view, std::int64_t) {
  return no_ledger();
}
Status Store::ledger_forget(std::string_view, LedgerKind, std::string_view) {
  return no_ledger();
}

Result<std::unique_ptr<Store>> open_sqlite_store(const std::filesystem::path& path,
                                                 const RejectionLimits& limits, StoreOpen mode) {
  if (mode == StoreOpen::existing_only) {
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    if (status.type() == fs::file_type::not_found)
      return fail(ErrorCode::not_found,
                  fmt::format("no store at {}: has `reflow-ingest run` ever run with this config?",
                              path.string()));
    if (ec)
      return fail(ErrorCode::io,
                  fmt::format("cannot open ingest store {}: {}", path.string(), ec.message()));
  } else if (const fs::path dir = path.parent_path(); !dir.empty()) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec)
      return fail(ErrorCode::io, fmt::format("cannot create directory {} for the ingest store: {}",
                                             dir.string(), ec.message()));
  }
  auto store = std::make_unique<SqliteStore>(path, limits, mode);
  if (auto s = store->open(); !s) return std::unexpected(s.error());
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace ingest
