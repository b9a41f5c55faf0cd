// SPDX-License-Identifier: AGPL-3.0-or-later
// The control protocol (control.hpp) as the server reads it, without the socket: the first line
// through parse_control_request; for emit, each further non-blank line parsed as the server
// parses it (parse_json_strict) and validated as the writer validates it (validate_submission), and
// every refusal turned into the answer line the client gets (control_error_line), which must
// serialize.
#include <cstddef>
#include <cstdint>

#include <reflow/core/event.hpp>
#include <reflow/core/json_strict.hpp>
#include <reflow/device/control.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto lines = reflow_fuzz::split_lines(reflow_fuzz::as_text(data, size));
  if (lines.empty()) return 0;
  const auto op = agent::parse_control_request(lines.front());
  if (op != agent::ControlOp::emit) {
    if (op == agent::ControlOp::unknown) (void)agent::control_error_line("unknown op", 0);
    return 0;
  }
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const auto line = lines[i];
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    auto fields = agent::parse_json_strict(line);
    if (!fields) {
      (void)agent::control_error_line("malformed JSON: " + fields.error().message, i);
      continue;
    }
    auto valid = agent::validate_submission(*fields);
    if (!valid) (void)agent::control_error_line(valid.error().message, i);
  }
  return 0;
}
