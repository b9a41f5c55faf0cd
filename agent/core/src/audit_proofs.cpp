// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/audit_proofs.hpp>

#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/json_strict.hpp>
#include <reflow/core/signed_note.hpp>

namespace agent::audit {
namespace {

using Json = nlohmann::ordered_json;

// The answer to k_max_seqs proofs of up to k_max_proof_hashes hashes, with room to spare.
constexpr std::size_t k_max_answer_bytes = 2 * 1024 * 1024;
// k_max_seqs seqs of 16 digits, with room for the other members.
constexpr std::size_t k_max_request_bytes = 16 * 1024;

std::unexpected<Error> bad(std::string_view what, std::string_view why) {
  return fail(ErrorCode::invalid_argument, fmt::format("audit {}: {} (PROTOCOL §5.2)", what, why));
}

Json hash_list(const std::vector<merkle::Hash>& hashes) {
  Json list = Json::array();
  for (const auto& hash : hashes)
    list.push_back(note::base64_encode(hash));
  return list;
}

// A JSON integer in [0, 2^53 − 1], or nullopt.
std::optional<std::uint64_t> count_of(const Json& doc, const char* name) {
  auto it = doc.find(name);
  if (it == doc.end() || !it->is_number_integer()) return std::nullopt;
  if (it->is_number_unsigned()) return it->get<std::uint64_t>();
  return std::nullopt;  // nlohmann parses non-negative integers as unsigned
}

constexpr std::uint64_t k_max_seq = (std::uint64_t{1} << 53) - 1;

// A node's error text, cut to k_max_error_chars (at a UTF-8 character boundary).
std::string error_text(const Json& value) {
  std::string text = value.get<std::string>();
  if (text.size() <= k_max_error_chars) return text;
  std::size_t cut = k_max_error_chars;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0U) == 0x80U)
    --cut;
  text.resize(cut);
  return text + "…";
}

bool valid_id(std::string_view id) {
  if (id.empty() || id.size() > k_max_id_chars) return false;
  for (char c : id)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-'))
      return false;
  return true;
}

std::optional<std::vector<std::int64_t>> seqs_of(const Json& value) {
  if (!value.is_array() || value.size() > k_max_seqs) return std::nullopt;
  std::vector<std::int64_t> out;
  for (const auto& item : value) {
    if (!item.is_number_unsigned() || item.get<std::uint64_t>() == 0 ||
        item.get<std::uint64_t>() > k_max_seq)
      return std::nullopt;
    out.push_back(static_cast<std::int64_t>(item.get<std::uint64_t>()));
  }
  return out;
}

}  // namespace

std::optional<merkle::Hash> hash_from_json(const nlohmann::ordered_json& value) {
  if (!value.is_string()) return std::nullopt;
  auto bytes = note::base64_decode(value.get_ref<const std::string&>());
  if (!bytes || bytes->size() != merkle::Hash{}.size()) return std::nullopt;
  merkle::Hash hash{};
  std::memcpy(hash.data(), bytes->data(), hash.size());
  return hash;
}

std::optional<std::vector<merkle::Hash>> proof_from_json(const nlohmann::ordered_json& value) {
  if (!value.is_array() || value.size() > k_max_proof_hashes) return std::nullopt;
  std::vector<merkle::Hash> out;
  for (const auto& item : value) {
    auto hash = hash_from_json(item);
    if (!hash) return std::nullopt;
    out.push_back(*hash);
  }
  return out;
}

std::string encode(const ProofRequest& request) {
  Json doc{{"id", request.id},
           {"stream", request.stream},
           {"seqs", request.seqs},
           {"tree_size", request.tree_size}};
  if (request.from_size > 0) doc["from_size"] = request.from_size;
  return doc.dump();
}

std::string encode(const ProofAnswer& answer) {
  if (answer.error) return Json{{"id", answer.id}, {"error", *answer.error}}.dump();
  Json proofs = Json::array();
  for (const auto& proof : answer.proofs)
    proofs.push_back({{"seq", proof.seq},
                      {"leaf_index", proof.leaf_index},
                      {"leaf", note::base64_encode(proof.leaf)},
                      {"inclusion", hash_list(proof.inclusion)}});
  Json doc{{"id", answer.id}, {"tree_size", answer.tree_size}};
  if (answer.consistency_from > 0) {
    doc["consistency_from"] = answer.consistency_from;
    if (answer.consistency_error)
      doc["consistency_error"] = *answer.consistency_error;
    else
      doc["consistency"] = hash_list(answer.consistency);
  }
  doc["proofs"] = std::move(proofs);
  doc["missing"] = answer.missing;
  if (!answer.unproven.empty()) {
    Json unproven = Json::array();
    for (const auto& item : answer.unproven)
      unproven.push_back({{"seq", item.seq}, {"error", item.error}});
    doc["unproven"] = std::move(unproven);
  }
  return doc.dump();
}

Result<ProofRequest> parse_request(std::string_view payload) {
  if (payload.size() > k_max_request_bytes)
    return bad("request", fmt::format("larger than {} bytes", k_max_request_bytes));
  auto doc = parse_json_strict(payload, /*max_depth=*/2);
  if (!doc || !doc->is_object())
    return bad("request", doc ? "expected a JSON object" : doc.error().message);
  ProofRequest out;
  auto id = doc->find("id");
  if (id == doc->end() || !id->is_string() || !valid_id(id->get_ref<const std::string&>()))
    return bad("request", "id: expected 1 to 64 characters of [A-Za-z0-9._-]");
  out.id = id->get<std::string>();
  auto stream = doc->find("stream");
  if (stream == doc->end() || !stream->is_string() || stream->get_ref<const std::string&>().empty())
    return bad("request", "stream: expected the stream's ULID");
  out.stream = stream->get<std::string>();
  auto seqs = doc->find("seqs");
  auto parsed_seqs = seqs == doc->end() ? std::nullopt : seqs_of(*seqs);
  if (!parsed_seqs)
    return bad("request", fmt::format("seqs: expected at most {} seqs ≥ 1", k_max_seqs));
  out.seqs = std::move(*parsed_seqs);
  auto tree_size = count_of(*doc, "tree_size");
  if (!tree_size || *tree_size == 0) return bad("request", "tree_size: expected a size ≥ 1");
  out.tree_size = *tree_size;
  if (doc->contains("from_size")) {
    auto from = count_of(*doc, "from_size");
    if (!from) return bad("request", "from_size: expected a size");
    out.from_size = *from;
  }
  return out;
}

Result<ProofAnswer> parse_answer(std::string_view payload) {
  if (payload.size() > k_max_answer_bytes)
    return bad("answer", fmt::format("larger than {} bytes", k_max_answer_bytes));
  auto doc = parse_json_strict(payload, /*max_depth=*/4);
  if (!doc || !doc->is_object())
    return bad("answer", doc ? "expected a JSON object" : doc.error().message);
  ProofAnswer out;
  auto id = doc->find("id");
  if (id == doc->end() || !id->is_string()) return bad("answer", "id: expected a string");
  out.id = id->get<std::string>();
  if (auto error = doc->find("error"); error != doc->end()) {
    if (!error->is_string()) return bad("answer", "error: expected a string");
    out.error = error->get<std::string>();
    return out;
  }
  auto tree_size = count_of(*doc, "tree_size");
  if (!tree_size) return bad("answer", "tree_size: expected a size");
  out.tree_size = *tree_size;
  if (doc->contains("consistency_from")) {
    auto from = count_of(*doc, "consistency_from");
    if (!from || *from == 0) return bad("answer", "consistency_from: expected a size ≥ 1");
    out.consistency_from = *from;
    auto consistency = doc->find("consistency");
    auto consistency_error = doc->find("consistency_error");
    if ((consistency == doc->end()) == (consistency_error == doc->end()))
      return bad("answer", "expected consistency or consistency_error beside consistency_from");
    if (consistency_error != doc->end()) {
      if (!consistency_error->is_string())
        return bad("answer", "consistency_error: expected a string");
      out.consistency_error = error_text(*consistency_error);
    } else {
      auto hashes = proof_from_json(*consistency);
      if (!hashes) return bad("answer", "consistency: expected base64 hashes");
      out.consistency = std::move(*hashes);
    }
  }
  auto proofs = doc->find("proofs");
  if (proofs == doc->end() || !proofs->is_array() || proofs->size() > k_max_seqs)
    return bad("answer", "proofs: expected a list");
  for (const auto& item : *proofs) {
    if (!item.is_object()) return bad("answer", "proofs: expected objects");
    LeafProof proof;
    auto seq = count_of(item, "seq");
    auto index = count_of(item, "leaf_index");
    auto leaf = item.contains("leaf") ? hash_from_json(item["leaf"]) : std::nullopt;
    auto inclusion = item.contains("inclusion") ? proof_from_json(item["inclusion"]) : std::nullopt;
    if (!seq || *seq == 0 || !index || !leaf || !inclusion)
      return bad("answer", "proofs: expected seq (≥ 1), leaf_index, leaf and inclusion");
    proof.seq = static_cast<std::int64_t>(*seq);
    proof.leaf_index = *index;
    proof.leaf = *leaf;
    proof.inclusion = std::move(*inclusion);
    out.proofs.push_back(std::move(proof));
  }
  auto missing = doc->find("missing");
  auto missing_seqs = missing == doc->end() ? std::nullopt : seqs_of(*missing);
  if (!missing_seqs) return bad("answer", "missing: expected a list of seqs");
  out.missing = std::move(*missing_seqs);
  if (auto unproven = doc->find("unproven"); unproven != doc->end()) {
    if (!unproven->is_array() || unproven->size() > k_max_seqs)
      return bad("answer", fmt::format("unproven: expected a list of at most {}", k_max_seqs));
    const auto refused = [] {
      return bad("answer", "unproven: expected objects of seq (≥ 1) and error (a string)");
    };
    for (const auto& item : *unproven) {
      if (!item.is_object()) return refused();
      const std::uint64_t seq = count_of(item, "seq").value_or(0);
      auto error = item.find("error");
      if (seq == 0 || seq > k_max_seq || error == item.end() || !error->is_string())
        return refused();
      out.unproven.push_back({static_cast<std::int64_t>(seq), error_text(*error)});
    }
  }
  return out;
}

}  // namespace agent::audit
