// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/verifier.hpp>

#include <algorithm>
#include <array>
#include <string>

#include <gtest/gtest.h>

#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/core/units.hpp>

#include "temp_dir.hpp"
#include "verified_events.hpp"

namespace ingest {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::int64_t k_verifier_t0 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z
constexpr const char* k_verifier_device = "fablab-mk4-01";
constexpr const char* k_topic = "reflow/v1/fablab-mk4-01/events";

Json use_fields() {
  return Json::parse(R"({"action":"use","hasPointInTime":"2026-01-01T00:00:00Z",
      "resourceInventoriedAs":"printer-1",
      "effortQuantity":{"hasNumericalValue":1.5,"hasUnit":"hour"}})");
}

// A store that fails every call: the verifier must pass a lookup failure up, not reject.
class BrokenStore final : public Store {
 public:
  Status add_device(std::string_view, const agent::PublicJwk&, std::int64_t) override {
    return broken();
  }
  Status revoke_device(std::string_view, std::int64_t) override { return broken(); }
  Result<std::optional<DeviceKeyRecord>> find_key(std::string_view) override { return broken(); }
  Result<std::vector<DeviceKeyRecord>> list_keys() override { return broken(); }
  Result<std::vector<PutResult>> put(std::span<const Incoming>, std::int64_t) override {
    return broken();
  }
  Result<std::optional<AckPoint>> ack_point(std::string_view) override { return broken(); }
  Status for_each_event(const EventFilter&,
                        const std::function<bool(const StoredEvent&)>&) override {
    return broken();
  }
  Status for_each_rejection(std::optional<std::string_view>,
                            const std::function<bool(const StoredRejection&)>&) override {
    return broken();
  }
  Result<std::vector<DeviceStats>> stats() override { return broken(); }

 private:
  static std::unexpected<agent::Error> broken() {
    return agent::fail(agent::ErrorCode::io, "disk I/O error");
  }
};

class VerifierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(test_store::open_store_and_key(m_dir.path(), m_store, m_key));
    m_header = agent::jws_protected_header_b64(m_key->public_jwk().kid);
    ASSERT_TRUE(m_store->add_device(k_verifier_device, m_key->public_jwk(), k_verifier_t0));
    m_stream = m_ulids.next(k_verifier_t0);
  }

  agent::EventStamp stamp(std::int64_t seq, std::string device = k_verifier_device) {
    agent::EventStamp s;
    s.id = m_ulids.next(k_verifier_t0);
    s.device = std::move(device);
    s.stream = m_stream;
    s.seq = seq;
    s.prev = seq == 1 ? "" : agent::sha256_b64url("the predecessor's signing input");
    s.recorded_unix_ms = k_verifier_t0 + 1000;
    s.clock = agent::ClockSync::synced;
    return s;
  }

  std::string payload(const agent::EventStamp& s) {
    return agent::make_event_payload(s, use_fields(), agent::EventSource{"sim", "printer", "1"});
  }

  std::string sign(std::string_view bytes) {
    return agent::jws_sign(*m_key, m_header, bytes).to_envelope();
  }

  Result<std::expected<VerifiedEvent, Rejection>> verify(
      std::string_view envelope, std::string_view topic = k_topic,
      std::string_view device = k_verifier_device) {
    return verify_envelope(*m_store, topic, device, envelope);
  }

  // Verifies `envelope` and expects a rejection with `reason` whose detail contains `detail`.
  Rejection expect_rejected(std::string_view envelope, RejectReason reason, std::string_view detail,
                            std::string_view topic = k_topic,
                            std::string_view device = k_verifier_device) {
    auto r = verify(envelope, topic, device);
    EXPECT_TRUE(r) << r.error().message;
    if (!r) return {};
    EXPECT_FALSE(r->has_value()) << "accepted; expected " << to_string(reason);
    if (r->has_value()) return {};
    const Rejection& rejection = r->error();
    EXPECT_EQ(to_string(rejection.reason), to_string(reason)) << rejection.detail;
    EXPECT_NE(rejection.detail.find(detail), std::string::npos) << rejection.detail;
    EXPECT_EQ(rejection.envelope, envelope);
    EXPECT_EQ(rejection.topic, topic);
    EXPECT_EQ(rejection.device, device);
    return rejection;
  }

  reflow_test::TempDir m_dir;
  std::unique_ptr<Store> m_store;
  std::optional<agent::DeviceKey> m_key;
  std::string m_header;
  agent::UlidGenerator m_ulids;
  std::string m_stream;
};

TEST_F(VerifierTest, AcceptsASignedEventAndReadsItsFields) {
  agent::EventStamp s = stamp(2);
  const std::string bytes = payload(s);
  const agent::Jws jws = agent::jws_sign(*m_key, m_header, bytes);
  const std::string envelope = jws.to_envelope();

  auto r = verify(envelope);
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_TRUE(r->has_value()) << r->error().detail;
  const VerifiedEvent& e = **r;
  EXPECT_EQ(e.topic, k_topic);
  EXPECT_EQ(e.envelope, envelope);
  EXPECT_EQ(e.kid, m_key->public_jwk().kid);
  EXPECT_EQ(e.payload, bytes);
  EXPECT_EQ(e.device, k_verifier_device);
  EXPECT_EQ(e.stream, m_stream);
  EXPECT_EQ(e.seq, 2);
  EXPECT_EQ(e.prev, s.prev);
  EXPECT_EQ(e.id, s.id);
  EXPECT_EQ(e.action, "use");
  EXPECT_EQ(e.recorded_unix_ms, k_verifier_t0 + 1000);
  EXPECT_EQ(e.signing_input_sha256, agent::sha256_b64url(jws.signing_input()));
}

TEST_F(VerifierTest, FirstEventOfAStreamHasEmptyPrev) {
  auto r = verify(sign(payload(stamp(1))));
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_TRUE(r->has_value()) << r->error().detail;
  EXPECT_EQ((*r)->seq, 1);
  EXPECT_TRUE((*r)->prev.empty());
}

TEST_F(VerifierTest, RejectsOversizedEnvelopeBeforeParsing) {
  // Not even JSON: size alone decides, and the whole envelope is kept.
  const std::string envelope(agent::k_max_envelope_bytes + 1, 'x');
  Rejection r = expect_rejected(envelope, RejectReason::oversized, "65537 bytes");
  EXPECT_FALSE(r.stream.has_value());
}

TEST_F(VerifierTest, AcceptsEnvelopeOfExactlyTheLimit) {
  // Padding the payload's note up to the limit would fail §4's string bound, so pad the JSON
  // envelope itself with whitespace, which JSON allows.
  std::string envelope = sign(payload(stamp(1)));
  envelope.insert(1, agent::k_max_envelope_bytes - envelope.size(), ' ');
  ASSERT_EQ(envelope.size(), agent::k_max_envelope_bytes);
  auto r = verify(envelope);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r->has_value()) << r->error().detail;
}

TEST_F(VerifierTest, RejectsMalformedJws) {
  expect_rejected("not json", RejectReason::malformed_jws, "expected a JSON object");
  expect_rejected(R"({"protected":"e30","payload":"e30"})", RejectReason::malformed_jws,
                  "signature: required");
  expect_rejected(R"({"protected":"!!!","payload":"e30","signature":"AA"})",
                  RejectReason::malformed_jws, "base64url");
}

TEST_F(VerifierTest, RejectsAlgorithmOtherThanEdDsaAsMalformed) {
  Json header = {{"alg", "HS256"}, {"kid", m_key->public_jwk().kid}, {"typ", "reflow-event+json"}};
  agent::Jws jws =
      agent::jws_sign(*m_key, agent::base64url_encode(header.dump()), payload(stamp(1)));
  expect_rejected(jws.to_envelope(), RejectReason::malformed_jws, "alg");
}

// Issue 14 items 8–10: what a signature covers is read one way only. A header extension, a
// repeated member, a BOM or a number no reader holds exactly is refused, with its reason.
TEST_F(VerifierTest, RejectsHeaderExtensionsAndAmbiguousPayloads) {
  for (const char* extension : {R"("b64":false)", R"("crit":["b64"])", R"("zip":"DEF")"}) {
    const std::string header = R"({"alg":"EdDSA","kid":")" + m_key->public_jwk().kid +
                               R"(","typ":"reflow-event+json",)" + extension + "}";
    expect_rejected(
        agent::jws_sign(*m_key, agent::base64url_encode(header), payload(stamp(1))).to_envelope(),
        RejectReason::malformed_jws, "header member not allowed");
  }
  const std::string good = payload(stamp(1));
  std::string repeated = good;
  repeated.insert(1, R"("seq":7,)");
  expect_rejected(sign(repeated), RejectReason::invalid_event, R"(member "seq" appears twice)");
  expect_rejected(sign("\xEF\xBB\xBF" + good), RejectReason::invalid_event, "byte order mark");
  std::string huge = good;
  huge.insert(huge.size() - 1, R"(,"meta":{"n":1e400})");
  expect_rejected(sign(huge), RejectReason::invalid_event, "1e400 is too large");
}

TEST_F(VerifierTest, RejectsUnknownKid) {
  auto other = agent::DeviceKey::generate(m_dir / "other.key");
  ASSERT_TRUE(other);
  const std::string envelope =
      agent::jws_sign(*other, agent::jws_protected_header_b64(other->public_jwk().kid),
                      payload(stamp(1)))
          .to_envelope();
  Rejection r = expect_rejected(envelope, RejectReason::unknown_kid, other->public_jwk().kid);
  // The payload was readable, so the operator learns which stream it claimed.
  EXPECT_EQ(r.stream, m_stream);
  EXPECT_EQ(r.seq, 1);
}

TEST_F(VerifierTest, RejectsBadSignature) {
  agent::Jws jws = agent::jws_sign(*m_key, m_header, payload(stamp(1)));
  // Same key and header, another payload's signature.
  jws.signature_b64 = agent::jws_sign(*m_key, m_header, payload(stamp(2))).signature_b64;
  expect_rejected(jws.to_envelope(), RejectReason::bad_signature, "does not verify");
}

TEST_F(VerifierTest, RejectsPayloadDeviceOtherThanTheKeysDevice) {
  // The key of fablab-mk4-01 signs an event claiming to be another device's.
  expect_rejected(sign(payload(stamp(1, "other-device"))), RejectReason::device_mismatch,
                  "belongs to device \"fablab-mk4-01\"");
}

TEST_F(VerifierTest, RejectsEventArrivingOnAnotherDevicesTopic) {
  expect_rejected(sign(payload(stamp(1))), RejectReason::device_mismatch,
                  "topic's device is \"other-device\"", "reflow/v1/other-device/events",
                  "other-device");
}

TEST_F(VerifierTest, RejectsPayloadThatIsNotJson) {
  expect_rejected(sign("this is not json"), RejectReason::invalid_event,
                  "payload: line 1, column 2: syntax error");
}

TEST_F(VerifierTest, RejectsPayloadThatFailsTheEventSchema) {
  Json event = Json::parse(payload(stamp(1)));
  event["effortQuantity"]["hasUnit"] = "grams";
  Rejection r =
      expect_rejected(sign(event.dump()), RejectReason::invalid_event, "effortQuantity.hasUnit");
  EXPECT_EQ(r.stream, m_stream);
  EXPECT_EQ(r.seq, 1);
}

TEST_F(VerifierTest, RejectsPayloadWithoutDeviceAsInvalidEvent) {
  Json event = Json::parse(payload(stamp(1)));
  event.erase("device");
  expect_rejected(sign(event.dump()), RejectReason::invalid_event, "device: required");
}

// The producer fields of a payload as PROTOCOL §4 bounds them: copied into an object of their
// own and serialized (what the node measured before it learned to do so without the copy).
std::size_t fields_size(const Json& event) {
  constexpr std::array<std::string_view, 9> k_agent_fields = {
      "v", "id", "device", "stream", "seq", "prev", "recorded", "clock", "source"};
  Json fields = Json::object();
  for (const auto& [key, value] : event.items()) {
    if (std::find(k_agent_fields.begin(), k_agent_fields.end(), key) == k_agent_fields.end())
      fields[key] = value;
  }
  return fields.dump().size();
}

TEST_F(VerifierTest, BoundsTheProducerFieldsAtExactlyTheSubmissionLimit) {
  Json event = Json::parse(payload(stamp(1)));
  // Escapes, non-ASCII and numbers whose serialized form differs from their source text.
  event["meta"] = Json{{"quote", "say \"hi\"\n\t"},
                       {"unicode", "caf\u00e9 \u2615 \u00a0"},
                       {"big", 1e22},
                       {"small", 0.1},
                       {"count", 42}};
  for (int i = 0; fields_size(event) + 600 < agent::k_max_submission_bytes; ++i)
    event["meta"]["pad" + std::to_string(i)] = std::string(500, 'm');
  event["meta"]["last"] = "";
  event["meta"]["last"] = std::string(agent::k_max_submission_bytes - fields_size(event), 'm');
  ASSERT_EQ(fields_size(event), agent::k_max_submission_bytes);

  auto at_limit = verify(sign(event.dump()));
  ASSERT_TRUE(at_limit) << at_limit.error().message;
  EXPECT_TRUE(at_limit->has_value()) << at_limit->error().detail;

  event["meta"]["last"].get_ref<std::string&>() += "m";
  ASSERT_EQ(fields_size(event), agent::k_max_submission_bytes + 1);
  expect_rejected(sign(event.dump()), RejectReason::invalid_event,
                  "event: 16385 bytes of fields; at most 16384 are allowed");
}

TEST_F(VerifierTest, NamesTheFirstBadStringOfAPayloadInFieldOrder) {
  // Parsed JSON is valid UTF-8 (the parser refuses anything else), so these reach
  // validate_event_payload as values built in memory.
  auto message = [&](Json meta) {
    Json event = Json::parse(payload(stamp(1)));
    event["meta"] = std::move(meta);
    auto valid = agent::validate_event_payload(event);
    return valid ? std::string("accepted") : valid.error().message;
  };
  const std::string long_text(agent::k_max_string_bytes + 1, 'x');
  EXPECT_EQ(message(Json{{"a", long_text}, {"b", "caf\xc3"}}),
            "meta.a: string is 1025 bytes; at most 1024 are allowed");
  EXPECT_EQ(message(Json{{"a", "caf\xc3"}, {"b", long_text}}), "meta.a: string is not valid UTF-8");
  EXPECT_EQ(message(Json{{"ok", "fine"}, {"nested", Json{{"k\xc3", 1}}}}),
            "meta.nested: a member name is not valid UTF-8");
  EXPECT_EQ(message(Json{{"list", Json::array({"fine", "caf\xc3"})}}),
            "meta.list[1]: string is not valid UTF-8");
  EXPECT_EQ(message(Json{{"ok", "café ☕"}}), "accepted");

  Json event = Json::parse(payload(stamp(1)));
  event["source"]["ref"] = "caf\xc3";
  auto valid = agent::validate_event_payload(event);
  ASSERT_FALSE(valid);
  EXPECT_EQ(valid.error().message, "source.ref: string is not valid UTF-8");
}

TEST_F(VerifierTest, AcceptsRevokedKeysEventsRecordedBeforeRevocationOnly) {
  const std::int64_t revoked_at = k_verifier_t0 + 60'000;
  ASSERT_TRUE(m_store->revoke_device(k_verifier_device, revoked_at));

  agent::EventStamp before = stamp(1);
  before.recorded_unix_ms = revoked_at - 1;
  auto r = verify(sign(payload(before)));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r->has_value()) << r->error().detail;

  agent::EventStamp at = stamp(2);
  at.recorded_unix_ms = revoked_at;
  expect_rejected(sign(payload(at)), RejectReason::key_revoked, "revoked at");
}

TEST_F(VerifierTest, ReturnsStoreFailureInsteadOfRejecting) {
  BrokenStore broken;
  auto r = verify_envelope(broken, k_topic, k_verifier_device, sign(payload(stamp(1))));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, agent::ErrorCode::io);
}

TEST_F(VerifierTest, SplitsDeviceOutOfEventsTopic) {
  EXPECT_EQ(device_of_events_topic("reflow/v1/fablab-mk4-01/events", "reflow/v1"), "fablab-mk4-01");
  EXPECT_EQ(device_of_events_topic("site/a/b/dev/events", "site/a/b"), "dev");
  EXPECT_FALSE(device_of_events_topic("reflow/v1/a/b/events", "reflow/v1"));
  EXPECT_FALSE(device_of_events_topic("reflow/v1//events", "reflow/v1"));
  EXPECT_FALSE(device_of_events_topic("reflow/v1/dev/ack", "reflow/v1"));
  EXPECT_FALSE(device_of_events_topic("reflow/v2/dev/events", "reflow/v1"));
  EXPECT_FALSE(device_of_events_topic("reflow/v1dev/events", "reflow/v1"));
  EXPECT_FALSE(device_of_events_topic("reflow/v1/events", "reflow/v1"));
}

TEST_F(VerifierTest, NamesEveryReason) {
  EXPECT_EQ(to_string(RejectReason::oversized), "oversized");
  EXPECT_EQ(to_string(RejectReason::malformed_jws), "malformed_jws");
  EXPECT_EQ(to_string(RejectReason::unknown_kid), "unknown_kid");
  EXPECT_EQ(to_string(RejectReason::bad_signature), "bad_signature");
  EXPECT_EQ(to_string(RejectReason::device_mismatch), "device_mismatch");
  EXPECT_EQ(to_string(RejectReason::invalid_event), "invalid_event");
  EXPECT_EQ(to_string(RejectReason::key_revoked), "key_revoked");
  EXPECT_EQ(to_string(RejectReason::equivocation), "equivocation");
  EXPECT_EQ(to_string(RejectReason::chain_break), "chain_break");
  EXPECT_EQ(to_string(RejectReason::recorded_backwards), "recorded_backwards");
}

}  // namespace
}  // namespace ingest
