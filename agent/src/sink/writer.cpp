// SPDX-License-Identifier: AGPL-3.0-or-later
#include <agent/writer.hpp>

#include <algorithm>
#include <vector>

#include <agent/units.hpp>

namespace agent {

Writer::Writer(Options options, const DeviceKey& key, Outbox& outbox, Env& env, Logger& log)
    : m_options(std::move(options)),
      m_key(key),
      m_outbox(outbox),
      m_env(env),
      m_log(log),
      m_protected_b64(jws_protected_header_b64(key.public_jwk().kid)) {
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
  lock.unlock();
  m_not_empty.notify_one();
  return {};
}

std::uint64_t Writer::refused_busy() const {
  std::lock_guard lock(m_mutex);
  return m_refused_busy;
}

void Writer::refuse(Pending& pending, const Error& error) {
  if (pending.done) pending.done(std::unexpected(error));
}

Error Writer::quota_error() {
  m_refused_quota.fetch_add(1);
  const OutboxStats stats = m_outbox.stats();
  return Error{
      ErrorCode::no_space,
      fmt::format("outbox quota full: {} unacked events ({}) of {}; new events are refused "
                  "until the node acknowledges (is the broker reachable?)",
                  stats.backlog_events, format_size(stats.backlog_bytes),
                  format_size(stats.quota_bytes))};
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

  // Events that do not fit under the quota are refused here, one by one, so that those which fit
  // still commit (the outbox checks the quota again on append).
  std::uint64_t free_bytes = m_outbox.quota_free_bytes();
  std::vector<StoredEvent> rows;
  rows.reserve(batch.size());
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
    const std::string payload = make_event_payload(stamp, pending.fields, pending.source);
    const Jws jws = jws_sign(m_key, m_protected_b64, payload);
    std::string envelope = jws.to_envelope();
    if (batch_bytes + envelope.size() > free_bytes) {
      refuse(pending, quota_error());
      continue;
    }
    head.last_seq = stamp.seq;
    head.last_hash = sha256_b64url(jws.signing_input());
    batch_bytes += envelope.size();
    answers.push_back(Committed{stamp.seq, stamp.id});
    rows.push_back(StoredEvent{stamp.seq, std::move(stamp.id), recorded, std::move(envelope)});
    accepted.push_back(&pending);
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
