// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/control.hpp>

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <reflow/core/jose.hpp>
#include <reflow/device/outbox.hpp>
#include <reflow/device/writer.hpp>

#include "temp_dir.hpp"

namespace agent {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

// Generous: only turns a hang into a failure.
constexpr int k_wait_ms = 30'000;
const std::string k_control_device = "fablab-mk4-01";
const std::string k_good_line = R"({"action":"use","resourceInventoriedAs":"printer:1",)"
                                R"("effortQuantity":{"hasNumericalValue":1.5,"hasUnit":"hour"},)"
                                R"("hasPointInTime":"2026-01-01T00:00:00Z"})";

class Fd {
 public:
  explicit Fd(int fd = -1) : m_fd(fd) {}
  Fd(Fd&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    reset();
    m_fd = std::exchange(other.m_fd, -1);
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return m_fd; }
  void reset() {
    if (m_fd >= 0) ::close(m_fd);
    m_fd = -1;
  }

 private:
  int m_fd;
};

// Reads one chunk, waiting at most k_wait_ms. nullopt on timeout or error; "" at EOF.
std::optional<std::string> read_some(int fd) {
  pollfd p{fd, POLLIN, 0};
  int ready = ::poll(&p, 1, k_wait_ms);
  if (ready <= 0) return std::nullopt;
  char buffer[65536];
  ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
  if (n < 0) return std::nullopt;
  return std::string(buffer, static_cast<std::size_t>(n));
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  for (std::size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1)
    lines.push_back(text.substr(start, nl - start));
  if (start < text.size()) lines.push_back(text.substr(start));
  return lines;
}

// What a client got back: its lines, and whether the server closed the connection.
struct Reply {
  std::vector<std::string> lines;
  bool closed = false;
};

Reply read_to_eof(int fd) {
  std::string text;
  Reply reply;
  for (;;) {
    auto chunk = read_some(fd);
    if (!chunk) break;
    if (chunk->empty()) {
      reply.closed = true;
      break;
    }
    text += *chunk;
  }
  reply.lines = split_lines(text);
  return reply;
}

// Reads exactly one line (for a client that keeps its connection open).
std::optional<std::string> read_line(int fd, std::string& buffer) {
  for (;;) {
    if (auto nl = buffer.find('\n'); nl != std::string::npos) {
      std::string line = buffer.substr(0, nl);
      buffer.erase(0, nl + 1);
      return line;
    }
    auto chunk = read_some(fd);
    if (!chunk || chunk->empty()) return std::nullopt;
    buffer += *chunk;
  }
}

ordered_json parse(const std::string& line) {
  return ordered_json::parse(line, nullptr, false);
}

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto key = DeviceKey::generate(m_dir / "device.key");
    ASSERT_TRUE(key) << key.error().message;
    m_key.emplace(std::move(*key));
    OutboxOptions options;
    options.path = m_dir / "outbox.db";
    options.device_id = k_control_device;
    auto outbox = Outbox::open(options, m_env, m_log);
    ASSERT_TRUE(outbox) << outbox.error().message;
    m_outbox = std::move(*outbox);
    m_writer = std::make_unique<Writer>(Writer::Options{.device_id = k_control_device}, *m_key,
                                        *m_outbox, m_env, m_log);
    m_writer->start();
    m_server = make_server();
  }

  std::unique_ptr<ControlServer> make_server() {
    return std::make_unique<ControlServer>(
        m_socket, *m_writer, [] { return status_object(); }, m_log);
  }

  std::unique_ptr<ControlServer> make_server(ControlServer::Limits limits) {
    return std::make_unique<ControlServer>(
        m_socket, *m_writer, [] { return status_object(); }, m_log, std::move(limits));
  }

  // A server whose status is status_object() with `drivers` as drivers_status_json has them.
  std::unique_ptr<ControlServer> make_server(std::vector<DriverStatus> drivers) {
    return std::make_unique<ControlServer>(
        m_socket, *m_writer,
        [drivers = std::move(drivers)] {
          ordered_json s = status_object();
          s["drivers"] = drivers_status_json(drivers);
          return s;
        },
        m_log);
  }

  // An emit connection that stays open: the server holds it until the client half-closes.
  Fd open_emit() {
    Fd fd = connect();
    EXPECT_TRUE(control_send_all(fd.get(), "{\"op\":\"emit\"}\n" + k_good_line + "\n"));
    std::string buffer;
    auto answer = read_line(fd.get(), buffer);
    EXPECT_TRUE(answer && parse(*answer).contains("seq")) << answer.value_or("(nothing)");
    return fd;
  }

  static ordered_json status_object() {
    return ordered_json{{"state", "online"}, {"stream", "01J0000000000000000000TEST"}, {"seq", 42}};
  }

  Fd connect() {
    auto fd = control_connect(m_socket);
    EXPECT_TRUE(fd) << fd.error().message;
    return Fd(fd ? *fd : -1);
  }

  // Sends `text` from another thread (so a large input cannot block against unread answers),
  // half-closes, and reads every answer until the server closes.
  Reply exchange(const std::string& text) {
    Fd fd = connect();
    if (fd.get() < 0) return {};
    std::thread sender([&] {
      EXPECT_TRUE(control_send_all(fd.get(), text)) << std::strerror(errno);
      ::shutdown(fd.get(), SHUT_WR);
    });
    Reply reply = read_to_eof(fd.get());
    sender.join();
    return reply;
  }

  Reply status() { return exchange("{\"op\":\"status\"}\n"); }

  int open_fds() const {
    int n = 0;
    for ([[maybe_unused]] const auto& entry : fs::directory_iterator("/proc/self/fd"))
      ++n;
    return n;
  }

  reflow_test::TempDir m_dir;
  fs::path m_socket = m_dir / "control.sock";
  FakeEnv m_env;
  Logger m_log{LogLevel::warning};
  std::optional<DeviceKey> m_key;
  std::unique_ptr<Outbox> m_outbox;
  std::unique_ptr<Writer> m_writer;
  std::unique_ptr<ControlServer> m_server;  // declared last: stopped first
};

TEST_F(ControlServerTest, EmitAnswersEachLineInOrder) {
  ASSERT_TRUE(m_server->start());
  const std::string unknown_action =
      R"({"action":"borrow","hasPointInTime":"2026-01-01T00:00:00Z"})";
  Reply reply = exchange("{\"op\":\"emit\"}\n" + k_good_line + "\n" + "{\"action\":\n" + "\n" +
                         unknown_action + "\n" + k_good_line + "\n");
  EXPECT_TRUE(reply.closed);
  ASSERT_EQ(reply.lines.size(), 4u);

  auto first = parse(reply.lines[0]);
  auto malformed = parse(reply.lines[1]);
  auto unknown = parse(reply.lines[2]);
  auto last = parse(reply.lines[3]);
  EXPECT_EQ(first["seq"], 1) << reply.lines[0];
  EXPECT_TRUE(malformed.contains("error")) << reply.lines[1];
  EXPECT_EQ(malformed["line"], 2) << reply.lines[1];
  EXPECT_TRUE(unknown.contains("error")) << reply.lines[2];
  EXPECT_EQ(unknown["line"], 4) << reply.lines[2];  // the blank line 3 counts
  EXPECT_NE(unknown["error"].get<std::string>().find("action"), std::string::npos);
  EXPECT_EQ(last["seq"], 2) << reply.lines[3];

  auto stored = m_outbox->read_from(1, 100);
  ASSERT_TRUE(stored) << stored.error().message;
  ASSERT_EQ(stored->size(), 2u);
  EXPECT_EQ(first["id"], (*stored)[0].id);
  EXPECT_EQ(last["id"], (*stored)[1].id);
  auto verified = jws_verify((*stored)[0].envelope, m_key->public_jwk());
  ASSERT_TRUE(verified) << verified.error().message;
  auto payload = parse(verified->payload);
  EXPECT_EQ(payload["source"]["driver"], "emit");
  EXPECT_EQ(payload["source"]["instance"], "control");
}

TEST_F(ControlServerTest, StatusReturnsTheProvidersObject) {
  ASSERT_TRUE(m_server->start());
  Reply reply = status();
  EXPECT_TRUE(reply.closed);
  ASSERT_EQ(reply.lines.size(), 1u);
  EXPECT_EQ(parse(reply.lines[0]), status_object());
  EXPECT_EQ(reply.lines[0], status_object().dump());
}

TEST_F(ControlServerTest, StatusListsEachDriversHealth) {
  DriverStatus polling{.name = "mk4",
                       .kind = "moonraker",
                       .running = true,
                       .start_error = "",
                       .start_error_unix_ms = 0,
                       .health = DriverHealth{.state = "waiting for device",
                                              .events = 12,
                                              .errors = 3,
                                              .malformed = 1,
                                              .last_error = "GET http://mk4/ timed out",
                                              .last_error_unix_ms = 1'767'225'600'000}};
  DriverStatus quiet{.name = "sim1",
                     .kind = "sim",
                     .running = true,
                     .start_error = "",
                     .start_error_unix_ms = 0,
                     .health = {}};
  DriverStatus failed{.name = "plug",
                      .kind = "power",
                      .running = false,
                      .start_error = "cannot read state.json",
                      .start_error_unix_ms = 1'767'225'601'500,
                      .health = {}};
  m_server = make_server({polling, quiet, failed});
  ASSERT_TRUE(m_server->start());
  auto s = control_status(m_socket);
  ASSERT_TRUE(s) << s.error().message;
  const ordered_json& list = (*s)["drivers"];
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0], parse(R"({"name":"mk4","kind":"moonraker","state":"waiting for device",)"
                           R"("events":12,"errors":3,"malformed":1,)"
                           R"("last_error":"GET http://mk4/ timed out",)"
                           R"("last_error_at":"2026-01-01T00:00:00.000Z"})"));
  EXPECT_EQ(list[1], parse(R"({"name":"sim1","kind":"sim","state":"running","events":0,)"
                           R"("errors":0,"malformed":0,"last_error":null,"last_error_at":null})"));
  EXPECT_EQ(list[2]["state"], "not started");
  EXPECT_EQ(list[2]["last_error"], "cannot read state.json");
  EXPECT_EQ(list[2]["last_error_at"], "2026-01-01T00:00:01.500Z");
}

// A driver's last_error quotes what a device sent (an HTTP body, a payload), which need not be
// UTF-8; nlohmann_json's dump throws on that, and the exception ended the daemon.
TEST_F(ControlServerTest, StatusWithBytesThatAreNotUtf8IsStillAnswered) {
  DriverStatus garbled{.name = "mk4",
                       .kind = "octoprint",
                       .running = true,
                       .start_error = "",
                       .start_error_unix_ms = 0,
                       .health = DriverHealth{.state = "running",
                                              .events = 0,
                                              .errors = 1,
                                              .malformed = 0,
                                              .last_error = "HTTP 500: \xff\xfe\xe2\x82",
                                              .last_error_unix_ms = 1'767'225'600'000}};
  m_server = make_server({garbled});
  ASSERT_TRUE(m_server->start());
  for (int i = 0; i < 2; ++i) {  // and the server is still there for the next client
    auto s = control_status(m_socket);
    ASSERT_TRUE(s) << s.error().message;
    EXPECT_EQ((*s)["drivers"][0]["last_error"], "HTTP 500: \uFFFD\uFFFD\uFFFD");
  }
}

TEST_F(ControlServerTest, UnknownFirstLineGetsAnError) {
  ASSERT_TRUE(m_server->start());
  for (const std::string first : {R"({"op":"dance"})", "hello", R"(["emit"])"}) {
    SCOPED_TRACE(first);
    Reply reply = exchange(first + "\n" + k_good_line + "\n");
    EXPECT_TRUE(reply.closed);
    ASSERT_EQ(reply.lines.size(), 1u);
    EXPECT_TRUE(parse(reply.lines[0]).contains("error")) << reply.lines[0];
  }
  EXPECT_EQ(m_outbox->head().last_seq, 0);
}

TEST_F(ControlServerTest, SecondServerOnTheSamePathRefusesWithBusy) {
  ASSERT_TRUE(m_server->start());
  {
    auto second = make_server();
    Status started = second->start();
    ASSERT_FALSE(started);
    EXPECT_EQ(started.error().code, ErrorCode::busy) << started.error().message;
  }
  // The refused server must leave the first one's socket alone.
  Reply reply = status();
  ASSERT_EQ(reply.lines.size(), 1u);
  EXPECT_EQ(parse(reply.lines[0]), status_object());
}

TEST_F(ControlServerTest, StaleSocketFileIsReplaced) {
  {
    // What a killed daemon leaves behind: a bound socket file nobody listens on.
    Fd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
    ASSERT_GE(fd.get(), 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, m_socket.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0)
        << std::strerror(errno);
  }
  ASSERT_TRUE(fs::is_socket(m_socket));
  auto refused = control_connect(m_socket);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::not_found);

  Status started = m_server->start();
  ASSERT_TRUE(started) << started.error().message;
  Reply reply = status();
  ASSERT_EQ(reply.lines.size(), 1u);
  EXPECT_EQ(parse(reply.lines[0]), status_object());
}

TEST_F(ControlServerTest, SocketHasMode0660) {
  ASSERT_TRUE(m_server->start());
  struct stat st {};
  ASSERT_EQ(::stat(m_socket.c_str(), &st), 0) << std::strerror(errno);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
}

TEST_F(ControlServerTest, ConnectWithoutServerIsNotFound) {
  auto fd = control_connect(m_dir / "nobody.sock");
  ASSERT_FALSE(fd);
  EXPECT_EQ(fd.error().code, ErrorCode::not_found);
  EXPECT_NE(fd.error().message.find("nobody.sock"), std::string::npos) << fd.error().message;
}

TEST_F(ControlServerTest, LineLongerThan64KiBGetsAnErrorAndLaterLinesStillWork) {
  ASSERT_TRUE(m_server->start());
  const std::string huge = R"({"action":"use","note":")" + std::string(300 * 1024, 'x') + "\"}";
  Reply reply =
      exchange("{\"op\":\"emit\"}\n" + k_good_line + "\n" + huge + "\n" + k_good_line + "\n");
  EXPECT_TRUE(reply.closed);
  ASSERT_EQ(reply.lines.size(), 3u);
  EXPECT_EQ(parse(reply.lines[0])["seq"], 1) << reply.lines[0];
  auto error = parse(reply.lines[1]);
  EXPECT_EQ(error["line"], 2) << reply.lines[1];
  EXPECT_NE(error["error"].get<std::string>().find("longer"), std::string::npos) << reply.lines[1];
  EXPECT_EQ(parse(reply.lines[2])["seq"], 2) << reply.lines[2];
}

TEST_F(ControlServerTest, LineJustOver64KiBGetsTheLineTooLongError) {
  ASSERT_TRUE(m_server->start());
  // 64 KiB + 100 bytes: over the limit, but less than the limit plus one read chunk.
  const std::string over = R"({"note":")" + std::string(64 * 1024 + 100 - 11, 'x') + "\"}";
  ASSERT_EQ(over.size(), 64u * 1024 + 100);
  Reply reply = exchange("{\"op\":\"emit\"}\n" + over + "\n" + k_good_line + "\n");
  ASSERT_EQ(reply.lines.size(), 2u);
  auto error = parse(reply.lines[0]);
  EXPECT_EQ(error["line"], 1) << reply.lines[0];
  EXPECT_NE(error["error"].get<std::string>().find("longer than 65536"), std::string::npos)
      << reply.lines[0];
  EXPECT_EQ(parse(reply.lines[1])["seq"], 1) << reply.lines[1];
}

TEST_F(ControlServerTest, ManyLinesArePipelined) {
  ASSERT_TRUE(m_server->start());
  constexpr int n = 5000;
  std::string text = "{\"op\":\"emit\"}\n";
  for (int i = 0; i < n; ++i)
    text += k_good_line + "\n";
  Reply reply = exchange(text);
  EXPECT_TRUE(reply.closed);
  ASSERT_EQ(reply.lines.size(), static_cast<std::size_t>(n));
  std::set<std::string> ids;
  for (int i = 0; i < n; ++i) {
    auto answer = parse(reply.lines[i]);
    ASSERT_EQ(answer["seq"], i + 1) << reply.lines[i];
    ids.insert(answer["id"].get<std::string>());
  }
  EXPECT_EQ(ids.size(), static_cast<std::size_t>(n));
  EXPECT_EQ(m_outbox->head().last_seq, n);
}

TEST_F(ControlServerTest, StopEndsOpenConnectionsAndRemovesTheSocket) {
  ASSERT_TRUE(m_server->start());
  Fd fd = connect();
  ASSERT_GE(fd.get(), 0);
  ASSERT_TRUE(control_send_all(fd.get(), "{\"op\":\"emit\"}\n" + k_good_line + "\n"));
  std::string buffer;
  auto answer = read_line(fd.get(), buffer);
  ASSERT_TRUE(answer);
  EXPECT_EQ(parse(*answer)["seq"], 1) << *answer;

  m_server->stop();  // the client never half-closed: stop must not wait for it
  Reply rest = read_to_eof(fd.get());
  EXPECT_TRUE(rest.closed);
  EXPECT_TRUE(rest.lines.empty());
  EXPECT_FALSE(fs::exists(m_socket));
}

TEST_F(ControlServerTest, ServesManyShortConnectionsInARow) {
  ASSERT_TRUE(m_server->start());
  for (int i = 0; i < 2000; ++i) {
    Reply reply = status();
    ASSERT_EQ(reply.lines.size(), 1u) << "connection " << i;
    ASSERT_TRUE(reply.closed) << "connection " << i;
  }
}

// Each connection ends (and is destroyed when the next one is accepted) right after the writer
// settles its answer: the writer's thread must be done with the connection by then. Under
// ThreadSanitizer this caught the notification of a destroyed condition variable.
TEST_F(ControlServerTest, ManyShortEmitConnectionsInARow) {
  ASSERT_TRUE(m_server->start());
  for (int i = 0; i < 200; ++i) {
    Reply reply = exchange("{\"op\":\"emit\"}\n" + k_good_line + "\n");
    ASSERT_EQ(reply.lines.size(), 1u) << "connection " << i;
    ASSERT_EQ(parse(reply.lines[0])["seq"], i + 1) << reply.lines[0];
  }
}

TEST_F(ControlServerTest, ConnectionsClosedBeforeTheFirstLineAreReleased) {
  ASSERT_TRUE(m_server->start());
  ASSERT_EQ(status().lines.size(), 1u);
  const int baseline = open_fds();
  // A probe (like a second daemon's start()) connects and closes without a word.
  for (int i = 0; i < 50; ++i)
    ASSERT_GE(connect().get(), 0);

  // Finished connections are forgotten when the next one is accepted; their fds go with them.
  // The backlog is accepted in order, so after one round trip every probe has been accepted;
  // then wait (bounded) until the server has caught up with them.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(k_wait_ms);
  int open = 0;
  do {
    ASSERT_EQ(status().lines.size(), 1u);
    open = open_fds();
  } while (open > baseline + 1 && std::chrono::steady_clock::now() < deadline);
  EXPECT_LE(open, baseline + 1) << "the server still holds fds of closed connections";
}

TEST(ParseControlRequestTest, KnowsStatusAndEmitAndNothingElse) {
  EXPECT_EQ(parse_control_request(R"({"op":"status"})"), ControlOp::status);
  EXPECT_EQ(parse_control_request(R"({"client":"emit","op":"emit"})"), ControlOp::emit);
  for (const char* line : {"", "status", R"(["emit"])", R"({"op":"dance"})", R"({"op":1})",
                           R"({"OP":"emit"})", R"({"op":"emit")"})
    EXPECT_EQ(parse_control_request(line), ControlOp::unknown) << line;
}

TEST(ControlErrorLineTest, IsOneJsonLine) {
  EXPECT_EQ(control_error_line("bad \"x\"", 3), "{\"error\":\"bad \\\"x\\\"\",\"line\":3}\n");
}

ControlServer::Limits limits(std::size_t max_connections, std::chrono::milliseconds idle_timeout) {
  ControlServer::Limits limits;
  limits.max_connections = max_connections;
  limits.idle_timeout = idle_timeout;
  return limits;
}

// The refusal a client gets when it is not served: one JSON line with an error, then the end.
void expect_refusal(const Reply& reply, const std::string& why) {
  ASSERT_EQ(reply.lines.size(), 1u) << "expected one refusal line";
  auto answer = parse(reply.lines[0]);
  ASSERT_TRUE(answer.is_object() && answer.contains("error")) << reply.lines[0];
  EXPECT_NE(answer["error"].get<std::string>().find(why), std::string::npos) << reply.lines[0];
}

TEST_F(ControlServerTest, ConnectionsBeyondTheLimitAreRefusedAndTheServerGoesOn) {
  m_server = make_server(limits(4, std::chrono::hours(1)));
  ASSERT_TRUE(m_server->start());
  std::vector<Fd> held;
  for (int i = 0; i < 4; ++i)
    held.push_back(open_emit());

  for (int i = 0; i < 100; ++i) {
    SCOPED_TRACE("connection " + std::to_string(i));
    Fd fd = connect();
    Reply reply = read_to_eof(fd.get());
    EXPECT_TRUE(reply.closed);
    ASSERT_NO_FATAL_FAILURE(expect_refusal(reply, "too many control connections (4 open)"));
  }
  auto refused = control_status(m_socket);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("too many control connections"), std::string::npos)
      << refused.error().message;

  // The held connections still work; once they are done, new clients are served again.
  for (Fd& fd : held) {
    ASSERT_TRUE(control_send_all(fd.get(), k_good_line + "\n"));
    ::shutdown(fd.get(), SHUT_WR);
    Reply rest = read_to_eof(fd.get());
    EXPECT_TRUE(rest.closed);
    ASSERT_EQ(rest.lines.size(), 1u);
    EXPECT_TRUE(parse(rest.lines[0]).contains("seq")) << rest.lines[0];
  }
  held.clear();
  Reply reply = status();
  ASSERT_EQ(reply.lines.size(), 1u);
  EXPECT_EQ(parse(reply.lines[0]), status_object());
  EXPECT_EQ(m_outbox->head().last_seq, 8);
}

TEST_F(ControlServerTest, IdleConnectionIsClosedByTheServer) {
  // The emit client below must get its lines in before the 1 ms runs out: the server's thread for
  // a connection starts only once the gate is open, and the lines wait in the socket meanwhile.
  struct Gate {
    std::mutex mutex;
    std::condition_variable opened;
    bool closed = false;
  };
  auto gate = std::make_shared<Gate>();
  ControlServer::Limits tiny = limits(4, std::chrono::milliseconds(1));
  tiny.start_thread = [gate](std::function<void()> body) {
    std::unique_lock lock(gate->mutex);
    gate->opened.wait(lock, [&] { return !gate->closed; });
    return std::jthread(std::move(body));
  };
  auto set_gate = [&](bool closed) {
    std::lock_guard lock(gate->mutex);
    gate->closed = closed;
    gate->opened.notify_all();
  };
  m_server = make_server(std::move(tiny));
  ASSERT_TRUE(m_server->start());
  {
    Fd silent = connect();  // never says a word
    Reply reply = read_to_eof(silent.get());
    EXPECT_TRUE(reply.closed);
    ASSERT_NO_FATAL_FAILURE(expect_refusal(reply, "no input for 1 ms"));
  }
  {
    // An emit client that falls silent gets the answers it is owed, then the idle error.
    set_gate(true);
    Fd quiet = connect();
    ASSERT_TRUE(control_send_all(quiet.get(), "{\"op\":\"emit\"}\n" + k_good_line + "\n"));
    set_gate(false);
    Reply reply = read_to_eof(quiet.get());
    EXPECT_TRUE(reply.closed);
    ASSERT_EQ(reply.lines.size(), 2u);
    EXPECT_EQ(parse(reply.lines[0])["seq"], 1) << reply.lines[0];
    EXPECT_NE(reply.lines[1].find("no input for 1 ms"), std::string::npos) << reply.lines[1];
  }
  // Idle connections do not count against the limit once closed.
  for (int i = 0; i < 10; ++i) {
    Fd silent = connect();
    ASSERT_TRUE(read_to_eof(silent.get()).closed);
  }
  EXPECT_EQ(m_outbox->head().last_seq, 1);
}

TEST_F(ControlServerTest, ConnectionWithoutAThreadIsRefusedAndTheServerGoesOn) {
  // Fails the thread starts it is told to, as std::jthread does when the process has no threads
  // left (EAGAIN); the others start normally.
  auto calls = std::make_shared<std::atomic<int>>(0);
  // Thread 1 serves the first connection; 2 and 3 the emit connection and its answers.
  auto failing = std::make_shared<std::set<int>>(std::set<int>{1, 3});
  ControlServer::Limits failing_limits = limits(4, std::chrono::hours(1));
  failing_limits.start_thread = [calls, failing](std::function<void()> body) -> std::jthread {
    if (failing->contains(++*calls))
      throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
    return std::jthread(std::move(body));
  };
  m_server = make_server(std::move(failing_limits));
  ASSERT_TRUE(m_server->start());
  {
    Fd fd = connect();
    Reply reply = read_to_eof(fd.get());
    EXPECT_TRUE(reply.closed);
    ASSERT_NO_FATAL_FAILURE(expect_refusal(reply, "cannot serve this connection"));
  }
  {
    Reply reply = exchange("{\"op\":\"emit\"}\n" + k_good_line + "\n");  // threads 2 and 3
    EXPECT_TRUE(reply.closed);
    ASSERT_NO_FATAL_FAILURE(expect_refusal(reply, "cannot serve this connection"));
  }
  EXPECT_EQ(m_outbox->head().last_seq, 0);
  Reply reply = status();
  ASSERT_EQ(reply.lines.size(), 1u);
  EXPECT_EQ(parse(reply.lines[0]), status_object());
}

TEST_F(ControlServerTest, FirstLineLongerThan64KiBGetsAnAnswer) {
  ASSERT_TRUE(m_server->start());
  const std::string huge = R"({"op":"status","x":")" + std::string(300 * 1024, 'x') + "\"}";
  // The server answers as soon as the line is over the limit and closes without reading the rest,
  // so the client's sending may fail (EPIPE); what matters is the answer it reads.
  for (int repeats : {1, 100}) {
    SCOPED_TRACE(repeats == 1 ? "one long line" : "a line that does not end");
    Fd fd = connect();
    std::thread sender([&] {
      const std::string text = repeats == 1 ? huge + "\n" : huge;
      for (int i = 0; i < repeats && control_send_all(fd.get(), text); ++i) {
      }
    });
    Reply reply = read_to_eof(fd.get());
    ::shutdown(fd.get(), SHUT_RDWR);
    sender.join();
    ASSERT_NO_FATAL_FAILURE(expect_refusal(reply, "the first line is longer than 65536 bytes"));
  }
  EXPECT_EQ(status().lines.size(), 1u);
}

}  // namespace
}  // namespace agent
