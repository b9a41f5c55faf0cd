// SPDX-License-Identifier: AGPL-3.0-or-later
// The node-signed members list (issue 17): the node signs a site's members file with its key
// (`reflow-ingest members publish`) and the agent, which pins that key ([mqtt] node_jwk), checks
// it, keeps the last valid one on disk and uses it offline.
//
// The list is a flattened JWS (RFC 7515 §7.2.2), signed as the node signs its acks (PROTOCOL
// §5.1): protected header exactly {"alg":"EdDSA","kid":KID,"typ":"reflow-members+json"}, payload
// {"site":SITE,"version":N,"issued":RFC3339,"members":TOML} where TOML is the text of a members
// file (members.hpp Members::parse) and N ≥ 1.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <reflow/core/jose.hpp>
#include <reflow/core/result.hpp>
#include <reflow/drivers/members.hpp>

namespace agent {

/// A members list whose signature and form were checked.
struct SignedMembersList {
  std::string site;
  std::uint64_t version = 0;
  std::int64_t issued_unix_ms = 0;
  Members members;
  std::string envelope;  ///< the JWS as received, kept on disk as it is
};

/// Checks `envelope` against the pinned node key `node`, for site `site`: the header and the
/// Ed25519 signature (jose.hpp jws_verify, typ k_members_typ), the payload's members, its site
/// and the members TOML (Members::parse). Errors, each naming what is wrong and never echoing
/// the list: invalid_argument (not a JWS, payload not the object above), crypto (signed by
/// another key or altered: "tampered"), rejected (another site's list), invalid_config (the
/// members TOML does not load).
Result<SignedMembersList> verify_members_list(std::string_view envelope, const PublicJwk& node,
                                              std::string_view site);

/// Whether `next` replaces `current`: its version is higher, or the same with a later `issued`.
/// A list that is neither (older, or a replay) is refused so that a stale retained message or an
/// attacker replaying an old signed list cannot undo an update.
bool is_newer(const SignedMembersList& next, const SignedMembersList& current);

/// Writes `list.envelope` to `file` atomically (FILE.tmp with mode 0600, fsync, rename, fsync
/// the directory): a crash leaves the old list or the new one. Errors: io, no_space.
Status save_members_list(const std::filesystem::path& file, const SignedMembersList& list);

/// Reads `file` and verifies it again (verify_members_list): the list an agent starts with when
/// the node cannot be reached. nullopt when there is no file. Errors: io, and those of
/// verify_members_list (a file changed on disk is refused like a tampered message).
Result<std::optional<SignedMembersList>> load_members_list(const std::filesystem::path& file,
                                                           const PublicJwk& node,
                                                           std::string_view site);

/// What accept_members_list did.
enum class MembersListOutcome { accepted, unchanged };

/// The agent's step for one received list: verifies `envelope`, refuses it unless it is newer
/// than the one saved in `file` (when there is one), and saves it. On any error the saved list
/// stays as it was. Returns `unchanged` for the same envelope again (a retained message
/// redelivered on reconnect). Errors: those of verify_members_list and save_members_list;
/// rejected with "not newer than version N issued T" for an older list or a replay.
Result<MembersListOutcome> accept_members_list(std::string_view envelope,
                                               const std::filesystem::path& file,
                                               const PublicJwk& node, std::string_view site);

}  // namespace agent
