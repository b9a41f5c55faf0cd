// SPDX-License-Identifier: AGPL-3.0-or-later
#include "fault_vfs.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace reflow_test {
namespace {

FaultVfs& faults() {
  static FaultVfs state;
  return state;
}

struct ShimFile {
  sqlite3_file base;
  sqlite3_file* real;
  bool is_wal;
  bool durable;      // a main database or WAL file: power_cut() restores its unsynced bytes
  const char* path;  // SQLite's name, valid while the file is open
};

// What a write or truncate replaced: `old_size` is the file's size before it, `old` the bytes at
// `offset` that existed before it (shorter than the write when it extended the file).
struct Undo {
  sqlite3_int64 offset = 0;
  sqlite3_int64 old_size = 0;
  std::string old;
};

std::mutex g_undo_mutex;
std::map<std::string, std::vector<Undo>> g_undo;  // by path, oldest first
std::atomic<bool> g_power_off{false};

void remember(ShimFile* shim, sqlite3_int64 offset, sqlite3_int64 end) {
  if (!shim->durable || !faults().record_unsynced.load()) return;
  Undo undo;
  undo.offset = offset;
  if (shim->real->pMethods->xFileSize(shim->real, &undo.old_size) != SQLITE_OK) return;
  const sqlite3_int64 have = std::min(end, undo.old_size) - offset;
  if (have > 0) {
    undo.old.resize(static_cast<std::size_t>(have));
    shim->real->pMethods->xRead(shim->real, undo.old.data(), static_cast<int>(have), offset);
  }
  std::lock_guard lock(g_undo_mutex);
  g_undo[shim->path].push_back(std::move(undo));
}

sqlite3_vfs* g_real_vfs = nullptr;
sqlite3_vfs g_shim_vfs;
sqlite3_io_methods g_shim_methods;

sqlite3_file* real_of(sqlite3_file* f) {
  return reinterpret_cast<ShimFile*>(f)->real;
}

int shim_close(sqlite3_file* f) {
  return real_of(f)->pMethods->xClose(real_of(f));
}
int shim_read(sqlite3_file* f, void* buf, int amt, sqlite3_int64 off) {
  return real_of(f)->pMethods->xRead(real_of(f), buf, amt, off);
}
int shim_write(sqlite3_file* f, const void* buf, int amt, sqlite3_int64 off) {
  if (int err = faults().write_error.load(); err != SQLITE_OK) return err;
  if (const char* path = faults().full_while_exists.load(); path && ::access(path, F_OK) == 0)
    return SQLITE_FULL;
  if (g_power_off.load()) return SQLITE_OK;
  remember(reinterpret_cast<ShimFile*>(f), off, off + amt);
  return real_of(f)->pMethods->xWrite(real_of(f), buf, amt, off);
}
int shim_truncate(sqlite3_file* f, sqlite3_int64 size) {
  if (g_power_off.load()) return SQLITE_OK;
  sqlite3_int64 now = 0;
  if (real_of(f)->pMethods->xFileSize(real_of(f), &now) == SQLITE_OK && now > size)
    remember(reinterpret_cast<ShimFile*>(f), size, now);
  return real_of(f)->pMethods->xTruncate(real_of(f), size);
}
int shim_sync(sqlite3_file* f, int flags) {
  if (g_power_off.load()) return SQLITE_OK;
  auto* shim = reinterpret_cast<ShimFile*>(f);
  if (shim->is_wal) faults().wal_syncs.fetch_add(1);
  const int rc = real_of(f)->pMethods->xSync(real_of(f), flags);
  if (rc == SQLITE_OK && shim->durable) {
    std::lock_guard lock(g_undo_mutex);
    g_undo.erase(shim->path);
  }
  return rc;
}
int shim_file_size(sqlite3_file* f, sqlite3_int64* size) {
  return real_of(f)->pMethods->xFileSize(real_of(f), size);
}
int shim_lock(sqlite3_file* f, int level) {
  return real_of(f)->pMethods->xLock(real_of(f), level);
}
int shim_unlock(sqlite3_file* f, int level) {
  return real_of(f)->pMethods->xUnlock(real_of(f), level);
}
int shim_check_reserved(sqlite3_file* f, int* out) {
  return real_of(f)->pMethods->xCheckReservedLock(real_of(f), out);
}
int shim_file_control(sqlite3_file* f, int op, void* arg) {
  return real_of(f)->pMethods->xFileControl(real_of(f), op, arg);
}
int shim_sector_size(sqlite3_file* f) {
  return real_of(f)->pMethods->xSectorSize(real_of(f));
}
int shim_device_characteristics(sqlite3_file* f) {
  return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f));
}
int shim_shm_map(sqlite3_file* f, int page, int size, int extend, void volatile** out) {
  return real_of(f)->pMethods->xShmMap(real_of(f), page, size, extend, out);
}
int shim_shm_lock(sqlite3_file* f, int offset, int n, int flags) {
  return real_of(f)->pMethods->xShmLock(real_of(f), offset, n, flags);
}
void shim_shm_barrier(sqlite3_file* f) {
  real_of(f)->pMethods->xShmBarrier(real_of(f));
}
int shim_shm_unmap(sqlite3_file* f, int del) {
  return real_of(f)->pMethods->xShmUnmap(real_of(f), del);
}
int shim_fetch(sqlite3_file* f, sqlite3_int64 off, int amt, void** out) {
  return real_of(f)->pMethods->xFetch(real_of(f), off, amt, out);
}
int shim_unfetch(sqlite3_file* f, sqlite3_int64 off, void* p) {
  return real_of(f)->pMethods->xUnfetch(real_of(f), off, p);
}

int shim_open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* file, int flags, int* out_flags) {
  auto* shim = reinterpret_cast<ShimFile*>(file);
  shim->real = reinterpret_cast<sqlite3_file*>(shim + 1);
  shim->is_wal = (flags & SQLITE_OPEN_WAL) != 0;
  shim->durable = (flags & (SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_DB)) != 0 && name != nullptr;
  shim->path = name;
  int rc = g_real_vfs->xOpen(g_real_vfs, name, shim->real, flags, out_flags);
  // SQLite calls xClose only when pMethods is set, so mirror the real file's state.
  shim->base.pMethods = shim->real->pMethods ? &g_shim_methods : nullptr;
  return rc;
}

int shim_delete(sqlite3_vfs*, const char* name, int sync_dir) {
  if (g_power_off.load()) return SQLITE_OK;
  {
    std::lock_guard lock(g_undo_mutex);
    g_undo.erase(name);
  }
  return g_real_vfs->xDelete(g_real_vfs, name, sync_dir);
}

}  // namespace

void FaultVfs::power_cut() {
  g_power_off = true;
  record_unsynced = false;
  std::lock_guard lock(g_undo_mutex);
  for (auto& [path, undos] : g_undo) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
      ADD_FAILURE() << "power_cut: cannot open " << path;
      continue;
    }
    // Newest first: each step gives back the file as it was before that write.
    for (auto it = undos.rbegin(); it != undos.rend(); ++it) {
      if (!it->old.empty() &&
          ::pwrite(fd, it->old.data(), it->old.size(), static_cast<off_t>(it->offset)) !=
              static_cast<ssize_t>(it->old.size()))
        ADD_FAILURE() << "power_cut: cannot restore " << path;
      if (::ftruncate(fd, static_cast<off_t>(it->old_size)) != 0)
        ADD_FAILURE() << "power_cut: cannot truncate " << path;
    }
    ::close(fd);
    std::remove((path + "-shm").c_str());
  }
  g_undo.clear();
}

void FaultVfs::power_restored() {
  g_power_off = false;
}

FaultVfs& FaultVfs::install() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_real_vfs = sqlite3_vfs_find("unix");
    g_shim_methods = sqlite3_io_methods{3,
                                        shim_close,
                                        shim_read,
                                        shim_write,
                                        shim_truncate,
                                        shim_sync,
                                        shim_file_size,
                                        shim_lock,
                                        shim_unlock,
                                        shim_check_reserved,
                                        shim_file_control,
                                        shim_sector_size,
                                        shim_device_characteristics,
                                        shim_shm_map,
                                        shim_shm_lock,
                                        shim_shm_barrier,
                                        shim_shm_unmap,
                                        shim_fetch,
                                        shim_unfetch};
    g_shim_vfs = *g_real_vfs;
    g_shim_vfs.zName = "reflow-test-faults";
    g_shim_vfs.szOsFile = static_cast<int>(sizeof(ShimFile)) + g_real_vfs->szOsFile;
    g_shim_vfs.xOpen = shim_open;
    g_shim_vfs.xDelete = shim_delete;
    g_shim_vfs.pNext = nullptr;
    if (int rc = sqlite3_vfs_register(&g_shim_vfs, 1); rc != SQLITE_OK)
      ADD_FAILURE() << "registering the fault-injecting SQLite VFS failed: " << sqlite3_errstr(rc);
  });
  return faults();
}

}  // namespace reflow_test
