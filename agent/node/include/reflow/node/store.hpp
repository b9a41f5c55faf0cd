// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/jose.hpp>
#include <reflow/core/merkle.hpp>
#include <reflow/core/result.hpp>

/// The community node's side of PROTOCOL v1: `reflow-ingest`.
namespace ingest {

using agent::Result;
using agent::Status;

/// Why the node refused an envelope (PROTOCOL §7). The names are stable: they are stored, counted
/// in `stats`, printed in logs and used by tests.
enum class RejectReason {
  oversized,      ///< over 64 KiB (PROTOCOL §3)
  malformed_jws,  ///< not a flattened JWS, bad base64url, header not JSON, `alg` not EdDSA (§7.1)
  unknown_kid,    ///< no registered device has this key (§7.2)
  bad_signature,  ///< Ed25519 verification failed (§7.3)
  device_mismatch,  ///< payload `device` ≠ the key's device or the topic's DEVICE (§7.4)
  invalid_event,    ///< payload is not valid JSON or fails PROTOCOL §4 (§7.5)
  key_revoked,      ///< signed by a revoked key after its revocation (see Store::revoke_device)
  equivocation,     ///< same (device, stream, seq) already stored with different bytes (§5, §7.6)
  chain_break,      ///< `prev` ≠ SHA-256 of the stored predecessor's signing input (§7.7)
  recorded_backwards,  ///< `recorded` earlier than the stored predecessor's in its stream (§7.7)
};

/// "oversized", "malformed_jws" … (the enumerator's name).
std::string_view to_string(RejectReason reason) noexcept;

/// A device key in the registry. A device may have several keys over time (rotation); a key
/// (kid) belongs to exactly one device.
struct DeviceKeyRecord {
  std::string device;    ///< PROTOCOL §1 device id
  agent::PublicJwk jwk;  ///< jwk.kid is the RFC 7638 thumbprint
  std::int64_t added_unix_ms = 0;
  std::optional<std::int64_t> revoked_unix_ms;  ///< node time of `device revoke`
};

/// An envelope that passed PROTOCOL §7 steps 1–5 (see verifier.hpp).
struct VerifiedEvent {
  std::string topic;     ///< the MQTT topic it arrived on
  std::string envelope;  ///< the envelope bytes exactly as received
  std::string kid;
  std::string payload;  ///< the decoded payload bytes (the signed event, never re-serialized)
  std::string device;
  std::string stream;  ///< ULID
  std::int64_t seq = 0;
  std::string prev;    ///< b64url; empty when the payload's `prev` is null (seq 1)
  std::string id;      ///< event ULID
  std::string action;  ///< ValueFlows action id
  std::int64_t recorded_unix_ms = 0;
  std::string signing_input_sha256;  ///< b64url SHA-256 of this JWS's signing input: what the
                                     ///< successor's `prev` must be
};

/// An envelope the node refused; kept with its reason and never acked.
struct Rejection {
  std::string topic;
  std::string device;    ///< the topic's DEVICE (may be any string a client sent)
  std::string envelope;  ///< the bytes as received (whole, even when oversized)
  RejectReason reason = RejectReason::malformed_jws;
  std::string detail;                 ///< for people: "signature does not verify with kid …"
  std::optional<std::string> stream;  ///< when the payload could be read
  std::optional<std::int64_t> seq;
};

/// What Store::put did with one item.
enum class PutOutcome {
  stored,     ///< new (device, stream, seq): stored (confirmed, or held until its predecessor
              ///< arrives: see Store)
  duplicate,  ///< same bytes already stored: nothing changed (expected, PROTOCOL §5)
  rejected,   ///< refused (given a rejection, or equivocation / chain break / recorded going
              ///< backwards / revoked key found by the store); see RejectionKept for whether a row
              ///< was added
};

/// What a rejection left in the store (see Store::put and RejectionLimits).
enum class RejectionKept {
  new_row,  ///< a new rejections row
  repeat,   ///< the same envelope bytes on the same topic were already kept: their row's count
            ///< and last-seen time went up
  counted,  ///< over its sender's cap: counted (stats' `not_kept`), envelope not kept
};

/// One item of a put batch: exactly one of `event` or `rejection` is set.
struct Incoming {
  std::optional<VerifiedEvent> event;
  std::optional<Rejection> rejection;
};

/// Result of one Incoming.
struct PutResult {
  PutOutcome outcome = PutOutcome::stored;
  std::optional<RejectReason> reason;  ///< when outcome == rejected
  std::string detail;  ///< when outcome == rejected: for logs; when stored, "" or what storing it
                       ///< displaced (a held successor it proved wrong, moved to rejections)
  RejectionKept kept = RejectionKept::new_row;  ///< when outcome == rejected
};

/// The highest contiguous point of a stream (PROTOCOL §5): events 1..seq are all stored, each
/// `prev` checked against its predecessor (the confirmed events).
struct AckPoint {
  std::string stream;
  std::int64_t seq = 0;  ///< 0 when seq 1 is not stored yet (then no ack is published)
};

/// A stored event, as queries return it.
struct StoredEvent {
  std::string device;
  std::string stream;
  std::int64_t seq = 0;
  std::string id;
  std::string action;
  std::string kid;
  std::int64_t recorded_unix_ms = 0;  ///< the payload's `recorded`
  std::int64_t received_unix_ms = 0;  ///< node time when stored
  std::string payload;                ///< the verified payload bytes (JSON)
  std::string envelope;               ///< the JWS as received
};

/// A stored rejection, as queries return it: one row per (topic, envelope bytes), however often
/// they arrived. `reason` and `detail` are those of the latest arrival.
struct StoredRejection {
  std::string device;
  std::string topic;
  RejectReason reason = RejectReason::malformed_jws;
  std::string detail;
  std::optional<std::string> stream;
  std::optional<std::int64_t> seq;
  std::int64_t received_unix_ms = 0;   ///< node time of the first arrival
  std::int64_t last_seen_unix_ms = 0;  ///< node time of the latest arrival
  std::int64_t count = 1;              ///< arrivals
  std::string envelope;
};

/// What an unauthenticated sender can make the node keep of its rejections. A rejection is
/// unauthenticated when its reason is oversized, malformed_jws, unknown_kid or bad_signature
/// (nothing proves who sent it), or when the topic's DEVICE has no key in the registry.
/// Beyond a cap such rejections are counted per (topic DEVICE, reason) — or under the device "*"
/// once the total cap is reached — and their envelopes are not kept. Repeats of a kept envelope
/// only raise its row's count and never count against a cap.
struct RejectionLimits {
  std::int64_t rows_per_device = 100;           ///< kept rows per topic DEVICE
  std::int64_t bytes_per_device = 1024 * 1024;  ///< kept envelope bytes per topic DEVICE
  std::int64_t rows_total = 10'000;             ///< kept rows of all such senders
  std::int64_t bytes_total = 64 * 1024 * 1024;  ///< kept envelope bytes of all such senders
};

/// A place in Store::for_each_event's order: the event (device, stream, seq). A page of events
/// continues after the last one of the page before (keyset paging: the store seeks to it
/// instead of counting rows, so a page costs the same at any depth).
struct EventCursor {
  std::string device;
  std::string stream;
  std::int64_t seq = 0;  ///< 0: before the stream's first event
};

/// Filter for Store::for_each_event; unset fields match everything.
struct EventFilter {
  std::optional<std::string> device;
  std::optional<std::int64_t> since_unix_ms;  ///< `recorded` ≥ this
  std::optional<std::string> action;
  std::optional<std::int64_t> until_unix_ms;  ///< `recorded` < this
  /// only the events after this one in the order of for_each_event; none when the cursor's
  /// stream is not stored
  std::optional<EventCursor> after;
};

/// One stream of one device, for `stats`.
struct StreamStats {
  std::string stream;
  std::int64_t events = 0;      ///< stored (confirmed and held)
  std::int64_t contiguous = 0;  ///< the AckPoint seq: events 1..contiguous are confirmed
  std::int64_t max_seq = 0;     ///< highest stored seq
  std::int64_t gaps = 0;        ///< seqs below max_seq that are missing (≥ 0)
  bool chain_intact = true;     ///< false once a chain break was found in this stream
  std::int64_t first_seen_unix_ms = 0;
  std::int64_t last_seen_unix_ms = 0;
};

/// Per device, for `stats`.
struct DeviceStats {
  std::string device;
  bool registered = false;                        ///< has a key in the registry
  bool revoked = false;                           ///< all its keys are revoked
  std::optional<std::int64_t> last_seen_unix_ms;  ///< last envelope stored or rejected
  std::int64_t events = 0;
  std::int64_t gaps = 0;  ///< sum over its streams, saturating at INT64_MAX
  bool chain_intact = true;
  /// reason name → arrivals (kept or not) since the device was registered (the first of its
  /// keys was added); all of them for a device that is not registered
  std::map<std::string, std::int64_t> rejections;
  /// reason name → arrivals last seen before the device was registered: typically unknown_kid
  /// while the device published before `device add`. Kept apart so that they do not read as a
  /// fault that goes on.
  std::map<std::string, std::int64_t> rejections_before_registration;
  std::int64_t rejections_not_kept = 0;  ///< of both, counted only (over RejectionLimits)
  std::vector<StreamStats> streams;      ///< oldest first
};

/// The verifiable log's head: its size in leaves and the root hash of its Merkle tree
/// (RFC 9162 §2.1). The log is every envelope the node stored, in the order it stored them.
struct LogCheckpoint {
  std::uint64_t size = 0;
  agent::merkle::Hash root{};
};

/// One stored event's place in the log.
struct LogEntry {
  std::uint64_t index = 0;     ///< 0-based leaf index
  agent::merkle::Hash leaf{};  ///< leaf_hash(envelope): SHA-256(0x00 || envelope bytes)
  std::string device;
  std::string stream;
  std::int64_t seq = 0;
};

/// A stored event's inclusion in the log as it is now, read in one snapshot (a signed ack
/// carries it, PROTOCOL §5.1).
struct LogInclusion {
  LogCheckpoint checkpoint;                ///< the log's size and root when read
  LogEntry entry;                          ///< the event's leaf
  std::vector<agent::merkle::Hash> proof;  ///< RFC 9162 §2.1.3.1, of entry.index in checkpoint
};

/// A stored event's proof for an audit (PROTOCOL §5.2): its leaf, the leaf hash of the envelope
/// the node holds for it now, and its inclusion proof in the log's first `size` leaves.
struct LogAudit {
  LogEntry entry;                          ///< the event's leaf as the log keeps it
  agent::merkle::Hash envelope_leaf{};     ///< SHA-256(0x00 || the stored envelope) now
  std::vector<agent::merkle::Hash> proof;  ///< RFC 9162 §2.1.3.1, of entry.index in `size`
};

/// What an export ledger row stands for (Store::ledger_entries).
enum class LedgerKind {
  process,  ///< a Process the export created (createProcess); ref: the local process reference
  event,  ///< an EconomicEvent (createEconomicEvent); ref: "DEVICE/STREAM/SEQ" of the stored event
  resource,  ///< an EconomicResource a produce/raise created (newInventoriedResource); ref: the
             ///< local resource reference
};

/// "process", "event", "resource" (stored as such).
std::string_view to_string(LedgerKind kind) noexcept;

/// One row of the export ledger: what the node sent to one zenflows server, so that an export
/// can resume after any failure without sending anything twice (export_ledger.hpp).
struct LedgerEntry {
  std::string server;  ///< the zenflows URL ([export] zenflows_url) it was sent to
  LedgerKind kind = LedgerKind::event;
  std::string ref;        ///< see LedgerKind
  bool recorded = false;  ///< false: an intent, written before the request was sent, whose
                          ///< answer was never recorded (the exporter stopped in between)
  std::string server_id;  ///< the zenflows id (ULID), once recorded
  std::string note;       ///< the `note` the request carried: what settling an intent looks for
  std::string event_id;   ///< event: the reflow event ULID
  std::string creates;    ///< event: the local resource reference its request creates, or ""
  std::int64_t intent_unix_ms = 0;    ///< node time the intent was written
  std::int64_t recorded_unix_ms = 0;  ///< node time the answer was recorded (0 while an intent)
};

/// The node's durable state: the device registry, stored events and rejections.
///
/// PROTOCOL §7 steps 6–7 happen here, in put(), because they need the stored state:
/// - dedupe: the same (device, stream, seq) with the same envelope bytes is a duplicate;
///   with different bytes an equivocation (rejected, reported, the first copy kept);
/// - chain: when seq−1 is stored, `prev` must equal its signing_input_sha256 and `recorded` must
///   not be earlier than seq−1's, else the arriving event is rejected (chain_break, which marks
///   the stream broken, or recorded_backwards). An event whose seq−1 is not stored cannot have
///   its `prev` checked: it is stored but held — not counted in the ack, not returned by
///   for_each_event — until its predecessor arrives and decides it: when the predecessor's hash
///   is its `prev` and its `recorded` is not earlier, it stays (and is confirmed once the chain
///   below it is); otherwise the held event, not the predecessor, was wrong and is moved to the
///   rejections (chain_break / recorded_backwards) while the predecessor is stored. So the
///   confirmed events of a stream are exactly 1..contiguous;
/// - revocation, decided by what the node had stored (not by the device's clock): an event
///   signed by a revoked key is stored only when seq+1 is already stored and vouches for it
///   (its `prev` is this event's hash): it fills a gap below events the node had before the
///   revocation, bound to them by the chain. Anything else — a seq above every stored one, a
///   new stream — is rejected (key_revoked). (verifier.hpp also rejects events whose `recorded`
///   is at or after the revocation.)
/// - rejections: one row per (topic, envelope bytes) with a count; unauthenticated senders are
///   capped (RejectionLimits).
///
/// Implementations: SQLite (open_sqlite_store) and PostgreSQL (open_postgres_store). All methods
/// are thread-safe
/// (one connection behind a mutex is fine); several processes may open the same SQLite file
/// (WAL, busy timeout) — `reflow-ingest events` reads while `run` writes.
class Store {
 public:
  virtual ~Store() = default;

  // --- device registry ---

  /// Registers `jwk` for `device`. Adding the same key to the same device again is a no-op.
  /// Errors: rejected when the kid belongs to another device, or is revoked; invalid_argument
  /// for a device id that is not PROTOCOL §1.
  virtual Status add_device(std::string_view device, const agent::PublicJwk& jwk,
                            std::int64_t now_unix_ms) = 0;

  /// Revokes every key of `device` as of `now_unix_ms`. Errors: not_found for an unknown device.
  virtual Status revoke_device(std::string_view device, std::int64_t now_unix_ms) = 0;

  /// The key with this kid, or nullopt. Errors: io.
  virtual Result<std::optional<DeviceKeyRecord>> find_key(std::string_view kid) = 0;

  /// Every key, ordered by device then added time. Errors: io.
  virtual Result<std::vector<DeviceKeyRecord>> list_keys() = 0;

  // --- ingest ---

  /// Applies a batch in order in ONE transaction, durably committed (synchronous=FULL) before
  /// it returns: the caller acks only after this. Returns one PutResult per item.
  /// Errors: io / no_space / corruption (nothing of the batch is stored; the caller must not
  /// ack and may retry).
  virtual Result<std::vector<PutResult>> put(std::span<const Incoming> batch,
                                             std::int64_t now_unix_ms) = 0;

  /// The ack of PROTOCOL §5 for `device`: the stream that most recently had an event stored,
  /// and its contiguous seq. nullopt when nothing of the device is stored. Errors: io.
  virtual Result<std::optional<AckPoint>> ack_point(std::string_view device) = 0;

  // --- queries ---

  /// Calls `fn` for each stored event matching `filter`, ordered by device, stream (first seen),
  /// seq. Returning false from `fn` stops. Errors: io.
  virtual Status for_each_event(const EventFilter& filter,
                                const std::function<bool(const StoredEvent&)>& fn) = 0;

  /// Calls `fn` for each stored rejection (optionally of one device), oldest first.
  virtual Status for_each_rejection(std::optional<std::string_view> device,
                                    const std::function<bool(const StoredRejection&)>& fn) = 0;

  /// Per device (registered or seen), ordered by device id. Errors: io.
  virtual Result<std::vector<DeviceStats>> stats() = 0;

  // --- the verifiable log (RFC 9162 §2.1) ---
  //
  // put() appends the envelope of every event it stores as a leaf, in the same transaction, so
  // the log and the events never disagree after a crash. The log is append-only: an event held
  // and later displaced to the rejections (see above) keeps its leaf, and its envelope is then
  // among the rejections. The default implementations fail with not_found ("keeps no log") for
  // stores without one.

  /// The log's current size and root. Errors: io.
  virtual Result<LogCheckpoint> log_checkpoint();

  /// The root of the log's first `size` leaves, as its checkpoint of that size was. Errors:
  /// invalid_argument when size is beyond the log; io.
  virtual Result<LogCheckpoint> log_checkpoint_at(std::uint64_t size);

  /// The log entries of the stored events whose payload `id` is `event_id` (normally one; ids
  /// are the devices' ULIDs and two devices could pick the same). Errors: io.
  virtual Result<std::vector<LogEntry>> log_entries(std::string_view event_id);

  /// The current checkpoint with the leaf of the stored event (device, stream, seq) and its
  /// inclusion proof, all of one snapshot; nullopt when no such event is stored. Errors: io.
  virtual Result<std::optional<LogInclusion>> log_inclusion(std::string_view device,
                                                            std::string_view stream,
                                                            std::int64_t seq);

  /// For an audit (PROTOCOL §5.2): the stored event (device, stream, seq), its leaf, the leaf hash
  /// of its envelope as stored now (an envelope altered in the store no longer hashes to its
  /// leaf) and its inclusion proof in the log's first `size` leaves, of one snapshot; nullopt
  /// when no such event is stored, it has no leaf, or its leaf is not among the first `size`.
  /// Errors: invalid_argument when size is beyond the log; io.
  virtual Result<std::optional<LogAudit>> log_audit(std::string_view device,
                                                    std::string_view stream, std::int64_t seq,
                                                    std::uint64_t size);

  /// The inclusion proof of leaf `index` in the log's first `size` leaves (RFC 9162 §2.1.3.1).
  /// Errors: invalid_argument when index ≥ size or size is beyond the log; io.
  virtual Result<std::vector<agent::merkle::Hash>> log_inclusion_proof(std::uint64_t index,
                                                                       std::uint64_t size);

  /// The consistency proof from the log's first `old_size` leaves to its first `size`
  /// (RFC 9162 §2.1.4.1). Errors: invalid_argument when old_size > size or size is beyond the
  /// log; io.
  virtual Result<std::vector<agent::merkle::Hash>> log_consistency_proof(std::uint64_t old_size,
                                                                         std::uint64_t size);

  // --- the export ledger (export_ledger.hpp) ---
  //
  // Each method commits durably (synchronous=FULL) before it returns. The default
  // implementations fail with not_found ("keeps no export ledger").

  /// Every row for `server`, intents included, ordered by kind then ref. Errors: io.
  virtual Result<std::vector<LedgerEntry>> ledger_entries(std::string_view server);

  /// Writes `entry` as an intent (entry.recorded and server_id are ignored). Errors: rejected
  /// when the ledger already has a row for (server, kind, ref) (another export is sending it,
  /// or it was recorded); io.
  virtual Status ledger_intent(const LedgerEntry& entry, std::int64_t now_unix_ms);

  /// Turns the intent (server, kind, ref) into a recorded row with `server_id`; when
  /// `created_resource_id` is not empty, also records the resource the intent's `creates` names
  /// with that id, in the same transaction. Errors: not_found when there is no such intent; io.
  virtual Status ledger_record(std::string_view server, LedgerKind kind, std::string_view ref,
                               std::string_view server_id, std::string_view created_resource_id,
                               std::int64_t now_unix_ms);

  /// Deletes the intent (server, kind, ref): the server did not create it. A recorded row is
  /// never deleted. Errors: not_found when there is no such intent; io.
  virtual Status ledger_forget(std::string_view server, LedgerKind kind, std::string_view ref);
};

/// Whether open_sqlite_store may create a store that does not exist.
enum class StoreOpen {
  create_if_missing,  ///< `run`, `device add|revoke`: creates the file and its directory
  existing_only,      ///< the query commands: a missing file is an error and nothing is created
};

/// Opens (with StoreOpen::create_if_missing, creating it and its directory when missing) the SQLite
/// store at `path` (normally DATA_DIR/ingest.db): WAL, synchronous=FULL, busy timeout 5 s, schema
/// versioned with `PRAGMA user_version` (currently 5; older files are migrated when opened: version
/// 1 rewrites its events table once, version 2 collapses repeated rejections into one row each,
/// version 3 builds the log from the stored events in the order they were stored, version 4 adds
/// the empty export ledger).
/// Errors: io (cannot create/open; with StoreOpen::existing_only a file that cannot be looked at,
/// e.g. permission denied on its directory), not_found (StoreOpen::existing_only and no file at
/// `path`: "no store at PATH: has `reflow-ingest run` ever run with this config?"), corruption (not
/// our database, or a newer schema version: the message says which). A file the caller may read but
/// not write opens read-only (SQLite's fallback); writes then fail with io.
Result<std::unique_ptr<Store>> open_sqlite_store(const std::filesystem::path& path,
                                                 const RejectionLimits& limits = {},
                                                 StoreOpen mode = StoreOpen::create_if_missing);

/// Opens the PostgreSQL store at `url` (a libpq connection URI, "postgresql://HOST/DB" or
/// "postgresql:///DB?host=/run/postgresql"; TLS, .pgpass and the PG* environment as libpq does
/// them), the database's first line of `password_file` as its password when that is not empty.
/// With StoreOpen::create_if_missing an empty database gets the schema; its version (currently
/// 1) is kept in the table reflow_meta, and later versions will migrate older ones when opened.
/// Every writing transaction first takes one advisory lock (pg_advisory_xact_lock): several
/// processes and hosts may share the database, and the database, not a process, orders their
/// writes; readers never wait for it (REPEATABLE READ snapshots). Durability is the server's
/// (synchronous_commit): put() returns once COMMIT did. A lost connection is opened again at
/// the next call.
/// Errors: io (cannot connect: the message names the URL without its password, never the
/// password), invalid_config (password_file unreadable), not_found (StoreOpen::existing_only
/// and the database has no store), corruption (the database holds other tables, or a schema
/// version this build does not know).
Result<std::unique_ptr<Store>> open_postgres_store(std::string_view url,
                                                   const std::filesystem::path& password_file = {},
                                                   const RejectionLimits& limits = {},
                                                   StoreOpen mode = StoreOpen::create_if_missing);

/// What migrate_sqlite_to_postgres found and did.
struct MigrationReport {
  struct Table {
    std::string name;         ///< keys, streams, events, rejections, rejections_not_kept,
                              ///< export_ledger, log_leaves, log_nodes
    std::int64_t rows = 0;    ///< in both stores after the copy
    std::int64_t copied = 0;  ///< written by this run
  };
  std::vector<Table> tables;
  LogCheckpoint log;  ///< the log's size and root, the same in both stores
};

/// Copies the SQLite store at `sqlite_path` into the PostgreSQL database at `url` (as
/// open_postgres_store takes it, with `password_file`) in one transaction: the registry, events,
/// rejections, streams (the ack points), the log and the export ledger, with their row ids, so
/// that the copy reads exactly as the file did. Opening each store first brings its schema up to
/// date (an older SQLite file is migrated in place; an empty database gets the schema). A
/// database that already holds a store must hold a log that is a prefix of the file's (an
/// earlier copy): then its events and log get what they lack, and the tables that change in
/// place (keys, streams, rejections, rejections_not_kept, export_ledger) are copied again whole.
/// Afterwards every table holds as many rows as the file's, and the log's size and root are the
/// file's. `progress` gets one line per step (and per 10 000 rows). Neither store may be written
/// meanwhile: stop `reflow-ingest run` first (the copy holds the PostgreSQL store's write lock).
/// Errors: those of opening either store; rejected (the database holds other events, or a
/// longer log); io (reading the file, or the database failed: nothing was committed);
/// corruption (counts or log differ after the copy: nothing was committed, or the log differs
/// after it, when something wrote to a store meanwhile); invalid_config (built without the
/// PostgreSQL store).
Result<MigrationReport> migrate_sqlite_to_postgres(
    const std::filesystem::path& sqlite_path, std::string_view url,
    const std::filesystem::path& password_file,
    const std::function<void(std::string_view)>& progress);

struct IngestConfig;

/// The store `config` names ([store] kind): open_sqlite_store at config.store_path(), or
/// open_postgres_store at [store] url with its password_file. Errors: those of the one opened.
Result<std::unique_ptr<Store>> open_configured_store(const IngestConfig& config,
                                                     StoreOpen mode = StoreOpen::create_if_missing);

}  // namespace ingest
