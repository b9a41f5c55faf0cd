// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include <reflow/core/logger.hpp>
#include <reflow/core/result.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/device/event_sink.hpp>

namespace agent {

/// The daemon's local control socket: a Unix stream socket (mode 0660) speaking JSON lines.
///
/// A client's first line chooses what it wants:
/// - `{"op":"status"}`: one line back, the status object, then the server closes.
/// - `{"op":"emit"}`: every further line is one event's producer fields (PROTOCOL §4); the server
///   answers one line per line, in order: `{"seq":N,"id":"…"}` once committed, or
///   `{"error":"…","line":N}` (N counts the lines after the first, from 1). Blank lines are
///   skipped but counted. The client half-closes when done; the server answers the rest and closes.
/// Lines are at most 64 KiB. Each connection is served by its own threads; answers are pipelined,
/// so many events from one client share a group commit.
///
/// Bounds (ControlLimits): at most 32 connections are served at once, and a connection on which
/// nothing arrives for 5 minutes is closed. Every refusal is one JSON line `{"error":"…"}` before
/// the server closes: a connection beyond the bound, one the server has no thread for, one whose
/// first line is longer than 64 KiB, one that stayed idle (after the answers it is owed). Nothing a
/// client does stops the server.
class ControlServer {
 public:
  using StatusProvider = std::function<nlohmann::ordered_json()>;

  /// The bounds of one server. The daemon uses the defaults; tests shrink them.
  struct Limits {
    /// Connections served at once; one more is answered {"error":"too many control connections
    /// (N open); try again later"} and closed.
    std::size_t max_connections = 32;
    /// A connection on which no byte arrives for this long is answered {"error":"no input for N
    /// ms; closing the connection"} after the answers it is owed, and closed.
    std::chrono::milliseconds idle_timeout = std::chrono::minutes(5);
    /// Starts each thread the server needs (one per connection, a second for an emit connection's
    /// answers). Empty: std::jthread's constructor. It may throw std::system_error (as
    /// std::jthread does when the process has no threads left); the connection is then answered
    /// {"error":"cannot serve this connection: …; try again later"} and closed.
    std::function<std::jthread(std::function<void()>)> start_thread;
  };

  ControlServer(std::filesystem::path socket_path, EventSink& sink, StatusProvider status,
                Logger& log);
  ControlServer(std::filesystem::path socket_path, EventSink& sink, StatusProvider status,
                Logger& log, Limits limits);
  ~ControlServer();  ///< stop()s

  /// Binds and listens. A stale socket file (nobody answering) is replaced. Errors: io, or busy
  /// when another daemon answers on the socket.
  Status start();
  /// Closes the listener and all connections and joins their threads.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

/// What a control client asks for with its first line (see ControlServer).
enum class ControlOp { status, emit, unknown };

/// Reads the first line of a control connection (without its newline): a JSON object whose
/// string `op` is "status" or "emit"; other members are ignored. Anything else (not JSON, no `op`,
/// another value) is `unknown`, which the server answers with an error line and a close.
ControlOp parse_control_request(std::string_view line);

/// The answer to a refused line: `{"error":MESSAGE,"line":N}` and "\n" (N counts from 1 after the
/// first line; 0 for the first line itself).
std::string control_error_line(std::string_view message, std::size_t line_number);

/// A configured driver as the status object shows it (the daemon fills one per [[driver]]).
struct DriverStatus {
  std::string name;  ///< the [[driver]] name
  std::string kind;  ///< "sim", "moonraker" …
  bool running = false;
  std::string start_error;  ///< why start() failed, while it is retried; "" when running
  std::int64_t start_error_unix_ms = 0;
  DriverHealth health;  ///< the driver's own report (Driver::health()) while it runs
};

/// The status object's "drivers" array, one object per driver, in config order:
/// {"name","kind","state","events","errors","malformed","last_error","last_error_at"}. `state` is
/// the driver's own ("running" when it gives none) while it runs, else "not started" with the
/// start error as last_error. last_error and last_error_at (RFC 3339, UTC) are null when none.
nlohmann::ordered_json drivers_status_json(std::span<const DriverStatus> drivers);

/// Connects to a control socket. Errors: not_found when nothing listens (daemon not running),
/// io otherwise.
Result<int> control_connect(const std::filesystem::path& socket_path);

/// Writes all of `data` to a connected socket without raising SIGPIPE. False when the peer is gone.
bool control_send_all(int fd, std::string_view data);

/// Asks the daemon for its status object (`{"op":"status"}`). Errors: not_found when the daemon is
/// not running, busy when it refused the connection (its reason in the message, e.g. too many
/// connections), io when it closed the socket without a JSON object (e.g. while shutting down).
Result<nlohmann::ordered_json> control_status(const std::filesystem::path& socket_path);

}  // namespace agent
