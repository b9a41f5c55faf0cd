// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <expected>
#include <string>
#include <string_view>
#include <utility>

namespace agent {

/// The closed set of error kinds. Callers branch on the code; the message is for people.
enum class ErrorCode {
  invalid_config,      ///< a config file or option is wrong; fix it and restart
  invalid_argument,    ///< a caller passed something malformed (an event, a JWK …)
  io,                  ///< a file, socket or device operation failed
  no_space,            ///< the disk or the outbox quota is full
  device_unavailable,  ///< a device or peer did not answer; retry later
  timeout,             ///< an operation did not finish in time
  corruption,          ///< stored data is damaged
  crypto,              ///< a key is unusable or a signature does not verify
  rejected,            ///< input was refused by policy (validation, quota …)
  busy,                ///< a bounded queue is full and the caller chose not to wait
  shutting_down,       ///< the component is stopping and takes no more work
  not_found,           ///< the thing asked for does not exist
  internal,            ///< a bug: an invariant did not hold
};

/// A short, stable name for the code ("invalid_config", "io" …), used in logs and JSON.
std::string_view to_string(ErrorCode code) noexcept;

/// An error: a code plus a message that says what failed, on which input, and what to do.
/// Example: `config.toml:14: mqtt.url: expected mqtt:// or mqtts://; got "htp://node"`.
struct Error {
  ErrorCode code = ErrorCode::internal;
  std::string message;
};

/// Builds the unexpected value of a Result.
inline std::unexpected<Error> fail(ErrorCode code, std::string message) {
  return std::unexpected<Error>(Error{code, std::move(message)});
}

/// Result of an operation that may fail (ccache `util/expected.hpp`, LevelDB `Status`).
template <typename T>
using Result = std::expected<T, Error>;

/// Result of an operation that returns nothing on success.
using Status = std::expected<void, Error>;

}  // namespace agent
