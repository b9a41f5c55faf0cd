// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/json_strict.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace agent {
namespace {

using Json = nlohmann::ordered_json;

// A short, printable rendering of a token for a message: never more than a few dozen bytes, and
// nothing that could drive a terminal.
std::string printable(std::string_view token) {
  constexpr std::size_t k_max = 24;
  std::string out;
  for (char c : token.substr(0, k_max)) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f || byte >= 0x80)
      out += fmt::format("\\x{:02x}", byte);
    else
      out += c;
  }
  if (token.size() > k_max) out += "…";
  return out;
}

// Builds the document as nlohmann's own DOM parser does, checking the RFC 7493 rules on the way.
// Errors set `error` and return false, which stops the parse.
class StrictBuilder {
 public:
  StrictBuilder(std::string_view text, std::size_t max_depth) : m_text(text), m_max(max_depth) {}

  bool null() { return add(Json(nullptr)); }
  bool boolean(bool value) { return add(Json(value)); }
  bool number_integer(Json::number_integer_t value) {
    if (value > k_max_json_integer || value < -k_max_json_integer) return out_of_range(value);
    return add(Json(value));
  }
  bool number_unsigned(Json::number_unsigned_t value) {
    if (value > static_cast<Json::number_unsigned_t>(k_max_json_integer))
      return out_of_range(value);
    return add(Json(value));
  }
  bool number_float(Json::number_float_t value, const std::string& token) {
    const bool integer_literal = token.find_first_of(".eE") == std::string::npos;
    if (integer_literal)  // beyond 64 bits: nlohmann reads it as a float
      return fail(
          fmt::format("integer {} is beyond ±(2^53 − 1), which not every reader holds "
                      "exactly (RFC 7493 §2.2)",
                      printable(token)));
    if (!std::isfinite(value))
      return fail(
          fmt::format("{} is too large for a binary64 number (RFC 7493 §2.2)", printable(token)));
    const std::string_view mantissa = std::string_view(token).substr(0, token.find_first_of("eE"));
    const bool nonzero = mantissa.find_first_of("123456789") != std::string_view::npos;
    if ((value == 0 && nonzero) || std::fpclassify(value) == FP_SUBNORMAL)
      return fail(
          fmt::format("{} is too small for a binary64 number: it underflows (RFC 7493 §2.2)",
                      printable(token)));
    return add(Json(value));
  }
  bool string(std::string& value) { return add(Json(std::move(value))); }
  bool binary(Json::binary_t& /*value*/) { return fail("binary values are not JSON"); }

  bool start_object(std::size_t /*elements*/) { return open(Json::object()); }
  bool key(std::string& name) {
    Frame& frame = m_stack.back();
    frame.key = std::move(name);
    const std::string& name_ref = frame.key;
    const auto& members = frame.node->get_ref<const Json::object_t&>();
    bool repeated = false;
    if (frame.seen) {
      repeated = !frame.seen->insert(name_ref).second;
    } else {
      repeated = members.find(name_ref) != members.end();
      // Past a few dozen members a linear search per name would make a crafted object cost
      // quadratic time; a set keeps it linear.
      if (!repeated && members.size() >= k_linear_members) {
        frame.seen = std::make_unique<std::unordered_set<std::string>>();
        for (const auto& member : members)
          frame.seen->insert(member.first);
        frame.seen->insert(name_ref);
      }
    }
    if (repeated)
      return fail(
          fmt::format("member \"{}\" appears twice; every reader must see one value "
                      "(RFC 7493 §2.3)",
                      printable(name_ref)));
    return true;
  }
  bool end_object() { return close(); }
  bool start_array(std::size_t /*elements*/) { return open(Json::array()); }
  bool end_array() { return close(); }

  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::json::exception& ex) {
    // `position` counts the bytes read, the offending one included.
    std::size_t start = std::min(position > 0 ? position - 1 : 0, m_text.size());
    const std::string_view rest = m_text.substr(start);
    std::string what;
    if (ex.id == k_number_overflow) {
      // nlohmann refuses a number strtod overflows; the token is the number itself.
      const std::size_t begin =
          std::min(position >= last_token.size() ? position - last_token.size() : 0, m_text.size());
      const std::string_view number =
          m_text.substr(begin, m_text.find_first_of(",]} \t\r\n", begin) - begin);
      what =
          fmt::format("{} is too large for a binary64 number (RFC 7493 §2.2)", printable(number));
    }
    for (std::string_view word : {"NaN", "Infinity", "-Infinity", "+Infinity", "nan", "inf"}) {
      if (what.empty() && rest.starts_with(word)) {
        const bool negative = start > 0 && m_text[start - 1] == '-';
        what = fmt::format("{}{} is not a JSON number (RFC 8259 §6)", negative ? "-" : "", word);
        break;
      }
    }
    if (what.empty()) {
      // nlohmann's message reads "[json.exception.parse_error.101] parse error at line 1,
      // column 4: syntax error while parsing value - invalid literal; last read: '…'"; keep what
      // names the problem, not the token: the input may be a secret in the wrong place.
      std::string_view message = ex.what();
      if (auto colon = message.find(": "); colon != std::string_view::npos)
        message.remove_prefix(colon + 2);
      if (auto last = message.find("; last read"); last != std::string_view::npos)
        message = message.substr(0, last);
      what = std::string(message);
    }
    m_error = fmt::format("{}{}", position_text(start), what);
    return false;
  }

  Json take() { return std::move(m_root); }
  const std::string& error() const { return m_error; }

 private:
  static constexpr std::size_t k_linear_members = 32;
  // nlohmann's out_of_range.406: "number overflow parsing '…'".
  static constexpr int k_number_overflow = 406;

  struct Frame {
    Json* node = nullptr;
    std::string key;  // the member being read, for objects
    std::unique_ptr<std::unordered_set<std::string>> seen;
  };

  // "line L, column C: " for byte offset `offset` of the text (1-based).
  std::string position_text(std::size_t offset) const {
    offset = std::min(offset, m_text.size());
    const std::string_view before = m_text.substr(0, offset);
    const std::size_t line =
        1 + static_cast<std::size_t>(std::count(before.begin(), before.end(), '\n'));
    const std::size_t line_start = before.rfind('\n');
    const std::size_t column =
        line_start == std::string_view::npos ? offset + 1 : offset - line_start;
    return fmt::format("line {}, column {}: ", line, column);
  }

  // JSONPath-like location of the value being read, e.g. `$.meta.parts[2]`: each open
  // container's last member, and in the innermost one the member being read.
  std::string path() const {
    std::string out = "$";
    for (std::size_t i = 0; i < m_stack.size(); ++i) {
      const Frame& frame = m_stack[i];
      const bool innermost = i + 1 == m_stack.size();
      if (frame.node->is_object()) {
        // Appended in two steps: `"." + string` trips GCC 12's -Wrestrict at -O3 (a false
        // positive, GCC bug 105329), which broke Release builds with REFLOW_WERROR.
        out += '.';
        out += printable(frame.key);
      } else {
        out += fmt::format("[{}]", frame.node->size() - (innermost ? 0 : 1));
      }
    }
    return out;
  }

  bool fail(std::string what) {
    m_error = fmt::format("at {}: {}", path(), what);
    return false;
  }

  template <typename Number>
  bool out_of_range(Number value) {
    return fail(
        fmt::format("integer {} is beyond ±(2^53 − 1), which not every reader holds "
                    "exactly (RFC 7493 §2.2)",
                    value));
  }

  // Places `value` in the open container (or as the root) and returns where it now lives.
  Json* place(Json value) {
    if (m_stack.empty()) {
      m_root = std::move(value);
      return &m_root;
    }
    Frame& frame = m_stack.back();
    if (frame.node->is_array()) {
      auto& items = frame.node->get_ref<Json::array_t&>();
      items.push_back(std::move(value));
      return &items.back();
    }
    auto& members = frame.node->get_ref<Json::object_t&>();
    members.emplace_back(frame.key, std::move(value));  // the key stays for path()
    return &members.back().second;
  }

  bool add(Json value) {
    place(std::move(value));
    return true;
  }

  bool open(Json container) {
    if (m_stack.size() + 1 > m_max)
      return fail(fmt::format("nested deeper than {} levels (PROTOCOL §4 Limits)", m_max));
    Json* node = place(std::move(container));
    m_stack.push_back(Frame{node, {}, nullptr});
    return true;
  }

  bool close() {
    m_stack.pop_back();
    return true;
  }

  std::string_view m_text;
  std::size_t m_max;
  Json m_root;
  std::vector<Frame> m_stack;
  std::string m_error;
};

}  // namespace

Result<nlohmann::ordered_json> parse_json_strict(std::string_view text, std::size_t max_depth) {
  if (text.starts_with("\xEF\xBB\xBF"))
    return fail(ErrorCode::invalid_argument,
                "line 1, column 1: the text starts with a byte order mark (U+FEFF), which JSON "
                "texts must not (RFC 8259 §8.1)");
  StrictBuilder builder(text, max_depth);
  const bool ok = Json::sax_parse(text, &builder, Json::input_format_t::json, /*strict=*/true);
  if (!ok) return fail(ErrorCode::invalid_argument, builder.error());
  return builder.take();
}

std::string string_at(const nlohmann::json& root, std::initializer_list<const char*> path) {
  const nlohmann::json* node = &root;
  for (const char* key : path) {
    if (!node->is_object()) return {};
    auto it = node->find(key);
    if (it == node->end()) return {};
    node = &*it;
  }
  return node->is_string() ? node->get<std::string>() : std::string();
}

}  // namespace agent
