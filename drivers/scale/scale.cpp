// SPDX-License-Identifier: AGPL-3.0-or-later
// The `scale` driver: runs one scale alone, to check it before it goes into a station. It logs
// every stable weight and shows the last one in `reflow-agent status`; it emits no events (only
// the station turns weights into economic events).
#include <mutex>

#include <reflow/device/driver.hpp>
#include <reflow/device/driver_table.hpp>

#include "frames.hpp"
#include "scale_reader.hpp"

namespace agent {
namespace {

class ScaleDriver final : public Driver {
 public:
  ScaleDriver(std::string name, scale::ScaleConfig config, Env& env, Logger& log)
      : m_name(std::move(name)),
        m_component(fmt::format("driver scale/{}", m_name)),
        m_config(std::move(config)),
        m_env(env),
        m_log(log) {}
  ~ScaleDriver() override { stop(); }

  Status start(EventSink&, const std::filesystem::path&) override {
    if (m_reader) return {};
    m_reader = scale::make_scale_reader(m_config, m_env, m_log, m_component);
    // The reader waits for an absent scale by itself: starting never fails for that.
    return m_reader->start([this](const scale::Weight& weight) {
      m_log.info(m_component, "stable weight {} kg{}", weight.kilograms,
                 weight.net ? " (net)" : "");
    });
  }

  void stop() override {
    if (m_reader) m_reader->stop();
  }

  DriverHealth health() const override {
    DriverHealth out;
    if (!m_reader) {
      out.state = "stopped";
      return out;
    }
    const scale::ScaleHealth h = m_reader->health();
    out.state = h.weights == 0
                    ? fmt::format("{}; no stable weight yet; {} frames", h.state, h.frames)
                    : fmt::format(
                          "{}; last stable weight {} kg; {} weights, {} frames, {} "
                          "overload/underload",
                          h.state, h.last_kilograms, h.weights, h.frames, h.overloads);
    out.events = 0;
    out.errors = h.errors;
    out.malformed = h.malformed;
    out.last_error = h.last_error;
    out.last_error_unix_ms = h.last_error_unix_ms;
    return out;
  }

 private:
  const std::string m_name;
  const std::string m_component;
  const scale::ScaleConfig m_config;
  Env& m_env;
  Logger& m_log;
  std::unique_ptr<scale::ScaleReader> m_reader;
};

class ScaleKind final : public DriverKind {
 public:
  std::string_view kind() const override { return "scale"; }
  std::string_view summary() const override {
    return "serial and USB HID scales (A&D, generic ST/GS, MT-SICS, OHAUS, Toledo, Dymo); checks a "
           "scale for a station";
  }
  const std::vector<DriverKeyInfo>& keys() const override { return scale::scale_keys(""); }
  Result<std::unique_ptr<Driver>> create(const DriverConfig& config, Env& env,
                                         Logger& log) const override {
    DriverTable table(config);
    if (Status checked = table.check_keys(keys()); !checked)
      return std::unexpected(checked.error());
    auto parsed = scale::parse_scale_config(table, "");
    if (!parsed) return std::unexpected(parsed.error());
    return std::unique_ptr<Driver>(
        std::make_unique<ScaleDriver>(config.name, std::move(*parsed), env, log));
  }
};

}  // namespace

const DriverKind& scale_driver_kind() {
  static const ScaleKind kind;
  return kind;
}

}  // namespace agent
