// SPDX-License-Identifier: AGPL-3.0-or-later
// `reflow-ingest serve`: the HTTP side of the web page (web.hpp). cpp-httplib parses HTTP; this
// file routes, checks the session and renders the pages. Every dynamic string goes through
// html_escape; the only asset (the style sheet) is a string in this binary.
#include <reflow/node/web.hpp>

#include <sodium.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <reflow/core/units.hpp>
#include <reflow/node/passport_graph.hpp>
#include <reflow/node/query.hpp>

namespace ingest::web {
namespace {

using agent::ErrorCode;
using agent::fail;

constexpr std::string_view k_cookie = "reflow_session";
constexpr auto k_session_lifetime = std::chrono::hours(12);
constexpr std::size_t k_max_param_bytes = 256;  // every filter fits; more is refused (400)
constexpr std::size_t k_max_params = 16;
constexpr std::size_t k_max_body_bytes = 16 * 1024;  // the login form
constexpr int k_page_size = 50;
constexpr std::size_t k_rejections_shown = 200;

// The one asset, served at /assets/style.css. Assets are looked up by their exact path in
// k_assets, so no request can name a file outside it (no file system access at all).
constexpr std::string_view k_style = R"css(
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#234;color:#fff;padding:.5em 1em;display:flex;gap:1.5em;align-items:center}
header a{color:#fff;text-decoration:none}header form{margin-left:auto}
main{padding:1em}table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
tr.trouble td{background:#fee}pre{white-space:pre-wrap;word-break:break-all;background:#eee;
padding:.5em}form.filters{display:flex;flex-wrap:wrap;gap:.5em;margin-bottom:1em}
.error{color:#a00}.graph{overflow:auto;background:#fff;border:1px solid #ddd;margin:1em 0}
)css";

struct Asset {
  std::string_view type;
  std::string_view body;
};
const std::map<std::string, Asset, std::less<>> k_assets = {
    {"/assets/style.css", {"text/css; charset=utf-8", k_style}},
};

struct Session {
  std::string user;
  std::chrono::steady_clock::time_point expires;
};

std::string random_session_id() {
  unsigned char bytes[32];  // 256 bits
  randombytes_buf(bytes, sizeof bytes);
  char hex[sizeof bytes * 2 + 1];
  sodium_bin2hex(hex, sizeof hex, bytes, sizeof bytes);
  return hex;
}

std::string time_text(std::int64_t unix_ms) {
  return unix_ms > 0 ? agent::format_rfc3339_ms(unix_ms) : "-";
}

// A payload field as text: a string as it is, anything else as its JSON.
std::string field_text(const nlohmann::json& payload, std::string_view key) {
  if (!payload.is_object()) return {};
  const auto it = payload.find(key);
  if (it == payload.end() || it->is_null()) return {};
  if (it->is_string()) return it->get<std::string>();
  return it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string quantity_text(const nlohmann::json& payload) {
  if (!payload.is_object()) return {};
  const auto it = payload.find("resourceQuantity");
  if (it == payload.end() || !it->is_object()) return {};
  return fmt::format("{} {}", field_text(*it, "hasNumericalValue"), field_text(*it, "hasUnit"));
}

// `?k=v&…` of the non-empty `params`, each encoded.
std::string query_string(const std::vector<std::pair<std::string, std::string>>& params) {
  std::string out;
  for (const auto& [key, value] : params) {
    if (value.empty()) continue;
    out += out.empty() ? "?" : "&";
    out += key + "=" + url_encode(value);
  }
  return out;
}

// A link to the passport of `resource` (HTML), or "" for no resource.
std::string passport_link(std::string_view resource) {
  if (resource.empty()) return {};
  return fmt::format("<a href=\"/passport?resource={}\">{}</a>", html_escape(url_encode(resource)),
                     html_escape(resource));
}

// The event's resource and, for a transfer or move, the one it went to, each a passport link.
std::string resource_links(const nlohmann::json& payload) {
  std::string out = passport_link(field_text(payload, "resourceInventoriedAs"));
  if (const auto to = field_text(payload, "toResourceInventoriedAs"); !to.empty())
    out += " → " + passport_link(to);
  return out;
}

bool has_trouble(const DeviceStats& d) {
  return d.revoked || !d.registered || !d.chain_intact || d.gaps > 0 || !d.rejections.empty() ||
         d.rejections_not_kept > 0;
}

std::string reasons_text(const std::map<std::string, std::int64_t>& reasons) {
  std::string out;
  for (const auto& [reason, n] : reasons)
    out += fmt::format("{}{}={}", out.empty() ? "" : ", ", reason, n);
  return out.empty() ? "-" : out;
}

// The events page's filters, from the query string.
struct EventQuery {
  std::string device, action, resource, process, member, since, until;
  EventFilter filter;  // what the store filters; resource, process and member are the payload's

  // Whether the filters of the payload's fields hold: resource (resourceInventoriedAs or
  // toResourceInventoriedAs), process (inputOf or outputOf), member (provider or receiver).
  bool payload_matches(const nlohmann::json& payload) const {
    const auto either = [&](const std::string& wanted, const char* a, const char* b) {
      return wanted.empty() || field_text(payload, a) == wanted || field_text(payload, b) == wanted;
    };
    return either(resource, "resourceInventoriedAs", "toResourceInventoriedAs") &&
           either(process, "inputOf", "outputOf") && either(member, "provider", "receiver");
  }
  bool filters_payload() const { return !resource.empty() || !process.empty() || !member.empty(); }
};

}  // namespace

struct Server::Impl {
  Store& store;
  agent::Env& env;
  ServerOptions options;
  LoginLimiter limiter;
  std::string dummy_hash;  // verify_login's, for names that are no account
  httplib::Server http;
  std::thread thread;
  std::mutex sessions_mutex;
  std::unordered_map<std::string, Session> sessions;

  Impl(Store& s, agent::Env& e, ServerOptions o)
      : store(s), env(e), options(std::move(o)), limiter(e, {}) {
    // A hash of a secret nobody knows (not even this process, after this line).
    if (auto hash = hash_password(random_session_id())) dummy_hash = std::move(*hash);
  }

  // --- sessions ---

  std::optional<std::string> session_user(const httplib::Request& request) {
    const auto id = cookie_value(request.get_header_value("Cookie"), k_cookie);
    if (!id) return std::nullopt;
    std::lock_guard lock(sessions_mutex);
    const auto it = sessions.find(*id);
    if (it == sessions.end()) return std::nullopt;
    if (it->second.expires < env.steady_now()) {
      sessions.erase(it);
      return std::nullopt;
    }
    return it->second.user;
  }

  std::string cookie_header(std::string_view id, bool clear) const {
    return fmt::format("{}={}; Path=/; HttpOnly; SameSite=Strict{}{}", k_cookie, id,
                       clear ? "; Max-Age=0" : "", options.secure_cookies ? "; Secure" : "");
  }

  // --- rendering ---

  static std::string page(std::string_view title, std::string_view body,
                          const std::optional<std::string>& user) {
    std::string nav;
    if (user)
      nav = fmt::format(
          "<a href=\"/devices\">Devices</a><a href=\"/events\">Events</a>"
          "<a href=\"/rejections\">Rejections</a><a href=\"/metrics\">Metrics</a>"
          "<form method=\"post\" action=\"/logout\">{} <button>Log out</button></form>",
          html_escape(*user));
    return fmt::format(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>{} · reflow node</title><link rel=\"stylesheet\" href=\"/assets/style.css\">"
        "</head><body><header><strong>reflow node</strong>{}</header><main><h1>{}</h1>{}"
        "</main></body></html>\n",
        html_escape(title), nav, html_escape(title), body);
  }

  static void html(httplib::Response& response, const std::string& text, int status = 200) {
    response.status = status;
    response.set_content(text, "text/html; charset=utf-8");
  }

  static void error_page(httplib::Response& response, int status, std::string_view message,
                         const std::optional<std::string>& user) {
    html(response,
         page("Error", fmt::format("<p class=\"error\">{}</p>", html_escape(message)), user),
         status);
  }

  static std::string login_form(std::string_view message) {
    return page("Log in",
                fmt::format("{}<form method=\"post\" action=\"/login\"><p><label>User "
                            "<input name=\"user\" autocomplete=\"username\" required></label></p>"
                            "<p><label>Password <input name=\"password\" type=\"password\" "
                            "autocomplete=\"current-password\" required></label></p>"
                            "<p><button>Log in</button></p></form>",
                            message.empty()
                                ? std::string()
                                : fmt::format("<p class=\"error\">{}</p>", html_escape(message))),
                std::nullopt);
  }

  // --- the request's checks, before any route ---

  httplib::Server::HandlerResponse pre_route(const httplib::Request& request,
                                             httplib::Response& response) {
    if (request.params.size() > k_max_params) {
      error_page(response, 400, fmt::format("at most {} query parameters", k_max_params),
                 std::nullopt);
      return httplib::Server::HandlerResponse::Handled;
    }
    for (const auto& [key, value] : request.params) {
      if (key.size() + value.size() > k_max_param_bytes) {
        error_page(response, 400,
                   fmt::format("query parameter {} is longer than {} bytes", key.substr(0, 32),
                               k_max_param_bytes),
                   std::nullopt);
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    if (request.path == "/login" || request.path.starts_with("/assets/"))
      return httplib::Server::HandlerResponse::Unhandled;
    if (session_user(request)) return httplib::Server::HandlerResponse::Unhandled;
    // Without a session: 401 everywhere; HTML pages carry the login form.
    if (request.path == "/metrics" || request.path.ends_with(".csv") ||
        request.path.ends_with(".jsonl")) {
      response.status = 401;
      response.set_content("401: log in first (POST /login)\n", "text/plain; charset=utf-8");
    } else {
      html(response, login_form(""), 401);
    }
    return httplib::Server::HandlerResponse::Handled;
  }

  // --- routes ---

  void login(const httplib::Request& request, httplib::Response& response) {
    const std::string user = request.get_param_value("user");
    const std::string password = request.get_param_value("password");
    auto users = UserFile(options.users_file).load();
    if (!users) {
      error_page(response, 500, "the accounts file cannot be read; see the server's log",
                 std::nullopt);
      return;
    }
    const std::string& address = request.remote_addr;
    if (const auto wait = limiter.retry_after(address, user)) {
      response.set_header("Retry-After", std::to_string(wait->count()));
      html(response,
           login_form(fmt::format("too many failed logins; try again in {} s", wait->count())),
           429);
      return;
    }
    if (!verify_login(*users, user, password, dummy_hash)) {
      limiter.failed(address, user);
      html(response, login_form("wrong user name or password"), 401);
      return;
    }
    limiter.succeeded(address, user);
    const std::string id = random_session_id();
    {
      std::lock_guard lock(sessions_mutex);
      sessions[id] = {user, env.steady_now() + k_session_lifetime};
    }
    response.set_header("Set-Cookie", cookie_header(id, false));
    response.set_redirect("/devices", 303);
  }

  void logout(const httplib::Request& request, httplib::Response& response) {
    if (const auto id = cookie_value(request.get_header_value("Cookie"), k_cookie)) {
      std::lock_guard lock(sessions_mutex);
      sessions.erase(*id);
    }
    response.set_header("Set-Cookie", cookie_header("", true));
    response.set_redirect("/login", 303);
  }

  void devices(const httplib::Request& request, httplib::Response& response) {
    const auto user = session_user(request);
    auto stats = store.stats();
    if (!stats) return error_page(response, 500, stats.error().message, user);
    std::stable_sort(stats->begin(), stats->end(),
                     [](const auto& a, const auto& b) { return has_trouble(a) > has_trouble(b); });
    std::string rows;
    for (const auto& d : *stats) {
      // The stream that had the latest event: its last seq stored, and acked (contiguous).
      const StreamStats* latest = nullptr;
      for (const auto& s : d.streams)
        if (latest == nullptr || s.last_seen_unix_ms >= latest->last_seen_unix_ms) latest = &s;
      std::string rejections = reasons_text(d.rejections);
      if (!d.rejections_before_registration.empty())
        rejections += fmt::format("; before registration: {}",
                                  reasons_text(d.rejections_before_registration));
      if (d.rejections_not_kept > 0)
        rejections += fmt::format(" ({} not kept)", d.rejections_not_kept);
      rows += fmt::format(
          "<tr{}><td><a href=\"/events?device={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>"
          "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/rejections?device={}\">{}"
          "</a></td></tr>\n",
          has_trouble(d) ? " class=\"trouble\"" : "", html_escape(url_encode(d.device)),
          html_escape(d.device),
          d.revoked ? "revoked" : (d.registered ? "registered" : "unregistered"),
          html_escape(d.last_seen_unix_ms ? time_text(*d.last_seen_unix_ms) : "-"), d.events,
          latest ? latest->max_seq : 0, latest ? latest->contiguous : 0, d.gaps,
          d.chain_intact ? "intact" : "broken", html_escape(url_encode(d.device)),
          html_escape(rejections));
    }
    const std::string body =
        stats->empty()
            ? std::string("<p>No devices yet.</p>")
            : "<table><tr><th>Device</th><th>Status</th><th>Last seen</th><th>Events</th>"
              "<th>Last seq stored</th><th>Last seq acked</th><th>Gaps</th><th>Chain</th>"
              "<th>Rejections</th></tr>\n" +
                  rows + "</table>";
    html(response, page("Devices", body, user));
  }

  // The filters of /events and its downloads; nullopt after answering 400.
  std::optional<EventQuery> event_query(const httplib::Request& request,
                                        httplib::Response& response,
                                        const std::optional<std::string>& user) {
    EventQuery q;
    q.device = request.get_param_value("device");
    q.action = request.get_param_value("action");
    q.resource = request.get_param_value("resource");
    q.process = request.get_param_value("process");
    q.member = request.get_param_value("member");
    q.since = request.get_param_value("since");
    q.until = request.get_param_value("until");
    if (!q.device.empty()) q.filter.device = q.device;
    if (!q.action.empty()) q.filter.action = q.action;
    for (auto [text, target] : {std::pair{&q.since, &q.filter.since_unix_ms},
                                std::pair{&q.until, &q.filter.until_unix_ms}}) {
      if (text->empty()) continue;
      auto ms = parse_since(*text);
      if (!ms) {
        error_page(response, 400, ms.error().message, user);
        return std::nullopt;
      }
      *target = *ms;
    }
    const std::string after_seq = request.get_param_value("after_seq");
    if (!after_seq.empty()) {
      EventCursor cursor{request.get_param_value("after_device"),
                         request.get_param_value("after_stream"), 0};
      const auto [end, ec] =
          std::from_chars(after_seq.data(), after_seq.data() + after_seq.size(), cursor.seq);
      if (ec != std::errc{} || end != after_seq.data() + after_seq.size() || cursor.seq < 0) {
        error_page(response, 400, "after_seq: expected a sequence number", user);
        return std::nullopt;
      }
      q.filter.after = std::move(cursor);
    }
    return q;
  }

  void events(const httplib::Request& request, httplib::Response& response) {
    const auto user = session_user(request);
    auto q = event_query(request, response, user);
    if (!q) return;
    std::string rows;
    int shown = 0;
    EventCursor last;  // the last event shown: the next page starts after it
    bool more = false;
    auto status = store.for_each_event(q->filter, [&](const StoredEvent& e) {
      const auto payload = nlohmann::json::parse(e.payload, nullptr, false);
      if (!q->payload_matches(payload)) return true;
      if (shown == k_page_size) {
        more = true;
        return false;
      }
      ++shown;
      last = {e.device, e.stream, e.seq};
      const std::string resource = resource_links(payload);
      rows += fmt::format(
          "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
          "<td><a href=\"/event{}\">{}</a></td></tr>\n",
          html_escape(time_text(e.recorded_unix_ms)), html_escape(e.device), html_escape(e.action),
          resource, html_escape(quantity_text(payload)), html_escape(field_text(payload, "note")),
          html_escape(query_string(
              {{"device", e.device}, {"stream", e.stream}, {"seq", std::to_string(e.seq)}})),
          e.seq);
      return true;
    });
    if (!status) return error_page(response, 500, status.error().message, user);
    const std::vector<std::pair<std::string, std::string>> filters = {
        {"device", q->device},   {"action", q->action}, {"resource", q->resource},
        {"process", q->process}, {"member", q->member}, {"since", q->since},
        {"until", q->until}};
    std::string body = "<form class=\"filters\" method=\"get\" action=\"/events\">";
    for (const auto& [key, value] : filters)
      body += fmt::format("<label>{} <input name=\"{}\" value=\"{}\"></label>", key, key,
                          html_escape(value));
    body += "<button>Filter</button></form>\n";
    body += fmt::format(
        "<p>Download: <a href=\"/events.csv{0}\">CSV</a> · <a href=\"/events.jsonl{0}\">JSON "
        "lines</a></p>\n",
        html_escape(query_string(filters)));
    body += shown == 0 ? std::string("<p>No events match.</p>")
                       : "<table><tr><th>Recorded</th><th>Device</th><th>Action</th>"
                         "<th>Resource</th><th>Quantity</th><th>Note</th><th>Seq</th></tr>\n" +
                             rows + "</table>";
    if (more) {
      auto params = filters;
      params.emplace_back("after_device", last.device);
      params.emplace_back("after_stream", last.stream);
      params.emplace_back("after_seq", std::to_string(last.seq));
      body += fmt::format("<p><a href=\"/events{}\">Next page</a></p>",
                          html_escape(query_string(params)));
    }
    html(response, page("Events", body, user));
  }

  // One event: its fields, its payload and the envelope as received.
  void event(const httplib::Request& request, httplib::Response& response) {
    const auto user = session_user(request);
    const std::string device = request.get_param_value("device");
    const std::string stream = request.get_param_value("stream");
    const std::string seq_text = request.get_param_value("seq");
    std::int64_t seq = 0;
    const auto [end, ec] = std::from_chars(seq_text.data(), seq_text.data() + seq_text.size(), seq);
    if (device.empty() || stream.empty() || ec != std::errc{} ||
        end != seq_text.data() + seq_text.size() || seq < 1)
      return error_page(response, 400, "expected device, stream and seq (from 1)", user);
    EventFilter filter;
    filter.device = device;
    filter.after = EventCursor{device, stream, seq - 1};
    std::optional<StoredEvent> found;
    auto status = store.for_each_event(filter, [&](const StoredEvent& e) {
      if (e.stream == stream && e.seq == seq) found = e;
      return false;
    });
    if (!status) return error_page(response, 500, status.error().message, user);
    if (!found) return error_page(response, 404, "no such event is stored", user);
    const auto payload = nlohmann::json::parse(found->payload, nullptr, false);
    const std::string pretty =
        payload.is_discarded()
            ? found->payload
            : payload.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
    const std::string resource = resource_links(payload);
    const std::string body = fmt::format(
        "<table><tr><th>Device</th><td>{}</td></tr><tr><th>Stream</th><td>{}</td></tr>"
        "<tr><th>Seq</th><td>{}</td></tr><tr><th>Event id</th><td>{}</td></tr>"
        "<tr><th>Action</th><td>{}</td></tr><tr><th>Resource</th><td>{}</td></tr>"
        "<tr><th>Key id</th><td>{}</td></tr>"
        "<tr><th>Recorded</th><td>{}</td></tr><tr><th>Received</th><td>{}</td></tr>"
        "<tr><th>Verified</th><td>signature and chain checked when stored (PROTOCOL §7)</td></tr>"
        "</table><h2>Payload</h2><pre>{}</pre><h2>Envelope as received</h2><pre>{}</pre>",
        html_escape(found->device), html_escape(found->stream), found->seq, html_escape(found->id),
        html_escape(found->action), resource, html_escape(found->kid),
        html_escape(time_text(found->recorded_unix_ms)),
        html_escape(time_text(found->received_unix_ms)), html_escape(pretty),
        html_escape(found->envelope));
    html(response, page("Event", body, user));
  }

  // The material passport of a resource: its trace drawn by Graphviz (when built with it) and
  // as the text `reflow-ingest trace` prints.
  void passport(const httplib::Request& request, httplib::Response& response) {
    const auto user = session_user(request);
    const std::string resource = request.get_param_value("resource");
    if (resource.empty()) return error_page(response, 400, "expected resource=REFERENCE", user);
    auto tree = trace_resource(store, resource);
    if (!tree)
      return error_page(response, tree.error().code == ErrorCode::not_found ? 404 : 500,
                        tree.error().message, user);
    std::string body = fmt::format(
        "<p>Resource <strong>{}</strong>: its history as the node's signed events tell it; "
        "arrows run the way the material went. <a href=\"/events{}\">Its events</a></p>\n",
        html_escape(resource), html_escape(query_string({{"resource", resource}})));
    if (can_render_svg()) {
      // Graphviz writes every label and URL XML-escaped; the labels were plain (never
      // HTML-like) DOT strings, so nothing a device sent becomes markup.
      auto svg = render_svg(passport_dot(*tree));
      if (!svg) return error_page(response, 500, svg.error().message, user);
      body += "<div class=\"graph\">" + *svg + "</div>\n";
    }
    body += "<h2>Trace</h2><pre>" + html_escape(format_trace_text(*tree)) + "</pre>";
    html(response, page("Material passport", body, user));
  }

  // The filtered events as `reflow-ingest events --format csv|jsonl` prints them.
  void download(const httplib::Request& request, httplib::Response& response, EventFormat format) {
    const auto user = session_user(request);
    auto q = event_query(request, response, user);
    if (!q) return;
    std::ostringstream out;
    if (!q->filters_payload()) {
      if (auto status = write_events(store, q->filter, format, out); !status)
        return error_page(response, 500, status.error().message, user);
    } else {
      if (format == EventFormat::csv) {
        const auto& columns = event_csv_columns();
        for (std::size_t i = 0; i < columns.size(); ++i)
          out << (i > 0 ? "," : "") << columns[i];
        out << "\r\n";
      }
      auto status = store.for_each_event(q->filter, [&](const StoredEvent& e) {
        if (!q->payload_matches(nlohmann::json::parse(e.payload, nullptr, false))) return true;
        if (format == EventFormat::csv)
          out << event_csv_row(e) << "\r\n";
        else
          out << event_jsonl_line(e) << '\n';
        return true;
      });
      if (!status) return error_page(response, 500, status.error().message, user);
    }
    const bool csv = format == EventFormat::csv;
    response.set_header("Content-Disposition", csv ? "attachment; filename=\"events.csv\""
                                                   : "attachment; filename=\"events.jsonl\"");
    response.set_content(out.str(), csv ? "text/csv; charset=utf-8" : "application/jsonl");
  }

  void rejections(const httplib::Request& request, httplib::Response& response) {
    const auto user = session_user(request);
    const std::string device_param = request.get_param_value("device");
    std::optional<std::string_view> device;
    if (!device_param.empty()) device = device_param;
    std::deque<StoredRejection> latest;  // the newest k_rejections_shown
    std::int64_t total = 0;
    auto status = store.for_each_rejection(device, [&](const StoredRejection& r) {
      ++total;
      latest.push_back(r);
      if (latest.size() > k_rejections_shown) latest.pop_front();
      return true;
    });
    if (!status) return error_page(response, 500, status.error().message, user);
    std::string rows;
    for (auto it = latest.rbegin(); it != latest.rend(); ++it)
      rows += fmt::format(
          "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
          "<td><details><summary>envelope</summary><pre>{}</pre></details></td></tr>\n",
          html_escape(time_text(it->last_seen_unix_ms)), html_escape(it->device),
          html_escape(to_string(it->reason)), html_escape(it->detail), it->count,
          html_escape(it->topic), html_escape(it->seq ? std::to_string(*it->seq) : "-"),
          html_escape(it->envelope));
    std::string body = fmt::format("<p>{} rejected envelopes{}; the newest {} shown.</p>", total,
                                   device ? " of " + html_escape(device_param) : "",
                                   std::min<std::int64_t>(total, k_rejections_shown));
    if (!rows.empty())
      body +=
          "<table><tr><th>Last seen</th><th>Device</th><th>Reason</th><th>Detail</th>"
          "<th>Count</th><th>Topic</th><th>Seq</th><th></th></tr>\n" +
          rows + "</table>";
    html(response, page("Rejections", body, user));
  }

  void metrics(httplib::Response& response) {
    auto stats = store.stats();
    if (!stats) {
      response.status = 500;
      response.set_content(stats.error().message + "\n", "text/plain; charset=utf-8");
      return;
    }
    std::int64_t bytes = 0;
    for (const auto& path :
         {options.store_path, std::filesystem::path(options.store_path.string() + "-wal")}) {
      std::error_code ec;
      const auto size = std::filesystem::file_size(path, ec);
      if (!ec) bytes += static_cast<std::int64_t>(size);
    }
    response.set_content(metrics_text(*stats, bytes), "text/plain; version=0.0.4; charset=utf-8");
  }

  void routes() {
    http.set_payload_max_length(k_max_body_bytes);
    http.set_default_headers({
        {"Content-Security-Policy", "default-src 'none'; style-src 'self'; form-action 'self'"},
        {"X-Content-Type-Options", "nosniff"},
        {"X-Frame-Options", "DENY"},
        {"Referrer-Policy", "no-referrer"},
        {"Cache-Control", "no-store"},
    });
    http.set_pre_routing_handler(
        [this](const httplib::Request& q, httplib::Response& r) { return pre_route(q, r); });
    http.Get("/login",
             [](const httplib::Request&, httplib::Response& r) { html(r, login_form("")); });
    http.Post("/login", [this](const httplib::Request& q, httplib::Response& r) { login(q, r); });
    http.Post("/logout", [this](const httplib::Request& q, httplib::Response& r) { logout(q, r); });
    http.Get("/", [](const httplib::Request&, httplib::Response& r) {
      r.set_redirect("/devices", 303);
    });
    http.Get("/devices",
             [this](const httplib::Request& q, httplib::Response& r) { devices(q, r); });
    http.Get("/events", [this](const httplib::Request& q, httplib::Response& r) { events(q, r); });
    http.Get("/passport",
             [this](const httplib::Request& q, httplib::Response& r) { passport(q, r); });
    http.Get("/event", [this](const httplib::Request& q, httplib::Response& r) { event(q, r); });
    http.Get("/events.csv", [this](const httplib::Request& q, httplib::Response& r) {
      download(q, r, EventFormat::csv);
    });
    http.Get("/events.jsonl", [this](const httplib::Request& q, httplib::Response& r) {
      download(q, r, EventFormat::jsonl);
    });
    http.Get("/rejections",
             [this](const httplib::Request& q, httplib::Response& r) { rejections(q, r); });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) { metrics(r); });
    http.Get("/assets/.*", [](const httplib::Request& q, httplib::Response& r) {
      const auto it = k_assets.find(q.path);
      if (it == k_assets.end()) {
        r.status = 404;
        r.set_content("404: no such asset\n", "text/plain; charset=utf-8");
        return;
      }
      r.set_content(std::string(it->second.body), std::string(it->second.type));
    });
    http.set_error_handler([](const httplib::Request&, httplib::Response& r) {
      if (r.body.empty()) r.set_content(fmt::format("{}\n", r.status), "text/plain; charset=utf-8");
    });
  }
};

Server::Server(Store& store, agent::Env& env, ServerOptions options)
    : m_impl(std::make_unique<Impl>(store, env, std::move(options))) {
  m_impl->routes();
}

Server::~Server() {
  stop();
}

agent::Result<int> Server::start() {
  const auto& listen = m_impl->options.listen;
  int port = listen.port;
  if (port == 0)
    port = m_impl->http.bind_to_any_port(listen.host);
  else if (!m_impl->http.bind_to_port(listen.host, port))
    port = -1;
  if (port < 0)
    return fail(ErrorCode::io, fmt::format("cannot listen on {}:{} (in use, or not an address "
                                           "of this machine?)",
                                           listen.host, listen.port));
  m_impl->thread = std::thread([this] { m_impl->http.listen_after_bind(); });
  return port;
}

void Server::stop() {
  if (!m_impl) return;
  m_impl->http.stop();
  if (m_impl->thread.joinable()) m_impl->thread.join();
}

}  // namespace ingest::web
