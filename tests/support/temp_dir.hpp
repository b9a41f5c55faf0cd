// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <filesystem>

namespace reflow_test {

/// A fresh directory under $TMPDIR (or /tmp), removed with its content on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return m_path; }
  std::filesystem::path operator/(const std::filesystem::path& p) const { return m_path / p; }

 private:
  std::filesystem::path m_path;
};

}  // namespace reflow_test
