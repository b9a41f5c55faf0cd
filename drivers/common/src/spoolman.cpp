// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/spoolman.hpp>

#include <cmath>
#include <numbers>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/text.hpp>

namespace agent::spoolman {

double filament_grams(double length_mm, double diameter_mm, double density_g_cm3) {
  const double radius_mm = diameter_mm / 2;
  const double volume_mm3 = length_mm * std::numbers::pi * radius_mm * radius_mm;
  return density_g_cm3 * volume_mm3 / 1000.0;
}

std::string spool_reference(std::int64_t spool_id) {
  return fmt::format("spoolman:spool-{}", spool_id);
}

Client::Client(std::string base_url, std::chrono::milliseconds timeout)
    : m_base_url(std::move(base_url)), m_timeout(timeout) {
  while (m_base_url.ends_with('/'))
    m_base_url.pop_back();
}

Result<std::string> Client::call(const std::string& method, const std::string& path,
                                 const std::string& body) {
  HttpRequest request;
  request.method = method;
  request.url = m_base_url + path;
  request.timeout = m_timeout;
  request.headers.emplace_back("Accept", "application/json");
  if (!body.empty()) request.headers.emplace_back("Content-Type", "application/json");
  request.body = body;
  auto response = m_http.perform(request);
  if (!response) return std::unexpected(response.error());
  if (response->status == 200) return std::move(response->body);
  const std::string what =
      fmt::format("Spoolman {} {}{}: HTTP {} ({})", method, request.url,
                  body.empty() ? "" : " " + body, response->status,
                  agent::shortened_text(agent::printable_text(response->body.substr(0, 800)), 200));
  if (response->status == 404)
    return fail(ErrorCode::not_found,
                fmt::format("{}; check spool_id: Spoolman has no such spool", what));
  if (response->status == 400 || response->status == 422)
    return fail(
        ErrorCode::invalid_argument,
        fmt::format("{}; Spoolman refuses this request, sending it again cannot help", what));
  return fail(ErrorCode::rejected, fmt::format("{}; see the Spoolman server's log", what));
}

Result<Spool> Client::spool(std::int64_t id) {
  const std::string path = fmt::format("/api/v1/spool/{}", id);
  auto body = call("GET", path, "");
  if (!body) return std::unexpected(body.error());
  const auto json = nlohmann::json::parse(*body, nullptr, false);
  const auto malformed = [&](std::string_view what) {
    return fail(ErrorCode::invalid_argument,
                fmt::format("Spoolman GET {}{}: {}; is spoolman_url a Spoolman server?", m_base_url,
                            path, what));
  };
  if (json.is_discarded() || !json.is_object()) return malformed("the answer is not a JSON object");
  const auto filament = json.find("filament");
  if (filament == json.end() || !filament->is_object())
    return malformed("the answer has no \"filament\" object");
  const auto positive = [&](const char* key) {
    const auto value = filament->find(key);
    if (value == filament->end() || !value->is_number()) return 0.0;
    const double number = value->get<double>();
    return std::isfinite(number) && number > 0 ? number : 0.0;
  };
  Spool spool;
  spool.id = id;
  spool.density_g_cm3 = positive("density");
  spool.diameter_mm = positive("diameter");
  if (spool.density_g_cm3 <= 0) return malformed("filament.density is not a number > 0");
  if (spool.diameter_mm <= 0) return malformed("filament.diameter is not a number > 0");
  if (spool.density_g_cm3 > k_max_density_g_cm3)
    return malformed(fmt::format("filament.density {} g/cm³ is above {}, denser than any solid",
                                 spool.density_g_cm3, k_max_density_g_cm3));
  if (spool.diameter_mm > k_max_diameter_mm)
    return malformed(fmt::format("filament.diameter {} mm is above {}, thicker than any filament",
                                 spool.diameter_mm, k_max_diameter_mm));
  if (auto m = filament->find("material"); m != filament->end() && m->is_string())
    spool.material = m->get<std::string>();
  if (auto n = filament->find("name"); n != filament->end() && n->is_string())
    spool.name = n->get<std::string>();
  return spool;
}

Status Client::use_length(std::int64_t id, double length_mm) {
  const nlohmann::json body = {{"use_length", length_mm}};
  auto answer = call("PUT", fmt::format("/api/v1/spool/{}/use", id), body.dump());
  if (!answer) return std::unexpected(answer.error());
  return {};
}

Status Client::use_weight(std::int64_t id, double grams) {
  const nlohmann::json body = {{"use_weight", grams}};
  auto answer = call("PUT", fmt::format("/api/v1/spool/{}/use", id), body.dump());
  if (!answer) return std::unexpected(answer.error());
  return {};
}

}  // namespace agent::spoolman
