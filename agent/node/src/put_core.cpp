// SPDX-License-Identifier: AGPL-3.0-or-later
#include "put_core.hpp"

#include <algorithm>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/jose.hpp>
#include <reflow/core/units.hpp>

#include "store_rules.hpp"

namespace ingest::put_core {
namespace {

using agent::ErrorCode;
using agent::fail;
using store_rules::k_all_unauthenticated;
using store_rules::unauthenticated;

// A stream's row, loaded once per put() batch and written back at its end.
struct StreamState {
  StreamRow row;
  bool dirty = false;
  // The last event stored in this batch: in-order delivery finds its predecessor here.
  std::int64_t tail_seq = 0;
  std::string tail_hash;
  std::int64_t tail_recorded_ms = 0;
};

// One put() call: the rows it has read so far (another process or instance may share the
// database, so nothing outlives the transaction) and what it decides from them.
class Batch {
 public:
  Batch(PutRows& rows, const RejectionLimits& limits) : m_rows(rows), m_limits(limits) {}

  Result<PutResult> apply_rejection(const Rejection& r, std::int64_t now_unix_ms) {
    auto kept = keep_rejection(r.topic, r.device, r.reason, r.detail, r.stream, r.seq, r.envelope,
                               now_unix_ms);
    if (!kept) return std::unexpected(kept.error());
    return PutResult{PutOutcome::rejected, r.reason, r.detail, *kept};
  }

  Result<PutResult> apply_event(const VerifiedEvent& e, std::int64_t now_unix_ms) {
    auto loaded = stream_state(e.device, e.stream);
    if (!loaded) return std::unexpected(loaded.error());
    StreamState& st = **loaded;
    const bool known = st.row.row_id != 0;

    // §7.6: a seq above max_seq cannot be stored yet, so in-order delivery skips the lookup.
    if (known && e.seq <= st.row.max_seq) {
      auto stored = m_rows.find_event(e.device, e.stream, e.seq);
      if (!stored) return std::unexpected(stored.error());
      if (stored->has_value()) {
        // The signed bytes decide, not the envelope's JSON spacing: Ed25519 is deterministic,
        // so the same signing input is the same event.
        if ((*stored)->hash == e.signing_input_sha256)
          return PutResult{PutOutcome::duplicate, std::nullopt, {}};
        return reject_event(
            e, RejectReason::equivocation,
            fmt::format("seq {} of stream {} is already stored with different content (stored "
                        "signing input SHA-256 {}, this one {}); the first copy is kept",
                        e.seq, e.stream, (*stored)->hash, e.signing_input_sha256),
            now_unix_ms);
      }
    }

    auto revoked = revoked_ms(e.kid);
    if (!revoked) return std::unexpected(revoked.error());
    const bool revoked_key = revoked->has_value();

    // §7.7 backwards: the stored predecessor vouches for this event, and its `recorded` is not
    // later than this one's.
    if (known && e.seq > 1) {
      std::optional<ChainLink> predecessor;
      if (st.tail_seq == e.seq - 1) {
        predecessor = ChainLink{st.tail_hash, {}, st.tail_recorded_ms, 0};
      } else if (e.seq - 1 <= st.row.max_seq) {
        auto link = m_rows.find_event(e.device, e.stream, e.seq - 1);
        if (!link) return std::unexpected(link.error());
        predecessor = std::move(*link);
      }
      if (predecessor && predecessor->hash != e.prev) {
        mark_broken(st);
        return reject_event(e, RejectReason::chain_break,
                            fmt::format("prev {} of seq {} is not the SHA-256 of stored seq {}'s "
                                        "signing input ({}) in stream {}",
                                        e.prev, e.seq, e.seq - 1, predecessor->hash, e.stream),
                            now_unix_ms);
      }
      if (predecessor && e.recorded_unix_ms < predecessor->recorded_ms)
        return reject_event(
            e, RejectReason::recorded_backwards,
            fmt::format("recorded {} of seq {} is earlier than recorded {} of stored seq {} in "
                        "stream {}: `recorded` must not go backwards within a stream",
                        agent::format_rfc3339_ms(e.recorded_unix_ms), e.seq,
                        agent::format_rfc3339_ms(predecessor->recorded_ms), e.seq - 1, e.stream),
            now_unix_ms);
    }

    // §7.7 forwards: a successor stored first, across a gap, is held until this event decides
    // it. When it disagrees, it — not this event, which its own predecessor (if any) has just
    // accepted — is the wrong one: it goes to the rejections. A revoked key never displaces.
    bool vouched = false;
    std::string displaced;
    if (known && e.seq < st.row.max_seq) {
      auto link = m_rows.find_event(e.device, e.stream, e.seq + 1);
      if (!link) return std::unexpected(link.error());
      if (link->has_value()) {
        const ChainLink& next = **link;
        std::optional<RejectReason> conflict;
        std::string why;
        if (next.prev != e.signing_input_sha256) {
          conflict = RejectReason::chain_break;
          why = fmt::format(
              "prev {} of seq {} is not the SHA-256 of seq {}'s signing input ({}) "
              "in stream {}",
              next.prev, e.seq + 1, e.seq, e.signing_input_sha256, e.stream);
        } else if (next.recorded_ms < e.recorded_unix_ms) {
          conflict = RejectReason::recorded_backwards;
          why = fmt::format(
              "recorded {} of seq {} is earlier than recorded {} of seq {} in "
              "stream {}: `recorded` must not go backwards within a stream",
              agent::format_rfc3339_ms(next.recorded_ms), e.seq + 1,
              agent::format_rfc3339_ms(e.recorded_unix_ms), e.seq, e.stream);
        }
        if (!conflict) {
          vouched = true;
        } else if (revoked_key) {
          return reject_event(
              e, RejectReason::key_revoked,
              fmt::format("kid {} was revoked at {}, and stored seq {} does not "
                          "vouch for this seq {}: {}",
                          e.kid, agent::format_rfc3339_ms(**revoked), e.seq + 1, e.seq, why),
              now_unix_ms);
        } else {
          if (*conflict == RejectReason::chain_break) mark_broken(st);
          if (auto s = displace(st, e, next, *conflict, why, now_unix_ms); !s)
            return std::unexpected(s.error());
          displaced = fmt::format("held seq {} moved to the rejections ({}): {}", e.seq + 1,
                                  to_string(*conflict), why);
        }
      }
    }

    // Revocation goes by what the node had, not by the device's clock: after it, the key may
    // only fill a gap below a stored event whose `prev` binds this one.
    if (revoked_key && !vouched)
      return reject_event(
          e, RejectReason::key_revoked,
          fmt::format("kid {} was revoked at {}; since then only an event that fills a gap below "
                      "a stored event whose prev is its hash is stored, and seq {} of stream {} "
                      "is not one (no seq {} stored)",
                      e.kid, agent::format_rfc3339_ms(**revoked), e.seq, e.stream, e.seq + 1),
          now_unix_ms);

    if (!known) {
      auto id = m_rows.insert_stream(e.device, e.stream, now_unix_ms);
      if (!id) return std::unexpected(id.error());
      st.row.row_id = *id;
      st.row.first_seen_ms = now_unix_ms;
      st.row.last_seen_ms = now_unix_ms;
    }
    auto rowid = m_rows.insert_event(e, now_unix_ms);
    if (!rowid) return std::unexpected(rowid.error());
    if (auto s = log_append(*rowid, agent::merkle::leaf_hash(e.envelope)); !s)
      return std::unexpected(s.error());

    const std::int64_t old_max = st.row.max_seq;
    st.row.events += 1;
    st.row.max_seq = std::max(st.row.max_seq, e.seq);
    st.row.last_seen_ms = now_unix_ms;
    st.row.last_event = *rowid;
    st.tail_seq = e.seq;
    st.tail_hash = e.signing_input_sha256;
    st.tail_recorded_ms = e.recorded_unix_ms;
    if (e.seq == st.row.contiguous + 1) {
      st.row.contiguous = e.seq;
      // Filling a gap: the events stored beyond it now count too.
      if (e.seq < old_max) {
        auto reach = m_rows.contiguous_from(e.device, e.stream, e.seq);
        if (!reach) return std::unexpected(reach.error());
        st.row.contiguous = *reach;
      }
    }
    mark_dirty(st);
    return PutResult{PutOutcome::stored, std::nullopt, std::move(displaced)};
  }

  // Writes back every stream row this batch changed.
  Status flush_streams() {
    for (const StreamState* st : m_dirty) {
      if (auto s = m_rows.update_stream(st->row); !s) return s;
    }
    return {};
  }

 private:
  Result<PutResult> reject_event(const VerifiedEvent& e, RejectReason reason, std::string detail,
                                 std::int64_t now_unix_ms) {
    auto kept =
        keep_rejection(e.topic, e.device, reason, detail, e.stream, e.seq, e.envelope, now_unix_ms);
    if (!kept) return std::unexpected(kept.error());
    return PutResult{PutOutcome::rejected, reason, std::move(detail), *kept};
  }

  Status log_append(std::int64_t event_row, const agent::merkle::Hash& leaf) {
    if (!m_log_size) {
      auto n = m_rows.log_size();
      if (!n) return std::unexpected(n.error());
      m_log_size = *n;
    }
    if (auto s = put_core::log_append(m_rows, *m_log_size, event_row, leaf); !s) return s;
    *m_log_size += 1;
    return {};
  }

  // Moves the held event `next` (seq e.seq + 1, never confirmed: e.seq was not stored) from the
  // events to the rejections.
  Status displace(StreamState& st, const VerifiedEvent& e, const ChainLink& next,
                  RejectReason reason, const std::string& why, std::int64_t now_unix_ms) {
    auto envelope = m_rows.delete_event(next.row_id);
    if (!envelope) return std::unexpected(envelope.error());
    const std::string detail = fmt::format(
        "held until seq {} arrived, which decided it: {}; the agent's own seq {} is accepted when "
        "resent",
        e.seq, why, e.seq + 1);
    auto kept = keep_rejection(e.topic, e.device, reason, detail, e.stream, e.seq + 1, *envelope,
                               now_unix_ms);
    if (!kept) return std::unexpected(kept.error());
    st.row.events -= 1;
    if (st.tail_seq == e.seq + 1) st.tail_seq = 0;
    if (e.seq + 1 == st.row.max_seq) {
      auto max = m_rows.max_seq(e.device, e.stream);
      if (!max) return std::unexpected(max.error());
      st.row.max_seq = *max;
    }
    mark_dirty(st);
    return {};
  }

  void mark_dirty(StreamState& st) {
    if (!st.dirty) {
      st.dirty = true;
      m_dirty.push_back(&st);
    }
  }

  void mark_broken(StreamState& st) {
    st.row.chain_broken = true;
    mark_dirty(st);
  }

  Result<StreamState*> stream_state(const std::string& device, const std::string& stream) {
    std::string key;
    key.reserve(device.size() + 1 + stream.size());
    key.append(device).push_back('\0');
    key.append(stream);
    auto it = m_streams.find(key);
    if (it != m_streams.end()) return &it->second;
    auto loaded = m_rows.load_stream(device, stream);
    if (!loaded) return std::unexpected(loaded.error());
    StreamState st;
    if (*loaded) st.row = **loaded;
    // unordered_map never moves its elements, so the pointers in m_dirty stay valid.
    return &m_streams.emplace(std::move(key), std::move(st)).first->second;
  }

  Result<std::optional<std::int64_t>> revoked_ms(const std::string& kid) {
    if (auto it = m_revoked.find(kid); it != m_revoked.end()) return it->second;
    auto revoked = m_rows.revoked_ms(kid);
    if (!revoked) return std::unexpected(revoked.error());
    m_revoked.emplace(kid, *revoked);
    return *revoked;
  }

  // Keeps one rejection: a repeat of a kept envelope on the same topic raises its row's count;
  // a new one from an unauthenticated sender over its cap (RejectionLimits) is only counted.
  Result<RejectionKept> keep_rejection(std::string_view topic, std::string_view device,
                                       RejectReason reason, std::string_view detail,
                                       const std::optional<std::string>& stream,
                                       std::optional<std::int64_t> seq, std::string_view envelope,
                                       std::int64_t now_unix_ms) {
    const std::string hash = agent::sha256_b64url(envelope);
    auto repeated = m_rows.repeat_rejection(topic, hash, now_unix_ms, reason, detail);
    if (!repeated) return std::unexpected(repeated.error());
    if (*repeated) return RejectionKept::repeat;

    bool capped = unauthenticated(reason);
    if (!capped) {
      auto registered = device_registered(std::string(device));
      if (!registered) return std::unexpected(registered.error());
      capped = !*registered;
    }
    const auto size = static_cast<std::int64_t>(envelope.size());
    CappedUsage* usage = nullptr;
    CappedUsage* total = nullptr;
    if (capped) {
      auto u = capped_usage(std::string(device));
      if (!u) return std::unexpected(u.error());
      usage = *u;
      auto t = capped_total();
      if (!t) return std::unexpected(t.error());
      total = *t;
      const bool over_total =
          total->rows >= m_limits.rows_total || total->bytes + size > m_limits.bytes_total;
      const bool over_device = usage->rows >= m_limits.rows_per_device ||
                               usage->bytes + size > m_limits.bytes_per_device;
      if (over_total || over_device) {
        if (auto s = m_rows.count_not_kept(over_total ? k_all_unauthenticated : device, reason,
                                           size, now_unix_ms);
            !s)
          return std::unexpected(s.error());
        return RejectionKept::counted;
      }
    }

    const std::optional<std::string_view> stream_view =
        stream ? std::optional<std::string_view>(*stream) : std::nullopt;
    if (auto s = m_rows.insert_rejection(RejectionRow{now_unix_ms, topic, device, reason, detail,
                                                      stream_view, seq, envelope, hash, capped});
        !s)
      return std::unexpected(s.error());
    if (capped) {
      usage->rows += 1;
      usage->bytes += size;
      total->rows += 1;
      total->bytes += size;
    }
    return RejectionKept::new_row;
  }

  Result<bool> device_registered(const std::string& device) {
    if (auto it = m_registered.find(device); it != m_registered.end()) return it->second;
    auto registered = m_rows.device_registered(device);
    if (!registered) return std::unexpected(registered.error());
    m_registered.emplace(device, *registered);
    return *registered;
  }

  // Loaded once per batch (another process may share the database), then kept up to date.
  Result<CappedUsage*> capped_usage(const std::string& device) {
    if (auto it = m_capped.find(device); it != m_capped.end()) return &it->second;
    auto usage = m_rows.capped_usage(device);
    if (!usage) return std::unexpected(usage.error());
    return &m_capped.emplace(device, *usage).first->second;
  }

  Result<CappedUsage*> capped_total() {
    if (m_capped_total) return &*m_capped_total;
    auto total = m_rows.capped_total();
    if (!total) return std::unexpected(total.error());
    m_capped_total = *total;
    return &*m_capped_total;
  }

  PutRows& m_rows;
  const RejectionLimits& m_limits;
  std::unordered_map<std::string, StreamState> m_streams;
  std::vector<StreamState*> m_dirty;
  std::unordered_map<std::string, std::optional<std::int64_t>> m_revoked;  ///< by kid
  std::unordered_map<std::string, bool> m_registered;                      ///< by device
  std::unordered_map<std::string, CappedUsage> m_capped;                   ///< by device
  std::optional<CappedUsage> m_capped_total;
  std::optional<std::uint64_t> m_log_size;  ///< the log's size, read at the batch's first event
};

}  // namespace

Status log_append(PutRows& rows, std::uint64_t index, std::int64_t event_row,
                  const agent::merkle::Hash& leaf) {
  if (auto s = rows.insert_log_leaf(index, event_row, leaf); !s) return s;
  agent::merkle::Hash hash = leaf;
  std::uint64_t at = index;
  for (unsigned level = 0; (at & 1U) != 0; ++level, at >>= 1U) {
    auto left = rows.log_hash(level, at - 1);
    if (!left) return std::unexpected(left.error());
    hash = agent::merkle::node_hash(*left, hash);
    if (auto s = rows.insert_log_node(level + 1, at >> 1U, hash); !s) return s;
  }
  return {};
}

Status check_batch(std::span<const Incoming> batch) {
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].event.has_value() == batch[i].rejection.has_value())
      return fail(ErrorCode::internal,
                  fmt::format("put: batch item {} must hold exactly one of event or rejection", i));
  }
  return {};
}

Result<std::vector<PutResult>> put(PutRows& rows, std::span<const Incoming> batch,
                                   std::int64_t now_unix_ms, const RejectionLimits& limits) {
  std::vector<PutResult> results;
  results.reserve(batch.size());
  Batch state(rows, limits);
  for (const Incoming& item : batch) {
    Result<PutResult> r = item.event ? state.apply_event(*item.event, now_unix_ms)
                                     : state.apply_rejection(*item.rejection, now_unix_ms);
    if (!r) return std::unexpected(r.error());
    results.push_back(std::move(*r));
  }
  if (auto s = state.flush_streams(); !s) return std::unexpected(s.error());
  return results;
}

}  // namespace ingest::put_core
