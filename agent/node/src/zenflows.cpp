// SPDX-License-Identifier: AGPL-3.0-or-later
// zenflows request signing (docs/reference/valueflows.md §3) and delivery over HTTP (core's
// HttpClient).
#include <reflow/node/vf_export.hpp>

#include <sodium.h>

#include <map>
#include <optional>

#include <fmt/format.h>

#include <reflow/core/http.hpp>
#include <reflow/core/json_strict.hpp>

namespace ingest {
namespace {

using agent::ErrorCode;
using agent::fail;
using agent::string_at;

bool is_escapable(unsigned char c) {
  return c == 'a' || c == 'b' || c == 't' || c == 'n' || c == 'v' || c == 'f' || c == 'r';
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

namespace {

// One answer of the server, judged: `json` is set when it is a JSON object without GraphQL
// errors and a 2xx status; otherwise `error` says why, and `refused` whether zenflows itself
// answered with a GraphQL `errors` array (it then ran nothing of the request: its mutations are
// one database transaction each, e.g. EconomicEvent.Domain.create's Ecto.Multi).
struct Answer {
  std::optional<nlohmann::json> json;
  agent::Error error;
  bool refused = false;
};

Result<Answer> exchange(const ZenflowsPostOptions& options, const agent::DeviceKey& key,
                        std::string_view body) {
  const ZenflowsSignature signature = zenflows_sign(key, body);
  agent::HttpRequest request;
  request.method = "POST";
  request.url = options.url;
  request.headers = {{"Content-Type", "application/json"},
                     {"Accept", "application/json"},
                     {"zenflows-user", options.user},
                     {"zenflows-sign", signature.sign_b64},
                     {"zenflows-hash", signature.hash_hex},
                     // No "Expect: 100-continue" round trip before the body: one request, one
                     // answer. (An empty value makes libcurl drop its own header.)
                     {"Expect", ""}};
  request.body = std::string(body);  // the exact bytes that were signed
  request.timeout = options.timeout;
  request.proxy = options.proxy;
  agent::HttpClient http;
  auto answer = http.perform(request);
  if (!answer)
    return fail(
        answer.error().code,
        fmt::format("{} (the zenflows server of [export] zenflows_url)", answer.error().message));
  const long status = answer->status;
  const std::string& response = answer->body;

  Answer out;
  nlohmann::json parsed = nlohmann::json::parse(response, nullptr, false);
  if (!parsed.is_discarded() && parsed.is_object() && parsed.contains("errors") &&
      parsed["errors"].is_array() && !parsed["errors"].empty()) {
    out.refused = true;
    out.error = {ErrorCode::rejected,
                 fmt::format("zenflows at {} answered with errors (HTTP {}): {}", options.url,
                             status, graphql_error_text(parsed["errors"]))};
  } else if (status < 200 || status > 299) {
    out.error = {ErrorCode::rejected, fmt::format("zenflows at {} answered HTTP {}: {}",
                                                  options.url, status, response.substr(0, 300))};
  } else if (parsed.is_discarded() || !parsed.is_object()) {
    out.error = {ErrorCode::invalid_argument,
                 fmt::format("zenflows at {} answered something that is not a JSON object: {}",
                             options.url, response.substr(0, 300))};
  } else {
    out.json = std::move(parsed);
  }
  return out;
}

}  // namespace

Result<nlohmann::json> zenflows_post(const ZenflowsPostOptions& options,
                                     const agent::DeviceKey& key, std::string_view body) {
  auto answer = exchange(options, key, body);
  if (!answer) return std::unexpected(answer.error());
  if (!answer->json) return std::unexpected(answer->error);
  return std::move(*answer->json);
}

agent::Status post_vf_export(const VfExport& export_, const ZenflowsPostOptions& options,
                             const agent::DeviceKey& key, const VfPostHooks& hooks) {
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
  const std::size_t total = export_.requests.size();
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
    if (hooks.before_send) {
      if (auto s = hooks.before_send(request); !s)
        return fail(s.error().code, fmt::format("{}: not sent ({} of {} requests recorded): {}",
                                                describe(request), sent, total, s.error().message));
    }

    auto answer = exchange(options, key, vf_request_body(request));
    const agent::Error* failure = nullptr;
    if (!answer)
      failure = &answer.error();
    else if (!answer->json)
      failure = &answer->error;
    if (failure) {
      if (answer && answer->refused && hooks.on_refused) {
        if (auto s = hooks.on_refused(request); !s) return s;
      }
      return fail(failure->code, fmt::format("{} failed after {} of {} requests were recorded: {}",
                                             describe(request), sent, total, failure->message));
    }
    const nlohmann::json& json = *answer->json;
    ++sent;
    VfPosted posted;
    posted.request = &original;
    if (request.kind == VfRequestKind::create_process) {
      posted.server_id = string_at(json, {"data", "createProcess", "process", "id"});
      if (!posted.server_id.empty()) process_ids[request.creates] = posted.server_id;
    } else {
      posted.server_id = string_at(json, {"data", "createEconomicEvent", "economicEvent", "id"});
      if (!request.creates.empty()) {
        posted.created_resource_id = string_at(
            json, {"data", "createEconomicEvent", "economicEvent", "resourceInventoriedAs", "id"});
        if (!posted.created_resource_id.empty())
          resource_ids[request.creates] = posted.created_resource_id;
      }
    }
    if (posted.server_id.empty())
      return fail(
          ErrorCode::rejected,
          fmt::format(
              "{}: the answer has no id ({} of {} requests recorded): {}", describe(request), sent,
              total,
              json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).substr(0, 300)));
    if (hooks.on_posted) {
      if (auto s = hooks.on_posted(posted); !s) return s;
    }
  }
  return {};
}

agent::Status post_vf_export(const VfExport& export_, const ZenflowsPostOptions& options,
                             const agent::DeviceKey& key,
                             const std::function<void(const VfPosted&)>& on_posted) {
  VfPostHooks hooks;
  hooks.on_posted = [&](const VfPosted& posted) -> agent::Status {
    on_posted(posted);
    return {};
  };
  return post_vf_export(export_, options, key, hooks);
}

}  // namespace ingest
