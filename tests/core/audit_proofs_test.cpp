// SPDX-License-Identifier: AGPL-3.0-or-later
// The audit codec (reflow/core/audit_proofs.hpp, PROTOCOL §5.2): round trips, and the answers a
// hostile publisher could send that must be refused rather than read as something else.
#include <cstdint>
#include <string>

#include <gtest/gtest.h>

#include <reflow/core/audit_proofs.hpp>

namespace {

using agent::audit::parse_answer;
using agent::audit::parse_request;

const std::string k_hash = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

std::string answer_with_proof_seq(const std::string& seq) {
  return R"({"id":"a1","tree_size":5,"proofs":[{"seq":)" + seq + R"(,"leaf_index":0,"leaf":")" +
         k_hash + R"(","inclusion":[]}],"missing":[]})";
}

TEST(AuditProofsTest, RequestAndAnswerReadBackFromTheirEncoding) {
  agent::audit::ProofRequest request;
  request.id = "audit-1";
  request.stream = "01KDX3G000STREAMSTREAM0000";
  request.seqs = {1, 2, 9};
  request.tree_size = 12;
  request.from_size = 4;
  auto parsed = parse_request(agent::audit::encode(request));
  ASSERT_TRUE(parsed.has_value()) << parsed.error().message;
  EXPECT_EQ(parsed->seqs, request.seqs);
  EXPECT_EQ(parsed->tree_size, 12u);
  EXPECT_EQ(parsed->from_size, 4u);

  auto answer = parse_answer(answer_with_proof_seq("3"));
  ASSERT_TRUE(answer.has_value()) << answer.error().message;
  ASSERT_EQ(answer->proofs.size(), 1u);
  EXPECT_EQ(answer->proofs[0].seq, 3);
  auto again = parse_answer(agent::audit::encode(*answer));
  ASSERT_TRUE(again.has_value()) << again.error().message;
  EXPECT_EQ(again->proofs[0].seq, 3);
}

// Seq 0 (no event has it) used to be read as a proof; seqs beyond 2^53 - 1 are refused by the
// strict JSON reader (RFC 7493 §2.2) before the codec sees them.
TEST(AuditProofsTest, AnswerRefusesAProofSeqOfZeroOrBeyondTheSeqRange) {
  for (const char* seq : {"0", "9007199254740992", "18446744073709551615"}) {
    auto answer = parse_answer(answer_with_proof_seq(seq));
    ASSERT_FALSE(answer.has_value()) << seq;
    EXPECT_NE(answer.error().message.find("seq"), std::string::npos) << answer.error().message;
  }
}

// consistency_from 0 means "no proof asked", so a proof beside it has no meaning: it is refused
// instead of being read and then dropped by encode().
TEST(AuditProofsTest, AnswerRefusesAConsistencyProofFromSizeZero) {
  auto answer = parse_answer(R"({"id":"a1","tree_size":5,"consistency_from":0,"consistency":[")" +
                             k_hash + R"("],"proofs":[],"missing":[]})");
  ASSERT_FALSE(answer.has_value());
  EXPECT_NE(answer.error().message.find("consistency_from"), std::string::npos)
      << answer.error().message;
}

// A node that cannot prove some leaves or the consistency says so per leaf (PROTOCOL §5.2); the
// auditor reads each back.
TEST(AuditProofsTest, PerLeafErrorsAndAConsistencyErrorReadBackFromTheirEncoding) {
  agent::audit::ProofAnswer answer;
  answer.id = "a1";
  answer.tree_size = 7;
  answer.consistency_from = 3;
  answer.consistency_error = "the log has no hash for subtree (1, 0)";
  answer.missing = {4};
  answer.unproven = {{2, "the log has no hash for subtree (0, 0)"}, {5, "no tree of 7"}};
  auto parsed = parse_answer(agent::audit::encode(answer));
  ASSERT_TRUE(parsed.has_value()) << parsed.error().message;
  EXPECT_EQ(parsed->consistency_from, 3u);
  EXPECT_EQ(parsed->consistency_error, answer.consistency_error);
  EXPECT_TRUE(parsed->consistency.empty());
  EXPECT_EQ(parsed->missing, answer.missing);
  ASSERT_EQ(parsed->unproven.size(), 2u);
  EXPECT_EQ(parsed->unproven[1].seq, 5);
  EXPECT_EQ(parsed->unproven[1].error, "no tree of 7");

  // An answer of a node before per-leaf errors has neither member.
  auto old = parse_answer(answer_with_proof_seq("3"));
  ASSERT_TRUE(old.has_value()) << old.error().message;
  EXPECT_TRUE(old->unproven.empty());
  EXPECT_FALSE(old->consistency_error.has_value());
}

TEST(AuditProofsTest, AnswerRefusesMalformedPerLeafErrors) {
  const std::string head = R"({"id":"a1","tree_size":5,"proofs":[],"missing":[],)";
  for (const std::string tail :
       {R"("unproven":[{"seq":0,"error":"x"}]})", R"("unproven":[{"seq":2}]})",
        R"("unproven":[{"seq":2,"error":7}]})", R"("unproven":{"seq":2,"error":"x"}})",
        R"("consistency_from":2,"consistency":[],"consistency_error":"x"})",
        R"("consistency_from":2})", R"("consistency_from":2,"consistency_error":1})"}) {
    auto answer = parse_answer(head + tail);
    EXPECT_FALSE(answer.has_value()) << tail;
  }
  // A long error text is cut, not refused.
  auto long_error =
      parse_answer(head + R"("unproven":[{"seq":2,"error":")" + std::string(2000, 'e') + R"("}]})");
  ASSERT_TRUE(long_error.has_value()) << long_error.error().message;
  EXPECT_LE(long_error->unproven[0].error.size(), agent::audit::k_max_error_chars + 3);
}

}  // namespace
