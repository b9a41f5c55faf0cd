// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/mqtt_connect.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/file_io.hpp>

namespace agent {

namespace {

// HOST[:PORT] after a URL's scheme: a name, an IPv4 address or a bracketed IPv6 address, and a
// port from 1 to 65535 (`default_port` when absent and not required).
Result<std::pair<std::string, int>> parse_host_port(std::string_view rest, int default_port,
                                                    bool port_required) {
  auto bad = [](std::string_view why) {
    return fail(ErrorCode::invalid_argument, std::string(why));
  };
  std::string_view host;
  std::string_view after_host;
  bool ipv6 = false;
  if (rest.starts_with('[')) {
    const auto close = rest.find(']');
    if (close == std::string_view::npos) return bad("unterminated IPv6 address");
    host = rest.substr(1, close - 1);
    after_host = rest.substr(close + 1);
    ipv6 = true;
  } else {
    const auto colon = rest.find(':');
    host = rest.substr(0, colon);
    after_host = colon == std::string_view::npos ? std::string_view() : rest.substr(colon);
  }
  if (host.empty()) return bad("no host");
  for (char c : host) {
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    const bool ok =
        ipv6 ? (alnum || c == ':' || c == '.') : (alnum || c == '.' || c == '-' || c == '_');
    if (!ok)
      return bad(
          "the host may hold only letters, digits, '.', '-' and '_' (no user, path or query)");
  }
  std::string host_text = ipv6 ? fmt::format("[{}]", host) : std::string(host);
  if (after_host.empty()) {
    if (port_required) return bad("no port (write HOST:PORT)");
    return std::pair{std::move(host_text), default_port};
  }
  const std::string_view port = after_host.substr(1);
  unsigned value = 0;
  bool digits = after_host[0] == ':' && !port.empty() && port.size() <= 5;
  for (char c : port) {
    digits = digits && c >= '0' && c <= '9';
    if (digits) value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (!digits || value < 1 || value > 65535) return bad("the port is not a number from 1 to 65535");
  return std::pair{std::move(host_text), static_cast<int>(value)};
}

}  // namespace

Result<BrokerUrl> parse_broker_url(std::string_view url) {
  auto bad = [](std::string_view why) {
    return fail(ErrorCode::invalid_argument, std::string(why));
  };
  BrokerUrl out;
  std::string_view rest;
  if (url.starts_with("mqtt://")) {
    rest = url.substr(7);
  } else if (url.starts_with("mqtts://")) {
    rest = url.substr(8);
    out.tls = true;
    out.port = 8883;
  } else {
    return bad("unknown scheme");
  }
  auto parsed = parse_host_port(rest, out.port, /*port_required=*/false);
  if (!parsed) return std::unexpected(parsed.error());
  out.host = std::move(parsed->first);
  out.port = parsed->second;
  return out;
}

std::string ProxyUrl::host_port() const {
  return fmt::format("{}:{}", host, port);
}

Result<ProxyUrl> parse_proxy_url(std::string_view url) {
  if (!url.starts_with("http://"))
    return fail(ErrorCode::invalid_argument,
                "the scheme must be http:// (an HTTP CONNECT proxy such as Tor's HTTPTunnelPort)");
  std::string_view rest = url.substr(7);
  if (rest.ends_with('/')) rest.remove_suffix(1);
  auto parsed = parse_host_port(rest, 0, /*port_required=*/true);
  if (!parsed) return std::unexpected(parsed.error());
  return ProxyUrl{std::move(parsed->first), parsed->second};
}

}  // namespace agent

namespace agent::mqtt_connect {
namespace {

Status check_readable(const std::filesystem::path& path, std::string_view key) {
  std::ifstream in(path);
  if (!in)
    return fail(ErrorCode::invalid_config,
                fmt::format("mqtt.{}: cannot read \"{}\"; check the path and its permissions", key,
                            path.string()));
  return {};
}

}  // namespace

Result<std::string> read_password_file(const std::filesystem::path& path) {
  file_io::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0)
    return fail(ErrorCode::invalid_config,
                fmt::format("mqtt.password_file: cannot read \"{}\" ({}); check the path and its "
                            "permissions",
                            path.string(), file_io::errno_text(errno)));
  // fstat on the open descriptor, not stat on the path, so the file checked is the file read.
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
    return fail(ErrorCode::invalid_config,
                fmt::format("mqtt.password_file: \"{}\" is not a regular file", path.string()));
  if ((st.st_mode & 007) != 0)
    return fail(ErrorCode::invalid_config,
                fmt::format("mqtt.password_file: \"{}\" may be read by every user (mode {:04o}); "
                            "run: chmod 600 {} (or 640 to share it with a group)",
                            path.string(), st.st_mode & 07777, path.string()));
  std::string content;
  char chunk[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return fail(ErrorCode::invalid_config,
                  fmt::format("mqtt.password_file: reading \"{}\" failed: {}", path.string(),
                              file_io::errno_text(errno)));
    if (n == 0) break;
    content.append(chunk, static_cast<std::size_t>(n));
    if (content.find('\n') != std::string::npos) break;
  }
  std::string line = content.substr(0, content.find('\n'));
  while (!line.empty() && line.back() == '\r')
    line.pop_back();
  return line;
}

Result<BrokerAddress> broker_address(std::string_view url, std::string_view source_file) {
  auto parsed = parse_broker_url(url);
  if (!parsed)
    return fail(
        ErrorCode::invalid_config,
        fmt::format("{}: mqtt.url: {}; got \"{}\" (expected mqtt://host[:port] or "
                    "mqtts://host[:port])",
                    source_file.empty() ? "config" : source_file, parsed.error().message, url));
  return BrokerAddress{
      fmt::format("{}://{}:{}", parsed->tls ? "ssl" : "tcp", parsed->host, parsed->port),
      parsed->tls};
}

Status set_credentials(mqtt::connect_options& options, const Credentials& credentials, bool tls,
                       std::string_view protocol) {
  if (!credentials.username.empty()) options.set_user_name(credentials.username);
  if (!credentials.password_file.empty()) {
    if (credentials.username.empty())
      return fail(ErrorCode::invalid_config,
                  fmt::format("mqtt.password_file is set but mqtt.username is empty; {} sends a "
                              "password only with a user name",
                              protocol));
    auto password = read_password_file(credentials.password_file);
    if (!password) return std::unexpected(password.error());
    options.set_password(*password);
  }
  if (!tls) return {};
  mqtt::ssl_options ssl;
  if (!credentials.ca_file.empty()) {
    if (auto ok = check_readable(credentials.ca_file, "ca_file"); !ok) return ok;
    ssl.set_trust_store(credentials.ca_file.string());
  }
  if (credentials.key_file.empty() != credentials.cert_file.empty())
    return fail(ErrorCode::invalid_config,
                "mqtt.cert_file and mqtt.key_file go together for mutual TLS; set both or "
                "neither");
  if (!credentials.cert_file.empty()) {
    if (auto ok = check_readable(credentials.cert_file, "cert_file"); !ok) return ok;
    if (auto ok = check_readable(credentials.key_file, "key_file"); !ok) return ok;
    ssl.set_key_store(credentials.cert_file.string());
    ssl.set_private_key(credentials.key_file.string());
  }
  ssl.set_enable_server_cert_auth(true);
  ssl.set_verify(true);  // the certificate must match the host name
  options.set_ssl(std::move(ssl));
  return {};
}

Status set_proxy(mqtt::connect_options& options, std::string_view proxy) {
  if (proxy.empty()) return {};
  auto parsed = parse_proxy_url(proxy);
  if (!parsed)
    return fail(ErrorCode::invalid_config,
                fmt::format("mqtt.proxy: {}; got \"{}\" (expected http://HOST:PORT)",
                            parsed.error().message, proxy));
  // Without the scheme: Paho strips "http://" from httpProxy but looks for "https://" on
  // httpsProxy (MQTTProtocol_setHTTPProxy), so "host:port" is the form both take alike.
  const std::string host_port = parsed->host_port();
  options.set_http_proxy(host_port);
  options.set_https_proxy(host_port);
  return {};
}

int whole_seconds(std::chrono::milliseconds ms, std::int64_t max) {
  auto s = (ms.count() + 999) / 1000;
  return static_cast<int>(std::clamp<std::int64_t>(s, 1, max));
}

std::chrono::milliseconds reconnect_backoff(std::chrono::milliseconds min,
                                            std::chrono::milliseconds max, std::uint32_t attempt,
                                            std::mt19937_64& rng) {
  const auto low = std::max<std::int64_t>(min.count(), 0);
  const auto cap = std::max<std::int64_t>(max.count(), low);
  std::int64_t high = low;
  for (std::uint32_t i = 0; i < attempt && high < cap; ++i)
    high = std::max<std::int64_t>(high * 2, 1);
  high = std::min(high, cap);
  std::uniform_int_distribution<std::int64_t> pick(low, high);
  return std::chrono::milliseconds(pick(rng));
}

void reconnect_loop(std::stop_token stop, Env& env, Backoff& backoff,
                    const std::function<bool(std::stop_token)>& attempt,
                    const std::function<void(std::chrono::milliseconds)>& waiting) {
  while (!stop.stop_requested()) {
    if (attempt(stop)) backoff.reset();
    if (stop.stop_requested()) break;
    const auto delay = backoff.next();
    if (waiting) waiting(delay);
    if (!env.sleep_until(env.steady_now() + delay, stop)) break;
  }
}

void* context_of(std::uint64_t generation) {
  return reinterpret_cast<void*>(static_cast<std::uintptr_t>(generation));
}

std::uint64_t generation_of(const mqtt::token& token) {
  return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(token.get_user_context()));
}

std::string reason_code_text(int reason_code) {
  return fmt::format("{:#04x} ({})", reason_code, mqtt::exception::reason_code_str(reason_code));
}

std::string paho_error(const mqtt::token& token) {
  const int rc = token.get_return_code();
  const bool connect = token.get_type() == mqtt::token::Type::CONNECT;
  // An MQTT 5 refusal comes as the token's reason code, or (a refused CONNECT) as its return
  // code. Codes 0x80 … 0xA2 are MQTT 5's errors (§2.4); Paho leaves other values (0xFF) in the
  // reason code of an MQTT 3.1.1 answer.
  const auto is_error_reason = [](int code) { return code >= 0x80 && code <= 0xA2; };
  int reason = static_cast<int>(token.get_reason_code());
  if (!is_error_reason(reason) && is_error_reason(rc)) reason = rc;
  if (is_error_reason(reason)) {
    if (!connect)
      return fmt::format("the broker refused: MQTT 5 reason code {}", reason_code_text(reason));
    // MQTT 5 §3.2.2.2: 0x86 Bad User Name or Password, 0x87 Not authorized, 0x8C Bad
    // authentication method are about who the client is; the others about what it asked.
    const bool credentials = reason == 0x86 || reason == 0x87 || reason == 0x8C;
    return fmt::format("{}the broker refused the connection: MQTT 5 reason code {}",
                       credentials ? "not authorised: " : "", reason_code_text(reason));
  }
  // MQTT 3.1.1 CONNACK return codes (§3.2.2.3) come back as the token's return code.
  switch (rc) {
    case 1:
      return "the broker refused the connection: MQTT 3.1.1 return code 1 (unacceptable "
             "protocol version)";
    case 2:
      return "the broker refused the connection: MQTT 3.1.1 return code 2 (identifier "
             "rejected)";
    case 3:
      return "the broker refused the connection: MQTT 3.1.1 return code 3 (server unavailable)";
    case 4:
      return "not authorised: the broker refused the connection: MQTT 3.1.1 return code 4 (bad "
             "user name or password)";
    case 5:
      return "not authorised: the broker refused the connection: MQTT 3.1.1 return code 5 (not "
             "authorized)";
    default:
      break;
  }
  return mqtt::exception::printable_error(rc, mqtt::ReasonCode::SUCCESS,
                                          mqtt::exception::error_str(rc));
}

}  // namespace agent::mqtt_connect
