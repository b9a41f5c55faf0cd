// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <sqlite3.h>

#include <atomic>

namespace reflow_test {

/// A SQLite VFS that forwards to the real "unix" VFS and can fail every write (disk full, I/O
/// error) or count fsyncs of WAL files. install() registers it as SQLite's default VFS in the
/// test process: the outbox and the ingest store open their files through the default VFS, so it
/// reaches their private connections without any test hook in a public header, and a fault hits
/// exactly the write SQLite was doing. The switches are atomics: SQLite may call the VFS from any
/// thread. Tests set them and put them back (SetUp/TearDown), since the VFS serves the whole
/// process.
struct FaultVfs {
  /// SQLITE_OK, or what every xWrite returns instead of writing (SQLITE_FULL,
  /// SQLITE_IOERR_WRITE …).
  std::atomic<int> write_error{SQLITE_OK};
  /// xSync calls on WAL files; tests reset it to 0 before counting.
  std::atomic<int> wal_syncs{0};
  /// When set (not null), every xWrite fails with SQLITE_FULL while this file exists: a disk that
  /// is full until that file (the outbox's reserve) is deleted. The string must outlive the use.
  std::atomic<const char*> full_while_exists{nullptr};

  /// Power-cut simulation. While `record_unsynced` is set, every write and truncate of a database
  /// or WAL file keeps the bytes it replaced until that file's next xSync. power_cut() then puts
  /// all of those bytes back (each file as it was at its last fsync: every write that was not
  /// synced is lost, the worst a power cut can do) and, until power_restored(), drops every
  /// write, truncate, sync and delete: the connections still open belong to a machine that is
  /// off, and closing them must not checkpoint or delete anything. Also removes `-shm` files,
  /// which live in memory on a real device (tmpfs) or are rebuilt from the WAL.
  std::atomic<bool> record_unsynced{false};
  void power_cut();
  void power_restored();

  /// Registers the VFS as the default, once per process (call before opening the databases it
  /// must serve), and returns its switches.
  static FaultVfs& install();
};

}  // namespace reflow_test
