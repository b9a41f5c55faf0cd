// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include <reflow/core/result.hpp>

namespace agent {

/// The deepest nesting parse_json_strict accepts by default: PROTOCOL §4 "Limits". An event is
/// depth 1, its `meta` depth 2; sixteen leaves drivers room and keeps every recursive walk over a
/// document (dump, validation) far from the end of a thread's stack.
inline constexpr std::size_t k_max_json_depth = 16;

/// The largest integer magnitude every JSON implementation reads exactly: 2^53 − 1 (I-JSON,
/// RFC 7493 §2.2).
inline constexpr std::int64_t k_max_json_integer = (std::int64_t{1} << 53) - 1;

/// Parses `text` as exactly one JSON document (RFC 8259) under the rules that give every reader
/// the same reading of it (I-JSON, RFC 7493), which is what a signature over JSON needs:
///
/// - no byte order mark (RFC 8259 §8.1), and nothing but whitespace after the value;
/// - strings and member names are valid UTF-8 (RFC 7493 §2.1);
/// - no object has the same member name twice (RFC 7493 §2.3): readers disagree about which
///   value wins (nlohmann_json takes the last, SQLite's JSON functions the first);
/// - integers lie within ±(2^53 − 1) (RFC 7493 §2.2); other numbers are finite binary64 values
///   that neither overflow (1e400) nor underflow to zero or a subnormal (1e-400, 5e-324);
/// - objects and arrays nest at most `max_depth` deep (the top level is depth 1).
///
/// Errors: invalid_argument, with a message that locates the fault and names what is wrong. A
/// syntax error (nlohmann's parser stopped) starts "line L, column C: " (both 1-based, columns in
/// bytes), e.g. `line 3, column 20: NaN is not a JSON number`, `line 1, column 9: 1e400 is too
/// large for a binary64 number`; a rule above broken by well-formed JSON starts "at PATH: " with
/// the JSONPath of the value (the SAX interface gives no byte position for it), e.g. `at $.seq:
/// member "seq" appears twice`, `at $.meta.n: integer 9007199254740993 is beyond ±(2^53 − 1)`.
/// The message quotes at most a short token of the input.
Result<nlohmann::ordered_json> parse_json_strict(std::string_view text,
                                                 std::size_t max_depth = k_max_json_depth);

/// The string at `path` (object member names, outermost first) in `root`, e.g.
/// `string_at(answer, {"data", "createProcess", "process", "id"})` for a GraphQL answer; "" when
/// a member is missing, a step is not an object, or the value is not a string. Never throws.
std::string string_at(const nlohmann::json& root, std::initializer_list<const char*> path);

}  // namespace agent
