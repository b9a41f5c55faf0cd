// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include <reflow/core/http.hpp>
#include <reflow/core/result.hpp>

/// Spoolman (Donkie/Spoolman, REST under `/api/v1/`, no authentication by design: the boundary is
/// the network), the filament inventory that printer drivers read spools from and report usage to.
/// Reference: docs/reference/drivers.md §3.
namespace agent::spoolman {

/// Grams of filament in `length_mm` of a strand `diameter_mm` thick, at `density_g_cm3`:
/// density × length × π(d/2)², with mm³ → cm³ (÷ 1000), as Spoolman's `spoolman/math.py`
/// weight_from_length. 1000 mm of 1.75 mm PLA at 1.24 g/cm³ ≈ 2.98 g.
double filament_grams(double length_mm, double diameter_mm, double density_g_cm3);

/// The largest filament constants drivers take, from config or from Spoolman: no printer
/// filament is thicker than 10 mm (1.75 and 2.85 mm are the sizes sold) and no solid denser than
/// osmium (22.6 g/cm³). With k_max_filament_mm they keep filament_grams() within PROTOCOL §4's
/// quantity limit (1e12): at most 1e9 × π × 5² × 25 / 1000 ≈ 2e9 g.
inline constexpr double k_max_diameter_mm = 10;
inline constexpr double k_max_density_g_cm3 = 25;
/// The longest filament one job may report using, in mm: 1000 km, some three thousand 1 kg spools.
inline constexpr double k_max_filament_mm = 1e9;

/// The resource reference of a Spoolman spool, the same in every driver: "spoolman:spool-7".
std::string spool_reference(std::int64_t spool_id);

/// What drivers report to Spoolman after each job: the config key `spoolman_report`, one of
/// "off" (default: nothing; the printer's own Spoolman integration may do it already), "length"
/// ({"use_length": mm}) or "weight" ({"use_weight": g}).
enum class Report { off, length, weight };

/// What a driver needs to know about one spool: its filament's physical constants.
struct Spool {
  std::int64_t id = 0;
  double density_g_cm3 = 0;  ///< filament.density, in (0, k_max_density_g_cm3]
  double diameter_mm = 0;    ///< filament.diameter, in (0, k_max_diameter_mm]
  std::string material;      ///< filament.material; "" when unset
  std::string name;          ///< filament.name; "" when unset
};

/// A small client of the two Spoolman calls drivers need, on agent::HttpClient. `base_url` is
/// "http://host:7912" (Spoolman's default port; a trailing slash is dropped). Owns its
/// HttpClient; not thread-safe: one per driver thread.
///
/// Errors of every call, so that a driver can tell "retry later" from "never":
///  - device_unavailable or timeout: Spoolman did not answer; retry later.
///  - not_found: HTTP 404, Spoolman has no such spool; check spool_id.
///  - invalid_argument: Spoolman refused the request itself (HTTP 400 or 422: sending it again
///    cannot help), or answered 200 with something that is not the JSON it documents (is the
///    URL a Spoolman server?).
///  - rejected: any other HTTP status (500 …); retry later.
/// Every message names the method, the URL and the status.
class Client {
 public:
  Client(std::string base_url, std::chrono::milliseconds timeout);

  /// GET /api/v1/spool/{id} → the spool, with its filament's density and diameter.
  Result<Spool> spool(std::int64_t id);

  /// PUT /api/v1/spool/{id}/use {"use_length": mm}: Spoolman subtracts the length, converted
  /// with the spool's own filament constants.
  Status use_length(std::int64_t id, double length_mm);

  /// PUT /api/v1/spool/{id}/use {"use_weight": g}.
  Status use_weight(std::int64_t id, double grams);

 private:
  Result<std::string> call(const std::string& method, const std::string& path,
                           const std::string& body);

  std::string m_base_url;
  std::chrono::milliseconds m_timeout;
  HttpClient m_http;
};

}  // namespace agent::spoolman
