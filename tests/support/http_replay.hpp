// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace reflow_test {

/// A real HTTP server on a free loopback port that replays recorded responses, for the HTTP
/// drivers' tests (Moonraker, OctoPrint, Spoolman, Shelly). It is Debian's python3 running
/// tests/support/http_replay.py as a child process.
///
/// The script is a JSON file:
///   {"routes": [
///     {"method": "GET", "path": "/server/history/list",
///      "responses": [{"status": 200, "body_file": "history-1.json"},
///                    {"status": 200, "body": "{\"result\":{\"jobs\":[]}}"},
///                    {"status": 500, "body": "oops", "content_type": "text/plain"},
///                    {"close": true}]},        // drop the connection without an answer
///     ...]}
/// Each request to a route (method + path, query string ignored) takes the route's next
/// response; the last one repeats. `body_file` is relative to the script's directory.
/// Unknown routes get 404. Every request is recorded (method, path, query, headers, body).
class HttpReplayServer {
 public:
  /// Starts the server with `script` (a file as above) and waits until it accepts connections.
  /// Throws std::runtime_error when it cannot start (the test fails with the reason).
  explicit HttpReplayServer(const std::filesystem::path& script);
  ~HttpReplayServer();  ///< stops the server
  HttpReplayServer(const HttpReplayServer&) = delete;
  HttpReplayServer& operator=(const HttpReplayServer&) = delete;

  /// "http://127.0.0.1:PORT" (no trailing slash).
  std::string url() const;

  /// The requests received so far, oldest first: objects
  /// {"method","path","query","headers":{lower-case name: value},"body"}.
  std::vector<nlohmann::json> requests() const;

  /// Loads another script (the next phase of a recorded sequence: the printer went offline …);
  /// route positions start again from the first response.
  void load(const std::filesystem::path& script);

  /// Stops the server (the device is unplugged): connections are refused until restart().
  void stop();
  /// Starts it again on the same port with the current script.
  void restart();

 private:
  std::filesystem::path m_dir;  // the server's control files
  std::filesystem::path m_script;
  int m_port = 0;
  int m_pid = -1;
};

}  // namespace reflow_test
