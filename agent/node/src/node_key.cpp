// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/node_key.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/file_io.hpp>
#include <reflow/core/signed_note.hpp>
#include <reflow/core/units.hpp>

namespace ingest {
namespace {

using agent::ErrorCode;
using agent::fail;

// Run as root, gives `path` to the owner of `dir` (the service user owns the data directory),
// so that the service can read the key `sudo reflow-ingest key init` made.
Status give_to_owner_of(const std::filesystem::path& dir, const std::filesystem::path& path) {
  if (::geteuid() != 0) return {};
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || st.st_uid == 0) return {};
  if (::lchown(path.c_str(), st.st_uid, st.st_gid) != 0)
    return fail(ErrorCode::io, fmt::format("cannot give {} to the owner of {}: {}", path.string(),
                                           dir.string(), std::generic_category().message(errno)));
  return {};
}

}  // namespace

Result<std::optional<NodeSigner>> NodeSigner::load(const IngestConfig& config) {
  const auto path = config.effective_node_key_file();
  std::error_code ec;
  if (std::filesystem::symlink_status(path, ec).type() == std::filesystem::file_type::not_found)
    return std::optional<NodeSigner>{};
  auto key = agent::DeviceKey::load(path);
  if (!key)
    return fail(key.error().code,
                fmt::format("the node's key (ingest.node_key_file): {}", key.error().message));
  return std::optional<NodeSigner>(std::in_place, std::move(*key), config.effective_log_origin());
}

NodeSigner::NodeSigner(agent::DeviceKey key, std::string origin)
    : m_key(std::move(key)), m_origin(std::move(origin)) {
  const nlohmann::ordered_json header = {
      {"alg", "EdDSA"}, {"kid", m_key.public_jwk().kid}, {"typ", std::string(k_ack_typ)}};
  m_protected_b64 = agent::base64url_encode(header.dump());
}

std::string NodeSigner::checkpoint_note(const LogCheckpoint& checkpoint) const {
  return agent::note::sign_checkpoint(m_key, {m_origin, checkpoint.size, checkpoint.root});
}

nlohmann::ordered_json NodeSigner::sign_ack(const AckStatement& statement) const {
  auto inclusion = nlohmann::ordered_json::array();
  for (const auto& hash : statement.inclusion)
    inclusion.push_back(agent::note::base64_encode(hash));
  nlohmann::ordered_json payload = {
      {"device", statement.device},
      {"stream", statement.point.stream},
      {"seq", statement.point.seq},
      {"node", m_key.public_jwk().kid},
      {"origin", m_origin},
      {"time", agent::format_rfc3339_ms(statement.time_unix_ms)},
      {"tree_size", statement.tree_size},
      {"root", agent::note::base64_encode(statement.root)},
      {"leaf_index", statement.leaf_index},
      {"inclusion", std::move(inclusion)},
  };
  if (statement.consistency_from) {
    auto consistency = nlohmann::ordered_json::array();
    for (const auto& hash : statement.consistency)
      consistency.push_back(agent::note::base64_encode(hash));
    payload["consistency_from"] = *statement.consistency_from;
    payload["consistency"] = std::move(consistency);
  }
  const agent::Jws jws = agent::jws_sign(m_key, m_protected_b64, payload.dump());
  return {{"protected", jws.protected_b64},
          {"payload", jws.payload_b64},
          {"signature", jws.signature_b64}};
}

std::string ack_body(const AckPoint& point, const nlohmann::ordered_json* signed_ack) {
  nlohmann::ordered_json body;
  body["stream"] = point.stream;
  body["seq"] = point.seq;
  if (signed_ack != nullptr) body["signed"] = *signed_ack;
  return body.dump();
}

Result<agent::PublicJwk> create_node_key(const IngestConfig& config) {
  const auto path = config.effective_node_key_file();
  auto dir = path.parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return fail(ErrorCode::io,
                fmt::format("cannot create the directory {}: {}", dir.string(), ec.message()));
  if (std::filesystem::symlink_status(path, ec).type() != std::filesystem::file_type::not_found)
    return fail(ErrorCode::io,
                fmt::format("the node's key {} already exists; refusing to overwrite it (devices "
                            "and auditors pin its public key). `reflow-ingest key show` prints it",
                            path.string()));
  auto key = agent::DeviceKey::generate(path);
  if (!key) return std::unexpected(key.error());
  if (auto given = give_to_owner_of(dir, path); !given) return std::unexpected(given.error());
  const auto jwk_path = agent::public_jwk_path(path);
  if (jwk_path != path) {
    if (auto written = agent::write_public_jwk(key->public_jwk(), jwk_path); !written)
      return std::unexpected(written.error());
    if (auto given = give_to_owner_of(dir, jwk_path); !given) return std::unexpected(given.error());
  }
  return key->public_jwk();
}

}  // namespace ingest
