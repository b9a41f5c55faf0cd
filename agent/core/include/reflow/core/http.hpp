// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <reflow/core/result.hpp>

namespace agent {

/// One HTTP request (drivers talk to Moonraker, OctoPrint, Spoolman, Shelly … with it).
struct HttpRequest {
  std::string method = "GET";  ///< GET, PUT, POST
  std::string url;             ///< http:// or https://, with query string already encoded
  std::vector<std::pair<std::string, std::string>> headers;  ///< e.g. {"X-Api-Key", "…"}
  std::string body;  ///< sent as is; set a Content-Type header for JSON
  std::chrono::milliseconds timeout{std::chrono::seconds(10)};  ///< whole request, connect included
  /// The HTTP proxy for this request (libcurl's CURLOPT_PROXY, e.g. "http://127.0.0.1:9080",
  /// Tor's HTTPTunnelPort); https:// URLs go through it with CONNECT. Empty: no proxy at all,
  /// and the http_proxy/https_proxy environment variables are ignored too (drivers talk to
  /// machines on the local network; only the node's export sets one, `[export] proxy`).
  std::string proxy;
};

/// What came back. Any HTTP status is a response, not an error: 401/403/500 are for the caller to
/// judge (and to name in its log).
struct HttpResponse {
  long status = 0;  ///< 200, 404 …
  std::string body;
  std::string content_type;  ///< "" when the server sent none
};

/// A small HTTP/1.1 client on libcurl (the HTTP library Debian packages; no hand-written HTTP).
/// Keeps one connection alive between requests to the same host. Not thread-safe: one per driver
/// instance (or per thread). Responses larger than 8 MiB are refused.
class HttpClient {
 public:
  HttpClient();
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  /// Performs `request`. Errors: invalid_argument (malformed URL or method), device_unavailable
  /// (DNS, connection refused or reset, TLS failure — the message names the URL and libcurl's
  /// reason), timeout (no complete answer within request.timeout), io (response too large).
  Result<HttpResponse> perform(const HttpRequest& request);

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

/// `text` percent-encoded for a URL's query value or path segment (RFC 3986 §2.1): every byte but
/// the unreserved A-Z a-z 0-9 - . _ ~ becomes %XX (upper-case hex), with libcurl's
/// curl_easy_escape. Throws std::bad_alloc when libcurl cannot allocate, std::length_error for
/// text over 2 GiB (libcurl takes an int length).
std::string url_escape(std::string_view text);

/// Asks the HTTP proxy at `proxy_host_port` ("host:port") for a CONNECT tunnel (RFC 9110
/// §9.3.6) to `target_host_port` ("host:port") with libcurl and closes it: the proxy's HTTP
/// status, 200 when the tunnel opened, else the refusal (403 …). When it opened and `inside` is
/// given, `inside` is called with the tunnel's socket (non-blocking, owned by libcurl: not to be
/// closed) before it is closed, e.g. to try TLS with the far end. Used to say why an MQTT connect
/// through mqtt.proxy failed. Ends early when `stop` is
/// requested. Errors: device_unavailable (the proxy's name does not resolve, nothing listens,
/// the connection was reset — the message is libcurl's reason), timeout (no answer within
/// `timeout`), shutting_down (stopped).
Result<long> proxy_connect_status(std::string_view proxy_host_port,
                                  std::string_view target_host_port,
                                  std::chrono::milliseconds timeout, std::stop_token stop,
                                  const std::function<void(int socket)>& inside = {});

}  // namespace agent
