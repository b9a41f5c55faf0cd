// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/writer.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/device/outbox.hpp>

#include "temp_dir.hpp"

namespace agent {
namespace {

using nlohmann::ordered_json;

// Generous: a commit takes milliseconds; this bound only turns a hang into a failure.
constexpr auto k_wait = std::chrono::seconds(30);
constexpr std::int64_t k_day_ms = 24 * 60 * 60 * 1000;
const std::string k_writer_device = "fablab-mk4-01";

ordered_json use_event() {
  return ordered_json::parse(R"({"action":"use","resourceInventoriedAs":"printer:1",
      "effortQuantity":{"hasNumericalValue":1.5,"hasUnit":"hour"},
      "hasPointInTime":"2026-01-01T00:00:00Z"})");
}

EventSource sim_source() {
  return EventSource{"sim", "demo", "job 7"};
}

// One submission: what submit() said at once, and the callback's answer when it comes.
struct Submission {
  Status status;
  std::future<Result<Committed>> answer;
  std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
};

Submission submit(Writer& writer, ordered_json fields, QueueFull when_full = QueueFull::wait) {
  Submission s;
  auto promise = std::make_shared<std::promise<Result<Committed>>>();
  s.answer = promise->get_future();
  auto calls = s.calls;
  s.status = writer.submit(
      std::move(fields), sim_source(),
      [promise, calls](Result<Committed> committed) {
        // A second call would throw from set_value; count instead so the test can say so.
        if (calls->fetch_add(1) == 0) promise->set_value(std::move(committed));
      },
      when_full);
  return s;
}

Result<Committed> wait_answer(Submission& s) {
  if (s.answer.wait_for(k_wait) != std::future_status::ready)
    return fail(ErrorCode::timeout, "the writer did not answer within 30 s");
  return s.answer.get();
}

struct CheckedEvent {
  OutboxEvent stored;
  ordered_json payload;
  std::string signing_input;
};

class WriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto key = DeviceKey::generate(m_dir / "device.key");
    ASSERT_TRUE(key) << key.error().message;
    m_key.emplace(std::move(*key));
    open_outbox();
  }

  void open_outbox(std::uint64_t quota_bytes = 256ull * 1024 * 1024) {
    m_writer.reset();
    m_outbox.reset();
    OutboxOptions options;
    options.path = m_dir / "outbox.db";
    options.device_id = k_writer_device;
    options.quota_bytes = quota_bytes;
    auto outbox = Outbox::open(options, m_env, m_log);
    ASSERT_TRUE(outbox) << outbox.error().message;
    m_outbox = std::move(*outbox);
  }

  void make_writer(std::size_t queue_capacity = 4096) {
    m_writer.reset();
    m_writer = std::make_unique<Writer>(
        Writer::Options{
            .device_id = k_writer_device, .queue_capacity = queue_capacity, .max_batch = 1024},
        *m_key, *m_outbox, m_env, m_log);
  }

  // Submits one valid event and waits for its commit.
  Result<Committed> commit_one() {
    Submission s = submit(*m_writer, use_event());
    if (!s.status) return std::unexpected(s.status.error());
    return wait_answer(s);
  }

  std::vector<OutboxEvent> stored_from(std::int64_t from_seq) {
    auto rows = m_outbox->read_from(from_seq, 1'000'000);
    EXPECT_TRUE(rows) << rows.error().message;
    return rows ? *rows : std::vector<OutboxEvent>{};
  }

  // Verifies every envelope and the chain of PROTOCOL §4 over `rows`, which must start at seq 1.
  std::vector<CheckedEvent> check_chain(const std::vector<OutboxEvent>& rows) {
    std::vector<CheckedEvent> out;
    const std::string stream = m_outbox->head().stream;
    std::string previous_signing_input;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const OutboxEvent& row = rows[i];
      SCOPED_TRACE("stored event " + std::to_string(i + 1));
      auto verified = jws_verify(row.envelope, m_key->public_jwk());
      EXPECT_TRUE(verified) << verified.error().message;
      if (!verified) return out;
      ordered_json payload = ordered_json::parse(verified->payload, nullptr, false);
      EXPECT_TRUE(payload.is_object()) << verified->payload;
      if (!payload.is_object()) return out;
      EXPECT_TRUE(validate_event_payload(payload)) << verified->payload;

      const auto seq = static_cast<std::int64_t>(i + 1);
      EXPECT_EQ(row.seq, seq);
      EXPECT_EQ(payload["seq"], seq);
      EXPECT_EQ(payload["v"], 1);
      EXPECT_EQ(payload["id"], row.id);
      EXPECT_EQ(payload["device"], k_writer_device);
      EXPECT_EQ(payload["stream"], stream);
      if (seq == 1)
        EXPECT_TRUE(payload["prev"].is_null()) << payload["prev"];
      else
        EXPECT_EQ(payload["prev"], sha256_b64url(previous_signing_input));
      EXPECT_EQ(payload["source"]["driver"], "sim");
      EXPECT_EQ(payload["source"]["instance"], "demo");
      EXPECT_EQ(payload["action"], "use");
      previous_signing_input = verified->jws.signing_input();
      out.push_back(CheckedEvent{row, std::move(payload), previous_signing_input});
    }
    return out;
  }

  reflow_test::TempDir m_dir;
  FakeEnv m_env;
  Logger m_log{LogLevel::warning};
  std::optional<DeviceKey> m_key;
  std::unique_ptr<Outbox> m_outbox;
  std::unique_ptr<Writer> m_writer;  // declared last: destroyed (and stopped) first
};

TEST_F(WriterTest, CommitsEventsInSeqOrderWithAnUnbrokenChain) {
  make_writer();
  m_writer->start();
  constexpr std::size_t n = 50;
  std::vector<Submission> submissions;
  for (std::size_t i = 0; i < n; ++i) {
    submissions.push_back(submit(*m_writer, use_event()));
    ASSERT_TRUE(submissions.back().status) << submissions.back().status.error().message;
  }
  std::vector<Committed> answers;
  for (auto& s : submissions) {
    auto answer = wait_answer(s);
    ASSERT_TRUE(answer) << answer.error().message;
    answers.push_back(*answer);
  }

  auto events = check_chain(stored_from(1));
  ASSERT_EQ(events.size(), n);
  for (std::size_t i = 0; i < n; ++i) {
    EXPECT_EQ(answers[i].seq, events[i].stored.seq);
    EXPECT_EQ(answers[i].id, events[i].stored.id);
    EXPECT_EQ(submissions[i].calls->load(), 1);
  }
  EXPECT_EQ(m_outbox->head().last_seq, static_cast<std::int64_t>(n));
  EXPECT_EQ(m_outbox->head().last_hash, sha256_b64url(events.back().signing_input));
}

// Submitted before start(), the events form batches of max_batch (1024 here), which the writer
// signs on several threads: every signature must still verify and the chain hold.
TEST_F(WriterTest, SignsLargeBatchesCorrectly) {
  make_writer();
  constexpr std::size_t n = 1500;
  std::vector<Submission> submissions;
  for (std::size_t i = 0; i < n; ++i) {
    submissions.push_back(submit(*m_writer, use_event()));
    ASSERT_TRUE(submissions.back().status) << submissions.back().status.error().message;
  }
  m_writer->start();
  for (std::size_t i = 0; i < n; ++i) {
    auto answer = wait_answer(submissions[i]);
    ASSERT_TRUE(answer) << answer.error().message;
    EXPECT_EQ(answer->seq, static_cast<std::int64_t>(i + 1));
  }
  EXPECT_EQ(check_chain(stored_from(1)).size(), n);
}

TEST_F(WriterTest, RefusesInvalidSubmissionAtOnceWithoutCallingBack) {
  make_writer();
  m_writer->start();

  ordered_json unknown_action = use_event();
  unknown_action["action"] = "borrow";
  Submission bad_action = submit(*m_writer, unknown_action);
  ASSERT_FALSE(bad_action.status);
  EXPECT_EQ(bad_action.status.error().code, ErrorCode::rejected);
  EXPECT_NE(bad_action.status.error().message.find("action"), std::string::npos)
      << bad_action.status.error().message;

  ordered_json agent_field = use_event();
  agent_field["seq"] = 7;
  Submission bad_seq = submit(*m_writer, agent_field);
  ASSERT_FALSE(bad_seq.status);
  EXPECT_EQ(bad_seq.status.error().code, ErrorCode::rejected);
  EXPECT_NE(bad_seq.status.error().message.find("seq"), std::string::npos)
      << bad_seq.status.error().message;

  // Callbacks run in commit order on one thread: once a later good event is answered, an earlier
  // refused one would have been answered too if it had been queued.
  auto good = commit_one();
  ASSERT_TRUE(good) << good.error().message;
  EXPECT_EQ(good->seq, 1);
  EXPECT_EQ(bad_action.calls->load(), 0);
  EXPECT_EQ(bad_seq.calls->load(), 0);
  EXPECT_EQ(stored_from(1).size(), 1u);
}

// PROTOCOL v1 asks less than zenflows: a `use` without its process is a valid event, which the
// writer commits (producers written against v1 keep working), but it is counted and the latest
// such warning names the source, the field and the rule. An event that follows zenflows' rules is
// not counted, nor is one the writer refuses.
TEST_F(WriterTest, CommitsButCountsEventsThatZenflowsWouldRefuse) {
  make_writer();
  m_writer->start();
  EXPECT_EQ(m_writer->zenflows_warnings(), 0u);
  EXPECT_EQ(m_writer->last_zenflows_warning(), "");

  auto without_process = commit_one();  // use_event() has no inputOf
  ASSERT_TRUE(without_process) << without_process.error().message;
  EXPECT_EQ(m_writer->zenflows_warnings(), 1u);
  EXPECT_EQ(m_writer->last_zenflows_warning(),
            "sim/demo: inputOf: required for action \"use\" (zenflows, valueflows.md §2c: a use "
            "is an input of a process)");

  ordered_json with_process = use_event();
  with_process["inputOf"] = "sim:demo:job-7";
  Submission good = submit(*m_writer, with_process);
  ASSERT_TRUE(good.status) << good.status.error().message;
  ASSERT_TRUE(wait_answer(good));
  ordered_json invalid = with_process;
  invalid.erase("effortQuantity");  // PROTOCOL §4's own minimum: refused, not warned about
  EXPECT_FALSE(submit(*m_writer, invalid).status);
  EXPECT_EQ(m_writer->zenflows_warnings(), 1u);
  EXPECT_EQ(stored_from(1).size(), 2u);

  ASSERT_TRUE(commit_one());
  EXPECT_EQ(m_writer->zenflows_warnings(), 2u);
}

TEST_F(WriterTest, RecordedNeverGoesBackwardsWhenTheClockDoes) {
  make_writer();
  m_writer->start();
  ASSERT_TRUE(commit_one());
  m_env.set_unix_ms(m_env.now_unix_ms() - k_day_ms);
  ASSERT_TRUE(commit_one());

  // Across a restart the floor comes from the outbox, not from the writer's memory.
  const std::string stream = m_outbox->head().stream;
  open_outbox();
  make_writer();
  m_writer->start();
  m_env.set_unix_ms(m_env.now_unix_ms() - k_day_ms);
  auto third = commit_one();
  ASSERT_TRUE(third) << third.error().message;
  EXPECT_EQ(third->seq, 3);
  EXPECT_EQ(m_outbox->head().stream, stream);

  auto events = check_chain(stored_from(1));
  ASSERT_EQ(events.size(), 3u);
  for (std::size_t i = 1; i < events.size(); ++i) {
    SCOPED_TRACE("event " + std::to_string(i + 1));
    EXPECT_GE(events[i].stored.recorded_unix_ms, events[i - 1].stored.recorded_unix_ms);
    // Same RFC 3339 shape throughout, so string order is time order.
    EXPECT_GE(events[i].payload["recorded"].get<std::string>(),
              events[i - 1].payload["recorded"].get<std::string>());
  }
  EXPECT_GT(events[0].stored.recorded_unix_ms, m_env.now_unix_ms());
}

TEST_F(WriterTest, MarksClockUnsyncedWhenTheKernelSaysSo) {
  make_writer();
  m_writer->start();
  m_env.set_clock_sync(ClockSync::synced);
  ASSERT_TRUE(commit_one());
  m_env.set_clock_sync(ClockSync::unsynced);
  ASSERT_TRUE(commit_one());
  m_env.set_clock_sync(ClockSync::synced);
  ASSERT_TRUE(commit_one());

  auto events = check_chain(stored_from(1));
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].payload["clock"], "synced");
  EXPECT_EQ(events[1].payload["clock"], "unsynced");
  EXPECT_EQ(events[2].payload["clock"], "synced");
}

TEST_F(WriterTest, RefusesWithNoSpaceWhenUnackedEventsFillTheQuotaAndRecoversAfterAck) {
  open_outbox(64 * 1024);
  make_writer();
  m_writer->start();

  std::int64_t last_ok = 0;
  std::optional<Error> refusal;
  for (int i = 0; i < 10'000 && !refusal; ++i) {
    auto answer = commit_one();
    if (answer) {
      EXPECT_EQ(answer->seq, last_ok + 1);
      last_ok = answer->seq;
    } else {
      refusal = answer.error();
    }
  }
  ASSERT_TRUE(refusal) << "64 KiB of unacked events never filled the quota";
  EXPECT_EQ(refusal->code, ErrorCode::no_space) << refusal->message;
  EXPECT_NE(refusal->message.find("quota"), std::string::npos) << refusal->message;
  EXPECT_GT(m_writer->refused_quota(), 0u);
  EXPECT_GT(last_ok, 1);
  EXPECT_EQ(m_outbox->head().last_seq, last_ok);

  // Still full: refused again, and the refusal does not use up a seq.
  auto again = commit_one();
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::no_space);

  auto before_ack = check_chain(stored_from(1));
  ASSERT_EQ(before_ack.size(), static_cast<std::size_t>(last_ok));

  auto acked = m_outbox->apply_ack(m_outbox->head().stream, last_ok);
  ASSERT_TRUE(acked) << acked.error().message;
  EXPECT_EQ(*acked, last_ok);

  for (int i = 1; i <= 3; ++i) {
    auto answer = commit_one();
    ASSERT_TRUE(answer) << answer.error().message;
    EXPECT_EQ(answer->seq, last_ok + i);
  }

  // The chain runs on across the refusals and the pruning: no gap in seq, prev links up.
  std::vector<OutboxEvent> all;
  for (const auto& e : before_ack)
    all.push_back(e.stored);
  for (auto& row : stored_from(last_ok + 1))
    all.push_back(row);
  auto events = check_chain(all);
  EXPECT_EQ(events.size(), static_cast<std::size_t>(last_ok + 3));
}

TEST_F(WriterTest, QueueFullRefusesWithBusyWhenAskedTo) {
  make_writer(4);  // not started: nothing drains the queue
  std::vector<Submission> queued;
  for (int i = 0; i < 4; ++i) {
    queued.push_back(submit(*m_writer, use_event(), QueueFull::refuse));
    ASSERT_TRUE(queued.back().status) << queued.back().status.error().message;
  }
  Submission fifth = submit(*m_writer, use_event(), QueueFull::refuse);
  ASSERT_FALSE(fifth.status);
  EXPECT_EQ(fifth.status.error().code, ErrorCode::busy);
  EXPECT_EQ(m_writer->refused_busy(), 1u);

  m_writer->start();
  for (int i = 0; i < 4; ++i) {
    auto answer = wait_answer(queued[i]);
    ASSERT_TRUE(answer) << answer.error().message;
    EXPECT_EQ(answer->seq, i + 1);
  }
  EXPECT_EQ(fifth.calls->load(), 0);
  EXPECT_EQ(check_chain(stored_from(1)).size(), 4u);
}

TEST_F(WriterTest, StopCommitsWhatWasQueued) {
  make_writer();
  std::vector<Submission> queued;
  for (int i = 0; i < 5; ++i) {
    queued.push_back(submit(*m_writer, use_event()));
    ASSERT_TRUE(queued.back().status) << queued.back().status.error().message;
  }
  m_writer->start();
  m_writer->stop();

  // stop() returns only once the queue is committed, so every answer is already there.
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(queued[i].answer.wait_for(std::chrono::seconds(0)), std::future_status::ready)
        << "submission " << i + 1 << " not answered when stop() returned";
    auto answer = queued[i].answer.get();
    ASSERT_TRUE(answer) << answer.error().message;
    EXPECT_EQ(answer->seq, i + 1);
  }
  EXPECT_EQ(check_chain(stored_from(1)).size(), 5u);

  Submission late = submit(*m_writer, use_event());
  ASSERT_FALSE(late.status);
  EXPECT_EQ(late.status.error().code, ErrorCode::shutting_down);
  EXPECT_EQ(late.calls->load(), 0);
  EXPECT_EQ(stored_from(1).size(), 5u);
}

TEST_F(WriterTest, CallsTheCommitListenerWithTheLastSeq) {
  make_writer();
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::int64_t> seen;
  m_writer->set_commit_listener([&](std::int64_t last_seq) {
    {
      std::lock_guard lock(mutex);
      seen.push_back(last_seq);
    }
    changed.notify_all();
  });
  // Some queued before start (one group commit), some after.
  std::vector<Submission> submissions;
  for (int i = 0; i < 5; ++i)
    submissions.push_back(submit(*m_writer, use_event()));
  m_writer->start();
  for (int i = 0; i < 5; ++i)
    submissions.push_back(submit(*m_writer, use_event()));
  for (auto& s : submissions)
    ASSERT_TRUE(wait_answer(s));

  std::unique_lock lock(mutex);
  // The listener runs after the callbacks of its batch, so wait for it rather than assume.
  ASSERT_TRUE(changed.wait_for(lock, k_wait, [&] { return !seen.empty() && seen.back() == 10; }))
      << "listener never saw seq 10";
  for (std::size_t i = 1; i < seen.size(); ++i)
    EXPECT_GT(seen[i], seen[i - 1]);
  EXPECT_LE(seen.size(), 10u);
  EXPECT_EQ(m_outbox->head().last_seq, 10);
  lock.unlock();
  m_writer->stop();  // the listener refers to this test's locals
}

}  // namespace
}  // namespace agent
