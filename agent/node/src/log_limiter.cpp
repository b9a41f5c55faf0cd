// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/node/log_limiter.hpp>

#include <algorithm>

namespace ingest {
namespace {

// The bucket of the senders beyond LogLimits::max_senders; no device id can be "*".
constexpr std::string_view k_overflow = "*";

}  // namespace

RejectionLogLimiter::RejectionLogLimiter(LogLimits limits) : m_limits(limits) {}

bool RejectionLogLimiter::admit(std::string_view sender, TimePoint now) {
  auto it = m_senders.find(std::string(sender));
  if (it == m_senders.end()) {
    const bool full = m_senders.size() >= m_limits.max_senders;
    it = m_senders.try_emplace(std::string(full ? k_overflow : sender), Window{now, 0, 0}).first;
  }
  Window& w = it->second;
  if (now - w.start >= m_limits.window) {
    if (w.suppressed > 0) m_ended.push_back({w.start, Summary{it->first, w.suppressed}});
    w = Window{now, 0, 0};
  }
  if (w.logged < m_limits.per_window) {
    ++w.logged;
    return true;
  }
  ++w.suppressed;
  ++m_suppressed_total;
  return false;
}

std::vector<RejectionLogLimiter::Summary> RejectionLogLimiter::take_summaries(TimePoint now) {
  std::vector<std::pair<TimePoint, Summary>> ended = std::move(m_ended);
  m_ended.clear();
  for (auto it = m_senders.begin(); it != m_senders.end();) {
    if (now - it->second.start < m_limits.window) {
      ++it;
      continue;
    }
    if (it->second.suppressed > 0)
      ended.push_back({it->second.start, Summary{it->first, it->second.suppressed}});
    it = m_senders.erase(it);
  }
  std::stable_sort(ended.begin(), ended.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Summary> out;
  out.reserve(ended.size());
  for (auto& [start, summary] : ended)
    out.push_back(std::move(summary));
  return out;
}

}  // namespace ingest
