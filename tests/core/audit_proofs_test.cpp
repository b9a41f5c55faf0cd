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

}  // namespace
