// SPDX-License-Identifier: AGPL-3.0-or-later
// Pure protocol code of the scale driver: splitting a byte stream into frames, parsing one frame of
// each protocol (docs/reference/drivers.md §6) and deciding when a reading has settled. No I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <reflow/core/result.hpp>

#include "scale_reader.hpp"

namespace agent::scale {

/// The config spelling of a protocol ("and", "st_gs", "mt_sics", "ohaus", "toledo", "hid").
std::string_view protocol_name(Protocol protocol);
std::optional<Protocol> protocol_from_name(std::string_view name);
const std::vector<std::string_view>& protocol_names();

/// Cuts a byte stream into frames. Text protocols end a frame at CR or LF (empty lines are
/// skipped); Toledo frames run from STX to CR, followed by a checksum byte when the indicator sends
/// one (detected from the stream); HID reports are 6 bytes starting with report id 3. Bytes that
/// belong to no frame (line noise, a frame cut by a reconnect, an over-long line) are dropped and
/// counted in `garbage()` once per run. A frame split across reads is joined.
class FrameSplitter {
 public:
  explicit FrameSplitter(Protocol protocol) : m_protocol(protocol) {}

  /// Adds bytes; complete frames are appended to `out`.
  void feed(std::string_view bytes, std::vector<std::string>& out);
  /// Runs of bytes dropped so far.
  std::uint64_t garbage() const { return m_garbage; }
  /// Forgets a partial frame (after a reconnect).
  void reset();

 private:
  void feed_text(char c, std::vector<std::string>& out);
  void feed_toledo(char c, std::vector<std::string>& out);
  void feed_hid(char c, std::vector<std::string>& out);
  void drop();

  enum class Checksum { unknown, present, absent };
  Protocol m_protocol;
  std::string m_frame;
  bool m_in_frame = false;            // Toledo: inside STX … CR
  bool m_dropping = false;            // inside a run of garbage (counted once)
  std::optional<std::string> m_held;  // Toledo: a frame waiting for its checksum byte
  Checksum m_checksum = Checksum::unknown;
  std::uint64_t m_garbage = 0;
};

/// Parses one frame of `protocol` (as FrameSplitter cut it: text without CR/LF; Toledo from STX up
/// to CR plus the checksum byte if any; 6 HID bytes). Values are converted to kilograms and rounded
/// to a microgram so that unit conversions leave no float noise. Errors: invalid_argument saying
/// what was wrong (the frame is garbage: count it and skip it).
Result<Reading> parse_frame(Protocol protocol, std::string_view frame);

Result<Reading> parse_and(std::string_view line);      ///< A&D `ST,+00123.45  g`
Result<Reading> parse_st_gs(std::string_view line);    ///< `ST,GS,+  1.234,kg`
Result<Reading> parse_mt_sics(std::string_view line);  ///< `S S     100.00 g`
Result<Reading> parse_ohaus(std::string_view line);    ///< `     192.21 g  `
Result<Reading> parse_toledo(std::string_view frame);  ///< STX SWA SWB SWC w×6 t×6 CR [CHK]
Result<Reading> parse_hid(std::span<const std::uint8_t> report);  ///< 6-byte POS scale report

/// Kilograms per one `unit` ("g", "kg", "mg", "lb", "oz", "t"; case-insensitive), or nothing.
std::optional<double> kilograms_per_unit(std::string_view unit);

/// Decides when readings have settled: `stable_readings` consecutive stable (status ok) readings
/// whose values are within `resolution_kg` of the first make a weight. A settled value is reported
/// once; the same value again only after motion, an overload/underload/error or a different value
/// came in between. Stable zero is a weight like any other (the pan was emptied).
class Stability {
 public:
  Stability(int stable_readings, double resolution_kg);
  /// Feeds one reading; returns the settled reading when this one settles a weight.
  std::optional<Reading> add(const Reading& reading);
  /// Forgets everything (after a reconnect: the next settled value is reported even if equal).
  void reset();

 private:
  bool same(double a, double b) const;
  int m_needed;
  double m_resolution;
  int m_count = 0;
  double m_candidate = 0;
  bool m_candidate_net = false;
  std::optional<double> m_reported;
};

}  // namespace agent::scale
