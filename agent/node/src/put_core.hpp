// SPDX-License-Identifier: AGPL-3.0-or-later
// Store::put's decisions (PROTOCOL §7 steps 6–7: duplicates, equivocation, chain checks, held
// events, revoked keys, the rejection caps and the Merkle log), written once for every store.
// Each store implements PutRows over its own rows and runs put_core::put inside its write
// transaction; what put decides never depends on which database keeps the rows.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/node/store.hpp>

namespace ingest::put_core {

/// A streams row: one (device, stream) with its counters (store.hpp's StreamStats says what
/// each one means).
struct StreamRow {
  std::int64_t row_id = 0;  ///< 0: no row yet (no event of it stored)
  std::int64_t first_seen_ms = 0;
  std::int64_t last_seen_ms = 0;
  std::int64_t contiguous = 0;
  std::int64_t max_seq = 0;
  std::int64_t events = 0;
  bool chain_broken = false;
  std::int64_t last_event = 0;  ///< events row of the stream's last stored event
};

/// A stored event's chain fields.
struct ChainLink {
  std::string hash;  ///< signing_input_sha256
  std::string prev;  ///< empty for seq 1
  std::int64_t recorded_ms = 0;
  std::int64_t row_id = 0;
};

/// Kept rows and envelope bytes of capped rejections.
struct CappedUsage {
  std::int64_t rows = 0;
  std::int64_t bytes = 0;
};

/// A new rejections row.
struct RejectionRow {
  std::int64_t received_ms = 0;
  std::string_view topic;
  std::string_view device;
  RejectReason reason = RejectReason::invalid_event;
  std::string_view detail;
  std::optional<std::string_view> stream;
  std::optional<std::int64_t> seq;
  std::string_view envelope;  ///< any bytes: kept exactly
  std::string_view envelope_sha256;
  bool capped = false;
};

/// The rows put() reads and writes, inside one write transaction the caller holds: a store's
/// tables behind one small interface. Each call is one statement (or a few); none commits.
/// Errors are returned (SqliteStore) or thrown (PostgresStore: put() then passes them through
/// untouched and the caller's transaction rolls back); put() holds no resource across calls
/// that an exception could leak. Not thread-safe: one put() at a time.
class PutRows {
 public:
  virtual ~PutRows() = default;

  /// The streams row of (device, stream), or nullopt.
  virtual Result<std::optional<StreamRow>> load_stream(const std::string& device,
                                                       const std::string& stream) = 0;
  /// Inserts an empty streams row first seen at `now_unix_ms`; returns its row id.
  virtual Result<std::int64_t> insert_stream(const std::string& device, const std::string& stream,
                                             std::int64_t now_unix_ms) = 0;
  /// Writes `row`'s counters back to its row (by row_id).
  virtual Status update_stream(const StreamRow& row) = 0;

  /// The stored event (device, stream, seq)'s chain fields, or nullopt.
  virtual Result<std::optional<ChainLink>> find_event(const std::string& device,
                                                      const std::string& stream,
                                                      std::int64_t seq) = 0;
  /// The highest seq n ≥ `from` such that from..n are all stored (`from` is).
  virtual Result<std::int64_t> contiguous_from(const std::string& device, const std::string& stream,
                                               std::int64_t from) = 0;
  /// The highest stored seq of the stream, 0 when none is.
  virtual Result<std::int64_t> max_seq(const std::string& device, const std::string& stream) = 0;
  /// Inserts `e` received at `now_unix_ms`; returns its events row id (ids follow insertion).
  virtual Result<std::int64_t> insert_event(const VerifiedEvent& e, std::int64_t now_unix_ms) = 0;
  /// Deletes events row `row_id` and returns its envelope.
  virtual Result<std::string> delete_event(std::int64_t row_id) = 0;

  /// When key `kid` was revoked; nullopt for a key not revoked or not known.
  virtual Result<std::optional<std::int64_t>> revoked_ms(const std::string& kid) = 0;
  /// Whether any key of `device` is in the registry.
  virtual Result<bool> device_registered(const std::string& device) = 0;

  /// Raises the count of the kept rejection of these bytes on `topic` (and sets its reason,
  /// detail and last-seen time); false when there is none.
  virtual Result<bool> repeat_rejection(std::string_view topic, std::string_view envelope_sha256,
                                        std::int64_t now_unix_ms, RejectReason reason,
                                        std::string_view detail) = 0;
  /// Capped rows kept for `device`, and for all devices.
  virtual Result<CappedUsage> capped_usage(const std::string& device) = 0;
  virtual Result<CappedUsage> capped_total() = 0;
  /// Counts a rejection the caps did not keep, under `device`.
  virtual Status count_not_kept(std::string_view device, RejectReason reason, std::int64_t bytes,
                                std::int64_t now_unix_ms) = 0;
  virtual Status insert_rejection(const RejectionRow& row) = 0;

  /// The log's size in leaves.
  virtual Result<std::uint64_t> log_size() = 0;
  virtual Status insert_log_leaf(std::uint64_t index, std::int64_t event_row,
                                 const agent::merkle::Hash& hash) = 0;
  /// Inserts the perfect subtree (level ≥ 1, index).
  virtual Status insert_log_node(unsigned level, std::uint64_t index,
                                 const agent::merkle::Hash& hash) = 0;
  /// The perfect subtree (level, index): a leaf hash at level 0; corruption when missing.
  virtual Result<agent::merkle::Hash> log_hash(unsigned level, std::uint64_t index) = 0;
};

/// Appends leaf `leaf` (of events row `event_row`) at `index`, the log's size, and every
/// perfect subtree it completes (RFC 9162 §2.1.1: a leaf with an odd index closes its pair, and
/// so on up).
Status log_append(PutRows& rows, std::uint64_t index, std::int64_t event_row,
                  const agent::merkle::Hash& leaf);

/// internal when an item holds both or neither of event and rejection (a caller's bug).
Status check_batch(std::span<const Incoming> batch);

/// Store::put's body (store.hpp documents the outcomes), over `rows` in the caller's write
/// transaction: one result per item, in order. An error leaves partial writes that the caller
/// must roll back.
Result<std::vector<PutResult>> put(PutRows& rows, std::span<const Incoming> batch,
                                   std::int64_t now_unix_ms, const RejectionLimits& limits);

}  // namespace ingest::put_core
