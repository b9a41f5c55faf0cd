// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/file_io.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace agent::file_io {

std::string errno_text(int err) {
  return std::strerror(err);
}

Fd::~Fd() {
  if (m_fd >= 0) ::close(m_fd);
}

int Fd::close_now() {
  int rc = ::close(m_fd);
  m_fd = -1;
  return rc;
}

int write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return 0;
}

void fsync_parent(const std::filesystem::path& path) {
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

Fd create_new(const std::filesystem::path& path, mode_t mode) {
  return Fd(::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode));
}

int finish_new(Fd& fd, const std::filesystem::path& path, std::string_view data) {
  int err = write_all(fd.get(), data);
  if (err == 0 && ::fsync(fd.get()) != 0) err = errno;
  if (err == 0 && fd.close_now() != 0) err = errno;
  if (err != 0) {
    ::unlink(path.c_str());
    return err;
  }
  fsync_parent(path);
  return 0;
}

}  // namespace agent::file_io
