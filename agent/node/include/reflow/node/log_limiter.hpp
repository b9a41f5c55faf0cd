// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ingest {

/// How many rejections the service logs per sender (issue 14: a client sending garbage must not
/// fill the log): the first `per_window` of each sender in a window of `window`, then one summary
/// line for the rest when the window ends.
struct LogLimits {
  std::size_t per_window = 10;
  std::chrono::milliseconds window{60'000};
  /// Senders tracked at once; rejections of further senders share the bucket "*" (the topic's
  /// DEVICE is whatever a client writes, so it cannot key an unbounded map).
  std::size_t max_senders = 1024;
};

/// Decides which rejections get a log line, per sender (the topic's DEVICE). The clock is the
/// caller's (the Env's steady clock), so tests drive it by hand. Not thread-safe: the service
/// uses it from its store thread only.
class RejectionLogLimiter {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  /// A sender whose window ended with rejections not logged.
  struct Summary {
    std::string sender;
    std::uint64_t suppressed = 0;
  };

  explicit RejectionLogLimiter(LogLimits limits = {});

  /// True when the rejection from `sender` at `now` is to be logged; false counts it as
  /// suppressed (reported by take_summaries).
  bool admit(std::string_view sender, TimePoint now);

  /// The senders whose window has ended by `now` and who had rejections suppressed in it, each
  /// once, oldest window first; forgets every sender whose window has ended.
  std::vector<Summary> take_summaries(TimePoint now);

  /// Rejections not logged since construction.
  std::uint64_t suppressed_total() const noexcept { return m_suppressed_total; }

 private:
  struct Window {
    TimePoint start;
    std::size_t logged = 0;
    std::uint64_t suppressed = 0;
  };

  LogLimits m_limits;
  std::unordered_map<std::string, Window> m_senders;
  std::vector<std::pair<TimePoint, Summary>> m_ended;  ///< windows closed by admit()
  std::uint64_t m_suppressed_total = 0;
};

}  // namespace ingest
