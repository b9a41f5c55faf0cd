// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/driver_state.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include <reflow/core/file_io.hpp>

namespace agent {

Result<nlohmann::json> load_driver_state(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return nlohmann::json::object();
    return fail(ErrorCode::io,
                fmt::format("cannot read driver state \"{}\": {}; check its permissions",
                            file.string(), file_io::errno_text(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad())
    return fail(ErrorCode::io, fmt::format("reading driver state \"{}\" failed", file.string()));
  auto state = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (state.is_discarded() || !state.is_object())
    return fail(ErrorCode::corruption,
                fmt::format("driver state \"{}\" is not a JSON object; the driver will not guess "
                            "where it stopped (that would repeat or lose events): restore the "
                            "file, or remove it to start again from the device's current state",
                            file.string()));
  return state;
}

Status save_driver_state(const std::filesystem::path& file, const nlohmann::json& state) {
  const std::filesystem::path tmp = file.string() + ".tmp";
  const std::string text = state.dump() + "\n";
  auto failed = [&](const char* what, int err) -> Status {
    ::unlink(tmp.c_str());
    return fail(err == ENOSPC || err == EDQUOT ? ErrorCode::no_space : ErrorCode::io,
                fmt::format("cannot save driver state \"{}\": {} failed: {}", file.string(), what,
                            file_io::errno_text(err)));
  };
  file_io::Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
  if (fd.get() < 0) return failed("creating the temporary file", errno);
  if (int err = file_io::write_all(fd.get(), text); err != 0) return failed("writing", err);
  if (::fsync(fd.get()) != 0) return failed("fsync", errno);
  if (fd.close_now() != 0) return failed("close", errno);
  if (::rename(tmp.c_str(), file.c_str()) != 0) return failed("rename", errno);
  file_io::fsync_parent(file);
  return {};
}

}  // namespace agent
