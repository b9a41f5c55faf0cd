// SPDX-License-Identifier: AGPL-3.0-or-later
#include "pg_cluster.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>

#include <fmt/format.h>

namespace reflow_test {
namespace {

namespace fs = std::filesystem;

constexpr const char* k_bin = "/usr/lib/postgresql/15/bin";
const fs::path k_script = fs::path(REFLOW_TEST_SUPPORT_DIR) / "pg_cluster.sh";
// The database pg_cluster.sh creates for the tests' schemas.
constexpr const char* k_database = "reflow_tests";
constexpr std::string_view k_search_path = "options=-csearch_path%3D";

std::string read_first_line(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// A cluster this process started (no ctest fixture): stopped when the process exits.
struct OwnCluster {
  fs::path state;
  ~OwnCluster() {
    if (std::system(fmt::format("'{}' stop '{}'", k_script.string(), state.string()).c_str()) != 0)
      std::fprintf(stderr, "pg_cluster: stopping the cluster in %s failed\n", state.c_str());
    std::error_code ec;
    fs::remove_all(state, ec);
  }
};

}  // namespace

PgCluster* PgCluster::shared(std::string& why) {
  static std::unique_ptr<OwnCluster> own;
  static std::unique_ptr<PgCluster> cluster;
  static std::string failure;
  if (cluster) return cluster.get();
  if (!failure.empty()) {
    why = failure;
    return nullptr;
  }
  if (!fs::exists(fs::path(k_bin) / "initdb")) {
    failure = fmt::format(
        "PostgreSQL 15 is not installed ({} has no initdb; Debian: apt-get install postgresql): "
        "the PostgreSQL store is not tested",
        k_bin);
    why = failure;
    return nullptr;
  }
  fs::path state;
  if (const char* env = std::getenv("REFLOW_TEST_PG_STATE"); env != nullptr && *env != '\0') {
    state = env;
  } else {
    own = std::make_unique<OwnCluster>();
    own->state = fs::temp_directory_path() / fmt::format("reflow-pg-state.{}", ::getpid());
    if (std::system(
            fmt::format("'{}' start '{}'", k_script.string(), own->state.string()).c_str()) != 0) {
      failure = fmt::format("{} start failed: see its output above", k_script.string());
      why = failure;
      return nullptr;
    }
    state = own->state;
  }
  const std::string dir = read_first_line(state / "cluster");
  if (dir.empty()) {
    failure =
        fmt::format("no PostgreSQL cluster was started ({} has no cluster file)", state.string());
    why = failure;
    return nullptr;
  }
  cluster.reset(new PgCluster(dir));
  return cluster.get();
}

bool PgCluster::psql(const std::string& database, const std::string& sql) const {
  return std::system(fmt::format("'{}/psql' -h '{}' -U postgres -d {} -qAtX -c '{}'", k_bin,
                                 m_socket_dir.string(), database, sql)
                         .c_str()) == 0;
}

bool PgCluster::run(const std::string& uri, const std::string& sql) const {
  // Both go through the shell in single quotes: each ' becomes '\''.
  auto quoted = [](std::string_view text) {
    std::string out = "'";
    for (char c : text)
      out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
  };
  return std::system(
             fmt::format("'{}/psql' -d {} -qAtX -c {}", k_bin, quoted(uri), quoted(sql)).c_str()) ==
         0;
}

std::string PgCluster::create_schema() {
  // Parallel test processes share the cluster: a random name, not a counter.
  std::random_device random;
  const std::string name = fmt::format("t{}_{:08x}", ::getpid(), random());
  if (!psql(k_database, fmt::format("CREATE SCHEMA {}", name))) return {};
  return fmt::format("postgresql:///{}?host={}&user=postgres&{}{}", k_database,
                     m_socket_dir.string(), k_search_path, name);
}

void PgCluster::drop_schema(const std::string& uri) {
  const auto at = uri.find(k_search_path);
  if (at == std::string::npos) return;
  const std::string name = uri.substr(at + k_search_path.size());
  psql(k_database, fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", name));
}

}  // namespace reflow_test
