// SPDX-License-Identifier: AGPL-3.0-or-later
// agent::HttpClient against a real HTTP server (tests/support/http_replay.py) on loopback.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <reflow/core/http.hpp>

#include "http_replay.hpp"
#include "temp_dir.hpp"

namespace {

using agent::ErrorCode;
using agent::HttpClient;
using agent::HttpRequest;
using reflow_test::HttpReplayServer;

HttpRequest request(std::string url, std::string method = "GET",
                    std::vector<std::pair<std::string, std::string>> headers = {},
                    std::string body = {},
                    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  HttpRequest r;
  r.method = std::move(method);
  r.url = std::move(url);
  r.headers = std::move(headers);
  r.body = std::move(body);
  r.timeout = timeout;
  return r;
}

class HttpClientTest : public ::testing::Test {
 protected:
  std::filesystem::path write_script(const std::string& name, const nlohmann::json& script) {
    auto path = m_dir / name;
    std::ofstream(path) << script.dump(2);
    return path;
  }

  static nlohmann::json route(const std::string& method, const std::string& path,
                              nlohmann::json responses) {
    return {{"method", method}, {"path", path}, {"responses", std::move(responses)}};
  }

  reflow_test::TempDir m_dir;
  HttpClient m_client;
};

TEST(UrlEscapeTest, KeepsTheUnreservedAndPercentEncodesEveryOtherByteInUpperCase) {
  EXPECT_EQ(agent::url_escape("AZaz09-._~"), "AZaz09-._~");
  EXPECT_EQ(agent::url_escape("spool 3/é?&=#%"), "spool%203%2F%C3%A9%3F%26%3D%23%25");
  EXPECT_EQ(agent::url_escape(std::string("a\0b", 3)), "a%00b");
  EXPECT_EQ(agent::url_escape(""), "");
}

TEST_F(HttpClientTest, SendsMethodHeadersAndBodyAsGiven) {
  HttpReplayServer server(write_script(
      "script.json",
      {{"routes",
        {route("GET", "/printer/info", {{{"status", 200}, {"body", "{\"state\":\"ready\"}"}}}),
         route("PUT", "/api/job", {{{"status", 204}, {"body", ""}}})}}}));

  auto got = m_client.perform(
      request(server.url() + "/printer/info?refresh=1", "GET", {{"X-Api-Key", "secret"}}));
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got->status, 200);
  EXPECT_EQ(got->body, "{\"state\":\"ready\"}");
  EXPECT_EQ(got->content_type, "application/json");

  auto put =
      m_client.perform(request(server.url() + "/api/job", "PUT",
                               {{"Content-Type", "application/json"}}, "{\"command\":\"cancel\"}"));
  ASSERT_TRUE(put) << put.error().message;
  EXPECT_EQ(put->status, 204);
  EXPECT_EQ(put->body, "");

  auto requests = server.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0]["method"], "GET");
  EXPECT_EQ(requests[0]["path"], "/printer/info");
  EXPECT_EQ(requests[0]["query"], "refresh=1");
  EXPECT_EQ(requests[0]["headers"]["x-api-key"], "secret");
  EXPECT_EQ(requests[0]["body"], "");
  EXPECT_EQ(requests[1]["method"], "PUT");
  EXPECT_EQ(requests[1]["path"], "/api/job");
  EXPECT_EQ(requests[1]["headers"]["content-type"], "application/json");
  EXPECT_EQ(requests[1]["body"], "{\"command\":\"cancel\"}");
}

TEST_F(HttpClientTest, ServerErrorIsAResponseNotAnError) {
  HttpReplayServer server(write_script(
      "script.json",
      {{"routes",
        {route("GET", "/status",
               {{{"status", 500}, {"body", "oops"}, {"content_type", "text/plain"}}})}}}));
  auto got = m_client.perform(request(server.url() + "/status"));
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got->status, 500);
  EXPECT_EQ(got->body, "oops");
  EXPECT_EQ(got->content_type, "text/plain");

  auto unknown = m_client.perform(request(server.url() + "/nowhere"));
  ASSERT_TRUE(unknown) << unknown.error().message;
  EXPECT_EQ(unknown->status, 404);
}

TEST_F(HttpClientTest, ConnectionRefusedIsDeviceUnavailableUntilTheServerIsBack) {
  HttpReplayServer server(write_script(
      "script.json", {{"routes", {route("GET", "/x", {{{"status", 200}, {"body", "up"}}})}}}));
  ASSERT_TRUE(m_client.perform(request(server.url() + "/x")));

  server.stop();
  auto refused = m_client.perform(request(server.url() + "/x"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::device_unavailable);
  EXPECT_NE(refused.error().message.find(server.url() + "/x"), std::string::npos)
      << refused.error().message;

  server.restart();
  auto back = m_client.perform(request(server.url() + "/x"));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->body, "up");
}

TEST_F(HttpClientTest, DroppedConnectionIsDeviceUnavailable) {
  HttpReplayServer server(
      write_script("script.json", {{"routes", {route("GET", "/x", {{{"close", true}}})}}}));
  auto got = m_client.perform(request(server.url() + "/x"));
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, ErrorCode::device_unavailable);
}

TEST_F(HttpClientTest, ServerThatNeverAnswersTimesOut) {
  // A socket that listens but never accepts: the kernel completes the handshake and takes the
  // request, and no answer ever comes.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string url = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/x";

  auto got = m_client.perform(request(url, "GET", {}, {}, std::chrono::milliseconds(200)));
  ::close(fd);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, ErrorCode::timeout) << got.error().message;
}

TEST_F(HttpClientTest, HangingReplayRouteTimesOut) {
  HttpReplayServer server(
      write_script("script.json", {{"routes", {route("GET", "/x", {{{"hang", true}}})}}}));
  auto got =
      m_client.perform(request(server.url() + "/x", "GET", {}, {}, std::chrono::milliseconds(200)));
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, ErrorCode::timeout) << got.error().message;
}

TEST_F(HttpClientTest, RefusesResponsesLargerThan8MiB) {
  std::ofstream(m_dir / "big.json") << std::string(8 * 1024 * 1024 + 1, 'x');
  std::ofstream(m_dir / "max.json") << std::string(8 * 1024 * 1024, 'y');
  HttpReplayServer server(write_script(
      "script.json", {{"routes",
                       {route("GET", "/big", {{{"status", 200}, {"body_file", "big.json"}}}),
                        route("GET", "/max", {{{"status", 200}, {"body_file", "max.json"}}})}}}));
  auto big = m_client.perform(request(server.url() + "/big"));
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, ErrorCode::io) << big.error().message;

  auto max = m_client.perform(request(server.url() + "/max"));
  ASSERT_TRUE(max) << max.error().message;
  EXPECT_EQ(max->body.size(), 8u * 1024 * 1024);
}

TEST_F(HttpClientTest, MalformedUrlOrMethodIsInvalidArgument) {
  auto scheme = m_client.perform(request("ftp://127.0.0.1/x"));
  ASSERT_FALSE(scheme);
  EXPECT_EQ(scheme.error().code, ErrorCode::invalid_argument);
  auto method = m_client.perform(request("http://127.0.0.1/x", "get me"));
  ASSERT_FALSE(method);
  EXPECT_EQ(method.error().code, ErrorCode::invalid_argument);
}

class HttpReplayServerTest : public HttpClientTest {};

TEST_F(HttpReplayServerTest, RepeatsTheLastResponseAndStartsAgainAfterLoad) {
  auto first = write_script(
      "first.json", {{"routes", {route("GET", "/s", {{{"body", "one"}}, {{"body", "two"}}})}}});
  auto second =
      write_script("second.json", {{"routes", {route("GET", "/s", {{{"body", "offline"}}})}}});
  HttpReplayServer server(first);
  auto body = [&] {
    auto got = m_client.perform(request(server.url() + "/s"));
    return got ? got->body : got.error().message;
  };
  EXPECT_EQ(body(), "one");
  EXPECT_EQ(body(), "two");
  EXPECT_EQ(body(), "two");
  server.load(second);
  EXPECT_EQ(body(), "offline");
  server.load(first);
  EXPECT_EQ(body(), "one");
  EXPECT_EQ(server.requests().size(), 5u);
}

}  // namespace
