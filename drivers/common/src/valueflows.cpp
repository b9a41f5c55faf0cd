// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/valueflows.hpp>

#include <cmath>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/event.hpp>
#include <reflow/core/text.hpp>

namespace agent::vf {

nlohmann::ordered_json quantity(double value, std::string_view unit) {
  nlohmann::ordered_json q;
  q["hasNumericalValue"] = value;
  q["hasUnit"] = unit;
  return q;
}

double round_to(double value, int decimals) {
  const double scale = std::pow(10.0, decimals);
  return std::round(value * scale) / scale;
}

namespace {

void put_resource(nlohmann::ordered_json& fields, const ResourceRef& resource) {
  if (!resource.inventoried_as.empty()) fields["resourceInventoriedAs"] = resource.inventoried_as;
  if (!resource.conforms_to.empty()) fields["resourceConformsTo"] = resource.conforms_to;
}

}  // namespace

nlohmann::ordered_json use(std::string_view machine, double hours, std::string_view begin,
                           std::string_view end, std::string_view process) {
  nlohmann::ordered_json fields;
  fields["action"] = "use";
  fields["resourceInventoriedAs"] = machine;
  fields["effortQuantity"] = quantity(hours, "hour");
  fields["hasBeginning"] = begin;
  fields["hasEnd"] = end;
  fields["inputOf"] = process;
  return fields;
}

nlohmann::ordered_json consume(const ResourceRef& resource, nlohmann::ordered_json quantity,
                               std::string_view at, std::string_view process) {
  nlohmann::ordered_json fields;
  fields["action"] = "consume";
  put_resource(fields, resource);
  fields["resourceQuantity"] = std::move(quantity);
  fields["hasPointInTime"] = at;
  fields["inputOf"] = process;
  return fields;
}

nlohmann::ordered_json produce(std::string_view new_resource, std::string_view conforms_to,
                               nlohmann::ordered_json quantity, std::string_view at,
                               std::string_view process) {
  nlohmann::ordered_json fields;
  fields["action"] = "produce";
  fields["resourceInventoriedAs"] = new_resource;
  fields["resourceConformsTo"] = conforms_to;
  fields["resourceQuantity"] = std::move(quantity);
  fields["hasPointInTime"] = at;
  fields["outputOf"] = process;
  return fields;
}

std::string part_reference(std::string_view file, std::string_view job, std::string_view printer) {
  const std::string suffix = fmt::format(", job {} on {}", job, printer);
  if (file.size() + suffix.size() <= k_max_string_bytes) return std::string(file) + suffix;
  constexpr std::size_t k_ellipsis_bytes = 3;  // "…" in UTF-8, which shortened_text appends
  const std::size_t room = suffix.size() + k_ellipsis_bytes < k_max_string_bytes
                               ? k_max_string_bytes - suffix.size() - k_ellipsis_bytes
                               : 0;
  return shortened_text(file, room) + suffix;
}

std::string period_process(std::string_view driver, std::string_view name,
                           std::int64_t begin_unix_ms) {
  return fmt::format("{}:{}:period-{}", driver, name, begin_unix_ms);
}

}  // namespace agent::vf
