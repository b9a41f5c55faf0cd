// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/valueflows.hpp>

#include <cmath>
#include <utility>

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

nlohmann::ordered_json produce(std::string_view conforms_to, nlohmann::ordered_json quantity,
                               std::string_view at, std::string_view process) {
  nlohmann::ordered_json fields;
  fields["action"] = "produce";
  fields["resourceConformsTo"] = conforms_to;
  fields["resourceQuantity"] = std::move(quantity);
  fields["hasPointInTime"] = at;
  fields["outputOf"] = process;
  return fields;
}

}  // namespace agent::vf
