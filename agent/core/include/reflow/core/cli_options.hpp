// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once
// What both programs' command lines share. Header-only, for the two executables that link
// CLI11 (agent/device/cli, agent/node/cli); the libraries do not use it.

#include <CLI/CLI.hpp>

#include <string>

namespace agent::cli_options {

/// Makes every option of `app` and of all its subcommands (as they are when called: call it
/// after the last add_option) refuse an empty value, e.g. `events --device ""`. No option of
/// either program means anything by an empty value, and reading one as "not given" would turn
/// a filter into "everything". Flags are left alone. CLI11 reports a refusal as
/// "--device: is empty; leave the option out to mean …" and the command exits with status 105
/// (CLI::ValidationError) before it runs.
inline void refuse_empty_values(CLI::App& app) {
  const CLI::Validator not_empty(
      [](std::string& value) {
        return value.empty() ? std::string("is empty; give a value, or leave the option out")
                             : std::string();
      },
      "", "not_empty");
  for (CLI::Option* option : app.get_options())
    if (option->get_type_size_max() > 0) option->check(not_empty);
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    refuse_empty_values(*sub);
}

}  // namespace agent::cli_options
