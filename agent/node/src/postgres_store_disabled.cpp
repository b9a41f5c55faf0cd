// SPDX-License-Identifier: AGPL-3.0-or-later
// open_postgres_store and migrate_sqlite_to_postgres in a build without libpqxx
// (REFLOW_POSTGRESQL=OFF).
#include <reflow/node/store.hpp>

namespace ingest {

Result<std::unique_ptr<Store>> open_postgres_store(std::string_view, const std::filesystem::path&,
                                                   const RejectionLimits&, StoreOpen) {
  return agent::fail(agent::ErrorCode::invalid_config,
                     "this reflow-ingest was built without the PostgreSQL store: build it with "
                     "-DREFLOW_POSTGRESQL=ON (Debian: libpqxx-dev), or set [store] kind = "
                     "\"sqlite\"");
}

Result<MigrationReport> migrate_sqlite_to_postgres(const std::filesystem::path&, std::string_view,
                                                   const std::filesystem::path&,
                                                   const std::function<void(std::string_view)>&) {
  return agent::fail(agent::ErrorCode::invalid_config,
                     "this reflow-ingest was built without the PostgreSQL store: build it with "
                     "-DREFLOW_POSTGRESQL=ON (Debian: libpqxx-dev) to migrate into PostgreSQL");
}

}  // namespace ingest
