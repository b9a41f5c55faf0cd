// SPDX-License-Identifier: AGPL-3.0-or-later
// The small layer over SQLite's C API that the device's outbox (agent/device/src/outbox.cpp) and
// the node's store (agent/node/src/sqlite_store.cpp) share: owning handles, bind and column
// helpers, opening a connection and the setup both do. Functions return SQLite result codes;
// turning them into errors with advice stays with each caller, which knows what the file is. Part
// of reflow_core's face for the two libraries above; not installed.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

namespace agent::sqlite {

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
/// A connection, closed on destruction (after its statements: declare it before them).
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;

struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

/// Resets a statement and clears its bindings on scope exit. A statement left un-reset keeps its
/// read transaction open, which stops WAL checkpoints and makes COMMIT fail with SQLITE_BUSY.
class ResetOnExit {
 public:
  explicit ResetOnExit(sqlite3_stmt* stmt) : m_stmt(stmt) {}
  ~ResetOnExit() {
    sqlite3_reset(m_stmt);
    sqlite3_clear_bindings(m_stmt);
  }
  ResetOnExit(const ResetOnExit&) = delete;
  ResetOnExit& operator=(const ResetOnExit&) = delete;

 private:
  sqlite3_stmt* m_stmt;
};

/// Opens `path` with `flags` (SQLITE_OPEN_NOMUTEX added: each connection is used under its
/// owner's lock) into `out`, with extended result codes and a busy timeout. Returns the result
/// code; on failure `out` may still hold a handle, for error_detail().
int open(const std::filesystem::path& path, int flags, int busy_timeout_ms, DbPtr& out);

/// Prepares `sql` into `out` (sqlite3_prepare_v3 `flags`: SQLITE_PREPARE_PERSISTENT for
/// statements kept for the connection's life). Returns the result code.
int prepare(sqlite3* db, const char* sql, StmtPtr& out, unsigned flags = 0);

/// Steps `stmt` to its end (rows are ignored) and resets it; SQLITE_OK or the error.
int run(sqlite3_stmt* stmt);

/// The one integer of a one-row query; SQLITE_ERROR when it returns no row.
int query_int(sqlite3* db, const char* sql, std::int64_t& out);

/// journal_mode=WAL (readers never wait for the writer). Returns the result code and, in `mode`,
/// the journal mode SQLite reports: a database that cannot use WAL keeps its old one.
int enable_wal(sqlite3* db, std::string& mode);

/// Binds without copying: `text` must outlive the statement's next reset.
void bind_text(sqlite3_stmt* stmt, int index, std::string_view text);
void bind_blob(sqlite3_stmt* stmt, int index, std::string_view bytes);

/// A TEXT or BLOB column as bytes ("" for NULL).
std::string column_text(sqlite3_stmt* stmt, int col);

/// "SQLite's message (errno text)" for `rc` on `db` (may be null). The errno part tells "No such
/// file or directory" from "Permission denied", which "unable to open database file" does not.
std::string error_detail(sqlite3* db, int rc);

}  // namespace agent::sqlite
