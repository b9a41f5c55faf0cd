// SPDX-License-Identifier: AGPL-3.0-or-later
#include "fault_vfs.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <mutex>

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
};

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
  return real_of(f)->pMethods->xWrite(real_of(f), buf, amt, off);
}
int shim_truncate(sqlite3_file* f, sqlite3_int64 size) {
  return real_of(f)->pMethods->xTruncate(real_of(f), size);
}
int shim_sync(sqlite3_file* f, int flags) {
  if (reinterpret_cast<ShimFile*>(f)->is_wal) faults().wal_syncs.fetch_add(1);
  return real_of(f)->pMethods->xSync(real_of(f), flags);
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
  int rc = g_real_vfs->xOpen(g_real_vfs, name, shim->real, flags, out_flags);
  // SQLite calls xClose only when pMethods is set, so mirror the real file's state.
  shim->base.pMethods = shim->real->pMethods ? &g_shim_methods : nullptr;
  return rc;
}

}  // namespace

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
    g_shim_vfs.pNext = nullptr;
    if (int rc = sqlite3_vfs_register(&g_shim_vfs, 1); rc != SQLITE_OK)
      ADD_FAILURE() << "registering the fault-injecting SQLite VFS failed: " << sqlite3_errstr(rc);
  });
  return faults();
}

}  // namespace reflow_test
