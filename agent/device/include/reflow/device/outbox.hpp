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
#include <reflow/core/logger.hpp>
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

/// The chain state the writer needs to stamp the next event. Persisted with every commit, so it
/// survives pruning and restarts.
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
  std::uint64_t refused_quota = 0;         ///< submissions refused because the quota was full
  std::uint64_t refused_io = 0;            ///< batches that failed to commit (disk full, I/O error)
  std::optional<std::string> quarantined;  ///< path of an outbox moved aside at this start-up
};

/// Options for opening an outbox.
struct OutboxOptions {
  std::filesystem::path path;  ///< e.g. data_dir/"outbox.db"
  std::string device_id;       ///< stored in a new outbox; a mismatch quarantines the file
  std::uint64_t quota_bytes = 256ull * 1024 * 1024;
  Durability durability = Durability::full;
};

/// The SQLite outbox: the one source of truth for events not yet acknowledged by the node
/// (PROTOCOL §5). WAL mode; every append is one transaction (a group commit) that also advances
/// the ChainHead, so the chain and the rows can never disagree after a crash.
///
/// Quota: the sum of unacked envelope sizes may not exceed `quota_bytes`. Acked events are pruned
/// as soon as an ack covers them; when unacked events fill the quota, append() refuses the whole
/// batch with no_space and counts it; unacked events are never dropped.
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

  /// Up to `max_events` stored events with seq ≥ `from_seq`, in seq order.
  Result<std::vector<OutboxEvent>> read_from(std::int64_t from_seq, std::size_t max_events) const;

  /// Applies a node ack (PROTOCOL §5): when `stream` is this outbox's stream, acked becomes
  /// max(acked, min(seq, last_seq)) and events up to it are deleted. Returns the new acked seq.
  /// An ack for another stream changes nothing and returns the current acked seq.
  Result<std::int64_t> apply_ack(const std::string& stream, std::int64_t seq);

  OutboxStats stats() const;

  /// Reads the envelopes of an outbox file (the live one or a quarantined one) read-only, in seq
  /// order from `from_seq`, calling `each` per event, for `reflow-agent export`. Rows that cannot
  /// be read are skipped and counted in `skipped`. Errors: io or corruption when the file cannot
  /// be opened as an outbox at all.
  static Status export_file(const std::filesystem::path& path, std::int64_t from_seq,
                            const std::function<void(const OutboxEvent&)>& each,
                            std::size_t& skipped);

 private:
  Outbox();
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace agent
