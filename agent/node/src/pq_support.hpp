// SPDX-License-Identifier: AGPL-3.0-or-later
// What the PostgreSQL store (postgres_store.cpp) and the migration into it (store_migrate.cpp)
// share: the connection string made from [store] url and password_file, and statement
// parameters for libpqxx, each value in PostgreSQL's text format or NULL.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <pqxx/pqxx>

#include <reflow/node/store.hpp>

namespace ingest::pq {

/// pg_advisory_xact_lock key every writing transaction takes first ("RFLI", as the SQLite
/// file's application_id): the log's leaves are one sequence, and the chain and cap checks read
/// what earlier batches wrote, so writers of all instances sharing the database take turns.
/// Readers never take it.
inline constexpr std::int64_t k_write_lock = 0x52464c49;

/// Where to connect: libpq's connection string (may hold the password: never shown) and the
/// URL as messages show it (without a password).
struct Target {
  std::string conninfo;
  std::string shown;
};

/// The Target of `url` (a libpq connection URI) with the first line of `password_file`, when
/// that is not empty, as its password. Errors: invalid_config (password_file unreadable).
Result<Target> target(std::string_view url, const std::filesystem::path& password_file);

/// One parameter of a statement, in PostgreSQL's text format; nullopt is SQL NULL.
struct Param {
  std::optional<std::string> text;
};

}  // namespace ingest::pq

/// How libpqxx passes a Param: as its text, or NULL.
template <>
struct pqxx::string_traits<ingest::pq::Param> {
  static constexpr const char* name() noexcept { return "ingest::pq::Param"; }
  static constexpr bool has_null() noexcept { return true; }
  static bool is_null(const ingest::pq::Param& p) { return !p.text.has_value(); }
  static ingest::pq::Param null() { return {}; }
  static void from_string(const char* str, ingest::pq::Param& p) { p.text = str; }
  static std::string to_string(const ingest::pq::Param& p) { return p.text.value_or(""); }
};

namespace ingest::pq {

/// Bytes for a BYTEA column, sent in its hex text format (PostgreSQL §8.4.1).
struct Bytes {
  std::string_view data;
};

inline Param param(std::string_view s) {
  return Param{std::string(s)};
}
inline Param param(const std::string& s) {
  return Param{s};
}
inline Param param(std::int64_t v) {
  return Param{std::to_string(v)};
}
inline Param param(bool v) {
  return Param{v ? "true" : "false"};
}
inline Param param(Bytes b) {
  static constexpr char k_hex[] = "0123456789abcdef";
  std::string out = "\\x";
  out.reserve(2 + b.data.size() * 2);
  for (unsigned char c : b.data) {
    out.push_back(k_hex[c >> 4U]);
    out.push_back(k_hex[c & 0xfU]);
  }
  return Param{std::move(out)};
}
inline Param param(Param p) {
  return p;
}
template <typename T>
Param param(const std::optional<T>& v) {
  if (!v) return Param{};
  return param(*v);
}

/// Runs `sql` in `tx` with `params` as $1, $2, …
inline pqxx::result run_params(pqxx::transaction_base& tx, const std::string& sql,
                               const std::vector<Param>& params) {
  return tx.exec_params(sql, pqxx::prepare::make_dynamic_params(params));
}

/// Runs `sql` in `tx` with `args` (anything param() takes) as $1, $2, …
template <typename... Args>
pqxx::result run(pqxx::transaction_base& tx, const std::string& sql, Args&&... args) {
  const std::vector<Param> params{param(args)...};
  return run_params(tx, sql, params);
}

}  // namespace ingest::pq
