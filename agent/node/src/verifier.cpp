// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/verifier.hpp>

#include <sodium.h>

#include <limits>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/json_strict.hpp>
#include <reflow/core/units.hpp>

#include <reflow/node/key_lookup.hpp>

namespace ingest {
namespace {

using Json = nlohmann::ordered_json;

// What a payload says about where it belongs, read before it is validated so that a rejection at
// any later step still tells the operator which stream and seq it was about.
void note_position(const Json& payload, Rejection& out) {
  if (!payload.is_object()) return;
  if (auto stream = payload.find("stream"); stream != payload.end() && stream->is_string())
    out.stream = stream->get<std::string>();
  if (auto seq = payload.find("seq"); seq != payload.end() && seq->is_number_integer()) {
    // A huge unsigned seq would wrap; it is not a seq the node could ever store anyway.
    if (!seq->is_number_unsigned() ||
        seq->get<std::uint64_t>() <=
            static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      out.seq = seq->get<std::int64_t>();
  }
}

}  // namespace

std::string_view to_string(RejectReason reason) noexcept {
  switch (reason) {
    case RejectReason::oversized:
      return "oversized";
    case RejectReason::malformed_jws:
      return "malformed_jws";
    case RejectReason::unknown_kid:
      return "unknown_kid";
    case RejectReason::bad_signature:
      return "bad_signature";
    case RejectReason::device_mismatch:
      return "device_mismatch";
    case RejectReason::invalid_event:
      return "invalid_event";
    case RejectReason::key_revoked:
      return "key_revoked";
    case RejectReason::equivocation:
      return "equivocation";
    case RejectReason::chain_break:
      return "chain_break";
    case RejectReason::recorded_backwards:
      return "recorded_backwards";
  }
  return "unknown";
}

std::optional<std::string> device_of_events_topic(std::string_view topic, std::string_view prefix) {
  constexpr std::string_view k_suffix = "/events";
  if (topic.size() <= prefix.size() + 1 + k_suffix.size()) return std::nullopt;
  if (!topic.starts_with(prefix) || topic[prefix.size()] != '/' || !topic.ends_with(k_suffix))
    return std::nullopt;
  std::string_view level =
      topic.substr(prefix.size() + 1, topic.size() - prefix.size() - 1 - k_suffix.size());
  if (level.empty() || level.find('/') != std::string_view::npos) return std::nullopt;
  return std::string(level);
}

Result<std::expected<VerifiedEvent, Rejection>> verify_envelope(Store& store,
                                                                std::string_view topic,
                                                                std::string_view topic_device,
                                                                std::string_view envelope) {
  return verify_envelope_with([&](std::string_view kid) { return store.find_key(kid); }, topic,
                              topic_device, envelope);
}

Result<std::expected<VerifiedEvent, Rejection>> verify_envelope_with(const KeyLookup& find_key,
                                                                     std::string_view topic,
                                                                     std::string_view topic_device,
                                                                     std::string_view envelope) {
  // jws_parse has initialized libsodium before the signature check below; this only makes the
  // order not matter (sodium_init is thread-safe and idempotent).
  static const bool sodium_ready = sodium_init() >= 0;
  using Outcome = std::expected<VerifiedEvent, Rejection>;
  // The payload, once parsed, labels a rejection at any step with its stream and seq.
  Json payload;
  bool payload_is_json = false;
  Rejection rejection;
  auto reject = [&](RejectReason reason, std::string detail) -> Result<Outcome> {
    if (payload_is_json) note_position(payload, rejection);
    rejection.topic = std::string(topic);
    rejection.device = std::string(topic_device);
    rejection.reason = reason;
    rejection.detail = std::move(detail);
    rejection.envelope = std::string(envelope);
    return Outcome(std::unexpect, std::move(rejection));
  };

  try {
    // Checked here rather than left to jws_parse so that size has its own reason (PROTOCOL §3).
    if (envelope.size() > agent::k_max_envelope_bytes)
      return reject(RejectReason::oversized,
                    fmt::format("envelope is {} bytes; at most {} are allowed (PROTOCOL §3)",
                                envelope.size(), agent::k_max_envelope_bytes));

    auto parsed = agent::jws_parse(envelope);
    if (!parsed) return reject(RejectReason::malformed_jws, parsed.error().message);

    // Read the payload early only to label rejections; nothing below trusts it before step 3.
    // parse_json_strict: one reading of the signed bytes for every reader (no repeated names,
    // no BOM, bounded depth and numbers; PROTOCOL §4 Limits).
    auto strict = agent::parse_json_strict(parsed->payload);
    payload_is_json = strict.has_value();
    if (payload_is_json) payload = std::move(*strict);

    auto key = find_key(parsed->kid);
    if (!key) return std::unexpected(key.error());
    if (!key->has_value())
      return reject(RejectReason::unknown_kid,
                    fmt::format("kid {} is not in the device registry; register the device's "
                                "public key with `reflow-ingest device add`",
                                parsed->kid));
    const DeviceKeyRecord& record = **key;

    // Step 3 on what jws_parse already decoded (agent::jws_verify would parse the envelope a
    // second time); the key was found by this kid, so the kid matches. The signing input is
    // built once: it is also what the successor's `prev` hashes.
    const std::string signing_input = parsed->jws.signing_input();
    if (!sodium_ready ||
        crypto_sign_verify_detached(parsed->signature.data(),
                                    reinterpret_cast<const unsigned char*>(signing_input.data()),
                                    signing_input.size(), record.jwk.x.data()) != 0)
      return reject(RejectReason::bad_signature,
                    fmt::format("signature does not verify with kid {} of device {}: the "
                                "envelope was altered or signed by another key",
                                parsed->kid, record.device));

    if (!payload_is_json)
      return reject(RejectReason::invalid_event,
                    fmt::format("payload: {} (PROTOCOL §4 expects one UTF-8 JSON object)",
                                strict.error().message));

    // Step 4 needs the payload's device; a missing or non-string one is a §4 failure (step 5).
    if (auto device = payload.is_object() ? payload.find("device") : payload.end();
        payload.is_object() && device != payload.end() && device->is_string()) {
      const auto& claimed = device->get_ref<const std::string&>();
      if (claimed != record.device)
        return reject(RejectReason::device_mismatch,
                      fmt::format("payload device \"{}\" but kid {} belongs to device \"{}\"",
                                  claimed, parsed->kid, record.device));
      if (claimed != topic_device)
        return reject(RejectReason::device_mismatch,
                      fmt::format("payload device \"{}\" but the topic's device is \"{}\" ({})",
                                  claimed, topic_device, topic));
    }

    if (auto valid = agent::validate_event_payload(payload); !valid)
      return reject(RejectReason::invalid_event, valid.error().message);

    VerifiedEvent event;
    {
      auto recorded = agent::parse_rfc3339(payload.at("recorded").get_ref<const std::string&>());
      if (!recorded)
        return reject(RejectReason::invalid_event, "recorded: " + recorded.error().message);
      event.recorded_unix_ms = *recorded;
    }
    if (record.revoked_unix_ms && event.recorded_unix_ms >= *record.revoked_unix_ms)
      return reject(
          RejectReason::key_revoked,
          fmt::format("kid {} of device {} was revoked at {}; this event was recorded at {}",
                      parsed->kid, record.device, agent::format_rfc3339_ms(*record.revoked_unix_ms),
                      payload.at("recorded").get_ref<const std::string&>()));

    // The parsed payload is not needed after this: its strings are moved, not copied.
    event.topic = std::string(topic);
    event.envelope = std::string(envelope);
    event.kid = std::move(parsed->kid);
    event.device = record.device;
    event.stream = std::move(payload.at("stream").get_ref<std::string&>());
    event.seq = payload.at("seq").get<std::int64_t>();
    if (Json& prev = payload.at("prev"); prev.is_string())
      event.prev = std::move(prev.get_ref<std::string&>());
    event.id = std::move(payload.at("id").get_ref<std::string&>());
    event.action = std::move(payload.at("action").get_ref<std::string&>());
    event.signing_input_sha256 = agent::sha256_b64url(signing_input);
    event.payload = std::move(parsed->payload);
    return Outcome(std::move(event));
  } catch (const std::exception& e) {
    // validate_event_payload has checked every field read above, so this is a bug, not input.
    return agent::fail(agent::ErrorCode::internal,
                       fmt::format("verifying an envelope from {}: {}", topic, e.what()));
  }
}

}  // namespace ingest
