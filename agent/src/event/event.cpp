// SPDX-License-Identifier: AGPL-3.0-or-later
#include <agent/event.hpp>

#include <algorithm>
#include <array>

namespace agent {
namespace {

// PROTOCOL §4: ValueFlows action ids, camelCase.
constexpr std::array<std::string_view, 16> k_actions = {
    "use",      "work",     "consume",           "produce", "cite",   "accept",
    "modify",   "transfer", "transferCustody",   "transferAllRights", "move", "pickup",
    "dropoff",  "raise",    "lower",             "deliverService"};

// PROTOCOL §4: OM2 unit names.
constexpr std::array<std::string_view, 10> k_units = {
    "one", "hour", "minute-Time", "second-Time", "gram", "kilogram", "millimetre", "metre", "litre",
    "kilowattHour"};

}  // namespace

bool is_known_action(std::string_view action) noexcept {
  return std::find(k_actions.begin(), k_actions.end(), action) != k_actions.end();
}

bool is_known_unit(std::string_view unit) noexcept {
  return std::find(k_units.begin(), k_units.end(), unit) != k_units.end();
}

bool is_valid_device_id(std::string_view id) noexcept {
  // ^[a-z0-9][a-z0-9._-]{0,63}$
  if (id.empty() || id.size() > 64) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(id[0])) return false;
  return std::all_of(id.begin() + 1, id.end(),
                     [&](char c) { return alnum(c) || c == '.' || c == '_' || c == '-'; });
}

}  // namespace agent
