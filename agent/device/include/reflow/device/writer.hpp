// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include <reflow/core/env.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/device/event_sink.hpp>
#include <reflow/device/outbox.hpp>

namespace agent {

/// The writer stage: the EventSink behind every producer. One thread takes whatever is queued (up
/// to `max_batch`), stamps each event (seq, `prev`, `recorded`, `clock`, id: PROTOCOL §4), signs it
/// (§3), appends the batch to the outbox in one transaction (group commit), then answers each
/// producer and tells the forwarder. `recorded` never goes below the outbox's persisted floor, so
/// it never goes backwards within a stream even when the wall clock does.
///
/// Owns its thread; borrows the key, outbox, env and logger, which must outlive it.
/// submit() is thread-safe.
class Writer final : public EventSink {
 public:
  struct Options {
    std::string device_id;
    std::size_t queue_capacity = 1024;
    std::size_t max_batch = 256;
  };

  Writer(Options options, const DeviceKey& key, Outbox& outbox, Env& env, Logger& log);
  ~Writer() override;  ///< stop()s

  /// Called on the writer's thread after each successful commit, with the new last seq.
  void set_commit_listener(std::function<void(std::int64_t last_seq)> listener);

  void start();
  /// Commits everything already queued, refuses later submissions with shutting_down, and joins.
  void stop();

  Status submit(nlohmann::ordered_json fields, EventSource source, SubmitCallback done,
                QueueFull when_full = QueueFull::wait) override;

  /// Submissions refused because the queue was full with QueueFull::refuse.
  std::uint64_t refused_busy() const;
  /// Submissions refused because unacked events fill the outbox quota.
  std::uint64_t refused_quota() const { return m_refused_quota.load(); }
  /// Submissions refused because the data_dir file system is below outbox.min_free.
  std::uint64_t refused_disk() const { return m_refused_disk.load(); }
  /// Accepted submissions that break a zenflows per-action rule (reflow/core/zenflows_rules.hpp,
  /// PROTOCOL §4 "zenflows"): valid v1 events, so the writer commits them, but zenflows would
  /// refuse them at export. Each distinct (source, problem) is logged once as a warning.
  std::uint64_t zenflows_warnings() const { return m_zenflows_warnings.load(); }
  /// The latest of those: "sim/demo: inputOf: required for action \"use\" (zenflows, …)"; empty
  /// while there is none.
  std::string last_zenflows_warning() const;

 private:
  struct Pending {
    nlohmann::ordered_json fields;
    EventSource source;
    SubmitCallback done;
  };

  void run();
  void commit_batch(std::deque<Pending>& batch);
  static void refuse(Pending& pending, const Error& error);
  /// The no_space error for an event of `bytes` that does not fit in `room` (the quota or the
  /// disk, Outbox::room()); counts it as refused_quota or refused_disk.
  Error room_error(const OutboxRoom& room, std::uint64_t bytes);

  Options m_options;
  const DeviceKey& m_key;
  Outbox& m_outbox;
  Env& m_env;
  Logger& m_log;
  std::string m_protected_b64;
  std::size_t m_envelope_overhead_bytes;
  UlidGenerator m_ulids;

  mutable std::mutex m_mutex;
  std::condition_variable m_not_empty;
  std::condition_variable m_not_full;
  std::deque<Pending> m_queue;
  bool m_stopping = false;
  std::uint64_t m_refused_busy = 0;
  std::atomic<std::uint64_t> m_refused_quota{0};
  std::atomic<std::uint64_t> m_refused_disk{0};
  std::atomic<std::uint64_t> m_zenflows_warnings{0};
  std::string m_last_zenflows_warning;      // guarded by m_mutex
  std::set<std::string> m_zenflows_logged;  // guarded by m_mutex; (source, problem) logged
  std::function<void(std::int64_t)> m_listener;
  std::thread m_thread;
};

}  // namespace agent
