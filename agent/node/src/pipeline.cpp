// SPDX-License-Identifier: AGPL-3.0-or-later
#include "pipeline.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <reflow/core/audit_proofs.hpp>
#include <reflow/core/json_strict.hpp>
#include <reflow/core/units.hpp>
#include <reflow/node/key_lookup.hpp>
#include <reflow/node/log_limiter.hpp>
#include <reflow/node/node_key.hpp>
#include <reflow/node/verifier.hpp>

namespace ingest {
namespace {

// Rejections logged per sender (topic DEVICE) and minute; the rest get one summary line.
constexpr LogLimits k_log_limits{};
// The log's signed checkpoint is published at most once per this (PROTOCOL §5.1), and once it
// has passed after a burst.
constexpr auto k_checkpoint_interval = std::chrono::seconds(1);
// Audit requests waiting for the store thread at most (PROTOCOL §5.2); an auditor asks one at a
// time and again after its timeout, so a flood only costs the flooder.
constexpr std::size_t k_max_audit_requests = 16;
constexpr auto k_store_retry_min = std::chrono::milliseconds(100);
constexpr auto k_store_retry_max = std::chrono::seconds(10);
// Envelopes waiting for the worker, per envelope of max_batch: one batch being stored while the
// next one fills.
constexpr std::size_t k_queue_batches = 2;
// Threads verifying one batch, at most (the worker is one of them): Ed25519 verification is most of
// the CPU an envelope costs, and envelopes verify independently.
constexpr unsigned k_max_verifiers = 4;
// Envelopes per verifying thread, at least: a thread for fewer costs more than it saves.
constexpr std::size_t k_envelopes_per_verifier = 8;

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// The registry keys of one batch, each looked up once however many envelopes it signed and
// whichever verifying thread asks first. Per batch, so a revocation is seen by the next one.
class BatchKeys {
 public:
  explicit BatchKeys(Store& store) : m_store(store) {}

  Result<std::optional<DeviceKeyRecord>> find(std::string_view kid) {
    {
      std::lock_guard lock(m_mutex);
      if (auto it = m_keys.find(kid); it != m_keys.end()) return it->second;
    }
    // Outside the lock: two threads may both ask the store for a new kid, which is harmless,
    // while the others go on with the kids already known.
    auto key = m_store.find_key(kid);
    if (key) {
      std::lock_guard lock(m_mutex);
      m_keys.emplace(std::string(kid), *key);
    }
    return key;  // an error is not kept: the batch is retried and asks again
  }

 private:
  Store& m_store;
  std::mutex m_mutex;
  std::map<std::string, std::optional<DeviceKeyRecord>, std::less<>> m_keys;
};

}  // namespace

struct IngestPipeline::Impl {
  // One envelope as it arrived.
  struct Message {
    std::string topic;
    std::string payload;
  };

  // One envelope of a batch on its way through verification.
  struct Check {
    const Message* message = nullptr;
    std::string device;  ///< the topic's DEVICE
    std::optional<Result<std::expected<VerifiedEvent, Rejection>>> outcome;
  };

  // A batch verified by the worker, for the store thread.
  struct Pending {
    std::vector<Message> messages;
    std::vector<Check> checks;  ///< point into `messages`
  };

  // The ack state of one device, owned by the store thread.
  struct DeviceAck {
    bool dirty = false;  ///< something was stored or duplicated since the last ack
    bool force = false;  ///< publish even when the ack point did not change
    std::optional<Clock::time_point> last_sent;
    std::optional<AckPoint> last_published;
    /// The log size and consistency_from of the last signed ack (PROTOCOL §5.1).
    std::optional<std::uint64_t> last_tree_size;
    std::optional<std::uint64_t> last_consistency_from;
  };

  Impl(const IngestConfig& config_in, Store& store_in, agent::Env& env_in, agent::Logger& log_in,
       ServiceStats& stats_in, const StopDeadline& stop_deadline_in, AckPublisher& acks_in)
      : config(config_in),
        store(store_in),
        env(env_in),
        log(log_in),
        stats_mutex(stats_in.mutex),
        stats(stats_in.counters),
        faults(stats_in.faults),
        stop_deadline(stop_deadline_in),
        acks(acks_in),
        queue_capacity(std::max<std::size_t>(64, k_queue_batches * config.max_batch)),
        verifiers(std::clamp(std::thread::hardware_concurrency(), 1u, k_max_verifiers)) {}

  // ---- the bounded queue from Paho's callback to the worker ----

  // Runs on a Paho thread. Waiting here when the queue is full holds back Paho's reading, and so
  // the broker, instead of dropping anything.
  void enqueue(Message message) {
    std::unique_lock lock(messages_mutex);
    not_full.wait(lock, [&] { return messages.size() < queue_capacity || intake_closed; });
    if (intake_closed) return;  // stopping: not acked, so the agent republishes it
    messages.push_back(std::move(message));
    const std::size_t queued = messages.size();
    lock.unlock();
    not_empty.notify_one();
    std::lock_guard stats_lock(stats_mutex);
    ++stats.received;
    stats.queued = queued;
  }

  void close_intake() {
    {
      std::lock_guard lock(messages_mutex);
      intake_closed = true;
    }
    not_full.notify_all();
    not_empty.notify_all();
  }

  // ---- the worker thread: verification ----

  // Takes batches from the queue and verifies them, then hands each to the store thread. The two
  // overlap: while one batch waits for its commit (fsync), the next one is being verified.
  void work(std::stop_token stop) {
    while (!stop.stop_requested()) {
      std::vector<Message> batch;
      {
        std::unique_lock lock(messages_mutex);
        not_empty.wait_for(lock, stop, k_service_max_wait, [&] { return !messages.empty(); });
        take(batch);
      }
      if (batch.empty()) continue;
      not_full.notify_all();
      if (!verify_and_hand_over(std::move(batch), stop)) break;
    }
    // Stopping: what was queued before the intake closed is stored and acked, within the
    // deadline.
    for (;;) {
      std::vector<Message> batch;
      {
        std::lock_guard lock(messages_mutex);
        take(batch);
      }
      if (batch.empty() || env.steady_now() >= stop_deadline.load()) break;
      if (!verify_and_hand_over(std::move(batch), std::stop_token{})) break;
    }
    {
      std::lock_guard lock(handoff_mutex);
      handoff_done = true;
    }
    handoff_cv.notify_all();
    std::size_t left = 0;
    {
      std::lock_guard lock(messages_mutex);
      left = messages.size();
      messages.clear();
    }
    if (left > 0)
      log.warning(k_service_component,
                  "stopping with {} envelopes received but not stored; they are not acked, so "
                  "their agents republish them",
                  left);
  }

  // Moves up to max_batch queued messages into `batch` (messages_mutex held).
  void take(std::vector<Message>& batch) {
    const std::size_t n = std::min<std::size_t>(messages.size(), config.max_batch);
    batch.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      batch.push_back(std::move(messages.front()));
      messages.pop_front();
    }
    std::lock_guard stats_lock(stats_mutex);
    stats.queued = messages.size();
  }

  // Verifies `messages` (retrying while the registry cannot be read) and hands the batch to the
  // store thread, waiting while the one before it is still waiting there. False: given up (stop
  // requested, stop deadline passed, or the store thread has ended); nothing of it is acked.
  bool verify_and_hand_over(std::vector<Message> messages, std::stop_token stop) {
    Pending pending;
    pending.messages = std::move(messages);
    pending.checks.reserve(pending.messages.size());
    // The vector's elements stay where they are when `pending` moves: the checks point at them.
    for (const Message& message : pending.messages) {
      auto device = device_of_events_topic(message.topic, config.topic_prefix);
      if (!device) {
        // The subscription only matches PREFIX/+/events; anything else is not ours.
        log.warning(k_service_component, "ignoring a message on {}: not {}/DEVICE/events",
                    message.topic, config.topic_prefix);
        continue;
      }
      pending.checks.push_back(Check{&message, std::move(*device), std::nullopt});
    }
    if (pending.checks.empty()) return true;
    std::uint32_t attempt = 0;
    for (;;) {
      verify_all(pending.checks);
      std::optional<agent::Error> error = first_error(pending.checks);
      if (!error) break;
      if (!retry_after_error(*error, pending.messages.size(), attempt, stop)) return false;
    }
    std::unique_lock lock(handoff_mutex);
    handoff_cv.wait(lock, [&] { return !handoff || store_ended; });
    if (store_ended) {
      log.warning(k_service_component,
                  "stopping with {} envelopes not stored; they are not acked, so their agents "
                  "republish them",
                  pending.messages.size());
      return false;
    }
    handoff = std::move(pending);
    lock.unlock();
    handoff_cv.notify_all();
    return true;
  }

  static std::optional<agent::Error> first_error(const std::vector<Check>& checks) {
    for (const Check& check : checks) {
      if (!*check.outcome) return check.outcome->error();
    }
    return std::nullopt;
  }

  // Logs and counts a failed store attempt (key lookup or put) and sleeps its backoff. False when
  // the retries must end: stop requested, or the stop deadline passed.
  bool retry_after_error(const agent::Error& error, std::size_t envelopes, std::uint32_t& attempt,
                         std::stop_token stop) {
    const auto delay = store_backoff(attempt);
    if (attempt < 62) ++attempt;
    const std::string message =
        fmt::format("storing {} envelopes failed: {}", envelopes, error.message);
    log.error(k_service_component, "{}; nothing of them is acked; retrying in {}", message,
              agent::format_duration(delay));
    {
      std::lock_guard lock(stats_mutex);
      ++stats.store_errors;
      faults.set(stats, k_fault, message);
    }
    // stop_deadline is max() until stop() sets it; from then on it bounds every retry.
    const auto deadline = stop_deadline.load();
    const auto until = std::min(env.steady_now() + Clock::duration(delay), deadline);
    const bool slept = env.steady_now() < deadline && env.sleep_until(until, stop) &&
                       env.steady_now() < stop_deadline.load();
    if (!slept)
      log.warning(k_service_component,
                  "stopping with {} envelopes not stored; they are not acked, so their agents "
                  "republish them",
                  envelopes);
    return slept;
  }

  // ---- the store thread: commit and acks ----

  // Stores the verified batches one transaction each and decides the acks. Ends once the worker
  // has handed over its last batch and that is stored (or abandoned at the stop deadline).
  void store_batches(std::stop_token stop) {
    std::deque<std::pair<std::string, std::string>> audits;
    for (;;) {
      std::optional<Pending> pending;
      bool done = false;
      {
        std::unique_lock lock(handoff_mutex);
        const auto timeout = std::clamp<Clock::duration>(
            next_ack_due - env.steady_now(), Clock::duration::zero(), k_service_max_wait);
        handoff_cv.wait_for(lock, timeout, [&] {
          return handoff.has_value() || handoff_done || !audit_requests.empty();
        });
        audits.swap(audit_requests);
        if (handoff) {
          pending = std::move(handoff);
          handoff.reset();
        } else {
          done = handoff_done;
        }
      }
      for (const auto& [device, payload] : audits)
        acks.hand_answer(device, answer_audit(device, payload));
      audits.clear();
      if (pending) {
        handoff_cv.notify_all();
        if (!store_pending(*pending, stop)) break;
      }
      if (done) break;
      publish_due_acks();
    }
    publish_due_acks(/*final=*/true);
    {
      std::lock_guard lock(handoff_mutex);
      store_ended = true;
      handoff.reset();
    }
    handoff_cv.notify_all();
  }

  // Stores one verified batch in one transaction, retrying (verifying again first: a revocation
  // may have come meanwhile) until it is stored. False: given up; nothing of it is acked.
  bool store_pending(Pending& pending, std::stop_token stop) {
    std::uint32_t attempt = 0;
    for (;;) {
      std::optional<agent::Error> error = first_error(pending.checks);
      if (!error) {
        std::vector<Incoming> incoming;
        incoming.reserve(pending.checks.size());
        for (Check& check : pending.checks) {
          auto& verified = *check.outcome;
          Incoming item;
          if (verified->has_value())
            item.event = std::move(verified->value());
          else
            item.rejection = std::move(verified->error());
          incoming.push_back(std::move(item));
        }
        auto results = store.put(incoming, env.now_unix_ms());
        if (results) {
          apply_results(incoming, *results);
          return true;
        }
        error = results.error();
      }
      if (!retry_after_error(*error, pending.messages.size(), attempt, stop)) return false;
      verify_all(pending.checks);
    }
  }

  // Verifies every check (again, on a retry: a key lookup may have failed) on up to `verifiers`
  // threads, the worker included; each registry key is looked up once for the batch.
  void verify_all(std::vector<Check>& checks) {
    BatchKeys keys(store);
    const KeyLookup find_key = [&keys](std::string_view kid) { return keys.find(kid); };
    std::atomic<std::size_t> next{0};
    auto run = [&] {
      for (std::size_t i = next.fetch_add(1, std::memory_order_relaxed); i < checks.size();
           i = next.fetch_add(1, std::memory_order_relaxed)) {
        Check& check = checks[i];
        check.outcome = verify_envelope_with(find_key, check.message->topic, check.device,
                                             check.message->payload);
      }
    };
    const std::size_t helpers =
        std::min<std::size_t>(verifiers - 1, checks.size() / k_envelopes_per_verifier);
    std::vector<std::jthread> threads;
    threads.reserve(helpers);
    for (std::size_t i = 0; i < helpers; ++i) {
      try {
        threads.emplace_back(run);
      } catch (const std::system_error&) {
        break;  // no thread to be had: the others, or the worker alone, verify the rest
      }
    }
    run();
  }  // joins the helpers

  milliseconds store_backoff(std::uint32_t attempt) const {
    milliseconds delay = k_store_retry_min;
    for (std::uint32_t i = 0; i < attempt && delay < k_store_retry_max; ++i)
      delay *= 2;
    return std::min<milliseconds>(delay, k_store_retry_max);
  }

  void apply_results(const std::vector<Incoming>& incoming, const std::vector<PutResult>& results) {
    std::uint64_t stored = 0;
    std::uint64_t duplicates = 0;
    std::uint64_t repeated = 0;
    std::uint64_t not_kept = 0;
    std::vector<std::string> reasons;
    const auto now = env.steady_now();
    for (std::size_t i = 0; i < incoming.size() && i < results.size(); ++i) {
      const Incoming& item = incoming[i];
      const PutResult& result = results[i];
      switch (result.outcome) {
        case PutOutcome::stored:
          ++stored;
          log.debug(k_service_component, "stored {} seq {} {}", item.event->device, item.event->seq,
                    item.event->action);
          // Storing it proved a held successor wrong: that one is a rejection now.
          if (!result.detail.empty() && log_limiter.admit(item.event->device, now))
            log.warning(k_service_component, "stored {} stream {} seq {}; {}", item.event->device,
                        item.event->stream, item.event->seq, result.detail);
          mark(item.event->device, false);
          checkpoint_dirty = true;
          break;
        case PutOutcome::duplicate:
          ++duplicates;
          log.debug(k_service_component, "duplicate {} seq {}", item.event->device,
                    item.event->seq);
          mark(item.event->device, true);
          break;
        case PutOutcome::rejected:
          reasons.push_back(std::string(to_string(log_rejection(item, result, now))));
          if (result.kept == RejectionKept::repeat) ++repeated;
          if (result.kept == RejectionKept::counted) ++not_kept;
          break;
      }
    }
    for (const auto& summary : log_limiter.take_summaries(now))
      log.warning(k_service_component,
                  "{} more rejections of {} in {} were not logged; `reflow-ingest rejections` and "
                  "`reflow-ingest stats` have them",
                  summary.suppressed, summary.sender, agent::format_duration(k_log_limits.window));
    std::lock_guard lock(stats_mutex);
    faults.clear(stats, k_fault);  // stored: the store works again
    stats.stored += stored;
    stats.duplicates += duplicates;
    stats.rejected += reasons.size();
    stats.rejections_repeated += repeated;
    stats.rejections_not_kept += not_kept;
    stats.rejection_logs_suppressed = log_limiter.suppressed_total();
    for (const auto& reason : reasons)
      ++stats.rejected_by_reason[reason];
  }

  RejectReason log_rejection(const Incoming& item, const PutResult& result,
                             RejectionLogLimiter::TimePoint now) {
    std::string device;
    std::optional<std::string> stream;
    std::optional<std::int64_t> seq;
    RejectReason reason = result.reason.value_or(RejectReason::malformed_jws);
    std::string detail = result.detail;
    if (item.event) {
      device = item.event->device;
      stream = item.event->stream;
      seq = item.event->seq;
    } else if (item.rejection) {
      device = item.rejection->device;
      stream = item.rejection->stream;
      seq = item.rejection->seq;
      if (!result.reason) reason = item.rejection->reason;
      if (detail.empty()) detail = item.rejection->detail;
    }
    if (log_limiter.admit(device, now))
      log.warning(k_service_component, "rejected {} stream {} seq {}: {}: {}{}", device,
                  stream.value_or("?"), seq ? std::to_string(*seq) : std::string("?"),
                  to_string(reason), detail,
                  result.kept == RejectionKept::repeat    ? " (a repeat: counted on its row)"
                  : result.kept == RejectionKept::counted ? " (over the sender's cap: counted only)"
                                                          : "");
    return reason;
  }

  // ---- the devices' verified log sizes, from their status (PROTOCOL §5.1, §6) ----

  // Runs on a Paho thread.
  void note_status(std::string_view topic, std::string_view payload) {
    if (signer == nullptr) return;
    constexpr std::string_view k_suffix = "/status";
    const std::string_view prefix = config.topic_prefix;
    if (topic.size() <= prefix.size() + 1 + k_suffix.size() || !topic.starts_with(prefix) ||
        topic[prefix.size()] != '/' || !topic.ends_with(k_suffix))
      return;
    const std::string_view device =
        topic.substr(prefix.size() + 1, topic.size() - prefix.size() - 1 - k_suffix.size());
    if (device.empty() || device.find('/') != std::string_view::npos) return;
    auto status = agent::parse_json_strict(payload, /*max_depth=*/2);
    if (!status || !status->is_object()) return;
    auto it = status->find("verified_tree_size");
    if (it == status->end() || !it->is_number_unsigned()) return;
    const auto size = it->get<std::uint64_t>();
    {
      std::lock_guard lock(status_mutex);
      auto [entry, added] = verified_sizes.try_emplace(std::string(device), size);
      if (!added && entry->second == size) return;
      entry->second = size;
      resign.insert(entry->first);
    }
    handoff_cv.notify_all();
  }

  // ---- audits (PROTOCOL §5.2) ----

  // Runs on a Paho thread.
  void note_audit_request(std::string_view topic, std::string_view payload) {
    const std::string_view suffix = agent::audit::k_request_suffix;
    const std::string_view prefix = config.topic_prefix;
    if (topic.size() <= prefix.size() + 1 + suffix.size() || !topic.starts_with(prefix) ||
        topic[prefix.size()] != '/' || !topic.ends_with(suffix))
      return;
    const std::string_view device =
        topic.substr(prefix.size() + 1, topic.size() - prefix.size() - 1 - suffix.size());
    if (device.empty() || device.find('/') != std::string_view::npos) return;
    {
      std::lock_guard lock(handoff_mutex);
      if (audit_requests.size() >= k_max_audit_requests) return;
      audit_requests.emplace_back(std::string(device), std::string(payload));
    }
    handoff_cv.notify_all();
  }

  // Store thread: the answer to one audit request of `device`, from the log as it is now. A
  // proof the log cannot give (a hash of it deleted or damaged, a size beyond it) is answered
  // for that leaf or for the consistency alone, so that the auditor names each event it cannot
  // prove instead of learning nothing (PROTOCOL §5.2).
  std::string answer_audit(const std::string& device, const std::string& payload) {
    agent::audit::ProofAnswer answer;
    auto request = agent::audit::parse_request(payload);
    if (!request) {
      answer.error = request.error().message;
      return agent::audit::encode(answer);
    }
    answer.id = request->id;
    answer.tree_size = request->tree_size;
    std::size_t failures = 0;
    auto failed = [&](std::string_view what, const agent::Error& error) {
      // One line a request: a damaged log fails every proof that needs the damaged hash.
      if (failures++ == 0)
        log.warning(k_service_component, "answering the audit request {} of {}: {}: {}",
                    request->id, device, what, error.message);
      return error.message;
    };
    if (request->from_size > 0) {
      answer.consistency_from = request->from_size;
      auto consistency = store.log_consistency_proof(request->from_size, request->tree_size);
      if (consistency)
        answer.consistency = std::move(*consistency);
      else
        answer.consistency_error = failed("the consistency proof", consistency.error());
    }
    for (const std::int64_t seq : request->seqs) {
      auto proof = store.log_audit(device, request->stream, seq, request->tree_size);
      if (!proof) {
        answer.unproven.push_back(
            {seq, failed(fmt::format("the proof of seq {}", seq), proof.error())});
        continue;
      }
      if (!*proof) {
        answer.missing.push_back(seq);
        continue;
      }
      answer.proofs.push_back(
          {seq, (*proof)->entry.index, (*proof)->envelope_leaf, std::move((*proof)->proof)});
    }
    log.debug(k_service_component,
              "answered the audit request {} of {}: {} proofs, {} missing, {} unproven",
              request->id, device, answer.proofs.size(), answer.missing.size(),
              answer.unproven.size());
    return agent::audit::encode(answer);
  }

  // The size `device` last verified, per its status; 0 when none came.
  std::uint64_t verified_size_of(const std::string& device) {
    std::lock_guard lock(status_mutex);
    auto it = verified_sizes.find(device);
    return it == verified_sizes.end() ? 0 : it->second;
  }

  // Store thread: the devices whose verified size changed get their ack signed again, with a
  // proof from that size.
  void mark_resigned() {
    std::map<std::string, std::uint64_t, std::less<>> devices;
    {
      std::lock_guard lock(status_mutex);
      for (const auto& device : resign)
        devices.emplace(device, verified_sizes[device]);
      resign.clear();
    }
    // Only when the last signed ack does not verify for the device as it is now: it neither
    // states the log the device verified nor proves the growth from it (after a restart
    // nothing is known, so the retained ack is signed again).
    for (const auto& [device, size] : devices) {
      auto it = device_acks.find(device);
      if (it != device_acks.end() && it->second.last_tree_size &&
          (*it->second.last_tree_size == size || it->second.last_consistency_from == size))
        continue;
      mark(device, /*force=*/true);
    }
  }

  void mark(const std::string& device, bool force) {
    DeviceAck& ack = device_acks[device];
    ack.dirty = true;
    ack.force = ack.force || force;
  }

  // Publishes the acks that are due; the others set next_ack_due. `final` ignores the interval:
  // the service is stopping and the last ack must not wait for a next time.
  void publish_due_acks(bool final = false) {
    mark_resigned();
    const auto now = env.steady_now();
    next_ack_due = Clock::time_point::max();
    for (auto& [device, ack] : device_acks) {
      if (!ack.dirty) continue;
      if (!final && ack.last_sent && now < *ack.last_sent + config.ack_interval) {
        next_ack_due = std::min(next_ack_due, *ack.last_sent + config.ack_interval);
        continue;
      }
      auto point = store.ack_point(device);
      if (!point) {
        log.warning(k_service_component, "reading the ack point of {} failed: {}; retrying", device,
                    point.error().message);
        next_ack_due = std::min(next_ack_due, now + k_service_max_wait);
        continue;
      }
      if (!*point || (*point)->seq == 0) {
        ack.dirty = ack.force = false;
        continue;
      }
      const AckPoint& current = **point;
      if (!ack.force && ack.last_published && ack.last_published->stream == current.stream &&
          ack.last_published->seq == current.seq) {
        ack.dirty = false;
        continue;
      }
      auto body = ack_body_of(device, current, ack);
      if (!body) {
        log.warning(k_service_component, "signing the ack of {} failed: {}; retrying", device,
                    body.error().message);
        next_ack_due = std::min(next_ack_due, now + k_service_max_wait);
        continue;
      }
      acks.hand(device, std::move(*body));
      ack.dirty = ack.force = false;
      ack.last_sent = now;
      ack.last_published = current;
    }
    publish_due_checkpoint(now, final);
  }

  // The ack's body: unsigned without a node key (PROTOCOL §5), else with the node's signed
  // statement of the event's inclusion in the log as it is now (§5.1).
  Result<std::string> ack_body_of(const std::string& device, const AckPoint& point,
                                  DeviceAck& ack) {
    if (signer == nullptr) return ack_body(point, nullptr);
    auto inclusion = store.log_inclusion(device, point.stream, point.seq);
    if (!inclusion) return std::unexpected(inclusion.error());
    if (!*inclusion)
      return agent::fail(
          agent::ErrorCode::not_found,
          fmt::format("stream {} seq {} is not in the log", point.stream, point.seq));
    AckStatement statement{device,
                           point,
                           env.now_unix_ms(),
                           (*inclusion)->checkpoint.size,
                           (*inclusion)->checkpoint.root,
                           (*inclusion)->entry.index,
                           std::move((*inclusion)->proof),
                           std::nullopt,
                           {}};
    // The proof that this log extends the one the device verified last (log2 of the size in
    // hashes); none when the device verified nothing yet or this very log.
    if (const auto from = verified_size_of(device); from > 0 && from < statement.tree_size) {
      auto consistency = store.log_consistency_proof(from, statement.tree_size);
      if (!consistency) return std::unexpected(consistency.error());
      statement.consistency_from = from;
      statement.consistency = std::move(*consistency);
    }
    const nlohmann::ordered_json signed_ack = signer->sign_ack(statement);
    ack.last_tree_size = statement.tree_size;
    ack.last_consistency_from = statement.consistency_from;
    return ack_body(point, &signed_ack);
  }

  // Hands the log's signed checkpoint to the publisher when the log grew, at most once per
  // k_checkpoint_interval (a trailing one after a burst; at once when `final`).
  void publish_due_checkpoint(Clock::time_point now, bool final) {
    if (signer == nullptr || !checkpoint_dirty) return;
    if (!final && last_checkpoint_sent && now < *last_checkpoint_sent + k_checkpoint_interval) {
      next_ack_due = std::min(next_ack_due, *last_checkpoint_sent + k_checkpoint_interval);
      return;
    }
    auto checkpoint = store.log_checkpoint();
    if (!checkpoint) {
      log.warning(k_service_component, "reading the log's checkpoint failed: {}; retrying",
                  checkpoint.error().message);
      next_ack_due = std::min(next_ack_due, now + k_service_max_wait);
      return;
    }
    checkpoint_dirty = false;
    if (last_checkpoint_size == checkpoint->size) return;
    acks.hand_checkpoint(signer->checkpoint_note(*checkpoint));
    last_checkpoint_sent = now;
    last_checkpoint_size = checkpoint->size;
    log.debug(k_service_component, "published the log's checkpoint of {} leaves", checkpoint->size);
  }

  const IngestConfig& config;
  Store& store;
  agent::Env& env;
  agent::Logger& log;
  std::mutex& stats_mutex;
  IngestCounters& stats;
  FaultBoard& faults;  // under stats_mutex
  static constexpr std::string_view k_fault = "store";
  // Set by IngestService::stop(), read by the worker and store threads while they run.
  const StopDeadline& stop_deadline;
  AckPublisher& acks;  ///< the store thread hands it the acks
  const std::size_t queue_capacity;
  const unsigned verifiers;  ///< threads verifying a batch, the worker included

  std::mutex messages_mutex;
  std::condition_variable_any not_empty;
  std::condition_variable not_full;
  std::deque<Message> messages;
  bool intake_closed = false;

  RejectionLogLimiter log_limiter{k_log_limits};  ///< the store thread's

  // From the worker to the store thread: one verified batch at a time, so that verifying the
  // next batch overlaps committing this one while memory stays bounded.
  std::mutex handoff_mutex;
  std::condition_variable handoff_cv;
  std::optional<Pending> handoff;
  bool handoff_done = false;  ///< the worker has handed over its last batch
  bool store_ended = false;   ///< the store thread takes nothing more
  /// Audit requests (device, payload) for the store thread to answer (PROTOCOL §5.2).
  std::deque<std::pair<std::string, std::string>> audit_requests;

  // Owned by the store thread.
  std::map<std::string, DeviceAck> device_acks;

  // From Paho's thread (note_status) to the store thread: each device's verified log size.
  std::mutex status_mutex;
  std::map<std::string, std::uint64_t, std::less<>> verified_sizes;
  std::set<std::string, std::less<>> resign;  ///< devices whose size changed since last looked
  Clock::time_point next_ack_due = Clock::time_point::max();
  const NodeSigner* signer = nullptr;  ///< set before start(); null: unsigned acks (§5)
  bool checkpoint_dirty = true;        ///< the log may have grown since the last checkpoint
  std::optional<Clock::time_point> last_checkpoint_sent;
  std::optional<std::uint64_t> last_checkpoint_size;

  std::jthread store_thread;
  std::jthread worker_thread;
};

IngestPipeline::IngestPipeline(const IngestConfig& config, Store& store, agent::Env& env,
                               agent::Logger& log, ServiceStats& stats,
                               const StopDeadline& stop_deadline, AckPublisher& acks)
    : m_impl(std::make_unique<Impl>(config, store, env, log, stats, stop_deadline, acks)) {}

IngestPipeline::~IngestPipeline() {
  stop();
}

void IngestPipeline::set_signer(const NodeSigner* signer) {
  m_impl->signer = signer;
}

void IngestPipeline::start() {
  m_impl->store_thread =
      std::jthread([impl = m_impl.get()](std::stop_token stop) { impl->store_batches(stop); });
  m_impl->worker_thread =
      std::jthread([impl = m_impl.get()](std::stop_token stop) { impl->work(stop); });
}

void IngestPipeline::enqueue(std::string topic, std::string payload) {
  m_impl->enqueue(Impl::Message{std::move(topic), std::move(payload)});
}

void IngestPipeline::note_audit_request(std::string_view topic, std::string_view payload) {
  m_impl->note_audit_request(topic, payload);
}

void IngestPipeline::note_status(std::string_view topic, std::string_view payload) {
  m_impl->note_status(topic, payload);
}

void IngestPipeline::close_intake() {
  m_impl->close_intake();
}

void IngestPipeline::stop() {
  m_impl->close_intake();
  if (m_impl->worker_thread.joinable()) {
    m_impl->worker_thread.request_stop();
    m_impl->worker_thread.join();
  } else {
    // No worker to hand over a last batch (start() failed): the store thread ends at once.
    {
      std::lock_guard lock(m_impl->handoff_mutex);
      m_impl->handoff_done = true;
    }
    m_impl->handoff_cv.notify_all();
  }
  if (m_impl->store_thread.joinable()) {
    m_impl->store_thread.request_stop();
    m_impl->store_thread.join();
  }
}

}  // namespace ingest
