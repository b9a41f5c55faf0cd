// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/core/result.hpp>

namespace agent {

/// What a producer learns once its event is durably committed (PROTOCOL §5).
struct Committed {
  std::int64_t seq = 0;
  std::string id;
};

/// Called exactly once per accepted submission, from the writer's thread, after the group commit
/// that holds it (or with the error that prevented it: no_space, io, shutting_down).
/// Must not block for long: it delays the next commit.
using SubmitCallback = std::function<void(Result<Committed>)>;

/// Whether submit() waits for room in the bounded queue or refuses at once.
enum class QueueFull { wait, refuse };

/// Where producers (drivers, the control socket) hand events to the agent. The queue behind it is
/// bounded: memory never grows without bound; when it is full, producers wait or get `busy`.
/// Thread-safe.
class EventSink {
 public:
  virtual ~EventSink() = default;

  /// Validates `fields` (validate_submission) and queues the event. On success `done` is called
  /// later with the committed seq and id. On error nothing is queued and `done` is never called.
  /// Errors: rejected (validation; message names the field), busy (queue full and
  /// QueueFull::refuse), shutting_down.
  virtual Status submit(nlohmann::ordered_json fields, EventSource source, SubmitCallback done,
                        QueueFull when_full = QueueFull::wait) = 0;
};

}  // namespace agent
