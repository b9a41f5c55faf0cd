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
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

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

/// Bytes to bind as a BLOB (bind_all binds every string-like value as TEXT).
struct Blob {
  std::string_view bytes;
};

namespace detail {
template <typename T>
struct IsOptional : std::false_type {};
template <typename T>
struct IsOptional<std::optional<T>> : std::true_type {};
}  // namespace detail

/// Binds `value` to parameter `index` (1-based) by its type: bool and signed integers as INTEGER
/// (unsigned ones must be cast by the caller, who knows they fit), Blob as BLOB, anything
/// convertible to std::string_view as TEXT, std::nullopt as NULL, a std::optional as its value
/// or NULL. TEXT and BLOB are bound without copying (bind_text): the bytes must outlive the
/// statement's next reset.
template <typename T>
void bind_value(sqlite3_stmt* stmt, int index, const T& value) {
  if constexpr (std::is_same_v<T, std::nullopt_t>) {
    sqlite3_bind_null(stmt, index);
  } else if constexpr (detail::IsOptional<T>::value) {
    if (value)
      bind_value(stmt, index, *value);
    else
      sqlite3_bind_null(stmt, index);
  } else if constexpr (std::is_same_v<T, bool>) {
    sqlite3_bind_int(stmt, index, value ? 1 : 0);
  } else if constexpr (std::is_integral_v<T>) {
    static_assert(std::is_signed_v<T>, "cast an unsigned value to std::int64_t where it fits");
    sqlite3_bind_int64(stmt, index, static_cast<sqlite3_int64>(value));
  } else if constexpr (std::is_same_v<T, Blob>) {
    bind_blob(stmt, index, value.bytes);
  } else {
    static_assert(std::is_convertible_v<const T&, std::string_view>,
                  "bind_value takes integers, bool, strings, Blob, std::nullopt or std::optional");
    bind_text(stmt, index, std::string_view(value));
  }
}

/// Binds `args` to ?1, ?2, … in order (bind_value).
template <typename... Args>
void bind_all([[maybe_unused]] sqlite3_stmt* stmt, const Args&... args) {
  int index = 0;
  (bind_value(stmt, ++index, args), ...);
}

/// Binds `args` to ?1, ?2, … (bind_all), steps `stmt` to its end (rows are ignored), then resets
/// it and clears its bindings: SQLITE_OK or the error code. The arguments live until the reset.
template <typename First, typename... Rest>
int run(sqlite3_stmt* stmt, const First& first, const Rest&... rest) {
  bind_all(stmt, first, rest...);
  return run(stmt);
}

/// One use of a prepared (usually cached) statement: binds its arguments when made and, when
/// destroyed, resets the statement and clears its bindings (ResetOnExit), so that it holds no
/// read transaction afterwards. The caller keeps the statement and the bound strings alive for
/// the Cursor's life: temporary std::strings are refused at compile time. Movable; one thread.
class Cursor {
 public:
  template <typename... Args>
  explicit Cursor(sqlite3_stmt* stmt, Args&&... args) : m_stmt(stmt) {
    static_assert(
        (!(std::is_same_v<std::remove_cvref_t<Args>, std::string> &&
           !std::is_lvalue_reference_v<Args>)&&...),
        "a temporary std::string would be gone before the statement steps: name it first");
    bind_all(stmt, args...);
  }
  Cursor(Cursor&& other) noexcept : m_stmt(std::exchange(other.m_stmt, nullptr)) {}
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;
  Cursor& operator=(Cursor&&) = delete;
  ~Cursor() {
    if (m_stmt == nullptr) return;
    sqlite3_reset(m_stmt);
    sqlite3_clear_bindings(m_stmt);
  }

  /// sqlite3_step: SQLITE_ROW at a row, SQLITE_DONE at the end, else the error code.
  [[nodiscard]] int step() { return sqlite3_step(m_stmt); }

  /// Column `col` (0-based) of the current row.
  [[nodiscard]] std::int64_t int64(int col) const { return sqlite3_column_int64(m_stmt, col); }
  /// A TEXT or BLOB column as bytes ("" for NULL): column_text.
  [[nodiscard]] std::string text(int col) const { return column_text(m_stmt, col); }

  [[nodiscard]] sqlite3_stmt* get() const { return m_stmt; }

 private:
  sqlite3_stmt* m_stmt;
};

/// "SQLite's message (errno text)" for `rc` on `db` (may be null). The errno part tells "No such
/// file or directory" from "Permission denied", which "unable to open database file" does not.
std::string error_detail(sqlite3* db, int rc);

}  // namespace agent::sqlite
