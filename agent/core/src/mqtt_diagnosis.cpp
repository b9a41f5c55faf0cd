// SPDX-License-Identifier: AGPL-3.0-or-later
// Why a connect failed, when Paho only says "MQTT error [-1]: Failure": the way to the broker
// walked again, step by step (DNS, TCP, TLS), each step bounded in time and ended by stop.
//
// The TLS step uses mbedTLS, not OpenSSL: Paho C keeps its OpenSSL session (and so the broker's
// certificate) to itself, while mbedTLS is already what reflow_core reads certificates with
// (tls.cpp), so the broker's names come out as tls::CertInfo from the same parser `ca` uses.
#include <reflow/core/mqtt_connect.hpp>

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include <reflow/core/file_io.hpp>
#include <reflow/core/http.hpp>
#include <reflow/core/tls.hpp>

namespace agent::mqtt_connect {
namespace {

using Clock = std::chrono::steady_clock;

// Where the system's CA certificates are (Debian's ca-certificates), as OpenSSL finds them for
// Paho when mqtt.ca_file is not set.
constexpr const char* k_system_ca_bundle = "/etc/ssl/certs/ca-certificates.crt";

// A probe step's outcome: a cause, or nothing to say (go on), or stopped.
enum class Step { go_on, cause, stopped };

std::string errno_text(int error) {
  std::array<char, 128> buffer{};
  // GNU strerror_r returns the text, which need not be in the buffer.
  return ::strerror_r(error, buffer.data(), buffer.size());
}

std::string mbedtls_text(int ret) {
  std::array<char, 160> buffer{};
  mbedtls_strerror(ret, buffer.data(), buffer.size());
  return buffer.data();
}

std::string whole_seconds_text(std::chrono::milliseconds timeout) {
  return fmt::format("{} s", whole_seconds(timeout));
}

// A socket closed with its owner, movable (file_io::Fd is not).
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : m_fd(fd) {}
  ~Socket() {
    if (m_fd >= 0) ::close(m_fd);
  }
  Socket(Socket&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}
  Socket& operator=(Socket&& other) noexcept {
    std::swap(m_fd, other.m_fd);
    return *this;
  }
  int get() const { return m_fd; }

 private:
  int m_fd = -1;
};

// An eventfd that becomes readable when stop is requested, so that poll() waits for the socket
// and for stop at once.
class StopFd {
 public:
  explicit StopFd(std::stop_token stop)
      : m_event(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
        m_callback(std::move(stop), [fd = m_event.get()] {
          if (fd >= 0) {
            const std::uint64_t one = 1;
            [[maybe_unused]] auto n = ::write(fd, &one, sizeof one);
          }
        }) {}
  StopFd(const StopFd&) = delete;
  StopFd& operator=(const StopFd&) = delete;

  // Waits until `fd` has `events`, stop, or `deadline`: the poll() result for `fd` (0 when the
  // deadline passed), or -1 when stopped.
  int wait(int fd, short events, Clock::time_point deadline) const {
    for (;;) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return 0;
      std::array<pollfd, 2> fds{pollfd{fd, events, 0}, pollfd{m_event.get(), POLLIN, 0}};
      const int n = ::poll(fds.data(), m_event.get() >= 0 ? 2 : 1, static_cast<int>(left));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return 0;
      if (m_event.get() >= 0 && fds[1].revents != 0) return -1;
      if (n > 0) return fds[0].revents;
    }
  }

 private:
  // Declared first, so closed last: the callback is unregistered (or has finished running on
  // the thread that requested stop) before its eventfd goes.
  file_io::Fd m_event;
  std::stop_callback<std::function<void()>> m_callback;
};

// getaddrinfo has no time-out of its own: it runs on a thread of its own, which a time-out or
// stop leaves to finish (and free what it found) by itself.
struct Resolution {
  std::mutex mutex;
  std::condition_variable_any done_cv;
  bool done = false;
  int rc = 0;
  addrinfo* result = nullptr;
  ~Resolution() {
    if (result) ::freeaddrinfo(result);
  }
};

struct Resolved {
  Step step = Step::go_on;
  std::string cause;
  std::shared_ptr<Resolution> resolution;
};

Resolved resolve(const std::string& host, int port, Clock::time_point deadline,
                 std::chrono::milliseconds timeout, std::stop_token stop) {
  auto state = std::make_shared<Resolution>();
  try {
    std::thread([state, host, service = std::to_string(port)] {
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* result = nullptr;
      const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &result);
      {
        std::lock_guard lock(state->mutex);
        state->rc = rc;
        state->result = result;
        state->done = true;
      }
      state->done_cv.notify_all();
    }).detach();
  } catch (const std::system_error&) {
    return {Step::stopped, {}, {}};  // no thread to ask with: nothing to say
  }
  std::unique_lock lock(state->mutex);
  if (!state->done_cv.wait_until(lock, stop, deadline, [&] { return state->done; })) {
    if (stop.stop_requested()) return {Step::stopped, {}, {}};
    return {Step::cause,
            fmt::format("DNS: no answer for the host name \"{}\" within {}", host,
                        whole_seconds_text(timeout)),
            {}};
  }
  if (state->rc != 0) {
    const std::string why =
        state->rc == EAI_SYSTEM ? errno_text(errno) : std::string(::gai_strerror(state->rc));
    return {
        Step::cause, fmt::format("DNS: cannot resolve the host name \"{}\" ({})", host, why), {}};
  }
  return {Step::go_on, {}, state};
}

// A non-blocking connect to `address`: the connected socket, or the errno it ended with
// (ETIMEDOUT at the deadline), or stopped.
struct Connected {
  Step step = Step::go_on;
  int error = 0;
  Socket socket;
};

Connected tcp_connect(const addrinfo& address, const StopFd& stop_fd, Clock::time_point deadline) {
  Socket socket(::socket(address.ai_family, address.ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (socket.get() < 0) return {Step::cause, errno, {}};
  if (::connect(socket.get(), address.ai_addr, address.ai_addrlen) == 0)
    return {Step::go_on, 0, std::move(socket)};
  if (errno != EINPROGRESS) return {Step::cause, errno, {}};
  const int ready = stop_fd.wait(socket.get(), POLLOUT, deadline);
  if (ready < 0) return {Step::stopped, 0, {}};
  if (ready == 0) return {Step::cause, ETIMEDOUT, {}};
  int error = 0;
  socklen_t length = sizeof error;
  if (::getsockopt(socket.get(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
  if (error != 0) return {Step::cause, error, {}};
  return {Step::go_on, 0, std::move(socket)};
}

// mbedTLS's I/O on the probe's non-blocking socket.
int send_bytes(void* context, const unsigned char* data, std::size_t size) {
  const int fd = *static_cast<int*>(context);
  const auto n = ::send(fd, data, size, MSG_NOSIGNAL);
  if (n >= 0) return static_cast<int>(n);
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return MBEDTLS_ERR_SSL_WANT_WRITE;
  return MBEDTLS_ERR_NET_SEND_FAILED;
}

int receive_bytes(void* context, unsigned char* data, std::size_t size) {
  const int fd = *static_cast<int*>(context);
  const auto n = ::recv(fd, data, size, 0);
  if (n >= 0) return static_cast<int>(n);
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return MBEDTLS_ERR_SSL_WANT_READ;
  if (errno == ECONNRESET) return MBEDTLS_ERR_NET_CONN_RESET;
  return MBEDTLS_ERR_NET_RECV_FAILED;
}

// The mbedTLS contexts of one handshake, freed together.
struct TlsContexts {
  mbedtls_ssl_context ssl;
  mbedtls_ssl_config config;
  mbedtls_x509_crt ca;
  mbedtls_x509_crt own_cert;
  mbedtls_pk_context own_key;
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  TlsContexts() {
    mbedtls_ssl_init(&ssl);
    mbedtls_ssl_config_init(&config);
    mbedtls_x509_crt_init(&ca);
    mbedtls_x509_crt_init(&own_cert);
    mbedtls_pk_init(&own_key);
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
  }
  ~TlsContexts() {
    mbedtls_ssl_free(&ssl);
    mbedtls_ssl_config_free(&config);
    mbedtls_x509_crt_free(&ca);
    mbedtls_x509_crt_free(&own_cert);
    mbedtls_pk_free(&own_key);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
  }
  TlsContexts(const TlsContexts&) = delete;
  TlsContexts& operator=(const TlsContexts&) = delete;
};

std::string join_names(const tls::CertInfo& info) {
  std::string out;
  for (const auto& name : info.dns_names)
    out += (out.empty() ? "" : ", ") + ("DNS:" + name);
  for (const auto& ip : info.ip_addresses)
    out += (out.empty() ? "" : ", ") + ("IP:" + ip);
  if (out.empty()) out = "no subjectAltName (only " + info.subject + ")";
  return out;
}

// The handshake with the broker as Paho would make it (same CA, same client certificate), but
// with verification left to us, so that a failure can name what it saw.
std::string tls_cause(int fd, const BrokerUrl& url, const std::string& host,
                      const std::string& host_port, const Credentials& credentials,
                      const StopFd& stop_fd, Clock::time_point deadline,
                      std::chrono::milliseconds timeout, Step& step) {
  step = Step::cause;
  TlsContexts tls;
  const auto failed = [&](int ret) {
    return fmt::format("TLS: the handshake with {} failed ({})", host_port, mbedtls_text(ret));
  };
  static constexpr unsigned char k_personalization[] = "reflow mqtt probe";
  if (int ret = mbedtls_ctr_drbg_seed(&tls.drbg, mbedtls_entropy_func, &tls.entropy,
                                      k_personalization, sizeof k_personalization);
      ret != 0)
    return failed(ret);
  if (int ret =
          mbedtls_ssl_config_defaults(&tls.config, MBEDTLS_SSL_IS_CLIENT,
                                      MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
      ret != 0)
    return failed(ret);
  mbedtls_ssl_conf_rng(&tls.config, mbedtls_ctr_drbg_random, &tls.drbg);
  // Verified, but the handshake goes on whatever the result, so that it can be told.
  mbedtls_ssl_conf_authmode(&tls.config, MBEDTLS_SSL_VERIFY_OPTIONAL);
  const std::string ca_path =
      credentials.ca_file.empty() ? k_system_ca_bundle : credentials.ca_file.string();
  // A CA file with one unparsable certificate still has the others (a positive result).
  if (mbedtls_x509_crt_parse_file(&tls.ca, ca_path.c_str()) < 0)
    return fmt::format("TLS: cannot read the CA certificates in \"{}\"", ca_path);
  mbedtls_ssl_conf_ca_chain(&tls.config, &tls.ca, nullptr);
  if (!credentials.cert_file.empty() && !credentials.key_file.empty() &&
      mbedtls_x509_crt_parse_file(&tls.own_cert, credentials.cert_file.c_str()) == 0 &&
      mbedtls_pk_parse_keyfile(&tls.own_key, credentials.key_file.c_str(), nullptr) == 0)
    mbedtls_ssl_conf_own_cert(&tls.config, &tls.own_cert, &tls.own_key);
  if (int ret = mbedtls_ssl_setup(&tls.ssl, &tls.config); ret != 0) return failed(ret);
  in6_addr ignored{};
  const bool is_address = ::inet_pton(AF_INET, host.c_str(), &ignored) == 1 ||
                          ::inet_pton(AF_INET6, host.c_str(), &ignored) == 1;
  // Server Name Indication for a name, as OpenSSL sends it for Paho; mbedTLS's own name check
  // (which knows no IP entries) is not used, see certificate_names_host.
  if (!is_address) mbedtls_ssl_set_hostname(&tls.ssl, host.c_str());
  int socket_fd = fd;
  mbedtls_ssl_set_bio(&tls.ssl, &socket_fd, send_bytes, receive_bytes, nullptr);

  int ret = 0;
  while ((ret = mbedtls_ssl_handshake(&tls.ssl)) == MBEDTLS_ERR_SSL_WANT_READ ||
         ret == MBEDTLS_ERR_SSL_WANT_WRITE) {
    const int ready =
        stop_fd.wait(fd, ret == MBEDTLS_ERR_SSL_WANT_READ ? POLLIN : POLLOUT, deadline);
    if (ready < 0) {
      step = Step::stopped;
      return {};
    }
    if (ready == 0)
      return fmt::format("timed out: the TLS handshake with {} did not finish within {}", host_port,
                         whole_seconds_text(timeout));
  }
  // The broker's certificate, also when the handshake failed after it came (mutual TLS).
  const mbedtls_x509_crt* peer = nullptr;
  std::uint32_t flags = 0;
  if (ret == 0) {
    peer = mbedtls_ssl_get_peer_cert(&tls.ssl);
    flags = mbedtls_ssl_get_verify_result(&tls.ssl);
  } else if (tls.ssl.session_negotiate != nullptr) {
    peer = tls.ssl.session_negotiate->peer_cert;
    flags = tls.ssl.session_negotiate->verify_result;
  }
  if (peer == nullptr) return failed(ret);
  auto info = tls::parse_certificate(
      std::string_view(reinterpret_cast<const char*>(peer->raw.p), peer->raw.len));
  if (!info) return failed(ret);
  if ((flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED) != 0)
    return fmt::format("TLS: the broker's certificate ({}, issued by {}) is not trusted by {}",
                       info->subject, info->issuer,
                       credentials.ca_file.empty()
                           ? std::string("the system's CA certificates (set mqtt.ca_file)")
                           : fmt::format("mqtt.ca_file \"{}\"", credentials.ca_file.string()));
  if ((flags & MBEDTLS_X509_BADCERT_EXPIRED) != 0)
    return fmt::format("TLS: the broker's certificate ({}) has expired", info->subject);
  if ((flags & MBEDTLS_X509_BADCERT_FUTURE) != 0)
    return fmt::format("TLS: the broker's certificate ({}) is not valid yet", info->subject);
  // Without DNS entries OpenSSL (Paho's check) falls back to the subject's CN, so this does too.
  const auto& dns_names = info->dns_names.empty() && !info->common_name.empty()
                              ? std::vector<std::string>{info->common_name}
                              : info->dns_names;
  if (!certificate_names_host(dns_names, info->ip_addresses, url.host))
    return fmt::format(
        "TLS: the broker's certificate names {}, not the URL's host {}; put one of its names in "
        "mqtt.url, or reissue it with `reflow-ingest ca server --host {}`",
        join_names(*info), url.host, host);
  if (ret != 0) return failed(ret);
  step = Step::go_on;
  return {};
}

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) {
    return static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  });
  return out;
}

// An IPv4 or IPv6 address in binary (family, 16 bytes), or nothing.
std::optional<std::pair<int, std::array<unsigned char, 16>>> address_of(std::string_view text) {
  std::string plain(text);
  if (plain.size() >= 2 && plain.front() == '[' && plain.back() == ']')
    plain = plain.substr(1, plain.size() - 2);
  std::array<unsigned char, 16> bytes{};
  if (::inet_pton(AF_INET, plain.c_str(), bytes.data()) == 1) return std::pair{AF_INET, bytes};
  if (::inet_pton(AF_INET6, plain.c_str(), bytes.data()) == 1) return std::pair{AF_INET6, bytes};
  return std::nullopt;
}

// RFC 6125 §6.4.3: "*" only as the whole left-most label, matching exactly one label, and not
// where the rest would be a single label.
bool dns_name_matches(std::string_view pattern_in, std::string_view host_in) {
  const std::string pattern = lower(pattern_in);
  const std::string host = lower(host_in);
  if (!pattern.starts_with("*.")) return pattern == host;
  const std::string_view rest = std::string_view(pattern).substr(1);  // ".example.org"
  if (std::count(rest.begin(), rest.end(), '.') < 2) return false;
  const auto dot = host.find('.');
  return dot != std::string::npos && dot > 0 && std::string_view(host).substr(dot) == rest;
}

}  // namespace

std::string tcp_failure_text(int error, std::string_view host_port,
                             std::chrono::milliseconds timeout) {
  switch (error) {
    case ECONNREFUSED:
      return fmt::format("refused: nothing is listening on {} (TCP connection refused)", host_port);
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EHOSTDOWN:
    case ENETDOWN:
      return fmt::format("unreachable: no route to {} ({})", host_port, errno_text(error));
    case ETIMEDOUT:
      return fmt::format(
          "timed out: no answer from {} within {} (a firewall dropping packets, or the host is "
          "down)",
          host_port, whole_seconds_text(timeout));
    default:
      return fmt::format("cannot connect to {} ({})", host_port, errno_text(error));
  }
}

bool certificate_names_host(const std::vector<std::string>& dns_names,
                            const std::vector<std::string>& ip_addresses, std::string_view host) {
  if (const auto address = address_of(host)) {
    return std::any_of(ip_addresses.begin(), ip_addresses.end(),
                       [&](const std::string& ip) { return address_of(ip) == address; });
  }
  return std::any_of(dns_names.begin(), dns_names.end(),
                     [&](const std::string& name) { return dns_name_matches(name, host); });
}

std::string connect_failure_cause(std::string_view url_text, const Credentials& credentials,
                                  std::string_view paho_text, std::chrono::milliseconds timeout,
                                  std::stop_token stop, std::string_view proxy_text) {
  const std::string as_is(paho_text);
  // The broker answered (paho_error named its CONNACK code): that is the cause.
  if (as_is.find("the broker refused") != std::string::npos) return as_is;
  auto url = parse_broker_url(url_text);
  if (!url || stop.stop_requested()) return as_is;
  if (!proxy_text.empty()) {
    // Through a proxy the broker's host may only resolve at the proxy's end (an onion name):
    // the way to ask about is the proxy's.
    auto proxy = parse_proxy_url(proxy_text);
    if (!proxy) return as_is;
    const std::string via = proxy->host_port();
    const std::string target = fmt::format("{}:{}", url->host, url->port);
    const auto deadline = Clock::now() + timeout;
    std::string tls_text;
    Step tls_step = Step::go_on;
    // Through an open tunnel, the same TLS handshake as Paho's: a certificate without the onion
    // name is the likely mistake, and it is only seen from inside.
    const auto try_tls = [&](int socket) {
      if (!url->tls) return;
      const StopFd stop_fd(stop);
      const std::string host =
          url->host.starts_with('[') ? url->host.substr(1, url->host.size() - 2) : url->host;
      tls_text =
          tls_cause(socket, *url, host, target, credentials, stop_fd, deadline, timeout, tls_step);
    };
    auto status = proxy_connect_status(via, target, timeout, stop, try_tls);
    if (!status) {
      if (status.error().code == ErrorCode::shutting_down) return as_is;
      if (status.error().code == ErrorCode::timeout)
        return fmt::format(
            "proxy {}: no answer within {} ({}); is the proxy (Tor's "
            "HTTPTunnelPort) running and not overloaded?",
            via, whole_seconds_text(timeout), status.error().message);
      return fmt::format(
          "proxy {}: cannot reach it ({}); is the proxy (Tor's HTTPTunnelPort) "
          "running? (mqtt.proxy)",
          via, status.error().message);
    }
    if (*status < 200 || *status > 299)
      return fmt::format(
          "proxy {} refused CONNECT to {} (HTTP {}); see the proxy's log (Tor: "
          "is the onion service up and this device authorised?)",
          via, target, *status);
    if (tls_step == Step::stopped) return as_is;
    if (tls_step == Step::cause) return fmt::format("{} (through proxy {})", tls_text, via);
    return fmt::format("{} (proxy {} opens a tunnel to {}{}; see the broker's log)", as_is, via,
                       target, url->tls ? " and TLS works through it" : "");
  }
  const std::string host = url->host.starts_with('[')
                               ? url->host.substr(1, url->host.size() - 2)
                               : url->host;  // getaddrinfo takes IPv6 without brackets
  const std::string host_port = fmt::format("{}:{}", url->host, url->port);
  const auto deadline = Clock::now() + timeout;

  auto resolved = resolve(host, url->port, deadline, timeout, stop);
  if (resolved.step == Step::stopped) return as_is;
  if (resolved.step == Step::cause) return resolved.cause;

  const StopFd stop_fd(stop);
  // Like Paho, the first address decides what is said; a later one that connects is probed on.
  std::optional<int> first_error;
  Socket socket;
  for (const addrinfo* address = resolved.resolution->result; address != nullptr;
       address = address->ai_next) {
    auto connected = tcp_connect(*address, stop_fd, deadline);
    if (connected.step == Step::stopped) return as_is;
    if (connected.step == Step::go_on) {
      socket = std::move(connected.socket);
      break;
    }
    if (!first_error) first_error = connected.error;
    if (Clock::now() >= deadline) break;
  }
  if (socket.get() < 0)
    return tcp_failure_text(first_error.value_or(ETIMEDOUT), host_port, timeout);
  if (url->tls) {
    Step step = Step::go_on;
    auto cause = tls_cause(socket.get(), *url, host, host_port, credentials, stop_fd, deadline,
                           timeout, step);
    if (step == Step::stopped) return as_is;
    if (step == Step::cause) return cause;
  }
  return fmt::format("{} ({} accepts TCP{}; see the broker's log)", as_is, host_port,
                     url->tls ? " and TLS" : "");
}

}  // namespace agent::mqtt_connect
