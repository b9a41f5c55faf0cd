// SPDX-License-Identifier: AGPL-3.0-or-later
// The web page's parts that are not HTTP: escaping, cookies, the listen address, accounts and
// the metrics text (web_server.cpp serves them).
#include <reflow/node/web.hpp>

#include <arpa/inet.h>
#include <sodium.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/file_io.hpp>
#include <reflow/core/http.hpp>
#include <reflow/core/text.hpp>

namespace ingest::web {

using agent::ErrorCode;
using agent::fail;

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string url_encode(std::string_view text) {
  return agent::url_escape(text);
}

std::optional<std::string> cookie_value(std::string_view header, std::string_view name) {
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
      s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
      s.remove_suffix(1);
    return s;
  };
  while (!header.empty()) {
    const auto end = header.find(';');
    const std::string_view pair = trim(header.substr(0, end));
    header = end == header.npos ? std::string_view{} : header.substr(end + 1);
    const auto eq = pair.find('=');
    if (eq == pair.npos || trim(pair.substr(0, eq)) != name) continue;
    std::string_view value = trim(pair.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
      value = value.substr(1, value.size() - 2);
    return std::string(value);
  }
  return std::nullopt;
}

std::optional<ListenAddress> parse_listen_address(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == text.npos || colon + 1 == text.size()) return std::nullopt;
  std::string_view host = text.substr(0, colon);
  const std::string_view port_text = text.substr(colon + 1);
  int port = -1;
  const auto [end, ec] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc{} || end != port_text.data() + port_text.size() || port < 0 || port > 65535)
    return std::nullopt;
  const bool bracketed = host.size() >= 2 && host.front() == '[' && host.back() == ']';
  if (bracketed) host = host.substr(1, host.size() - 2);
  const std::string host_text(host);
  unsigned char buffer[sizeof(in6_addr)];
  const int family = bracketed ? AF_INET6 : AF_INET;
  if (::inet_pton(family, host_text.c_str(), buffer) != 1) return std::nullopt;
  return ListenAddress{host_text, port};
}

agent::Result<std::string> hash_password(std::string_view password) {
  if (password.empty()) return fail(ErrorCode::invalid_argument, "the password is empty");
  if (sodium_init() < 0) return fail(ErrorCode::io, "libsodium could not be initialised");
  std::string hash(crypto_pwhash_STRBYTES, '\0');
  if (crypto_pwhash_str(hash.data(), password.data(), password.size(),
                        crypto_pwhash_OPSLIMIT_INTERACTIVE,
                        crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0)
    return fail(ErrorCode::io, "hashing the password failed (out of memory?)");
  hash.resize(hash.find('\0'));
  return hash;
}

bool verify_password(std::string_view hash, std::string_view password) {
  if (sodium_init() < 0 || hash.empty() || hash.size() >= crypto_pwhash_STRBYTES) return false;
  const std::string terminated(hash);  // crypto_pwhash_str_verify reads a C string
  return crypto_pwhash_str_verify(terminated.c_str(), password.data(), password.size()) == 0;
}

bool is_valid_user_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (const char c : name) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

agent::Result<std::map<std::string, std::string>> UserFile::load() const {
  std::map<std::string, std::string> users;
  std::ifstream in(m_path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!std::filesystem::exists(m_path, ec) && !ec) return users;
    return fail(ErrorCode::io, fmt::format("cannot read {}: {}", m_path.string(),
                                           agent::file_io::errno_text(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  const auto json = nlohmann::json::parse(text.str(), nullptr, false);
  const auto bad = [&] {
    return fail(ErrorCode::corruption,
                fmt::format("{}: expected {{\"users\":{{\"NAME\":\"HASH\",…}}}} as `reflow-ingest "
                            "users add` writes it",
                            m_path.string()));
  };
  if (!json.is_object() || !json.contains("users") || !json["users"].is_object()) return bad();
  for (const auto& [name, hash] : json["users"].items()) {
    if (!hash.is_string() || !is_valid_user_name(name)) return bad();
    users[name] = hash.get<std::string>();
  }
  return users;
}

agent::Status UserFile::save(const std::map<std::string, std::string>& users) const {
  nlohmann::json json = {{"users", nlohmann::json::object()}};
  for (const auto& [name, hash] : users)
    json["users"][name] = hash;
  const std::filesystem::path temp = m_path.string() + ".new";
  std::error_code ec;
  std::filesystem::remove(temp, ec);  // left by a writer that stopped half-way
  agent::file_io::Fd fd = agent::file_io::create_new(temp, 0600);
  if (fd.get() < 0)
    return fail(ErrorCode::io, fmt::format("cannot create {}: {}", temp.string(),
                                           agent::file_io::errno_text(errno)));
  if (const int err = agent::file_io::finish_new(fd, temp, json.dump(2) + "\n"); err != 0)
    return fail(ErrorCode::io,
                fmt::format("cannot write {}: {}", temp.string(), agent::file_io::errno_text(err)));
  std::filesystem::rename(temp, m_path, ec);
  if (ec)
    return fail(ErrorCode::io, fmt::format("cannot replace {}: {}", m_path.string(), ec.message()));
  agent::file_io::fsync_parent(m_path);
  return {};
}

agent::Status UserFile::put(std::string_view name, std::string_view hash) const {
  if (!is_valid_user_name(name))
    return fail(ErrorCode::invalid_argument,
                fmt::format("user name \"{}\": expected 1 to 64 characters of A-Z a-z 0-9 . _ -",
                            agent::printable_text(name)));
  auto users = load();
  if (!users) return std::unexpected(users.error());
  (*users)[std::string(name)] = std::string(hash);
  return save(*users);
}

agent::Status UserFile::remove(std::string_view name) const {
  auto users = load();
  if (!users) return std::unexpected(users.error());
  if (users->erase(std::string(name)) == 0)
    return fail(ErrorCode::not_found,
                fmt::format("no user \"{}\" in {}", agent::printable_text(name), m_path.string()));
  return save(*users);
}

bool verify_login(const std::map<std::string, std::string>& users, std::string_view user,
                  std::string_view password, std::string_view dummy_hash) {
  const auto it = users.find(std::string(user));
  if (it == users.end()) {
    (void)verify_password(dummy_hash, password);  // the same work as for an account
    return false;
  }
  return verify_password(it->second, password);
}

LoginLimiter::LoginLimiter(agent::Env& env, Limits limits) : m_env(env), m_limits(limits) {}

std::string LoginLimiter::user_key(std::string_view user) const {
  // Names that cannot be accounts share one counter, so that guessing with made-up names cannot
  // grow the map beyond the addresses that try.
  return is_valid_user_name(user) ? fmt::format("u {}", user) : std::string("u (invalid name)");
}

void LoginLimiter::drop_old(Times& times, std::chrono::steady_clock::time_point now) const {
  while (!times.empty() && times.front() + m_limits.window <= now)
    times.pop_front();
}

std::optional<std::chrono::seconds> LoginLimiter::retry_after(std::string_view address,
                                                              std::string_view user) {
  const auto now = m_env.steady_now();
  std::lock_guard lock(m_mutex);
  std::optional<std::chrono::steady_clock::duration> wait;
  for (const std::string& key : {fmt::format("a {}", address), user_key(user)}) {
    const auto it = m_failures.find(key);
    if (it == m_failures.end()) continue;
    drop_old(it->second, now);
    if (std::ssize(it->second) < m_limits.max_failures) continue;
    // The attempt may go ahead once enough of the failures have left the window.
    const auto until =
        it->second[it->second.size() - static_cast<std::size_t>(m_limits.max_failures)] +
        m_limits.window;
    wait = std::max(wait.value_or(until - now), until - now);
  }
  if (!wait) return std::nullopt;
  return std::max(std::chrono::seconds(1), std::chrono::ceil<std::chrono::seconds>(*wait));
}

void LoginLimiter::failed(std::string_view address, std::string_view user) {
  const auto now = m_env.steady_now();
  std::lock_guard lock(m_mutex);
  for (auto it = m_failures.begin(); it != m_failures.end();) {
    drop_old(it->second, now);
    it = it->second.empty() ? m_failures.erase(it) : std::next(it);
  }
  for (const std::string& key : {fmt::format("a {}", address), user_key(user)}) {
    Times& times = m_failures[key];
    times.push_back(now);
    if (std::ssize(times) > m_limits.max_failures) times.pop_front();
  }
}

void LoginLimiter::succeeded(std::string_view address, std::string_view user) {
  std::lock_guard lock(m_mutex);
  m_failures.erase(fmt::format("a {}", address));
  m_failures.erase(user_key(user));
}

namespace {

// Prometheus label values escape backslash, double quote and line feed.
std::string label(std::string_view value) {
  std::string out;
  for (const char c : value) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

}  // namespace

std::string metrics_text(const std::vector<DeviceStats>& stats, std::int64_t store_bytes) {
  std::string out;
  out += "# HELP reflow_events_stored_total Events the node verified and stored, by device.\n";
  out += "# TYPE reflow_events_stored_total counter\n";
  for (const auto& device : stats)
    out += fmt::format("reflow_events_stored_total{{device=\"{}\"}} {}\n", label(device.device),
                       device.events);
  out +=
      "# HELP reflow_events_rejected_total Envelopes the node refused (every arrival), by "
      "device and reason.\n";
  out += "# TYPE reflow_events_rejected_total counter\n";
  for (const auto& device : stats) {
    std::map<std::string, std::int64_t> by_reason = device.rejections;
    for (const auto& [reason, n] : device.rejections_before_registration)
      by_reason[reason] += n;
    for (const auto& [reason, n] : by_reason)
      out += fmt::format("reflow_events_rejected_total{{device=\"{}\",reason=\"{}\"}} {}\n",
                         label(device.device), label(reason), n);
  }
  out += "# HELP reflow_devices Devices registered or seen by the node.\n";
  out += "# TYPE reflow_devices gauge\n";
  out += fmt::format("reflow_devices {}\n", stats.size());
  out += "# HELP reflow_store_size_bytes Size of the store's files (database and its WAL).\n";
  out += "# TYPE reflow_store_size_bytes gauge\n";
  out += fmt::format("reflow_store_size_bytes {}\n", store_bytes);
  return out;
}

}  // namespace ingest::web
