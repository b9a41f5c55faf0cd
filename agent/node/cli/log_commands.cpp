// SPDX-License-Identifier: AGPL-3.0-or-later
// log checkpoint|prove|consistency: the node's verifiable log (RFC 9162 §2.1 Merkle tree over
// every stored envelope, store.hpp), for auditors and devices. Each prints one JSON object; every
// hash is lower-case hex of its 32 bytes.
#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/merkle.hpp>
#include <reflow/node/node_key.hpp>
#include <reflow/node/store.hpp>

#include "commands.hpp"

namespace ingest::cli {
namespace {

struct LogOptions {
  std::string config_path{k_default_config_path};
  std::string event_id;
  std::optional<std::uint64_t> size;
  std::uint64_t old_size = 0;
  bool signed_note = false;
};

nlohmann::ordered_json hex_list(const std::vector<agent::merkle::Hash>& hashes) {
  auto list = nlohmann::ordered_json::array();
  for (const auto& hash : hashes)
    list.push_back(agent::merkle::to_hex(hash));
  return list;
}

int print(const nlohmann::ordered_json& json) {
  std::cout << json.dump() << '\n';
  std::cout.flush();
  return std::cout ? 0 : 1;
}

// The checkpoint of `size` leaves, or the current one.
agent::Result<LogCheckpoint> checkpoint_of(Store& store, std::optional<std::uint64_t> size) {
  return size ? store.log_checkpoint_at(*size) : store.log_checkpoint();
}

int run_checkpoint(const LogOptions& options) {
  auto store = open_store_or_report(options.config_path, StoreOpen::existing_only);
  if (!store) return 1;
  auto checkpoint = checkpoint_of(*store, options.size);
  if (print_if_error(checkpoint)) return 1;
  if (options.signed_note) {
    auto config = config_or_report(options.config_path);
    if (!config) return 1;
    auto signer = node_signer_or_report(*config);
    if (!signer) return 1;
    std::cout << signer->checkpoint_note(*checkpoint);
    std::cout.flush();
    return std::cout ? 0 : 1;
  }
  return print({{"size", checkpoint->size}, {"root", agent::merkle::to_hex(checkpoint->root)}});
}

int run_prove(const LogOptions& options) {
  auto store = open_store_or_report(options.config_path, StoreOpen::existing_only);
  if (!store) return 1;
  auto entries = store->log_entries(options.event_id);
  if (print_if_error(entries)) return 1;
  if (entries->empty()) {
    print_error(fmt::format("no stored event has id {}", options.event_id));
    return 1;
  }
  auto checkpoint = checkpoint_of(*store, options.size);
  if (print_if_error(checkpoint)) return 1;
  int status = 0;
  for (const LogEntry& entry : *entries) {
    if (entry.index >= checkpoint->size) {
      print_error(fmt::format("event {} is leaf {}, beyond the tree of {} leaves", options.event_id,
                              entry.index, checkpoint->size));
      status = 1;
      continue;
    }
    auto proof = store->log_inclusion_proof(entry.index, checkpoint->size);
    if (print_if_error(proof)) return 1;
    status |= print({{"event_id", options.event_id},
                     {"device", entry.device},
                     {"stream", entry.stream},
                     {"seq", entry.seq},
                     {"index", entry.index},
                     {"leaf", agent::merkle::to_hex(entry.leaf)},
                     {"size", checkpoint->size},
                     {"root", agent::merkle::to_hex(checkpoint->root)},
                     {"proof", hex_list(*proof)}});
  }
  return status;
}

int run_consistency(const LogOptions& options) {
  auto store = open_store_or_report(options.config_path, StoreOpen::existing_only);
  if (!store) return 1;
  auto checkpoint = checkpoint_of(*store, options.size);
  if (print_if_error(checkpoint)) return 1;
  auto old_checkpoint = store->log_checkpoint_at(options.old_size);
  if (print_if_error(old_checkpoint)) return 1;
  auto proof = store->log_consistency_proof(options.old_size, checkpoint->size);
  if (print_if_error(proof)) return 1;
  return print({{"old_size", old_checkpoint->size},
                {"old_root", agent::merkle::to_hex(old_checkpoint->root)},
                {"size", checkpoint->size},
                {"root", agent::merkle::to_hex(checkpoint->root)},
                {"proof", hex_list(*proof)}});
}

}  // namespace

void add_log_commands(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<LogOptions>();
  auto* log = app.add_subcommand(
      "log",
      "The node's verifiable log: every stored envelope, in the order stored, as a leaf of an "
      "RFC 9162 Merkle tree. Prints one JSON object; hashes are hex");
  log->require_subcommand(1);
  const auto add_size = [&](CLI::App& command, const char* what) {
    command.add_option("--size", options->size, what)->check(CLI::PositiveNumber);
  };

  auto* checkpoint = log->add_subcommand(
      "checkpoint", "The log's size and root hash: {\"size\": N, \"root\": HEX}");
  add_config_option(*checkpoint, options->config_path);
  add_size(*checkpoint, "The root of the first N leaves, as the checkpoint of that size was");
  checkpoint->add_flag("--signed", options->signed_note,
                       "Print the checkpoint signed by the node's key instead: the C2SP "
                       "tlog-checkpoint signed note (origin, size, base64 root, signature line)");
  checkpoint->callback([options, &exit_code] { exit_code = run_checkpoint(*options); });

  auto* prove = log->add_subcommand(
      "prove",
      "The inclusion proof of a stored event (RFC 9162 §2.1.3): {event_id, device, stream, seq, "
      "index, leaf, size, root, proof: [HEX …]}, leaf = SHA-256(0x00 || envelope)");
  add_config_option(*prove, options->config_path);
  prove->add_option("EVENT_ID", options->event_id, "The event's id (the payload's \"id\")")
      ->required();
  add_size(*prove, "Prove it in the tree of the first N leaves (default: the whole log)");
  prove->callback([options, &exit_code] { exit_code = run_prove(*options); });

  auto* consistency = log->add_subcommand(
      "consistency",
      "The consistency proof that the log of OLD_SIZE leaves is a prefix of the current one "
      "(RFC 9162 §2.1.4): {old_size, old_root, size, root, proof: [HEX …]}");
  add_config_option(*consistency, options->config_path);
  consistency->add_option("OLD_SIZE", options->old_size, "The size of the earlier checkpoint")
      ->required();
  add_size(*consistency, "Prove it up to the first N leaves (default: the whole log)");
  consistency->callback([options, &exit_code] { exit_code = run_consistency(*options); });
}

}  // namespace ingest::cli
