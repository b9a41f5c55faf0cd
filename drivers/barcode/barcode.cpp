// SPDX-License-Identifier: AGPL-3.0-or-later
// The `barcode` driver: runs one scanner alone, to set it up and watch it. It logs every scan
// (info) and shows the last one and the counters in `reflow-agent status`; it emits no events
// (the `station` kind turns scans into events).
#include <mutex>
#include <optional>

#include <reflow/core/units.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/device/driver_table.hpp>

#include "key_event_source.hpp"
#include "scanner.hpp"

namespace agent {
namespace barcode {
namespace {

class BarcodeDriver final : public Driver {
 public:
  BarcodeDriver(ScannerConfig config, std::string name, Env& env, Logger& log,
                KeyEventSourceFactory open_keys)
      : m_log(log),
        m_component(fmt::format("driver barcode/{}", name)),
        m_reader(
            make_scanner_reader(std::move(config), env, log, m_component, std::move(open_keys))) {}
  ~BarcodeDriver() override { stop(); }

  Status start(EventSink&, const std::filesystem::path&) override {
    return m_reader->start([this](const Scan& scan) { on_scan(scan); });
  }

  void stop() override { m_reader->stop(); }

  DriverHealth health() const override {
    const ScannerHealth scanner = m_reader->health();
    std::string last = "no scan yet";
    {
      std::lock_guard lock(m_mutex);
      if (m_last)
        last = fmt::format("last {} \"{}\" ({})", format_rfc3339_ms(m_last->unix_ms), m_last->code,
                           m_last->label.empty() ? "no pattern matched" : m_last->label);
    }
    DriverHealth health;
    health.state =
        fmt::format("{}; {} scans, {} unmatched, {} fragments, {} malformed; {}", scanner.state,
                    scanner.scans, scanner.unmatched, scanner.fragments, scanner.malformed, last);
    health.errors = scanner.errors;
    health.malformed = scanner.malformed + scanner.fragments;
    health.last_error = scanner.last_error;
    health.last_error_unix_ms = scanner.last_error_unix_ms;
    return health;
  }

 private:
  void on_scan(const Scan& scan) {
    m_log.info(m_component, "scanned \"{}\" ({})", scan.code,
               scan.label.empty() ? "no pattern matched" : scan.label);
    std::lock_guard lock(m_mutex);
    m_last = scan;
  }

  Logger& m_log;
  std::string m_component;
  std::unique_ptr<ScannerReader> m_reader;
  mutable std::mutex m_mutex;
  std::optional<Scan> m_last;
};

class BarcodeKind final : public DriverKind {
 public:
  std::string_view kind() const override { return "barcode"; }
  std::string_view summary() const override {
    return "USB and serial barcode/QR scanners (evdev, CDC-ACM, hidraw); checks a scanner for a "
           "station";
  }
  const std::vector<DriverKeyInfo>& keys() const override { return scanner_keys(""); }

  Result<std::unique_ptr<Driver>> create(const DriverConfig& config, Env& env,
                                         Logger& log) const override {
    DriverTable table(config);
    if (Status known = table.check_keys(keys()); !known) return std::unexpected(known.error());
    auto scanner = parse_scanner_config(table, "");
    if (!scanner) return std::unexpected(scanner.error());
    return make_barcode_driver(std::move(*scanner), config.name, env, log,
                               [&env](const std::filesystem::path& path, bool grab) {
                                 return open_evdev_source(path, grab, env);
                               });
  }
};

}  // namespace

std::unique_ptr<Driver> make_barcode_driver(ScannerConfig config, std::string name, Env& env,
                                            Logger& log, KeyEventSourceFactory open_keys) {
  return std::make_unique<BarcodeDriver>(std::move(config), std::move(name), env, log,
                                         std::move(open_keys));
}

}  // namespace barcode

const DriverKind& barcode_driver_kind() {
  static const barcode::BarcodeKind kind;
  return kind;
}

}  // namespace agent
