// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <reflow/core/env.hpp>
#include <reflow/core/logger.hpp>
#include <reflow/core/result.hpp>
#include <reflow/device/driver.hpp>

#include "../barcode/scanner.hpp"
#include "../scale/scale_reader.hpp"

namespace agent::station {

/// The unit of the recorded `resourceQuantity` (OM2 names).
enum class WeightUnit { kilogram, gram };

/// One feedback output: a GPIO line found by name, driven high when "on" unless active-low.
struct OutputRequest {
  std::string line;  ///< line name as `gpioinfo` lists it ("GPIO22")
  bool active_low = false;
  std::string consumer;  ///< shown by `gpioinfo`: "reflow-agent/<name>"
};

/// The validated `[[driver]]` table of kind "station" (README.md documents every key).
struct StationConfig {
  std::string name;
  std::string device_id;  ///< the agent's [agent] device_id (PROTOCOL §1)
  /// A one-action station's action (transferCustody, transfer …); empty for a process station.
  std::string action;
  /// A process station (shredder, extruder, sorting): the word its processes are named by. The
  /// scans of a `batch_label` input, then of an `output_label` output, make one process
  /// "station:<device>:<name>:<process>-<n>" (process_reference; n counts up in state.json, across
  /// restarts): a `consume` of each input (inputOf) and a `produce` of each output (outputOf).
  /// Empty: a one-action station.
  std::string process;
  std::string output_label;                 ///< process station: scans of this pattern are outputs
  std::string output_resource = "{batch}";  ///< the produce's resourceInventoriedAs, `{batch}` …
  std::string output_conforms_to;  ///< the produce's resourceConformsTo: the kind of the output
  /// Process station: the machine's resource (resourceInventoriedAs of its `use`). Set, each
  /// output also records a `use` of it, inputOf the process, effortQuantity the hours since the
  /// process's first input or its previous output (hasBeginning, hasEnd). Empty: no use.
  std::string machine;
  std::string provider;
  std::string receiver;
  std::string at_location;
  /// resourceInventoriedAs: `{batch}` stands for the scanned code (the default: the code itself).
  /// Stations after a hand-over name the receiver's resource as the hand-over's to_resource did.
  std::string resource = "{batch}";
  /// transfer, transferCustody, transferAllRights, move: the receiver's resource the batch goes
  /// into (toResourceInventoriedAs), `{batch}` standing for the scanned code; empty: none (then
  /// zenflows creates a new resource for the receiver, valueflows.md §2d).
  std::string to_resource;
  std::string batch_label = "batch";  ///< scans of this pattern name are batches (the inputs)
  std::chrono::milliseconds window{60'000};
  double tare_kg = 0;
  WeightUnit unit = WeightUnit::kilogram;
  barcode::ScannerConfig scanner;
  std::optional<scale::ScaleConfig> scale;  ///< none: a count-only station (1 `one` per scan)
  std::optional<OutputRequest> led;
  std::optional<OutputRequest> buzzer;
};

const std::vector<DriverKeyInfo>& station_keys();

/// The reference of a process station's n-th process: "station:<device>:<name>:<process>-<n>",
/// e.g. "station:fablab-01:shredder:shred-3". The device id (PROTOCOL §1: no ':') keeps two sites'
/// stations of the same name apart: the node's export makes one zenflows Process per reference.
std::string process_reference(const StationConfig& config, std::int64_t n);

/// Reads and validates the table (the station's own keys, the scanner's with the `scanner_`
/// prefix and the scale's with `scale_`). Errors: invalid_config naming file, line and key.
Result<StationConfig> parse_station_config(const DriverConfig& config);

/// The seam between the station and a feedback output (LED, buzzer). The real one is a libgpiod
/// v1 output line (gpiod_output_line.cpp); tests record what was set and when. Used by the
/// station's thread only; the line is released when the object is destroyed.
class OutputLine {
 public:
  virtual ~OutputLine() = default;
  /// Sets the logical level (true = on; the line's active-low option applies). Errors: io.
  virtual Status set(bool on) = 0;
};

/// Opens an output line, initially off. Errors: device_unavailable (no such line, busy), io.
using OutputLineFactory =
    std::function<Result<std::unique_ptr<OutputLine>>(const OutputRequest& request)>;

/// Makes the (not yet started) readers of the station's devices.
using ScannerFactory =
    std::function<std::unique_ptr<barcode::ScannerReader>(const barcode::ScannerConfig& config)>;
using ScaleFactory =
    std::function<std::unique_ptr<scale::ScaleReader>(const scale::ScaleConfig& config)>;

struct StationDevices {
  ScannerFactory scanner;
  ScaleFactory scale;  ///< not called for a count-only station
  OutputLineFactory output;
};

/// The libgpiod v1 output line: found by name on every chip, requested as output, initially off.
Result<std::unique_ptr<OutputLine>> open_gpiod_output_line(const OutputRequest& request);

/// The driver on any devices: the kind passes the real readers and GPIO lines, tests fakes.
std::unique_ptr<Driver> make_station_driver(StationConfig config, Env& env, Logger& log,
                                            StationDevices devices);

}  // namespace agent::station
