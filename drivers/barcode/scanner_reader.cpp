// SPDX-License-Identifier: AGPL-3.0-or-later
// The scanner part shared by the `barcode` and `station` kinds: its keys, their parsing and the
// reader thread (evdev through KeyEventSource, serial through SerialPort, hidraw directly).
#include <fcntl.h>
#include <linux/input-event-codes.h>
#include <poll.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>

#include <reflow/core/units.hpp>
#include <reflow/device/driver_table.hpp>
#include <reflow/drivers/driver_thread.hpp>

#include "key_event_source.hpp"
#include "line_decoder.hpp"
#include "scanner.hpp"

namespace agent::barcode {
namespace {

constexpr std::chrono::seconds k_retry_min{1};
constexpr std::chrono::seconds k_retry_max{30};
// With nothing being typed the thread still wakes now and then; nothing depends on it.
constexpr std::chrono::hours k_idle_wake{1};
// SerialPort and hidraw waits are in real time (SerialPort's contract); a stop is noticed
// within 100 ms either way.
constexpr std::chrono::seconds k_device_wait{1};
constexpr std::chrono::milliseconds k_reader_poll_slice{100};
// std::regex recurses per character: longer codes are not matched against patterns (they are
// still reported, unmatched) so a long QR code cannot exhaust the thread's stack.
constexpr std::size_t k_max_matched_bytes = 1024;

constexpr std::array<DriverKeyInfo, 9> k_keys = {{
    {"path", "string", "(required)",
     "the scanner's device: /dev/input/by-id/…-event-kbd (keyboard mode), "
     "/dev/serial/by-id/… (serial mode) or /dev/hidrawN"},
    {"mode", "string", "from the path",
     "\"evdev\" (keyboard emulation), \"serial\" (CDC-ACM/RS-232, CR/LF-terminated) or "
     "\"hidraw\"; default: evdev for /dev/input/…, hidraw for …hidraw…, else serial"},
    {"access", "string", "\"exclusive\"",
     "evdev: \"exclusive\" grabs the keyboard so scans do not reach a console; \"shared\" does "
     "not"},
    {"inter_key_timeout", "duration", "\"200ms\"",
     "evdev and hidraw: a pause this long inside a code drops what was typed (a fragment)"},
    {"baud", "integer", "9600", "serial: baud rate (CDC-ACM scanners ignore it)"},
    {"data_bits", "integer", "8", "serial: 7 or 8"},
    {"parity", "string", "\"none\"", "serial: \"none\", \"even\" or \"odd\""},
    {"stop_bits", "integer", "1", "serial: 1 or 2"},
    {"patterns", "string", "\"\" (none)",
     "label classes, one `name = regex` per line (ECMAScript, whole code); the first match "
     "names the scan"},
}};

Result<ScannerMode> parse_mode(std::string_view text) {
  if (text == "evdev") return ScannerMode::evdev;
  if (text == "serial") return ScannerMode::serial;
  if (text == "hidraw") return ScannerMode::hidraw;
  return fail(ErrorCode::invalid_config, "bad mode");
}

std::string_view default_mode(std::string_view path) {
  if (path.starts_with("/dev/input/")) return "evdev";
  if (path.find("hidraw") != std::string_view::npos) return "hidraw";
  return "serial";
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())))
    s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
    s.remove_suffix(1);
  return s;
}

Result<std::vector<CodePattern>> parse_patterns(const DriverTable& table, const std::string& key,
                                                std::string_view text) {
  std::vector<CodePattern> patterns;
  std::size_t number = 0;
  std::size_t begin = 0;
  while (begin <= text.size()) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = trim(text.substr(begin, end - begin));
    begin = end + 1;
    ++number;
    if (line.empty() || line.starts_with('#')) continue;
    const auto bad = [&](std::string_view what) {
      return std::unexpected(table.error(
          key, fmt::format("pattern line {} (\"{}\"): {}; expected `name = regex` per line, e.g. "
                           "`batch = ^urn:example:batch:[0-9A-Za-z-]+$`",
                           number, line, what)));
    };
    const std::size_t eq = line.find('=');
    if (eq == std::string_view::npos) return bad("no `=`");
    const std::string name(trim(line.substr(0, eq)));
    const std::string source(trim(line.substr(eq + 1)));
    if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
        }))
      return bad("the name must be letters, digits, `_` or `-`");
    if (source.empty()) return bad("the regex is empty");
    for (const CodePattern& p : patterns)
      if (p.name == name) return bad(fmt::format("`{}` is named twice", name));
    try {
      patterns.push_back({name, source, std::regex(source, std::regex::ECMAScript)});
    } catch (const std::regex_error& e) {
      return bad(fmt::format("the regex of `{}` is invalid: {}", name, e.what()));
    }
  }
  return patterns;
}

class Reader final : public ScannerReader {
 public:
  Reader(ScannerConfig config, Env& env, Logger& log, std::string log_name,
         KeyEventSourceFactory open_keys)
      : m_config(std::move(config)),
        m_env(env),
        m_log(log),
        m_component(std::move(log_name)),
        m_open_keys(std::move(open_keys)),
        m_keys(m_config.inter_key_timeout) {
    m_worker.set_state("not started");
  }
  ~Reader() override { stop(); }

  Status start(std::function<void(const Scan&)> on_scan) override {
    if (m_worker.running()) return {};
    m_on_scan = std::move(on_scan);
    set_state("opening");
    return m_worker.start(m_component, [this](std::stop_token stop) { run(stop); });
  }

  void stop() override {
    if (!m_worker.running()) return;
    m_worker.stop();
    set_state("stopped");
  }

  ScannerHealth health() const override { return m_worker.health(); }

 private:
  // A session ended: `connected` tells whether the device was opened at all.
  struct Outcome {
    Status status;
    bool connected = false;
  };

  void run(std::stop_token stop) {
    auto backoff = std::chrono::duration_cast<std::chrono::milliseconds>(k_retry_min);
    while (!stop.stop_requested()) {
      Outcome outcome = m_config.mode == ScannerMode::evdev    ? run_evdev(stop)
                        : m_config.mode == ScannerMode::serial ? run_serial(stop)
                                                               : run_hidraw(stop);
      if (stop.stop_requested()) break;
      if (outcome.connected) backoff = k_retry_min;
      const Error error =
          outcome.status ? Error{ErrorCode::io, "the device closed"} : outcome.status.error();
      note_error(error, backoff);
      if (!m_env.sleep_for(backoff, stop)) break;
      backoff = std::min<std::chrono::milliseconds>(backoff * 2, k_retry_max);
    }
  }

  Outcome run_evdev(std::stop_token stop) {
    auto source = m_open_keys(m_config.path, m_config.grab);
    if (!source) return {std::unexpected(source.error()), false};
    note_connected();
    m_keys.reset();
    auto last_key = m_env.steady_now();
    while (!stop.stop_requested()) {
      const auto deadline = m_keys.pending() ? last_key + m_config.inter_key_timeout
                                             : m_env.steady_now() + k_idle_wake;
      auto events = (*source)->wait(deadline, stop);
      if (!events) {
        m_keys.reset();
        sync_key_counters();
        return {std::unexpected(events.error()), true};
      }
      bool typed = false;
      for (const KeyEvent& e : *events) {
        typed = typed || e.type == EV_KEY;
        if (auto code = m_keys.feed(e)) deliver(std::move(*code));
        sync_key_counters();
      }
      if (typed) {
        last_key = m_env.steady_now();
      } else if (m_keys.pending() && m_env.steady_now() >= last_key + m_config.inter_key_timeout) {
        m_keys.drop_fragment();
        sync_key_counters();
      }
    }
    m_keys.reset();
    return {{}, true};
  }

  Outcome run_serial(std::stop_token stop) {
    auto port = SerialPort::open(m_config.path, m_config.serial);
    if (!port) return {std::unexpected(port.error()), false};
    note_connected();
    LineDecoder lines;
    std::array<std::byte, 512> buffer{};
    std::uint64_t overlong = 0;
    while (!stop.stop_requested()) {
      auto n = (*port)->read(buffer, std::chrono::steady_clock::now() + k_device_wait, stop);
      if (!n) {
        drop_partial(lines.drop());
        return {std::unexpected(n.error()), true};
      }
      for (std::string& code :
           lines.feed(std::string_view(reinterpret_cast<const char*>(buffer.data()), *n)))
        deliver(std::move(code));
      if (lines.overlong() != overlong) {
        overlong = lines.overlong();
        note_malformed(
            fmt::format("a line longer than {} bytes was discarded (is this a "
                        "scanner? is its CR/LF suffix programmed?)",
                        k_max_code_bytes));
      }
    }
    return {{}, true};
  }

  Outcome run_hidraw(std::stop_token stop) {
    const int fd = ::open(m_config.path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      const bool gone = err == ENOENT || err == ENODEV || err == ENXIO;
      const std::string hint = err == EACCES ? " (a udev rule must give the agent's group access, "
                                               "see drivers/barcode/README.md)"
                               : gone        ? " (scanner unplugged?)"
                                             : "";
      return {fail(gone || err == EACCES ? ErrorCode::device_unavailable : ErrorCode::io,
                   fmt::format("{}: open failed: {}{}", m_config.path, std::strerror(err), hint)),
              false};
    }
    note_connected();
    HidrawDecoder reports;
    std::uint64_t malformed = 0;
    auto last_report = m_env.steady_now();
    Status status;
    while (!stop.stop_requested()) {
      pollfd p{fd, POLLIN, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(k_reader_poll_slice.count()));
      if (ready < 0 && errno != EINTR) {
        status = fail(ErrorCode::io,
                      fmt::format("{}: poll failed: {}", m_config.path, std::strerror(errno)));
        break;
      }
      if (ready > 0 && (p.revents & POLLIN)) {
        std::array<std::uint8_t, k_hidraw_report_bytes> report{};
        const ssize_t got = ::read(fd, report.data(), report.size());
        if (got < 0 && errno != EAGAIN && errno != EINTR) {
          status = fail(ErrorCode::device_unavailable,
                        fmt::format("{}: read failed: {} (scanner unplugged?)", m_config.path,
                                    std::strerror(errno)));
          break;
        }
        if (got > 0) {
          last_report = m_env.steady_now();
          for (std::string& code :
               reports.feed(std::span<const std::uint8_t>(report.data(), std::size_t(got))))
            deliver(std::move(code));
          if (reports.malformed() != malformed) {
            malformed = reports.malformed();
            note_malformed("a report was malformed (length byte beyond the data) or too long");
          }
        }
      } else if (ready > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL))) {
        status = fail(ErrorCode::device_unavailable,
                      fmt::format("{}: the device went away (scanner unplugged?)", m_config.path));
        break;
      }
      if (reports.pending() && m_env.steady_now() >= last_report + m_config.inter_key_timeout)
        drop_partial(reports.drop());
    }
    drop_partial(reports.drop());
    ::close(fd);
    return {status, true};
  }

  void deliver(std::string code) {
    Scan scan;
    scan.code = std::move(code);
    scan.unix_ms = m_env.now_unix_ms();
    scan.at = m_env.steady_now();
    bool unmatched = false;
    if (m_config.patterns.empty()) {
      scan.label = "code";
    } else {
      if (scan.code.size() <= k_max_matched_bytes)
        for (const CodePattern& p : m_config.patterns)
          if (std::regex_match(scan.code, p.regex)) {
            scan.label = p.name;
            break;
          }
      unmatched = scan.label.empty();
    }
    m_worker.update([&](ScannerHealth& h) {
      ++h.scans;
      if (unmatched) ++h.unmatched;
    });
    m_log.debug(m_component, "scanned \"{}\" ({})", scan.code,
                unmatched ? "no pattern matched" : scan.label);
    if (m_on_scan) m_on_scan(scan);
  }

  // Carries the decoder's counters into health and logs what it dropped.
  void sync_key_counters() {
    std::uint64_t fragments = m_keys.fragments();
    std::uint64_t malformed = m_keys.malformed();
    bool new_fragment = false;
    bool new_malformed = false;
    new_fragment = fragments > m_key_fragments;
    new_malformed = malformed > m_key_malformed;
    m_worker.update([&](ScannerHealth& h) {
      h.fragments += fragments - m_key_fragments;
      h.malformed += malformed - m_key_malformed;
    });
    m_key_fragments = fragments;
    m_key_malformed = malformed;
    if (new_fragment)
      m_log.warning(m_component,
                    "dropped the fragment \"{}\": no key for {} (a code read halfway, or the "
                    "scanner's Enter suffix is not programmed)",
                    m_keys.last_dropped(), format_duration(m_config.inter_key_timeout));
    if (new_malformed)
      m_log.warning(m_component,
                    "the key {} is not on the US key table; the code being typed is dropped "
                    "(program the scanner for a US keyboard, see drivers/barcode/README.md)",
                    m_keys.last_unknown());
  }

  void drop_partial(const std::string& partial) {
    if (partial.empty()) return;
    m_worker.update([](ScannerHealth& h) { ++h.fragments; });
    m_log.warning(m_component,
                  "dropped the incomplete code \"{}\" (no CR/LF before a pause or "
                  "the device closing)",
                  partial);
  }

  void note_malformed(const std::string& what) {
    m_worker.update([](ScannerHealth& h) { ++h.malformed; });
    m_log.warning(m_component, "{}: {}", m_config.path, what);
  }

  void note_connected() {
    set_state("connected");
    m_logged_error.clear();
    m_log.info(m_component, "reading scanner {} ({})", m_config.path,
               m_config.mode == ScannerMode::evdev ? (m_config.grab ? "evdev, exclusive" : "evdev")
               : m_config.mode == ScannerMode::serial ? "serial"
                                                      : "hidraw");
  }

  void note_error(const Error& error, std::chrono::milliseconds retry) {
    m_worker.update([&](ScannerHealth& h) {
      ++h.errors;
      h.last_error = error.message;
      h.last_error_unix_ms = m_env.now_unix_ms();
      h.state = "waiting for device";
    });
    if (error.message == m_logged_error) return;
    m_logged_error = error.message;
    m_log.warning(m_component, "{}; retrying in {}, then up to every {}", error.message,
                  format_duration(retry), format_duration(k_retry_max));
  }

  void set_state(std::string state) { m_worker.set_state(std::move(state)); }

  ScannerConfig m_config;
  Env& m_env;
  Logger& m_log;
  std::string m_component;
  KeyEventSourceFactory m_open_keys;
  std::function<void(const Scan&)> m_on_scan;

  // Used by the thread alone.
  KeyDecoder m_keys;
  std::uint64_t m_key_fragments = 0;
  std::uint64_t m_key_malformed = 0;
  std::string m_logged_error;

  DriverThread<ScannerHealth> m_worker;  // last: joined before the members it uses go
};

}  // namespace

const std::vector<DriverKeyInfo>& scanner_keys(std::string_view prefix) {
  return prefixed_keys(k_keys, prefix);
}

Result<ScannerConfig> parse_scanner_config(const DriverTable& table, std::string_view prefix) {
  const auto key = [&](std::string_view k) { return prefixed_key(prefix, k); };
  ScannerConfig config;

  auto path = table.string(key("path"), "");
  if (!path) return std::unexpected(path.error());
  if (path->empty())
    return std::unexpected(
        table.error(key("path"), fmt::format("is required: the scanner's device, e.g. {} = "
                                             "\"/dev/input/by-id/usb-Example_Scanner-event-kbd\"",
                                             key("path"))));
  config.path = *path;

  auto mode = table.choice(key("mode"), default_mode(config.path), {"evdev", "serial", "hidraw"});
  if (!mode) return std::unexpected(mode.error());
  config.mode = *parse_mode(*mode);

  auto access = table.choice(key("access"), "exclusive", {"exclusive", "shared"});
  if (!access) return std::unexpected(access.error());
  config.grab = *access == "exclusive";

  auto timeout = table.duration(key("inter_key_timeout"), std::chrono::milliseconds(200));
  if (!timeout) return std::unexpected(timeout.error());
  if (timeout->count() < 10 || *timeout > std::chrono::seconds(10))
    return std::unexpected(table.error(key("inter_key_timeout"),
                                       "must be from 10ms to 10s (scanners type a code in well "
                                       "under a second; 200ms suits most)"));
  config.inter_key_timeout = *timeout;

  auto serial = read_serial_settings(table, prefix);
  if (!serial) return std::unexpected(serial.error());
  config.serial = *serial;

  auto patterns_text = table.string(key("patterns"), "");
  if (!patterns_text) return std::unexpected(patterns_text.error());
  auto patterns = parse_patterns(table, key("patterns"), *patterns_text);
  if (!patterns) return std::unexpected(patterns.error());
  config.patterns = std::move(*patterns);
  return config;
}

std::unique_ptr<ScannerReader> make_scanner_reader(ScannerConfig config, Env& env, Logger& log,
                                                   std::string log_name,
                                                   KeyEventSourceFactory open_keys) {
  return std::make_unique<Reader>(std::move(config), env, log, std::move(log_name),
                                  std::move(open_keys));
}

std::unique_ptr<ScannerReader> make_scanner_reader(ScannerConfig config, Env& env, Logger& log,
                                                   std::string log_name) {
  return make_scanner_reader(std::move(config), env, log, std::move(log_name),
                             [&env](const std::filesystem::path& path, bool grab) {
                               return open_evdev_source(path, grab, env);
                             });
}

}  // namespace agent::barcode
