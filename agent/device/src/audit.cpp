// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/audit.hpp>

#include <algorithm>
#include <exception>
#include <map>
#include <memory>
#include <span>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <mqtt/async_client.h>

#include <reflow/core/audit_proofs.hpp>
#include <reflow/core/mqtt_connect.hpp>
#include <reflow/core/signed_note.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/device/ack_verifier.hpp>
#include <reflow/device/outbox.hpp>

namespace agent {
namespace {

constexpr int k_audit_qos = 1;

// Waits for the next message on `topic` (others are dropped), at most `timeout`.
mqtt::const_message_ptr next_on(mqtt::async_client& client, const std::string& topic,
                                std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return nullptr;
    mqtt::const_message_ptr message;
    if (!client.try_consume_message_for(&message, deadline - now)) return nullptr;
    if (message && message->get_topic() == topic) return message;
  }
}

std::string first_line(std::string_view text) {
  return std::string(text.substr(0, text.find('\n')));
}

// Whether the checkpoint another party holds (`witness`) and the one audited are two views of
// one append-only log: equal roots at equal sizes, else the node's consistency proof from the
// smaller to the larger (RFC 9162 §2.1.4.2), asked with a request of no seqs.
template <typename Exchange>
Result<WitnessCheck> check_witness(const note::Checkpoint& witness, const note::Checkpoint& audited,
                                   const std::string& stream, const std::string& run_id,
                                   Exchange& exchange) {
  WitnessCheck out;
  out.tree_size = witness.size;
  out.root = witness.root;
  if (witness.size == audited.size) {
    out.consistent = witness.root == audited.root;
    if (!out.consistent)
      out.detail = fmt::format(
          "the node signed two checkpoints of {} leaves with different roots: it shows "
          "different histories to different parties",
          witness.size);
    return out;
  }
  const note::Checkpoint& older = witness.size < audited.size ? witness : audited;
  const note::Checkpoint& newer = witness.size < audited.size ? audited : witness;
  audit::ProofRequest request;
  request.id = run_id + "-witness";
  request.stream = stream;  // the node reads a request of no seqs only with one
  request.tree_size = newer.size;
  request.from_size = older.size;
  auto answer = exchange(request);
  if (!answer) return std::unexpected(answer.error());
  if (answer->consistency_error) {
    out.detail =
        fmt::format("the node cannot prove its log of {} leaves an extension of its log of {}: {}",
                    newer.size, older.size, *answer->consistency_error);
  } else if (answer->consistency_from != older.size ||
             !merkle::verify_consistency(older.size, newer.size, older.root, newer.root,
                                         answer->consistency)) {
    out.detail = fmt::format(
        "the node's signed log of {} leaves is not an extension of its signed log of {}: the "
        "consistency proof fails (RFC 9162 §2.1.4.2); it shows different histories to "
        "different parties",
        newer.size, older.size);
  } else {
    out.consistent = true;
  }
  return out;
}

}  // namespace

Result<AuditReport> audit_node(const AgentConfig& config, std::chrono::milliseconds timeout,
                               const AuditProgress& progress,
                               const std::optional<std::string>& witness_note) {
  if (config.node_jwk.empty())
    return fail(ErrorCode::invalid_config,
                fmt::format("{}: mqtt.node_jwk is not set: an audit checks the node's log against "
                            "its pinned key, and only acks verified with it kept leaves to audit "
                            "(PROTOCOL §5.1)",
                            config.source_file));
  auto node_key = load_node_jwk(config.node_jwk, config.source_file);
  if (!node_key) return std::unexpected(node_key.error());
  auto state = Outbox::read_audit_state(config.outbox_path());
  if (!state) return std::unexpected(state.error());

  auto address = mqtt_connect::broker_address(config.url, config.source_file);
  if (!address) return std::unexpected(address.error());
  mqtt::connect_options options;
  options.set_clean_session(true);
  options.set_keep_alive_interval(mqtt_connect::whole_seconds(config.keepalive));
  options.set_connect_timeout(mqtt_connect::whole_seconds(timeout));
  if (auto ok = mqtt_connect::set_credentials(options, mqtt_connect::credentials_of(config),
                                              address->tls, "MQTT 3.1.1");
      !ok)
    return std::unexpected(ok.error());
  if (auto ok = mqtt_connect::set_proxy(options, config.proxy); !ok)
    return std::unexpected(ok.error());
  // Its own client id: the daemon's connection stays up while the audit runs.
  const std::string client_id =
      (config.client_id.empty() ? "reflow-agent-" + config.device_id : config.client_id) + "-audit";
  const std::string checkpoint_topic = config.topic_prefix + "/_node/checkpoint";
  const std::string request_topic =
      fmt::format("{}/{}{}", config.topic_prefix, config.device_id, audit::k_request_suffix);
  const std::string answer_topic =
      fmt::format("{}/{}{}", config.topic_prefix, config.device_id, audit::k_answer_suffix);

  AuditReport report;
  bool consistency_proven = false;
  std::uint64_t checkpoint_size = 0;
  merkle::Hash checkpoint_root{};
  try {
    mqtt::async_client client(address->paho_uri, client_id,
                              static_cast<mqtt::iclient_persistence*>(nullptr));
    client.start_consuming();
    if (!client.connect(options)->wait_for(timeout))
      return fail(ErrorCode::timeout, fmt::format("audit: no connection to {} within {} ms",
                                                  config.url, timeout.count()));
    // The answer topic first, so that no answer can come before its subscription.
    client.subscribe(answer_topic, k_audit_qos)->wait_for(timeout);
    client.subscribe(checkpoint_topic, k_audit_qos)->wait_for(timeout);

    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto message = next_on(client, checkpoint_topic, deadline);
    if (!message)
      return fail(ErrorCode::timeout,
                  fmt::format("audit: no signed checkpoint on {} within {} ms: does the node have "
                              "a key (reflow-ingest key init) and a log?",
                              checkpoint_topic, timeout.count()));
    auto verify =
        [&](const mqtt::const_message_ptr& checkpoint_message) -> Result<note::Checkpoint> {
      const std::string note = checkpoint_message->to_string();
      auto verified = note::verify_checkpoint(note, first_line(note), *node_key);
      if (!verified)
        return fail(ErrorCode::crypto,
                    fmt::format("audit: the checkpoint on {} does not verify with the pinned node "
                                "key {}: {}",
                                checkpoint_topic, node_key->kid, verified.error().message));
      return verified;
    };
    auto checkpoint = verify(message);
    if (!checkpoint) return std::unexpected(checkpoint.error());
    // The witness's checkpoint must be the same node's: signed by the pinned key, same origin.
    std::optional<note::Checkpoint> witness;
    if (witness_note) {
      auto verified = note::verify_checkpoint(*witness_note, checkpoint->origin, *node_key);
      if (!verified)
        return fail(ErrorCode::crypto,
                    fmt::format("audit: the witness checkpoint is not one of origin {} signed "
                                "with the pinned node key {}: {}",
                                checkpoint->origin, node_key->kid, verified.error().message));
      witness = std::move(*verified);
    }
    // The node publishes its checkpoint at most once a second (PROTOCOL §5.1), so the retained
    // one may lag the log an ack just proved: a smaller one is waited on until the deadline.
    while (state->verified_log && checkpoint->size < state->verified_log->first) {
      auto newer = next_on(client, checkpoint_topic, deadline);
      if (!newer) break;
      checkpoint = verify(newer);
      if (!checkpoint) return std::unexpected(checkpoint.error());
    }
    report.origin = checkpoint->origin;
    report.tree_size = checkpoint_size = checkpoint->size;
    report.root = checkpoint_root = checkpoint->root;

    std::uint64_t from_size = 0;
    if (state->verified_log) {
      const auto& [old_size, old_root] = *state->verified_log;
      report.consistency_from = old_size;
      if (checkpoint->size < old_size)
        report.inconsistent = fmt::format(
            "the node's log of {} leaves is smaller than the log of {} leaves this agent "
            "verified: a log only grows (RFC 9162 §2.1.4)",
            checkpoint->size, old_size);
      else if (checkpoint->size == old_size && checkpoint->root != old_root)
        report.inconsistent = fmt::format(
            "the node's log of {} leaves has another root than the one this agent verified",
            old_size);
      else if (checkpoint->size > old_size)
        from_size = old_size;
    }

    // The kept leaves, 256 a request; the first also asks for the consistency proof.
    std::map<std::int64_t, const AckedLeaf*> by_seq;
    for (const AckedLeaf& leaf : state->leaves)
      by_seq.emplace(leaf.seq, &leaf);
    const std::uint64_t total = state->leaves.size();
    std::size_t next = 0;
    UlidGenerator ulids;
    const std::string run_id = ulids.next(std::chrono::duration_cast<std::chrono::milliseconds>(
                                              std::chrono::system_clock::now().time_since_epoch())
                                              .count());
    // One request and its answer (an answer to another request, an earlier audit's, is not
    // this one's); an answer with `error` means the node could not read the request.
    auto exchange = [&](const audit::ProofRequest& request) -> Result<audit::ProofAnswer> {
      client.publish(request_topic, audit::encode(request), k_audit_qos, false)->wait_for(timeout);
      deadline = std::chrono::steady_clock::now() + timeout;
      for (;;) {
        auto reply = next_on(client, answer_topic, deadline);
        if (!reply)
          return fail(ErrorCode::timeout,
                      fmt::format("audit: no answer on {} within {} ms: does the node answer "
                                  "audits (PROTOCOL §5.2, reflow-ingest 1.2 or later)?",
                                  answer_topic, timeout.count()));
        auto parsed = audit::parse_answer(reply->to_string());
        if (!parsed)
          return fail(ErrorCode::rejected, fmt::format("audit: the node's answer on {}: {}",
                                                       answer_topic, parsed.error().message));
        if (parsed->id != request.id) continue;
        if (parsed->error)
          return fail(ErrorCode::rejected,
                      fmt::format("audit: the node refused the request: {}", *parsed->error));
        return std::move(*parsed);
      }
    };
    for (std::uint64_t batch = 0; next < state->leaves.size() || batch == 0; ++batch) {
      if (report.inconsistent && state->leaves.empty()) break;
      audit::ProofRequest request;
      request.id = fmt::format("{}-{}", run_id, batch);
      request.stream = state->stream;
      request.tree_size = checkpoint->size;
      request.from_size = batch == 0 ? from_size : 0;
      const std::size_t end = std::min(state->leaves.size(), next + audit::k_max_seqs);
      for (std::size_t i = next; i < end; ++i)
        request.seqs.push_back(state->leaves[i].seq);
      if (request.seqs.empty() && request.from_size == 0) break;
      auto answer = exchange(request);
      if (!answer) return std::unexpected(answer.error());
      if (request.from_size > 0) {
        const auto& [old_size, old_root] = *state->verified_log;
        if (answer->consistency_error)
          report.inconsistent = fmt::format(
              "the node cannot prove its log of {} leaves an extension of the log of {} leaves "
              "this agent verified: {}",
              checkpoint->size, old_size, *answer->consistency_error);
        else if (answer->consistency_from != old_size ||
                 !merkle::verify_consistency(old_size, checkpoint->size, old_root, checkpoint->root,
                                             answer->consistency))
          report.inconsistent = fmt::format(
              "the node's log of {} leaves is not an extension of the log of {} leaves this "
              "agent verified: its consistency proof fails (RFC 9162 §2.1.4.2)",
              checkpoint->size, old_size);
        else
          consistency_proven = true;
      }
      std::map<std::int64_t, const audit::LeafProof*> proofs;
      for (const auto& proof : answer->proofs)
        proofs.emplace(proof.seq, &proof);
      std::map<std::int64_t, const std::string*> unproven;
      for (const auto& item : answer->unproven)
        unproven.emplace(item.seq, &item.error);
      for (const std::int64_t seq : request.seqs) {
        const AckedLeaf& kept = *by_seq.at(seq);
        auto it = proofs.find(seq);
        if (it == proofs.end()) {
          if (auto why = unproven.find(seq); why != unproven.end()) {
            report.findings.push_back(
                {seq, kept.id, "not_proven",
                 fmt::format("the node holds it but cannot prove it in its log of {} leaves: {}",
                             checkpoint->size, *why->second)});
            continue;
          }
          report.findings.push_back(
              {seq, kept.id, "missing",
               fmt::format("the node holds no event seq {} of stream {} in its log of {} leaves",
                           seq, state->stream, checkpoint->size)});
          continue;
        }
        const audit::LeafProof& proof = *it->second;
        if (proof.leaf != kept.leaf) {
          report.findings.push_back(
              {seq, kept.id, "altered",
               fmt::format("the envelope the node holds hashes to leaf {}, not {} as published",
                           merkle::to_hex(proof.leaf), merkle::to_hex(kept.leaf))});
          continue;
        }
        if (kept.leaf_index && *kept.leaf_index != proof.leaf_index) {
          report.findings.push_back(
              {seq, kept.id, "altered",
               fmt::format("the node puts it at leaf {}; its signed ack proved leaf {}",
                           proof.leaf_index, *kept.leaf_index)});
          continue;
        }
        if (!merkle::verify_inclusion(proof.leaf_index, checkpoint->size, kept.leaf,
                                      proof.inclusion, checkpoint->root))
          report.findings.push_back(
              {seq, kept.id, "not_proven",
               fmt::format("the inclusion proof does not put it at leaf {} under the signed root "
                           "of {} leaves (RFC 9162 §2.1.3.2)",
                           proof.leaf_index, checkpoint->size)});
      }
      report.checked += request.seqs.size();
      next = end;
      if (progress) progress(report.checked, total);
    }
    if (witness) {
      if (auto checked = check_witness(*witness, *checkpoint, state->stream, run_id, exchange);
          !checked)
        return std::unexpected(checked.error());
      else
        report.witness = std::move(*checked);
    }
    client.disconnect()->wait_for(timeout);
  } catch (const std::exception& e) {
    return fail(ErrorCode::io, fmt::format("audit: MQTT at {}: {}", config.url, e.what()));
  }
  // The signed checkpoint, proven an extension of the log this agent verified, becomes the log
  // it holds the node to: the next audit and the daemon's ack verifier start from it.
  if (consistency_proven && !report.inconsistent) {
    auto saved = Outbox::save_audited_log(config.outbox_path(), *state->verified_log,
                                          {checkpoint_size, checkpoint_root});
    if (!saved) return std::unexpected(saved.error());
    if (*saved) report.saved_tree_size = checkpoint_size;
  }
  return report;
}

}  // namespace agent
