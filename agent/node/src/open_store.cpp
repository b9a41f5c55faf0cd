// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/config.hpp>
#include <reflow/node/store.hpp>

namespace ingest {

Result<std::unique_ptr<Store>> open_configured_store(const IngestConfig& config, StoreOpen mode) {
  switch (config.store_kind) {
    case StoreKind::postgresql:
      return open_postgres_store(config.store_url, config.store_password_file, {}, mode);
    case StoreKind::sqlite:
      break;
  }
  return open_sqlite_store(config.store_path(), {}, mode);
}

}  // namespace ingest
