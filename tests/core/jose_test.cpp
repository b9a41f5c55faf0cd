// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/jose.hpp>

#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <sodium.h>
#include <nlohmann/json.hpp>

#include "temp_dir.hpp"

namespace agent {
namespace {

// RFC 8037 Appendix A.
constexpr std::string_view k_rfc_d = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
constexpr std::string_view k_rfc_x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
constexpr std::string_view k_rfc_thumbprint = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";
constexpr std::string_view k_rfc_signing_input =
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
constexpr std::string_view k_rfc_signature =
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

class JoseTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_GE(sodium_init(), 0); }

  std::filesystem::path write_key_file(std::string_view content, mode_t mode) {
    auto path = m_dir / "device.key";
    std::ofstream(path) << content;
    EXPECT_EQ(::chmod(path.c_str(), mode), 0);
    return path;
  }

  static std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    std::stringstream buf;
    buf << in.rdbuf();
    return buf.str();
  }

  DeviceKey rfc_key() {
    auto key = DeviceKey::load(write_key_file(std::string(k_rfc_d) + "\n", 0600));
    EXPECT_TRUE(key.has_value()) << key.error().message;
    return std::move(*key);
  }

  // A well-formed envelope with the given members, for parse failures.
  static std::string envelope(const nlohmann::ordered_json& header, std::string_view payload,
                              std::string_view signature_b64) {
    return nlohmann::ordered_json{{"protected", base64url_encode(header.dump())},
                                  {"payload", base64url_encode(payload)},
                                  {"signature", signature_b64}}
        .dump();
  }

  reflow_test::TempDir m_dir;
};

TEST_F(JoseTest, Base64urlRoundTripsWithoutPadding) {
  const std::string bytes("\xfb\xff\x00\x01hello", 9);
  const std::string encoded = base64url_encode(bytes);
  EXPECT_EQ(encoded, "-_8AAWhlbGxv");
  auto decoded = base64url_decode(encoded);
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(*decoded, bytes);
  EXPECT_EQ(base64url_encode(std::string_view("")), "");
}

TEST_F(JoseTest, Base64urlDecodeRefusesPaddingStandardAlphabetAndNonCanonicalInput) {
  for (std::string_view bad : {"aGk=", "+/8A", "a", "aGk!", "aGl"}) {
    auto decoded = base64url_decode(bad);
    ASSERT_FALSE(decoded.has_value()) << bad;
    EXPECT_EQ(decoded.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(decoded.error().message.find("base64url"), std::string::npos);
  }
}

TEST_F(JoseTest, Sha256MatchesKnownDigest) {
  EXPECT_EQ(sha256_b64url("abc"), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
  EXPECT_EQ(sha256_b64url(""), "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
}

TEST_F(JoseTest, LoadsRfc8037KeyAndDerivesItsPublicKey) {
  DeviceKey key = rfc_key();
  EXPECT_EQ(base64url_encode(key.public_jwk().x), k_rfc_x);
}

TEST_F(JoseTest, PublicJwkPathReplacesTheKeysExtension) {
  EXPECT_EQ(public_jwk_path("/var/lib/reflow-agent/device.key"),
            "/var/lib/reflow-agent/device.jwk");
  EXPECT_EQ(public_jwk_path("keys/device"), "keys/device.jwk");
  EXPECT_EQ(public_jwk_path("a.jwk"), "a.jwk");
}

TEST_F(JoseTest, WritesThePublicJwkWorldReadableWhateverTheUmaskReplacingAStaleOne) {
  const DeviceKey key = rfc_key();
  const auto path = m_dir / "device.jwk";
  std::ofstream(path) << "stale\n";
  const mode_t old_umask = ::umask(0077);
  auto written = write_public_jwk(key.public_jwk(), path);
  ::umask(old_umask);
  ASSERT_TRUE(written.has_value()) << written.error().message;
  EXPECT_EQ(read_file(path), key.public_jwk().to_json() + "\n");
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  EXPECT_FALSE(std::filesystem::exists(m_dir / "device.jwk.tmp"));
}

TEST_F(JoseTest, WritePublicJwkNamesTheFileItCannotWrite) {
  const DeviceKey key = rfc_key();
  const auto path = m_dir / "no-such-dir" / "device.jwk";
  auto written = write_public_jwk(key.public_jwk(), path);
  ASSERT_FALSE(written.has_value());
  EXPECT_NE(written.error().message.find(path.string()), std::string::npos)
      << written.error().message;
}

TEST_F(JoseTest, ThumbprintMatchesRfc8037) {
  auto x = base64url_decode(k_rfc_x);
  ASSERT_TRUE(x.has_value());
  ASSERT_EQ(x->size(), 32u);
  std::array<std::uint8_t, 32> pk{};
  std::memcpy(pk.data(), x->data(), 32);
  EXPECT_EQ(jwk_thumbprint(pk), k_rfc_thumbprint);
  EXPECT_EQ(rfc_key().public_jwk().kid, k_rfc_thumbprint);
}

TEST_F(JoseTest, SignsRfc8037SigningInputToTheRfcSignature) {
  // A.4's header is {"alg":"EdDSA"}; ours carries kid and typ, so sign A.4's input directly.
  EXPECT_EQ(base64url_encode(std::string_view(R"({"alg":"EdDSA"})")), "eyJhbGciOiJFZERTQSJ9");
  EXPECT_EQ(base64url_encode(std::string_view("Example of Ed25519 signing")),
            "RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc");
  DeviceKey key = rfc_key();
  auto signature = key.sign(k_rfc_signing_input);
  EXPECT_EQ(base64url_encode(signature), k_rfc_signature);
  // Cross-check with libsodium directly (RFC 8037 A.5).
  EXPECT_EQ(
      crypto_sign_verify_detached(
          signature.data(), reinterpret_cast<const unsigned char*>(k_rfc_signing_input.data()),
          k_rfc_signing_input.size(), key.public_jwk().x.data()),
      0);
}

TEST_F(JoseTest, PublicJwkPrintsMembersInOrderOnOneLine) {
  DeviceKey key = rfc_key();
  EXPECT_EQ(key.public_jwk().to_json(),
            R"({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",)"
            R"("kid":"kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"})");
}

TEST_F(JoseTest, ParsesThePublicJwkItPrints) {
  DeviceKey key = rfc_key();
  auto jwk = parse_public_jwk(key.public_jwk().to_json());
  ASSERT_TRUE(jwk.has_value()) << jwk.error().message;
  EXPECT_EQ(jwk->x, key.public_jwk().x);
  EXPECT_EQ(jwk->kid, k_rfc_thumbprint);

  auto without_kid = parse_public_jwk(
      R"({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})");
  ASSERT_TRUE(without_kid.has_value()) << without_kid.error().message;
  EXPECT_EQ(without_kid->kid, k_rfc_thumbprint);
}

TEST_F(JoseTest, ParsePublicJwkNamesTheWrongField) {
  const std::string x(k_rfc_x);
  const std::pair<std::string, std::string> cases[] = {
      {"not json", "expected a JSON object"},
      {R"({"kty":"EC","crv":"Ed25519","x":")" + x + "\"}", "kty"},
      {R"({"kty":"OKP","crv":"X25519","x":")" + x + "\"}", "crv"},
      {R"({"kty":"OKP","crv":"Ed25519"})", "x: required"},
      {R"({"kty":"OKP","crv":"Ed25519","x":"AAAA"})", "x: expected 32 bytes"},
      {R"({"kty":"OKP","crv":"Ed25519","x":"not base64!"})", "x: expected unpadded base64url"},
      {R"({"kty":"OKP","crv":"Ed25519","x":")" + x + R"(","kid":"other"})", "kid:"},
      {R"({"kty":"OKP","crv":"Ed25519","x":")" + x + R"(","d":")" + std::string(k_rfc_d) + "\"}",
       "private key"},
  };
  for (const auto& [json, expected] : cases) {
    auto jwk = parse_public_jwk(json);
    ASSERT_FALSE(jwk.has_value()) << json;
    EXPECT_EQ(jwk.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(jwk.error().message.find(expected), std::string::npos) << jwk.error().message;
  }
}

// Issue 14 item 1: a key file given where a public key belongs must not come back in the error;
// eight characters of it in a row would already be a leak worth refusing.
TEST_F(JoseTest, NoErrorQuotesAPrivateKeyPutWhereAPublicOneBelongs) {
  auto key = DeviceKey::generate(m_dir / "k.key");
  ASSERT_TRUE(key.has_value());
  const std::string key_file = read_file(m_dir / "k.key");
  const std::string seed = key_file.substr(0, 43);
  auto leaks = [&](const std::string& message) {
    for (std::size_t i = 0; i + 8 <= seed.size(); ++i)
      if (message.find(seed.substr(i, 8)) != std::string::npos) return true;
    return false;
  };
  for (const std::string& text :
       {key_file, seed, seed + "!", "{" + seed, "\"" + seed + "\"", seed.substr(0, 42) + "=",
        R"({"kty":"OKP","crv":"Ed25519","x":")" + seed + "!\"}",
        R"({"kty":"OKP","crv":"Ed25519","x":")" + seed + "\u0001\"}"}) {
    auto jwk = parse_public_jwk(text);
    ASSERT_FALSE(jwk.has_value());
    EXPECT_FALSE(leaks(jwk.error().message)) << jwk.error().message;
    auto decoded = base64url_decode(text);
    if (!decoded) {
      EXPECT_FALSE(leaks(decoded.error().message)) << decoded.error().message;
    }
    auto parsed = jws_parse(text);
    ASSERT_FALSE(parsed.has_value());
    EXPECT_FALSE(leaks(parsed.error().message)) << parsed.error().message;
  }
  auto jwk = parse_public_jwk(key_file);
  ASSERT_FALSE(jwk.has_value());
  EXPECT_NE(jwk.error().message.find("private key file"), std::string::npos) << jwk.error().message;
}

TEST_F(JoseTest, GenerateWritesSeedLineWithMode0600AndLoadRestoresTheKey) {
  auto path = m_dir / "device.key";
  auto generated = DeviceKey::generate(path);
  ASSERT_TRUE(generated.has_value()) << generated.error().message;

  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string content = read_file(path);
  ASSERT_EQ(content.size(), 44u);
  EXPECT_EQ(content.back(), '\n');
  auto seed = base64url_decode(std::string_view(content).substr(0, 43));
  ASSERT_TRUE(seed.has_value());
  EXPECT_EQ(seed->size(), 32u);

  auto loaded = DeviceKey::load(path);
  ASSERT_TRUE(loaded.has_value()) << loaded.error().message;
  EXPECT_EQ(loaded->public_jwk().x, generated->public_jwk().x);
  EXPECT_EQ(loaded->public_jwk().kid, generated->public_jwk().kid);
  EXPECT_EQ(loaded->sign("m"), generated->sign("m"));
}

TEST_F(JoseTest, GenerateRefusesToOverwriteAnExistingKey) {
  auto path = m_dir / "device.key";
  ASSERT_TRUE(DeviceKey::generate(path).has_value());
  const std::string before = read_file(path);

  auto again = DeviceKey::generate(path);
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code, ErrorCode::io);
  EXPECT_NE(again.error().message.find("already exists"), std::string::npos);
  EXPECT_EQ(read_file(path), before);
}

TEST_F(JoseTest, GenerateMakesDifferentKeys) {
  auto a = DeviceKey::generate(m_dir / "a.key");
  auto b = DeviceKey::generate(m_dir / "b.key");
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_NE(a->public_jwk().kid, b->public_jwk().kid);
}

TEST_F(JoseTest, LoadRefusesKeyFileReadableByOthers) {
  auto path = write_key_file(std::string(k_rfc_d) + "\n", 0644);
  auto key = DeviceKey::load(path);
  ASSERT_FALSE(key.has_value());
  EXPECT_EQ(key.error().code, ErrorCode::crypto);
  EXPECT_NE(key.error().message.find("mode 0644"), std::string::npos) << key.error().message;
  EXPECT_NE(key.error().message.find("chmod 600 " + path.string()), std::string::npos)
      << key.error().message;

  EXPECT_NE(key.error().message.find("is readable by group, readable by others (mode 0644)"),
            std::string::npos)
      << key.error().message;

  // Issue 14 item 14: the mode in words, exactly: 0602 is writable by others, not readable by
  // group.
  ASSERT_EQ(::chmod(path.c_str(), 0602), 0);
  key = DeviceKey::load(path);
  ASSERT_FALSE(key.has_value());
  EXPECT_NE(key.error().message.find("is writable by others (mode 0602)"), std::string::npos)
      << key.error().message;
  ASSERT_EQ(::chmod(path.c_str(), 0620), 0);
  key = DeviceKey::load(path);
  ASSERT_FALSE(key.has_value());
  EXPECT_NE(key.error().message.find("is writable by group (mode 0620)"), std::string::npos)
      << key.error().message;

  ASSERT_EQ(::chmod(path.c_str(), 0640), 0);
  EXPECT_FALSE(DeviceKey::load(path).has_value());
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  EXPECT_TRUE(DeviceKey::load(path).has_value());
}

TEST_F(JoseTest, LoadReportsMissingFileAsIo) {
  auto key = DeviceKey::load(m_dir / "absent.key");
  ASSERT_FALSE(key.has_value());
  EXPECT_EQ(key.error().code, ErrorCode::io);
  EXPECT_NE(key.error().message.find("absent.key"), std::string::npos);
}

TEST_F(JoseTest, LoadRefusesContentThatIsNotASeed) {
  for (std::string_view content : {"", "not a key\n", "AAAA\n", "nWGxne_9WmC6hEr0kuwsxERJxWl7\n"}) {
    auto key = DeviceKey::load(write_key_file(content, 0600));
    ASSERT_FALSE(key.has_value()) << content;
    EXPECT_EQ(key.error().code, ErrorCode::crypto);
    EXPECT_NE(key.error().message.find("does not hold a key"), std::string::npos);
  }
}

TEST_F(JoseTest, MovedKeyStillSigns) {
  DeviceKey key = rfc_key();
  DeviceKey moved(std::move(key));
  EXPECT_EQ(base64url_encode(moved.sign(k_rfc_signing_input)), k_rfc_signature);
  DeviceKey assigned = rfc_key();
  assigned = std::move(moved);
  EXPECT_EQ(base64url_encode(assigned.sign(k_rfc_signing_input)), k_rfc_signature);
}

TEST_F(JoseTest, ProtectedHeaderIsTheProtocolJson) {
  auto header = base64url_decode(jws_protected_header_b64("abc"));
  ASSERT_TRUE(header.has_value());
  EXPECT_EQ(*header, R"({"alg":"EdDSA","kid":"abc","typ":"reflow-event+json"})");
}

TEST_F(JoseTest, SignedEnvelopeParsesAndVerifies) {
  DeviceKey key = rfc_key();
  const std::string header = jws_protected_header_b64(key.public_jwk().kid);
  const std::string payload = R"({"v":1,"note":"grüße"})";
  Jws jws = jws_sign(key, header, payload);
  const std::string env = jws.to_envelope();
  EXPECT_EQ(env, R"({"protected":")" + jws.protected_b64 + R"(","payload":")" + jws.payload_b64 +
                     R"(","signature":")" + jws.signature_b64 + "\"}");

  auto verified = jws_verify(env, key.public_jwk());
  ASSERT_TRUE(verified.has_value()) << verified.error().message;
  EXPECT_EQ(verified->payload, payload);
  EXPECT_EQ(verified->kid, k_rfc_thumbprint);
  EXPECT_EQ(verified->jws.signing_input(), jws.signing_input());

  auto parsed = jws_parse(env);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->payload, payload);
}

TEST_F(JoseTest, TamperedPayloadFailsVerify) {
  DeviceKey key = rfc_key();
  Jws jws = jws_sign(key, jws_protected_header_b64(key.public_jwk().kid), R"({"seq":1})");
  jws.payload_b64 = base64url_encode(std::string_view(R"({"seq":2})"));
  auto verified = jws_verify(jws.to_envelope(), key.public_jwk());
  ASSERT_FALSE(verified.has_value());
  EXPECT_EQ(verified.error().code, ErrorCode::crypto);
  EXPECT_NE(verified.error().message.find("does not verify"), std::string::npos);
}

TEST_F(JoseTest, SignatureByAnotherKeyUnderTheSameKidFailsVerify) {
  DeviceKey key = rfc_key();
  auto other = DeviceKey::generate(m_dir / "other.key");
  ASSERT_TRUE(other.has_value());
  Jws forged = jws_sign(*other, jws_protected_header_b64(key.public_jwk().kid), "{}");
  auto verified = jws_verify(forged.to_envelope(), key.public_jwk());
  ASSERT_FALSE(verified.has_value());
  EXPECT_EQ(verified.error().code, ErrorCode::crypto);
}

TEST_F(JoseTest, VerifyRefusesEnvelopeForAnotherKid) {
  DeviceKey key = rfc_key();
  auto other = DeviceKey::generate(m_dir / "other.key");
  ASSERT_TRUE(other.has_value());
  Jws jws = jws_sign(key, jws_protected_header_b64(key.public_jwk().kid), "{}");
  auto verified = jws_verify(jws.to_envelope(), other->public_jwk());
  ASSERT_FALSE(verified.has_value());
  EXPECT_EQ(verified.error().code, ErrorCode::crypto);
  EXPECT_NE(verified.error().message.find(std::string(k_rfc_thumbprint)), std::string::npos);
}

// A kid of the right shape: 43 base64url characters (an RFC 7638 SHA-256 thumbprint).
const std::string k_kid(k_rfc_thumbprint);

TEST_F(JoseTest, ParseNamesWhatIsWrongWithAnEnvelope) {
  const nlohmann::ordered_json good_header = {
      {"alg", "EdDSA"}, {"kid", k_kid}, {"typ", "reflow-event+json"}};
  const std::string sig = base64url_encode(std::string(64, 'x'));
  const std::pair<std::string, std::string> cases[] = {
      {"[]", "expected a JSON object"},
      {"{not json", "expected a JSON object"},
      {R"({"protected":"eyJ9","payload":"","signature":"","header":{}})", "header: unexpected"},
      {R"({"payload":"","signature":""})", "protected: required"},
      {R"({"protected":1,"payload":"","signature":""})", "protected: expected a base64url string"},
      {R"({"protected":"@@","payload":"","signature":""})", "protected: expected unpadded"},
      {envelope(nlohmann::ordered_json::array({1}), "{}", sig), "header is not a JSON object"},
      {envelope({{"kid", k_kid}, {"typ", "reflow-event+json"}}, "{}", sig), "alg: required"},
      {envelope({{"alg", "none"}, {"kid", k_kid}, {"typ", "reflow-event+json"}}, "{}", sig),
       R"(alg: expected "EdDSA"; got "none")"},
      {envelope({{"alg", "EdDSA"}, {"typ", "reflow-event+json"}}, "{}", sig), "kid: required"},
      {envelope({{"alg", "EdDSA"}, {"kid", 7}, {"typ", "reflow-event+json"}}, "{}", sig),
       "kid: required"},
      {envelope({{"alg", "EdDSA"}, {"kid", "k"}, {"typ", "reflow-event+json"}}, "{}", sig),
       "kid: required, the signing key's RFC 7638 thumbprint"},
      {envelope({{"alg", "EdDSA"}, {"kid", k_kid}}, "{}", sig),
       R"(typ: expected "reflow-event+json"; got nothing)"},
      {envelope({{"alg", "EdDSA"}, {"kid", k_kid}, {"typ", "JWT"}}, "{}", sig),
       R"(typ: expected "reflow-event+json"; got "JWT")"},
      {envelope(good_header, "{}", "AAAA"), "signature: expected 64 bytes"},
      {envelope(good_header, "{}", "a+b/"), "signature: expected unpadded"},
  };
  for (const auto& [env, expected] : cases) {
    auto parsed = jws_parse(env);
    ASSERT_FALSE(parsed.has_value()) << env;
    EXPECT_EQ(parsed.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(parsed.error().message.find(expected), std::string::npos)
        << "want \"" << expected << "\" in: " << parsed.error().message;
  }
  EXPECT_TRUE(jws_parse(envelope(good_header, "{}", sig)).has_value());
}

// RFC 7515 §4.1.11 lets a recipient refuse what it does not use; with `b64:false` (RFC 7797) a
// standard library would verify other bytes than the node did, so every extension is refused.
TEST_F(JoseTest, ParseRefusesEveryHeaderMemberPROTOCOLDoesNotName) {
  const std::string sig = base64url_encode(std::string(64, 'x'));
  for (const auto& [name, value] :
       std::initializer_list<std::pair<std::string, nlohmann::ordered_json>>{
           {"crit", nlohmann::ordered_json::array({"b64"})},
           {"b64", false},
           {"zip", "DEF"},
           {"jku", "https://example.org/keys"},
           {"cty", "json"}}) {
    nlohmann::ordered_json header = {
        {"alg", "EdDSA"}, {"kid", k_kid}, {"typ", "reflow-event+json"}};
    header[name] = value;
    auto parsed = jws_parse(envelope(header, "{}", sig));
    ASSERT_FALSE(parsed.has_value()) << name;
    EXPECT_NE(parsed.error().message.find("\"" + name + "\": header member not allowed"),
              std::string::npos)
        << parsed.error().message;
  }
}

// One reading of every document (RFC 7493 §2.3): a repeated name in the header or the
// envelope is refused, not resolved one way here and another way elsewhere.
TEST_F(JoseTest, ParseRefusesRepeatedMemberNames) {
  const std::string sig = base64url_encode(std::string(64, 'x'));
  const std::string header_text =
      R"({"alg":"EdDSA","kid":")" + k_kid + R"(","typ":"reflow-event+json","alg":"none"})";
  const std::string repeated_header = nlohmann::ordered_json{
      {"protected", base64url_encode(header_text)},
      {"payload", base64url_encode("{}")},
      {"signature", sig}}.dump();
  auto parsed = jws_parse(repeated_header);
  ASSERT_FALSE(parsed.has_value());
  EXPECT_NE(parsed.error().message.find("member \"alg\" appears twice"), std::string::npos)
      << parsed.error().message;

  const nlohmann::ordered_json header = {
      {"alg", "EdDSA"}, {"kid", k_kid}, {"typ", "reflow-event+json"}};
  std::string doubled = envelope(header, "{}", sig);
  doubled.insert(doubled.size() - 1, R"(,"payload":"e30")");
  parsed = jws_parse(doubled);
  ASSERT_FALSE(parsed.has_value());
  EXPECT_NE(parsed.error().message.find("member \"payload\" appears twice"), std::string::npos)
      << parsed.error().message;
}

TEST_F(JoseTest, ParseRefusesEnvelopeOver64KiB) {
  const nlohmann::ordered_json header = {
      {"alg", "EdDSA"}, {"kid", k_kid}, {"typ", "reflow-event+json"}};
  const std::string sig = base64url_encode(std::string(64, 'x'));
  const std::string fits = envelope(header, std::string(40'000, 'a'), sig);
  ASSERT_LE(fits.size(), 64u * 1024);
  EXPECT_TRUE(jws_parse(fits).has_value());

  const std::string big = envelope(header, std::string(50'000, 'a'), sig);
  ASSERT_GT(big.size(), 64u * 1024);
  auto parsed = jws_parse(big);
  ASSERT_FALSE(parsed.has_value());
  EXPECT_NE(parsed.error().message.find("at most 65536"), std::string::npos);
}

}  // namespace
}  // namespace agent
