// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/writer.hpp>

#include <algorithm>
#include <array>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include <reflow/core/units.hpp>
#include <reflow/core/zenflows_rules.hpp>

namespace agent {
namespace {

// Events per batch below which signing stays on the writer's thread (threads cost more).
constexpr std::size_t k_min_parallel_events = 32;
constexpr unsigned k_max_signing_threads = 4;

// Calls fn(0) … fn(n−1), spread over up to k_max_signing_threads threads (this one included).
template <typename F>
void parallel_for(std::size_t n, const F& fn) {
  const unsigned threads =
      std::min(std::max(1u, std::thread::hardware_concurrency()), k_max_signing_threads);
  if (threads == 1 || n < k_min_parallel_events) {
    for (std::size_t i = 0; i < n; ++i)
      fn(i);
    return;
  }
  std::vector<std::jthread> helpers;
  for (unsigned t = 1; t < threads; ++t)
    helpers.emplace_back([&, t] {
      for (std::size_t i = t; i < n; i += threads)
        fn(i);
    });
  for (std::size_t i = 0; i < n; i += threads)
    fn(i);
}

}  // namespace

Writer::Writer(Options options, const DeviceKey& key, Outbox& outbox, Env& env, Logger& log)
    : m_options(std::move(options)),
      m_key(key),
      m_outbox(outbox),
      m_env(env),
      m_log(log),
      m_protected_b64(jws_protected_header_b64(key.public_jwk().kid)),
      // An envelope is this overhead plus its protected and payload parts: base64url never needs
      // escaping and an Ed25519 signature is always 64 bytes (86 base64url characters).
      m_envelope_overhead_bytes(
          Jws{"", "", base64url_encode(std::string(64, '\0'))}.to_envelope().size()) {
  m_options.queue_capacity = std::max<std::size_t>(1, m_options.queue_capacity);
  m_options.max_batch = std::max<std::size_t>(1, m_options.max_batch);
}

Writer::~Writer() {
  stop();
}

void Writer::set_commit_listener(std::function<void(std::int64_t last_seq)> listener) {
  std::lock_guard lock(m_mutex);
  m_listener = std::move(listener);
}

void Writer::start() {
  std::lock_guard lock(m_mutex);
  if (m_thread.joinable()) return;
  m_stopping = false;
  m_thread = std::thread([this] { run(); });
}

void Writer::stop() {
  {
    std::lock_guard lock(m_mutex);
    m_stopping = true;
  }
  m_not_empty.notify_all();
  m_not_full.notify_all();
  if (m_thread.joinable()) m_thread.join();
}

Status Writer::submit(nlohmann::ordered_json fields, EventSource source, SubmitCallback done,
                      QueueFull when_full) {
  // Validate on the producer's thread: a bad event is refused at once and never takes queue room.
  if (auto valid = validate_submission(fields); !valid) return valid;
  // zenflows' rules are stricter than PROTOCOL v1, which producers were written against: an event
  // that breaks one is still committed (refusing it would break them), but warned about.
  std::string warning;
  if (Status zenflows = vf::check_zenflows_rules(fields); !zenflows)
    warning = fmt::format("{}/{}: {}", source.driver, source.instance, zenflows.error().message);
  bool log_warning = false;
  std::unique_lock lock(m_mutex);
  if (m_queue.size() >= m_options.queue_capacity) {
    if (when_full == QueueFull::refuse) {
      ++m_refused_busy;
      return fail(
          ErrorCode::busy,
          fmt::format("the writer's queue is full ({} events waiting); try again", m_queue.size()));
    }
    m_not_full.wait(lock, [&] { return m_stopping || m_queue.size() < m_options.queue_capacity; });
  }
  if (m_stopping) return fail(ErrorCode::shutting_down, "the agent is shutting down");
  m_queue.push_back(Pending{std::move(fields), std::move(source), std::move(done)});
  if (!warning.empty()) {
    m_zenflows_warnings.fetch_add(1);
    m_last_zenflows_warning = warning;
    // Bounded: a producer that makes every event different cannot grow it without end.
    constexpr std::size_t k_max_logged = 1024;
    log_warning =
        m_zenflows_logged.size() < k_max_logged && m_zenflows_logged.insert(warning).second;
  }
  lock.unlock();
  m_not_empty.notify_one();
  if (log_warning)
    m_log.warning("writer",
                  "accepted an event that zenflows would refuse at export (logged once per source "
                  "and problem; counted in status as zenflows_warnings): {}",
                  warning);
  return {};
}

std::string Writer::last_zenflows_warning() const {
  std::lock_guard lock(m_mutex);
  return m_last_zenflows_warning;
}

std::uint64_t Writer::refused_busy() const {
  std::lock_guard lock(m_mutex);
  return m_refused_busy;
}

void Writer::refuse(Pending& pending, const Error& error) {
  if (pending.done) pending.done(std::unexpected(error));
}

Error Writer::room_error(const OutboxRoom& room, std::uint64_t bytes) {
  (room.disk_bound ? m_refused_disk : m_refused_quota).fetch_add(1);
  return m_outbox.room_error(bytes);
}

void Writer::run() {
  std::deque<Pending> batch;
  for (;;) {
    {
      std::unique_lock lock(m_mutex);
      m_not_empty.wait(lock, [&] { return m_stopping || !m_queue.empty(); });
      // On stop, what is already queued is still committed: it was accepted.
      if (m_queue.empty()) return;
      // Group commit: take whatever has accumulated while the last commit was syncing.
      const std::size_t n = std::min(m_queue.size(), m_options.max_batch);
      for (std::size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(m_queue.front()));
        m_queue.pop_front();
      }
    }
    m_not_full.notify_all();
    commit_batch(batch);
    batch.clear();
  }
}

void Writer::commit_batch(std::deque<Pending>& batch) {
  const ChainHead old_head = m_outbox.head();
  ChainHead head = old_head;
  const ClockSync clock = m_env.clock_sync();
  // `recorded` never goes backwards within a stream (PROTOCOL §4): a Raspberry Pi without an RTC
  // boots with a wrong clock, so the persisted floor wins until the clock catches up.
  const std::int64_t now_ms = m_env.now_unix_ms();
  if (now_ms < head.recorded_floor_ms)
    m_log.debug("writer", "wall clock {} ms behind the last recorded time; keeping the floor",
                head.recorded_floor_ms - now_ms);
  const std::int64_t recorded = std::max(now_ms, head.recorded_floor_ms);

  // Stamping is sequential (each `prev` hashes the previous signing input), but signatures are not
  // part of the chain, so the batch is stamped first and signed afterwards on several cores:
  // Ed25519 signing is half of the writer's work (measured with callgrind).
  // Events that do not fit under the quota or on the disk are refused while stamping, one by one,
  // so that those which fit still commit (the outbox checks both again on append).
  const OutboxRoom room = m_outbox.room();
  std::vector<OutboxEvent> rows;
  rows.reserve(batch.size());
  std::vector<Jws> signed_rows;
  signed_rows.reserve(batch.size());
  std::vector<std::string> signing_inputs;
  signing_inputs.reserve(batch.size());
  std::vector<Committed> answers;
  answers.reserve(batch.size());
  std::vector<Pending*> accepted;
  accepted.reserve(batch.size());
  std::uint64_t batch_bytes = 0;
  for (Pending& pending : batch) {
    EventStamp stamp;
    stamp.id = m_ulids.next(recorded);
    stamp.device = m_options.device_id;
    stamp.stream = head.stream;
    stamp.seq = head.last_seq + 1;
    stamp.prev = head.last_hash;
    stamp.recorded_unix_ms = recorded;
    stamp.clock = clock;
    Jws jws;
    jws.protected_b64 = m_protected_b64;
    jws.payload_b64 = base64url_encode(make_event_payload(stamp, pending.fields, pending.source));
    const std::uint64_t envelope_bytes =
        m_envelope_overhead_bytes + jws.protected_b64.size() + jws.payload_b64.size();
    if (batch_bytes + envelope_bytes > room.bytes) {
      refuse(pending, room_error(room, batch_bytes + envelope_bytes));
      continue;
    }
    head.last_seq = stamp.seq;
    std::string signing_input = jws.signing_input();
    head.last_hash = sha256_b64url(signing_input);  // PROTOCOL §4 `prev` of the next event
    batch_bytes += envelope_bytes;
    answers.push_back(Committed{stamp.seq, stamp.id});
    rows.push_back(OutboxEvent{stamp.seq, std::move(stamp.id), recorded, {}});
    signed_rows.push_back(std::move(jws));
    signing_inputs.push_back(std::move(signing_input));
    accepted.push_back(&pending);
  }
  // Only the signatures are made on the helper threads, into preallocated arrays: a thread that
  // allocated would get a malloc arena of its own, which stays in the daemon's RSS.
  std::vector<std::array<std::uint8_t, 64>> signatures(signed_rows.size());
  parallel_for(signed_rows.size(),
               [&](std::size_t i) { signatures[i] = m_key.sign(signing_inputs[i]); });
  for (std::size_t i = 0; i < signed_rows.size(); ++i) {
    signed_rows[i].signature_b64 = base64url_encode(signatures[i]);
    rows[i].envelope = signed_rows[i].to_envelope();
  }
  if (rows.empty()) return;
  head.recorded_floor_ms = recorded;

  Status status = m_outbox.append(rows, head);
  if (!status) {
    // Nothing of the batch was written; the head stays where it was, so the chain is intact.
    m_log.warning("writer", "{} events refused: {}", rows.size(), status.error().message);
    for (Pending* pending : accepted)
      refuse(*pending, status.error());
    return;
  }
  m_log.debug("writer", "committed seq {}..{} ({} bytes)", old_head.last_seq + 1, head.last_seq,
              batch_bytes);
  for (std::size_t i = 0; i < accepted.size(); ++i)
    if (accepted[i]->done) accepted[i]->done(std::move(answers[i]));
  std::function<void(std::int64_t)> listener;
  {
    std::lock_guard lock(m_mutex);
    listener = m_listener;
  }
  if (listener) listener(head.last_seq);
}

}  // namespace agent
