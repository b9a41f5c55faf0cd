// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/members.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <sodium.h>
#include <toml++/toml.h>

#include <reflow/core/config_table.hpp>
#include <reflow/core/file_io.hpp>
#include <reflow/drivers/driver_state.hpp>

namespace agent {

using namespace config_keys;

namespace {

constexpr std::size_t k_hash_bytes = 32;
constexpr std::size_t k_hash_chars = 43;  // base64url of 32 bytes, no padding

bool sodium_ready() {
  static const bool ready = sodium_init() >= 0;
  return ready;
}

Result<std::string> read_text(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    const int err = errno;
    return fail(ErrorCode::invalid_config, fmt::format("{}: cannot read the members file: {}",
                                                       file.string(), file_io::errno_text(err)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A string array at `node`, or a problem.
std::optional<std::vector<std::string>> string_array(const toml::node& node, Problems& problems,
                                                     const std::string& where,
                                                     std::string_view expected) {
  const auto* array = node.as_array();
  if (array == nullptr) {
    problems.add(line_of(node), where, got(fmt::format("expected an array of {}", expected), node));
    return std::nullopt;
  }
  std::vector<std::string> out;
  bool ok = true;
  for (std::size_t i = 0; i < array->size(); ++i) {
    const toml::node& item = *array->get(i);
    const auto* text = item.as_string();
    if (text == nullptr || !is_non_empty_text(text->get())) {
      problems.add(line_of(item), fmt::format("{}[{}]", where, i),
                   got(fmt::format("expected {}", expected), item));
      ok = false;
      continue;
    }
    out.push_back(text->get());
  }
  if (!ok) return std::nullopt;
  return out;
}

}  // namespace

std::filesystem::path site_secret_path(const std::filesystem::path& data_dir) {
  return data_dir / "site-secret";
}

Result<SiteSecret> load_or_create_site_secret(const std::filesystem::path& file) {
  if (!sodium_ready()) return fail(ErrorCode::crypto, "libsodium failed to initialise");
  SiteSecret secret;
  static_assert(sizeof(secret.key) == crypto_generichash_KEYBYTES);
  int raw_fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (raw_fd < 0 && errno == ENOENT) {
    randombytes_buf(secret.key.data(), secret.key.size());
    file_io::Fd created = file_io::create_new(file, 0600);
    if (created.get() >= 0) {
      const std::string_view bytes(reinterpret_cast<const char*>(secret.key.data()),
                                   secret.key.size());
      const int err = file_io::finish_new(created, file, bytes);
      if (err != 0)
        return fail(ErrorCode::io, fmt::format("cannot write the site secret \"{}\": {}",
                                               file.string(), file_io::errno_text(err)));
      return secret;
    }
    if (errno != EEXIST)
      return fail(ErrorCode::io, fmt::format("cannot create the site secret \"{}\": {}",
                                             file.string(), file_io::errno_text(errno)));
    // Another process made it first: use theirs.
    raw_fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  }
  file_io::Fd fd(raw_fd);
  if (fd.get() < 0)
    return fail(ErrorCode::io, fmt::format("cannot read the site secret \"{}\": {}", file.string(),
                                           file_io::errno_text(errno)));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    return fail(ErrorCode::io, fmt::format("cannot stat the site secret \"{}\": {}", file.string(),
                                           file_io::errno_text(errno)));
  if ((st.st_mode & 077) != 0)
    return fail(ErrorCode::corruption,
                fmt::format("the site secret \"{}\" is readable by others (mode {:o}); `chmod 600` "
                            "it (and consider every badge hash known to whoever read it)",
                            file.string(), st.st_mode & 0777));
  if (st.st_size != static_cast<off_t>(secret.key.size()))
    return fail(ErrorCode::corruption,
                fmt::format("the site secret \"{}\" is {} bytes, not {}; restore it from a backup "
                            "(a new secret changes every badge hash: members must be enrolled "
                            "again)",
                            file.string(), st.st_size, secret.key.size()));
  std::size_t got_bytes = 0;
  while (got_bytes < secret.key.size()) {
    const ssize_t n =
        ::read(fd.get(), secret.key.data() + got_bytes, secret.key.size() - got_bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return fail(ErrorCode::io, fmt::format("cannot read the site secret \"{}\"", file.string()));
    got_bytes += static_cast<std::size_t>(n);
  }
  return secret;
}

std::string badge_hash(const SiteSecret& secret, std::string_view card_hex) {
  (void)sodium_ready();
  std::string canonical(card_hex);
  std::transform(canonical.begin(), canonical.end(), canonical.begin(), [](char c) {
    return (c >= 'A' && c <= 'F') ? static_cast<char>(c - 'A' + 'a') : c;
  });
  std::array<unsigned char, k_hash_bytes> out{};
  crypto_generichash(out.data(), out.size(),
                     reinterpret_cast<const unsigned char*>(canonical.data()), canonical.size(),
                     secret.key.data(), secret.key.size());
  std::array<char, k_hash_chars + 1> text{};
  sodium_bin2base64(text.data(), text.size(), out.data(), out.size(),
                    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  sodium_memzero(canonical.data(), canonical.size());
  return std::string(text.data(), k_hash_chars);
}

bool is_badge_hash(std::string_view text) {
  if (text.size() != k_hash_chars) return false;
  (void)sodium_ready();
  std::array<unsigned char, k_hash_bytes> bin{};
  std::size_t len = 0;
  return sodium_base642bin(bin.data(), bin.size(), text.data(), text.size(), nullptr, &len, nullptr,
                           sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0 &&
         len == k_hash_bytes;
}

Result<Members> Members::load(const std::filesystem::path& file) {
  auto text = read_text(file);
  if (!text) return std::unexpected(text.error());
  return parse(*text, file.string());
}

Result<Members> Members::parse(std::string_view text, const std::string& file_name) {
  auto parsed = parse_toml(text, file_name);
  if (!parsed) return std::unexpected(parsed.error());
  Problems problems(file_name);
  Members out;
  for (const auto& [key, node] : *parsed) {
    if (key.str() != "member")
      problems.add(line_of(node), key.str(), "unknown key or table (known: [[member]])");
  }
  std::set<std::string, std::less<>> handles;
  std::map<std::string, std::string, std::less<>> badge_owner;
  if (const toml::node* members = parsed->get("member"); members != nullptr) {
    const auto* tables = members->as_array();
    if (tables == nullptr || !tables->is_array_of_tables()) {
      problems.add(line_of(*members), "member", got("expected [[member]] tables", *members));
    } else {
      for (std::size_t i = 0; i < tables->size(); ++i) {
        const auto& table = *tables->get(i)->as_table();
        const std::string where = fmt::format("member[{}]", i);
        Member m;
        m.line = line_of(table);
        bool ok = true;
        for (const auto& [key, node] : table) {
          const std::string k(key.str());
          const std::string at = where + "." + k;
          if (k == "handle" || k == "agent") {
            const auto* s = node.as_string();
            if (s == nullptr || !is_non_empty_text(s->get())) {
              problems.add(line_of(node), at,
                           got(k == "handle" ? "expected a non-empty handle such as \"ada\""
                                             : "expected a ValueFlows agent reference such as "
                                               "\"person:ada\"",
                               node));
              ok = false;
            } else {
              (k == "handle" ? m.handle : m.agent) = s->get();
            }
          } else if (k == "badges") {
            auto list = string_array(node, problems, at,
                                     "keyed badge hashes (43 base64url characters, from "
                                     "`reflow-agent members add`)");
            if (!list) {
              ok = false;
              continue;
            }
            for (std::size_t b = 0; b < list->size(); ++b) {
              const toml::node& item = *node.as_array()->get(b);
              if (!is_badge_hash((*list)[b])) {
                problems.add(line_of(item), fmt::format("{}[{}]", at, b),
                             got("expected a keyed badge hash (43 base64url characters, from "
                                 "`reflow-agent members add`), never a raw card id",
                                 item));
                ok = false;
              }
            }
            m.badges = std::move(*list);
          } else if (k == "machines") {
            auto list = string_array(node, problems, at, "driver names such as \"laser\"");
            if (!list) {
              ok = false;
              continue;
            }
            m.machines = std::move(*list);
          } else {
            problems.add(line_of(node), at,
                         "unknown key (known keys: handle, agent, badges, machines)");
            ok = false;
          }
        }
        if (m.handle.empty() && !table.contains("handle")) {
          problems.add(line_of(table), where + ".handle", "required key is missing");
          ok = false;
        }
        if (m.agent.empty() && !table.contains("agent")) {
          problems.add(line_of(table), where + ".agent", "required key is missing");
          ok = false;
        }
        if (!m.handle.empty() && !handles.insert(m.handle).second) {
          problems.add(line_of(*table.get("handle")), where + ".handle",
                       fmt::format("handle \"{}\" is used by another member", m.handle));
          ok = false;
        }
        for (std::size_t b = 0; b < m.badges.size(); ++b) {
          auto [it, inserted] = badge_owner.emplace(m.badges[b], m.handle);
          if (!inserted) {
            problems.add(line_of(*table.get("badges")->as_array()->get(b)),
                         fmt::format("{}.badges[{}]", where, b),
                         fmt::format("this badge is already \"{}\"'s", it->second));
            ok = false;
          }
        }
        if (ok) out.m_members.push_back(std::move(m));
      }
    }
  }
  if (!problems.empty()) return std::unexpected(problems.error());
  return out;
}

const Member* Members::by_badge(std::string_view hash) const {
  for (const Member& m : m_members)
    if (std::find(m.badges.begin(), m.badges.end(), hash) != m.badges.end()) return &m;
  return nullptr;
}

const Member* Members::by_handle(std::string_view handle) const {
  for (const Member& m : m_members)
    if (m.handle == handle) return &m;
  return nullptr;
}

namespace {

// A TOML basic string (JSON escapes are valid TOML basic-string escapes).
std::string toml_string(std::string_view text) {
  return nlohmann::json(std::string(text)).dump();
}

std::string toml_string_array(const std::vector<std::string>& items) {
  std::string out = "[";
  for (std::size_t i = 0; i < items.size(); ++i)
    out += (i == 0 ? "" : ", ") + toml_string(items[i]);
  return out + "]";
}

// Offset of (line, column), both 1-based as toml++ counts them (column in code points; the
// lines this replaces are ASCII up to the value).
std::size_t offset_of(std::string_view text, std::uint32_t line, std::uint32_t column) {
  std::size_t pos = 0;
  for (std::uint32_t l = 1; l < line && pos != text.npos; ++l) {
    pos = text.find('\n', pos);
    if (pos != text.npos) ++pos;
  }
  if (pos == text.npos) return text.size();
  return std::min(text.size(), pos + column - 1);
}

// Replaces the value of `key` in `table` (its source span) with `value`, or, when the key is
// absent, inserts `key = value` on the line after the table's last line of text.
void set_value(std::string& text, const toml::table& table, std::string_view key,
               const std::string& value) {
  if (const toml::node* node = table.get(key); node != nullptr) {
    const auto& src = node->source();
    const std::size_t begin = offset_of(text, src.begin.line, src.begin.column);
    const std::size_t end = offset_of(text, src.end.line, src.end.column);
    text.replace(begin, end - begin, value);
    return;
  }
  // After the table's header line.
  std::size_t pos = offset_of(text, table.source().begin.line + 1, 1);
  text.insert(pos, fmt::format("{} = {}\n", key, value));
}

}  // namespace

Status add_member_badge(const std::filesystem::path& file, std::string_view handle,
                        std::string_view agent_ref, std::string_view badge,
                        std::optional<std::string_view> machine) {
  if (!is_badge_hash(badge))
    return fail(ErrorCode::invalid_argument,
                "not a keyed badge hash (43 base64url characters); a raw card id is never "
                "written to the members file");
  std::string text;
  std::error_code ec;
  if (std::filesystem::exists(file, ec)) {
    auto read = read_text(file);
    if (!read) return std::unexpected(read.error());
    text = std::move(*read);
  }
  auto members = Members::parse(text, file.string());
  if (!members) return std::unexpected(members.error());
  if (const Member* owner = members->by_badge(badge); owner && owner->handle != handle)
    return fail(ErrorCode::invalid_config,
                fmt::format("{}: this badge is already \"{}\"'s", file.string(), owner->handle));
  const Member* existing = members->by_handle(handle);
  if (existing == nullptr) {
    if (!text.empty() && text.back() != '\n') text += '\n';
    if (!text.empty()) text += '\n';
    text += fmt::format("[[member]]\nhandle = {}\nagent = {}\nbadges = [{}]\n", toml_string(handle),
                        toml_string(agent_ref), toml_string(badge));
    if (machine) text += fmt::format("machines = [{}]\n", toml_string(*machine));
  } else {
    if (existing->agent != agent_ref)
      return fail(ErrorCode::invalid_config,
                  fmt::format("{}:{}: member \"{}\" has agent \"{}\", not \"{}\"", file.string(),
                              existing->line, handle, existing->agent, agent_ref));
    auto parsed = parse_toml(text, file.string());
    if (!parsed) return std::unexpected(parsed.error());
    const toml::table* table = nullptr;
    for (const auto& node : *(*parsed)["member"].as_array()) {
      const auto& t = *node.as_table();
      if (t["handle"].value<std::string>() == handle) table = &t;
    }
    std::vector<std::string> badges = existing->badges;
    std::vector<std::string> machines = existing->machines;
    const bool new_badge = std::find(badges.begin(), badges.end(), badge) == badges.end();
    const bool new_machine =
        machine && std::find(machines.begin(), machines.end(), *machine) == machines.end();
    if (new_badge) badges.emplace_back(badge);
    if (new_machine) machines.emplace_back(*machine);
    // Later keys first, so that the earlier key's positions still hold.
    const bool machines_after =
        table->get("machines") && table->get("badges") &&
        table->get("machines")->source().begin.line > table->get("badges")->source().begin.line;
    auto set_badges = [&] {
      if (new_badge) set_value(text, *table, "badges", toml_string_array(badges));
    };
    auto set_machines = [&] {
      if (new_machine) set_value(text, *table, "machines", toml_string_array(machines));
    };
    if (machines_after) {
      set_machines();
      set_badges();
    } else {
      set_badges();
      set_machines();
    }
  }
  auto check = Members::parse(text, file.string());
  if (!check)
    return fail(ErrorCode::invalid_config,
                fmt::format("the edited members file would not load ({}); nothing was written",
                            check.error().message));
  const std::filesystem::path tmp = file.string() + ".tmp";
  file_io::Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
  if (fd.get() < 0)
    return fail(ErrorCode::io,
                fmt::format("cannot write \"{}\": {}", tmp.string(), file_io::errno_text(errno)));
  if (int err = file_io::write_all(fd.get(), text); err != 0 || ::fsync(fd.get()) != 0 ||
                                                    fd.close_now() != 0 ||
                                                    ::rename(tmp.c_str(), file.c_str()) != 0) {
    const int e = err != 0 ? err : errno;
    ::unlink(tmp.c_str());
    return fail(ErrorCode::io,
                fmt::format("cannot replace \"{}\": {}", file.string(), file_io::errno_text(e)));
  }
  file_io::fsync_parent(file);
  return {};
}

Status save_last_unknown(const std::filesystem::path& state_dir, const UnknownBadge& badge) {
  nlohmann::json state;
  state["version"] = 1;
  state["hash"] = badge.hash;
  state["seen_at"] = badge.seen_at;
  return save_driver_state(state_dir / "last-unknown.json", state);
}

Result<std::optional<UnknownBadge>> load_last_unknown(const std::filesystem::path& state_dir) {
  auto state = load_driver_state(state_dir / "last-unknown.json");
  if (!state) return std::unexpected(state.error());
  if (state->empty()) return std::optional<UnknownBadge>{};
  const auto hash = state->value("hash", std::string());
  if (!is_badge_hash(hash))
    return fail(ErrorCode::corruption, fmt::format("{}: no keyed badge hash in it",
                                                   (state_dir / "last-unknown.json").string()));
  return std::optional<UnknownBadge>{UnknownBadge{hash, state->value("seen_at", std::string())}};
}

}  // namespace agent
