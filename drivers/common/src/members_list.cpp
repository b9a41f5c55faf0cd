// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/members_list.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/file_io.hpp>
#include <reflow/core/units.hpp>

namespace agent {
namespace {

constexpr std::string_view k_what = "the node's members list";

}  // namespace

Result<SignedMembersList> verify_members_list(std::string_view envelope, const PublicJwk& node,
                                              std::string_view site) {
  auto parsed = jws_verify(envelope, node, k_members_typ);
  if (!parsed) {
    if (parsed.error().code == ErrorCode::crypto)
      return fail(ErrorCode::crypto,
                  fmt::format("{} is refused: tampered, or not signed by the pinned node key "
                              "([mqtt] node_jwk, kid {}): {}",
                              k_what, node.kid, parsed.error().message));
    return fail(parsed.error().code, fmt::format("{}: {}", k_what, parsed.error().message));
  }
  const auto payload = nlohmann::json::parse(parsed->payload, nullptr, false);
  const auto bad = [](std::string_view why) {
    return fail(ErrorCode::invalid_argument, fmt::format("{}: payload {}", k_what, why));
  };
  if (payload.is_discarded() || !payload.is_object()) return bad("is not a JSON object");
  for (const auto& [key, _] : payload.items())
    if (key != "site" && key != "version" && key != "issued" && key != "members")
      return bad(
          fmt::format("has the unknown member \"{}\" (expected site, version, issued, "
                      "members)",
                      key.size() > 32 ? key.substr(0, 32) + "…" : key));
  const auto string_member = [&](const char* key) -> const std::string* {
    const auto it = payload.find(key);
    return it != payload.end() && it->is_string() ? it->get_ptr<const std::string*>() : nullptr;
  };
  const std::string* list_site = string_member("site");
  const std::string* issued = string_member("issued");
  const std::string* members = string_member("members");
  const auto version = payload.find("version");
  if (list_site == nullptr || issued == nullptr || members == nullptr)
    return bad("needs the strings site, issued and members");
  if (version == payload.end() || !version->is_number_integer() || version->get<std::int64_t>() < 1)
    return bad("needs version, an integer ≥ 1");
  auto issued_ms = parse_rfc3339(*issued);
  if (!issued_ms) return bad("has an issued that is not an RFC 3339 time");
  if (*list_site != site)
    return fail(ErrorCode::rejected,
                fmt::format("{} is for another site (\"{}\"; this agent's site is \"{}\")", k_what,
                            *list_site, site));
  auto parsed_members = Members::parse(*members, fmt::format("members list of site {}", site));
  if (!parsed_members) return std::unexpected(parsed_members.error());
  return SignedMembersList{*list_site, version->get<std::uint64_t>(), *issued_ms,
                           std::move(*parsed_members), std::string(envelope)};
}

bool is_newer(const SignedMembersList& next, const SignedMembersList& current) {
  if (next.version != current.version) return next.version > current.version;
  return next.issued_unix_ms > current.issued_unix_ms;
}

Status save_members_list(const std::filesystem::path& file, const SignedMembersList& list) {
  const std::filesystem::path tmp = file.string() + ".tmp";
  auto failed = [&](const char* what, int err) -> Status {
    ::unlink(tmp.c_str());
    return fail(err == ENOSPC || err == EDQUOT ? ErrorCode::no_space : ErrorCode::io,
                fmt::format("cannot save {} to \"{}\": {} failed: {}", k_what, file.string(), what,
                            file_io::errno_text(err)));
  };
  file_io::Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) return failed("creating the temporary file", errno);
  // A temporary file left by a crash keeps its old mode through O_CREAT: set it.
  if (::fchmod(fd.get(), 0600) != 0) return failed("chmod 600", errno);
  if (int err = file_io::write_all(fd.get(), list.envelope + "\n"); err != 0)
    return failed("writing", err);
  if (::fsync(fd.get()) != 0) return failed("fsync", errno);
  if (fd.close_now() != 0) return failed("close", errno);
  if (::rename(tmp.c_str(), file.c_str()) != 0) return failed("rename", errno);
  file_io::fsync_parent(file);
  return {};
}

Result<std::optional<SignedMembersList>> load_members_list(const std::filesystem::path& file,
                                                           const PublicJwk& node,
                                                           std::string_view site) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return std::optional<SignedMembersList>{};
    return fail(ErrorCode::io, fmt::format("cannot read {} \"{}\": {}", k_what, file.string(),
                                           file_io::errno_text(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  std::string envelope = text.str();
  while (!envelope.empty() && envelope.back() == '\n')
    envelope.pop_back();
  auto list = verify_members_list(envelope, node, site);
  if (!list)
    return fail(list.error().code, fmt::format("\"{}\": {}", file.string(), list.error().message));
  return std::optional<SignedMembersList>{std::move(*list)};
}

Result<MembersListOutcome> accept_members_list(std::string_view envelope,
                                               const std::filesystem::path& file,
                                               const PublicJwk& node, std::string_view site) {
  auto next = verify_members_list(envelope, node, site);
  if (!next) return std::unexpected(next.error());
  auto current = load_members_list(file, node, site);
  // A saved list that no longer verifies (the node key changed, the file was edited) is not a
  // reason to refuse a valid new one: the new one replaces it.
  if (current && *current) {
    if ((*current)->envelope == next->envelope) return MembersListOutcome::unchanged;
    if (!is_newer(*next, **current))
      return fail(ErrorCode::rejected,
                  fmt::format("{} (version {} issued {}) is not newer than the one kept (version "
                              "{} issued {}): the version, or at the same version the issued "
                              "time, must increase",
                              k_what, next->version, format_rfc3339_ms(next->issued_unix_ms),
                              (*current)->version, format_rfc3339_ms((*current)->issued_unix_ms)));
  }
  if (Status saved = save_members_list(file, *next); !saved) return std::unexpected(saved.error());
  return MembersListOutcome::accepted;
}

}  // namespace agent
