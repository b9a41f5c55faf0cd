// SPDX-License-Identifier: AGPL-3.0-or-later
// migrate --from sqlite:PATH --to postgresql://…: moves a node's store from its SQLite file to
// PostgreSQL (migrate_sqlite_to_postgres in reflow/node/store.hpp).
#include <iostream>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "commands.hpp"

namespace ingest::cli {
namespace {

struct MigrateOptions {
  std::string from;
  std::string to;
  std::string password_file;
};

constexpr std::string_view k_sqlite_prefix = "sqlite:";

int run_migrate(const MigrateOptions& options) {
  if (!options.from.starts_with(k_sqlite_prefix) || options.from.size() == k_sqlite_prefix.size()) {
    print_error(
        fmt::format("migrate --from \"{}\": expected sqlite:PATH, the store's file (e.g. "
                    "sqlite:/var/lib/reflow-ingest/ingest.db)",
                    options.from));
    return 2;
  }
  if (!options.to.starts_with("postgresql://") && !options.to.starts_with("postgres://")) {
    print_error(
        "migrate --to: expected a postgresql:// URL (libpq's connection URI, as [store] url)");
    return 2;
  }
  const std::filesystem::path from = options.from.substr(k_sqlite_prefix.size());
  auto report = migrate_sqlite_to_postgres(
      from, options.to, options.password_file,
      [](std::string_view line) { std::cerr << "migrate: " << line << '\n'; });
  if (print_if_error(report)) return 1;
  for (const auto& table : report->tables)
    std::cout << fmt::format("{:<20} {:>10} rows ({} copied now)\n", table.name, table.rows,
                             table.copied);
  std::cout << fmt::format("log: {} entries, root {} in both stores\n", report->log.size,
                           agent::base64url_encode(report->log.root));
  std::cout.flush();
  return std::cout ? 0 : 1;
}

}  // namespace

void add_migrate_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<MigrateOptions>();
  auto* migrate = app.add_subcommand(
      "migrate",
      "Copy a node's SQLite store into a PostgreSQL database: the registry, events, rejections, "
      "ack points, the log and the export ledger. Counts and the log's root are checked; a re-run "
      "continues a copy whose log is a prefix of the source's. Stop `reflow-ingest run` first");
  migrate->add_option("--from", options->from, "The source: sqlite:PATH of the store's file")
      ->required();
  migrate
      ->add_option("--to", options->to,
                   "The target: a postgresql:// URL (an empty database, or one this command "
                   "filled before)")
      ->required();
  migrate->add_option("--password-file", options->password_file,
                      "A file whose first line is the database password");
  migrate->callback([options, &exit_code] { exit_code = run_migrate(*options); });
}

}  // namespace ingest::cli
