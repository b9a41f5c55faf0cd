// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/outbox.hpp>

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/core/units.hpp>

#include <reflow/core/sqlite.hpp>

namespace agent {
namespace {

namespace fs = std::filesystem;
using sqlite::column_text;
using sqlite::DbPtr;
using sqlite::prepare;
using sqlite::run;
using sqlite::StmtPtr;

constexpr std::int64_t k_page_cache_kib = 512;
constexpr std::int64_t k_schema_version = 2;
constexpr int k_busy_timeout_ms = 5000;
// After a checkpoint SQLite truncates the WAL to this size, so a burst does not leave a large WAL
// behind on a small SD card (file_bytes counts it).
constexpr std::int64_t k_journal_size_limit_bytes = 16 * 1024 * 1024;
// An ack is pruned in transactions of about this many envelope bytes: a transaction writes every
// page it changes into the WAL before SQLite can checkpoint it, so pruning a week's backlog at
// once would need as much free disk as the backlog, exactly when the disk is full.
constexpr std::uint64_t k_prune_chunk_bytes = 1024 * 1024;

// Schema 2. The chain head and the ack live in the `events` rows, so that an append and a prune
// each change only the `events` leaf they write (one 4 KiB page per transaction for a device
// whose events are acked as they come, instead of two with a `meta` row: tests/bench/README.md):
// - a batch's last row carries the chain head after it (`head_hash`, `floor_ms`); the last row
//   of the table is always the last of a batch, so it holds the head;
// - a prune deletes the acked rows but keeps the last row, marked `acked = 1` when the ack
//   covers it, so the head survives; the next append deletes it. Rows below the lowest one left
//   are acked, so the acked seq is the lowest seq − 1, or the last seq when that row is marked.
// `meta` keeps the device, the stream and the head and ack as of the file's creation or its
// migration from schema 1 (lower bounds of the real ones, used while `events` is empty).
constexpr const char* k_schema_sql =
    "CREATE TABLE meta("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " schema_version INTEGER NOT NULL,"
    " device_id TEXT NOT NULL,"
    " stream TEXT NOT NULL,"
    " last_seq INTEGER NOT NULL,"
    " last_hash TEXT NOT NULL,"
    " recorded_floor_ms INTEGER NOT NULL,"
    " acked_seq INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL);"
    "CREATE TABLE events("
    " seq INTEGER PRIMARY KEY,"
    " id TEXT NOT NULL,"
    " recorded_ms INTEGER NOT NULL,"
    " envelope BLOB NOT NULL,"
    " head_hash TEXT,"
    " floor_ms INTEGER,"
    " acked INTEGER);";

// Schema 1 → 2: the head and ack of schema 1's meta row stay valid as lower bounds; the new
// columns are NULL in the existing rows, whose head is then meta's (inspect() checks it).
constexpr const char* k_migrate_1_to_2_sql =
    "ALTER TABLE events ADD COLUMN head_hash TEXT;"
    "ALTER TABLE events ADD COLUMN floor_ms INTEGER;"
    "ALTER TABLE events ADD COLUMN acked INTEGER;"
    "UPDATE meta SET schema_version = 2 WHERE id = 1;";

// After an ack that leaves no backlog the file is shrunk when at least this much can be given
// back (free pages, or WAL beyond it): shrinking costs a checkpoint and an fsync, which an SD card
// should not pay at every ack of a node that keeps up.
constexpr std::uint64_t k_shrink_threshold_bytes = 1024 * 1024;

bool is_full(int rc) {
  return (rc & 0xff) == SQLITE_FULL;
}

// Errors that come from what is in the file rather than from the system: these quarantine.
// SQLITE_ERROR covers "no such table/column", i.e. a schema this agent does not know.
bool is_content_error(int rc) {
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
    case SQLITE_FORMAT:
    case SQLITE_ERROR:
    case SQLITE_MISMATCH:
      return true;
    default:
      return rc == SQLITE_IOERR_SHORT_READ;
  }
}

std::string utc_stamp(std::int64_t unix_ms) {
  const UtcTime t = utc_from_unix_ms(unix_ms);
  return fmt::format("{:04}{:02}{:02}T{:02}{:02}{:02}Z", t.year, t.month, t.day, t.hour, t.minute,
                     t.second);
}

fs::path with_suffix(const fs::path& path, std::string_view suffix) {
  fs::path out = path;
  out += std::string(suffix);
  return out;
}

// Makes renames durable: without it a power cut can bring the old name back.
void sync_directory(const fs::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// The start of an envelope as the writer serialises it (Jws::to_envelope, PROTOCOL §3).
constexpr std::string_view k_envelope_start = R"({"protected":")";

// An envelope that verified with the device's key, with the stream and seq of its payload.
struct VerifiedEnvelope {
  std::string stream;
  OutboxEvent event;
};

std::optional<VerifiedEnvelope> verified_envelope(std::string_view envelope, const PublicJwk& key) {
  auto parsed = jws_verify(envelope, key);
  if (!parsed) return std::nullopt;
  auto payload = nlohmann::json::parse(parsed->payload, nullptr, false);
  if (payload.is_discarded() || !payload.is_object()) return std::nullopt;
  auto stream = payload.find("stream");
  auto seq = payload.find("seq");
  if (stream == payload.end() || !stream->is_string() || seq == payload.end() ||
      !seq->is_number_integer() || seq->get<std::int64_t>() < 1)
    return std::nullopt;
  VerifiedEnvelope out;
  out.stream = stream->get<std::string>();
  out.event.seq = seq->get<std::int64_t>();
  if (auto id = payload.find("id"); id != payload.end() && id->is_string())
    out.event.id = id->get<std::string>();
  if (auto recorded = payload.find("recorded"); recorded != payload.end() && recorded->is_string())
    if (auto ms = parse_rfc3339(recorded->get<std::string>())) out.event.recorded_unix_ms = *ms;
  out.event.envelope = std::string(envelope);
  return out;
}

// The (stream, seq) a damaged envelope's payload still names. The payload may be cut anywhere,
// so the longest base64url prefix that decodes is searched for the two members as the writer
// puts them (make_event_payload: `"stream":"…","seq":N`). Nothing read here is trusted; it only
// tells whether the event was recovered from another copy.
std::optional<std::pair<std::string, std::int64_t>> payload_position(std::string_view candidate) {
  constexpr std::string_view k_payload = R"("payload":")";
  const std::size_t at = candidate.find(k_payload);
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view b64 = candidate.substr(at + k_payload.size());
  std::size_t length = 0;
  while (length < b64.size() && (std::isalnum(static_cast<unsigned char>(b64[length])) ||
                                 b64[length] == '-' || b64[length] == '_'))
    ++length;
  auto text = base64url_decode(b64.substr(0, length - length % 4));
  if (!text) return std::nullopt;
  constexpr std::string_view k_stream = R"("stream":")";
  constexpr std::string_view k_seq = R"("seq":)";
  const std::size_t s_at = text->find(k_stream);
  const std::size_t q_at = text->find(k_seq);
  if (s_at == std::string::npos || q_at == std::string::npos) return std::nullopt;
  const std::size_t s_from = s_at + k_stream.size();
  const std::size_t s_to = text->find('"', s_from);
  if (s_to == std::string::npos) return std::nullopt;
  std::int64_t seq = 0;
  const char* first = text->data() + q_at + k_seq.size();
  const char* last = text->data() + text->size();
  auto [end, ec] = std::from_chars(first, last, seq);
  if (ec != std::errc() || end == last) return std::nullopt;  // the number may be cut
  return std::pair{text->substr(s_from, s_to - s_from), seq};
}

// What an outbox file records about its stream, read-only and best effort (a damaged file may
// answer only part): meta's, raised by what schema 2's rows say (k_schema_sql).
struct FileMarks {
  std::optional<std::string> stream;
  std::optional<std::int64_t> last_seq;
  std::int64_t acked_seq = 0;
};

FileMarks file_marks(sqlite3* db) {
  FileMarks out;
  StmtPtr meta;
  if (prepare(db, "SELECT stream, last_seq, acked_seq FROM meta WHERE id = 1", meta) == SQLITE_OK &&
      sqlite3_step(meta.get()) == SQLITE_ROW) {
    out.stream = column_text(meta.get(), 0);
    out.last_seq = sqlite3_column_int64(meta.get(), 1);
    out.acked_seq = sqlite3_column_int64(meta.get(), 2);
  }
  // Rows below the lowest one are pruned; a last row marked acked is acked (schema 1 has no
  // `acked` column: the second query then fails and meta's ack stands, which schema 1 keeps
  // current).
  StmtPtr range;
  if (prepare(db, "SELECT min(seq), max(seq) FROM events", range) == SQLITE_OK &&
      sqlite3_step(range.get()) == SQLITE_ROW &&
      sqlite3_column_type(range.get(), 0) != SQLITE_NULL) {
    const std::int64_t lo = sqlite3_column_int64(range.get(), 0);
    const std::int64_t hi = sqlite3_column_int64(range.get(), 1);
    out.last_seq = std::max(out.last_seq.value_or(hi), hi);
    out.acked_seq = std::max(out.acked_seq, lo - 1);
    StmtPtr last;
    if (prepare(db, "SELECT acked FROM events WHERE seq = ?1", last) == SQLITE_OK) {
      sqlite3_bind_int64(last.get(), 1, hi);
      if (sqlite3_step(last.get()) == SQLITE_ROW && sqlite3_column_int64(last.get(), 0) == 1)
        out.acked_seq = std::max(out.acked_seq, hi);
    }
  }
  return out;
}

// The verdict on an existing file.
struct Inspection {
  enum class Kind { usable, blank, damaged } kind = Kind::usable;
  std::string reason;  ///< for damaged
};

}  // namespace

std::optional<std::uint64_t> statvfs_free_bytes(const std::filesystem::path& dir) {
  struct statvfs st {};
  if (::statvfs(dir.empty() ? "." : dir.c_str(), &st) != 0) return std::nullopt;
  return static_cast<std::uint64_t>(st.f_bavail) * static_cast<std::uint64_t>(st.f_frsize);
}

struct Outbox::Impl {
  OutboxOptions options;
  Logger* log = nullptr;
  std::uint64_t refused_disk = 0;
  bool reserve_held = false;

  fs::path data_dir() const { return options.path.parent_path(); }
  fs::path reserve_path() const { return with_suffix(options.path, ".reserve"); }

  std::optional<std::uint64_t> free_bytes() const {
    return options.free_space ? options.free_space(data_dir()) : statvfs_free_bytes(data_dir());
  }

  // Room the disk leaves for a batch's envelopes: each is written twice (WAL, then database).
  std::optional<std::uint64_t> disk_room(const std::optional<std::uint64_t>& free) const {
    if (!free) return std::nullopt;
    return *free > options.min_free_bytes ? (*free - options.min_free_bytes) / 2 : 0;
  }

  std::string disk_refusal(const std::optional<std::uint64_t>& free, std::uint64_t needed) const {
    return fmt::format(
        "disk nearly full: the file system of {} has {} free; new events need {} kept free "
        "(outbox.min_free) plus {} for this submission. Refused until space is freed; acks and "
        "pruning still work, so events are accepted again as the node acknowledges",
        data_dir().string(), free ? format_size(*free) : std::string("?"),
        format_size(options.min_free_bytes), format_size(2 * needed));
  }

  std::string quota_refusal() const {
    return fmt::format(
        "outbox quota full: {} unacked events ({}) of {}; new events are refused until the node "
        "acknowledges (is the broker reachable?)",
        head.last_seq - acked_seq, format_size(backlog_bytes), format_size(options.quota_bytes));
  }

  // Puts the reserve file in place when it is missing and there is room for it beyond min_free.
  void ensure_reserve() {
    if (options.reserve_bytes == 0 || reserve_held) return;
    const fs::path path = reserve_path();
    std::error_code ec;
    if (fs::file_size(path, ec) >= options.reserve_bytes && !ec) {
      reserve_held = true;
      return;
    }
    auto free = free_bytes();
    if (!free || *free < options.min_free_bytes + options.reserve_bytes) return;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) return;
    // posix_fallocate takes the blocks now (writing zeros would too, slower): a sparse file
    // would give nothing back when deleted.
    int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(options.reserve_bytes));
    if (rc == 0 && ::fsync(fd) != 0) rc = errno;
    ::close(fd);
    if (rc != 0) {
      fs::remove(path, ec);
      log->warning("outbox", "cannot make the reserve file {} ({}): {}; retrying later",
                   path.string(), format_size(options.reserve_bytes), std::strerror(rc));
      return;
    }
    reserve_held = true;
    log->info("outbox", "reserve file {} ({}) in place", path.string(),
              format_size(options.reserve_bytes));
  }

  // Gives the reserve's blocks back to the file system; returns its size, 0 when there was none.
  std::uint64_t release_reserve() {
    std::error_code ec;
    const std::uintmax_t size = fs::file_size(reserve_path(), ec);
    const bool removed = !ec && fs::remove(reserve_path(), ec);
    reserve_held = false;
    if (!removed) return 0;
    sync_directory(data_dir());
    return std::max<std::uint64_t>(size, 1);
  }

  // With no backlog left, gives free pages and the WAL back to the file system.
  void shrink() {
    sqlite3* d = db.get();
    std::int64_t free_pages = 0, page_size = 0, auto_vacuum = 0;
    if (query_int("PRAGMA freelist_count", free_pages) != SQLITE_OK ||
        query_int("PRAGMA page_size", page_size) != SQLITE_OK ||
        query_int("PRAGMA auto_vacuum", auto_vacuum) != SQLITE_OK)
      return;
    std::error_code ec;
    const std::uintmax_t wal = fs::file_size(with_suffix(options.path, "-wal"), ec);
    const std::uint64_t reclaimable = static_cast<std::uint64_t>(free_pages * page_size);
    if (reclaimable < k_shrink_threshold_bytes && (ec || wal < k_shrink_threshold_bytes)) return;
    int rc = SQLITE_OK;
    if (reclaimable >= k_shrink_threshold_bytes) {
      // An outbox made before auto_vacuum was set: one VACUUM converts it; with no backlog left
      // it copies only the meta row.
      rc =
          auto_vacuum == 0
              ? sqlite3_exec(d, "PRAGMA auto_vacuum=INCREMENTAL; VACUUM", nullptr, nullptr, nullptr)
              : sqlite3_exec(d, "PRAGMA incremental_vacuum", nullptr, nullptr, nullptr);
      if (rc != SQLITE_OK)
        log->warning("outbox", "shrinking {}: {}", path_text(), sqlite::error_detail(d, rc));
    }
    // TRUNCATE also empties the WAL file; a reader (export) makes it give up, which is harmless.
    rc = sqlite3_wal_checkpoint_v2(d, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
      log->warning("outbox", "checkpointing {}: {}", path_text(), sqlite::error_detail(d, rc));
  }

  // With durability full, prunes commit with synchronous=NORMAL (see apply_ack); true while the
  // connection is in that state, which no append may commit in.
  bool sync_lowered = false;

  // Not prepared statements: SQLite applies `PRAGMA synchronous=…` when it compiles it, so
  // preparing both once would leave the connection at whichever came last.
  int lower_sync() {
    if (options.durability != Durability::full) return SQLITE_OK;
    const int rc = sqlite3_exec(db.get(), "PRAGMA synchronous=NORMAL", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) sync_lowered = true;
    return rc;
  }

  int restore_sync() {
    if (!sync_lowered) return SQLITE_OK;
    const int rc = sqlite3_exec(db.get(), "PRAGMA synchronous=FULL", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) sync_lowered = false;
    return rc;
  }

  mutable std::mutex mutex;
  DbPtr db;  // declared before the statements so it is closed after they are finalized
  StmtPtr begin, commit, rollback, insert_event, select_from, sum_after, scan_lengths, delete_upto,
      mark_acked, oldest_after;

  ChainHead head;
  std::int64_t acked_seq = 0;
  std::uint64_t backlog_bytes = 0;
  std::optional<std::int64_t> oldest_unacked_ms;
  std::uint64_t refused_quota = 0;
  std::uint64_t refused_io = 0;
  std::optional<std::string> quarantined;

  std::string path_text() const { return options.path.string(); }

  int prepare_all() {
    // The node's verified log (PROTOCOL §5.1) lives beside meta, not in it, so an outbox made
    // before it keeps its schema version and older agents still open the file.
    if (int rc = sqlite3_exec(db.get(),
                              "CREATE TABLE IF NOT EXISTS node_log("
                              " id INTEGER PRIMARY KEY CHECK (id = 1),"
                              " tree_size INTEGER NOT NULL,"
                              " root BLOB NOT NULL,"
                              " consistency_seen INTEGER NOT NULL DEFAULT 0)",
                              nullptr, nullptr, nullptr);
        rc != SQLITE_OK)
      return rc;
    // The events a verified signed ack covered (PROTOCOL §5.1), kept after pruning for
    // `reflow-agent audit`; beside meta for the same reason as node_log.
    if (int rc = sqlite3_exec(db.get(),
                              "CREATE TABLE IF NOT EXISTS acked_leaves("
                              " seq INTEGER PRIMARY KEY,"
                              " id TEXT NOT NULL,"
                              " leaf BLOB NOT NULL,"
                              " leaf_index INTEGER)",
                              nullptr, nullptr, nullptr);
        rc != SQLITE_OK)
      return rc;
    // A node_log made before consistency_seen: the column is added (an error here means it is
    // there already; a real one shows in node_sends_consistency() reading false).
    sqlite3_exec(db.get(),
                 "ALTER TABLE node_log ADD COLUMN consistency_seen INTEGER NOT NULL DEFAULT 0",
                 nullptr, nullptr, nullptr);
    // Kept for the connection's life.
    auto prepare = [d = db.get()](const char* sql, StmtPtr& out) {
      return sqlite::prepare(d, sql, out, SQLITE_PREPARE_PERSISTENT);
    };
    int rc;
    if ((rc = prepare("BEGIN IMMEDIATE", begin)) != SQLITE_OK) return rc;
    if ((rc = prepare("COMMIT", commit)) != SQLITE_OK) return rc;
    if ((rc = prepare("ROLLBACK", rollback)) != SQLITE_OK) return rc;
    if ((rc = prepare("INSERT INTO events(seq, id, recorded_ms, envelope, head_hash, floor_ms) "
                      "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                      insert_event)) != SQLITE_OK)
      return rc;
    if ((rc = prepare("SELECT seq, id, recorded_ms, envelope FROM events WHERE seq >= ?1 "
                      "ORDER BY seq LIMIT ?2",
                      select_from)) != SQLITE_OK)
      return rc;
    // length() of a BLOB column is read from the record header, without loading the envelope.
    if ((rc = prepare("SELECT COALESCE(SUM(length(envelope)), 0) FROM events WHERE seq > ?1",
                      sum_after)) != SQLITE_OK)
      return rc;
    if ((rc = prepare("SELECT seq, length(envelope) FROM events WHERE seq > ?1 AND seq <= ?2 "
                      "ORDER BY seq",
                      scan_lengths)) != SQLITE_OK)
      return rc;
    // ?2: the last seq, whose row keeps the chain head (see k_schema_sql).
    if ((rc = prepare("DELETE FROM events WHERE seq <= ?1 AND seq < ?2", delete_upto)) != SQLITE_OK)
      return rc;
    if ((rc = prepare("UPDATE events SET acked = 1 WHERE seq = ?1", mark_acked)) != SQLITE_OK)
      return rc;
    return prepare("SELECT recorded_ms FROM events WHERE seq > ?1 ORDER BY seq LIMIT 1",
                   oldest_after);
  }

  void finalize_all() {
    for (StmtPtr* s : {&begin, &commit, &rollback, &insert_event, &select_from, &sum_after,
                       &scan_lengths, &delete_upto, &mark_acked, &oldest_after})
      s->reset();
  }

  // journal_mode=WAL lets export and status read while the writer commits; synchronous decides
  // whether every commit is fsynced (config.hpp Durability).
  int configure() {
    sqlite3* d = db.get();
    // The file is ours now; checkpointing on close leaves no WAL behind.
    sqlite3_db_config(d, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, nullptr);
    std::string mode;
    int rc = sqlite::enable_wal(d, mode);
    if (rc != SQLITE_OK) return rc;
    if (mode != "wal") return SQLITE_CANTOPEN;
    const char* sync = options.durability == Durability::full ? "PRAGMA synchronous=FULL"
                                                              : "PRAGMA synchronous=NORMAL";
    if ((rc = sqlite3_exec(d, sync, nullptr, nullptr, nullptr)) != SQLITE_OK) return rc;
    // Debian builds SQLite with SECURE_DELETE on, which overwrites every pruned row: about 1 KB
    // more written per event, on SD cards that wear. Pruned events are acknowledged, signed,
    // public records, so there is nothing to scrub.
    if ((rc = sqlite3_exec(d, "PRAGMA secure_delete=OFF", nullptr, nullptr, nullptr)) != SQLITE_OK)
      return rc;
    // The outbox is written at the end and read near the front: a small page cache does (the
    // default is 2 MiB, most of the daemon's heap on a Raspberry Pi).
    const std::string cache = fmt::format("PRAGMA cache_size=-{}", k_page_cache_kib);
    if ((rc = sqlite3_exec(d, cache.c_str(), nullptr, nullptr, nullptr)) != SQLITE_OK) return rc;
    std::string limit = fmt::format("PRAGMA journal_size_limit={}", k_journal_size_limit_bytes);
    return sqlite3_exec(d, limit.c_str(), nullptr, nullptr, nullptr);
  }

  int query_int(const char* sql, std::int64_t& out) {
    return sqlite::query_int(db.get(), sql, out);
  }

  // Decides whether an existing file is a usable outbox of this device and, when it is, loads its
  // state and prepares the statements. Errors are reserved for failures that are not the file's
  // content (busy, permissions, I/O): quarantining a file another agent holds would lose data.
  Result<Inspection> inspect() {
    sqlite3* d = db.get();
    // Until the file is judged ours, closing must not checkpoint its WAL into it: a quarantined
    // file is kept exactly as it was found.
    sqlite3_db_config(d, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
    auto damaged = [](std::string reason) {
      return Inspection{Inspection::Kind::damaged, std::move(reason)};
    };
    auto failed = [&](int rc, std::string_view what) -> Result<Inspection> {
      if (is_content_error(rc))
        return damaged(fmt::format("{}: {}", what, sqlite::error_detail(d, rc)));
      return fail(ErrorCode::io,
                  fmt::format("cannot open outbox {}: {}: {}; check that no other reflow-agent "
                              "uses it and that the file and its directory are readable and "
                              "writable",
                              path_text(), what, sqlite::error_detail(d, rc)));
    };

    {
      StmtPtr check;
      int rc = prepare(d, "PRAGMA quick_check", check);
      if (rc != SQLITE_OK) return failed(rc, "quick_check");
      rc = sqlite3_step(check.get());
      if (rc != SQLITE_ROW) return failed(rc, "quick_check");
      std::string verdict = column_text(check.get(), 0);
      if (verdict != "ok") return damaged(fmt::format("quick_check: {}", verdict));
    }

    std::int64_t objects = 0;
    int rc = query_int("SELECT count(*) FROM sqlite_master", objects);
    if (rc != SQLITE_OK) return failed(rc, "reading the schema");
    // A crash while a new outbox was being made leaves a database without tables: nothing to keep.
    if (objects == 0) return Inspection{Inspection::Kind::blank, {}};

    std::int64_t tables = 0;
    rc = query_int(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'events')",
        tables);
    if (rc != SQLITE_OK) return failed(rc, "reading the schema");
    if (tables != 2) return damaged("the meta or events table is missing");

    std::int64_t version = 0;
    rc = query_int("SELECT schema_version FROM meta WHERE id = 1", version);
    if (rc != SQLITE_OK) return failed(rc, "reading the schema version");
    if (version != 1 && version != k_schema_version)
      return damaged(
          fmt::format("schema version {}; this agent knows version {}", version, k_schema_version));

    std::string device_id;
    {
      StmtPtr meta;
      rc = prepare(d,
                   "SELECT device_id, stream, last_seq, last_hash, recorded_floor_ms, acked_seq "
                   "FROM meta WHERE id = 1",
                   meta);
      if (rc != SQLITE_OK) return failed(rc, "reading meta");
      rc = sqlite3_step(meta.get());
      if (rc != SQLITE_ROW) return failed(rc, "reading meta");
      device_id = column_text(meta.get(), 0);
      head.stream = column_text(meta.get(), 1);
      head.last_seq = sqlite3_column_int64(meta.get(), 2);
      head.last_hash = column_text(meta.get(), 3);
      head.recorded_floor_ms = sqlite3_column_int64(meta.get(), 4);
      acked_seq = sqlite3_column_int64(meta.get(), 5);
    }
    if (device_id != options.device_id)
      return damaged(fmt::format("it belongs to device \"{}\", this agent is \"{}\"", device_id,
                                 options.device_id));
    if (!is_valid_ulid(head.stream))
      return damaged(fmt::format("stream \"{}\" is not a ULID", head.stream));
    if (head.last_seq < 0 || acked_seq < 0 || acked_seq > head.last_seq)
      return damaged(
          fmt::format("meta says last_seq {} and acked_seq {}", head.last_seq, acked_seq));

    // Schema 2 keeps the head and the ack in the rows (k_schema_sql); meta's are lower bounds.
    {
      StmtPtr range;
      rc = prepare(d, "SELECT count(*), min(seq), max(seq) FROM events", range);
      if (rc != SQLITE_OK) return failed(rc, "reading events");
      rc = sqlite3_step(range.get());
      if (rc != SQLITE_ROW) return failed(rc, "reading events");
      const std::int64_t count = sqlite3_column_int64(range.get(), 0);
      const std::int64_t lo = sqlite3_column_int64(range.get(), 1);
      const std::int64_t hi = sqlite3_column_int64(range.get(), 2);
      const ChainHead meta_head = head;
      const std::int64_t meta_acked = acked_seq;
      bool last_row_acked = false;
      if (count > 0 && version >= 2) {
        StmtPtr last;
        rc = prepare(d, "SELECT head_hash, floor_ms, acked FROM events WHERE seq = ?1", last);
        if (rc != SQLITE_OK) return failed(rc, "reading the last event");
        sqlite3_bind_int64(last.get(), 1, hi);
        rc = sqlite3_step(last.get());
        if (rc != SQLITE_ROW) return failed(rc, "reading the last event");
        if (sqlite3_column_type(last.get(), 0) != SQLITE_NULL) {
          head.last_seq = hi;
          head.last_hash = column_text(last.get(), 0);
          head.recorded_floor_ms = sqlite3_column_int64(last.get(), 1);
        }
        last_row_acked = sqlite3_column_int64(last.get(), 2) == 1;
        acked_seq = last_row_acked ? hi : lo - 1;
      }
      if (head.last_seq < meta_head.last_seq || acked_seq < meta_acked || acked_seq > head.last_seq)
        return damaged(fmt::format(
            "meta says last_seq {} and acked_seq {}, the events table last_seq {} and acked_seq {}",
            meta_head.last_seq, meta_acked, head.last_seq, acked_seq));
      // Every seq in (acked, last] must be present, and nothing else (but the acked last row
      // that keeps the head): otherwise the chain this outbox would continue is not the one the
      // node has.
      const std::int64_t expected = last_row_acked ? 1 : head.last_seq - acked_seq;
      const std::int64_t first = last_row_acked ? head.last_seq : acked_seq + 1;
      if (count != expected || (count > 0 && (lo != first || hi != head.last_seq)))
        return damaged(fmt::format(
            "the outbox expects seq {}..{} ({} events) but the events table holds {} events{}",
            first, head.last_seq, expected, count,
            count > 0 ? fmt::format(" ({}..{})", lo, hi) : std::string()));
    }

    if (version == 1) {
      // Judged ours and whole: migrated in one transaction (a crash leaves schema 1).
      rc = sqlite3_exec(d, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
      if (rc == SQLITE_OK) rc = sqlite3_exec(d, k_migrate_1_to_2_sql, nullptr, nullptr, nullptr);
      if (rc == SQLITE_OK) rc = sqlite3_exec(d, "COMMIT", nullptr, nullptr, nullptr);
      if (rc != SQLITE_OK) {
        std::string detail = sqlite::error_detail(d, rc);
        if (!sqlite3_get_autocommit(d)) sqlite3_exec(d, "ROLLBACK", nullptr, nullptr, nullptr);
        return fail(ErrorCode::io, fmt::format("cannot migrate outbox {} from schema 1 to 2: {}",
                                               path_text(), detail));
      }
      log->info("outbox", "migrated {} from schema 1 to 2", path_text());
    }

    rc = configure();
    if (rc != SQLITE_OK) return failed(rc, "setting WAL mode");
    rc = prepare_all();
    if (rc != SQLITE_OK) return failed(rc, "preparing statements");
    rc = load_backlog();
    if (rc != SQLITE_OK) return failed(rc, "reading the backlog");
    return Inspection{};
  }

  int load_backlog() {
    {
      sqlite::Cursor sum(sum_after.get(), acked_seq);
      const int rc = sum.step();
      if (rc != SQLITE_ROW) return rc;
      backlog_bytes = static_cast<std::uint64_t>(sum.int64(0));
    }
    return refresh_oldest();
  }

  int refresh_oldest() {
    sqlite::Cursor oldest(oldest_after.get(), acked_seq);
    const int rc = oldest.step();
    if (rc == SQLITE_ROW) {
      oldest_unacked_ms = oldest.int64(0);
      return SQLITE_OK;
    }
    oldest_unacked_ms.reset();
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
  }

  // Makes the tables of a new outbox, with a new stream, on the open connection.
  Status initialize(Env& env) {
    sqlite3* d = db.get();
    auto failed = [&](int rc) -> Status {
      std::string detail = sqlite::error_detail(d, rc);
      if (!sqlite3_get_autocommit(d)) sqlite3_exec(d, "ROLLBACK", nullptr, nullptr, nullptr);
      return fail(ErrorCode::io,
                  fmt::format("cannot create outbox {}: {}; check that the directory exists, is "
                              "writable and has free space",
                              path_text(), detail));
    };
    // Only possible before the first table: lets shrink() give pruned pages back.
    int rc = sqlite3_exec(d, "PRAGMA auto_vacuum=INCREMENTAL", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return failed(rc);
    if ((rc = configure()) != SQLITE_OK) return failed(rc);
    if ((rc = sqlite3_exec(d, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr)) != SQLITE_OK)
      return failed(rc);
    if ((rc = sqlite3_exec(d, k_schema_sql, nullptr, nullptr, nullptr)) != SQLITE_OK)
      return failed(rc);

    UlidGenerator ulids;
    const std::int64_t now_ms = env.now_unix_ms();
    ChainHead fresh;
    fresh.stream = ulids.next(now_ms);
    {
      StmtPtr insert;
      rc = prepare(d,
                   "INSERT INTO meta(id, schema_version, device_id, stream, last_seq, last_hash, "
                   "recorded_floor_ms, acked_seq, created_ms) VALUES (1, ?1, ?2, ?3, 0, '', 0, 0, "
                   "?4)",
                   insert);
      if (rc != SQLITE_OK) return failed(rc);
      rc = run(insert.get(), k_schema_version, options.device_id, fresh.stream, now_ms);
      if (rc != SQLITE_OK) return failed(rc);
    }
    if ((rc = sqlite3_exec(d, "COMMIT", nullptr, nullptr, nullptr)) != SQLITE_OK) return failed(rc);
    if ((rc = prepare_all()) != SQLITE_OK) return failed(rc);

    head = std::move(fresh);
    acked_seq = 0;
    backlog_bytes = 0;
    oldest_unacked_ms.reset();
    return {};
  }

  Result<DbPtr> open_db(int flags) const {
    DbPtr out;
    if (int rc = sqlite::open(options.path, flags, k_busy_timeout_ms, out); rc != SQLITE_OK)
      return fail(ErrorCode::io, fmt::format("cannot open outbox {}: {}; check that the directory "
                                             "exists and is readable and writable",
                                             path_text(), sqlite::error_detail(out.get(), rc)));
    return out;
  }

  // Renames `from` and its -wal/-shm to `<path>.corrupt-<UTC time>`; returns the new main path.
  // The main file moves first: a crash in between leaves a stray WAL, which open() moves aside
  // before making a new file rather than letting SQLite replay it into the new one.
  Result<fs::path> move_aside(Env& env) const {
    const fs::path& path = options.path;
    fs::path target = with_suffix(path, ".corrupt-" + utc_stamp(env.now_unix_ms()));
    std::error_code ec;
    for (int n = 2; fs::exists(target, ec) || fs::exists(with_suffix(target, "-wal"), ec); ++n)
      target = with_suffix(path, fmt::format(".corrupt-{}-{}", utc_stamp(env.now_unix_ms()), n));
    for (std::string_view suffix : {"", "-wal", "-shm"}) {
      fs::path from = with_suffix(path, suffix);
      if (!suffix.empty() && !fs::exists(from, ec)) continue;
      fs::path to = with_suffix(target, suffix);
      fs::rename(from, to, ec);
      if (ec)
        return fail(ErrorCode::io,
                    fmt::format("cannot move unusable outbox {} aside to {}: {}; move it away by "
                                "hand and restart",
                                from.string(), to.string(), ec.message()));
    }
    sync_directory(path.parent_path());
    return target;
  }
};

Outbox::Outbox() : m_impl(std::make_unique<Impl>()) {}

Outbox::~Outbox() {
  if (m_impl) m_impl->finalize_all();
}

Result<std::unique_ptr<Outbox>> Outbox::open(const OutboxOptions& options, Env& env, Logger& log) {
  std::unique_ptr<Outbox> outbox(new Outbox());
  Impl& s = *outbox->m_impl;
  s.options = options;
  s.log = &log;
  const fs::path& path = options.path;
  const std::string path_text = path.string();

  std::error_code ec;
  const bool exists = fs::exists(path, ec);
  if (ec)
    return fail(ErrorCode::io, fmt::format("cannot open outbox {}: {}; check the permissions of "
                                           "its directory",
                                           path_text, ec.message()));

  if (exists) {
    auto db = s.open_db(SQLITE_OPEN_READWRITE);
    if (!db) return std::unexpected(db.error());
    s.db = std::move(*db);
    auto inspection = s.inspect();
    if (!inspection) {
      s.finalize_all();
      return std::unexpected(inspection.error());
    }
    switch (inspection->kind) {
      case Inspection::Kind::usable:
        s.ensure_reserve();
        log.info("outbox", "opened {}: stream {}, last seq {}, acked {}, {} unacked events ({})",
                 path_text, s.head.stream, s.head.last_seq, s.acked_seq,
                 s.head.last_seq - s.acked_seq, format_size(s.backlog_bytes));
        return outbox;
      case Inspection::Kind::blank: {
        auto init = s.initialize(env);
        if (!init) return std::unexpected(init.error());
        s.ensure_reserve();
        log.warning("outbox",
                    "{} held no tables (a creation interrupted by a crash?); made a new "
                    "outbox in it with stream {}",
                    path_text, s.head.stream);
        return outbox;
      }
      case Inspection::Kind::damaged: {
        s.finalize_all();
        s.db.reset();
        auto target = s.move_aside(env);
        if (!target) return std::unexpected(target.error());
        log.error("outbox",
                  "outbox {} is unusable ({}); it was moved to {} and a new outbox with a new "
                  "stream is started. The old file is kept: events the node had not acknowledged "
                  "may still be in it, `reflow-agent export --outbox {}` reads them",
                  path_text, inspection->reason, target->string(), target->string());
        s.quarantined = target->string();
        break;
      }
    }
  } else {
    // WAL or shm without their database belong to a file that was moved or deleted; SQLite
    // would replay such a WAL into the new file.
    bool stray =
        fs::exists(with_suffix(path, "-wal"), ec) || fs::exists(with_suffix(path, "-shm"), ec);
    if (stray) {
      fs::path target = with_suffix(path, ".orphan-" + utc_stamp(env.now_unix_ms()));
      for (std::string_view suffix : {"-wal", "-shm"}) {
        fs::path from = with_suffix(path, suffix);
        if (!fs::exists(from, ec)) continue;
        fs::rename(from, with_suffix(target, suffix), ec);
        if (ec)
          return fail(
              ErrorCode::io,
              fmt::format("cannot move stray {} aside: {}; move it away by hand and restart",
                          from.string(), ec.message()));
      }
      log.warning("outbox", "{} was missing but its WAL or shm file was there; moved them to {}-*",
                  path_text, target.string());
    }
  }

  auto db = s.open_db(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (!db) return std::unexpected(db.error());
  s.db = std::move(*db);
  auto init = s.initialize(env);
  if (!init) return std::unexpected(init.error());
  s.ensure_reserve();
  log.info("outbox", "created {} with stream {}", path_text, s.head.stream);
  return outbox;
}

ChainHead Outbox::head() const {
  std::lock_guard lock(m_impl->mutex);
  return m_impl->head;
}

Status Outbox::append(const std::vector<OutboxEvent>& events, const ChainHead& new_head) {
  Impl& s = *m_impl;
  std::lock_guard lock(s.mutex);
  if (events.empty()) return {};

  if (new_head.stream != s.head.stream || new_head.last_seq != events.back().seq)
    return fail(ErrorCode::invalid_argument,
                fmt::format("outbox append: new head (stream {}, seq {}) does not match the "
                            "outbox (stream {}) and the batch's last seq {}",
                            new_head.stream, new_head.last_seq, s.head.stream, events.back().seq));
  std::uint64_t batch_bytes = 0;
  for (std::size_t i = 0; i < events.size(); ++i) {
    const std::int64_t expected = s.head.last_seq + 1 + static_cast<std::int64_t>(i);
    if (events[i].seq != expected)
      return fail(ErrorCode::invalid_argument,
                  fmt::format("outbox append: event {} has seq {}, expected {} (seqs follow the "
                              "head without gaps)",
                              i, events[i].seq, expected));
    batch_bytes += events[i].envelope.size();
  }

  // Counted per refused event: each is one producer's submission (OutboxStats::refused_quota).
  if (s.backlog_bytes + batch_bytes > s.options.quota_bytes) {
    s.refused_quota += events.size();
    return fail(ErrorCode::no_space, s.quota_refusal());
  }
  // Asked at every batch, so events are accepted again as soon as space is freed.
  if (auto free = s.free_bytes(); free && s.disk_room(free) < batch_bytes) {
    s.refused_disk += events.size();
    return fail(ErrorCode::no_space, s.disk_refusal(free, batch_bytes));
  }

  sqlite3* d = s.db.get();
  auto failed = [&](int rc) -> Status {
    std::string detail = sqlite::error_detail(d, rc);
    // SQLite may have rolled back already (SQLITE_FULL does); the rows and the head go together.
    if (!sqlite3_get_autocommit(d)) run(s.rollback.get());
    ++s.refused_io;
    if (is_full(rc))
      return fail(ErrorCode::no_space,
                  fmt::format("outbox {}: disk full while committing seq {}..{}: {}; the events "
                              "were not stored; free space on the data_dir file system",
                              s.path_text(), events.front().seq, events.back().seq, detail));
    return fail(ErrorCode::io,
                fmt::format("outbox {}: cannot commit seq {}..{}: {}; the events were not "
                            "stored; check the disk (dmesg)",
                            s.path_text(), events.front().seq, events.back().seq, detail));
  };

  int rc = s.restore_sync();
  if (rc != SQLITE_OK) return failed(rc);
  if ((rc = run(s.begin.get())) != SQLITE_OK) return failed(rc);
  sqlite3_stmt* insert = s.insert_event.get();
  for (const OutboxEvent& e : events) {
    // The batch's last row carries the head (k_schema_sql): no `meta` page in this transaction.
    const bool last = e.seq == new_head.last_seq;
    if ((rc = run(insert, e.seq, e.id, e.recorded_unix_ms, sqlite::Blob{e.envelope},
                  last ? std::optional<std::string_view>(new_head.last_hash) : std::nullopt,
                  last ? std::optional<std::int64_t>(new_head.recorded_floor_ms) : std::nullopt)) !=
        SQLITE_OK)
      return failed(rc);
  }
  // The acked row kept for the head before this batch (if any) goes, in the same leaf page.
  if ((rc = run(s.delete_upto.get(), s.acked_seq, new_head.last_seq)) != SQLITE_OK)
    return failed(rc);
  if ((rc = run(s.commit.get())) != SQLITE_OK) return failed(rc);

  if (!s.oldest_unacked_ms) s.oldest_unacked_ms = events.front().recorded_unix_ms;
  s.backlog_bytes += batch_bytes;
  s.head = new_head;
  s.ensure_reserve();
  return {};
}

OutboxRoom Outbox::room() const {
  const Impl& s = *m_impl;
  std::lock_guard lock(s.mutex);
  OutboxRoom out;
  out.bytes = s.options.quota_bytes > s.backlog_bytes ? s.options.quota_bytes - s.backlog_bytes : 0;
  if (auto disk = s.disk_room(s.free_bytes()); disk && *disk < out.bytes) {
    out.bytes = *disk;
    out.disk_bound = true;
  }
  return out;
}

Error Outbox::room_error(std::uint64_t needed_bytes) const {
  const Impl& s = *m_impl;
  std::lock_guard lock(s.mutex);
  auto free = s.free_bytes();
  const std::uint64_t quota_room =
      s.options.quota_bytes > s.backlog_bytes ? s.options.quota_bytes - s.backlog_bytes : 0;
  if (needed_bytes > quota_room) return Error{ErrorCode::no_space, s.quota_refusal()};
  return Error{ErrorCode::no_space, s.disk_refusal(free, needed_bytes)};
}

std::uint64_t Outbox::quota_free_bytes() const {
  std::lock_guard lock(m_impl->mutex);
  const Impl& s = *m_impl;
  return s.options.quota_bytes > s.backlog_bytes ? s.options.quota_bytes - s.backlog_bytes : 0;
}

Result<std::vector<OutboxEvent>> Outbox::read_from(std::int64_t from_seq,
                                                   std::size_t max_events) const {
  const Impl& s = *m_impl;
  std::lock_guard lock(s.mutex);
  std::vector<OutboxEvent> out;
  if (max_events == 0) return out;
  const std::int64_t limit = std::in_range<std::int64_t>(max_events)
                                 ? static_cast<std::int64_t>(max_events)
                                 : std::numeric_limits<std::int64_t>::max();
  // Never the acked last row kept for the chain head (k_schema_sql).
  const std::int64_t first = std::max(from_seq, s.acked_seq + 1);
  sqlite::Cursor rows(s.select_from.get(), first, limit);
  int rc;
  while ((rc = rows.step()) == SQLITE_ROW) {
    OutboxEvent e;
    e.seq = rows.int64(0);
    e.id = rows.text(1);
    e.recorded_unix_ms = rows.int64(2);
    e.envelope = rows.text(3);
    out.push_back(std::move(e));
  }
  if (rc != SQLITE_DONE)
    return fail((rc & 0xff) == SQLITE_CORRUPT ? ErrorCode::corruption : ErrorCode::io,
                fmt::format("outbox {}: cannot read events from seq {}: {}", s.path_text(),
                            from_seq, sqlite::error_detail(s.db.get(), rc)));
  return out;
}

std::optional<std::pair<std::uint64_t, merkle::Hash>> Outbox::verified_log() const {
  Impl& s = *m_impl;
  std::lock_guard lock(s.mutex);
  sqlite::StmtPtr select;
  if (sqlite::prepare(s.db.get(), "SELECT tree_size, root FROM node_log WHERE id = 1", select) !=
          SQLITE_OK ||
      sqlite3_step(select.get()) != SQLITE_ROW)
    return std::nullopt;
  merkle::Hash root{};
  if (sqlite3_column_bytes(select.get(), 1) != static_cast<int>(root.size())) return std::nullopt;
  std::memcpy(root.data(), sqlite3_column_blob(select.get(), 1), root.size());
  return std::pair{static_cast<std::uint64_t>(sqlite3_column_int64(select.get(), 0)), root};
}

bool Outbox::node_sends_consistency() const {
  Impl& s = *m_impl;
  std::lock_guard lock(s.mutex);
  sqlite::StmtPtr select;
  return sqlite::prepare(s.db.get(), "SELECT consistency_seen FROM node_log WHERE id = 1",
                         select) == SQLITE_OK &&
         sqlite3_step(select.get()) == SQLITE_ROW && sqlite3_column_int(select.get(), 0) != 0;
}

Status Outbox::record_verified_log(std::uint64_t tree_size, const merkle::Hash& root,
                                   bool consistency_seen) {
  Impl& s = *m_impl;
  std::lock_guard lock(s.mutex);
  sqlite::StmtPtr upsert;
  int rc = sqlite::prepare(s.db.get(),
                           "INSERT OR REPLACE INTO node_log(id, tree_size, root, "
                           "consistency_seen) VALUES (1, ?1, ?2, ?3)",
                           upsert);
  if (rc == SQLITE_OK)
    rc =
        run(upsert.get(), static_cast<std::int64_t>(tree_size),
            sqlite::Blob{std::string_view(reinterpret_cast<const char*>(root.data()), root.size())},
            consistency_seen);
  if (rc != SQLITE_OK)
    return fail(is_full(rc) ? ErrorCode::no_space : ErrorCode::io,
                fmt::format("outbox {}: cannot record the node's verified log of {} leaves: {}",
                            s.path_text(), tree_size, sqlite::error_detail(s.db.get(), rc)));
  return {};
}

Status Outbox::record_acked_leaves(std::int64_t upto_seq, std::uint64_t leaf_index) {
  Impl& s = *m_impl;
  std::lock_guard lock(s.mutex);
  sqlite3* d = s.db.get();
  auto failed = [&](int rc) {
    return fail(
        is_full(rc) ? ErrorCode::no_space : ErrorCode::io,
        fmt::format("outbox {}: cannot keep the leaves of the events acked up to seq {}: {}",
                    s.path_text(), upto_seq, sqlite::error_detail(d, rc)));
  };
  StmtPtr select;
  StmtPtr upsert;
  int rc = prepare(
      d, "SELECT seq, id, envelope FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq", select);
  if (rc == SQLITE_OK)
    rc = prepare(d,
                 "INSERT INTO acked_leaves(seq, id, leaf, leaf_index) VALUES (?1, ?2, ?3, ?4) "
                 "ON CONFLICT(seq) DO UPDATE SET leaf_index = coalesce(leaf_index, "
                 "excluded.leaf_index)",
                 upsert);
  if (rc != SQLITE_OK) return failed(rc);
  if ((rc = run(s.begin.get())) != SQLITE_OK) return failed(rc);
  sqlite3_bind_int64(select.get(), 1, s.acked_seq);
  sqlite3_bind_int64(select.get(), 2, upto_seq);
  while ((rc = sqlite3_step(select.get())) == SQLITE_ROW) {
    const std::int64_t seq = sqlite3_column_int64(select.get(), 0);
    const std::string id = column_text(select.get(), 1);
    const merkle::Hash leaf = merkle::leaf_hash(column_text(select.get(), 2));
    const std::optional<std::int64_t> index =
        seq == upto_seq ? std::optional(static_cast<std::int64_t>(leaf_index)) : std::nullopt;
    rc =
        run(upsert.get(), seq, id,
            sqlite::Blob{std::string_view(reinterpret_cast<const char*>(leaf.data()), leaf.size())},
            index);
    if (rc != SQLITE_OK) break;
  }
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  sqlite3_reset(select.get());
  if (rc == SQLITE_OK) rc = run(s.commit.get());
  if (rc != SQLITE_OK) {
    (void)run(s.rollback.get());
    return failed(rc);
  }
  return {};
}

Result<AuditState> Outbox::read_audit_state(const std::filesystem::path& path) {
  const std::string path_text = path.string();
  std::error_code ec;
  if (!fs::exists(path, ec))
    return fail(ErrorCode::io, fmt::format("cannot audit from {}: {}", path_text,
                                           ec ? ec.message() : std::string("no such file")));
  // Read-only: the live outbox belongs to the running agent.
  DbPtr db;
  int rc = sqlite::open(path, SQLITE_OPEN_READONLY, k_busy_timeout_ms, db);
  if (rc != SQLITE_OK)
    return fail(ErrorCode::io, fmt::format("cannot audit from {}: {}", path_text,
                                           sqlite::error_detail(db.get(), rc)));
  sqlite3* raw = db.get();
  auto unreadable = [&](int code, std::string_view what) {
    return fail((code & 0xff) == SQLITE_IOERR ? ErrorCode::io : ErrorCode::corruption,
                fmt::format("cannot audit from {}: {}: {}", path_text, what,
                            sqlite::error_detail(raw, code)));
  };
  AuditState out;
  // One read transaction: the leaves and the verified log of the same commit.
  if ((rc = sqlite3_exec(raw, "BEGIN", nullptr, nullptr, nullptr)) != SQLITE_OK)
    return unreadable(rc, "starting a read");
  StmtPtr meta;
  if ((rc = prepare(raw, "SELECT device_id, stream FROM meta WHERE id = 1", meta)) != SQLITE_OK)
    return unreadable(rc, "not an outbox");
  if ((rc = sqlite3_step(meta.get())) != SQLITE_ROW)
    return unreadable(rc == SQLITE_DONE ? SQLITE_CORRUPT : rc, "no meta row");
  out.device_id = column_text(meta.get(), 0);
  out.stream = column_text(meta.get(), 1);
  StmtPtr node_log;
  // A file that never verified an ack may have neither table (an agent of before 1.1).
  if (prepare(raw, "SELECT tree_size, root FROM node_log WHERE id = 1", node_log) == SQLITE_OK &&
      sqlite3_step(node_log.get()) == SQLITE_ROW &&
      sqlite3_column_bytes(node_log.get(), 1) == static_cast<int>(merkle::Hash{}.size())) {
    merkle::Hash root{};
    std::memcpy(root.data(), sqlite3_column_blob(node_log.get(), 1), root.size());
    out.verified_log =
        std::pair{static_cast<std::uint64_t>(sqlite3_column_int64(node_log.get(), 0)), root};
  }
  StmtPtr leaves;
  if (prepare(raw, "SELECT seq, id, leaf, leaf_index FROM acked_leaves ORDER BY seq", leaves) !=
      SQLITE_OK)
    return out;
  while ((rc = sqlite3_step(leaves.get())) == SQLITE_ROW) {
    AckedLeaf leaf;
    leaf.seq = sqlite3_column_int64(leaves.get(), 0);
    leaf.id = column_text(leaves.get(), 1);
    if (sqlite3_column_bytes(leaves.get(), 2) != static_cast<int>(leaf.leaf.size()))
      return unreadable(SQLITE_CORRUPT, fmt::format("acked_leaves: seq {}: not a hash", leaf.seq));
    std::memcpy(leaf.leaf.data(), sqlite3_column_blob(leaves.get(), 2), leaf.leaf.size());
    if (sqlite3_column_type(leaves.get(), 3) != SQLITE_NULL)
      leaf.leaf_index = static_cast<std::uint64_t>(sqlite3_column_int64(leaves.get(), 3));
    out.leaves.push_back(std::move(leaf));
  }
  if (rc != SQLITE_DONE) return unreadable(rc, "reading acked_leaves");
  return out;
}

Result<bool> Outbox::save_audited_log(const std::filesystem::path& path,
                                      const std::pair<std::uint64_t, merkle::Hash>& from,
                                      const std::pair<std::uint64_t, merkle::Hash>& to) {
  const std::string path_text = path.string();
  // Read-write, never created: the file is the agent's, and its schema is the agent's to make.
  DbPtr db;
  int rc = sqlite::open(path, SQLITE_OPEN_READWRITE, k_busy_timeout_ms, db);
  auto failed = [&](int code) {
    return fail(is_full(code) ? ErrorCode::no_space : ErrorCode::io,
                fmt::format("outbox {}: cannot save the node's log of {} leaves the audit "
                            "verified: {}",
                            path_text, to.first, sqlite::error_detail(db.get(), code)));
  };
  if (rc != SQLITE_OK) return failed(rc);
  if ((rc = sqlite3_exec(db.get(), "PRAGMA synchronous=FULL", nullptr, nullptr, nullptr)) !=
      SQLITE_OK)
    return failed(rc);
  auto blob = [](const merkle::Hash& hash) {
    return sqlite::Blob{std::string_view(reinterpret_cast<const char*>(hash.data()), hash.size())};
  };
  StmtPtr update;
  if ((rc = prepare(db.get(),
                    "UPDATE node_log SET tree_size = ?3, root = ?4 "
                    "WHERE id = 1 AND tree_size = ?1 AND root = ?2",
                    update)) != SQLITE_OK)
    return failed(rc);
  if ((rc = run(update.get(), static_cast<std::int64_t>(from.first), blob(from.second),
                static_cast<std::int64_t>(to.first), blob(to.second))) != SQLITE_OK)
    return failed(rc);
  return sqlite3_changes(db.get()) == 1;
}

Result<std::int64_t> Outbox::apply_ack(const std::string& stream, std::int64_t seq) {
  Impl& s = *m_impl;
  std::lock_guard lock(s.mutex);
  if (stream != s.head.stream) return s.acked_seq;
  // The node can only acknowledge what it was sent, and nothing beyond the last commit was ever
  // sent. Clamping such an ack would prune events the node never stored, and a retained ack is
  // delivered again at every connect, so it is refused and everything is kept.
  if (seq > s.head.last_seq)
    return fail(ErrorCode::rejected,
                fmt::format("ack of seq {} for stream {} is beyond the last committed seq {}; "
                            "refused, nothing pruned (acked stays {})",
                            seq, stream, s.head.last_seq, s.acked_seq));
  const std::int64_t target = std::max(s.acked_seq, seq);
  if (target == s.acked_seq) return s.acked_seq;

  sqlite3* d = s.db.get();
  std::string detail;  // SQLite's message, taken before the rollback replaces it
  auto failed = [&](int rc) -> Result<std::int64_t> {
    return fail(is_full(rc) ? ErrorCode::no_space : ErrorCode::io,
                fmt::format("outbox {}: cannot record the node's ack of seq {}: {}; acked stays "
                            "{}, the events after it stay until the next ack",
                            s.path_text(), target, detail, s.acked_seq));
  };
  auto undo = [&](int rc) {
    detail = sqlite::error_detail(d, rc);
    if (!sqlite3_get_autocommit(d)) run(s.rollback.get());
    return rc;
  };

  // The end of the next pruning transaction: the seq after acked_seq at which about
  // k_prune_chunk_bytes of envelopes are covered (or `target`), and their size.
  struct Chunk {
    std::int64_t end = 0;
    std::uint64_t bytes = 0;
  };
  auto next_chunk = [&](Chunk& chunk) -> int {
    chunk = Chunk{target, 0};
    sqlite::Cursor scan(s.scan_lengths.get(), s.acked_seq, target);
    int rc;
    while ((rc = scan.step()) == SQLITE_ROW) {
      chunk.bytes += static_cast<std::uint64_t>(scan.int64(1));
      if (chunk.bytes >= k_prune_chunk_bytes) {
        chunk.end = scan.int64(0);
        return SQLITE_OK;
      }
    }
    return rc == SQLITE_DONE ? SQLITE_OK : undo(rc);
  };

  std::optional<std::int64_t> oldest;
  // One transaction that deletes up to `end` and records it; returns the result code, rolled
  // back on failure.
  auto prune_transaction = [&](std::int64_t end) -> int {
    int rc = run(s.begin.get());
    if (rc != SQLITE_OK) return undo(rc);
    // The last row stays, marked acked, for the chain head (k_schema_sql): the ack is recorded
    // in the `events` pages the prune changes anyway, with no `meta` page.
    if ((rc = run(s.delete_upto.get(), end, s.head.last_seq)) != SQLITE_OK) return undo(rc);
    if (end == s.head.last_seq && (rc = run(s.mark_acked.get(), end)) != SQLITE_OK) return undo(rc);
    {
      sqlite::Cursor next(s.oldest_after.get(), end);
      rc = next.step();
      oldest.reset();
      if (rc == SQLITE_ROW)
        oldest = next.int64(0);
      else if (rc != SQLITE_DONE)
        return undo(rc);
    }
    if ((rc = run(s.commit.get())) != SQLITE_OK) return undo(rc);
    return SQLITE_OK;
  };

  // With durability full the prune is committed without an fsync (synchronous=NORMAL for this
  // transaction only): a prune lost to a power cut only means that the node's ack is applied again
  // from the retained ack and the events it covers are republished, which PROTOCOL §5 expects
  // (duplicates). The next append's fsync makes the WAL, these frames included, durable before its
  // events are answered; WAL frames are checksummed in order, so a torn prune is dropped whole at
  // recovery and cannot damage the answered events before or after it. An fsync costs an SD card
  // more than the bytes it syncs: the WAL's last, partly written 4 KiB page is written again by
  // the next commit (tests/bench/README.md, one at a time).
  auto prune = [&](std::int64_t end) -> int {
    int rc = s.lower_sync();
    if (rc != SQLITE_OK) return undo(rc);
    rc = prune_transaction(end);
    // Should this fail, append() tries again and commits nothing unsynced.
    (void)s.restore_sync();
    return rc;
  };

  // Each transaction is recorded as it commits, so a failure part way keeps what was pruned.
  while (s.acked_seq < target) {
    Chunk chunk;
    int rc = next_chunk(chunk);
    if (rc == SQLITE_OK) rc = prune(chunk.end);
    // Something else filled the disk to the last block: the reserve is there for this moment.
    if (std::uint64_t released = is_full(rc) ? s.release_reserve() : 0; released > 0) {
      s.log->warning("outbox",
                     "the disk is full; gave up the reserve file {} ({}) to record the node's ack "
                     "of seq {}. It is put back once there is room again",
                     s.reserve_path().string(), format_size(released), target);
      rc = prune(chunk.end);
    }
    if (rc != SQLITE_OK) return failed(rc);
    s.acked_seq = chunk.end;
    s.backlog_bytes -= std::min(chunk.bytes, s.backlog_bytes);
    s.oldest_unacked_ms = oldest;
  }
  if (s.acked_seq == s.head.last_seq) s.shrink();
  s.ensure_reserve();
  return s.acked_seq;
}

OutboxStats Outbox::stats() const {
  const Impl& s = *m_impl;
  OutboxStats out;
  {
    std::lock_guard lock(s.mutex);
    out.stream = s.head.stream;
    out.last_seq = s.head.last_seq;
    out.acked_seq = s.acked_seq;
    out.backlog_events = s.head.last_seq - s.acked_seq;
    out.backlog_bytes = s.backlog_bytes;
    out.oldest_unacked_recorded_ms = s.oldest_unacked_ms;
    out.quota_bytes = s.options.quota_bytes;
    out.refused_quota = s.refused_quota;
    out.refused_io = s.refused_io;
    out.refused_disk = s.refused_disk;
    out.quarantined = s.quarantined;
    out.min_free_bytes = s.options.min_free_bytes;
    out.reserve_bytes = s.options.reserve_bytes;
    out.reserve_held = s.reserve_held;
  }
  out.disk_free_bytes = s.free_bytes();
  out.accepting = !out.disk_free_bytes || *out.disk_free_bytes >= out.min_free_bytes;
  for (std::string_view suffix : {"", "-wal"}) {
    std::error_code ec;
    const std::uintmax_t size = fs::file_size(with_suffix(s.options.path, suffix), ec);
    if (!ec) out.file_bytes += size;
  }
  return out;
}

Status Outbox::export_file(const std::filesystem::path& path, std::int64_t from_seq,
                           const std::function<void(const OutboxEvent&)>& each,
                           std::size_t& skipped) {
  skipped = 0;
  const std::string path_text = path.string();
  std::error_code ec;
  if (!fs::exists(path, ec))
    return fail(ErrorCode::io, fmt::format("cannot export {}: {}", path_text,
                                           ec ? ec.message() : std::string("no such file")));
  // Read-only: a quarantined file is evidence, and the live one belongs to the running agent.
  DbPtr db;
  int rc = sqlite::open(path, SQLITE_OPEN_READONLY, k_busy_timeout_ms, db);
  if (rc != SQLITE_OK)
    return fail(ErrorCode::io,
                fmt::format("cannot export {}: {}", path_text, sqlite::error_detail(db.get(), rc)));
  sqlite3* raw = db.get();

  StmtPtr select;
  rc =
      prepare(raw, "SELECT seq, id, recorded_ms, envelope FROM events WHERE seq >= ?1 ORDER BY seq",
              select);
  if (rc != SQLITE_OK) {
    const int primary = rc & 0xff;
    const bool content = primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT ||
                         primary == SQLITE_ERROR || primary == SQLITE_FORMAT;
    return fail(content ? ErrorCode::corruption : ErrorCode::io,
                fmt::format("cannot export {}: it cannot be read as an outbox: {}", path_text,
                            sqlite::error_detail(raw, rc)));
  }

  // The last seq bounds the search past damaged pages; without it the export stops at the first
  // unreadable row.
  const FileMarks marks = file_marks(raw);
  const std::optional<std::int64_t> last_seq = marks.last_seq;
  std::int64_t next = std::max<std::int64_t>(from_seq, marks.acked_seq + 1);

  sqlite3_stmt* stmt = select.get();
  for (;;) {
    sqlite3_reset(stmt);
    sqlite3_bind_int64(stmt, 1, next);
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      const std::int64_t seq = sqlite3_column_int64(stmt, 0);
      if (seq < next) {  // a damaged page can break the order; never go backwards
        ++skipped;
        continue;
      }
      next = seq + 1;
      OutboxEvent e;
      e.seq = seq;
      const int id_type = sqlite3_column_type(stmt, 1);
      const int env_type = sqlite3_column_type(stmt, 3);
      if (id_type != SQLITE_TEXT || (env_type != SQLITE_BLOB && env_type != SQLITE_TEXT)) {
        ++skipped;
        continue;
      }
      e.id = column_text(stmt, 1);
      e.recorded_unix_ms = sqlite3_column_int64(stmt, 2);
      const void* blob = sqlite3_column_blob(stmt, 3);
      const int bytes = sqlite3_column_bytes(stmt, 3);
      if (!blob && bytes == 0 && sqlite3_errcode(raw) != SQLITE_OK &&
          sqlite3_errcode(raw) != SQLITE_ROW) {
        ++skipped;
        continue;
      }
      e.envelope.assign(static_cast<const char*>(blob), blob ? static_cast<std::size_t>(bytes) : 0);
      each(e);
    }
    if (rc == SQLITE_DONE) break;
    // The row at `next` (or the page holding it) cannot be read: count it and seek past it.
    ++skipped;
    if (!last_seq || next >= *last_seq) break;
    ++next;
  }
  sqlite3_reset(stmt);
  return {};
}

Result<OutboxRecovery> Outbox::recover_file(const std::filesystem::path& path, const PublicJwk& key,
                                            std::int64_t from_seq,
                                            const std::function<void(const OutboxEvent&)>& each) {
  OutboxRecovery report;
  std::map<std::pair<std::string, std::int64_t>, OutboxEvent> found;
  auto keep = [&](VerifiedEnvelope&& v) {
    if (v.event.seq < from_seq) return;
    found.try_emplace({std::move(v.stream), v.event.seq}, std::move(v.event));
  };

  // What SQLite still reads: the only way to rows whose envelope spills onto overflow pages.
  std::size_t unreadable_rows = 0;
  std::optional<std::pair<std::string, std::int64_t>> acked;  // (stream, acked seq) from meta
  (void)export_file(
      path, from_seq,
      [&](const OutboxEvent& row) {
        if (auto v = verified_envelope(row.envelope, key)) keep(std::move(*v));
      },
      unreadable_rows);
  {
    DbPtr db;
    if (sqlite::open(path, SQLITE_OPEN_READONLY, k_busy_timeout_ms, db) == SQLITE_OK) {
      FileMarks marks = file_marks(db.get());
      if (marks.stream) acked.emplace(std::move(*marks.stream), marks.acked_seq);
    }
  }

  // Then the bytes: the main file and its WAL (which holds the newest copies of pages).
  bool read_any = false;
  std::vector<std::string_view> damaged;
  std::vector<std::string> contents;
  for (std::string_view suffix : {"", "-wal"}) {
    const fs::path file = with_suffix(path, suffix);
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      if (suffix.empty())
        return fail(ErrorCode::io,
                    fmt::format("cannot recover {}: cannot open it for reading", path.string()));
      continue;
    }
    read_any = true;
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    for (std::size_t start = bytes.find(k_envelope_start); start != std::string::npos;
         start = bytes.find(k_envelope_start, start + 1)) {
      // The three members are base64url strings, which hold no '}': the first one ends it.
      const std::size_t end = bytes.find('}', start);
      if (end == std::string::npos || end - start >= k_max_envelope_bytes) {
        ++report.damaged_regions;
        continue;
      }
      const std::string_view candidate = std::string_view(bytes).substr(start, end - start + 1);
      if (auto v = verified_envelope(candidate, key)) {
        keep(std::move(*v));
        continue;
      }
      damaged.push_back(candidate);
    }
    // A damaged region whose payload still names a (stream, seq) recovered from another copy
    // (a stale cell left in a page's free space, or the WAL's copy of a page) lost nothing.
    for (std::string_view candidate : damaged) {
      auto named = payload_position(candidate);
      if (!named || !found.contains(*named)) ++report.damaged_regions;
    }
    damaged.clear();
    contents.push_back(std::move(bytes));
  }
  if (!read_any)
    return fail(ErrorCode::io, fmt::format("cannot recover {}: nothing to read", path.string()));

  for (auto& [where, event] : found) {
    if (acked && where.first == acked->first && where.second <= acked->second) {
      ++report.already_acked;
      continue;
    }
    each(event);
    ++report.recovered;
  }
  return report;
}

}  // namespace agent
