// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <filesystem>
#include <string>

namespace reflow_test {

/// A real PostgreSQL 15 cluster for the store tests, started by pg_cluster.sh: on a unix socket
/// in a temporary directory, user "postgres", trusted.
///
/// Under ctest the cluster is started once per test run by the `pg_cluster_start` fixture test
/// and REFLOW_TEST_PG_STATE names its state directory; a test binary run on its own starts one
/// on first use and stops it when the process exits. Each test gets a schema of its own in the
/// cluster's database `reflow_tests` (create_schema): a store whose search_path is that schema
/// sees only its own tables, so tests running in parallel never see each other's rows. A schema
/// costs milliseconds where CREATE DATABASE cost 0.8 s per test. The stores of all tests share
/// the database's advisory write lock (postgres_store.cpp), held for one batch at a time.
/// Not thread-safe: call from the test's thread.
class PgCluster {
 public:
  /// The cluster of this run, started when needed; nullptr when PostgreSQL 15 is not installed
  /// (or did not start), with `why` saying so for GTEST_SKIP.
  static PgCluster* shared(std::string& why);

  /// Creates an empty schema with a name not used before in this cluster and returns the libpq
  /// URI of database `reflow_tests` with that schema as its only search_path (`options=-c
  /// search_path=…`). Empty when creating it failed.
  std::string create_schema();

  /// Drops a schema create_schema made, with everything in it (the stores using it are closed
  /// first by the caller).
  void drop_schema(const std::string& uri);

  /// Runs `sql` with psql at `uri` (one of create_schema's); false when it failed (psql printed
  /// why).
  bool run(const std::string& uri, const std::string& sql) const;

  const std::filesystem::path& socket_dir() const { return m_socket_dir; }

 private:
  explicit PgCluster(std::filesystem::path socket_dir) : m_socket_dir(std::move(socket_dir)) {}
  bool psql(const std::string& database, const std::string& sql) const;

  std::filesystem::path m_socket_dir;
};

}  // namespace reflow_test
