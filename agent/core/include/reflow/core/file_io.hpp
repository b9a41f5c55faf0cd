// SPDX-License-Identifier: AGPL-3.0-or-later
// Writing a new file durably and without ever overwriting one, for the files that must not be
// lost or replaced by accident: the device's Ed25519 key (jose.cpp), TLS keys and
// certificates (tls.cpp), and the drivers' state files (drivers/common). Not installed.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <string_view>

namespace agent::file_io {

/// strerror(err) as a string.
std::string errno_text(int err);

/// A file descriptor, closed on scope exit. Not copyable or movable; a function may still
/// return one (guaranteed copy elision).
class Fd {
 public:
  explicit Fd(int fd) : m_fd(fd) {}
  ~Fd();
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return m_fd; }
  /// Closes now so the caller sees close(2)'s error, which can report a failed write.
  int close_now();

 private:
  int m_fd;
};

/// Writes all of `bytes` to `fd`, retrying after EINTR and short writes; returns 0 or the errno
/// of the failed write.
int write_all(int fd, std::string_view bytes);

/// fsyncs the directory holding `path`, so that a new directory entry survives a power cut
/// (best effort: a directory that cannot be opened is skipped).
void fsync_parent(const std::filesystem::path& path);

/// Creates `path` for writing with `mode`, never opening a file that exists (O_EXCL): a key or
/// certificate is never overwritten. On failure get() < 0 and errno says why (EEXIST: it exists).
Fd create_new(const std::filesystem::path& path, mode_t mode);

/// Writes `data` to the new file `fd` (from create_new), fsyncs and closes it and fsyncs its
/// directory. Returns 0, or the errno of what failed after removing the file, so that nothing
/// half-written is left behind.
int finish_new(Fd& fd, const std::filesystem::path& path, std::string_view data);

}  // namespace agent::file_io
