// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/store.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <mutex>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/units.hpp>

#include "pq_support.hpp"
#include "put_core.hpp"
#include "store_rules.hpp"

namespace ingest {
namespace {

using agent::ErrorCode;
using agent::fail;
using store_rules::reason_from_name;
using store_rules::saturating_add;

using pq::Bytes;
using pq::run;

// Version 1 of the PostgreSQL schema holds what version 5 of the SQLite store holds (its
// comments in sqlite_store.cpp say why each column is there). Rows are numbered by identity
// columns; writers serialize on k_write_lock, so those numbers follow commit order.
constexpr std::int64_t k_schema_version = 1;
using pq::k_write_lock;

constexpr const char* k_schema_sql =
    "CREATE TABLE reflow_meta(name TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE keys("
    " kid TEXT PRIMARY KEY,"
    " device TEXT NOT NULL,"
    " x TEXT NOT NULL,"
    " added_ms BIGINT NOT NULL,"
    " revoked_ms BIGINT);"
    "CREATE INDEX keys_device ON keys(device, added_ms);"
    "CREATE TABLE streams("
    " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " device TEXT NOT NULL,"
    " stream TEXT NOT NULL,"
    " first_seen_ms BIGINT NOT NULL,"
    " last_seen_ms BIGINT NOT NULL,"
    " contiguous BIGINT NOT NULL,"
    " max_seq BIGINT NOT NULL,"
    " events BIGINT NOT NULL,"
    " chain_broken BOOLEAN NOT NULL DEFAULT false,"
    " last_event BIGINT NOT NULL,"
    " UNIQUE(device, stream));"
    "CREATE INDEX streams_order ON streams(device, first_seen_ms, id);"
    "CREATE INDEX streams_last_event ON streams(device, last_event);"
    "CREATE TABLE events("
    " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " device TEXT NOT NULL,"
    " stream TEXT NOT NULL,"
    " seq BIGINT NOT NULL,"
    " recorded_ms BIGINT NOT NULL,"
    " received_ms BIGINT NOT NULL,"
    " action TEXT NOT NULL,"
    " signing_input_sha256 TEXT NOT NULL,"
    " prev TEXT,"
    " event_id TEXT NOT NULL,"
    " kid TEXT NOT NULL,"
    " envelope TEXT NOT NULL,"
    " UNIQUE(device, stream, seq));"
    "CREATE INDEX events_recorded ON events(recorded_ms);"
    "CREATE INDEX events_action ON events(action, recorded_ms);"
    "CREATE INDEX events_event_id ON events(event_id);"
    "CREATE TABLE rejections("
    " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " received_ms BIGINT NOT NULL,"
    " topic TEXT NOT NULL,"
    " device TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " detail TEXT NOT NULL,"
    " stream TEXT,"
    " seq BIGINT,"
    " envelope BYTEA NOT NULL,"
    " last_seen_ms BIGINT NOT NULL,"
    " count BIGINT NOT NULL,"
    " envelope_sha256 TEXT NOT NULL,"
    " capped BOOLEAN NOT NULL,"
    " UNIQUE(topic, envelope_sha256));"
    "CREATE INDEX rejections_device ON rejections(device);"
    "CREATE INDEX rejections_capped ON rejections(capped, device);"
    "CREATE TABLE rejections_not_kept("
    " device TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " count BIGINT NOT NULL,"
    " bytes BIGINT NOT NULL,"
    " last_seen_ms BIGINT NOT NULL,"
    " PRIMARY KEY(device, reason));"
    "CREATE TABLE log_leaves("
    " idx BIGINT PRIMARY KEY,"
    " event BIGINT NOT NULL,"
    " hash BYTEA NOT NULL);"
    "CREATE INDEX log_leaves_event ON log_leaves(event);"
    "CREATE TABLE log_nodes("
    " level INTEGER NOT NULL,"
    " idx BIGINT NOT NULL,"
    " hash BYTEA NOT NULL,"
    " PRIMARY KEY(level, idx));"
    "CREATE TABLE export_ledger("
    " server TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " ref TEXT NOT NULL,"
    " recorded BOOLEAN NOT NULL,"
    " server_id TEXT,"
    " note TEXT NOT NULL,"
    " event_id TEXT NOT NULL,"
    " creates TEXT NOT NULL,"
    " intent_ms BIGINT NOT NULL,"
    " recorded_ms BIGINT,"
    " PRIMARY KEY(server, kind, ref));";

// The url as it may be shown: without a password in its user info.
std::string shown_url(std::string_view url) {
  const auto scheme = url.find("://");
  if (scheme == url.npos) return std::string(url);
  const auto at = url.find('@', scheme + 3);
  const auto slash = url.find('/', scheme + 3);
  if (at == url.npos || (slash != url.npos && slash < at)) return std::string(url);
  const auto colon = url.find(':', scheme + 3);
  if (colon == url.npos || colon > at) return std::string(url);
  return fmt::format("{}:***{}", url.substr(0, colon), url.substr(at));
}

// RFC 3986 percent-encoding of everything but unreserved characters.
std::string percent_encode(std::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) != 0 || c == '-' || c == '.' || c == '_' || c == '~')
      out.push_back(static_cast<char>(c));
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

// A connection used under its mutex only; opened again after the server went away.
struct Connection {
  std::mutex mutex;
  std::unique_ptr<pqxx::connection> db;
};

// Thrown inside a transaction body for an outcome the caller maps to an Error (not a bug).
struct Refused {
  agent::Error error;
};

class PostgresStore final : public Store {
 public:
  PostgresStore(std::string conninfo, std::string shown, const RejectionLimits& limits,
                StoreOpen mode)
      : m_conninfo(std::move(conninfo)),
        m_shown(std::move(shown)),
        m_limits(limits),
        m_mode(mode) {}

  Status open() {
    return guarded(m_writer, "preparing the schema", [&] { prepare_schema(); });
  }

  // --- device registry ---

  Status add_device(std::string_view device, const agent::PublicJwk& jwk,
                    std::int64_t now_unix_ms) override {
    if (!agent::is_valid_device_id(device))
      return fail(ErrorCode::invalid_argument,
                  fmt::format("device id \"{}\": expected ^[a-z0-9][a-z0-9._-]{{0,63}}$ "
                              "(PROTOCOL §1)",
                              device));
    return write_tx("adding a device key", [&](pqxx::work& tx) {
      auto existing = find_key_in(tx, jwk.kid);
      if (existing) {
        if (existing->device != device)
          throw Refused{agent::Error{
              ErrorCode::rejected,
              fmt::format("kid {} already belongs to device \"{}\"; a key signs for one "
                          "device only: generate a new key for \"{}\"",
                          jwk.kid, existing->device, device)}};
        if (existing->revoked_unix_ms)
          throw Refused{agent::Error{
              ErrorCode::rejected,
              fmt::format("kid {} of device \"{}\" was revoked at {}; a revoked key "
                          "cannot be added again: generate a new key",
                          jwk.kid, device, agent::format_rfc3339_ms(*existing->revoked_unix_ms))}};
        return;
      }
      run(tx, "INSERT INTO keys(kid, device, x, added_ms) VALUES ($1, $2, $3, $4)", jwk.kid, device,
          agent::base64url_encode(jwk.x), now_unix_ms);
    });
  }

  Status revoke_device(std::string_view device, std::int64_t now_unix_ms) override {
    return write_tx("revoking a device", [&](pqxx::work& tx) {
      auto keys = run(tx, "SELECT count(*) FROM keys WHERE device = $1", device);
      if (keys[0][0].as<std::int64_t>() == 0)
        throw Refused{
            agent::Error{ErrorCode::not_found,
                         fmt::format("device \"{}\" has no key in the registry; see `reflow-ingest "
                                     "device list`",
                                     device)}};
      run(tx, "UPDATE keys SET revoked_ms = $2 WHERE device = $1 AND revoked_ms IS NULL", device,
          now_unix_ms);
    });
  }

  Result<std::optional<DeviceKeyRecord>> find_key(std::string_view kid) override {
    std::optional<DeviceKeyRecord> out;
    auto s = read_tx(m_keys, "looking up a key",
                     [&](pqxx::transaction_base& tx) { out = find_key_in(tx, kid); });
    if (!s) return std::unexpected(s.error());
    return out;
  }

  Result<std::vector<DeviceKeyRecord>> list_keys() override {
    std::vector<DeviceKeyRecord> out;
    auto s = read_tx(m_reader, "listing device keys", [&](pqxx::transaction_base& tx) {
      for (const auto& row : run(tx,
                                 "SELECT kid, device, x, added_ms, revoked_ms FROM keys "
                                 "ORDER BY device, added_ms, kid"))
        out.push_back(key_from_row(row, row[0].as<std::string>(), 1));
    });
    if (!s) return std::unexpected(s.error());
    return out;
  }

  // --- ingest ---

  Result<std::vector<PutResult>> put(std::span<const Incoming> batch,
                                     std::int64_t now_unix_ms) override {
    if (auto s = put_core::check_batch(batch); !s) return std::unexpected(s.error());
    std::vector<PutResult> results;
    auto s = write_tx("storing a batch", [&](pqxx::work& tx) {
      Rows rows(*this, tx);
      auto stored = put_core::put(rows, batch, now_unix_ms, m_limits);
      if (!stored) throw Refused{stored.error()};
      results = std::move(*stored);
    });
    if (!s) return std::unexpected(s.error());
    return results;
  }

  Result<std::optional<AckPoint>> ack_point(std::string_view device) override {
    std::optional<AckPoint> out;
    auto s = read_tx(m_writer, "reading the ack point", [&](pqxx::transaction_base& tx) {
      auto r = run(tx,
                   "SELECT stream, contiguous FROM streams WHERE device = $1 "
                   "ORDER BY last_event DESC LIMIT 1",
                   device);
      if (!r.empty()) out = AckPoint{r[0][0].as<std::string>(), r[0][1].as<std::int64_t>()};
    });
    if (!s) return std::unexpected(s.error());
    return out;
  }

  // --- queries ---

  Status for_each_event(const EventFilter& filter,
                        const std::function<bool(const StoredEvent&)>& fn) override {
    return read_tx(m_reader, "querying events", [&](pqxx::transaction_base& tx) {
      std::string sql =
          "SELECT e.device, e.stream, e.seq, e.event_id, e.action, e.kid, e.recorded_ms, "
          "e.received_ms, e.envelope FROM streams s JOIN events e "
          "ON e.device = s.device AND e.stream = s.stream WHERE e.seq <= s.contiguous";
      if (filter.device) sql += " AND s.device = " + tx.quote(*filter.device);
      if (filter.since_unix_ms)
        sql += fmt::format(" AND e.recorded_ms >= {}", *filter.since_unix_ms);
      if (filter.action) sql += " AND e.action = " + tx.quote(*filter.action);
      if (filter.until_unix_ms)
        sql += fmt::format(" AND e.recorded_ms < {}", *filter.until_unix_ms);
      // Keyset paging: the row value of the order below, compared with the cursor's (none
      // when the cursor's stream is not stored: the comparison is then NULL).
      if (filter.after)
        sql += fmt::format(
            " AND (s.device, s.first_seen_ms, s.id, e.seq) > (SELECT c.device, c.first_seen_ms, "
            "c.id, {} FROM streams c WHERE c.device = {} AND c.stream = {})",
            filter.after->seq, tx.quote(filter.after->device), tx.quote(filter.after->stream));
      sql += " ORDER BY s.device, s.first_seen_ms, s.id, e.seq";
      StoredEvent event;
      for (const auto& row : tx.exec(sql)) {
        event.device = row[0].as<std::string>();
        event.stream = row[1].as<std::string>();
        event.seq = row[2].as<std::int64_t>();
        event.id = row[3].as<std::string>();
        event.action = row[4].as<std::string>();
        event.kid = row[5].as<std::string>();
        event.recorded_unix_ms = row[6].as<std::int64_t>();
        event.received_unix_ms = row[7].as<std::int64_t>();
        event.envelope = row[8].as<std::string>();
        auto parsed = agent::jws_parse(event.envelope);
        if (!parsed)
          throw Refused{
              agent::Error{ErrorCode::corruption,
                           fmt::format("ingest store {}: event {}/{}/{}: {}", m_shown, event.device,
                                       event.stream, event.seq, parsed.error().message)}};
        event.payload = std::move(parsed->payload);
        if (!fn(event)) return;
      }
    });
  }

  Status for_each_rejection(std::optional<std::string_view> device,
                            const std::function<bool(const StoredRejection&)>& fn) override {
    return read_tx(m_reader, "querying rejections", [&](pqxx::transaction_base& tx) {
      std::string sql =
          "SELECT device, topic, reason, detail, stream, seq, received_ms, envelope, "
          "last_seen_ms, count FROM rejections";
      if (device) sql += " WHERE device = " + tx.quote(std::string(*device));
      sql += " ORDER BY id";
      StoredRejection rejection;
      for (const auto& row : tx.exec(sql)) {
        rejection.device = row[0].as<std::string>();
        rejection.topic = row[1].as<std::string>();
        const auto reason = row[2].as<std::string>();
        auto parsed = reason_from_name(reason);
        if (!parsed)
          throw Refused{
              agent::Error{ErrorCode::corruption,
                           fmt::format("ingest store {}: rejection with unknown reason \"{}\"",
                                       m_shown, reason)}};
        rejection.reason = *parsed;
        rejection.detail = row[3].as<std::string>();
        rejection.stream = optional_text(row[4]);
        rejection.seq = optional_int(row[5]);
        rejection.received_unix_ms = row[6].as<std::int64_t>();
        rejection.envelope = pqxx::binarystring(row[7]).str();
        rejection.last_seen_unix_ms = row[8].as<std::int64_t>();
        rejection.count = row[9].as<std::int64_t>();
        if (!fn(rejection)) return;
      }
    });
  }

  Result<std::vector<DeviceStats>> stats() override {
    std::map<std::string, DeviceStats> devices;
    auto device_entry = [&](const std::string& id) -> DeviceStats& {
      DeviceStats& d = devices[id];
      d.device = id;
      return d;
    };
    auto bump_seen = [](DeviceStats& d, std::int64_t ms) {
      if (!d.last_seen_unix_ms || ms > *d.last_seen_unix_ms) d.last_seen_unix_ms = ms;
    };
    auto s = read_tx(m_reader, "reading statistics", [&](pqxx::transaction_base& tx) {
      for (const auto& row :
           run(tx, "SELECT device, count(*), count(revoked_ms) FROM keys GROUP BY device")) {
        DeviceStats& d = device_entry(row[0].as<std::string>());
        d.registered = true;
        d.revoked = row[1].as<std::int64_t>() == row[2].as<std::int64_t>();
      }
      for (const auto& row :
           run(tx,
               "SELECT device, stream, events, contiguous, max_seq, chain_broken, "
               "first_seen_ms, last_seen_ms FROM streams ORDER BY device, first_seen_ms, id")) {
        DeviceStats& d = device_entry(row[0].as<std::string>());
        StreamStats st;
        st.stream = row[1].as<std::string>();
        st.events = row[2].as<std::int64_t>();
        st.contiguous = row[3].as<std::int64_t>();
        st.max_seq = row[4].as<std::int64_t>();
        st.gaps = std::max<std::int64_t>(0, st.max_seq - st.events);
        st.chain_intact = !row[5].as<bool>();
        st.first_seen_unix_ms = row[6].as<std::int64_t>();
        st.last_seen_unix_ms = row[7].as<std::int64_t>();
        d.events += st.events;
        d.gaps = saturating_add(d.gaps, st.gaps);
        d.chain_intact = d.chain_intact && st.chain_intact;
        bump_seen(d, st.last_seen_unix_ms);
        d.streams.push_back(std::move(st));
      }
      for (const auto& row :
           run(tx,
               "WITH registered AS (SELECT device, min(added_ms) AS at FROM keys GROUP BY device) "
               "SELECT r.device, r.reason, sum(r.count)::BIGINT, max(r.last_seen_ms), false, "
               " coalesce(r.last_seen_ms < g.at, false) AS before "
               "FROM rejections r LEFT JOIN registered g ON g.device = r.device "
               "GROUP BY r.device, r.reason, before "
               "UNION ALL SELECT n.device, n.reason, n.count, n.last_seen_ms, true, "
               " coalesce(n.last_seen_ms < g.at, false) "
               "FROM rejections_not_kept n LEFT JOIN registered g ON g.device = n.device")) {
        DeviceStats& d = device_entry(row[0].as<std::string>());
        const auto count = row[2].as<std::int64_t>();
        auto& counts = row[5].as<bool>() ? d.rejections_before_registration : d.rejections;
        std::int64_t& by_reason = counts[row[1].as<std::string>()];
        by_reason = saturating_add(by_reason, count);
        if (row[4].as<bool>()) d.rejections_not_kept = saturating_add(d.rejections_not_kept, count);
        bump_seen(d, row[3].as<std::int64_t>());
      }
    });
    if (!s) return std::unexpected(s.error());
    std::vector<DeviceStats> out;
    out.reserve(devices.size());
    for (auto& [name, d] : devices)
      out.push_back(std::move(d));
    return out;
  }

  // --- the verifiable log ---

  Result<LogCheckpoint> log_checkpoint() override {
    LogCheckpoint out;
    auto s = read_tx(m_reader, "reading the log", [&](pqxx::transaction_base& tx) {
      out.size = log_size(tx);
      out.root = agent::merkle::root(out.size, lookup(tx));
    });
    if (!s) return std::unexpected(s.error());
    return out;
  }

  Result<LogCheckpoint> log_checkpoint_at(std::uint64_t size) override {
    LogCheckpoint out;
    auto s = read_tx(m_reader, "reading the log", [&](pqxx::transaction_base& tx) {
      check_size(size, log_size(tx));
      out.size = size;
      out.root = agent::merkle::root(size, lookup(tx));
    });
    if (!s) return std::unexpected(s.error());
    return out;
  }

  Result<std::vector<LogEntry>> log_entries(std::string_view event_id) override {
    std::vector<LogEntry> out;
    auto s = read_tx(m_reader, "reading the log", [&](pqxx::transaction_base& tx) {
      for (const auto& row : run(tx,
                                 "SELECT l.idx, l.hash, e.device, e.stream, e.seq FROM events e "
                                 "JOIN log_leaves l ON l.event = e.id WHERE e.event_id = $1 "
                                 "ORDER BY l.idx",
                                 event_id)) {
        LogEntry entry;
        entry.index = row[0].as<std::uint64_t>();
        entry.leaf = hash_of(row[1], fmt::format("leaf {}", entry.index));
        entry.device = row[2].as<std::string>();
        entry.stream = row[3].as<std::string>();
        entry.seq = row[4].as<std::int64_t>();
        out.push_back(std::move(entry));
      }
    });
    if (!s) return std::unexpected(s.error());
    return out;
  }

  Result<std::optional<LogInclusion>> log_inclusion(std::string_view device,
                                                    std::string_view stream,
                                                    std::int64_t seq) override {
    std::optional<LogInclusion> out;
    auto s = read_tx(m_reader, "reading the log", [&](pqxx::transaction_base& tx) {
      auto r = run(tx,
                   "SELECT l.idx, l.hash FROM events e JOIN log_leaves l ON l.event = e.id "
                   "WHERE e.device = $1 AND e.stream = $2 AND e.seq = $3 ORDER BY l.idx LIMIT 1",
                   device, stream, seq);
      if (r.empty()) return;
      LogInclusion inclusion;
      inclusion.entry.index = r[0][0].as<std::uint64_t>();
      inclusion.entry.leaf = hash_of(r[0][1], fmt::format("leaf {}", inclusion.entry.index));
      inclusion.entry.device = std::string(device);
      inclusion.entry.stream = std::string(stream);
      inclusion.entry.seq = seq;
      inclusion.checkpoint.size = log_size(tx);
      const auto tree = lookup(tx);
      inclusion.checkpoint.root = agent::merkle::root(inclusion.checkpoint.size, tree);
      inclusion.proof = proven(
          agent::merkle::inclusion_proof(inclusion.entry.index, inclusion.checkpoint.size, tree));
      out = std::move(inclusion);
    });
    if (!s) return std::unexpected(s.error());
    return out;
  }

  Result<std::vector<agent::merkle::Hash>> log_inclusion_proof(std::uint64_t index,
                                                               std::uint64_t size) override {
    std::vector<agent::merkle::Hash> out;
    auto s = read_tx(m_reader, "reading the log", [&](pqxx::transaction_base& tx) {
      check_size(size, log_size(tx));
      out = proven(agent::merkle::inclusion_proof(index, size, lookup(tx)));
    });
    if (!s) return std::unexpected(s.error());
    return out;
  }

  Result<std::vector<agent::merkle::Hash>> log_consistency_proof(std::uint64_t old_size,
                                                                 std::uint64_t size) override {
    std::vector<agent::merkle::Hash> out;
    auto s = read_tx(m_reader, "reading the log", [&](pqxx::transaction_base& tx) {
      check_size(size, log_size(tx));
      out = proven(agent::merkle::consistency_proof(old_size, size, lookup(tx)));
    });
    if (!s) return std::unexpected(s.error());
    return out;
  }

  // --- the export ledger ---

  Result<std::vector<LedgerEntry>> ledger_entries(std::string_view server) override {
    std::vector<LedgerEntry> out;
    auto s = read_tx(m_writer, "reading the export ledger", [&](pqxx::transaction_base& tx) {
      for (const auto& row : run(tx,
                                 "SELECT kind, ref, recorded, server_id, note, event_id, creates, "
                                 "intent_ms, recorded_ms FROM export_ledger WHERE server = $1 "
                                 "ORDER BY kind, ref",
                                 server)) {
        LedgerEntry e;
        e.server = std::string(server);
        const auto kind = row[0].as<std::string>();
        e.kind = kind == "process"    ? LedgerKind::process
                 : kind == "resource" ? LedgerKind::resource
                                      : LedgerKind::event;
        e.ref = row[1].as<std::string>();
        e.recorded = row[2].as<bool>();
        e.server_id = optional_text(row[3]).value_or("");
        e.note = row[4].as<std::string>();
        e.event_id = row[5].as<std::string>();
        e.creates = row[6].as<std::string>();
        e.intent_unix_ms = row[7].as<std::int64_t>();
        e.recorded_unix_ms = optional_int(row[8]).value_or(0);
        out.push_back(std::move(e));
      }
    });
    if (!s) return std::unexpected(s.error());
    return out;
  }

  Status ledger_intent(const LedgerEntry& entry, std::int64_t now_unix_ms) override {
    return write_tx("writing an export intent", [&](pqxx::work& tx) {
      if (!ledger_insert(tx, entry.server, entry.kind, entry.ref, false, "", entry.note,
                         entry.event_id, entry.creates, now_unix_ms))
        throw Refused{agent::Error{
            ErrorCode::rejected,
            fmt::format("ingest store {}: the export ledger already holds {} {} for {} "
                        "(is another `export --post` running?)",
                        m_shown, to_string(entry.kind), entry.ref, entry.server)}};
    });
  }

  Status ledger_record(std::string_view server, LedgerKind kind, std::string_view ref,
                       std::string_view server_id, std::string_view created_resource_id,
                       std::int64_t now_unix_ms) override {
    return write_tx("recording an export answer", [&](pqxx::work& tx) {
      auto r = run(tx,
                   "UPDATE export_ledger SET recorded = true, server_id = $4, recorded_ms = $5 "
                   "WHERE server = $1 AND kind = $2 AND ref = $3 AND NOT recorded "
                   "RETURNING creates, event_id",
                   server, to_string(kind), ref, server_id, now_unix_ms);
      if (r.empty()) throw Refused{no_intent(server, kind, ref)};
      const auto creates = r[0][0].as<std::string>();
      const auto event_id = r[0][1].as<std::string>();
      if (created_resource_id.empty() || creates.empty()) return;
      // A resource the ledger already holds keeps its first id (as SqliteStore).
      ledger_insert(tx, server, LedgerKind::resource, creates, true, created_resource_id, "",
                    event_id, "", now_unix_ms);
    });
  }

  Status ledger_forget(std::string_view server, LedgerKind kind, std::string_view ref) override {
    return write_tx("dropping an export intent", [&](pqxx::work& tx) {
      auto r = run(tx,
                   "DELETE FROM export_ledger WHERE server = $1 AND kind = $2 AND ref = $3 "
                   "AND NOT recorded",
                   server, to_string(kind), ref);
      if (r.affected_rows() == 0) throw Refused{no_intent(server, kind, ref)};
    });
  }

 private:
  agent::Error no_intent(std::string_view server, LedgerKind kind, std::string_view ref) const {
    return agent::Error{ErrorCode::not_found,
                        fmt::format("ingest store {}: no export intent for {} {} at {}", m_shown,
                                    to_string(kind), ref, server)};
  }

  // Inserts one export_ledger row; false when (server, kind, ref) is already there.
  static bool ledger_insert(pqxx::work& tx, std::string_view server, LedgerKind kind,
                            std::string_view ref, bool recorded, std::string_view server_id,
                            std::string_view note, std::string_view event_id,
                            std::string_view creates, std::int64_t now_ms) {
    auto r =
        run(tx,
            "INSERT INTO export_ledger(server, kind, ref, recorded, server_id, note, "
            "event_id, creates, intent_ms, recorded_ms) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
            "ON CONFLICT (server, kind, ref) DO NOTHING",
            server, to_string(kind), ref, recorded,
            recorded ? std::optional<std::string_view>(server_id) : std::nullopt, note, event_id,
            creates, now_ms, recorded ? std::optional<std::int64_t>(now_ms) : std::nullopt);
    return r.affected_rows() == 1;
  }

  // --- put ---

  // put_core's rows, inside put()'s transaction `tx`. libpqxx throws, and so do these: the
  // exceptions pass through put_core::put to guarded(), which rolls the transaction back.
  class Rows final : public put_core::PutRows {
   public:
    Rows(PostgresStore& store, pqxx::work& tx) : m_store(store), m_tx(tx) {}

    Result<std::optional<put_core::StreamRow>> load_stream(const std::string& device,
                                                           const std::string& stream) override {
      auto r = run(m_tx,
                   "SELECT id, first_seen_ms, last_seen_ms, contiguous, max_seq, events, "
                   "chain_broken, last_event FROM streams WHERE device = $1 AND stream = $2",
                   device, stream);
      if (r.empty()) return std::nullopt;
      return put_core::StreamRow{r[0][0].as<std::int64_t>(), r[0][1].as<std::int64_t>(),
                                 r[0][2].as<std::int64_t>(), r[0][3].as<std::int64_t>(),
                                 r[0][4].as<std::int64_t>(), r[0][5].as<std::int64_t>(),
                                 r[0][6].as<bool>(),         r[0][7].as<std::int64_t>()};
    }

    Result<std::int64_t> insert_stream(const std::string& device, const std::string& stream,
                                       std::int64_t now_unix_ms) override {
      return run(m_tx,
                 "INSERT INTO streams(device, stream, first_seen_ms, last_seen_ms, contiguous, "
                 "max_seq, events, chain_broken, last_event) "
                 "VALUES ($1, $2, $3, $3, 0, 0, 0, false, 0) RETURNING id",
                 device, stream, now_unix_ms)[0][0]
          .as<std::int64_t>();
    }

    Status update_stream(const put_core::StreamRow& st) override {
      run(m_tx,
          "UPDATE streams SET last_seen_ms = $2, contiguous = $3, max_seq = $4, events = $5, "
          "chain_broken = $6, last_event = $7 WHERE id = $1",
          st.row_id, st.last_seen_ms, st.contiguous, st.max_seq, st.events, st.chain_broken,
          st.last_event);
      return {};
    }

    Result<std::optional<put_core::ChainLink>> find_event(const std::string& device,
                                                          const std::string& stream,
                                                          std::int64_t seq) override {
      auto r = run(m_tx,
                   "SELECT signing_input_sha256, coalesce(prev, ''), recorded_ms, id FROM events "
                   "WHERE device = $1 AND stream = $2 AND seq = $3",
                   device, stream, seq);
      if (r.empty()) return std::nullopt;
      return put_core::ChainLink{r[0][0].as<std::string>(), r[0][1].as<std::string>(),
                                 r[0][2].as<std::int64_t>(), r[0][3].as<std::int64_t>()};
    }

    Result<std::int64_t> contiguous_from(const std::string& device, const std::string& stream,
                                         std::int64_t from) override {
      std::int64_t reach = from;
      for (const auto& row : run(m_tx,
                                 "SELECT seq FROM events WHERE device = $1 AND stream = $2 "
                                 "AND seq > $3 ORDER BY seq",
                                 device, stream, from)) {
        if (row[0].as<std::int64_t>() != reach + 1) break;
        ++reach;
      }
      return reach;
    }

    Result<std::int64_t> max_seq(const std::string& device, const std::string& stream) override {
      return run(m_tx, "SELECT coalesce(max(seq), 0) FROM events WHERE device = $1 AND stream = $2",
                 device, stream)[0][0]
          .as<std::int64_t>();
    }

    Result<std::int64_t> insert_event(const VerifiedEvent& e, std::int64_t now_unix_ms) override {
      return run(m_tx,
                 "INSERT INTO events(device, stream, seq, recorded_ms, received_ms, action, "
                 "signing_input_sha256, prev, event_id, kid, envelope) "
                 "VALUES ($1, $2, $3, $4, $5, $6, $7, NULLIF($8, ''), $9, $10, $11) "
                 "RETURNING id",
                 e.device, e.stream, e.seq, e.recorded_unix_ms, now_unix_ms, e.action,
                 e.signing_input_sha256, e.prev, e.id, e.kid, e.envelope)[0][0]
          .as<std::int64_t>();
    }

    Result<std::string> delete_event(std::int64_t row_id) override {
      return run(m_tx, "DELETE FROM events WHERE id = $1 RETURNING envelope", row_id)
          .at(0)[0]
          .as<std::string>();
    }

    Result<std::optional<std::int64_t>> revoked_ms(const std::string& kid) override {
      auto key = m_store.find_key_in(m_tx, kid);
      if (!key) return std::nullopt;
      return key->revoked_unix_ms;
    }

    Result<bool> device_registered(const std::string& device) override {
      return !run(m_tx, "SELECT 1 FROM keys WHERE device = $1 LIMIT 1", device).empty();
    }

    Result<bool> repeat_rejection(std::string_view topic, std::string_view envelope_sha256,
                                  std::int64_t now_unix_ms, RejectReason reason,
                                  std::string_view detail) override {
      return run(m_tx,
                 "UPDATE rejections SET count = count + 1, last_seen_ms = $3, reason = $4, "
                 "detail = $5 WHERE topic = $1 AND envelope_sha256 = $2",
                 topic, envelope_sha256, now_unix_ms, to_string(reason), detail)
                 .affected_rows() > 0;
    }

    Result<put_core::CappedUsage> capped_usage(const std::string& device) override {
      return usage_of(run(m_tx,
                          "SELECT count(*), coalesce(sum(octet_length(envelope)), 0)::BIGINT "
                          "FROM rejections WHERE capped AND device = $1",
                          device));
    }

    Result<put_core::CappedUsage> capped_total() override {
      return usage_of(run(m_tx,
                          "SELECT count(*), coalesce(sum(octet_length(envelope)), 0)::BIGINT "
                          "FROM rejections WHERE capped"));
    }

    Status count_not_kept(std::string_view device, RejectReason reason, std::int64_t bytes,
                          std::int64_t now_unix_ms) override {
      run(m_tx,
          "INSERT INTO rejections_not_kept(device, reason, count, bytes, last_seen_ms) "
          "VALUES ($1, $2, 1, $3, $4) ON CONFLICT (device, reason) DO UPDATE SET "
          "count = rejections_not_kept.count + 1, "
          "bytes = rejections_not_kept.bytes + excluded.bytes, "
          "last_seen_ms = excluded.last_seen_ms",
          device, to_string(reason), bytes, now_unix_ms);
      return {};
    }

    Status insert_rejection(const put_core::RejectionRow& r) override {
      run(m_tx,
          "INSERT INTO rejections(received_ms, topic, device, reason, detail, stream, seq, "
          "envelope, last_seen_ms, count, envelope_sha256, capped) "
          "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $1, 1, $9, $10)",
          r.received_ms, r.topic, r.device, to_string(r.reason), r.detail, r.stream, r.seq,
          Bytes{r.envelope}, r.envelope_sha256, r.capped);
      return {};
    }

    Result<std::uint64_t> log_size() override { return PostgresStore::log_size(m_tx); }

    Status insert_log_leaf(std::uint64_t index, std::int64_t event_row,
                           const agent::merkle::Hash& hash) override {
      run(m_tx, "INSERT INTO log_leaves(idx, event, hash) VALUES ($1, $2, $3)",
          static_cast<std::int64_t>(index), event_row, Bytes{hash_view(hash)});
      return {};
    }

    Status insert_log_node(unsigned level, std::uint64_t index,
                           const agent::merkle::Hash& hash) override {
      run(m_tx, "INSERT INTO log_nodes(level, idx, hash) VALUES ($1, $2, $3)", std::int64_t{level},
          static_cast<std::int64_t>(index), Bytes{hash_view(hash)});
      return {};
    }

    Result<agent::merkle::Hash> log_hash(unsigned level, std::uint64_t index) override {
      return m_store.log_hash(m_tx, level, index);
    }

   private:
    static put_core::CappedUsage usage_of(const pqxx::result& r) {
      return put_core::CappedUsage{r[0][0].as<std::int64_t>(), r[0][1].as<std::int64_t>()};
    }

    PostgresStore& m_store;
    pqxx::work& m_tx;
  };

  // --- the log ---

  static std::string_view hash_view(const agent::merkle::Hash& hash) {
    return {reinterpret_cast<const char*>(hash.data()), hash.size()};
  }

  static std::uint64_t log_size(pqxx::transaction_base& tx) {
    return tx.exec("SELECT coalesce(max(idx) + 1, 0) FROM log_leaves")[0][0].as<std::uint64_t>();
  }

  agent::merkle::Hash log_hash(pqxx::transaction_base& tx, unsigned level, std::uint64_t index) {
    const auto at = static_cast<std::int64_t>(index);
    auto r = level == 0 ? run(tx, "SELECT hash FROM log_leaves WHERE idx = $1", at)
                        : run(tx, "SELECT hash FROM log_nodes WHERE level = $1 AND idx = $2",
                              std::int64_t{level}, at);
    if (r.empty())
      throw Refused{
          agent::Error{ErrorCode::corruption,
                       fmt::format("ingest store {}: the log has no hash for subtree ({}, {})",
                                   m_shown, level, index)}};
    return hash_of(r[0][0], fmt::format("subtree ({}, {})", level, index));
  }

  // The log's subtrees as read by `tx` (one snapshot); a missing one throws Refused.
  agent::merkle::PerfectSubtree lookup(pqxx::transaction_base& tx) {
    return [this, &tx](unsigned level, std::uint64_t index) { return log_hash(tx, level, index); };
  }

  static std::vector<agent::merkle::Hash> proven(Result<std::vector<agent::merkle::Hash>> proof) {
    if (!proof) throw Refused{proof.error()};
    return std::move(*proof);
  }

  void check_size(std::uint64_t size, std::uint64_t log_size) const {
    if (size > log_size)
      throw Refused{agent::Error{
          ErrorCode::invalid_argument,
          fmt::format("the log has {} leaves; there is no tree of {}", log_size, size)}};
  }

  agent::merkle::Hash hash_of(const pqxx::field& field, std::string_view what) const {
    const pqxx::binarystring bytes(field);
    agent::merkle::Hash hash{};
    if (bytes.size() != hash.size())
      throw Refused{agent::Error{
          ErrorCode::corruption,
          fmt::format("ingest store {}: the log's hash for {} is not 32 bytes", m_shown, what)}};
    std::memcpy(hash.data(), bytes.data(), hash.size());
    return hash;
  }

  // --- the registry ---

  std::optional<DeviceKeyRecord> find_key_in(pqxx::transaction_base& tx, std::string_view kid) {
    auto r = run(tx, "SELECT device, x, added_ms, revoked_ms FROM keys WHERE kid = $1", kid);
    if (r.empty()) return std::nullopt;
    return key_from_row(r[0], std::string(kid), 0);
  }

  DeviceKeyRecord key_from_row(const pqxx::row& row, std::string kid, int first) {
    DeviceKeyRecord record;
    record.device = row[first].as<std::string>();
    const auto x = row[first + 1].as<std::string>();
    auto bytes = agent::base64url_decode(x);
    if (!bytes || bytes->size() != record.jwk.x.size())
      throw Refused{agent::Error{
          ErrorCode::corruption,
          fmt::format("ingest store {}: key {} of device \"{}\" has a damaged public key \"{}\"",
                      m_shown, kid, record.device, x)}};
    std::memcpy(record.jwk.x.data(), bytes->data(), record.jwk.x.size());
    record.jwk.kid = std::move(kid);
    record.added_unix_ms = row[first + 2].as<std::int64_t>();
    record.revoked_unix_ms = optional_int(row[first + 3]);
    return record;
  }

  static std::optional<std::string> optional_text(const pqxx::field& f) {
    if (f.is_null()) return std::nullopt;
    return f.as<std::string>();
  }
  static std::optional<std::int64_t> optional_int(const pqxx::field& f) {
    if (f.is_null()) return std::nullopt;
    return f.as<std::int64_t>();
  }

  // --- the schema ---

  void prepare_schema() {
    pqxx::work tx(*m_writer.db);
    tx.exec("SELECT pg_advisory_xact_lock(" + std::to_string(k_write_lock) + ")");
    const bool ours = !tx.exec("SELECT to_regclass('reflow_meta')")[0][0].is_null();
    if (!ours) {
      const auto tables = tx.exec(
                                "SELECT count(*) FROM pg_tables WHERE schemaname = "
                                "current_schema()")[0][0]
                              .as<std::int64_t>();
      if (tables != 0)
        throw Refused{agent::Error{
            ErrorCode::corruption,
            fmt::format("ingest store {}: not a reflow-ingest database ({} tables, none of them "
                        "reflow_meta); point [store] url at a database of its own",
                        m_shown, tables)}};
      if (m_mode == StoreOpen::existing_only)
        throw Refused{agent::Error{
            ErrorCode::not_found,
            fmt::format("no store at {}: has `reflow-ingest run` ever run with this config?",
                        m_shown)}};
      tx.exec(k_schema_sql);
      run(tx,
          "INSERT INTO reflow_meta(name, value) VALUES ('application', 'reflow-ingest'), "
          "('schema_version', $1)",
          std::to_string(k_schema_version));
      tx.commit();
      return;
    }
    auto version = tx.exec("SELECT value FROM reflow_meta WHERE name = 'schema_version'");
    const auto found = version.empty() ? std::string() : version[0][0].as<std::string>();
    if (found != std::to_string(k_schema_version)) {
      // Later versions migrate from older ones here, as the SQLite store does.
      throw Refused{agent::Error{
          ErrorCode::corruption,
          fmt::format("ingest store {}: schema version \"{}\" is not the one this reflow-ingest "
                      "knows ({}); upgrade reflow-ingest",
                      m_shown, found, k_schema_version)}};
    }
    tx.commit();
  }

  // --- running statements ---

  // Connects `c` when it is not (first use, or the server went away since).
  void connect(Connection& c) {
    if (c.db && c.db->is_open()) return;
    c.db = std::make_unique<pqxx::connection>(m_conninfo);
  }

  // Runs `body` on `c` under its mutex, turning what it throws into an Error that names `what`.
  template <typename Body>
  Status guarded(Connection& c, std::string_view what, Body&& body) {
    std::lock_guard lock(c.mutex);
    try {
      connect(c);
      body();
      return {};
    } catch (const Refused& refused) {
      return std::unexpected(refused.error);
    } catch (const pqxx::broken_connection& e) {
      c.db.reset();
      return fail(ErrorCode::io, fmt::format("ingest store {}: {}: cannot reach the database: {}",
                                             m_shown, what, first_line(e.what())));
    } catch (const pqxx::sql_error& e) {
      const std::string& state = e.sqlstate();
      const ErrorCode code = state == "53100" ? ErrorCode::no_space : ErrorCode::io;
      return fail(code, fmt::format("ingest store {}: {}: {} (SQLSTATE {})", m_shown, what,
                                    first_line(e.what()), state));
    } catch (const std::exception& e) {
      if (c.db && !c.db->is_open()) c.db.reset();
      return fail(ErrorCode::io,
                  fmt::format("ingest store {}: {}: {}", m_shown, what, first_line(e.what())));
    }
  }

  static std::string first_line(std::string_view text) {
    return std::string(text.substr(0, text.find('\n')));
  }

  // One writing transaction on the writer connection, committed before it returns; it first
  // takes k_write_lock, so writers of every instance sharing the database take turns.
  template <typename Body>
  Status write_tx(std::string_view what, Body&& body) {
    return guarded(m_writer, what, [&] {
      pqxx::work tx(*m_writer.db);
      tx.exec("SELECT pg_advisory_xact_lock(" + std::to_string(k_write_lock) + ")");
      body(tx);
      tx.commit();
    });
  }

  // One read-only transaction on `c`: what it reads is one snapshot (REPEATABLE READ).
  template <typename Body>
  Status read_tx(Connection& c, std::string_view what, Body&& body) {
    return guarded(c, what, [&] {
      pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(*c.db);
      body(tx);
      tx.commit();
    });
  }

  std::string m_conninfo;  ///< may hold the password: never shown
  std::string m_shown;     ///< the url without its password, for messages
  RejectionLimits m_limits;
  StoreOpen m_mode;
  Connection m_writer;  ///< put, the registry's writes, ack_point, the ledger
  Connection m_reader;  ///< queries, the log
  Connection m_keys;    ///< find_key only
};

}  // namespace

namespace pq {

Result<Target> target(std::string_view url, const std::filesystem::path& password_file) {
  Target out{std::string(url), shown_url(url)};
  if (password_file.empty()) return out;
  std::ifstream in(password_file);
  std::string password;
  if (!in || !std::getline(in, password))
    return fail(ErrorCode::invalid_config,
                fmt::format("cannot read the database password from {} ([store] "
                            "password_file): check that it exists and is readable",
                            password_file.string()));
  if (!password.empty() && password.back() == '\r') password.pop_back();
  out.conninfo +=
      fmt::format("{}password={}", out.conninfo.find('?') == std::string::npos ? '?' : '&',
                  percent_encode(password));
  return out;
}

}  // namespace pq

Result<std::unique_ptr<Store>> open_postgres_store(std::string_view url,
                                                   const std::filesystem::path& password_file,
                                                   const RejectionLimits& limits, StoreOpen mode) {
  auto where = pq::target(url, password_file);
  if (!where) return std::unexpected(where.error());
  auto store = std::make_unique<PostgresStore>(std::move(where->conninfo), std::move(where->shown),
                                               limits, mode);
  if (auto s = store->open(); !s) return std::unexpected(s.error());
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace ingest
