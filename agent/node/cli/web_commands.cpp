// SPDX-License-Identifier: AGPL-3.0-or-later
// serve (the web page, reflow/node/web.hpp) and users add|list|remove (its accounts).
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>

#include <reflow/core/logger.hpp>
#include <reflow/core/process.hpp>
#include <reflow/core/text.hpp>
#include <reflow/node/web.hpp>

#include "commands.hpp"

namespace ingest::cli {
namespace {

constexpr std::string_view k_serve_component = "serve";

// One line of stdin without its line end; nullopt at end of input.
std::optional<std::string> read_line() {
  std::string line;
  if (!std::getline(std::cin, line)) return std::nullopt;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

// A line typed at the terminal with echo off, after `prompt` on stderr.
std::optional<std::string> read_hidden(std::string_view prompt) {
  std::fputs(std::string(prompt).c_str(), stderr);
  termios old_mode{};
  const bool restore = ::tcgetattr(STDIN_FILENO, &old_mode) == 0;
  if (restore) {
    termios quiet = old_mode;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
  }
  auto line = read_line();
  if (restore) ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &old_mode);
  std::fputs("\n", stderr);
  return line;
}

// The new password: typed twice at a terminal, or the first line of stdin otherwise.
std::optional<std::string> read_new_password() {
  std::optional<std::string> password;
  if (::isatty(STDIN_FILENO) != 0) {
    password = read_hidden("Password: ");
    const auto again = read_hidden("Password again: ");
    if (password && again && *password != *again) {
      print_error("the passwords differ; nothing changed");
      return std::nullopt;
    }
  } else {
    password = read_line();
  }
  if (!password || password->empty()) {
    print_error(
        "no password given (type it at the prompt, or pass it as the first line of "
        "stdin); nothing changed");
    return std::nullopt;
  }
  return password;
}

int users_add(const std::string& config_path, const std::string& name) {
  auto config = config_or_report(config_path);
  if (!config) return 1;
  if (!web::is_valid_user_name(name)) {
    print_error(fmt::format("user name \"{}\": expected 1 to 64 characters of A-Z a-z 0-9 . _ -",
                            agent::printable_text(name)));
    return 2;
  }
  const auto password = read_new_password();
  if (!password) return 1;
  auto hash = web::hash_password(*password);
  if (print_if_error(hash)) return 1;
  const web::UserFile users(web::UserFile::path_for(*config));
  if (print_if_error(users.put(name, *hash))) return 1;
  std::cout << fmt::format("user {} saved in {}\n", name, users.path().string());
  return 0;
}

int users_list(const std::string& config_path) {
  auto config = config_or_report(config_path);
  if (!config) return 1;
  auto users = web::UserFile(web::UserFile::path_for(*config)).load();
  if (print_if_error(users)) return 1;
  for (const auto& [name, hash] : *users)
    std::cout << name << '\n';
  return 0;
}

int users_remove(const std::string& config_path, const std::string& name) {
  auto config = config_or_report(config_path);
  if (!config) return 1;
  const web::UserFile users(web::UserFile::path_for(*config));
  if (print_if_error(users.remove(name))) return 1;
  std::cout << fmt::format("user {} removed\n", name);
  return 0;
}

int serve(const std::string& config_path, const std::string& listen_text) {
  agent::Logger log;
  auto config = config_or_report(config_path);
  if (!config) return 1;
  log.set_level(config->log_level);
  const std::string text = listen_text.empty() ? config->http_listen : listen_text;
  const auto listen = web::parse_listen_address(text);
  if (!listen) {
    print_error(
        fmt::format("--listen: expected ADDR:PORT with an IP address and a port 0-65535, "
                    "such as 127.0.0.1:8080; got \"{}\"",
                    text));
    return 2;
  }
  auto store = open_store_or_report(*config, StoreOpen::existing_only);
  if (!store) return 1;
  const auto users_file = web::UserFile::path_for(*config);
  auto users = web::UserFile(users_file).load();
  if (print_if_error(users)) return 1;
  if (users->empty())
    log.warning(k_serve_component,
                "no accounts in {}: nobody can log in; add one with `reflow-ingest "
                "users add NAME`",
                users_file.string());
  web::Server server(*store, agent::Env::real(),
                     {.listen = *listen,
                      .users_file = users_file,
                      .store_path = config->store_path(),
                      .secure_cookies = false});
  auto port = server.start();
  if (print_if_error(port)) return 1;
  const std::string host = listen->host.find(':') != std::string::npos
                               ? fmt::format("[{}]", listen->host)
                               : listen->host;
  log.info(k_serve_component, "serving http://{}:{}/", host, *port);
  agent::wait_for_stop_signal(log, k_serve_component, std::chrono::seconds(10), [] {});
  server.stop();
  return 0;
}

}  // namespace

void add_web_commands(CLI::App& app, int& exit_code) {
  struct Options {
    std::string config{k_default_config_path};
    std::string listen;
    std::string name;
  };
  auto options = std::make_shared<Options>();

  auto* serve_command = app.add_subcommand(
      "serve",
      "Serve the node's web page (devices, events, rejections, CSV/JSON downloads) and /metrics "
      "for Prometheus, read-only, behind a login (users add)");
  add_config_option(*serve_command, options->config);
  serve_command->add_option("--listen", options->listen,
                            "ADDR:PORT to listen on instead of [http] listen");
  serve_command->callback(
      [options, &exit_code] { exit_code = serve(options->config, options->listen); });

  auto* users = app.add_subcommand("users", "The web page's accounts (DATA_DIR/web-users.json)");
  users->require_subcommand(1);
  auto* add = users->add_subcommand(
      "add",
      "Add an account, or set its password: typed twice at a terminal, else the first line of "
      "stdin; stored hashed (libsodium crypto_pwhash_str, Argon2id)");
  add_config_option(*add, options->config);
  add->add_option("NAME", options->name, "The account name (A-Z a-z 0-9 . _ -)")->required();
  add->callback([options, &exit_code] { exit_code = users_add(options->config, options->name); });
  auto* list = users->add_subcommand("list", "Print the account names, one per line");
  add_config_option(*list, options->config);
  list->callback([options, &exit_code] { exit_code = users_list(options->config); });
  auto* remove = users->add_subcommand("remove", "Remove an account");
  add_config_option(*remove, options->config);
  remove->add_option("NAME", options->name, "The account name")->required();
  remove->callback(
      [options, &exit_code] { exit_code = users_remove(options->config, options->name); });
}

}  // namespace ingest::cli
