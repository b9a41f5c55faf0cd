// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/valueflows.hpp>

#include <cmath>
#include <initializer_list>
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

namespace {

bool has_text(const nlohmann::ordered_json& fields, std::string_view name) {
  const auto it = fields.find(name);
  return it != fields.end() && it->is_string() && !it->get_ref<const std::string&>().empty();
}

bool has(const nlohmann::ordered_json& fields, std::string_view name) {
  return fields.find(name) != fields.end();
}

// One rule: `field` must be there for `action`, because `why`.
struct Rule {
  std::string_view field;
  bool text;  // a non-empty string (a reference), not just present (a quantity)
  std::string_view why;
};

Status check_rules(const nlohmann::ordered_json& fields, std::string_view action,
                   std::initializer_list<Rule> rules) {
  for (const Rule& rule : rules)
    if (rule.text ? !has_text(fields, rule.field) : !has(fields, rule.field))
      return fail(ErrorCode::rejected, fmt::format("{}: required for action \"{}\" (zenflows: {})",
                                                   rule.field, action, rule.why));
  return {};
}

}  // namespace

Status check_zenflows_rules(const nlohmann::ordered_json& fields) {
  if (!fields.is_object() || !has_text(fields, "action")) return {};
  const std::string& action = fields["action"].get_ref<const std::string&>();
  if (action == "use") {
    if (Status s = check_rules(fields, action,
                               {{"inputOf", true, "a use is an input of a process"},
                                {"effortQuantity", false, "the time the resource was used"}});
        !s)
      return s;
    if (!has_text(fields, "resourceInventoriedAs") && !has_text(fields, "resourceConformsTo"))
      return fail(ErrorCode::rejected,
                  "resourceInventoriedAs or resourceConformsTo: required for action \"use\" "
                  "(zenflows: the resource used, or its kind)");
    return {};
  }
  if (action == "work")
    return check_rules(fields, action,
                       {{"inputOf", true, "work is an input of a process"},
                        {"effortQuantity", false, "the time worked"},
                        {"resourceConformsTo", true, "the kind of work"}});
  if (action == "consume")
    return check_rules(fields, action,
                       {{"inputOf", true, "a consume is an input of a process"},
                        {"resourceInventoriedAs", true,
                         "the resource it decrements; a specification alone is not enough"},
                        {"resourceQuantity", false, "how much was consumed"}});
  if (action == "produce")
    return check_rules(
        fields, action,
        {{"outputOf", true, "a produce is an output of a process"},
         {"resourceInventoriedAs", true,
          "the resource it increments, or with resourceConformsTo the name of the new resource "
          "it creates (newInventoriedResource.name)"},
         {"resourceQuantity", false, "how much was produced"}});
  return {};
}

}  // namespace agent::vf
