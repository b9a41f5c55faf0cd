// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/sqlite.hpp>

#include <cstring>

#include <fmt/format.h>

namespace agent::sqlite {

int open(const std::filesystem::path& path, int flags, int busy_timeout_ms, DbPtr& out) {
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags | SQLITE_OPEN_NOMUTEX, nullptr);
  out.reset(raw);
  if (rc != SQLITE_OK) return rc;
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, busy_timeout_ms);
  return SQLITE_OK;
}

int prepare(sqlite3* db, const char* sql, StmtPtr& out, unsigned flags) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v3(db, sql, -1, flags, &raw, nullptr);
  out.reset(raw);
  return rc;
}

int run(sqlite3_stmt* stmt) {
  ResetOnExit reset(stmt);
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
  }
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int query_int(sqlite3* db, const char* sql, std::int64_t& out) {
  StmtPtr stmt;
  int rc = prepare(db, sql, stmt);
  if (rc != SQLITE_OK) return rc;
  rc = sqlite3_step(stmt.get());
  if (rc != SQLITE_ROW) return rc == SQLITE_DONE ? SQLITE_ERROR : rc;
  out = sqlite3_column_int64(stmt.get(), 0);
  return SQLITE_OK;
}

int enable_wal(sqlite3* db, std::string& mode) {
  StmtPtr stmt;
  int rc = prepare(db, "PRAGMA journal_mode=WAL", stmt);
  if (rc != SQLITE_OK) return rc;
  rc = sqlite3_step(stmt.get());
  if (rc != SQLITE_ROW) return rc == SQLITE_DONE ? SQLITE_ERROR : rc;
  mode = column_text(stmt.get(), 0);
  return SQLITE_OK;
}

void bind_text(sqlite3_stmt* stmt, int index, std::string_view text) {
  sqlite3_bind_text(stmt, index, text.data(), static_cast<int>(text.size()), SQLITE_STATIC);
}

void bind_blob(sqlite3_stmt* stmt, int index, std::string_view bytes) {
  sqlite3_bind_blob(stmt, index, bytes.data(), static_cast<int>(bytes.size()), SQLITE_STATIC);
}

std::string column_text(sqlite3_stmt* stmt, int col) {
  // The pointer first, then the size: sqlite3_column_bytes after the conversion is the size of
  // what was returned.
  const void* data = sqlite3_column_blob(stmt, col);
  if (data == nullptr) return {};
  return std::string(static_cast<const char*>(data),
                     static_cast<std::size_t>(sqlite3_column_bytes(stmt, col)));
}

std::string error_detail(sqlite3* db, int rc) {
  std::string detail = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  int sys = db ? sqlite3_system_errno(db) : 0;
  if (sys != 0) detail += fmt::format(" ({})", std::strerror(sys));
  return detail;
}

}  // namespace agent::sqlite
