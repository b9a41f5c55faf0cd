// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/signed_note.hpp>

#include <sys/stat.h>

#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <sodium.h>

#include "temp_dir.hpp"

namespace agent::note {
namespace {

// The known answer was computed independently with python3-cryptography (Ed25519) and hashlib,
// from c2sp.org/signed-note and c2sp.org/tlog-checkpoint:
//   seed = bytes(range(32)); origin = "example.org/reflow-test"; size 5;
//   root = SHA-256(b"reflow"); text = f"{origin}\n5\n{b64(root)}\n";
//   key ID = SHA-256(origin || 0x0A || 0x01 || public key)[:4];
//   note = text + "\n" + "— " + origin + " " + b64(key ID || Ed25519(text)) + "\n".
constexpr std::string_view k_seed_b64url = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
constexpr std::string_view k_origin = "example.org/reflow-test";
constexpr std::string_view k_note =
    "example.org/reflow-test\n5\nX95X25u6AITdAutkZGTYEEX0dDtJH7hwNyAD054K9EY=\n\n"
    "\xE2\x80\x94 example.org/reflow-test "
    "VEIWbxhxmWRFXkEtqR76BJG09c1h/PaeNECUd0hfxO/"
    "RVz9F4UzcVX1XESTzTil2Isw+B+yappgeLjf8UPpN4yaXEQo=\n";
constexpr std::string_view k_verifier_key =
    "example.org/reflow-test+5442166f+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4";

class SignedNoteTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_GE(sodium_init(), 0); }

  DeviceKey fixed_key() {
    const auto path = m_dir / "node.key";
    std::ofstream(path) << k_seed_b64url << "\n";
    EXPECT_EQ(::chmod(path.c_str(), 0600), 0);
    auto key = DeviceKey::load(path);
    EXPECT_TRUE(key.has_value()) << key.error().message;
    return std::move(*key);
  }

  static Checkpoint fixed_checkpoint() {
    Checkpoint checkpoint{std::string(k_origin), 5, {}};
    crypto_hash_sha256(checkpoint.root.data(), reinterpret_cast<const unsigned char*>("reflow"), 6);
    return checkpoint;
  }

  reflow_test::TempDir m_dir;
};

TEST_F(SignedNoteTest, SignsACheckpointAsTheIndependentVectorSays) {
  const DeviceKey key = fixed_key();
  EXPECT_EQ(sign_checkpoint(key, fixed_checkpoint()), k_note);
  EXPECT_EQ(verifier_key(k_origin, key.public_jwk().x), k_verifier_key);
  const auto id = key_id(k_origin, key.public_jwk().x);
  EXPECT_EQ(id, (std::array<std::uint8_t, 4>{0x54, 0x42, 0x16, 0x6f}));
}

TEST_F(SignedNoteTest, VerifiesTheKnownNoteAndReadsItsCheckpoint) {
  const DeviceKey key = fixed_key();
  auto checkpoint = verify_checkpoint(k_note, k_origin, key.public_jwk());
  ASSERT_TRUE(checkpoint.has_value()) << checkpoint.error().message;
  EXPECT_EQ(checkpoint->origin, k_origin);
  EXPECT_EQ(checkpoint->size, 5u);
  EXPECT_EQ(checkpoint->root, fixed_checkpoint().root);
}

TEST_F(SignedNoteTest, RefusesAChangedSizeOrRoot) {
  const DeviceKey key = fixed_key();
  std::string changed(k_note);
  changed[changed.find("\n5\n") + 1] = '6';
  auto result = verify_checkpoint(changed, k_origin, key.public_jwk());
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, ErrorCode::crypto);

  changed = std::string(k_note);
  changed[changed.find("X95X")] = 'Y';
  EXPECT_FALSE(verify_checkpoint(changed, k_origin, key.public_jwk()).has_value());
}

TEST_F(SignedNoteTest, RefusesANoteWithoutTheKeysSignature) {
  const DeviceKey key = fixed_key();
  auto other = DeviceKey::generate(m_dir / "other.key");
  ASSERT_TRUE(other.has_value()) << other.error().message;
  // Signed by another key under the same name: its key ID differs, so it is not this key's.
  const std::string forged = sign_checkpoint(*other, fixed_checkpoint());
  auto result = verify_checkpoint(forged, k_origin, key.public_jwk());
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, ErrorCode::crypto);
  EXPECT_NE(result.error().message.find("no signature"), std::string::npos);
  // A signature of the right key under another name is not it either.
  EXPECT_FALSE(verify_checkpoint(k_note, "example.org/other", key.public_jwk()).has_value());
}

TEST_F(SignedNoteTest, IgnoresSignaturesOfOtherKeys) {
  const DeviceKey key = fixed_key();
  auto other = DeviceKey::generate(m_dir / "other.key");
  ASSERT_TRUE(other.has_value());
  // A witness's cosignature line after the log's own (c2sp.org/signed-note: ignored).
  const std::string cosigned =
      std::string(k_note) +
      std::string(sign(*other, "witness.example/w1", checkpoint_text(fixed_checkpoint())))
          .substr(checkpoint_text(fixed_checkpoint()).size() + 1);
  auto checkpoint = verify_checkpoint(cosigned, k_origin, key.public_jwk());
  ASSERT_TRUE(checkpoint.has_value()) << checkpoint.error().message;
  EXPECT_EQ(checkpoint->size, 5u);
}

TEST_F(SignedNoteTest, RefusesMalformedNotes) {
  const DeviceKey key = fixed_key();
  for (std::string_view note :
       {std::string_view(""), std::string_view("example.org/reflow-test\n5\n"),
        std::string_view("no newline at the end"),
        std::string_view("a\n\n- example.org/reflow-test AAAA\n")}) {
    auto result = verify_checkpoint(note, k_origin, key.public_jwk());
    EXPECT_FALSE(result.has_value()) << note;
  }
}

TEST_F(SignedNoteTest, KeyNamesHaveNoSpacesNorPlus) {
  EXPECT_TRUE(is_valid_key_name("example.org/reflow-test"));
  EXPECT_FALSE(is_valid_key_name(""));
  EXPECT_FALSE(is_valid_key_name("a b"));
  EXPECT_FALSE(is_valid_key_name("a+b"));
  EXPECT_FALSE(is_valid_key_name("a\nb"));
}

TEST_F(SignedNoteTest, Base64IsTheStandardPaddedAlphabet) {
  const std::array<std::uint8_t, 2> bytes{0xFB, 0xFF};
  EXPECT_EQ(base64_encode(bytes), "+/8=");
  auto decoded = base64_decode("+/8=");
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(*decoded, "\xFB\xFF");
  EXPECT_FALSE(base64_decode("-_8").has_value());
}

}  // namespace
}  // namespace agent::note
