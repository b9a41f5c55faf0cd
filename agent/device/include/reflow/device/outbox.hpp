// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <reflow/core/env.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/merkle.hpp>
#include <reflow/core/result.hpp>
#include <reflow/device/config.hpp>

namespace agent {

/// One signed event as the outbox keeps it until the node acknowledges it (the node's own record
/// of an event is ingest::StoredEvent).
struct OutboxEvent {
  std::int64_t seq = 0;
  std::string id;  ///< event id (ULID)
  std::int64_t recorded_unix_ms = 0;
  std::string envelope;  ///< the JWS envelope (PROTOCOL §3), exactly as published
};

/// The chain state the writer needs to stamp the next event. Persisted with every commit (in the
/// batch's last row, which pruning keeps), so it survives pruning and restarts.
struct ChainHead {
  std::string stream;         ///< ULID of this outbox's stream
  std::int64_t last_seq = 0;  ///< 0 before the first event
  std::string last_hash;      ///< b64url SHA-256 of the last signing input; "" before seq 1
  std::int64_t recorded_floor_ms = 0;  ///< the last `recorded`; the next one is never lower
};

/// Counters and sizes for `status` and the §6 status message.
struct OutboxStats {
  std::string stream;
  std::int64_t last_seq = 0;
  std::int64_t acked_seq = 0;
  std::int64_t backlog_events = 0;  ///< last_seq − acked_seq
  std::uint64_t backlog_bytes = 0;  ///< sum of unacked envelope sizes (what the quota counts)
  std::optional<std::int64_t> oldest_unacked_recorded_ms;
  std::uint64_t file_bytes = 0;  ///< outbox.db + WAL on disk
  std::uint64_t quota_bytes = 0;
  std::uint64_t refused_quota = 0;  ///< submissions refused because the quota was full
  std::uint64_t refused_io = 0;     ///< batches that failed to commit (disk full, I/O error)
  /// Submissions refused because the data_dir file system had less than min_free_bytes free.
  std::uint64_t refused_disk = 0;
  std::optional<std::uint64_t> disk_free_bytes;  ///< available to the agent; none if unknown
  std::uint64_t min_free_bytes = 0;              ///< outbox.min_free: kept free for acks
  std::uint64_t reserve_bytes = 0;               ///< outbox.reserve, as configured
  bool reserve_held = false;                     ///< the reserve file is in place
  bool accepting = true;  ///< new events fit on the disk now (disk_free_bytes ≥ min_free_bytes)
  std::optional<std::string> quarantined;  ///< path of an outbox moved aside at this start-up
};

/// What Outbox::recover_file() found.
struct OutboxRecovery {
  std::uint64_t recovered = 0;  ///< distinct (stream, seq) envelopes that verified, passed on
  /// Places in the bytes where an envelope starts (`{"protected":"`) but what follows does not
  /// verify: cut by truncation, overwritten, or spread over SQLite overflow pages (an envelope
  /// larger than a page that SQLite could not read as a row either).
  std::uint64_t damaged_regions = 0;
  std::uint64_t already_acked = 0;  ///< verified but at or below the acked seq the file records
};

/// Bytes available to the agent on the file system holding `dir` (statvfs f_bavail × f_frsize),
/// or nullopt when it cannot be asked. Tests pass their own to simulate a full disk.
using FreeSpaceProbe =
    std::function<std::optional<std::uint64_t>(const std::filesystem::path& dir)>;

/// The real probe: statvfs(2).
std::optional<std::uint64_t> statvfs_free_bytes(const std::filesystem::path& dir);

/// Options for opening an outbox.
struct OutboxOptions {
  std::filesystem::path path;  ///< e.g. data_dir/"outbox.db"
  std::string device_id;       ///< stored in a new outbox; a mismatch quarantines the file
  std::uint64_t quota_bytes = 256ull * 1024 * 1024;
  Durability durability = Durability::full;
  /// outbox.min_free: new events are refused when committing them would leave less than this
  /// free on the file system (acks and pruning are still written).
  std::uint64_t min_free_bytes = 64ull * 1024 * 1024;
  /// outbox.reserve: size of `<path>.reserve`, a preallocated file given up when an ack cannot
  /// be committed because something else filled the disk; 0 for none.
  std::uint64_t reserve_bytes = 8ull * 1024 * 1024;
  FreeSpaceProbe free_space{};  ///< empty: statvfs_free_bytes
};

/// One event the node acknowledged with a verified signed ack (PROTOCOL §5.1), as the outbox keeps
/// it after pruning the event, for `reflow-agent audit`: about 70 bytes a row.
struct AckedLeaf {
  std::int64_t seq = 0;
  std::string id;       ///< event id (ULID), to name it in an audit's findings
  merkle::Hash leaf{};  ///< SHA-256(0x00 || envelope as published), RFC 9162 §2.1.1
  /// The leaf's index in the node's log when a signed ack proved it (the ack's own seq); nullopt
  /// for the events below it that the same ack covered without a proof of their own.
  std::optional<std::uint64_t> leaf_index;
};

/// What `reflow-agent audit` reads from an outbox file (Outbox::read_audit_state).
struct AuditState {
  std::string device_id;
  std::string stream;
  /// The node's log (tree_size, root) the last verified ack stated; nullopt: none verified.
  std::optional<std::pair<std::uint64_t, merkle::Hash>> verified_log;
  std::vector<AckedLeaf> leaves;  ///< in seq order
};

/// Room for new envelopes, and which limit sets it.
struct OutboxRoom {
  std::uint64_t bytes = 0;
  bool disk_bound = false;  ///< the file system's free space, not the quota, is the limit
};

/// The SQLite outbox: the one source of truth for events not yet acknowledged by the node
/// (PROTOCOL §5). WAL mode; every append is one transaction (a group commit) that also advances
/// the ChainHead, so the chain and the rows can never disagree after a crash.
///
/// File format (schema 2; a schema-1 file is migrated at open): the chain head is stored in the
/// last row of each batch and the acked seq follows from the rows (the lowest seq − 1; a prune
/// that covers every event keeps the last row, marked acked, for the head), so an append and a
/// prune of a device whose events are acked as they come each write one 4 KiB page. An agent
/// of schema 1 quarantines a schema-2 file (`reflow-agent export` still reads it).
///
/// Quota: the sum of unacked envelope sizes may not exceed `quota_bytes`. Acked events are pruned
/// as soon as an ack covers them; when unacked events fill the quota, append() refuses the whole
/// batch with no_space and counts it; unacked events are never dropped.
///
/// Full disk (docs/ARCHITECTURE.md "Full disk"): a batch is refused (no_space, refused_disk) when
/// committing it would leave less than `min_free_bytes` free on the file system (a batch counts
/// twice: once in the WAL, once in the database). Acks only delete rows, which needs a few pages,
/// so they still commit inside that margin; should something else fill the disk completely, an
/// ack that fails with SQLITE_FULL gives up the reserve file and is retried. The reserve is put
/// back once there is room for it again. New events are accepted again as soon as space is free:
/// the free space is asked at every batch. When an ack leaves no backlog, the file shrinks: new
/// files use auto_vacuum=INCREMENTAL (older ones are converted by one VACUUM, cheap with no rows),
/// then `PRAGMA incremental_vacuum` and `wal_checkpoint(TRUNCATE)` return the space.
///
/// At open, a file that is not a database, fails `PRAGMA quick_check`, has an unknown schema or
/// another device id is renamed to `outbox.db.corrupt-<UTC time>` (with its -wal/-shm), a new
/// outbox with a new stream is made, and stats().quarantined says so. Open never fails because of
/// the old file's content; it fails only when a new file cannot be created (io).
///
/// Thread-safe: one internal mutex; a single SQLite connection.
class Outbox {
 public:
  static Result<std::unique_ptr<Outbox>> open(const OutboxOptions& options, Env& env, Logger& log);
  ~Outbox();

  /// The chain head as of the last successful append.
  ChainHead head() const;

  /// Appends events (consecutive seqs following head().last_seq) and moves the head to `new_head`
  /// in one transaction. Errors: no_space (quota: nothing written, counted in refused_quota; or
  /// SQLITE_FULL), io (any other SQLite failure; nothing written, counted in refused_io).
  Status append(const std::vector<OutboxEvent>& events, const ChainHead& new_head);

  /// Bytes still free under the quota (quota − backlog_bytes, or 0).
  std::uint64_t quota_free_bytes() const;

  /// Envelope bytes a batch may add now: the smaller of quota_free_bytes() and what the file
  /// system can take while keeping min_free_bytes free ((free − min_free) / 2, see above).
  OutboxRoom room() const;

  /// The no_space error for a submission of `needed_bytes` that room() cannot take: names the
  /// limit, what is free and what is required. Counts nothing.
  Error room_error(std::uint64_t needed_bytes) const;

  /// Up to `max_events` stored events with seq ≥ `from_seq`, in seq order.
  Result<std::vector<OutboxEvent>> read_from(std::int64_t from_seq, std::size_t max_events) const;

  /// Applies a node ack (PROTOCOL §5): when `stream` is this outbox's stream, acked becomes
  /// max(acked, seq) and events up to it are deleted. Returns the new acked seq. An ack for
  /// another stream changes nothing and returns the current acked seq. Errors: rejected when
  /// `seq` is beyond the last committed seq (nothing is pruned; the message names both seqs),
  /// no_space or io when the prune cannot be committed. A large ack is pruned in transactions of
  /// about 1 MiB of envelopes each, so the WAL stays small and a nearly full disk can take it;
  /// when one fails, the ones before it stay recorded (stats().acked_seq says how far). With
  /// Durability::full the prune is committed without an fsync: a power cut may lose the acks
  /// recorded since the last append (whose fsync makes them durable), and the events they covered
  /// are then republished until the node's retained ack prunes them again (PROTOCOL §5
  /// duplicates); answered events are never lost.
  Result<std::int64_t> apply_ack(const std::string& stream, std::int64_t seq);

  OutboxStats stats() const;

  /// The node's log as the last verified signed ack stated it (PROTOCOL §5.1): its size in
  /// leaves and root hash. Kept in the outbox file (table node_log, one row), so a restarted
  /// agent holds the node to it. nullopt before the first verified ack.
  std::optional<std::pair<std::uint64_t, merkle::Hash>> verified_log() const;

  /// Whether the node sent a consistency proof in an ack verified before (PROTOCOL §5.1): from
  /// then on a grown log needs one. Kept beside verified_log(); false before the first record.
  bool node_sends_consistency() const;

  /// Records the log of a verified ack, and whether the node has sent consistency proofs
  /// (`consistency_seen`, never set back by the forwarder), before the ack is applied (a crash
  /// in between leaves a log that the next copy of the same ack matches). Errors: io or no_space
  /// naming the file.
  Status record_verified_log(std::uint64_t tree_size, const merkle::Hash& root,
                             bool consistency_seen);

  /// Keeps the leaf hash (SHA-256(0x00 || envelope)) and event id of every event in
  /// (acked seq, `upto_seq`] in table acked_leaves, with `leaf_index` for `upto_seq` (the event a
  /// verified signed ack proved, PROTOCOL §5.1), in one transaction, durable before apply_ack()
  /// prunes them. Rows already kept stay (a repeat adds the index if it was missing). Events the
  /// outbox no longer holds are skipped. Errors: io or no_space naming the file.
  Status record_acked_leaves(std::int64_t upto_seq, std::uint64_t leaf_index);

  /// Reads, read-only, what `reflow-agent audit` checks from an outbox file (the live one, while
  /// its agent runs): the device, stream, the last verified log and every kept AckedLeaf.
  /// Errors: io when the file cannot be opened, corruption when it is not an outbox.
  static Result<AuditState> read_audit_state(const std::filesystem::path& path);

  /// For `reflow-agent audit` (PROTOCOL §5.2): replaces the verified log `from` (tree_size,
  /// root) of the outbox file at `path` (the live one, while its agent runs) with `to`, a
  /// signed checkpoint the audit proved an extension of it (RFC 9162 §2.1.4.2), committed with
  /// synchronous=FULL before it returns. Only when the file still records `from`: false, and
  /// nothing changed, when the agent verified another log since. consistency_seen is kept.
  /// Errors: io or no_space naming the file.
  static Result<bool> save_audited_log(const std::filesystem::path& path,
                                       const std::pair<std::uint64_t, merkle::Hash>& from,
                                       const std::pair<std::uint64_t, merkle::Hash>& to);

  /// Reads the envelopes of an outbox file (the live one or a quarantined one) read-only, in seq
  /// order from `from_seq`, calling `each` per event, for `reflow-agent export`. Rows that cannot
  /// be read are skipped and counted in `skipped`. Errors: io or corruption when the file cannot
  /// be opened as an outbox at all.
  static Status export_file(const std::filesystem::path& path, std::int64_t from_seq,
                            const std::function<void(const OutboxEvent&)>& each,
                            std::size_t& skipped);

  /// Salvages a damaged outbox file (truncated, first page overwritten, pages zeroed) for
  /// `reflow-agent export`, read-only. Debian 12's libsqlite3 (3.40) is built without the
  /// recovery extension (no sqlite3_recover_* symbols), so the file's own bytes are searched:
  /// the rows SQLite can still read, plus every `{"protected":"…","payload":"…","signature":"…"}`
  /// (PROTOCOL §3) found in `path` and `path`-wal, including pages SQLite no longer reaches. An
  /// envelope is kept only when it verifies with `key` (jws_verify) and its payload carries a
  /// stream and seq; each (stream, seq) is passed once, ordered by stream then seq, with seq ≥
  /// `from_seq`. When the file's meta row is still readable, events at or below its acked seq
  /// (pruned rows whose bytes remain in free pages) are left out and counted; otherwise they are
  /// passed too, which the node takes as duplicates (PROTOCOL §5). Holds the recovered envelopes in
  /// memory (at most the file's size). Errors: io when `path` cannot be read.
  static Result<OutboxRecovery> recover_file(const std::filesystem::path& path,
                                             const PublicJwk& key, std::int64_t from_seq,
                                             const std::function<void(const OutboxEvent&)>& each);

 private:
  Outbox();
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace agent
