// SPDX-License-Identifier: AGPL-3.0-or-later
// What the device's forwarder (agent/device/src/forwarder.cpp) and the node's service
// (agent/node/src/events_connection.cpp, ack_publisher.cpp) do alike to reach their broker with
// Paho MQTT C++: the broker address, the credentials and TLS options from the [mqtt] keys both
// configs share, the reconnect backoff, the tagging of Paho tokens with a connect attempt, the
// words of a Paho failure and the cause of a failed connect, the queue that brings Paho's
// callbacks onto the client's own thread (the drivers' MQTT subscriber uses these too) and the
// wait for a connect's answer on that thread. Not installed.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <iterator>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <mqtt/async_client.h>

#include <reflow/core/env.hpp>
#include <reflow/core/result.hpp>

namespace agent {

/// A broker address from `mqtt.url`.
struct BrokerUrl {
  std::string host;  ///< a name, an IPv4 address, or an IPv6 address in brackets ("[::1]")
  int port = 1883;   ///< from the URL, else 1883 for mqtt:// and 8883 for mqtts://
  bool tls = false;  ///< mqtts://
};

/// Parses mqtt://HOST[:PORT] or mqtts://HOST[:PORT]. No user info, path or query: credentials
/// have their own keys and MQTT has no path. The config loader and the forwarder both use it.
/// Errors: invalid_argument saying what is wrong ("unknown scheme", "the port is not a number
/// from 1 to 65535" …).
Result<BrokerUrl> parse_broker_url(std::string_view url);

/// An HTTP CONNECT proxy (RFC 9110 §9.3.6) from `mqtt.proxy`, such as Tor's HTTPTunnelPort.
struct ProxyUrl {
  std::string host;  ///< a name, an IPv4 address, or an IPv6 address in brackets ("[::1]")
  int port = 0;      ///< always given in the URL
  /// "host:port", the form Paho C's httpProxy/httpsProxy options and the log use.
  std::string host_port() const;
};

/// Parses http://HOST:PORT (an optional trailing "/"). No user info, path or query, and the port
/// is required (Tor's HTTPTunnelPort has no standard port). Errors: invalid_argument saying what
/// is wrong ("the scheme must be http://", "the port is not a number from 1 to 65535" …).
Result<ProxyUrl> parse_proxy_url(std::string_view url);

}  // namespace agent

namespace agent::mqtt_connect {

struct BrokerAddress {
  std::string paho_uri;  ///< tcp://host:port or ssl://host:port, the schemes Paho C knows
  bool tls = false;      ///< mqtts://
};

/// mqtt://host[:port] → tcp://host:port; mqtts://host[:port] → ssl://host:port. The URL is
/// parsed by the function the config loaders validate it with (parse_broker_url). Errors:
/// invalid_config naming `source_file` ("config" when empty) and mqtt.url.
Result<BrokerAddress> broker_address(std::string_view url, std::string_view source_file);

/// The [mqtt] keys about who the client is and how it proves it, which both configs have.
struct Credentials {
  std::string username;
  std::filesystem::path password_file;  ///< first line is the password
  std::filesystem::path ca_file;
  std::filesystem::path cert_file;
  std::filesystem::path key_file;  ///< TOML key mqtt.key_file
};

/// The credentials of an AgentConfig or an IngestConfig (the fields have the same names).
template <typename Config>
Credentials credentials_of(const Config& config) {
  return Credentials{config.username, config.password_file, config.ca_file, config.cert_file,
                     config.tls_key_file};
}

/// The password in `path` (mqtt.password_file): its first line, without the line end. Refuses a
/// file that every user may read or write (mode & 007, as ssh and the device key do; group access
/// is allowed for a root:reflow-agent 0640 file), naming the file and the fix `chmod 600 PATH`,
/// and never quoting the password. Errors: invalid_config naming mqtt.password_file and the path.
Result<std::string> read_password_file(const std::filesystem::path& path);

/// Sets the user name, the password (read_password_file, now) and, when `tls`, the SSL
/// options (CA bundle, client certificate and key for mutual TLS, server certificate and host
/// name verified) on `options`. `protocol` is the MQTT version the client speaks, as named in
/// the error for a password without a user name ("MQTT 3.1.1"). Errors: invalid_config naming
/// the mqtt.* key (a file that cannot be read, cert_file without key_file or the reverse).
Status set_credentials(mqtt::connect_options& options, const Credentials& credentials, bool tls,
                       std::string_view protocol);

/// Sends the MQTT connection through the HTTP CONNECT proxy `proxy` (an mqtt.proxy value that
/// parse_proxy_url accepts): Paho C (1.3.12, MQTTProtocolOut.c MQTTProtocol_connect and
/// MQTTAsyncUtils.c MQTTAsync_connecting) connects to the proxy, sends "CONNECT host:port
/// HTTP/1.1" (Proxy.c Proxy_connect), waits up to 10 s for "HTTP/1.x 200", then does TLS (for
/// mqtts://, verifying the broker's name from mqtt.url) and MQTT inside the tunnel; httpProxy is
/// used for mqtt://, httpsProxy for mqtts://, so both are set. An empty `proxy` leaves the options
/// alone (Paho then falls back to the http_proxy/https_proxy environment variables). Errors:
/// invalid_config naming mqtt.proxy.
Status set_proxy(mqtt::connect_options& options, std::string_view proxy);

/// `ms` in whole seconds for Paho, rounded up and at least 1 so that a "500ms" setting never
/// becomes 0 (= off), and at most `max` (keep alive is a 16-bit field).
int whole_seconds(std::chrono::milliseconds ms, std::int64_t max = 65535);

/// Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter") with `min` as the floor,
/// so that a fleet that lost its broker together never hammers it faster than that: uniform in
/// [min, min(max, min · 2^attempt)].
std::chrono::milliseconds reconnect_backoff(std::chrono::milliseconds min,
                                            std::chrono::milliseconds max, std::uint32_t attempt,
                                            std::mt19937_64& rng);

/// One client's reconnect delays: reconnect_backoff() with the count of attempts that failed
/// since the last connect, seeded from std::random_device. One thread.
class Backoff {
 public:
  Backoff(std::chrono::milliseconds min, std::chrono::milliseconds max)
      : m_min(min), m_max(max), m_rng(std::random_device{}()) {}

  /// The wait before the next attempt, counting one more failed one (the range stops doubling
  /// at `max`; the count stops at 62).
  std::chrono::milliseconds next() {
    const auto delay = reconnect_backoff(m_min, m_max, m_attempt, m_rng);
    if (m_attempt < 62) ++m_attempt;
    return delay;
  }

  /// A connect succeeded: the next wait is drawn from [min, min · 2] again.
  void reset() { m_attempt = 0; }

 private:
  std::chrono::milliseconds m_min;
  std::chrono::milliseconds m_max;
  std::uint32_t m_attempt = 0;
  std::mt19937_64 m_rng;
};

/// The loop of a client thread that keeps one connection (the forwarder, the node's events
/// connection, the drivers' subscriber): `attempt(stop)` connects and, once connected, serves
/// the session until it ends, returning true when it connected (which resets `backoff`); until
/// `stop`, each attempt is followed by a wait of `backoff.next()` on `env`'s clock, which
/// `waiting(delay)` (when set) is told of first, for the log. Returns once `stop` is requested.
void reconnect_loop(std::stop_token stop, Env& env, Backoff& backoff,
                    const std::function<bool(std::stop_token)>& attempt,
                    const std::function<void(std::chrono::milliseconds)>& waiting = {});

/// A connect attempt's number as a Paho token's user context, and back: an answer that arrives
/// late is told apart from one to the current attempt.
void* context_of(std::uint64_t generation);
std::uint64_t generation_of(const mqtt::token& token);

/// Why a Paho token failed, in words an operator can act on, without any I/O (safe on Paho's
/// threads):
/// - a refused CONNECT (MQTT 5 CONNACK reason code, §3.2.2.2; MQTT 3.1.1 CONNACK return code,
///   §3.2.2.3), beginning "not authorised: " for bad credentials (MQTT 5 0x86 "Bad User Name or
///   Password", 0x87 "Not authorized", 0x8C "Bad authentication method"; MQTT 3.1.1 4 "bad user
///   name or password", 5 "not authorized"):
///   "not authorised: the broker refused the connection: MQTT 5 reason code 0x87 (Not
///   authorized)", "not authorised: the broker refused the connection: MQTT 3.1.1 return code 5
///   (not authorized)", and for other codes "the broker refused the connection: MQTT 5 reason
///   code 0x85 (Client Identifier not valid)" (names from Paho C's table, MQTT 5 §2.4);
/// - another MQTT 5 reason code from 0x80 up (SUBACK, PUBACK; MQTT 5 §2.4) as its code and name:
///   "the broker refused: MQTT 5 reason code 0x87 (Not authorized)";
/// - else Paho's own text for its return code ("MQTT error [-1]: Failure"), which for a connect
///   is what connect_failure_cause() looks into.
std::string paho_error(const mqtt::token& token);

/// The MQTT 5 reason code (MQTT 5 §2.4) as text, "0x87 (Not authorized)".
std::string reason_code_text(int reason_code);

/// Why a connect failed, in one line that names the cause and never a secret (issue 15). Paho C
/// reports everything below MQTT (DNS, TCP, TLS) as MQTTASYNC_FAILURE ("MQTT error [-1]:
/// Failure"), so unless the broker itself refused (`paho_text` from paho_error() names a CONNACK
/// code; it is returned as it stands), this repeats the way to `url` step by step and says where
/// it ends:
/// - `DNS: cannot resolve the host name "broker.example" (Name or service not known)`
///   (getaddrinfo; its gai_strerror text in brackets), or `DNS: no answer for the host name
///   "broker.example" within 5 s`;
/// - `refused: nothing is listening on 127.0.0.1:8883 (TCP connection refused)`: the host
///   answered, but no broker listens on that port;
/// - `unreachable: no route to 10.0.0.9:8883 (No route to host)` (also "Network is
///   unreachable", "Host is down", "Network is down");
/// - `timed out: no answer from 10.0.0.9:8883 within 5 s (a firewall dropping packets, or the
///   host is down)`, also for a TLS handshake that does not finish;
/// - `TLS: the handshake with 127.0.0.1:8883 failed (<mbedTLS's error text>)`, e.g. an mqtts://
///   URL for a plain listener;
/// - `TLS: the broker's certificate (CN=broker, issued by CN=other CA) is not trusted by
///   mqtt.ca_file "/etc/reflow/ca.crt"` ("by the system's CA certificates" without ca_file);
/// - `TLS: the broker's certificate (CN=broker) has expired` / `is not valid yet`;
/// - "TLS: the broker's certificate names DNS:localhost, not the URL's host 127.0.0.1; put one
///   of its names in mqtt.url, or reissue it with `reflow-ingest ca server --host 127.0.0.1`"
///   (subjectAltName DNS and IP entries, matched as RFC 6125 §6.4 does, one left-most "*"; the
///   subject's CN when there is no DNS entry, as OpenSSL does for Paho);
/// - when TCP and TLS both work (so the broker dropped the connection for a reason Paho does not
///   pass on): `paho_text` and "(127.0.0.1:8883 accepts TCP and TLS; see the broker's log)".
/// The probe is one getaddrinfo, one non-blocking TCP connect per address and, for mqtts://, one
/// TLS handshake with mbedTLS using `credentials`' CA and client certificate (to read the
/// broker's certificate, which Paho does not expose). It runs on the calling thread (the
/// client's own, never Paho's), takes at most `timeout` in all and returns `paho_text` at once
/// when `stop` is requested; a getaddrinfo still running then finishes on a detached thread.
///
/// With a `proxy` (mqtt.proxy), the way is the proxy's instead, asked with libcurl (a CONNECT
/// to the broker's host and port, nothing sent inside the tunnel), and every cause begins with
/// "proxy HOST:PORT":
/// - `proxy 127.0.0.1:9080: nothing is listening (TCP connection refused); is the proxy (Tor's
///   HTTPTunnelPort) running?`, or cannot resolve / no answer within the timeout;
/// - `proxy 127.0.0.1:9080 refused CONNECT to broker.onion:8883 (HTTP 403)`;
/// - when the tunnel opens, for mqtts:// the TLS step above through it (a `TLS:` cause, with
///   "(through proxy 127.0.0.1:9080)" after it: e.g. a broker certificate without the onion
///   name); else `paho_text` and "(proxy 127.0.0.1:9080 opens a tunnel to HOST:PORT and TLS
///   works through it; see the broker's log)".
std::string connect_failure_cause(std::string_view url, const Credentials& credentials,
                                  std::string_view paho_text, std::chrono::milliseconds timeout,
                                  std::stop_token stop, std::string_view proxy = {});

/// The cause for a TCP connect to `host_port` ("host:port") that ended with errno `error`
/// (ETIMEDOUT: no answer within `timeout`), worded as connect_failure_cause() says; for other
/// errors "cannot connect to HOST:PORT (<strerror>)".
std::string tcp_failure_text(int error, std::string_view host_port,
                             std::chrono::milliseconds timeout);

/// True when the certificate's subjectAltName entries (`dns_names`, `ip_addresses` as
/// tls::CertInfo has them) name `host` (a DNS name, IPv4 address or IPv6 address, brackets
/// allowed): IP addresses compared as addresses, names case-insensitively, "*" only as the whole
/// left-most label of a name with at least three labels (RFC 6125 §6.4.3).
bool certificate_names_host(const std::vector<std::string>& dns_names,
                            const std::vector<std::string>& ip_addresses, std::string_view host);

/// Paho calls listeners and callbacks on its own threads. A client that keeps its state on one
/// thread of its own (the forwarder, the node's service, the drivers' subscriber) has those
/// threads only post() what happened, and takes it on its own thread with wait() or next().
/// Thread-safe.
template <typename Event>
class EventQueue {
 public:
  /// From any thread: queues `event` and wakes the waiting thread.
  void post(Event event) {
    {
      std::lock_guard lock(m_mutex);
      m_events.push_back(std::move(event));
    }
    m_cv.notify_one();
  }

  /// From any thread: ends the current (or the next) wait() early, with nothing queued.
  void wake() {
    {
      std::lock_guard lock(m_mutex);
      m_woken = true;
    }
    m_cv.notify_one();
  }

  /// Waits up to `timeout` for an event, a wake() or `stop`; returns everything queued by then,
  /// in order (nothing after a time-out, or a wake-up or stop with nothing queued).
  template <typename Duration>
  std::deque<Event> wait(std::stop_token stop, Duration timeout) {
    std::unique_lock lock(m_mutex);
    m_cv.wait_for(lock, stop, timeout, [&] { return !m_events.empty() || m_woken; });
    m_woken = false;
    return std::exchange(m_events, {});
  }

  /// Waits without limit for one event; nullopt once `stop` is requested.
  std::optional<Event> next(std::stop_token stop) {
    std::unique_lock lock(m_mutex);
    if (!m_cv.wait(lock, stop, [&] { return !m_events.empty(); })) return std::nullopt;
    Event event = std::move(m_events.front());
    m_events.pop_front();
    return event;
  }

  /// Puts `events` from index `first` on back at the front of the queue, ahead of what arrived
  /// since they were taken.
  void requeue(std::deque<Event>& events, std::size_t first) {
    std::lock_guard lock(m_mutex);
    m_events.insert(m_events.begin(), std::make_move_iterator(events.begin() + first),
                    std::make_move_iterator(events.end()));
  }

  /// Drops everything queued (after the client is gone, before the queue is).
  void clear() {
    std::lock_guard lock(m_mutex);
    m_events.clear();
  }

 private:
  std::mutex m_mutex;
  std::condition_variable_any m_cv;
  std::deque<Event> m_events;
  bool m_woken = false;
};

/// How a connect attempt ended, as await_connect() saw it.
struct ConnectOutcome {
  enum class State {
    connected,  ///< the attempt's `ok` event arrived
    failed,     ///< its `failed` event arrived, or no answer in time
    stopped,    ///< stop was requested first
  };
  State state = State::stopped;
  std::string failure;  ///< failed: the `failed` event's text (the broker's or Paho's words), or
                        ///< "no answer within mqtt.connect_timeout"
};

/// The wait after `client->connect(options, context_of(generation), listener)` of a client that
/// keeps its state on its own thread (the device's forwarder, the node's events connection).
/// Takes what Paho's threads posted to `queue` with `wait(left)` (the client's own
/// EventQueue::wait, with its clamp; `left` is `give_up - now()`) until the answer to attempt
/// `generation` arrives: an event whose `kind` is `ok` or `failed` (its `text` says why), or
/// `give_up` passes on `now()`'s clock (Paho enforces mqtt.connect_timeout itself, so `give_up`
/// is that plus a margin), or `stop` is requested. Events of another attempt and `lost` events
/// (a lost connection reported late belongs to the previous one) are skipped; what arrived
/// after the answer is put back at the front of `queue`, for the session.
/// `Event` has `kind`, `generation` and `text`; `Now` returns a time point; `Wait` takes the
/// duration left and returns a std::deque<Event> (EventQueue::wait).
template <typename Event, typename Kind, typename TimePoint, typename Now, typename Wait>
ConnectOutcome await_connect(EventQueue<Event>& queue, std::uint64_t generation, Kind ok,
                             Kind failed, Kind lost, TimePoint give_up, const std::stop_token& stop,
                             Now now, Wait wait) {
  while (!stop.stop_requested()) {
    std::deque<Event> events = wait(give_up - now());
    for (std::size_t i = 0; i < events.size(); ++i) {
      const Event& event = events[i];
      if (event.kind == lost || event.generation != generation) continue;
      if (event.kind == ok) {
        queue.requeue(events, i + 1);
        return {ConnectOutcome::State::connected, {}};
      }
      if (event.kind == failed) return {ConnectOutcome::State::failed, event.text};
    }
    if (now() >= give_up)
      return {ConnectOutcome::State::failed, "no answer within mqtt.connect_timeout"};
  }
  return {};
}

/// A Paho action listener that hands each answer to a function, on Paho's thread: the function
/// should only post() to an EventQueue. Must outlive every token it is given to.
class Listener final : public mqtt::iaction_listener {
 public:
  using Callback = std::function<void(const mqtt::token&)>;
  Listener(Callback on_success, Callback on_failure)
      : m_on_success(std::move(on_success)), m_on_failure(std::move(on_failure)) {}
  void on_success(const mqtt::token& token) override { m_on_success(token); }
  void on_failure(const mqtt::token& token) override { m_on_failure(token); }

 private:
  Callback m_on_success;
  Callback m_on_failure;
};

}  // namespace agent::mqtt_connect
