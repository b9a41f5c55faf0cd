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
/// on first use and stops it when the process exits. Each test gets a database of its own
/// (create_database), so tests running in parallel never see each other's rows.
/// Not thread-safe: call from the test's thread.
class PgCluster {
 public:
  /// The cluster of this run, started when needed; nullptr when PostgreSQL 15 is not installed
  /// (or did not start), with `why` saying so for GTEST_SKIP.
  static PgCluster* shared(std::string& why);

  /// Creates an empty database (CREATE DATABASE … TEMPLATE template0) with a name not used
  /// before in this cluster and returns its libpq URI. Empty when creating it failed.
  std::string create_database();

  /// Drops a database create_database made (its connections are closed first).
  void drop_database(const std::string& uri);

  /// Runs `sql` with psql in the database at `uri` (one of create_database's); false when it
  /// failed (psql printed why).
  bool run(const std::string& uri, const std::string& sql) const;

  const std::filesystem::path& socket_dir() const { return m_socket_dir; }

 private:
  explicit PgCluster(std::filesystem::path socket_dir) : m_socket_dir(std::move(socket_dir)) {}
  bool psql(const std::string& sql) const;

  std::filesystem::path m_socket_dir;
};

}  // namespace reflow_test
