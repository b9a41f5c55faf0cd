// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/http.hpp>

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string_view>

#include <fmt/format.h>

namespace agent {
namespace {

constexpr std::size_t k_max_body_bytes = 8 * 1024 * 1024;

// curl_global_init is not thread-safe before libcurl 7.84 (Debian 12 ships 7.88, but the agent
// may be built elsewhere): do it once, whichever driver thread gets here first.
void global_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct Receiver {
  std::string body;
  bool too_large = false;
};

std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
  auto* receiver = static_cast<Receiver*>(user);
  const std::size_t bytes = size * count;
  if (receiver->body.size() + bytes > k_max_body_bytes) {
    receiver->too_large = true;
    return 0;  // makes libcurl abort the transfer with CURLE_WRITE_ERROR
  }
  receiver->body.append(data, bytes);
  return bytes;
}

bool valid_method(std::string_view method) {
  return !method.empty() && std::all_of(method.begin(), method.end(),
                                        [](unsigned char c) { return std::isupper(c) != 0; });
}

bool valid_url(std::string_view url) {
  return url.starts_with("http://") || url.starts_with("https://");
}

struct HeaderList {
  curl_slist* list = nullptr;
  ~HeaderList() { curl_slist_free_all(list); }
};

}  // namespace

struct HttpClient::Impl {
  CURL* curl = nullptr;
  // Lives with the handle: libcurl keeps the pointer until the next reset.
  char error_text[CURL_ERROR_SIZE] = {};
};

HttpClient::HttpClient() : m_impl(std::make_unique<Impl>()) {
  global_init_once();
  m_impl->curl = curl_easy_init();
}

HttpClient::~HttpClient() {
  if (m_impl->curl) curl_easy_cleanup(m_impl->curl);
}

Result<HttpResponse> HttpClient::perform(const HttpRequest& request) {
  if (!valid_url(request.url))
    return fail(
        ErrorCode::invalid_argument,
        fmt::format("HTTP request: URL \"{}\" must start with http:// or https://", request.url));
  if (!valid_method(request.method))
    return fail(ErrorCode::invalid_argument,
                fmt::format("HTTP request to {}: method \"{}\" is not an upper-case HTTP method "
                            "(GET, PUT, POST)",
                            request.url, request.method));
  CURL* curl = m_impl->curl;
  if (!curl) return fail(ErrorCode::internal, "HTTP client: libcurl could not make an easy handle");

  // Reset clears the previous request's options but keeps the live connection and DNS cache.
  curl_easy_reset(curl);
  Receiver receiver;
  HeaderList headers;
  for (const auto& [name, value] : request.headers)
    headers.list = curl_slist_append(headers.list, fmt::format("{}: {}", name, value).c_str());
  char* error_text = m_impl->error_text;
  error_text[0] = '\0';

  curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  // Signals are how libcurl times out DNS otherwise; they are unsafe in a multi-threaded daemon.
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  // 0 would mean "no timeout" to libcurl.
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(std::max<std::int64_t>(request.timeout.count(), 1)));
  // Refuses a declared oversized body before reading it; on_body catches undeclared ones.
  curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(k_max_body_bytes));
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_text);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &receiver);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers.list);
  // "" is no proxy, not even one from the environment.
  curl_easy_setopt(curl, CURLOPT_PROXY, request.proxy.c_str());
  if (request.method == "GET") {
    curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }
  if (request.method != "GET" || !request.body.empty()) {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, request.body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(request.body.size()));
  }

  const CURLcode code = curl_easy_perform(curl);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, nullptr);  // the list is freed on return
  const std::string reason = error_text[0] != '\0' ? error_text : curl_easy_strerror(code);
  if (code != CURLE_OK) {
    if (receiver.too_large || code == CURLE_FILESIZE_EXCEEDED)
      return fail(ErrorCode::io,
                  fmt::format("HTTP {} {}: the response is larger than {} MiB; refused",
                              request.method, request.url, k_max_body_bytes / (1024 * 1024)));
    switch (code) {
      case CURLE_URL_MALFORMAT:
      case CURLE_UNSUPPORTED_PROTOCOL:
        return fail(ErrorCode::invalid_argument, fmt::format("HTTP {} {}: malformed URL: {}",
                                                             request.method, request.url, reason));
      case CURLE_OPERATION_TIMEDOUT:
        return fail(ErrorCode::timeout,
                    fmt::format("HTTP {} {}: no complete answer within {} ms ({}); check that the "
                                "device is on and not overloaded",
                                request.method, request.url, request.timeout.count(), reason));
      default:
        return fail(ErrorCode::device_unavailable,
                    fmt::format("HTTP {} {}: {}; check the address and that the device is on",
                                request.method, request.url, reason));
    }
  }

  HttpResponse response;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  char* content_type = nullptr;
  curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &content_type);
  if (content_type) response.content_type = content_type;
  response.body = std::move(receiver.body);
  return response;
}

namespace {

int stop_on_request(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<const std::stop_token*>(user)->stop_requested() ? 1 : 0;
}

struct EasyHandle {
  CURL* curl = curl_easy_init();
  ~EasyHandle() {
    if (curl) curl_easy_cleanup(curl);
  }
  EasyHandle() = default;
  EasyHandle(const EasyHandle&) = delete;
  EasyHandle& operator=(const EasyHandle&) = delete;
};

}  // namespace

std::string url_escape(std::string_view text) {
  if (text.size() > static_cast<std::size_t>(std::numeric_limits<int>::max()))
    throw std::length_error("url_escape: text over 2 GiB");
  // A null handle is allowed since libcurl 7.82 (Debian 12: 7.88).
  std::unique_ptr<char, void (*)(void*)> escaped(
      curl_easy_escape(nullptr, text.data(), static_cast<int>(text.size())), curl_free);
  if (!escaped) throw std::bad_alloc();
  return std::string(escaped.get());
}

Result<long> proxy_connect_status(std::string_view proxy_host_port,
                                  std::string_view target_host_port,
                                  std::chrono::milliseconds timeout, std::stop_token stop,
                                  const std::function<void(int socket)>& inside) {
  global_init_once();
  EasyHandle handle;
  CURL* curl = handle.curl;
  if (!curl) return fail(ErrorCode::internal, "HTTP client: libcurl could not make an easy handle");
  char error_text[CURL_ERROR_SIZE] = {};
  const std::string proxy = fmt::format("http://{}", proxy_host_port);
  // The target's scheme only names the tunnel's far end to libcurl: CONNECT_ONLY stops once the
  // tunnel is open, before anything is sent through it.
  const std::string url = fmt::format("http://{}/", target_host_port);
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROXY, proxy.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPPROXYTUNNEL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECT_ONLY, 1L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(std::max<std::int64_t>(timeout.count(), 1)));
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_text);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, stop_on_request);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &stop);
  const CURLcode code = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_HTTP_CONNECTCODE, &status);
  if (code == CURLE_OK && inside && (status == 0 || (status >= 200 && status <= 299))) {
    curl_socket_t socket = CURL_SOCKET_BAD;
    if (curl_easy_getinfo(curl, CURLINFO_ACTIVESOCKET, &socket) == CURLE_OK &&
        socket != CURL_SOCKET_BAD)
      inside(static_cast<int>(socket));
  }
  if (status != 0) return status;  // the proxy answered the CONNECT, whatever libcurl made of it
  const std::string reason = error_text[0] != '\0' ? error_text : curl_easy_strerror(code);
  switch (code) {
    case CURLE_OK:
      return 200L;
    case CURLE_ABORTED_BY_CALLBACK:
      return fail(ErrorCode::shutting_down, "stopped");
    case CURLE_OPERATION_TIMEDOUT:
      return fail(ErrorCode::timeout, reason);
    default:
      return fail(ErrorCode::device_unavailable, reason);
  }
}

}  // namespace agent
