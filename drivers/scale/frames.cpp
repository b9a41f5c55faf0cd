// SPDX-License-Identifier: AGPL-3.0-or-later
#include "frames.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>

#include <fmt/format.h>

namespace agent::scale {
namespace {

constexpr char k_stx = '\x02';
constexpr std::size_t k_max_line = 80;  // longer than any protocol's frame: noise, drop it
constexpr std::size_t k_hid_report = 6;

struct ProtocolName {
  Protocol protocol;
  std::string_view name;
};
constexpr std::array<ProtocolName, 6> k_protocols = {{
    {Protocol::and_standard, "and"},
    {Protocol::st_gs, "st_gs"},
    {Protocol::mt_sics, "mt_sics"},
    {Protocol::ohaus, "ohaus"},
    {Protocol::toledo, "toledo"},
    {Protocol::hid, "hid"},
}};

std::string printable(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f)
      out += c;
    else
      out += fmt::format("\\x{:02x}", u);
  }
  return out;
}

std::unexpected<Error> garbage(std::string_view protocol, std::string_view frame,
                               std::string_view why) {
  return fail(ErrorCode::invalid_argument,
              fmt::format("{} frame \"{}\": {}", protocol, printable(frame), why));
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Microgram rounding: removes the noise of g/lb/oz → kg conversions (0.30000000000000004).
double round_kg(double kg) {
  return std::round(kg * 1e9) / 1e9;
}

struct ValueUnit {
  double value = 0;
  std::string unit;
  std::string_view rest;  // what follows the unit (OHAUS stability and net marks)
};

// "+00123.45  g", "+  1.234,kg", "-0.010kg", "     100.00 g ?": a sign (maybe apart from the
// digits), a decimal number, then the unit letters after spaces or a comma.
std::optional<ValueUnit> parse_value_unit(std::string_view text) {
  std::string_view s = trim(text);
  bool negative = false;
  if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
    negative = s.front() == '-';
    s = trim(s.substr(1));
  }
  std::size_t end = 0;
  bool dot = false;
  std::size_t digits = 0;
  while (end < s.size()) {
    const char c = s[end];
    if (c >= '0' && c <= '9') {
      ++digits;
    } else if (c == '.' && !dot) {
      dot = true;
    } else {
      break;
    }
    ++end;
  }
  if (digits == 0) return std::nullopt;
  double value = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + end, value);
  if (ec != std::errc() || ptr != s.data() + end) return std::nullopt;
  s.remove_prefix(end);
  while (!s.empty() && (s.front() == ' ' || s.front() == ','))
    s.remove_prefix(1);
  std::size_t unit_end = 0;
  while (unit_end < s.size() && std::isalpha(static_cast<unsigned char>(s[unit_end])))
    ++unit_end;
  if (unit_end == 0) return std::nullopt;
  ValueUnit out;
  out.value = negative ? -value : value;
  out.unit = std::string(s.substr(0, unit_end));
  out.rest = trim(s.substr(unit_end));
  return out;
}

Result<double> to_kg(std::string_view protocol, std::string_view frame, const ValueUnit& vu) {
  const auto factor = kilograms_per_unit(vu.unit);
  if (!factor) {
    return garbage(protocol, frame,
                   fmt::format("unit \"{}\" is not a weight unit (g, kg, mg, lb, oz, t); set the "
                               "indicator to weighing mode",
                               vu.unit));
  }
  return round_kg(vu.value * *factor);
}

bool all_printable(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x20 && u < 0x7f;
  });
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  while (true) {
    const std::size_t pos = s.find(sep, start);
    if (pos == std::string_view::npos) {
      out.push_back(s.substr(start));
      return out;
    }
    out.push_back(s.substr(start, pos - start));
    start = pos + 1;
  }
}

// The A&D and "ST,GS" families: HEADER[,HEADER2],VALUE UNIT. The second header is a comparator
// result (A&D: LO/OK/HI/--) or gross/net (GS/NT); indicators mix them, so both are accepted.
Result<Reading> parse_comma_frame(std::string_view protocol, std::string_view line) {
  if (!all_printable(line)) return garbage(protocol, line, "contains control bytes");
  const auto fields = split(line, ',');
  if (fields.size() < 2) return garbage(protocol, line, "expected HEADER,VALUE UNIT");
  const std::string_view head = trim(fields[0]);
  std::size_t next = 1;
  Reading reading;
  const std::string_view second = trim(fields[1]);
  if (second == "GS" || second == "NT" || second == "LO" || second == "OK" || second == "HI" ||
      second == "--") {
    reading.net = second == "NT";
    next = 2;
  }
  if (next >= fields.size()) return garbage(protocol, line, "no value after the header");
  // The unit may follow the value after another comma ("+  1.234,kg"): join the rest again.
  const std::size_t offset = static_cast<std::size_t>(fields[next].data() - line.data());
  const std::string_view rest = line.substr(offset);

  if (head == "OL") {
    // The value of an overload frame is a placeholder (A&D "+9999999E+19"): only its sign counts.
    reading.status =
        trim(rest).starts_with('-') ? Reading::Status::underload : Reading::Status::overload;
    return reading;
  }
  if (head == "QT") {
    return garbage(protocol, line, "counting mode (QT); set the balance to weighing mode");
  }
  if (head != "ST" && head != "US") {
    return garbage(protocol, line, "header is not ST, US or OL");
  }
  const auto vu = parse_value_unit(rest);
  if (!vu || !vu->rest.empty())
    return garbage(protocol, line, "expected a signed value and a unit");
  auto kg = to_kg(protocol, line, *vu);
  if (!kg) return std::unexpected(kg.error());
  reading.kilograms = *kg;
  reading.status = head == "ST" ? Reading::Status::ok : Reading::Status::motion;
  return reading;
}

std::uint8_t toledo_sum(std::string_view bytes) {
  unsigned sum = 0;
  for (const char c : bytes)
    sum += static_cast<unsigned char>(c) & 0x7fU;
  return static_cast<std::uint8_t>(sum & 0x7fU);
}

}  // namespace

std::string_view protocol_name(Protocol protocol) {
  for (const auto& p : k_protocols)
    if (p.protocol == protocol) return p.name;
  return "?";
}

std::optional<Protocol> protocol_from_name(std::string_view name) {
  for (const auto& p : k_protocols)
    if (p.name == name) return p.protocol;
  return std::nullopt;
}

const std::vector<std::string_view>& protocol_names() {
  static const std::vector<std::string_view> names = [] {
    std::vector<std::string_view> out;
    for (const auto& p : k_protocols)
      out.push_back(p.name);
    return out;
  }();
  return names;
}

std::optional<double> kilograms_per_unit(std::string_view unit) {
  const std::string u = lower(unit);
  if (u == "kg") return 1.0;
  if (u == "g") return 1e-3;
  if (u == "mg") return 1e-6;
  if (u == "t") return 1e3;
  if (u == "lb" || u == "lbs") return 0.45359237;
  if (u == "oz") return 0.028349523125;
  return std::nullopt;
}

// ---- splitting ----

void FrameSplitter::reset() {
  m_frame.clear();
  m_in_frame = false;
  m_dropping = false;
  m_held.reset();
}

void FrameSplitter::drop() {
  if (!m_dropping) ++m_garbage;
  m_dropping = true;
}

void FrameSplitter::feed(std::string_view bytes, std::vector<std::string>& out) {
  for (const char c : bytes) {
    switch (m_protocol) {
      case Protocol::toledo:
        feed_toledo(c, out);
        break;
      case Protocol::hid:
        feed_hid(c, out);
        break;
      default:
        feed_text(c, out);
        break;
    }
  }
}

void FrameSplitter::feed_text(char c, std::vector<std::string>& out) {
  if (c == '\r' || c == '\n') {
    if (!m_dropping && !m_frame.empty()) out.push_back(m_frame);
    m_frame.clear();
    m_dropping = false;
    return;
  }
  if (m_dropping) return;
  if (m_frame.size() >= k_max_line) {
    m_frame.clear();
    drop();
    return;
  }
  m_frame += c;
}

void FrameSplitter::feed_toledo(char c, std::vector<std::string>& out) {
  const char bits = static_cast<char>(static_cast<unsigned char>(c) & 0x7fU);
  if (m_held) {
    // The byte after CR: the checksum, unless this indicator sends none and a new frame starts.
    if (m_checksum == Checksum::present || (m_checksum == Checksum::unknown && bits != k_stx)) {
      m_checksum = Checksum::present;
      out.push_back(*m_held + c);
      m_held.reset();
      return;
    }
    m_checksum = Checksum::absent;
    out.push_back(*m_held);
    m_held.reset();
  }
  if (bits == k_stx) {
    if (m_in_frame) drop();  // a frame cut short: restart at the new STX
    m_frame.assign(1, c);
    m_in_frame = true;
    m_dropping = false;
    return;
  }
  if (!m_in_frame) {
    drop();
    return;
  }
  m_frame += c;
  if (bits == '\r') {
    m_in_frame = false;
    if (m_checksum == Checksum::absent) {
      out.push_back(m_frame);
      // A checksum byte after CR in a stream that had none means the indicator was reconfigured.
    } else {
      m_held = m_frame;
    }
    m_frame.clear();
  } else if (m_frame.size() > 20) {
    m_frame.clear();
    m_in_frame = false;
    drop();
  }
}

void FrameSplitter::feed_hid(char c, std::vector<std::string>& out) {
  // Reports start with report id 3; anything else before one is noise.
  if (m_frame.empty() && c != '\x03') {
    drop();
    return;
  }
  m_dropping = false;
  m_frame += c;
  if (m_frame.size() == k_hid_report) {
    out.push_back(m_frame);
    m_frame.clear();
  }
}

// ---- parsing ----

Result<Reading> parse_and(std::string_view line) {
  return parse_comma_frame("A&D", line);
}

Result<Reading> parse_st_gs(std::string_view line) {
  return parse_comma_frame("ST,GS", line);
}

Result<Reading> parse_mt_sics(std::string_view line) {
  if (!all_printable(line)) return garbage("MT-SICS", line, "contains control bytes");
  const std::string_view s = trim(line);
  Reading reading;
  // Replies of a balance that did not understand or could not run the command.
  if (s == "ES" || s == "ET" || s == "EL") {
    reading.status = Reading::Status::error;
    return reading;
  }
  if (s.size() < 3 || s[0] != 'S' || s[1] != ' ') {
    return garbage("MT-SICS", line, "expected a reply to S/SI (\"S S …\", \"S D …\")");
  }
  const char code = s[2];
  switch (code) {
    case 'I':
      reading.status = Reading::Status::error;  // busy, or no stable value in time
      return reading;
    case '+':
      reading.status = Reading::Status::overload;
      return reading;
    case '-':
      reading.status = Reading::Status::underload;
      return reading;
    case 'S':
    case 'D':
      break;
    default:
      return garbage("MT-SICS", line, "status is not S, D, I, + or -");
  }
  if (s.size() < 4 || s[3] != ' ') return garbage("MT-SICS", line, "expected a value after status");
  const auto vu = parse_value_unit(s.substr(4));
  if (!vu || !vu->rest.empty()) return garbage("MT-SICS", line, "expected a value and a unit");
  auto kg = to_kg("MT-SICS", line, *vu);
  if (!kg) return std::unexpected(kg.error());
  reading.kilograms = *kg;
  reading.status = code == 'S' ? Reading::Status::ok : Reading::Status::motion;
  return reading;
}

Result<Reading> parse_ohaus(std::string_view line) {
  if (!all_printable(line)) return garbage("OHAUS", line, "contains control bytes");
  Reading reading;
  if (trim(line) == "ES") {
    reading.status = Reading::Status::error;  // the balance refused a command
    return reading;
  }
  const auto vu = parse_value_unit(line);
  if (!vu) return garbage("OHAUS", line, "expected a value and a unit");
  auto kg = to_kg("OHAUS", line, *vu);
  if (!kg) return std::unexpected(kg.error());
  reading.kilograms = *kg;
  reading.status = Reading::Status::ok;
  // After the unit: `?` while unstable, and a gross/net legend on some models.
  for (const std::string_view mark : split(vu->rest, ' ')) {
    if (mark.empty()) continue;
    if (mark == "?") {
      reading.status = Reading::Status::motion;
    } else if (mark == "N" || mark == "NET") {
      reading.net = true;
    } else if (mark != "G" && mark != "GROSS") {
      return garbage("OHAUS", line, fmt::format("unknown mark \"{}\" after the unit", mark));
    }
  }
  return reading;
}

Result<Reading> parse_toledo(std::string_view frame) {
  if (frame.empty() || (static_cast<unsigned char>(frame[0]) & 0x7fU) != 0x02) {
    return garbage("Toledo", frame, "does not start with STX");
  }
  const std::size_t cr = frame.find('\r');
  if (cr == std::string_view::npos) return garbage("Toledo", frame, "no CR");
  if (frame.size() > cr + 2) return garbage("Toledo", frame, "bytes after the checksum");
  if (frame.size() == cr + 2) {
    if (((toledo_sum(frame.substr(0, cr + 1)) +
          (static_cast<unsigned char>(frame[cr + 1]) & 0x7fU)) &
         0x7fU) != 0) {
      return garbage("Toledo", frame, "checksum does not match");
    }
  }
  std::string body;  // SWA SWB SWC and the digits, parity bits cleared
  for (const char c : frame.substr(1, cr - 1))
    body += static_cast<char>(static_cast<unsigned char>(c) & 0x7fU);
  // Six weight digits and six tare digits, some indicators with a space between.
  if (body.size() == 16 && body[9] == ' ') body.erase(9, 1);
  if (body.size() != 15) return garbage("Toledo", frame, "expected 3 status bytes and 12 digits");
  const auto swa = static_cast<unsigned char>(body[0]);
  const auto swb = static_cast<unsigned char>(body[1]);
  const auto swc = static_cast<unsigned char>(body[2]);
  // Bit 5 of every status word is always set: a cheap check that we are in sync.
  if ((swa & 0x20U) == 0 || (swb & 0x20U) == 0 || (swc & 0x20U) == 0) {
    return garbage("Toledo", frame, "status words lack their fixed bit 5");
  }
  std::int64_t raw = 0;
  // Leading zeros may be sent as spaces.
  for (std::size_t i = 3; i < 9; ++i) {
    const char d = body[i];
    if (d != ' ' && (d < '0' || d > '9')) return garbage("Toledo", frame, "weight is not digits");
    raw = raw * 10 + (d == ' ' ? 0 : d - '0');
  }
  for (std::size_t i = 9; i < 15; ++i) {
    const char d = body[i];
    if (d != ' ' && (d < '0' || d > '9')) return garbage("Toledo", frame, "tare is not digits");
  }
  Reading reading;
  reading.net = (swb & 0x01U) != 0;
  const bool negative = (swb & 0x02U) != 0;
  if ((swb & 0x04U) != 0) {
    reading.status = negative ? Reading::Status::underload : Reading::Status::overload;
    return reading;
  }
  // SWA bits 0-2: 0 → ×100, 1 → ×10, 2 → ×1, 3 → 0.1 … 7 → 0.00001.
  const int decimal = static_cast<int>(swa & 0x07U);
  double value = static_cast<double>(raw) * std::pow(10.0, 2 - decimal);
  if (negative) value = -value;
  double factor = 0;
  switch (swc & 0x07U) {
    case 0:
      factor = (swb & 0x10U) != 0 ? 1.0 : 0.45359237;  // SWB bit 4: kg, else lb
      break;
    case 1:
      factor = 1e-3;
      break;
    case 2:
      factor = 1e3;
      break;
    case 3:
      factor = 0.028349523125;
      break;
    default:
      return garbage(
          "Toledo", frame,
          fmt::format("unit code {} (SWC bits 0-2) is not g, kg, lb, oz or t", swc & 0x07U));
  }
  reading.kilograms = round_kg(value * factor);
  reading.status = (swb & 0x08U) != 0 ? Reading::Status::motion : Reading::Status::ok;
  return reading;
}

Result<Reading> parse_hid(std::span<const std::uint8_t> report) {
  const std::string_view as_text(reinterpret_cast<const char*>(report.data()), report.size());
  if (report.size() != k_hid_report) return garbage("HID", as_text, "a report has 6 bytes");
  if (report[0] != 3) return garbage("HID", as_text, "not a data report (id 3)");
  Reading reading;
  switch (report[1]) {
    case 1:  // fault
    case 7:  // needs calibration
    case 8:  // needs re-zeroing
      reading.status = Reading::Status::error;
      return reading;
    case 2:  // stable at zero
      reading.status = Reading::Status::ok;
      return reading;
    case 3:
      reading.status = Reading::Status::motion;
      return reading;
    case 4:
      reading.status = Reading::Status::ok;
      break;
    case 5:
      reading.status = Reading::Status::underload;
      return reading;
    case 6:
      reading.status = Reading::Status::overload;
      return reading;
    default:
      return garbage("HID", as_text, fmt::format("unknown status {}", report[1]));
  }
  double factor = 0;
  switch (report[2]) {
    case 1:
      factor = 1e-6;
      break;
    case 2:
      factor = 1e-3;
      break;
    case 3:
      factor = 1.0;
      break;
    case 8:
      factor = 1e3;
      break;
    case 11:
      factor = 0.028349523125;
      break;
    case 12:
      factor = 0.45359237;
      break;
    default:
      return garbage("HID", as_text,
                     fmt::format("unit {} is not mg, g, kg, t, oz or lb", report[2]));
  }
  const auto exponent = static_cast<std::int8_t>(report[3]);
  const unsigned raw = report[4] | (static_cast<unsigned>(report[5]) << 8U);
  reading.kilograms = round_kg(static_cast<double>(raw) * std::pow(10.0, exponent) * factor);
  return reading;
}

Result<Reading> parse_frame(Protocol protocol, std::string_view frame) {
  switch (protocol) {
    case Protocol::and_standard:
      return parse_and(frame);
    case Protocol::st_gs:
      return parse_st_gs(frame);
    case Protocol::mt_sics:
      return parse_mt_sics(frame);
    case Protocol::ohaus:
      return parse_ohaus(frame);
    case Protocol::toledo:
      return parse_toledo(frame);
    case Protocol::hid:
      return parse_hid(
          std::span(reinterpret_cast<const std::uint8_t*>(frame.data()), frame.size()));
  }
  return fail(ErrorCode::internal, "unknown scale protocol");
}

// ---- stability ----

Stability::Stability(int stable_readings, double resolution_kg)
    : m_needed(std::max(1, stable_readings)), m_resolution(std::max(0.0, resolution_kg)) {}

bool Stability::same(double a, double b) const {
  // Half a microgram of slack: values went through unit conversion and rounding.
  return std::fabs(a - b) <= m_resolution + 5e-10;
}

void Stability::reset() {
  m_count = 0;
  m_reported.reset();
}

std::optional<Reading> Stability::add(const Reading& reading) {
  if (reading.status != Reading::Status::ok) {
    // The load moved or the scale cannot weigh: whatever settles next is a new weighing.
    m_count = 0;
    m_reported.reset();
    return std::nullopt;
  }
  if (m_count > 0 && same(reading.kilograms, m_candidate) && reading.net == m_candidate_net) {
    ++m_count;
  } else {
    m_candidate = reading.kilograms;
    m_candidate_net = reading.net;
    m_count = 1;
  }
  if (m_count != m_needed) return std::nullopt;
  if (m_reported && same(*m_reported, m_candidate)) return std::nullopt;
  m_reported = m_candidate;
  Reading settled;
  settled.status = Reading::Status::ok;
  settled.kilograms = m_candidate;
  settled.net = m_candidate_net;
  return settled;
}

}  // namespace agent::scale
