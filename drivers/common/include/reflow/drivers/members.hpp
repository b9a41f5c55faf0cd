// SPDX-License-Identifier: AGPL-3.0-or-later
// Members and their badges (issue 17): the site secret, the keyed hash of a card id, the members
// file. A raw card id is read by a badge reader, hashed here at once and never kept, logged,
// shown or sent: everything after badge_hash() sees only the keyed hash.
//
// Here in drivers/common, not agent/device: only drivers that read badges (and the `members`
// command of reflow-agent, which links the drivers) need it; the device's data path does not.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/result.hpp>

namespace agent {

/// The site secret: 32 random bytes (crypto_generichash_KEYBYTES) that key every badge hash of
/// this agent, so that a hash can neither be reversed by trying every card id nor be matched
/// against another site's. Never logged or shown.
struct SiteSecret {
  std::array<std::uint8_t, 32> key{};
};

/// The site secret file in the agent's data directory: `<data_dir>/site-secret`.
std::filesystem::path site_secret_path(const std::filesystem::path& data_dir);

/// Reads the site secret from `file`, or, when the file does not exist, makes a new one with
/// libsodium's randombytes_buf and writes it with mode 0600 (O_EXCL: an existing secret is never
/// overwritten; two agents starting at once both end up with the first one's). The file holds
/// exactly the 32 raw bytes. Errors: io (unreadable, not writable), corruption (not 32 bytes, or
/// readable by group or others: the message says to `chmod 600` it).
Result<SiteSecret> load_or_create_site_secret(const std::filesystem::path& file);

/// The keyed hash of a card id: BLAKE2b (RFC 7693) with a 32-byte output, keyed with the site
/// secret (libsodium crypto_generichash), over the card id as lowercase hex of its bytes, written
/// in base64url without padding (RFC 4648 §5, libsodium sodium_bin2base64 with
/// sodium_base64_VARIANT_URLSAFE_NO_PADDING): 43 characters. `card_hex` is the card's id in hex
/// (either case; an EM4100 card's 5 bytes are 10 hex digits); it is lowercased before hashing so
/// that every reader of one card gives one hash.
std::string badge_hash(const SiteSecret& secret, std::string_view card_hex);

/// Whether `text` has the shape of a badge_hash() result (43 base64url characters).
bool is_badge_hash(std::string_view text);

/// One `[[member]]` of the members file.
struct Member {
  std::string handle;               ///< a short local name, unique in the file ("ada")
  std::string agent;                ///< the member's ValueFlows agent reference (a zenflows id …)
  std::vector<std::string> badges;  ///< keyed hashes (badge_hash) of the member's cards
  std::vector<std::string> machines;  ///< driver names the member is authorised on
  std::uint32_t line = 0;             ///< where the table starts, for messages
};

/// The members file (TOML):
///
///     [[member]]
///     handle = "ada"
///     agent = "person:ada"            # a ValueFlows agent reference
///     badges = ["kX3…"]               # keyed hashes, from `reflow-agent members add`
///     machines = ["laser", "mk4"]     # optional: driver names the member may use
///
/// Loaded whole; immutable afterwards (thread-safe to read).
class Members {
 public:
  /// Reads and checks `file`: every key known, handle and agent non-empty, handles and badges
  /// unique in the file, each badge a keyed hash. Errors: invalid_config naming the file, the line
  /// and the key (`members.toml:7: member[1].badges[0]: expected a keyed badge hash …`); a missing
  /// file is invalid_config too.
  static Result<Members> load(const std::filesystem::path& file);

  /// Same, from text; `file_name` is used in messages.
  static Result<Members> parse(std::string_view text, const std::string& file_name);

  /// The member owning the badge with this keyed hash, or null.
  const Member* by_badge(std::string_view hash) const;

  /// The member with this handle, or null.
  const Member* by_handle(std::string_view handle) const;

  const std::vector<Member>& all() const { return m_members; }

 private:
  std::vector<Member> m_members;
};

/// Adds a `[[member]]` table to the members file `file` (created when absent) or, when `handle`
/// exists with the same agent, adds `badge` to its badges (and `machine`, if given and new, to
/// its machines). The existing text, comments included, is kept: the new table or the changed
/// `badges`/`machines` line is written in place and the file replaced atomically (write, fsync,
/// rename). The result is loaded again before it replaces the file. Errors: invalid_config (the
/// file does not load, `handle` exists with another agent, the badge belongs to another member),
/// invalid_argument (not a keyed hash), io.
Status add_member_badge(const std::filesystem::path& file, std::string_view handle,
                        std::string_view agent_ref, std::string_view badge,
                        std::optional<std::string_view> machine);

/// The last unknown card seen by a driver: its keyed hash and when (RFC 3339), kept as
/// `last-unknown.json` in the driver's state directory for `reflow-agent members add
/// --last-unknown`.
struct UnknownBadge {
  std::string hash;
  std::string seen_at;
};

/// Saves `badge` as `<state_dir>/last-unknown.json` (atomically). Errors: io, no_space.
Status save_last_unknown(const std::filesystem::path& state_dir, const UnknownBadge& badge);

/// Reads `<state_dir>/last-unknown.json`; nullopt when there is none. Errors: io, corruption.
Result<std::optional<UnknownBadge>> load_last_unknown(const std::filesystem::path& state_dir);

}  // namespace agent
