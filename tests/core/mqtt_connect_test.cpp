// SPDX-License-Identifier: AGPL-3.0-or-later
// agent::mqtt_connect's Paho helpers: the words of a failed connect, one test per cause, each
// against the real thing (a real Mosquitto on loopback that refuses anonymous clients or a wrong
// password, a port nothing listens on, a `.invalid` host name, brokers whose TLS certificate does
// not name the URL's host or comes from another CA), the queue that brings Paho's callbacks onto
// a client's own thread, and the wait for a connect's answer on that thread.
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mqtt/async_client.h>

#include <reflow/core/env.hpp>
#include <reflow/core/mqtt_connect.hpp>
#include <reflow/core/tls.hpp>
#include <reflow/node/ca.hpp>

#include "mosquitto.hpp"
#include "temp_dir.hpp"

namespace agent::mqtt_connect {
namespace {

constexpr auto k_bound = std::chrono::seconds(20);

// Connects once with `version` to a broker that refuses anonymous clients; returns what
// paho_error() says of the refusal, or "" when the connect succeeded or nothing came within the
// bound.
std::string refusal_of_anonymous_connect(int version) {
  reflow_test::TempDir dir;
  reflow_test::MosquittoProcess broker(dir.path());
  broker.add_config("allow_anonymous false");
  broker.start();
  EventQueue<std::string> answers;
  Listener listener([&](const mqtt::token&) { answers.post(""); },
                    [&](const mqtt::token& token) { answers.post(paho_error(token)); });
  mqtt::async_client client(fmt::format("tcp://127.0.0.1:{}", broker.port()), "refused-client",
                            mqtt::create_options(version));
  mqtt::connect_options options;
  options.set_mqtt_version(version);
  if (version == MQTTVERSION_5)
    options.set_clean_start(true);
  else
    options.set_clean_session(true);
  options.set_automatic_reconnect(false);
  client.connect(options, nullptr, listener);
  const auto got = answers.wait(std::stop_token{}, k_bound);
  return got.empty() ? std::string("(no answer)") : got.front();
}

TEST(PahoErrorTest, RefusedMqtt5ConnectNamesTheReasonCodeAndItsMeaning) {
  const auto text = refusal_of_anonymous_connect(MQTTVERSION_5);
  EXPECT_NE(text.find("MQTT 5 reason code 0x87 (Not authorized)"), std::string::npos) << text;
  EXPECT_EQ(text.find("Unknown error code"), std::string::npos) << text;
}

TEST(PahoErrorTest, RefusedMqtt311ConnectSaysWhy) {
  const auto text = refusal_of_anonymous_connect(MQTTVERSION_3_1_1);
  EXPECT_NE(text.find("the broker refused the connection"), std::string::npos) << text;
}

// Connects once to `url` as the agent and the node do (set_credentials), then returns what
// connect_failure_cause() says of the failure, or "(connected)".
std::string cause_of_connect(const std::string& url, const Credentials& credentials,
                             int version = MQTTVERSION_3_1_1) {
  auto address = broker_address(url, "test");
  if (!address) return "(bad url) " + address.error().message;
  EventQueue<std::string> answers;
  Listener listener([&](const mqtt::token&) { answers.post("(connected)"); },
                    [&](const mqtt::token& token) { answers.post(paho_error(token)); });
  mqtt::async_client client(address->paho_uri, "cause-client", mqtt::create_options(version));
  mqtt::connect_options options;
  options.set_mqtt_version(version);
  options.set_connect_timeout(5);
  options.set_automatic_reconnect(false);
  if (auto ok = set_credentials(options, credentials, address->tls, "MQTT 3.1.1"); !ok)
    return "(bad credentials) " + ok.error().message;
  client.connect(options, nullptr, listener);
  const auto got = answers.wait(std::stop_token{}, k_bound);
  if (got.empty()) return "(no answer)";
  if (got.front() == "(connected)") {
    client.disconnect()->wait();
    return got.front();
  }
  return connect_failure_cause(url, credentials, got.front(), std::chrono::seconds(5),
                               std::stop_token{});
}

// A CA in `dir`/`name` and a server certificate from it for `hosts`, as `reflow-ingest ca init`
// and `ca server --host` make them.
struct TestPki {
  std::filesystem::path ca;
  std::filesystem::path cert;
  std::filesystem::path key;
};

TestPki make_pki(const std::filesystem::path& dir, const std::string& name,
                 const std::string& ca_common_name, std::vector<std::string> hosts) {
  const auto ca_dir = dir / name;
  ingest::CaInitOptions init;
  init.common_name = ca_common_name;
  auto made = ingest::ca_init(ca_dir, init);
  if (!made) throw std::runtime_error(made.error().message);
  ingest::IssueOptions server;
  server.role = ingest::CertRole::server;
  server.hosts = std::move(hosts);
  auto issued = ingest::ca_issue_with_key(ca_dir, dir / (name + "-server.key"), "", server);
  if (!issued) throw std::runtime_error(issued.error().message);
  const auto cert = dir / (name + "-server.crt");
  std::ofstream(cert) << issued->pem;
  return {ca_dir / ingest::k_ca_cert_file, cert, dir / (name + "-server.key")};
}

std::string mqtt_url(int port, const char* host = "127.0.0.1", bool tls = false) {
  return fmt::format("{}://{}:{}", tls ? "mqtts" : "mqtt", host, port);
}

TEST(ConnectFailureCauseTest, NothingListeningIsRefusedNamingHostAndPort) {
  const int port = reflow_test::free_loopback_port();
  EXPECT_EQ(
      cause_of_connect(mqtt_url(port), {}),
      fmt::format("refused: nothing is listening on 127.0.0.1:{} (TCP connection refused)", port));
}

TEST(ConnectFailureCauseTest, ThroughAProxyNothingListeningNamesTheProxy) {
  const int proxy_port = reflow_test::free_loopback_port();
  const std::string proxy = fmt::format("http://127.0.0.1:{}", proxy_port);
  // The broker's name is never resolved here: only the proxy's end knows an onion name.
  const auto text = connect_failure_cause("mqtts://node.onion:8883", {}, "MQTT error [-1]: Failure",
                                          std::chrono::seconds(5), std::stop_token(), proxy);
  EXPECT_EQ(text.rfind(fmt::format("proxy 127.0.0.1:{}: cannot reach it (", proxy_port), 0), 0u)
      << text;
}

TEST(ProxyUrlTest, TakesHttpHostAndPort) {
  auto plain = parse_proxy_url("http://127.0.0.1:9080");
  ASSERT_TRUE(plain) << plain.error().message;
  EXPECT_EQ(plain->host_port(), "127.0.0.1:9080");
  auto named = parse_proxy_url("http://tor-gateway.lan:8118/");
  ASSERT_TRUE(named) << named.error().message;
  EXPECT_EQ(named->host_port(), "tor-gateway.lan:8118");
  auto ipv6 = parse_proxy_url("http://[::1]:9080");
  ASSERT_TRUE(ipv6) << ipv6.error().message;
  EXPECT_EQ(ipv6->host_port(), "[::1]:9080");
}

TEST(ProxyUrlTest, RefusesOtherSchemesMissingPortsUserInfoAndPaths) {
  for (const char* bad :
       {"https://127.0.0.1:9080", "socks5://127.0.0.1:9050", "127.0.0.1:9080", "http://127.0.0.1",
        "http://:9080", "http://user:pw@127.0.0.1:9080", "http://127.0.0.1:9080/path",
        "http://127.0.0.1:0", "http://127.0.0.1:65536", ""}) {
    SCOPED_TRACE(bad);
    EXPECT_FALSE(parse_proxy_url(bad).has_value());
  }
  EXPECT_EQ(parse_proxy_url("http://127.0.0.1").error().message, "no port (write HOST:PORT)");
}

TEST(ProxyUrlTest, SetProxyGivesPahoHostAndPortForPlainAndTls) {
  mqtt::connect_options options;
  ASSERT_TRUE(set_proxy(options, "http://127.0.0.1:9080"));
  EXPECT_EQ(options.get_http_proxy(), "127.0.0.1:9080");
  EXPECT_EQ(options.get_https_proxy(), "127.0.0.1:9080");
  mqtt::connect_options untouched;
  ASSERT_TRUE(set_proxy(untouched, ""));
  EXPECT_EQ(untouched.get_http_proxy(), "");
  auto bad = set_proxy(untouched, "https://127.0.0.1:9080");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::invalid_config);
  EXPECT_EQ(bad.error().message.rfind("mqtt.proxy: ", 0), 0u) << bad.error().message;
}

TEST(ConnectFailureCauseTest, AHostNameThatDoesNotResolveIsDns) {
  // RFC 6761 §6.4: names under .invalid never resolve.
  const auto text = cause_of_connect("mqtt://no-such-broker.invalid:1883", {});
  EXPECT_EQ(text.rfind("DNS: cannot resolve the host name \"no-such-broker.invalid\" (", 0), 0u)
      << text;
}

TEST(ConnectFailureCauseTest, ACertificateForOtherNamesNamesThemAndTheUrlsHost) {
  reflow_test::TempDir dir;
  const auto pki = make_pki(dir.path(), "ca", "reflow node CA", {"localhost"});
  reflow_test::MosquittoProcess broker(dir.path());
  broker.enable_tls(pki.ca, pki.cert, pki.key);
  broker.start();
  Credentials credentials;
  credentials.ca_file = pki.ca;
  EXPECT_EQ(cause_of_connect(mqtt_url(broker.port(), "127.0.0.1", true), credentials),
            "TLS: the broker's certificate names DNS:localhost, not the URL's host 127.0.0.1; "
            "put one of its names in mqtt.url, or reissue it with `reflow-ingest ca server "
            "--host 127.0.0.1`");
}

TEST(ConnectFailureCauseTest, ACertificateFromAnotherCaIsNotTrusted) {
  reflow_test::TempDir dir;
  const auto pki = make_pki(dir.path(), "ca", "reflow node CA", {"127.0.0.1"});
  const auto other = make_pki(dir.path(), "other", "other CA", {"127.0.0.1"});
  reflow_test::MosquittoProcess broker(dir.path());
  broker.enable_tls(pki.ca, pki.cert, pki.key);
  broker.start();
  Credentials credentials;
  credentials.ca_file = other.ca;
  EXPECT_EQ(cause_of_connect(mqtt_url(broker.port(), "127.0.0.1", true), credentials),
            fmt::format("TLS: the broker's certificate (CN=127.0.0.1, issued by CN=reflow node "
                        "CA) is not trusted by mqtt.ca_file \"{}\"",
                        other.ca.string()));
}

TEST(ConnectFailureCauseTest, APlainListenerForAnMqttsUrlIsATlsHandshakeFailure) {
  reflow_test::TempDir dir;
  reflow_test::MosquittoProcess broker(dir.path());
  broker.start();
  const auto text = cause_of_connect(mqtt_url(broker.port(), "127.0.0.1", true), {});
  EXPECT_EQ(
      text.rfind(fmt::format("TLS: the handshake with 127.0.0.1:{} failed (", broker.port()), 0),
      0u)
      << text;
}

TEST(ConnectFailureCauseTest, AWrongPasswordIsNotAuthorisedWithTheReasonCode) {
  reflow_test::TempDir dir;
  reflow_test::MosquittoProcess broker(dir.path());
  broker.require_password("press-01", "right horse battery");
  broker.start();
  std::ofstream(dir.path() / "wrong") << "wrong staple\n";
  std::filesystem::permissions(dir.path() / "wrong", std::filesystem::perms::owner_read |
                                                         std::filesystem::perms::owner_write);
  Credentials credentials;
  credentials.username = "press-01";
  credentials.password_file = dir.path() / "wrong";
  // Mosquitto 2.0 answers a wrong password with 0x87 in MQTT 5 and 5 in MQTT 3.1.1.
  const auto v5 = cause_of_connect(broker.url(), credentials, MQTTVERSION_5);
  EXPECT_EQ(v5,
            "not authorised: the broker refused the connection: MQTT 5 reason code 0x87 (Not "
            "authorized)");
  const auto v311 = cause_of_connect(broker.url(), credentials, MQTTVERSION_3_1_1);
  EXPECT_EQ(v311,
            "not authorised: the broker refused the connection: MQTT 3.1.1 return code 5 (not "
            "authorized)");
  for (const auto& text : {v5, v311})
    EXPECT_EQ(text.find("staple"), std::string::npos) << text;
}

TEST(ConnectFailureCauseTest, TcpErrorsNameTheirCause) {
  using std::chrono::seconds;
  EXPECT_EQ(tcp_failure_text(ECONNREFUSED, "10.0.0.9:1883", seconds(5)),
            "refused: nothing is listening on 10.0.0.9:1883 (TCP connection refused)");
  EXPECT_EQ(tcp_failure_text(EHOSTUNREACH, "10.0.0.9:1883", seconds(5)),
            "unreachable: no route to 10.0.0.9:1883 (No route to host)");
  EXPECT_EQ(tcp_failure_text(ENETUNREACH, "[2001:db8::1]:8883", seconds(5)),
            "unreachable: no route to [2001:db8::1]:8883 (Network is unreachable)");
  EXPECT_EQ(tcp_failure_text(ETIMEDOUT, "10.0.0.9:1883", seconds(5)),
            "timed out: no answer from 10.0.0.9:1883 within 5 s (a firewall dropping packets, "
            "or the host is down)");
  EXPECT_EQ(tcp_failure_text(EACCES, "10.0.0.9:1883", seconds(5)),
            "cannot connect to 10.0.0.9:1883 (Permission denied)");
}

TEST(ConnectFailureCauseTest, CertificateNamesMatchAsRfc6125Says) {
  const std::vector<std::string> dns = {"Broker.Example.org", "*.node.example"};
  const std::vector<std::string> ips = {"127.0.0.1", "::1"};
  EXPECT_TRUE(certificate_names_host(dns, ips, "broker.example.org"));
  EXPECT_TRUE(certificate_names_host(dns, ips, "a.node.example"));
  EXPECT_FALSE(certificate_names_host(dns, ips, "a.b.node.example"));
  EXPECT_FALSE(certificate_names_host(dns, ips, "node.example"));
  EXPECT_TRUE(certificate_names_host(dns, ips, "127.0.0.1"));
  EXPECT_TRUE(certificate_names_host(dns, ips, "[::1]"));
  EXPECT_TRUE(certificate_names_host(dns, ips, "[0:0::1]"));
  EXPECT_FALSE(certificate_names_host(dns, ips, "127.0.0.2"));
  // An address is never matched against DNS names, nor a name against addresses.
  EXPECT_FALSE(certificate_names_host({"127.0.0.1"}, {}, "127.0.0.1"));
  EXPECT_FALSE(certificate_names_host({"*.0.0.1"}, {}, "127.0.0.1"));
  EXPECT_FALSE(certificate_names_host({}, {"127.0.0.1"}, "localhost"));
}

TEST(ConnectFailureCauseTest, StopReturnsPahosTextWithoutProbing) {
  std::stop_source stop;
  stop.request_stop();
  EXPECT_EQ(
      connect_failure_cause("mqtt://no-such-broker.invalid:1883", {}, "MQTT error [-1]: Failure",
                            std::chrono::seconds(5), stop.get_token()),
      "MQTT error [-1]: Failure");
}

TEST(PahoErrorTest, ReasonCodeTextNamesTheCode) {
  EXPECT_EQ(reason_code_text(0x87), "0x87 (Not authorized)");
  EXPECT_EQ(reason_code_text(0x86), "0x86 (Bad User Name or Password)");
}

TEST(EventQueueTest, WaitReturnsEverythingQueuedInOrder) {
  EventQueue<int> queue;
  queue.post(1);
  queue.post(2);
  const auto got = queue.wait(std::stop_token{}, std::chrono::seconds(0));
  EXPECT_EQ(got, (std::deque<int>{1, 2}));
  EXPECT_TRUE(queue.wait(std::stop_token{}, std::chrono::seconds(0)).empty());
}

TEST(EventQueueTest, WakeEndsAWaitWithNothing) {
  EventQueue<int> queue;
  queue.wake();
  // Without the wake this would wait for the whole bound.
  EXPECT_TRUE(queue.wait(std::stop_token{}, k_bound).empty());
  queue.post(3);
  EXPECT_EQ(queue.wait(std::stop_token{}, k_bound), (std::deque<int>{3}));
}

TEST(EventQueueTest, RequeuePutsTheRestAheadOfNewerEvents) {
  EventQueue<int> queue;
  queue.post(1);
  queue.post(2);
  queue.post(3);
  auto got = queue.wait(std::stop_token{}, std::chrono::seconds(0));
  queue.post(4);
  queue.requeue(got, 1);
  EXPECT_EQ(queue.wait(std::stop_token{}, std::chrono::seconds(0)), (std::deque<int>{2, 3, 4}));
}

TEST(EventQueueTest, NextTakesOneAndStopsOnRequest) {
  EventQueue<int> queue;
  queue.post(5);
  queue.post(6);
  std::stop_source stop;
  EXPECT_EQ(queue.next(stop.get_token()), 5);
  queue.clear();
  stop.request_stop();
  EXPECT_EQ(queue.next(stop.get_token()), std::nullopt);
}

// What await_connect() takes: an event of a connect attempt as a client's listener posts it.
enum class TestKind { connect_ok, connect_failed, connection_lost, other };
struct TestEvent {
  TestKind kind;
  std::uint64_t generation = 0;
  std::string text;
};

// A clock the waits move: each wait takes `step` of it, so that the give-up time comes without a
// sleep.
struct SteppingClock {
  std::chrono::steady_clock::time_point now{};
  std::chrono::milliseconds step{100};
};

ConnectOutcome await(EventQueue<TestEvent>& queue, SteppingClock& clock,
                     std::chrono::milliseconds give_up_after, const std::stop_token& stop = {}) {
  return await_connect(
      queue, 7, TestKind::connect_ok, TestKind::connect_failed, TestKind::connection_lost,
      clock.now + give_up_after, stop, [&] { return clock.now; },
      [&](std::chrono::steady_clock::duration) {
        auto events = queue.wait(stop, std::chrono::seconds(0));
        clock.now += clock.step;
        return events;
      });
}

TEST(AwaitConnectTest, SkipsOtherAttemptsAndLateLossesAndRequeuesWhatFollowsTheAnswer) {
  EventQueue<TestEvent> queue;
  SteppingClock clock;
  queue.post({TestKind::connect_failed, 6, "an older attempt"});
  queue.post({TestKind::connection_lost, 0, "the previous connection"});
  queue.post({TestKind::connect_ok, 7, {}});
  queue.post({TestKind::other, 7, "for the session"});
  const ConnectOutcome outcome = await(queue, clock, std::chrono::seconds(5));
  EXPECT_EQ(outcome.state, ConnectOutcome::State::connected);
  const auto rest = queue.wait(std::stop_token{}, std::chrono::seconds(0));
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest.front().text, "for the session");
}

TEST(AwaitConnectTest, AFailedAnswerCarriesItsText) {
  EventQueue<TestEvent> queue;
  SteppingClock clock;
  queue.post({TestKind::connect_failed, 7, "MQTT 5 reason code 0x87 (Not authorized)"});
  const ConnectOutcome outcome = await(queue, clock, std::chrono::seconds(5));
  EXPECT_EQ(outcome.state, ConnectOutcome::State::failed);
  EXPECT_EQ(outcome.failure, "MQTT 5 reason code 0x87 (Not authorized)");
}

TEST(AwaitConnectTest, NoAnswerByTheGiveUpTimeIsAFailureNamingTheTimeout) {
  EventQueue<TestEvent> queue;
  SteppingClock clock;
  const ConnectOutcome outcome = await(queue, clock, std::chrono::seconds(1));
  EXPECT_EQ(outcome.state, ConnectOutcome::State::failed);
  EXPECT_EQ(outcome.failure, "no answer within mqtt.connect_timeout");
  EXPECT_EQ(clock.now, std::chrono::steady_clock::time_point{} + std::chrono::seconds(1));
}

TEST(AwaitConnectTest, AStopRequestEndsTheWaitWithoutAFailure) {
  EventQueue<TestEvent> queue;
  SteppingClock clock;
  std::stop_source stop;
  stop.request_stop();
  const ConnectOutcome outcome = await(queue, clock, std::chrono::seconds(5), stop.get_token());
  EXPECT_EQ(outcome.state, ConnectOutcome::State::stopped);
  EXPECT_EQ(outcome.failure, "");
}

TEST(BackoffTest, DoublesItsRangeUpToTheMaximumAndStartsOverAfterReset) {
  Backoff backoff(std::chrono::milliseconds(1000), std::chrono::milliseconds(4000));
  EXPECT_EQ(backoff.next().count(), 1000);  // [1 s, 1 s]
  const auto second = backoff.next().count();
  EXPECT_GE(second, 1000);
  EXPECT_LE(second, 2000);
  for (int i = 0; i < 100; ++i) {
    const auto later = backoff.next().count();
    EXPECT_GE(later, 1000);
    EXPECT_LE(later, 4000);
  }
  backoff.reset();
  EXPECT_EQ(backoff.next().count(), 1000);
}

// The loop every long-lived client runs: attempt, wait on the Env's clock, attempt again; a
// connect starts the waits over. Time is a FakeEnv moved by hand.
TEST(ReconnectLoopTest, WaitsTheBackoffBetweenAttemptsUntilStopped) {
  FakeEnv env;
  Backoff backoff(std::chrono::milliseconds(1000), std::chrono::milliseconds(60'000));
  std::mutex mutex;
  std::condition_variable cv;
  int attempts = 0;
  std::vector<std::int64_t> waits;
  std::jthread client([&](std::stop_token stop) {
    reconnect_loop(
        stop, env, backoff,
        [&](std::stop_token) {
          std::lock_guard lock(mutex);
          return ++attempts == 3;  // the third attempt connects (and its session ends)
        },
        [&](std::chrono::milliseconds delay) {
          {
            std::lock_guard lock(mutex);
            waits.push_back(delay.count());
          }
          cv.notify_all();
        });
  });
  auto wait_for_waits = [&](std::size_t n) {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, std::chrono::seconds(30), [&] { return waits.size() >= n; });
  };
  for (std::size_t n = 1; n <= 2; ++n) {
    ASSERT_TRUE(wait_for_waits(n));
    ASSERT_TRUE(env.wait_for_sleepers(1));
    std::int64_t delay = 0;
    {
      std::lock_guard lock(mutex);
      EXPECT_EQ(attempts, static_cast<int>(n));  // no new attempt before the wait is over
      delay = waits.back();
    }
    env.advance_ms(delay);
  }
  ASSERT_TRUE(wait_for_waits(3));
  ASSERT_TRUE(env.wait_for_sleepers(1));
  client.request_stop();
  client.join();
  EXPECT_EQ(attempts, 3);
  ASSERT_EQ(waits.size(), 3U);
  EXPECT_EQ(waits[0], 1000);
  EXPECT_GE(waits[1], 1000);
  EXPECT_LE(waits[1], 2000);
  EXPECT_EQ(waits[2], 1000);  // after the connect: from the minimum again
}

}  // namespace
}  // namespace agent::mqtt_connect
