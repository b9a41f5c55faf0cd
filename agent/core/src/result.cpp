// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/result.hpp>

namespace agent {

std::string_view to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::invalid_config:
      return "invalid_config";
    case ErrorCode::invalid_argument:
      return "invalid_argument";
    case ErrorCode::io:
      return "io";
    case ErrorCode::no_space:
      return "no_space";
    case ErrorCode::device_unavailable:
      return "device_unavailable";
    case ErrorCode::timeout:
      return "timeout";
    case ErrorCode::corruption:
      return "corruption";
    case ErrorCode::crypto:
      return "crypto";
    case ErrorCode::rejected:
      return "rejected";
    case ErrorCode::busy:
      return "busy";
    case ErrorCode::shutting_down:
      return "shutting_down";
    case ErrorCode::not_found:
      return "not_found";
    case ErrorCode::internal:
      return "internal";
  }
  return "internal";
}

}  // namespace agent
