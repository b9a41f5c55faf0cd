// SPDX-License-Identifier: AGPL-3.0-or-later
// zenflows request signing (valueflows.md §3) and delivery over HTTP (libcurl).
#include <reflow/node/vf_export.hpp>

#include <curl/curl.h>
#include <sodium.h>

#include <map>
#include <memory>
#include <mutex>

#include <fmt/format.h>

namespace ingest {
namespace {

using agent::ErrorCode;
using agent::fail;

// A zenflows answer is one small JSON document; anything this large is not one.
constexpr std::size_t k_max_response_bytes = 4 * 1024 * 1024;

bool is_escapable(unsigned char c) {
  return c == 'a' || c == 'b' || c == 't' || c == 'n' || c == 'v' || c == 'f' || c == 'r';
}

std::size_t collect(char* data, std::size_t size, std::size_t count, void* user) {
  auto* out = static_cast<std::string*>(user);
  std::size_t n = size * count;
  if (out->size() + n > k_max_response_bytes) return 0;  // makes curl fail the transfer
  out->append(data, n);
  return n;
}

struct CurlDeleter {
  void operator()(CURL* curl) const { curl_easy_cleanup(curl); }
};
struct SlistDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};

void init_curl_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string graphql_error_text(const nlohmann::json& errors) {
  std::string text;
  for (const auto& error : errors) {
    std::string message =
        error.is_object() && error.contains("message") && error["message"].is_string()
            ? error["message"].get<std::string>()
            : error.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    text += (text.empty() ? "" : "; ") + message;
  }
  return text;
}

std::string string_at(const nlohmann::json& root, std::initializer_list<const char*> path) {
  const nlohmann::json* node = &root;
  for (const char* key : path) {
    if (!node->is_object()) return {};
    auto it = node->find(key);
    if (it == node->end()) return {};
    node = &*it;
  }
  return node->is_string() ? node->get<std::string>() : std::string();
}

std::string describe(const VfRequest& request) {
  if (request.kind == VfRequestKind::create_process)
    return fmt::format("createProcess for process \"{}\"", request.process);
  return fmt::format("createEconomicEvent for event {} (device {})", request.event_id,
                     request.device);
}

}  // namespace

std::string zenflows_compact_ascii(std::string_view body) {
  std::string out;
  out.reserve(body.size());
  bool escape = false;
  for (char ch : body) {
    const auto c = static_cast<unsigned char>(ch);
    // Zenroom tests `val[i] < 0x21` on a (signed, on x86-64) char: bytes >= 0x80 are negative.
    if (c < 0x21 || c >= 0x80) continue;
    if (escape) {
      escape = false;
      if (is_escapable(c)) continue;
    }
    if (c == '\\') {
      escape = true;
      continue;
    }
    out += ch;
  }
  return out;
}

ZenflowsSignature zenflows_sign(const agent::DeviceKey& key, std::string_view body) {
  const std::string message = zenflows_compact_ascii(body);
  const auto signature = key.sign(message);

  ZenflowsSignature out;
  const std::size_t b64_len =
      sodium_base64_encoded_len(signature.size(), sodium_base64_VARIANT_ORIGINAL);
  out.sign_b64.resize(b64_len);
  sodium_bin2base64(out.sign_b64.data(), b64_len, signature.data(), signature.size(),
                    sodium_base64_VARIANT_ORIGINAL);
  out.sign_b64.resize(b64_len - 1);  // the encoded length counts the terminating NUL

  unsigned char hash[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(hash, reinterpret_cast<const unsigned char*>(message.data()), message.size());
  out.hash_hex.resize(sizeof hash * 2 + 1);
  sodium_bin2hex(out.hash_hex.data(), out.hash_hex.size(), hash, sizeof hash);
  out.hash_hex.resize(sizeof hash * 2);
  return out;
}

Result<nlohmann::json> zenflows_post(const ZenflowsPostOptions& options,
                                     const agent::DeviceKey& key, std::string_view body) {
  init_curl_once();
  std::unique_ptr<CURL, CurlDeleter> curl(curl_easy_init());
  if (!curl) return fail(ErrorCode::internal, "curl_easy_init failed");

  const ZenflowsSignature signature = zenflows_sign(key, body);
  curl_slist* raw = nullptr;
  for (const auto& header :
       {std::string("Content-Type: application/json"), std::string("Accept: application/json"),
        fmt::format("zenflows-user: {}", options.user),
        fmt::format("zenflows-sign: {}", signature.sign_b64),
        fmt::format("zenflows-hash: {}", signature.hash_hex),
        // No "Expect: 100-continue" round trip before the body: one request, one answer.
        std::string("Expect:")}) {
    curl_slist* next = curl_slist_append(raw, header.c_str());
    if (next == nullptr) {
      curl_slist_free_all(raw);
      return fail(ErrorCode::internal, "curl_slist_append failed (out of memory)");
    }
    raw = next;
  }
  std::unique_ptr<curl_slist, SlistDeleter> headers(raw);

  std::string response;
  char error_buffer[CURL_ERROR_SIZE] = {};
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, options.url.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(c, CURLOPT_POST, 1L);
  // The exact bytes that were signed: curl must not touch them.
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &response);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(options.timeout.count()));
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");

  const CURLcode rc = curl_easy_perform(c);
  if (rc != CURLE_OK)
    return fail(
        rc == CURLE_OPERATION_TIMEDOUT ? ErrorCode::timeout : ErrorCode::device_unavailable,
        fmt::format("POST {} failed: {}; check [export] zenflows_url and that the server "
                    "is reachable",
                    options.url, error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(rc)));
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);

  nlohmann::json parsed = nlohmann::json::parse(response, nullptr, false);
  if (!parsed.is_discarded() && parsed.is_object() && parsed.contains("errors") &&
      parsed["errors"].is_array() && !parsed["errors"].empty())
    return fail(ErrorCode::rejected,
                fmt::format("zenflows at {} answered with errors (HTTP {}): {}", options.url,
                            status, graphql_error_text(parsed["errors"])));
  if (status < 200 || status > 299)
    return fail(ErrorCode::rejected, fmt::format("zenflows at {} answered HTTP {}: {}", options.url,
                                                 status, response.substr(0, 300)));
  if (parsed.is_discarded() || !parsed.is_object())
    return fail(ErrorCode::invalid_argument,
                fmt::format("zenflows at {} answered something that is not a JSON object: {}",
                            options.url, response.substr(0, 300)));
  return parsed;
}

agent::Status post_vf_export(const VfExport& export_, const ZenflowsPostOptions& options,
                             const agent::DeviceKey& key,
                             const std::function<void(const VfPosted&)>& on_posted) {
  if (!export_.missing.empty())
    return fail(ErrorCode::invalid_config,
                fmt::format("not sending anything: {} reference(s) have no server id in the "
                            "config, and zenflows would refuse those events after recording "
                            "earlier ones:\n{}",
                            export_.missing.size(), describe_missing(export_.missing)));
  if (options.url.empty())
    return fail(ErrorCode::invalid_config,
                "[export] zenflows_url is not set: say where to send the mutations, e.g. "
                "zenflows_url = \"https://zenflows.example.org/api\"");
  if (options.user.empty())
    return fail(ErrorCode::invalid_config,
                "[export] zenflows_user is not set: the zenflows Person (user name) whose key "
                "signs the requests");

  std::map<std::string, std::string> process_ids;
  std::map<std::string, std::string> resource_ids;
  std::size_t sent = 0;
  for (const VfRequest& original : export_.requests) {
    VfRequest request = original;
    for (const auto& [field, reference] : request.pending) {
      const bool is_process = field == "inputOf" || field == "outputOf";
      const auto& ids = is_process ? process_ids : resource_ids;
      auto it = ids.find(reference);
      if (it == ids.end())
        return fail(ErrorCode::internal,
                    fmt::format("{}: no server id for {} \"{}\" although it was created earlier",
                                describe(request), is_process ? "process" : "resource", reference));
      request.variables["event"][field] = it->second;
    }

    auto answer = zenflows_post(options, key, vf_request_body(request));
    if (!answer)
      return fail(
          answer.error().code,
          fmt::format("{} failed after {} of {} requests were recorded (they stay "
                      "recorded; zenflows has no dedupe, so do not resend them): {}",
                      describe(request), sent, export_.requests.size(), answer.error().message));
    ++sent;
    VfPosted posted;
    posted.request = &original;
    if (request.kind == VfRequestKind::create_process) {
      posted.server_id = string_at(*answer, {"data", "createProcess", "process", "id"});
      if (!posted.server_id.empty()) process_ids[request.creates] = posted.server_id;
    } else {
      posted.server_id = string_at(*answer, {"data", "createEconomicEvent", "economicEvent", "id"});
      if (!request.creates.empty()) {
        posted.created_resource_id = string_at(
            *answer,
            {"data", "createEconomicEvent", "economicEvent", "resourceInventoriedAs", "id"});
        if (!posted.created_resource_id.empty())
          resource_ids[request.creates] = posted.created_resource_id;
      }
    }
    if (posted.server_id.empty())
      return fail(ErrorCode::rejected,
                  fmt::format("{}: the answer has no id ({} of {} requests recorded): {}",
                              describe(request), sent, export_.requests.size(),
                              answer->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                                  .substr(0, 300)));
    on_posted(posted);
  }
  return {};
}

}  // namespace ingest
