// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/vf_export.hpp>

#include <gtest/gtest.h>
#include <signal.h>
#include <sodium.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include <reflow/core/jose.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/core/units.hpp>
#include <reflow/node/export_ledger.hpp>

#include "temp_dir.hpp"
#include "verified_events.hpp"

extern char** environ;

namespace ingest {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

// zenflows' own signing test vectors: interfacerproject/zenflows-crypto (= dyne/zenflows-crypto),
// file test/vectors.sh, `v_keyring` and `v_gqlsigned`. The file exists in two versions with the
// same GraphQL text and different keys; both are checked.
//
// The seeds are keyring.eddsa of v_keyring, base58 (Bitcoin alphabet) of the 32-byte Ed25519
// seed. They were converted to hex once, outside the repository, with a throwaway
// `python3 -c` base58 decoder (big integer in base 58 → 32 big-endian bytes); Debian's `base58`
// package checks them: `printf %s EmDKWxH78WxKzJpUvsC6RWVRDWeB4q8AceooYf7uVaRv | base58 -d | xxd
// -p`. The public keys are eddsa_public_key of v_keyring, converted the same way.
struct Vector {
  const char* commit;
  const char* seed_base58;
  const char* seed_hex;
  const char* public_key_hex;
  const char* signature_b64;  // v_gqlsigned.eddsa_signature
};
constexpr Vector k_vectors[] = {
    {"ef85e51fb1ba7ee010fecce2738b55f767e12dcb", "EmDKWxH78WxKzJpUvsC6RWVRDWeB4q8AceooYf7uVaRv",
     "cc7b6a416f14f4b189c3786ced0a797127bce85bf0c5b38df7f501fd8a5045a9",
     // BmW1a6x43P4Rae9B4hS67PhHTCUShXAGy4K8tQtUfa8L
     "9ffb39f4f101164c7fdd5f69adebdaf35081dffbe89cd19727abb3630e9de30d",
     "/iQGPGejtTiGTOpGSAlbV3yMoCXZZ4ybjYkxK57e7AQjt6NaSssXfhUKp2wYqFNt2oFLBi/Ue/N3vC463cjlBQ=="},
    {"176b10aa60548bfc04543cd249e5337ce08cbf0a", "4s9ZQ5R1XwUk253BZJjKgJqrpL83QXuHsC6gqD3G2Skq",
     "396bc748ca1fc8038827ed43a0d3195c95c9c9cb718f8d0c970ce7f6d343e3ca",
     // GjE2zGoxDwFf3QhybuyEFmkpSkxSHR78qTf7BKMN7DLQ
     "e9b06f8e879037899a463f7a20da2ddc29154566954bc77621d8431aa94e7555",
     "ccbMsCs79DFS7dAX8ly3IYjoz/bXTBI2tZmSDiVjHesrIAw24GELda/9QzEE076/XzSrzYBARDM2LU/7ipGgBA=="},
};

// v_gqlsigned.hash (the same in both versions).
constexpr const char* k_vector_hash =
    "c500c14caa5bff14b0f869b310c5e98ac01b26b09a943c878ce40b97f5f394f9";

// The GraphQL text of vectors.sh (its `cat <<EOF > ${gql}` here-document, verbatim).
constexpr const char* k_vector_graphql = R"(mutation {
  createEconomicEvent(
    event: {
      action: "produce"
      provider: "01FWN12XX7TJX1AFF5KA4WPNN9" # bob
      receiver: "01FWN12XX7TJX1AFF5KA4WPNN9" # bob
      outputOf: "01FWN136SPDMKWWF23SWQZRM5F" # harvesting apples process
      resourceConformsTo: "01FWN136Y4ZZ7K9F314HQ7MKRG" # apple
      resourceQuantity: {
        hasNumericalValue: 50
        hasUnit: "01FWN136S5VPCCR3B3TGYDYEY9" # kilogram
      }
      atLocation: "01FWN136ZAPQ5ENBF3FZ79935D" # bob's farm
      hasPointInTime: "2022-01-02T03:04:05Z"
    }
    newInventoriedResource: {
      name: "bob's apples"
      note: "bob's delish apples"
      trackingIdentifier: "lot 123"
      currentLocation: "01FWN136ZAPQ5ENBF3FZ79935D" # bob's farm
      stage: "01FWN136X183DM43CTWXESNWAB" # fresh
    }
  ) {
    economicEvent {
      id
      action {id}
      provider {id}
      receiver {id}
      outputOf {id}
      resourceConformsTo {id}
      resourceQuantity {
        hasNumericalValue
        hasUnit {id}
      }
      atLocation {id}
      hasPointInTime
    }
    economicResource { # this is the newly-created resource
      id
      name
      note
      trackingIdentifier
      stage {id}
      currentLocation {id}
      conformsTo {id}
      primaryAccountable {id}
      custodian {id}
      accountingQuantity {
        hasNumericalValue
        hasUnit {id}
      }
      onhandQuantity {
        hasNumericalValue
        hasUnit {id}
      }
    }
  }
}
)";

// v_gqlsigned.gql: base64 of the normalised text the signature covers.
constexpr const char* k_vector_normalised_b64 =
    "bXV0YXRpb257Y3JlYXRlRWNvbm9taWNFdmVudChldmVudDp7YWN0aW9uOiJwcm9kdWNlInByb3ZpZGVyOiIwMUZXTjEyWF"
    "g3VEpYMUFGRjVLQTRXUE5OOSIjYm9icmVjZWl2ZXI6IjAxRldOMTJYWDdUSlgxQUZGNUtBNFdQTk45IiNib2JvdXRwdXRP"
    "ZjoiMDFGV04xMzZTUERNS1dXRjIzU1dRWlJNNUYiI2hhcnZlc3RpbmdhcHBsZXNwcm9jZXNzcmVzb3VyY2VDb25mb3Jtc1"
    "RvOiIwMUZXTjEzNlk0Wlo3SzlGMzE0SFE3TUtSRyIjYXBwbGVyZXNvdXJjZVF1YW50aXR5OntoYXNOdW1lcmljYWxWYWx1"
    "ZTo1MGhhc1VuaXQ6IjAxRldOMTM2UzVWUENDUjNCM1RHWURZRVk5IiNraWxvZ3JhbX1hdExvY2F0aW9uOiIwMUZXTjEzNl"
    "pBUFE1RU5CRjNGWjc5OTM1RCIjYm9iJ3NmYXJtaGFzUG9pbnRJblRpbWU6IjIwMjItMDEtMDJUMDM6MDQ6MDVaIn1uZXdJ"
    "bnZlbnRvcmllZFJlc291cmNlOntuYW1lOiJib2Inc2FwcGxlcyJub3RlOiJib2Inc2RlbGlzaGFwcGxlcyJ0cmFja2luZ0"
    "lkZW50aWZpZXI6ImxvdDEyMyJjdXJyZW50TG9jYXRpb246IjAxRldOMTM2WkFQUTVFTkJGM0ZaNzk5MzVEIiNib2Inc2Zh"
    "cm1zdGFnZToiMDFGV04xMzZYMTgzRE00M0NUV1hFU05XQUIiI2ZyZXNofSl7ZWNvbm9taWNFdmVudHtpZGFjdGlvbntpZH"
    "1wcm92aWRlcntpZH1yZWNlaXZlcntpZH1vdXRwdXRPZntpZH1yZXNvdXJjZUNvbmZvcm1zVG97aWR9cmVzb3VyY2VRdWFu"
    "dGl0eXtoYXNOdW1lcmljYWxWYWx1ZWhhc1VuaXR7aWR9fWF0TG9jYXRpb257aWR9aGFzUG9pbnRJblRpbWV9ZWNvbm9taW"
    "NSZXNvdXJjZXsjdGhpc2lzdGhlbmV3bHktY3JlYXRlZHJlc291cmNlaWRuYW1lbm90ZXRyYWNraW5nSWRlbnRpZmllcnN0"
    "YWdle2lkfWN1cnJlbnRMb2NhdGlvbntpZH1jb25mb3Jtc1Rve2lkfXByaW1hcnlBY2NvdW50YWJsZXtpZH1jdXN0b2RpYW"
    "57aWR9YWNjb3VudGluZ1F1YW50aXR5e2hhc051bWVyaWNhbFZhbHVlaGFzVW5pdHtpZH19b25oYW5kUXVhbnRpdHl7aGFz"
    "TnVtZXJpY2FsVmFsdWVoYXNVbml0e2lkfX19fX0=";

std::vector<std::uint8_t> from_hex(std::string_view hex) {
  std::vector<std::uint8_t> out(hex.size() / 2);
  std::size_t len = 0;
  EXPECT_EQ(sodium_hex2bin(out.data(), out.size(), hex.data(), hex.size(), nullptr, &len, nullptr),
            0);
  out.resize(len);
  return out;
}

std::string from_base64(std::string_view b64) {
  std::string out(b64.size(), '\0');
  std::size_t len = 0;
  EXPECT_EQ(sodium_base642bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), b64.data(),
                              b64.size(), nullptr, &len, nullptr, sodium_base64_VARIANT_ORIGINAL),
            0);
  out.resize(len);
  return out;
}

// A key file in the format `reflow-agent keygen` writes (base64url seed, mode 0600).
fs::path write_seed_file(const fs::path& path, std::string_view seed_hex) {
  auto seed = from_hex(seed_hex);
  std::ofstream(path) << agent::base64url_encode(seed) << "\n";
  fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
  return path;
}

class ZenflowsTest : public ::testing::Test {
 protected:
  reflow_test::TempDir m_dir;
};

TEST_F(ZenflowsTest, CompactAsciiOfTheVectorsGraphqlIsItsNormalisedText) {
  EXPECT_EQ(zenflows_compact_ascii(k_vector_graphql), from_base64(k_vector_normalised_b64));
}

TEST_F(ZenflowsTest, SignatureAndHashReproduceZenflowsTestVectors) {
  for (const Vector& v : k_vectors) {
    SCOPED_TRACE(v.commit);
    auto key = agent::DeviceKey::load(
        write_seed_file(m_dir / (std::string(v.commit) + ".key"), v.seed_hex));
    ASSERT_TRUE(key) << key.error().message;
    auto public_key = from_hex(v.public_key_hex);
    EXPECT_TRUE(std::equal(public_key.begin(), public_key.end(), key->public_jwk().x.begin()));

    ZenflowsSignature signature = zenflows_sign(*key, k_vector_graphql);
    EXPECT_EQ(signature.sign_b64, v.signature_b64);
    EXPECT_EQ(signature.hash_hex, k_vector_hash);
  }
}

TEST_F(ZenflowsTest, CompactAsciiFollowsZenroomByteForByte) {
  // Whitespace and controls go; a backslash goes, and so does a/b/t/n/v/f/r right after it.
  EXPECT_EQ(zenflows_compact_ascii("a b\tc\r\nd"), "abcd");
  EXPECT_EQ(zenflows_compact_ascii(R"({"note":"x\ny\"z\u00e9"})"), R"({"note":"xy"zu00e9"})");
  EXPECT_EQ(zenflows_compact_ascii(R"(\a\b\t\n\v\f\r\x)"), "x");
  // After an escaped backslash the escape state is still on (Zenroom's counter): `\\n` loses n.
  EXPECT_EQ(zenflows_compact_ascii(R"(p\\nq)"), "pq");
  // A blank between the backslash and the letter does not end the escape (blanks are skipped
  // before the escape check).
  EXPECT_EQ(zenflows_compact_ascii("\\ n!"), "!");
  // x86-64 signed char: every byte >= 0x80 compares below 0x21 and is dropped.
  EXPECT_EQ(zenflows_compact_ascii("caf\xc3\xa9 \x80\xff!"), "caf!");
  EXPECT_EQ(zenflows_compact_ascii(""), "");
}

TEST_F(ZenflowsTest, SignatureIsInsensitiveToWhitespaceLikeTheServer) {
  auto key = agent::DeviceKey::load(write_seed_file(m_dir / "k", k_vectors[0].seed_hex));
  ASSERT_TRUE(key);
  EXPECT_EQ(zenflows_sign(*key, "{\"a\": 1}").sign_b64, zenflows_sign(*key, "{\"a\":1}").sign_b64);
  EXPECT_NE(zenflows_sign(*key, "{\"a\":1}").sign_b64, zenflows_sign(*key, "{\"a\":2}").sign_b64);
}

// --- --post against a local HTTP server ---

// The stub zenflows (testdata/zenflows_stub.py under python3), killed on destruction.
class StubServer {
 public:
  StubServer(const fs::path& dir, const Json& responses)
      : m_port_file(dir / "port"), m_log_file(dir / "requests.jsonl") {
    std::ofstream(dir / "responses.json") << responses.dump();
    const std::string script = std::string(REFLOW_EXPORT_TESTDATA) + "/zenflows_stub.py";
    const std::string responses_file = (dir / "responses.json").string();
    std::vector<std::string> args = {"python3", script, m_port_file.string(), m_log_file.string(),
                                     responses_file};
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawnp(&m_pid, "python3", nullptr, nullptr, argv.data(), environ) != 0)
      throw std::runtime_error("cannot start python3 (Debian package python3)");
    // Wait for the port file (written once listening), with a generous bound.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!fs::exists(m_port_file)) {
      int status = 0;
      if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
        m_pid = -1;
        throw std::runtime_error("the stub server exited at start");
      }
      if (std::chrono::steady_clock::now() > deadline)
        throw std::runtime_error("the stub server did not start within 30 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::ifstream(m_port_file) >> m_port;
  }
  ~StubServer() {
    if (m_pid > 0) {
      ::kill(m_pid, SIGTERM);
      int status = 0;
      ::waitpid(m_pid, &status, 0);
    }
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(m_port) + "/api"; }

  std::vector<Json> requests() const {
    std::vector<Json> out;
    std::ifstream in(m_log_file);
    std::string line;
    while (std::getline(in, line))
      out.push_back(Json::parse(line));
    return out;
  }

 private:
  fs::path m_port_file;
  fs::path m_log_file;
  pid_t m_pid = -1;
  int m_port = 0;
};

std::string body_of(const Json& recorded) {
  auto bytes = from_hex(recorded["body_hex"].get<std::string>());
  return std::string(bytes.begin(), bytes.end());
}

// Verifies the request's zenflows-sign with libsodium against `public_key` over the compacted
// recorded body, independently of zenflows_sign.
bool signature_verifies(const Json& recorded, const agent::PublicJwk& public_key) {
  const std::string compact = zenflows_compact_ascii(body_of(recorded));
  const std::string signature =
      from_base64(recorded["headers"]["zenflows-sign"].get<std::string>());
  if (signature.size() != crypto_sign_BYTES) return false;
  return crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(signature.data()),
                                     reinterpret_cast<const unsigned char*>(compact.data()),
                                     compact.size(), public_key.x.data()) == 0;
}

StoredEvent make_event(std::int64_t seq, const std::string& id, Json fields) {
  Json payload = {{"v", 1},
                  {"id", id},
                  {"device", "printer-01"},
                  {"stream", "01JBQ8Z6V2X4W6Y8A0C2E4G6J8"},
                  {"seq", seq},
                  {"prev", nullptr},
                  {"recorded", "2026-11-01T12:00:00.000Z"},
                  {"clock", "synced"}};
  for (auto& [key, value] : fields.items())
    payload[key] = value;
  payload["source"] = {{"driver", "octoprint"}, {"instance", "mk4"}, {"ref", "job 42"}};
  StoredEvent e;
  e.device = "printer-01";
  e.stream = "01JBQ8Z6V2X4W6Y8A0C2E4G6J8";
  e.seq = seq;
  e.id = id;
  e.action = fields.value("action", "");
  e.recorded_unix_ms = *agent::parse_rfc3339("2026-11-01T12:00:00.000Z");
  e.payload = payload.dump();
  return e;
}

IngestConfig mapped_config() {
  IngestConfig config;
  config.default_agent = "01AGENT000000000000000000A";
  config.units = {{"hour", "01VN1TH0VR0000000000000000"}, {"gram", "01VN1TGRAM0000000000000000"}};
  config.ids = {{"printer-mk4", "01RESPR1NTER00000000000000"},
                {"spool-3", "01RESSPOOL000000000000000"}};
  return config;
}

std::vector<StoredEvent> job_events() {
  return {
      make_event(1, "01JBQ9000000000000000000B1",
                 {{"action", "use"},
                  {"hasBeginning", "2026-11-01T09:00:00Z"},
                  {"hasEnd", "2026-11-01T11:00:00Z"},
                  {"resourceInventoriedAs", "printer-mk4"},
                  {"effortQuantity", {{"hasNumericalValue", 2}, {"hasUnit", "hour"}}},
                  {"inputOf", "job-42"},
                  {"note", "Benchy \xc3\xa9"}}),
      make_event(2, "01JBQ9000000000000000000B2",
                 {{"action", "consume"},
                  {"hasPointInTime", "2026-11-01T11:00:00Z"},
                  {"resourceInventoriedAs", "spool-3"},
                  {"resourceQuantity", {{"hasNumericalValue", 12.5}, {"hasUnit", "gram"}}},
                  {"inputOf", "job-42"}}),
  };
}

TEST_F(ZenflowsTest, PostGoesThroughTheExportProxy) {
  // The stub stands in for the proxy: libcurl sends a plain http:// request to a proxy with the
  // whole URL as its target (RFC 9112 §3.2.2, absolute-form), and the .invalid host (RFC 6761
  // §6.4) never resolves, so an answer proves the request went through the proxy.
  Json responses = Json::array(
      {{{"data", {{"createEconomicEvent", {{"economicEvent", {{"id", "01SERVEREVENT1"}}}}}}}}});
  StubServer proxy(m_dir.path(), responses);
  auto key = agent::DeviceKey::load(write_seed_file(m_dir / "zenflows.key", k_vectors[0].seed_hex));
  ASSERT_TRUE(key);
  ZenflowsPostOptions options;
  options.url = "http://zenflows.invalid/api";
  options.user = "reflow-node";
  const std::string stub = proxy.url();                // http://127.0.0.1:PORT/api
  options.proxy = stub.substr(0, stub.rfind("/api"));  // http://127.0.0.1:PORT
  auto answer = zenflows_post(options, *key, R"({"query":"{}"})");
  ASSERT_TRUE(answer) << answer.error().message;
  auto requests = proxy.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0]["path"], "http://zenflows.invalid/api");
  EXPECT_EQ(requests[0]["headers"]["zenflows-user"], "reflow-node");

  options.proxy.clear();  // without it the name does not resolve: no request reaches the stub
  EXPECT_FALSE(zenflows_post(options, *key, R"({"query":"{}"})"));
  EXPECT_EQ(proxy.requests().size(), 1u);
}

TEST_F(ZenflowsTest, PostSignsEachRequestAndFeedsTheProcessIdIntoItsEvents) {
  Json responses = Json::array(
      {{{"data", {{"createProcess", {{"process", {{"id", "01SERVERPR0CESS00000000000"}}}}}}}},
       {{"data", {{"createEconomicEvent", {{"economicEvent", {{"id", "01SERVEREVENT1"}}}}}}}},
       {{"data", {{"createEconomicEvent", {{"economicEvent", {{"id", "01SERVEREVENT2"}}}}}}}}});
  StubServer server(m_dir.path(), responses);
  auto key = agent::DeviceKey::load(write_seed_file(m_dir / "zenflows.key", k_vectors[0].seed_hex));
  ASSERT_TRUE(key);

  VfExport plan = build_vf_export(job_events(), mapped_config());
  ASSERT_TRUE(plan.missing.empty()) << describe_missing(plan.missing);
  ZenflowsPostOptions options;
  options.url = server.url();
  options.user = "reflow-node";
  std::vector<std::string> posted_ids;
  auto status = post_vf_export(
      plan, options, *key, [&](const VfPosted& posted) { posted_ids.push_back(posted.server_id); });
  ASSERT_TRUE(status) << status.error().message;
  EXPECT_EQ(posted_ids, (std::vector<std::string>{"01SERVERPR0CESS00000000000", "01SERVEREVENT1",
                                                  "01SERVEREVENT2"}));

  auto requests = server.requests();
  ASSERT_EQ(requests.size(), 3u);
  for (const auto& r : requests) {
    EXPECT_EQ(r["path"], "/api");
    EXPECT_EQ(r["headers"]["zenflows-user"], "reflow-node");
    EXPECT_EQ(r["headers"]["content-type"], "application/json");
    EXPECT_TRUE(signature_verifies(r, key->public_jwk()));
    // zenflows-hash: hex SHA-256 of the compacted body.
    const std::string compact = zenflows_compact_ascii(body_of(r));
    unsigned char hash[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(hash, reinterpret_cast<const unsigned char*>(compact.data()),
                       compact.size());
    char hex[sizeof hash * 2 + 1];
    sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
    EXPECT_EQ(r["headers"]["zenflows-hash"], hex);
  }
  Json first = Json::parse(body_of(requests[0]));
  EXPECT_EQ(first["query"], vf_mutation_text(VfRequestKind::create_process));
  EXPECT_EQ(first["variables"]["process"]["name"], "job-42");
  Json second = Json::parse(body_of(requests[1]));
  EXPECT_EQ(second["query"], vf_mutation_text(VfRequestKind::create_economic_event));
  EXPECT_EQ(second["variables"]["event"]["inputOf"], "01SERVERPR0CESS00000000000");
  EXPECT_EQ(second["variables"]["event"]["note"],
            "Benchy \xc3\xa9 (reflow event 01JBQ9000000000000000000B1, device printer-01, stream "
            "01JBQ8Z6V2X4W6Y8A0C2E4G6J8 seq 1, source octoprint/mk4 job 42)");
  // The body on the wire is pure ASCII: the é travels as \u00e9.
  EXPECT_NE(body_of(requests[1]).find("Benchy \\u00e9"), std::string::npos);
  Json third = Json::parse(body_of(requests[2]));
  EXPECT_EQ(third["variables"]["event"]["inputOf"], "01SERVERPR0CESS00000000000");
  EXPECT_EQ(third["variables"]["event"]["resourceInventoriedAs"], "01RESSPOOL000000000000000");
}

TEST_F(ZenflowsTest, PostStopsAtTheFirstGraphqlError) {
  Json responses = Json::array(
      {{{"data", {{"createProcess", {{"process", {{"id", "01SERVERPR0CESS00000000000"}}}}}}}},
       {{"errors", {{{"message", "unit mismatch"}}}}, {"data", nullptr}}});
  StubServer server(m_dir.path(), responses);
  auto key = agent::DeviceKey::load(write_seed_file(m_dir / "zenflows.key", k_vectors[0].seed_hex));
  ASSERT_TRUE(key);
  ZenflowsPostOptions options;
  options.url = server.url();
  options.user = "reflow-node";
  int posted = 0;
  auto status = post_vf_export(build_vf_export(job_events(), mapped_config()), options, *key,
                               [&](const VfPosted&) { ++posted; });
  ASSERT_FALSE(status);
  EXPECT_EQ(status.error().code, agent::ErrorCode::rejected);
  EXPECT_NE(status.error().message.find("unit mismatch"), std::string::npos);
  EXPECT_NE(status.error().message.find("01JBQ9000000000000000000B1"), std::string::npos);
  EXPECT_NE(status.error().message.find("after 1 of 3"), std::string::npos);
  EXPECT_EQ(posted, 1);
  EXPECT_EQ(server.requests().size(), 2u);  // the third was never sent
}

TEST_F(ZenflowsTest, PostRefusesToSendAnythingWhileIdsAreMissing) {
  StubServer server(m_dir.path(), Json::array());
  auto key = agent::DeviceKey::load(write_seed_file(m_dir / "zenflows.key", k_vectors[0].seed_hex));
  ASSERT_TRUE(key);
  IngestConfig config = mapped_config();
  config.units.erase("gram");
  ZenflowsPostOptions options;
  options.url = server.url();
  options.user = "reflow-node";
  auto status =
      post_vf_export(build_vf_export(job_events(), config), options, *key, [](const VfPosted&) {});
  ASSERT_FALSE(status);
  EXPECT_EQ(status.error().code, agent::ErrorCode::invalid_config);
  EXPECT_NE(status.error().message.find("unit \"gram\""), std::string::npos);
  EXPECT_TRUE(server.requests().empty());
}

TEST_F(ZenflowsTest, PostReportsAnUnreachableServer) {
  auto key = agent::DeviceKey::load(write_seed_file(m_dir / "zenflows.key", k_vectors[0].seed_hex));
  ASSERT_TRUE(key);
  ZenflowsPostOptions options;
  options.url = "http://127.0.0.1:1/api";  // port 1: nothing listens there
  options.user = "reflow-node";
  auto answer = zenflows_post(options, *key, "{}");
  ASSERT_FALSE(answer);
  EXPECT_EQ(answer.error().code, agent::ErrorCode::device_unavailable);
  EXPECT_NE(answer.error().message.find("http://127.0.0.1:1/api"), std::string::npos);
}

// --- the export ledger (export_ledger.hpp) ---

std::vector<StoredEvent> produce_job_events() {
  auto events = job_events();
  events.push_back(
      make_event(3, "01JBQ9000000000000000000B3",
                 {{"action", "produce"},
                  {"hasPointInTime", "2026-11-01T11:00:01Z"},
                  {"resourceInventoriedAs", "benchy, job 42"},
                  {"resourceConformsTo", "benchy"},
                  {"resourceQuantity", {{"hasNumericalValue", 1}, {"hasUnit", "gram"}}},
                  {"outputOf", "job-42"}}));
  return events;
}

IngestConfig produce_config() {
  IngestConfig config = mapped_config();
  config.ids["benchy"] = "01SPECBENCHY00000000000000";
  return config;
}

TEST_F(ZenflowsTest, LedgerPlanLeavesOutRecordedEventsAndUsesRecordedProcessesAndResources) {
  const auto events = produce_job_events();
  ExportLedger ledger;
  ledger.server = "http://zenflows.test/api";
  LedgerPlan fresh = plan_ledger_export(events, produce_config(), ledger);
  ASSERT_EQ(fresh.export_.requests.size(), 4u);  // createProcess, use, consume, produce
  EXPECT_EQ(fresh.events_total, 3u);
  EXPECT_EQ(fresh.events_recorded, 0u);

  // The process and the use were recorded: the rest refers to the process by its id.
  ledger.processes["job-42"] = "01SERVERPR0CESS00000000000";
  ledger.events[ledger_event_ref("printer-01", "01JBQ8Z6V2X4W6Y8A0C2E4G6J8", 1)] = "01EV1";
  LedgerPlan resumed = plan_ledger_export(events, produce_config(), ledger);
  EXPECT_EQ(resumed.events_recorded, 1u);
  ASSERT_EQ(resumed.export_.requests.size(), 2u);
  for (const VfRequest& r : resumed.export_.requests) {
    EXPECT_EQ(r.kind, VfRequestKind::create_economic_event);
    EXPECT_TRUE(r.pending.empty());
  }
  EXPECT_EQ(resumed.export_.requests[0].variables["event"]["inputOf"],
            "01SERVERPR0CESS00000000000");
  EXPECT_EQ(resumed.export_.requests[1].variables["event"]["outputOf"],
            "01SERVERPR0CESS00000000000");
  EXPECT_TRUE(resumed.export_.requests[1].variables.contains("newInventoriedResource"));

  // A resource the ledger holds is added to, not created again.
  ledger.resources["benchy, job 42"] = "01SERVERRES0URCE0000000000";
  LedgerPlan with_resource = plan_ledger_export(events, produce_config(), ledger);
  ASSERT_EQ(with_resource.export_.requests.size(), 2u);
  const Json& produce = with_resource.export_.requests[1].variables;
  EXPECT_FALSE(produce.contains("newInventoriedResource"));
  EXPECT_EQ(produce["event"]["resourceInventoriedAs"], "01SERVERRES0URCE0000000000");

  // Everything recorded: nothing to send, and what is missing for recorded events is moot.
  for (std::int64_t seq : {2, 3})
    ledger.events[ledger_event_ref("printer-01", "01JBQ8Z6V2X4W6Y8A0C2E4G6J8", seq)] = "01EV";
  IngestConfig config = produce_config();
  config.units.erase("gram");
  LedgerPlan done = plan_ledger_export(events, config, ledger);
  EXPECT_TRUE(done.export_.requests.empty());
  EXPECT_TRUE(done.export_.missing.empty());
  EXPECT_EQ(done.events_recorded, 3u);
}

// export --check with the ledger: what an earlier --post recorded is listed as posted with its
// zenflows id and not checked again (a unit the config no longer maps is moot for it); the rest
// is checked with the ledger's processes and resources as server ids.
TEST_F(ZenflowsTest, LedgerCheckListsRecordedEventsAsPostedAndChecksTheRest) {
  const auto events = produce_job_events();
  ExportLedger ledger;
  ledger.server = "http://zenflows.test/api";
  IngestConfig config = produce_config();
  config.units.erase("hour");  // the use's effortQuantity: a problem, until the use is posted
  VfCheck fresh = check_ledger_export(events, config, ledger);
  ASSERT_EQ(fresh.events.size(), 3u);
  EXPECT_EQ(fresh.posted, 0u);
  EXPECT_EQ(fresh.refused, 1u);

  ledger.processes["job-42"] = "01SERVERPR0CESS00000000000";
  ledger.events[ledger_event_ref("printer-01", "01JBQ8Z6V2X4W6Y8A0C2E4G6J8", 1)] =
      "01SERVEREVENT0000000000001";
  VfCheck resumed = check_ledger_export(events, config, ledger);
  ASSERT_EQ(resumed.events.size(), 3u);
  EXPECT_EQ(resumed.posted, 1u);
  EXPECT_EQ(resumed.refused, 0u);
  EXPECT_EQ(resumed.problems, 0u);
  EXPECT_EQ(resumed.events[0].posted_id, "01SERVEREVENT0000000000001");
  EXPECT_TRUE(resumed.events[0].problems.empty());
  EXPECT_TRUE(resumed.events[1].posted_id.empty());

  const std::string text = format_vf_check_text(resumed);
  EXPECT_NE(text.find(resumed.events[0].id + " use (device printer-01): posted already as "
                                             "01SERVEREVENT0000000000001\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(resumed.events[1].id + " consume (device printer-01): ok\n"),
            std::string::npos)
      << text;
  EXPECT_TRUE(
      text.ends_with("checked 2 events: 0 would be refused by zenflows (0 problems), 2 "
                     "pass; 1 already posted (export ledger), not checked again\n"))
      << text;
  const Json json = vf_check_json(resumed);
  EXPECT_EQ(json["checked"], 2);
  EXPECT_EQ(json["posted"], 1);
  EXPECT_EQ(json["events"][0]["posted_id"], "01SERVEREVENT0000000000001");
  EXPECT_FALSE(json["events"][0].contains("problems"));
  EXPECT_EQ(json["events"][1]["problems"], Json::array());
}

using test_store::ledger_row;

class ZenflowsLedgerTest : public ZenflowsTest {
 protected:
  void SetUp() override {
    auto store = open_sqlite_store(m_dir / "ingest.db");
    ASSERT_TRUE(store) << store.error().message;
    m_store = std::move(*store);
    auto key =
        agent::DeviceKey::load(write_seed_file(m_dir / "zenflows.key", k_vectors[0].seed_hex));
    ASSERT_TRUE(key);
    m_key.emplace(std::move(*key));
  }
  std::unique_ptr<Store> m_store;
  std::optional<agent::DeviceKey> m_key;
};

TEST_F(ZenflowsLedgerTest, PostWritesAnIntentBeforeEachRequestAndItsIdsAfter) {
  Json responses = Json::array(
      {{{"data", {{"createProcess", {{"process", {{"id", "01SERVERPR0CESS00000000000"}}}}}}}},
       {{"data", {{"createEconomicEvent", {{"economicEvent", {{"id", "01SERVEREVENT1"}}}}}}}},
       {{"errors", {{{"message", "unit mismatch"}}}}, {"data", nullptr}}});
  StubServer server(m_dir.path(), responses);
  ZenflowsPostOptions options;
  options.url = server.url();
  options.user = "reflow-node";
  ExportLedger empty;
  LedgerPlan plan = plan_ledger_export(job_events(), mapped_config(), empty);
  std::int64_t clock = 1'800'000'000'000;
  agent::UlidGenerator ulids;
  std::vector<std::size_t> intents_seen;
  auto hooks = ledger_post_hooks(
      *m_store, options.url, [&] { return ++clock; }, ulids, [](const VfPosted&) {});
  // Wrap before_send: the intent is in the store before the request leaves.
  auto write_intent = hooks.before_send;
  hooks.before_send = [&](VfRequest& r) -> agent::Status {
    auto s = write_intent(r);
    intents_seen.push_back(m_store->ledger_entries(options.url)->size());
    EXPECT_EQ(server.requests().size() + 1, intents_seen.size());
    return s;
  };
  auto status = post_vf_export(plan.export_, options, *m_key, hooks);
  ASSERT_FALSE(status);  // the consume was refused
  EXPECT_EQ(intents_seen, (std::vector<std::size_t>{1, 2, 3}));

  auto ledger = read_export_ledger(*m_store, options.url);
  ASSERT_TRUE(ledger);
  EXPECT_EQ(ledger->processes.at("job-42"), "01SERVERPR0CESS00000000000");
  EXPECT_EQ(ledger->events.size(), 1u);
  EXPECT_TRUE(ledger->intents.empty());  // the refused request's intent was dropped
  // The createProcess note carries the ledger's marker, which settling looks for.
  auto requests = server.requests();
  Json first = Json::parse(body_of(requests[0]));
  const std::string note = first["variables"]["process"]["note"];
  EXPECT_NE(note.find("(reflow export "), std::string::npos) << note;
}

TEST_F(ZenflowsLedgerTest, SettlingRecordsWhatTheServerHasAndDropsWhatItLacks) {
  // Two intents left by a killed exporter: an event the server did create (its note is on a
  // later page), and a process it did not.
  const std::string event_note = "part (reflow event 01E, device dev-a, stream S seq 3)";
  Json responses = Json::array();
  responses.push_back(
      {{"data",
        {{"processes",
          {{"edges", Json::array({{{"cursor", "01P1"},
                                   {"node", {{"id", "01P1"}, {"note", "someone else's"}}}}})},
           {"pageInfo", {{"hasNextPage", false}, {"endCursor", "01P1"}}}}}}}});
  responses.push_back(
      {{"data",
        {{"economicEvents",
          {{"edges",
            Json::array(
                {{{"cursor", "01E1"},
                  {"node",
                   {{"id", "01E1"}, {"note", "other"}, {"resourceInventoriedAs", nullptr}}}}})},
           {"pageInfo", {{"hasNextPage", true}, {"endCursor", "01E1"}}}}}}}});
  responses.push_back(
      {{"data",
        {{"economicEvents",
          {{"edges", Json::array({{{"cursor", "01E2"},
                                   {"node",
                                    {{"id", "01E2"},
                                     {"note", event_note},
                                     {"resourceInventoriedAs", {{"id", "01RES"}}}}}}})},
           {"pageInfo", {{"hasNextPage", false}, {"endCursor", "01E2"}}}}}}}});
  const Json no_processes = {
      {"data",
       {{"processes",
         {{"edges", Json::array()},
          {"pageInfo", {{"hasNextPage", false}, {"endCursor", nullptr}}}}}}}};
  responses.push_back(no_processes);
  StubServer server(m_dir.path(), responses);
  ZenflowsPostOptions options;
  options.url = server.url();
  options.user = "reflow-node";
  const std::int64_t t = 1'800'000'000'000;
  ASSERT_TRUE(m_store->ledger_intent(
      ledger_row(options.url, LedgerKind::event, "dev-a/S/3", event_note, "01E", "part-1"), t));
  ASSERT_TRUE(m_store->ledger_intent(
      ledger_row(options.url, LedgerKind::process, "job-1", "job-1 (reflow export 01M)"), t));

  auto settled = settle_export_intents(*m_store, options, *m_key);
  ASSERT_TRUE(settled) << settled.error().message;
  ASSERT_EQ(settled->size(), 2u);
  EXPECT_FALSE(settled->at(0).created);  // the process: looked up first
  EXPECT_TRUE(settled->at(1).created);
  EXPECT_EQ(settled->at(1).server_id, "01E2");
  EXPECT_EQ(settled->at(1).created_resource_id, "01RES");

  auto ledger = read_export_ledger(*m_store, options.url);
  ASSERT_TRUE(ledger);
  EXPECT_TRUE(ledger->intents.empty());
  EXPECT_TRUE(ledger->processes.empty());
  EXPECT_EQ(ledger->events.at("dev-a/S/3"), "01E2");
  EXPECT_EQ(ledger->resources.at("part-1"), "01RES");

  // Signed queries, paging from the server's first object (the ledger has no id of the server
  // whose clock would say where to start: the node's may be days off), then from endCursor.
  auto requests = server.requests();
  ASSERT_EQ(requests.size(), 3u);
  const std::string floor = agent::ulid_floor(0);
  Json q0 = Json::parse(body_of(requests[0]));
  EXPECT_EQ(q0["query"], settle_query_text(LedgerKind::process));
  EXPECT_EQ(q0["variables"]["after"], floor);
  EXPECT_EQ(q0["variables"]["first"], 100);
  Json q1 = Json::parse(body_of(requests[1]));
  EXPECT_EQ(q1["query"], settle_query_text(LedgerKind::event));
  EXPECT_EQ(q1["variables"]["after"], floor);
  EXPECT_EQ(Json::parse(body_of(requests[2]))["variables"]["after"], "01E1");
  for (const auto& r : requests)
    EXPECT_TRUE(signature_verifies(r, m_key->public_jwk()));

  // Nothing left to settle: no request.
  auto again = settle_export_intents(*m_store, options, *m_key);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->empty());
  EXPECT_EQ(server.requests().size(), 3u);

  // With an id of the server in the ledger, its clock sets the cursor: a margin before that
  // id's time when it is earlier than the intent's.
  const std::int64_t server_ms = t - 3 * k_settle_margin_ms;  // its clock is 3 days behind
  ASSERT_TRUE(m_store->ledger_intent(
      ledger_row(options.url, LedgerKind::process, "job-0", "job-0 (reflow export 01M)"), t));
  ASSERT_TRUE(m_store->ledger_record(options.url, LedgerKind::process, "job-0",
                                     agent::ulid_floor(server_ms), "", t));
  ASSERT_TRUE(m_store->ledger_intent(
      ledger_row(options.url, LedgerKind::process, "job-2", "job-2 (reflow export 01N)"), t + 1));
  auto settled_last = settle_export_intents(*m_store, options, *m_key);
  ASSERT_TRUE(settled_last) << settled_last.error().message;
  requests = server.requests();
  ASSERT_EQ(requests.size(), 4u);
  EXPECT_EQ(Json::parse(body_of(requests[3]))["variables"]["after"],
            agent::ulid_floor(server_ms - k_settle_margin_ms));
}

TEST_F(ZenflowsLedgerTest, SettlingKeepsTheIntentsWhenTheAnswerIsNotAPage) {
  StubServer server(m_dir.path(), Json::array({{{"data", nullptr}}}));
  ZenflowsPostOptions options;
  options.url = server.url();
  options.user = "reflow-node";
  ASSERT_TRUE(
      m_store->ledger_intent(ledger_row(options.url, LedgerKind::event, "dev-a/S/1", "n"), 1));
  auto settled = settle_export_intents(*m_store, options, *m_key);
  ASSERT_FALSE(settled);
  EXPECT_EQ(settled.error().code, agent::ErrorCode::invalid_argument);
  EXPECT_NE(settled.error().message.find("economicEvents without edges"), std::string::npos)
      << settled.error().message;
  auto ledger = read_export_ledger(*m_store, options.url);
  ASSERT_TRUE(ledger);
  EXPECT_EQ(ledger->intents.size(), 1u);
}

TEST_F(ZenflowsLedgerTest, SettlingKeepsTheIntentsWhenTheServerCannotBeAsked) {
  ZenflowsPostOptions options;
  options.url = "http://127.0.0.1:1/api";  // nothing listens there
  options.user = "reflow-node";
  ASSERT_TRUE(
      m_store->ledger_intent(ledger_row(options.url, LedgerKind::event, "dev-a/S/1", "n"), 1));
  auto settled = settle_export_intents(*m_store, options, *m_key);
  ASSERT_FALSE(settled);
  EXPECT_EQ(settled.error().code, agent::ErrorCode::device_unavailable);
  auto ledger = read_export_ledger(*m_store, options.url);
  ASSERT_TRUE(ledger);
  EXPECT_EQ(ledger->intents.size(), 1u);
}

}  // namespace
}  // namespace ingest
