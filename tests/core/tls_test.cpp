// SPDX-License-Identifier: AGPL-3.0-or-later
// The X.509 basics of agent/core: key files, CSRs. The node's CA, which issues certificates
// with them, is tested in tests/node/ca_test.cpp.
#include <reflow/core/tls.hpp>

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "csr.hpp"
#include "files.hpp"
#include "temp_dir.hpp"

namespace {

using agent::ErrorCode;

using reflow_test::file_mode;
using reflow_test::read_text;
using reflow_test::write_text;

class TlsTest : public ::testing::Test {
 protected:
  std::string csr_for(const std::string& key_name, const std::string& cn) {
    return reflow_test::make_csr(m_dir / key_name, cn);
  }

  reflow_test::TempDir m_dir;
};

TEST_F(TlsTest, CreatesKeyWithMode0600AndReusesIt) {
  const auto path = m_dir / "tls.key";
  auto first = agent::tls::load_or_create_key(path);
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_TRUE(first->created);
  EXPECT_EQ(file_mode(path), 0600u);
  EXPECT_NE(read_text(path).find("BEGIN EC PRIVATE KEY"), std::string::npos);
  EXPECT_EQ(first->public_key_sha256.size(), 64u);

  const std::string content = read_text(path);
  auto second = agent::tls::load_or_create_key(path);
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_FALSE(second->created);
  EXPECT_EQ(second->public_key_sha256, first->public_key_sha256);
  EXPECT_EQ(read_text(path), content);
}

TEST_F(TlsTest, RefusesKeyFileThatIsNotAnEcKeyAndLeavesItAlone) {
  const auto path = m_dir / "tls.key";
  write_text(path, "not a key\n");
  auto key = agent::tls::load_or_create_key(path);
  ASSERT_FALSE(key);
  EXPECT_EQ(key.error().code, ErrorCode::crypto);
  EXPECT_NE(key.error().message.find(path.string()), std::string::npos);
  EXPECT_EQ(read_text(path), "not a key\n");
}

TEST_F(TlsTest, CsrRoundTripsCommonNameAndPublicKey) {
  const std::string csr = csr_for("tls.key", "press-01");
  EXPECT_NE(csr.find("BEGIN CERTIFICATE REQUEST"), std::string::npos);
  auto info = agent::tls::parse_csr(csr);
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->common_name, "press-01");
  EXPECT_EQ(info->subject, "CN=press-01");
  EXPECT_EQ(info->public_key_sha256,
            agent::tls::load_or_create_key(m_dir / "tls.key")->public_key_sha256);
}

TEST_F(TlsTest, RefusesCsrWhoseSignatureDoesNotVerify) {
  const std::string csr = reflow_test::with_broken_signature(csr_for("tls.key", "press-01"));
  auto info = agent::tls::parse_csr(csr);
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code, ErrorCode::crypto);
  EXPECT_NE(info.error().message.find("does not verify"), std::string::npos)
      << info.error().message;
}

}  // namespace
