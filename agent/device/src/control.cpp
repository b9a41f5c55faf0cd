// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/control.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/json_strict.hpp>
#include <reflow/core/units.hpp>

namespace agent {
namespace {

// Every answer as one line of JSON. Strings in it may quote what a device sent (a driver's
// last_error holds part of an HTTP body or a payload), which need not be UTF-8: bytes that are
// not become U+FFFD instead of an exception that would end the daemon.
std::string serialized(const nlohmann::ordered_json& answer) {
  return answer.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

constexpr std::size_t k_max_line_bytes = 64 * 1024;
// Answers not yet written, per connection; the reader waits when this many are outstanding.
constexpr std::size_t k_max_pending_answers = 8192;

Result<sockaddr_un> socket_address(const std::filesystem::path& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string text = path.string();
  if (text.size() >= sizeof addr.sun_path)
    return fail(
        ErrorCode::invalid_config,
        fmt::format("control socket path {} is longer than {} bytes; use a shorter data_dir", text,
                    sizeof addr.sun_path - 1));
  std::memcpy(addr.sun_path, text.c_str(), text.size() + 1);
  return addr;
}

// Reads newline-terminated lines from a socket. A line longer than k_max_line_bytes is reported as
// too long (and skipped up to its newline, unless `give_up_when_too_long`) instead of growing the
// buffer. When no byte arrives for `idle_timeout`, the outcome is idle.
class LineReader {
 public:
  LineReader(int fd, std::chrono::milliseconds idle_timeout)
      : m_fd(fd),
        m_idle_timeout_ms(static_cast<int>(
            std::clamp<std::chrono::milliseconds::rep>(idle_timeout.count(), 0, INT_MAX))) {}

  enum class Outcome { line, too_long, end, idle };

  Outcome next(std::string& line, bool give_up_when_too_long = false) {
    for (;;) {
      auto newline = m_buffer.find('\n', m_scanned);
      if (newline != std::string::npos) {
        const bool too_long = m_discarding || newline > k_max_line_bytes;
        if (!too_long) line.assign(m_buffer, 0, newline);
        m_buffer.erase(0, newline + 1);
        m_scanned = 0;
        m_discarding = false;
        return too_long ? Outcome::too_long : Outcome::line;
      }
      m_scanned = m_buffer.size();
      if (m_buffer.size() > k_max_line_bytes) {
        if (give_up_when_too_long) return Outcome::too_long;
        m_discarding = true;  // drop the rest of this line as it arrives
        m_buffer.clear();
        m_scanned = 0;
      }
      pollfd wanted{m_fd, POLLIN, 0};
      const int ready = ::poll(&wanted, 1, m_idle_timeout_ms);
      if (ready < 0 && errno == EINTR) continue;
      if (ready == 0) return Outcome::idle;
      char chunk[16384];
      ssize_t n = ::recv(m_fd, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        if (std::exchange(m_discarding, false)) return Outcome::too_long;
        if (m_buffer.empty()) return Outcome::end;
        line = std::move(m_buffer);  // a last line without a newline still counts
        m_buffer.clear();
        m_scanned = 0;
        return Outcome::line;
      }
      m_buffer.append(chunk, static_cast<std::size_t>(n));
    }
  }

 private:
  int m_fd;
  int m_idle_timeout_ms;
  std::string m_buffer;
  std::size_t m_scanned = 0;
  bool m_discarding = false;
};

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

// A refusal that is about the connection, not one of its lines.
std::string refusal_line(std::string_view message) {
  nlohmann::ordered_json answer;
  answer["error"] = message;
  return serialized(answer) + "\n";
}

std::string idle_line(std::chrono::milliseconds idle_timeout) {
  const auto ms = idle_timeout.count();
  return refusal_line(ms % 1000 == 0
                          ? fmt::format("no input for {} s; closing the connection", ms / 1000)
                          : fmt::format("no input for {} ms; closing the connection", ms));
}

std::string no_thread_message(const std::system_error& e) {
  return fmt::format("cannot serve this connection: cannot start a thread ({}); try again later",
                     e.what());
}

// Answers a connection the server will not serve, from the accepting thread: it must not block,
// and the answer must reach the client. Linux resets a Unix stream socket that is closed with
// unread data, so what the client already sent is read first.
void refuse(int fd, std::string_view message) {
  const std::string text = refusal_line(message);
  (void)::send(fd, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  ::shutdown(fd, SHUT_WR);
  char chunk[4096];
  for (int i = 0; i < 16 && ::recv(fd, chunk, sizeof chunk, MSG_DONTWAIT) > 0; ++i) {
  }
}

}  // namespace

// One client connection. The reader (the connection's thread) submits each line to the sink; the
// answerer writes answers in input order as the writer commits them, so a client's events are
// pipelined into shared group commits.
struct Connection {
  struct Answer {
    bool ready = false;
    std::string text;
  };

  int fd = -1;
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<std::shared_ptr<Answer>> answers;
  bool reader_done = false;
  bool finished = false;  // serve() has returned
  std::jthread thread;

  ~Connection() {
    if (fd >= 0) ::close(fd);
  }
};

struct ControlServer::Impl {
  std::filesystem::path path;
  EventSink& sink;
  StatusProvider status;
  Logger& log;
  const Limits limits;
  int listen_fd = -1;
  std::jthread accept_thread;
  std::mutex mutex;
  std::list<std::shared_ptr<Connection>> connections;
  bool stopping = false;
  bool refusing = false;  // the last connection was refused for the bound (logged once a burst)

  Impl(std::filesystem::path p, EventSink& s, StatusProvider st, Logger& l, Limits lim)
      : path(std::move(p)), sink(s), status(std::move(st)), log(l), limits(std::move(lim)) {}

  // Throws std::system_error when no thread can be started.
  std::jthread start_thread(std::function<void()> body) const {
    if (limits.start_thread) return limits.start_thread(std::move(body));
    return std::jthread(std::move(body));
  }

  void accept_loop();
  void serve(Connection& conn);
  void serve_emit(Connection& conn, LineReader& reader);
  void write_answers(Connection& conn);
};

void ControlServer::Impl::accept_loop() {
  for (;;) {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      std::lock_guard lock(mutex);
      if (!stopping)
        log.error("control", "accept on {} failed: {}", path.string(), std::strerror(errno));
      return;
    }
    auto conn = std::make_shared<Connection>();
    conn->fd = fd;
    // A client that neither reads nor stops writing cannot hold a thread forever in send().
    const auto send_timeout_ms = limits.idle_timeout.count();
    timeval send_timeout{.tv_sec = static_cast<time_t>(send_timeout_ms / 1000),
                         .tv_usec = static_cast<suseconds_t>(send_timeout_ms % 1000 * 1000)};
    (void)::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout);
    std::lock_guard lock(mutex);
    if (stopping) return;  // conn's destructor closes fd
    // Forget connections that have finished, so a long-running daemon does not accumulate them.
    std::erase_if(connections, [](const std::shared_ptr<Connection>& c) {
      std::lock_guard conn_lock(c->mutex);
      return c->finished;
    });
    if (connections.size() >= limits.max_connections) {
      if (!std::exchange(refusing, true))
        log.warning("control", "refusing connections on {}: {} are open, the most served at once",
                    path.string(), connections.size());
      refuse(fd, fmt::format("too many control connections ({} open); try again later",
                             connections.size()));
      continue;  // conn's destructor closes fd
    }
    refusing = false;
    // The thread gets a plain pointer: if it held a shared_ptr, it could end up destroying its own
    // Connection (and joining itself) when the list lets go first.
    try {
      conn->thread = start_thread([this, raw = conn.get()] { serve(*raw); });
    } catch (const std::system_error& e) {
      log.warning("control", "refusing a connection on {}: cannot start a thread: {}",
                  path.string(), e.what());
      refuse(fd, no_thread_message(e));
      continue;
    }
    connections.push_back(conn);
  }
}

void ControlServer::Impl::serve(Connection& conn) {
  LineReader reader(conn.fd, limits.idle_timeout);
  std::string first;
  // A client that closes before its first line (a probe, a cancelled command) gets nothing.
  const auto outcome = reader.next(first, /*give_up_when_too_long=*/true);
  if (outcome == LineReader::Outcome::too_long) {
    control_send_all(conn.fd,
                     control_error_line(fmt::format("the first line is longer than {} bytes; "
                                                    R"(expected {{"op":"status"}} or )"
                                                    R"({{"op":"emit"}})",
                                                    k_max_line_bytes),
                                        0));
  } else if (outcome == LineReader::Outcome::idle) {
    control_send_all(conn.fd, idle_line(limits.idle_timeout));
  } else if (outcome == LineReader::Outcome::line) {
    const ControlOp op = parse_control_request(first);
    if (op == ControlOp::status) {
      control_send_all(conn.fd, serialized(status()) + "\n");
    } else if (op == ControlOp::emit) {
      serve_emit(conn, reader);
    } else {
      control_send_all(
          conn.fd,
          control_error_line(R"(expected {"op":"status"} or {"op":"emit"} as the first line)", 0));
    }
  }
  std::lock_guard lock(conn.mutex);
  ::shutdown(conn.fd, SHUT_RDWR);
  conn.finished = true;
}

void ControlServer::Impl::serve_emit(Connection& conn, LineReader& reader) {
  std::jthread answerer;
  try {
    answerer = start_thread([&] { write_answers(conn); });
  } catch (const std::system_error& e) {
    log.warning("control", "refusing an emit connection on {}: cannot start a thread: {}",
                path.string(), e.what());
    control_send_all(conn.fd, refusal_line(no_thread_message(e)));
    return;
  }
  std::size_t line_number = 0;
  std::string line;
  for (;;) {
    auto outcome = reader.next(line);
    if (outcome == LineReader::Outcome::end) break;
    if (outcome == LineReader::Outcome::idle) {
      // After the answers still owed, in order.
      auto answer = std::make_shared<Connection::Answer>(true, idle_line(limits.idle_timeout));
      std::lock_guard lock(conn.mutex);
      conn.answers.push_back(std::move(answer));
      break;
    }
    ++line_number;
    if (outcome == LineReader::Outcome::line && is_blank(line)) continue;
    auto answer = std::make_shared<Connection::Answer>();
    {
      std::unique_lock lock(conn.mutex);
      conn.changed.wait(lock, [&] { return conn.answers.size() < k_max_pending_answers; });
      conn.answers.push_back(answer);
    }
    // Runs on the writer's thread. It notifies under the lock: once the answerer can see the
    // answer, the connection may end and be destroyed, condition variable included.
    auto settle = [&conn, answer](std::string text) {
      std::lock_guard lock(conn.mutex);
      answer->ready = true;
      answer->text = std::move(text);
      conn.changed.notify_all();
    };
    if (outcome == LineReader::Outcome::too_long) {
      settle(control_error_line(fmt::format("line longer than {} bytes", k_max_line_bytes),
                                line_number));
      continue;
    }
    // Strict: the line is signed as it is read here, so it must read the same everywhere
    // (PROTOCOL §4 Limits). An emit line is one line, so its column is what locates the fault.
    auto fields = parse_json_strict(line);
    if (!fields) {
      std::string why = fields.error().message;
      if (why.starts_with("line 1, ")) why.erase(0, std::string_view("line 1, ").size());
      settle(control_error_line("malformed JSON: " + why, line_number));
      continue;
    }
    EventSource source{"emit", "control", ""};
    Status submitted = sink.submit(
        std::move(*fields), std::move(source), [settle, line_number](Result<Committed> committed) {
          if (committed) {
            nlohmann::ordered_json ok;
            ok["seq"] = committed->seq;
            ok["id"] = committed->id;
            settle(serialized(ok) + "\n");
          } else {
            settle(control_error_line(committed.error().message, line_number));
          }
        });
    if (!submitted) settle(control_error_line(submitted.error().message, line_number));
  }
  {
    std::lock_guard lock(conn.mutex);
    conn.reader_done = true;
  }
  conn.changed.notify_all();
  answerer.join();
}

void ControlServer::Impl::write_answers(Connection& conn) {
  bool peer_gone = false;
  std::unique_lock lock(conn.mutex);
  for (;;) {
    conn.changed.wait(lock, [&] {
      return (!conn.answers.empty() && conn.answers.front()->ready) ||
             (conn.reader_done && conn.answers.empty());
    });
    if (conn.answers.empty()) return;
    auto answer = std::move(conn.answers.front());
    conn.answers.pop_front();
    lock.unlock();
    conn.changed.notify_all();  // the reader may wait for room
    // A client that went away still gets its events committed; only the answers are lost.
    if (!peer_gone && !control_send_all(conn.fd, answer->text)) peer_gone = true;
    lock.lock();
  }
}

ControlServer::ControlServer(std::filesystem::path socket_path, EventSink& sink,
                             StatusProvider status, Logger& log)
    : ControlServer(std::move(socket_path), sink, std::move(status), log, Limits{}) {}

ControlServer::ControlServer(std::filesystem::path socket_path, EventSink& sink,
                             StatusProvider status, Logger& log, Limits limits)
    : m_impl(std::make_unique<Impl>(std::move(socket_path), sink, std::move(status), log,
                                    std::move(limits))) {}

ControlServer::~ControlServer() {
  stop();
}

Status ControlServer::start() {
  auto addr = socket_address(m_impl->path);
  if (!addr) return std::unexpected(addr.error());
  if (std::filesystem::exists(m_impl->path)) {
    if (auto fd = control_connect(m_impl->path); fd) {
      ::close(*fd);
      return fail(ErrorCode::busy, fmt::format("another reflow-agent answers on {}; stop it first",
                                               m_impl->path.string()));
    }
    ::unlink(m_impl->path.c_str());  // stale: left by a daemon that was killed
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(ErrorCode::io, fmt::format("socket: {}", std::strerror(errno)));
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0 ||
      ::chmod(m_impl->path.c_str(), 0660) != 0 || ::listen(fd, 64) != 0) {
    int err = errno;
    ::close(fd);
    return fail(ErrorCode::io, fmt::format("cannot listen on control socket {}: {}",
                                           m_impl->path.string(), std::strerror(err)));
  }
  m_impl->listen_fd = fd;
  m_impl->accept_thread = std::jthread([impl = m_impl.get()] { impl->accept_loop(); });
  return {};
}

void ControlServer::stop() {
  if (!m_impl || m_impl->listen_fd < 0) return;
  std::list<std::shared_ptr<Connection>> connections;
  {
    std::lock_guard lock(m_impl->mutex);
    m_impl->stopping = true;
    ::shutdown(m_impl->listen_fd, SHUT_RDWR);
    connections = m_impl->connections;
  }
  if (m_impl->accept_thread.joinable()) m_impl->accept_thread.join();
  // Stop reading; answers for lines already submitted are still written.
  for (auto& conn : connections)
    ::shutdown(conn->fd, SHUT_RD);
  for (auto& conn : connections)
    if (conn->thread.joinable()) conn->thread.join();
  ::close(m_impl->listen_fd);
  m_impl->listen_fd = -1;
  ::unlink(m_impl->path.c_str());
}

ControlOp parse_control_request(std::string_view line) {
  auto request = nlohmann::ordered_json::parse(line, nullptr, false);
  if (!request.is_object()) return ControlOp::unknown;
  auto op = request.find("op");
  if (op == request.end() || !op->is_string()) return ControlOp::unknown;
  if (*op == "status") return ControlOp::status;
  if (*op == "emit") return ControlOp::emit;
  return ControlOp::unknown;
}

std::string control_error_line(std::string_view message, std::size_t line_number) {
  nlohmann::ordered_json answer;
  answer["error"] = message;
  answer["line"] = line_number;
  return serialized(answer) + "\n";
}

Result<int> control_connect(const std::filesystem::path& socket_path) {
  auto addr = socket_address(socket_path);
  if (!addr) return std::unexpected(addr.error());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(ErrorCode::io, fmt::format("socket: {}", std::strerror(errno)));
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0) {
    int err = errno;
    ::close(fd);
    if (err == ENOENT || err == ECONNREFUSED)
      return fail(
          ErrorCode::not_found,
          fmt::format("the daemon is not running (nothing listens on {})", socket_path.string()));
    return fail(ErrorCode::io,
                fmt::format("cannot connect to {}: {}", socket_path.string(), std::strerror(err)));
  }
  return fd;
}

bool control_send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

Result<nlohmann::ordered_json> control_status(const std::filesystem::path& socket_path) {
  auto fd = control_connect(socket_path);
  if (!fd) return std::unexpected(fd.error());
  std::string answer;
  // Read even when the request could not be sent: a daemon that refuses the connection has
  // answered why before closing it.
  (void)control_send_all(*fd, "{\"op\":\"status\"}\n");
  char chunk[4096];
  for (ssize_t n; (n = ::recv(*fd, chunk, sizeof chunk, 0)) > 0 || (n < 0 && errno == EINTR);)
    if (n > 0) answer.append(chunk, static_cast<std::size_t>(n));
  ::close(*fd);
  auto status = nlohmann::ordered_json::parse(answer, nullptr, false);
  if (!status.is_object())
    return fail(ErrorCode::io, fmt::format("the daemon on {} gave no status (is it shutting down?)",
                                           socket_path.string()));
  if (status.contains("error") && status["error"].is_string())
    return fail(ErrorCode::busy,
                fmt::format("the daemon on {} refused the status request: {}", socket_path.string(),
                            status["error"].get<std::string>()));
  return status;
}

nlohmann::ordered_json drivers_status_json(std::span<const DriverStatus> drivers) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const DriverStatus& d : drivers) {
    const DriverHealth& h = d.health;
    const std::string& error = d.running ? h.last_error : d.start_error;
    const std::int64_t error_ms = d.running ? h.last_error_unix_ms : d.start_error_unix_ms;
    nlohmann::ordered_json j;
    j["name"] = d.name;
    j["kind"] = d.kind;
    j["state"] = !d.running ? "not started" : h.state.empty() ? "running" : h.state;
    j["events"] = h.events;
    j["errors"] = h.errors;
    j["malformed"] = h.malformed;
    j["last_error"] =
        error.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(error);
    j["last_error_at"] = error.empty() || error_ms <= 0
                             ? nlohmann::ordered_json(nullptr)
                             : nlohmann::ordered_json(format_rfc3339_ms(error_ms));
    list.push_back(std::move(j));
  }
  return list;
}

}  // namespace agent
