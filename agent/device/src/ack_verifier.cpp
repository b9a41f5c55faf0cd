// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/ack_verifier.hpp>

#include <fstream>
#include <iterator>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/audit_proofs.hpp>
#include <reflow/core/json_strict.hpp>
#include <reflow/core/signed_note.hpp>

namespace agent {
namespace {

// A public JWK is about 150 bytes; a file much larger is not one.
constexpr std::size_t k_max_jwk_file_bytes = 4096;

std::unexpected<AckRefused> refuse(AckRefusal reason, std::string message) {
  return std::unexpected(AckRefused{reason, std::move(message)});
}

// A JSON integer in [0, 2^53 − 1] (I-JSON), or nullopt.
std::optional<std::uint64_t> count_of(const nlohmann::ordered_json& doc, const char* name) {
  auto it = doc.find(name);
  if (it == doc.end() || !it->is_number_integer()) return std::nullopt;
  if (it->is_number_unsigned()) return it->get<std::uint64_t>();
  const auto value = it->get<std::int64_t>();
  if (value < 0) return std::nullopt;
  return static_cast<std::uint64_t>(value);
}

}  // namespace

std::string_view to_string(AckRefusal reason) {
  switch (reason) {
    case AckRefusal::malformed:
      return "malformed";
    case AckRefusal::unsigned_ack:
      return "unsigned";
    case AckRefusal::wrong_key:
      return "wrong_key";
    case AckRefusal::bad_signature:
      return "bad_signature";
    case AckRefusal::misrouted:
      return "misrouted";
    case AckRefusal::beyond_committed:
      return "beyond_committed";
    case AckRefusal::replayed:
      return "replayed";
    case AckRefusal::bad_inclusion:
      return "bad_inclusion";
    case AckRefusal::inconsistent:
      return "inconsistent";
    case AckRefusal::no_consistency_proof:
      return "no_consistency_proof";
  }
  return "malformed";
}

std::expected<VerifiedAck, AckRefused> verify_signed_ack(std::string_view payload,
                                                         const PublicJwk& node_key,
                                                         const AckContext& context) {
  // The outer members, as a 1.0 agent reads them (PROTOCOL §5).
  auto outer = parse_json_strict(payload, /*max_depth=*/3);
  if (!outer || !outer->is_object())
    return refuse(AckRefusal::malformed,
                  fmt::format("ack: expected a JSON object; {}",
                              outer ? "got another JSON value" : outer.error().message));
  auto outer_stream = outer->find("stream");
  auto outer_seq = outer->find("seq");
  if (outer_stream == outer->end() || !outer_stream->is_string() || outer_seq == outer->end() ||
      !outer_seq->is_number_integer() || outer_seq->get<std::int64_t>() < 0)
    return refuse(AckRefusal::malformed,
                  "ack: expected {\"stream\":\"…\",\"seq\":N,\"signed\":{…}} (PROTOCOL §5.1)");
  auto signed_member = outer->find("signed");
  if (signed_member == outer->end())
    return refuse(AckRefusal::unsigned_ack,
                  "ack: no \"signed\" member; the pinned node key (mqtt.node_jwk) signs every "
                  "ack of its node (PROTOCOL §5.1)");
  if (!signed_member->is_object())
    return refuse(AckRefusal::malformed, "ack: signed: expected a flattened JWS object");

  // The JWS: header typ reflow-ack+json, kid of the pinned key, Ed25519 signature.
  auto parsed = jws_parse(signed_member->dump(), k_ack_typ);
  if (!parsed) return refuse(AckRefusal::malformed, "ack: signed: " + parsed.error().message);
  if (parsed->kid != node_key.kid)
    return refuse(AckRefusal::wrong_key,
                  fmt::format("ack: signed by key \"{}\"; the pinned node key (mqtt.node_jwk) is "
                              "\"{}\"",
                              parsed->kid, node_key.kid));
  auto verified = jws_verify(signed_member->dump(), node_key, k_ack_typ);
  if (!verified)
    return refuse(AckRefusal::bad_signature, "ack: signed: " + verified.error().message);

  // The statement.
  auto statement = parse_json_strict(verified->payload, /*max_depth=*/2);
  if (!statement || !statement->is_object())
    return refuse(AckRefusal::malformed, "ack: signed payload: expected a JSON object");
  const auto& doc = *statement;
  auto text_of = [&](const char* name) -> std::optional<std::string> {
    auto it = doc.find(name);
    if (it == doc.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
  };
  const auto device = text_of("device");
  const auto stream = text_of("stream");
  const auto seq = count_of(doc, "seq");
  const auto tree_size = count_of(doc, "tree_size");
  const auto leaf_index = count_of(doc, "leaf_index");
  auto root_it = doc.find("root");
  const auto root = root_it != doc.end() ? audit::hash_from_json(*root_it) : std::nullopt;
  auto inclusion_it = doc.find("inclusion");
  if (!device || !stream || !seq || !tree_size || !leaf_index || !root ||
      inclusion_it == doc.end() || !inclusion_it->is_array() ||
      inclusion_it->size() > audit::k_max_proof_hashes)
    return refuse(AckRefusal::malformed,
                  "ack: signed payload: expected device, stream, seq, tree_size, root, "
                  "leaf_index and inclusion (PROTOCOL §5.1)");
  auto inclusion = audit::proof_from_json(*inclusion_it);
  if (!inclusion)
    return refuse(AckRefusal::malformed,
                  "ack: signed payload: inclusion: expected base64 SHA-256 hashes");
  // Optional: the consistency proof from the log the device last verified (PROTOCOL §5.1).
  const auto consistency_from = count_of(doc, "consistency_from");
  auto consistency_it = doc.find("consistency");
  const bool has_from = doc.contains("consistency_from");
  const bool has_consistency = consistency_it != doc.end();
  if (has_from != has_consistency || (has_from && !consistency_from) ||
      (has_consistency &&
       (!consistency_it->is_array() || consistency_it->size() > audit::k_max_proof_hashes)))
    return refuse(AckRefusal::malformed,
                  "ack: signed payload: expected consistency_from and consistency together, a "
                  "count and a list of hashes (PROTOCOL §5.1)");
  std::optional<std::vector<merkle::Hash>> consistency;
  if (has_consistency) {
    consistency = audit::proof_from_json(*consistency_it);
    if (!consistency)
      return refuse(AckRefusal::malformed,
                    "ack: signed payload: consistency: expected base64 SHA-256 hashes");
  }

  const std::int64_t outer_seq_value = outer_seq->get<std::int64_t>();
  if (*device != context.device || *stream != context.stream ||
      *stream != outer_stream->get_ref<const std::string&>() ||
      static_cast<std::int64_t>(*seq) != outer_seq_value)
    return refuse(AckRefusal::misrouted,
                  fmt::format("ack: signed for device {}, stream {}, seq {} (outer stream {}, seq "
                              "{}); this is device {}, stream {}",
                              *device, *stream, *seq, outer_stream->get_ref<const std::string&>(),
                              outer_seq_value, context.device, context.stream));
  const auto acked = static_cast<std::int64_t>(*seq);
  if (acked > context.last_committed)
    return refuse(AckRefusal::beyond_committed,
                  fmt::format("ack: seq {} is beyond the last committed seq {} (PROTOCOL §5)",
                              acked, context.last_committed));
  if (acked < context.last_verified)
    return refuse(AckRefusal::replayed,
                  fmt::format("ack: seq {} is older than the last verified ack, seq {}", acked,
                              context.last_verified));

  if (context.verified_log) {
    const auto& [old_size, old_root] = *context.verified_log;
    if (*tree_size < old_size || (*tree_size == old_size && *root != old_root))
      return refuse(AckRefusal::inconsistent,
                    fmt::format("ack: the node's log of {} leaves {} the log of {} leaves this "
                                "agent verified before: a log only grows (RFC 9162 §2.1.4)",
                                *tree_size,
                                *tree_size < old_size ? "is smaller than" : "has another root than",
                                old_size));
  }

  VerifiedAck out{*stream, acked, *tree_size, *root, *leaf_index, acked == context.last_verified};
  out.carried_consistency = consistency.has_value();
  if (context.verified_log && *tree_size > context.verified_log->first) {
    const auto& [old_size, old_root] = *context.verified_log;
    if (!consistency) {
      if (context.consistency_seen)
        return refuse(AckRefusal::no_consistency_proof,
                      fmt::format("ack: the node's log grew from {} to {} leaves without a "
                                  "consistency proof, and this node sent one before "
                                  "(PROTOCOL §5.1; the node signs again when it reads the "
                                  "agent's status)",
                                  old_size, *tree_size));
      out.consistency_proven = false;
    } else if (*consistency_from != old_size) {
      return refuse(AckRefusal::no_consistency_proof,
                    fmt::format("ack: the consistency proof is from a log of {} leaves; this "
                                "agent verified the log of {} leaves (PROTOCOL §5.1; the node "
                                "signs again when it reads the agent's status)",
                                *consistency_from, old_size));
    } else if (!merkle::verify_consistency(old_size, *tree_size, old_root, *root, *consistency)) {
      return refuse(AckRefusal::inconsistent,
                    fmt::format("ack: the node's log of {} leaves is not an extension of the log "
                                "of {} leaves this agent verified: its consistency proof fails "
                                "(RFC 9162 §2.1.4.2)",
                                *tree_size, old_size));
    }
  }
  // Otherwise the log did not grow from the one verified (or none was): nothing to prove.
  if (out.repeat) return out;

  auto envelope = context.envelope_of(acked);
  if (!envelope)
    return refuse(AckRefusal::bad_inclusion,
                  fmt::format("ack: cannot read this agent's envelope of seq {}: {}", acked,
                              envelope.error().message));
  if (!*envelope)
    return refuse(AckRefusal::bad_inclusion,
                  fmt::format("ack: the outbox no longer holds seq {} to check the proof", acked));
  if (!merkle::verify_inclusion(*leaf_index, *tree_size, merkle::leaf_hash(**envelope), *inclusion,
                                *root))
    return refuse(AckRefusal::bad_inclusion,
                  fmt::format("ack: the inclusion proof does not put this agent's envelope of seq "
                              "{} at leaf {} of the node's log of {} leaves (RFC 9162 §2.1.3.2)",
                              acked, *leaf_index, *tree_size));
  return out;
}

Result<PublicJwk> load_node_jwk(const std::filesystem::path& path, std::string_view config_file) {
  auto bad = [&](const std::string& why) {
    return fail(ErrorCode::invalid_config,
                fmt::format("{}: mqtt.node_jwk: {}: {}; expected the node's public JWK "
                            "(`reflow-ingest key show`, the enrolment bundle's node_ack_jwk)",
                            config_file, path.string(), why));
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) return bad("cannot be read");
  std::string text;
  text.resize(k_max_jwk_file_bytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > k_max_jwk_file_bytes)
    return bad(fmt::format("larger than {} bytes", k_max_jwk_file_bytes));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
    text.pop_back();
  auto jwk = parse_public_jwk(text);
  if (!jwk) return bad(jwk.error().message);
  if (jwk->kid.empty()) jwk->kid = jwk_thumbprint(jwk->x);
  return jwk;
}

}  // namespace agent
