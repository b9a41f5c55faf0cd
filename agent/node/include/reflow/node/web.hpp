// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/env.hpp>
#include <reflow/core/result.hpp>
#include <reflow/node/config.hpp>
#include <reflow/node/store.hpp>

/// The node's web page (`reflow-ingest serve`, issue 20): read-only, server-rendered HTML pages
/// of the store (devices, events, rejections), CSV/JSON-lines downloads and /metrics for
/// Prometheus, behind a login. The HTTP server is cpp-httplib (Debian's libcpp-httplib-dev).
namespace ingest::web {

/// `text` with the five characters HTML gives a meaning escaped: & < > " ' become &amp; &lt;
/// &gt; &quot; &#39;. Safe in element content and in quoted attribute values (HTML Living
/// Standard §13.1.2.3, §13.1.3). Every dynamic string of every page goes through it.
std::string html_escape(std::string_view text);

/// `text` percent-encoded for a URL's query value (RFC 3986 §2.1): every byte but the
/// unreserved A-Z a-z 0-9 - _ . ~ as %XX (upper-case hex).
std::string url_encode(std::string_view text);

/// The value of cookie `name` in a `Cookie:` request header (RFC 6265 §4.2.1:
/// `name=value; name2=value2`, a value optionally in double quotes, which are removed); the
/// first one when the name repeats; nullopt when it is not there.
std::optional<std::string> cookie_value(std::string_view header, std::string_view name);

/// An address to listen on: `[http] listen` and `serve --listen`.
struct ListenAddress {
  std::string host;  ///< IPv4 dotted quad, or an IPv6 address (written in brackets in the text)
  int port = 0;      ///< 0: any free port (the server logs the one it got)
};

/// Parses `ADDR:PORT`: `127.0.0.1:8080`, `0.0.0.0:8080`, `[::1]:8080`; PORT 0 to 65535. Host
/// names are not accepted (the address is bound, not looked up). nullopt when malformed.
std::optional<ListenAddress> parse_listen_address(std::string_view text);

// --- accounts ---

/// A libsodium `crypto_pwhash_str` string (Argon2id, the "interactive" limits, its own salt) of
/// `password`. Errors: invalid_argument when the password is empty; io when libsodium fails
/// (out of memory).
agent::Result<std::string> hash_password(std::string_view password);

/// Whether `password` matches `hash` (crypto_pwhash_str_verify); false for a malformed hash.
bool verify_password(std::string_view hash, std::string_view password);

/// Whether `name` is a valid account name: 1 to 64 characters of A-Z a-z 0-9 . _ -.
bool is_valid_user_name(std::string_view name);

/// The accounts of the web page: DATA_DIR/web-users.json, `{"users":{"NAME":"HASH",…}}` (HASH:
/// hash_password), mode 0600. Each change rewrites the file whole (a new file, fsynced, renamed
/// over the old one).
class UserFile {
 public:
  explicit UserFile(std::filesystem::path path) : m_path(std::move(path)) {}

  /// DATA_DIR/web-users.json of `config`.
  static std::filesystem::path path_for(const IngestConfig& config) {
    return config.data_dir / "web-users.json";
  }

  /// Name → hash; empty when the file does not exist. Errors: io (unreadable), corruption (not
  /// the format above: the message names the file).
  agent::Result<std::map<std::string, std::string>> load() const;

  /// Adds or replaces `name` with `hash`. Errors: invalid_argument for a bad name; those of
  /// load(); io when the file cannot be written.
  agent::Status put(std::string_view name, std::string_view hash) const;

  /// Removes `name`. Errors: not_found when there is no such account; as put().
  agent::Status remove(std::string_view name) const;

  const std::filesystem::path& path() const { return m_path; }

 private:
  agent::Status save(const std::map<std::string, std::string>& users) const;
  std::filesystem::path m_path;
};

// --- login ---

/// Whether `password` is the password of account `user` in `users` (name → hash_password
/// string). For an unknown user the password is verified all the same, against `dummy_hash` (a
/// hash_password of a secret nobody knows, made with the same limits), and the answer is false
/// whatever that says: the work, and so the time of the answer, is the same for a name that is
/// an account and one that is not, so timing does not tell which accounts exist.
bool verify_login(const std::map<std::string, std::string>& users, std::string_view user,
                  std::string_view password, std::string_view dummy_hash);

/// Failed logins limited per client address and per user name, against password guessing:
/// after `max_failures` failures within `window`, further attempts from that address, or for
/// that user from anywhere, are refused until the oldest of those failures is `window` old (a
/// sliding window). Names that cannot be accounts (is_valid_user_name false) share one
/// counter. Time is the Env's steady clock, so tests move it by hand. Memory: per address and
/// name that failed, its newest `max_failures` times; counters whose failures are all older
/// than the window are dropped as new failures arrive. Behind a reverse proxy every client has
/// the proxy's address: the per-address limit then applies to all clients together.
/// Thread-safe.
class LoginLimiter {
 public:
  struct Limits {
    int max_failures = 5;
    std::chrono::milliseconds window{std::chrono::minutes(1)};
  };

  /// `env` must outlive the limiter.
  LoginLimiter(agent::Env& env, Limits limits);

  /// How long an attempt from `address` for `user` must wait, in whole seconds rounded up (at
  /// least 1: the value of Retry-After, RFC 9110 §10.2.3); nullopt when it may go ahead.
  std::optional<std::chrono::seconds> retry_after(std::string_view address, std::string_view user);

  /// Counts a failed attempt (wrong password, unknown user) for `address` and for `user`.
  void failed(std::string_view address, std::string_view user);

  /// A login succeeded: forgets the failures of `address` and of `user`.
  void succeeded(std::string_view address, std::string_view user);

 private:
  using Times = std::deque<std::chrono::steady_clock::time_point>;
  std::string user_key(std::string_view user) const;
  void drop_old(Times& times, std::chrono::steady_clock::time_point now) const;

  agent::Env& m_env;
  Limits m_limits;
  std::mutex m_mutex;
  std::map<std::string, Times, std::less<>> m_failures;  // "a " + address, "u " + user
};

// --- metrics ---

/// The Prometheus text exposition format (version 0.0.4: prometheus.io/docs/instrumenting/
/// exposition_formats), each family with its # HELP and # TYPE line:
///   reflow_events_stored_total{device}            counter: events stored
///   reflow_events_rejected_total{device,reason}   counter: envelopes refused (every arrival)
///   reflow_devices                                gauge: devices registered or seen
///   reflow_store_size_bytes                       gauge: `store_bytes`
/// Label values are escaped as the format says (\\, \", \n).
std::string metrics_text(const std::vector<DeviceStats>& stats, std::int64_t store_bytes);

// --- the server ---

/// What `serve` needs.
struct ServerOptions {
  ListenAddress listen;
  std::filesystem::path users_file;
  std::filesystem::path store_path;  ///< for the store's size in /metrics (and its -wal file)
  bool secure_cookies = false;       ///< adds `Secure` to the session cookie (served over TLS)
};

/// The web server: start() binds and serves on its own threads until stop(). Logins are
/// limited by a LoginLimiter (5 failures a minute per client address and per user name: 429
/// with Retry-After), and an unknown user name costs the same password check as a known one
/// (verify_login).
class Server {
 public:
  /// `store` and `env` (sessions' lifetime, the login limits) must outlive the server. Hashes
  /// a random secret once (verify_login's dummy hash): about as long as one login.
  Server(Store& store, agent::Env& env, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Binds options.listen and starts serving. Returns the port bound (the chosen one for port
  /// 0). Errors: io naming the address when it cannot be bound.
  agent::Result<int> start();

  /// Stops serving and joins the threads. Idempotent.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace ingest::web
