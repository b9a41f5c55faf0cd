// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/sqlite.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <gtest/gtest.h>

#include "temp_dir.hpp"

namespace agent::sqlite {
namespace {

class SqliteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(open(m_dir / "t.db", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, 1000, m_db),
              SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(m_db.get(), "CREATE TABLE t(a, b, c, d)", nullptr, nullptr, nullptr),
              SQLITE_OK);
    ASSERT_EQ(prepare(m_db.get(), "INSERT INTO t VALUES (?1, ?2, ?3, ?4)", m_insert), SQLITE_OK);
    ASSERT_EQ(prepare(m_db.get(),
                      "SELECT typeof(a), typeof(b), typeof(c), typeof(d), a, b, c "
                      "FROM t ORDER BY rowid",
                      m_select),
              SQLITE_OK);
  }

  reflow_test::TempDir m_dir;
  DbPtr m_db;
  StmtPtr m_insert;
  StmtPtr m_select;
};

TEST_F(SqliteTest, RunBindsEachValueByItsTypeAndResets) {
  const std::string text = "spool-3";
  const std::string bytes("\0\x01", 2);
  ASSERT_EQ(run(m_insert.get(), std::int64_t{-5}, text, Blob{bytes}, std::nullopt), SQLITE_OK);
  ASSERT_EQ(run(m_insert.get(), true, std::optional<std::string_view>(), std::optional<int>(7),
                "literal"),
            SQLITE_OK);

  Cursor rows(m_select.get());
  ASSERT_EQ(rows.step(), SQLITE_ROW);
  EXPECT_EQ(rows.text(0), "integer");
  EXPECT_EQ(rows.text(1), "text");
  EXPECT_EQ(rows.text(2), "blob");
  EXPECT_EQ(rows.text(3), "null");
  EXPECT_EQ(rows.int64(4), -5);
  EXPECT_EQ(rows.text(5), "spool-3");
  EXPECT_EQ(rows.text(6), bytes);
  ASSERT_EQ(rows.step(), SQLITE_ROW);
  EXPECT_EQ(rows.text(0), "integer");
  EXPECT_EQ(rows.text(1), "null");
  EXPECT_EQ(rows.text(2), "integer");
  EXPECT_EQ(rows.text(3), "text");
  EXPECT_EQ(rows.int64(4), 1);
  EXPECT_EQ(rows.int64(6), 7);
  EXPECT_EQ(rows.step(), SQLITE_DONE);
}

TEST_F(SqliteTest, RunReturnsTheErrorOfAFailedStep) {
  ASSERT_EQ(sqlite3_exec(m_db.get(), "CREATE UNIQUE INDEX t_a ON t(a)", nullptr, nullptr, nullptr),
            SQLITE_OK);
  ASSERT_EQ(run(m_insert.get(), std::int64_t{1}, "x", "y", "z"), SQLITE_OK);
  EXPECT_EQ(run(m_insert.get(), std::int64_t{1}, "x", "y", "z"), SQLITE_CONSTRAINT_UNIQUE);
  // Reset: the statement runs again with new values.
  EXPECT_EQ(run(m_insert.get(), std::int64_t{2}, "x", "y", "z"), SQLITE_OK);
}

TEST_F(SqliteTest, CursorResetsAndClearsItsStatementWhenDestroyed) {
  ASSERT_EQ(run(m_insert.get(), std::int64_t{1}, "x", "y", "z"), SQLITE_OK);
  StmtPtr select;
  ASSERT_EQ(prepare(m_db.get(), "SELECT count(*) FROM t WHERE a = ?1", select), SQLITE_OK);
  {
    Cursor count(select.get(), std::int64_t{1});
    ASSERT_EQ(count.step(), SQLITE_ROW);
    EXPECT_EQ(count.int64(0), 1);
    // Mid-statement: a read is open.
    EXPECT_NE(sqlite3_stmt_busy(select.get()), 0);
  }
  EXPECT_EQ(sqlite3_stmt_busy(select.get()), 0);
  // The binding was cleared: ?1 is NULL, which matches no row.
  ASSERT_EQ(sqlite3_step(select.get()), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int64(select.get(), 0), 0);
  sqlite3_reset(select.get());
}

}  // namespace
}  // namespace agent::sqlite
