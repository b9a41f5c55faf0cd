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

  /// Registers the VFS as the default, once per process (call before opening the databases it
  /// must serve), and returns its switches.
  static FaultVfs& install();
};

}  // namespace reflow_test
