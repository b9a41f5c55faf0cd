// SPDX-License-Identifier: AGPL-3.0-or-later
// Badge readers at machines and "badge then use" attribution (issue 17). A driver that watches a
// machine takes an optional `badge` sub-table:
//
//     [[driver]]
//     kind = "mcu"
//     name = "laser"
//     …
//     [driver.badge]
//     source = "mcu"        # "mcu" (the board's reader), "serial" (an RDM6300 module) or
//                           # "evdev" (a USB reader in keyboard mode: types the card, then Enter)
//     device = "/dev/serial/by-id/…"   # serial and evdev only
//     window = "2m"         # a session starting this long after a known badge is the member's
//
// The raw card id goes from the reader straight into BadgeAttribution::on_card, which hashes it
// (members.hpp badge_hash) and forgets it: only the keyed hash is logged, counted or stored.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/result.hpp>
#include <reflow/device/config.hpp>
#include <reflow/device/driver_table.hpp>
#include <reflow/drivers/evdev_source.hpp>
#include <reflow/drivers/key_decoder.hpp>
#include <reflow/drivers/members.hpp>

namespace agent {

/// The decoder of an EM4100 125 kHz reader's serial frames (RDM6300 and compatible modules,
/// 9600 8N1): STX (0x02), 10 ASCII hex digits of data (the card's 5 bytes, version/customer
/// byte first), 2 ASCII hex digits of checksum (the XOR of the 5 data bytes), ETX (0x03); 14
/// bytes in all (RDM6300 datasheet, "Output data structure"). Anything else — noise, a torn or
/// corrupted frame, a bad checksum — is counted as one bad frame and skipped, and decoding
/// resynchronises at the next STX. Not thread-safe; one reader owns an instance.
class Em4100Decoder {
 public:
  /// Feeds one byte; returns the card id (10 hex digits, as the reader sent them) when it
  /// completes a valid frame.
  std::optional<std::string> feed(std::uint8_t byte);

  std::uint64_t frames() const { return m_frames; }          ///< valid frames decoded
  std::uint64_t bad_frames() const { return m_bad_frames; }  ///< frames or noise skipped

 private:
  void bad();
  std::string m_buffer;  // the bytes after STX
  bool m_in_frame = false;
  bool m_in_noise = false;  // counting a run of noise once
  std::uint64_t m_frames = 0;
  std::uint64_t m_bad_frames = 0;
};

/// The validated `badge` sub-table of a driver.
struct BadgeConfig {
  enum class Source { mcu, serial, evdev };
  Source source = Source::mcu;
  std::string device;  ///< the serial or input device; empty for mcu
  std::chrono::milliseconds window{std::chrono::minutes(2)};
  std::filesystem::path members_file;  ///< from [members] file
  std::string provider;                ///< from [members] provider
  std::filesystem::path secret_file;   ///< <data_dir>/site-secret
};

/// The description of the `badge` key for a kind's keys() (a sub-table; see badge_keys()).
DriverKeyInfo badge_key_info();

/// The keys of the `badge` sub-table, for documentation.
const std::vector<DriverKeyInfo>& badge_keys();

/// Reads `[driver.badge]` of `config` when present (nullopt when absent). `sources` are the
/// sources this driver kind supports ("mcu" only where the driver owns the board). Needs
/// [members] file and provider in the agent config. Errors: invalid_config naming the file, the
/// line and `driver.NAME.badge.KEY`.
Result<std::optional<BadgeConfig>> parse_badge_config(const DriverConfig& config,
                                                      const std::vector<std::string_view>& sources);

/// Who a session belongs to: the member's agent (`receiver` of `use`) and the makerspace
/// (`provider`).
struct Attribution {
  std::string handle;
  std::string receiver;  ///< the member's agent reference
  std::string provider;  ///< the makerspace's agent reference
};

/// Adds the attribution to an event a driver built: `use` gets provider = the makerspace and
/// receiver = the member; `consume` gets receiver = the member only (zenflows requires a
/// consume's provider to be its receiver and the custodian of what is consumed, so the provider
/// is left to the node's export; the node's reports key consume on `receiver`).
void attribute(nlohmann::ordered_json& event, const Attribution& who);

/// The event of an unknown card seen at a machine, so that the node can list it for enrolment
/// (`reflow-ingest members`; PROTOCOL §4.1): a `cite` of the machine —
/// {"action":"cite", "resourceInventoriedAs": machine, "resourceQuantity": 1 one,
/// "hasPointInTime": at, "inputOf": process, "note":"unknown badge", "meta": {"badge":"unknown",
/// "badge_hash": hash}}. `hash` is the keyed hash (badge_hash), never the raw id; `process` names
/// the sighting ("mcu:laser:boot-3-badge-800000"), as zenflows wants a cite's process
/// (valueflows.md §2c). The node's usage report counts no use or material for it.
nlohmann::ordered_json unknown_badge_event(std::string_view machine, std::string_view hash,
                                           std::int64_t at_unix_ms, std::string_view process);

/// "Badge then use" for one machine: remembers the recent known badges (kept in the driver's state
/// directory as `badges.json`, so a badge just before an agent restart attributes the session
/// after it), says whose a session is, counts what it sees and keeps the last unknown card there.
/// Loads the site secret and the members file at open(). Thread-safe (a reader thread feeds cards,
/// the driver's thread asks about sessions, the control socket reads status()).
class BadgeAttribution {
 public:
  /// Loads the secret (creating it at first start) and the members file. Errors: those of
  /// load_or_create_site_secret and Members::load.
  static Result<std::unique_ptr<BadgeAttribution>> open(const BadgeConfig& config,
                                                        std::string machine,
                                                        std::filesystem::path state_dir,
                                                        Logger& log, std::string component);

  /// A card was read at `at_ms`, on the clock the driver gives sessions in (Unix ms; the mcu
  /// driver uses the board's own ms within one boot, which a drifting board clock cannot put
  /// out of order), and at `seen_unix_ms` for the log and the last unknown card. `card_hex` is
  /// the raw id in hex: hashed here and dropped. A known card becomes the machine's current
  /// badge; an unknown one is logged (hash only), counted and saved as the last unknown card.
  /// Returns the keyed hash of an unknown card (for a driver that records it as an event with
  /// unknown_badge_event), nullopt for a member's.
  std::optional<std::string> on_card(std::string_view card_hex, std::int64_t at_ms,
                                     std::int64_t seen_unix_ms);
  std::optional<std::string> on_card(std::string_view card_hex, std::int64_t at_unix_ms) {
    return on_card(card_hex, at_unix_ms, at_unix_ms);
  }

  /// The member of a session that began at `begin_ms` (the clock of on_card's `at_ms`): the
  /// latest known badge at or before it and no more than the window before it. Deterministic for
  /// the same history (a resent session gets the same answer). nullopt: no member.
  std::optional<Attribution> for_session(std::int64_t begin_ms) const;

  /// Handover: the known badges strictly inside (begin_ms, end_ms), in time order, each of a
  /// member other than the one before it (`first`: the session's member from for_session, or
  /// none). Each starts that member's part of the session.
  std::vector<std::pair<std::int64_t, Attribution>> handovers(
      std::int64_t begin_ms, std::int64_t end_ms, const std::optional<Attribution>& first) const;

  /// Forgets the badges seen (the board reset: its clock starts again).
  void forget_badges();

  /// Counts a session that had no member (for status).
  void count_unbadged_session();

  /// "badges 3 (known 2, unknown 1), sessions without badge 1, last member ada".
  std::string status() const;

  std::uint64_t known_badges() const;
  std::uint64_t unknown_badges() const;
  std::uint64_t unbadged_sessions() const;

 private:
  BadgeAttribution(const BadgeConfig& config, SiteSecret secret, Members members,
                   std::string machine, std::filesystem::path state_dir, Logger& log,
                   std::string component);

  struct Seen {
    std::int64_t at_ms = 0;
    const Member* member = nullptr;
  };
  static constexpr std::size_t k_history = 32;
  static constexpr const char* k_badges_file = "badges.json";

  void load_history();
  void save_history() const;

  const BadgeConfig m_config;
  const SiteSecret m_secret;
  const Members m_members;
  const std::string m_machine;
  const std::filesystem::path m_state_dir;
  Logger& m_log;
  const std::string m_component;

  mutable std::mutex m_mutex;
  std::deque<Seen> m_history;  // known badges, oldest first
  std::uint64_t m_known = 0;
  std::uint64_t m_unknown = 0;
  std::uint64_t m_unbadged = 0;
  std::string m_last_member;
};

/// A badge reader beside the machine, feeding a BadgeAttribution from its own thread (the board's
/// reader of source "mcu" is the mcu driver's and has none). Thread-safe status().
class BadgeReader {
 public:
  virtual ~BadgeReader() = default;
  /// Starts the reader's thread. Idempotent.
  virtual void start() = 0;
  /// Stops and joins. Idempotent.
  virtual void stop() = 0;
  /// "reader open, frames 3, bad frames 1" / "reader waiting for /dev/…".
  virtual std::string status() const = 0;
  /// Frames or typed codes that were not a card (for the driver's `malformed` count).
  virtual std::uint64_t bad_frames() const = 0;
};

/// The reader of `config` ("serial": SerialBadgeReader, "evdev": EvdevBadgeReader on libevdev);
/// nullptr for "mcu". Opens nothing until start().
std::unique_ptr<BadgeReader> make_badge_reader(const BadgeConfig& config, BadgeAttribution& badges,
                                               Env& env, Logger& log, std::string component);

/// An RDM6300/EM4100 reader on a serial port (9600 8N1) feeding a BadgeAttribution: one thread
/// opens the device (again after it went away, every 5 s of Env time), decodes frames with
/// Em4100Decoder and passes each card, stamped with the Env clock, to on_card. A reader repeats a
/// frame while a card is held: a card read again within 2 s is one badge.
class SerialBadgeReader final : public BadgeReader {
 public:
  SerialBadgeReader(std::string device, BadgeAttribution& badges, Env& env, Logger& log,
                    std::string component);
  ~SerialBadgeReader() override;
  SerialBadgeReader(const SerialBadgeReader&) = delete;
  SerialBadgeReader& operator=(const SerialBadgeReader&) = delete;

  void start() override;
  void stop() override;
  std::string status() const override;
  std::uint64_t bad_frames() const override;

 private:
  void run(std::stop_token stop);

  const std::string m_device;
  BadgeAttribution& m_badges;
  Env& m_env;
  Logger& m_log;
  const std::string m_component;
  mutable std::mutex m_mutex;
  std::string m_state = "reader starting";
  std::uint64_t m_frames = 0;
  std::uint64_t m_bad_frames = 0;
  std::jthread m_thread;  // last: joined before the members it uses go
};

/// The longest card number a keyboard-mode reader may type (characters): 125 kHz readers type
/// 8 or 10 decimal digits, 13.56 MHz ones up to 20 hex digits (a 10-byte UID).
inline constexpr std::size_t k_max_typed_card = 32;

/// A USB RFID/NFC reader in keyboard mode (evdev): it types the card number and Enter, like a
/// barcode scanner. One thread opens the input device through `open_keys` with an exclusive grab
/// (the number must not reach a console or a login prompt), again every 5 s of Env time after it
/// went away, decodes keys with KeyDecoder (US layout, 200 ms between keys at most) and passes
/// each code, stamped with the Env clock, to on_card. A code is a card when it is 1 to
/// k_max_typed_card hex digits (decimal ones included: most readers type the low 4 bytes in
/// decimal, so one card read by this reader and by an RDM6300 gives two different hashes: enrol
/// a card with the reader it will be used at); anything else is counted as a bad frame and
/// forgotten unlogged. The same card typed again within 2 s is one badge (readers repeat while
/// a card is held).
class EvdevBadgeReader final : public BadgeReader {
 public:
  EvdevBadgeReader(std::filesystem::path device, BadgeAttribution& badges, Env& env, Logger& log,
                   std::string component, KeyEventSourceFactory open_keys);
  ~EvdevBadgeReader() override;
  EvdevBadgeReader(const EvdevBadgeReader&) = delete;
  EvdevBadgeReader& operator=(const EvdevBadgeReader&) = delete;

  void start() override;
  void stop() override;
  std::string status() const override;
  std::uint64_t bad_frames() const override;

 private:
  void run(std::stop_token stop);
  void on_code(std::string& code, std::string& last_id, std::int64_t& last_at);

  const std::filesystem::path m_device;
  BadgeAttribution& m_badges;
  Env& m_env;
  Logger& m_log;
  const std::string m_component;
  const KeyEventSourceFactory m_open_keys;
  mutable std::mutex m_mutex;
  std::string m_state = "reader starting";
  std::uint64_t m_frames = 0;
  std::uint64_t m_bad_frames = 0;
  std::jthread m_thread;  // last: joined before the members it uses go
};

}  // namespace agent
