// SPDX-License-Identifier: AGPL-3.0-or-later
// migrate_sqlite_to_postgres: the rows of a SQLite store (sqlite_store.cpp, schema version 5)
// copied into a PostgreSQL store (postgres_store.cpp, schema version 1), which keeps the same
// tables and columns; only the types' spellings differ (INTEGER 0/1 → BOOLEAN, BLOB → BYTEA).
#include <reflow/node/store.hpp>

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <cstring>

#include <fmt/format.h>

#include <reflow/core/sqlite.hpp>

#include "pq_support.hpp"

namespace ingest {
namespace migration {
namespace {

using agent::ErrorCode;
using agent::fail;

enum class Kind { text, integer, boolean, bytes };

struct Column {
  const char* name;
  Kind kind;
};

// A table both stores have, with the columns to copy (all of them) in the order of its key.
struct Table {
  const char* name;
  std::vector<Column> columns;
  const char* order;      ///< ORDER BY of its key
  bool identity = false;  ///< `id` is an identity column in PostgreSQL
};

const Table k_keys{"keys",
                   {{"kid", Kind::text},
                    {"device", Kind::text},
                    {"x", Kind::text},
                    {"added_ms", Kind::integer},
                    {"revoked_ms", Kind::integer}},
                   "kid"};
const Table k_streams{"streams",
                      {{"id", Kind::integer},
                       {"device", Kind::text},
                       {"stream", Kind::text},
                       {"first_seen_ms", Kind::integer},
                       {"last_seen_ms", Kind::integer},
                       {"contiguous", Kind::integer},
                       {"max_seq", Kind::integer},
                       {"events", Kind::integer},
                       {"chain_broken", Kind::boolean},
                       {"last_event", Kind::integer}},
                      "id",
                      true};
const Table k_events{"events",
                     {{"id", Kind::integer},
                      {"device", Kind::text},
                      {"stream", Kind::text},
                      {"seq", Kind::integer},
                      {"recorded_ms", Kind::integer},
                      {"received_ms", Kind::integer},
                      {"action", Kind::text},
                      {"signing_input_sha256", Kind::text},
                      {"prev", Kind::text},
                      {"event_id", Kind::text},
                      {"kid", Kind::text},
                      {"envelope", Kind::text}},
                     "id",
                     true};
const Table k_rejections{"rejections",
                         {{"id", Kind::integer},
                          {"received_ms", Kind::integer},
                          {"topic", Kind::text},
                          {"device", Kind::text},
                          {"reason", Kind::text},
                          {"detail", Kind::text},
                          {"stream", Kind::text},
                          {"seq", Kind::integer},
                          {"envelope", Kind::bytes},
                          {"last_seen_ms", Kind::integer},
                          {"count", Kind::integer},
                          {"envelope_sha256", Kind::text},
                          {"capped", Kind::boolean}},
                         "id",
                         true};
const Table k_not_kept{"rejections_not_kept",
                       {{"device", Kind::text},
                        {"reason", Kind::text},
                        {"count", Kind::integer},
                        {"bytes", Kind::integer},
                        {"last_seen_ms", Kind::integer}},
                       "device, reason"};
const Table k_log_leaves{
    "log_leaves", {{"idx", Kind::integer}, {"event", Kind::integer}, {"hash", Kind::bytes}}, "idx"};
const Table k_log_nodes{"log_nodes",
                        {{"level", Kind::integer}, {"idx", Kind::integer}, {"hash", Kind::bytes}},
                        "level, idx"};
const Table k_ledger{"export_ledger",
                     {{"server", Kind::text},
                      {"kind", Kind::text},
                      {"ref", Kind::text},
                      {"recorded", Kind::boolean},
                      {"server_id", Kind::text},
                      {"note", Kind::text},
                      {"event_id", Kind::text},
                      {"creates", Kind::text},
                      {"intent_ms", Kind::integer},
                      {"recorded_ms", Kind::integer}},
                     "server, kind, ref"};

// Rows per INSERT: few round trips, far below PostgreSQL's 65535 parameters.
constexpr std::size_t k_rows_per_insert = 200;
// Progress is reported every this many rows of a table.
constexpr std::int64_t k_progress_rows = 10'000;

using Progress = std::function<void(std::string_view)>;

// Thrown inside the target's transaction for a refusal (not a database error).
struct MigrationRefused {
  agent::Error error;
};

class Migration {
 public:
  Migration(sqlite3* source, std::string source_name, pqxx::work& tx, const Progress& progress)
      : m_source(source), m_source_name(std::move(source_name)), m_tx(tx), m_progress(progress) {}

  // Copies `table`'s source rows matching `where` (SQL on the source, may be empty) with
  // `bound` as ?1; returns how many.
  std::int64_t copy(const Table& table, const std::string& where = {},
                    std::optional<std::int64_t> bound = std::nullopt) {
    std::string names;
    for (const Column& c : table.columns)
      names += fmt::format("{}{}", names.empty() ? "" : ", ", c.name);
    const std::string select = fmt::format("SELECT {} FROM {}{}{} ORDER BY {}", names, table.name,
                                           where.empty() ? "" : " WHERE ", where, table.order);
    agent::sqlite::StmtPtr stmt;
    if (agent::sqlite::prepare(m_source, select.c_str(), stmt) != SQLITE_OK) source_error(table);
    if (bound) sqlite3_bind_int64(stmt.get(), 1, *bound);
    const std::string insert_head = fmt::format("INSERT INTO {}({}){} VALUES ", table.name, names,
                                                table.identity ? " OVERRIDING SYSTEM VALUE" : "");
    std::vector<pq::Param> params;
    std::size_t rows = 0;
    std::int64_t copied = 0;
    auto flush = [&] {
      if (rows == 0) return;
      std::string sql = insert_head;
      const std::size_t width = table.columns.size();
      for (std::size_t r = 0; r < rows; ++r) {
        sql += r == 0 ? "(" : ", (";
        for (std::size_t c = 0; c < width; ++c)
          sql += fmt::format("{}${}", c == 0 ? "" : ", ", r * width + c + 1);
        sql += ")";
      }
      pq::run_params(m_tx, sql, params);
      params.clear();
      rows = 0;
    };
    int rc = SQLITE_OK;
    while ((rc = sqlite3_step(stmt.get())) == SQLITE_ROW) {
      for (std::size_t c = 0; c < table.columns.size(); ++c)
        params.push_back(value(stmt.get(), static_cast<int>(c), table.columns[c].kind));
      ++copied;
      if (++rows == k_rows_per_insert) flush();
      if (copied % k_progress_rows == 0)
        m_progress(fmt::format("{}: {} rows copied", table.name, copied));
    }
    if (rc != SQLITE_DONE) source_error(table);
    flush();
    return copied;
  }

  // The source's row count of `table`.
  std::int64_t source_count(const Table& table) {
    std::int64_t n = 0;
    if (agent::sqlite::query_int(
            m_source, fmt::format("SELECT count(*) FROM {}", table.name).c_str(), n) != SQLITE_OK)
      source_error(table);
    return n;
  }

  // The source's (id, signing_input_sha256) of events up to `last_id`, in id order.
  std::vector<std::pair<std::int64_t, std::string>> source_event_ids(std::int64_t last_id) {
    agent::sqlite::StmtPtr stmt;
    if (agent::sqlite::prepare(m_source,
                               "SELECT id, signing_input_sha256 FROM events WHERE id <= ?1 "
                               "ORDER BY id",
                               stmt) != SQLITE_OK)
      source_error(k_events);
    sqlite3_bind_int64(stmt.get(), 1, last_id);
    std::vector<std::pair<std::int64_t, std::string>> out;
    int rc = SQLITE_OK;
    while ((rc = sqlite3_step(stmt.get())) == SQLITE_ROW)
      out.emplace_back(sqlite3_column_int64(stmt.get(), 0),
                       reinterpret_cast<const char*>(sqlite3_column_text(stmt.get(), 1)));
    if (rc != SQLITE_DONE) source_error(k_events);
    return out;
  }

 private:
  static pq::Param value(sqlite3_stmt* stmt, int col, Kind kind) {
    if (sqlite3_column_type(stmt, col) == SQLITE_NULL) return {};
    switch (kind) {
      case Kind::integer:
        return pq::param(static_cast<std::int64_t>(sqlite3_column_int64(stmt, col)));
      case Kind::boolean:
        return pq::param(sqlite3_column_int64(stmt, col) != 0);
      case Kind::bytes: {
        const void* blob = sqlite3_column_blob(stmt, col);
        const auto size = static_cast<std::size_t>(sqlite3_column_bytes(stmt, col));
        return pq::param(pq::Bytes{std::string_view(static_cast<const char*>(blob), size)});
      }
      case Kind::text:
        break;
    }
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, col));
    return pq::param(
        std::string_view(text, static_cast<std::size_t>(sqlite3_column_bytes(stmt, col))));
  }

  [[noreturn]] void source_error(const Table& table) {
    throw MigrationRefused{
        agent::Error{ErrorCode::io, fmt::format("migrate: reading table {} of {}: {}", table.name,
                                                m_source_name, sqlite3_errmsg(m_source))}};
  }

  sqlite3* m_source;
  std::string m_source_name;
  pqxx::work& m_tx;
  const Progress& m_progress;
};

std::string first_line(std::string_view text) {
  return std::string(text.substr(0, text.find('\n')));
}

}  // namespace
}  // namespace migration

Result<MigrationReport> migrate_sqlite_to_postgres(
    const std::filesystem::path& sqlite_path, std::string_view url,
    const std::filesystem::path& password_file,
    const std::function<void(std::string_view)>& progress) {
  using namespace migration;  // NOLINT(google-build-using-namespace): this file's own helpers
  auto where = pq::target(url, password_file);
  if (!where) return std::unexpected(where.error());
  // Opening them brings each schema up to date (an older SQLite file is migrated in place, an
  // empty database gets the schema), and their logs check the copy at the end.
  auto source = open_sqlite_store(sqlite_path, {}, StoreOpen::existing_only);
  if (!source) return std::unexpected(source.error());
  auto target = open_postgres_store(url, password_file, {}, StoreOpen::create_if_missing);
  if (!target) return std::unexpected(target.error());
  auto source_log = (*source)->log_checkpoint();
  if (!source_log) return std::unexpected(source_log.error());
  auto target_log = (*target)->log_checkpoint();
  if (!target_log) return std::unexpected(target_log.error());

  // The target's log must be a prefix of the source's: then every leaf it has is one the source
  // has at the same index, and the copy continues after it.
  const std::uint64_t done = target_log->size;
  if (done > source_log->size)
    return fail(ErrorCode::rejected,
                fmt::format("migrate: {} holds a log of {} entries, more than the {} of {}: it is "
                            "not a copy of this store; migrate into an empty database",
                            where->shown, done, source_log->size, sqlite_path.string()));
  if (done > 0) {
    auto prefix = (*source)->log_checkpoint_at(done);
    if (!prefix) return std::unexpected(prefix.error());
    if (prefix->root != target_log->root)
      return fail(ErrorCode::rejected,
                  fmt::format("migrate: the log in {} ({} entries) is not a prefix of the log of "
                              "{}: it holds other events; migrate into an empty database",
                              where->shown, done, sqlite_path.string()));
    progress(fmt::format("{} already holds the first {} of {} log entries: copying the rest",
                         where->shown, done, source_log->size));
  }

  agent::sqlite::DbPtr db;
  if (agent::sqlite::open(sqlite_path, SQLITE_OPEN_READONLY, 5000, db) != SQLITE_OK)
    return fail(ErrorCode::io, fmt::format("migrate: cannot open {}: {}", sqlite_path.string(),
                                           db ? sqlite3_errmsg(db.get()) : "out of memory"));
  sqlite3* raw = db.get();
  MigrationReport report;
  try {
    pqxx::connection connection(where->conninfo);
    pqxx::work tx(connection);
    // The store's write lock (postgres_store.cpp): no ingest instance writes meanwhile.
    tx.exec(fmt::format("SELECT pg_advisory_xact_lock({})", pq::k_write_lock));
    // One snapshot of the source for the whole copy: a read transaction, begun by its first read.
    std::int64_t objects = 0;
    if (sqlite3_exec(raw, "BEGIN", nullptr, nullptr, nullptr) != SQLITE_OK ||
        agent::sqlite::query_int(raw, "SELECT count(*) FROM sqlite_master", objects) != SQLITE_OK)
      throw MigrationRefused{agent::Error{
          ErrorCode::io,
          fmt::format("migrate: reading {}: {}", sqlite_path.string(), sqlite3_errmsg(raw))}};
    Migration m(raw, sqlite_path.string(), tx, progress);

    // Events: those the target has must be the source's (same id, same signed bytes); a held
    // event the source displaced since goes, and the rest is copied.
    const auto last_id =
        tx.exec("SELECT coalesce(max(id), 0) FROM events")[0][0].as<std::int64_t>();
    if (last_id > 0) {
      const auto ids = m.source_event_ids(last_id);
      std::size_t at = 0;
      for (const auto& row : tx.exec("SELECT id, signing_input_sha256 FROM events ORDER BY id")) {
        const auto id = row[0].as<std::int64_t>();
        while (at < ids.size() && ids[at].first < id)
          ++at;
        if (at < ids.size() && ids[at].first == id) {
          if (ids[at].second != row[1].as<std::string>())
            throw MigrationRefused{agent::Error{
                ErrorCode::rejected,
                fmt::format("migrate: event row {} in {} is not the one in {}: the target holds "
                            "other events; migrate into an empty database",
                            id, where->shown, sqlite_path.string())}};
        } else {
          pq::run(tx, "DELETE FROM events WHERE id = $1", id);
        }
      }
    }
    const std::int64_t events_copied = m.copy(k_events, "id > ?1", last_id);
    progress(fmt::format("events: {} copied", events_copied));

    // The log: the leaves and subtrees after the target's `done` entries (a subtree of level L
    // at idx is complete once leaf (idx + 1) * 2^L - 1 is).
    const auto done_leaves = static_cast<std::int64_t>(done);
    const std::int64_t leaves = m.copy(k_log_leaves, "idx >= ?1", done_leaves);
    const std::int64_t nodes = m.copy(k_log_nodes, "((idx + 1) << level) > ?1", done_leaves);
    progress(fmt::format("log: {} entries and {} subtrees copied", leaves, nodes));

    // What changes in place (counters, revocations, repeat counts, export answers) is copied
    // whole.
    std::vector<MigrationReport::Table> tables;
    for (const Table* t : {&k_keys, &k_streams, &k_rejections, &k_not_kept, &k_ledger}) {
      tx.exec(fmt::format("DELETE FROM {}", t->name));
      const std::int64_t n = m.copy(*t);
      progress(fmt::format("{}: {} rows copied", t->name, n));
      tables.push_back(MigrationReport::Table{t->name, 0, n});
    }
    tables.insert(tables.begin() + 2, MigrationReport::Table{"events", 0, events_copied});
    tables.push_back(MigrationReport::Table{"log_leaves", 0, leaves});
    tables.push_back(MigrationReport::Table{"log_nodes", 0, nodes});
    // New rows continue after the copied ids.
    for (const Table* t : {&k_streams, &k_events, &k_rejections})
      tx.exec(
          fmt::format("SELECT setval(pg_get_serial_sequence('{0}', 'id'), "
                      "coalesce(max(id), 0) + 1, false) FROM {0}",
                      t->name));

    // Every table as many rows as the source's.
    for (auto& t : tables) {
      const Table* spec = nullptr;
      for (const Table* s : {&k_keys, &k_streams, &k_events, &k_rejections, &k_not_kept,
                             &k_log_leaves, &k_log_nodes, &k_ledger})
        if (t.name == s->name) spec = s;
      t.rows = m.source_count(*spec);
      const auto in_target =
          tx.exec(fmt::format("SELECT count(*) FROM {}", t.name))[0][0].as<std::int64_t>();
      if (in_target != t.rows)
        throw MigrationRefused{agent::Error{
            ErrorCode::corruption,
            fmt::format("migrate: table {} has {} rows in {} but {} in {} after the copy; "
                        "nothing was committed",
                        t.name, in_target, where->shown, t.rows, sqlite_path.string())}};
    }
    tx.commit();
    report.tables = std::move(tables);
  } catch (const MigrationRefused& refused) {
    return std::unexpected(refused.error);
  } catch (const std::exception& e) {
    return fail(ErrorCode::io, fmt::format("migrate: into {}: {}; nothing was committed",
                                           where->shown, first_line(e.what())));
  }

  // The log, read back through the store: the same size and root as the source's.
  auto copied_log = (*target)->log_checkpoint();
  if (!copied_log) return std::unexpected(copied_log.error());
  if (copied_log->size != source_log->size || copied_log->root != source_log->root)
    return fail(
        ErrorCode::corruption,
        fmt::format("migrate: the log in {} ({} entries) does not match the log of {} ({} "
                    "entries): was an ingest running on either store meanwhile?",
                    where->shown, copied_log->size, sqlite_path.string(), source_log->size));
  report.log = *copied_log;
  return report;
}

}  // namespace ingest
