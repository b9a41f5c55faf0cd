// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/device/daemon.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include <reflow/core/jose.hpp>
#include <reflow/core/process.hpp>
#include <reflow/core/units.hpp>
#include <reflow/device/control.hpp>
#include <reflow/device/forwarder.hpp>
#include <reflow/device/outbox.hpp>
#include <reflow/device/writer.hpp>

namespace agent {
namespace {

constexpr std::chrono::seconds k_driver_retry{30};
constexpr std::chrono::seconds k_status_refresh{10};

// An exclusive lock on data_dir/lock for the daemon's lifetime, so two daemons never share an
// outbox. The kernel drops it when the process dies, even by SIGKILL.
class DataDirLock {
 public:
  static Result<DataDirLock> take(const std::filesystem::path& data_dir) {
    const auto path = data_dir / "lock";
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
      return fail(ErrorCode::io,
                  fmt::format("cannot open {}: {}", path.string(), std::strerror(errno)));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd);
      return fail(ErrorCode::busy, fmt::format("another reflow-agent is running with data_dir {}",
                                               data_dir.string()));
    }
    return DataDirLock(fd);
  }
  DataDirLock(DataDirLock&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}
  DataDirLock& operator=(DataDirLock&&) = delete;
  ~DataDirLock() {
    if (m_fd >= 0) ::close(m_fd);
  }

 private:
  explicit DataDirLock(int fd) : m_fd(fd) {}
  int m_fd;
};

Status make_dir(const std::filesystem::path& dir, mode_t mode) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return fail(ErrorCode::io,
                fmt::format("cannot create directory {}: {}", dir.string(), ec.message()));
  if (::chmod(dir.c_str(), mode) != 0 && errno != EPERM)
    return fail(ErrorCode::io,
                fmt::format("cannot chmod {}: {}", dir.string(), std::strerror(errno)));
  return {};
}

// A configured driver and, while it is not running, when to try starting it again.
struct DriverSlot {
  std::string label;  // "sim/printer1"
  std::string name;
  std::string kind;
  std::unique_ptr<Driver> driver;
  std::filesystem::path state_dir;
  bool running = false;
  std::chrono::steady_clock::time_point retry_at{};
  std::string last_error;
  std::int64_t last_error_unix_ms = 0;
};

// Makes the driver instances. A kind that this build lacks, or a bad driver table, stops start-up.
Result<std::vector<DriverSlot>> create_drivers(const AgentConfig& config,
                                               std::span<const DriverKind* const> kinds, Env& env,
                                               Logger& log) {
  std::vector<DriverSlot> slots;
  for (const DriverConfig& dc : config.drivers) {
    const DriverKind* kind = nullptr;
    for (const DriverKind* k : kinds)
      if (k->kind() == dc.kind) kind = k;
    if (!kind) {
      for (const KnownDriverKind& known : known_driver_kinds())
        if (known.kind == dc.kind)
          return fail(ErrorCode::invalid_config,
                      fmt::format("{}: driver \"{}\": kind \"{}\" was not built into this binary; "
                                  "rebuild with -D{}=ON",
                                  dc.file, dc.name, dc.kind, known.cmake_option));
      std::string names;
      for (const DriverKind* k : kinds)
        names += fmt::format("{}{}", names.empty() ? "" : ", ", k->kind());
      return fail(ErrorCode::invalid_config,
                  fmt::format("{}: driver \"{}\": unknown kind \"{}\" (built in: {})", dc.file,
                              dc.name, dc.kind, names.empty() ? "none" : names));
    }
    auto driver = kind->create(dc, env, log);
    if (!driver) return std::unexpected(driver.error());
    DriverSlot slot;
    slot.label = fmt::format("{}/{}", dc.kind, dc.name);
    slot.name = dc.name;
    slot.kind = dc.kind;
    slot.driver = std::move(*driver);
    slot.state_dir = config.driver_state_dir() / dc.name;
    slots.push_back(std::move(slot));
  }
  return slots;
}

void start_due_drivers(std::vector<DriverSlot>& slots, EventSink& sink, Env& env, Logger& log) {
  const auto now = env.steady_now();
  for (DriverSlot& slot : slots) {
    if (slot.running || now < slot.retry_at) continue;
    if (Status dir = make_dir(slot.state_dir, 0750); !dir) {
      slot.last_error = dir.error().message;
      slot.last_error_unix_ms = env.now_unix_ms();
      slot.retry_at = now + k_driver_retry;
      log.error("daemon", "driver {}: {}", slot.label, slot.last_error);
      continue;
    }
    Status started = slot.driver->start(sink, slot.state_dir);
    if (started) {
      slot.running = true;
      slot.last_error.clear();
      log.info("daemon", "driver {} started", slot.label);
    } else {
      slot.last_error = started.error().message;
      slot.last_error_unix_ms = env.now_unix_ms();
      slot.retry_at = now + k_driver_retry;
      log.warning("daemon", "driver {} did not start ({}); retrying in {}", slot.label,
                  slot.last_error, format_duration(k_driver_retry));
    }
  }
}

nlohmann::ordered_json status_json(const AgentConfig& config, Outbox& outbox, Forwarder& forwarder,
                                   Writer& writer, const std::vector<DriverSlot>& drivers,
                                   std::mutex& drivers_mutex, Env& env) {
  const OutboxStats o = outbox.stats();
  const ForwarderStats f = forwarder.stats();
  const std::int64_t now_ms = env.now_unix_ms();
  nlohmann::ordered_json j;
  j["version"] = version();
  j["device"] = config.device_id;
  j["connected"] = f.connected;
  j["since"] = f.state_since_unix_ms > 0
                   ? nlohmann::ordered_json(format_rfc3339_ms(f.state_since_unix_ms))
                   : nlohmann::ordered_json(nullptr);
  j["broker"] = config.url;
  // mqtt.proxy, the HTTP CONNECT proxy the broker is reached through; null: direct.
  j["proxy"] =
      config.proxy.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(config.proxy);
  j["stream"] = o.stream;
  j["last_seq"] = o.last_seq;
  j["acked_seq"] = o.acked_seq;
  j["backlog_events"] = o.backlog_events;
  j["backlog_bytes"] = o.backlog_bytes;
  if (o.oldest_unacked_recorded_ms)
    j["oldest_unacked_s"] =
        std::max<std::int64_t>(0, (now_ms - *o.oldest_unacked_recorded_ms) / 1000);
  else
    j["oldest_unacked_s"] = nullptr;
  j["last_error"] =
      f.last_error.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(f.last_error);
  j["clock"] = env.clock_sync() == ClockSync::synced ? "synced" : "unsynced";
  j["outbox_bytes"] = o.file_bytes;
  j["quota_bytes"] = o.quota_bytes;
  j["refused_quota"] = o.refused_quota + writer.refused_quota();
  j["refused_io"] = o.refused_io;
  j["refused_busy"] = writer.refused_busy();
  j["refused_disk"] = o.refused_disk + writer.refused_disk();
  // Accepted, but zenflows would refuse them at export (writer.hpp zenflows_warnings).
  j["zenflows_warnings"] = writer.zenflows_warnings();
  const std::string last_zenflows_warning = writer.last_zenflows_warning();
  j["zenflows_last_warning"] = last_zenflows_warning.empty()
                                   ? nlohmann::ordered_json(nullptr)
                                   : nlohmann::ordered_json(last_zenflows_warning);
  // The free-space condition new events are held to (docs/ARCHITECTURE.md "Full disk").
  j["disk_free_bytes"] = o.disk_free_bytes ? nlohmann::ordered_json(*o.disk_free_bytes)
                                           : nlohmann::ordered_json(nullptr);
  j["min_free_bytes"] = o.min_free_bytes;
  j["accepting"] = o.accepting;
  j["reserve_bytes"] = o.reserve_bytes;
  j["reserve_held"] = o.reserve_held;
  j["published"] = f.published;
  j["republished"] = f.republished;
  j["acks"] = f.acks;
  j["refused_acks"] = f.refused_acks;
  // PROTOCOL §5.1: whether acks are verified, and why the refused ones were refused.
  j["acks_verified"] = f.node_kid.has_value();
  j["node_kid"] =
      f.node_kid ? nlohmann::ordered_json(*f.node_kid) : nlohmann::ordered_json(nullptr);
  nlohmann::ordered_json by_reason = nlohmann::ordered_json::object();
  for (std::size_t i = 0; i < k_ack_refusal_kinds; ++i)
    by_reason[std::string(to_string(static_cast<AckRefusal>(i)))] = f.refused_by_reason[i];
  j["refused_acks_by_reason"] = std::move(by_reason);
  j["ack_error"] =
      f.ack_error.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(f.ack_error);
  j["verified_tree_size"] = f.verified_tree_size;
  j["consistency_proven"] = f.consistency_proven ? nlohmann::ordered_json(*f.consistency_proven)
                                                 : nlohmann::ordered_json(nullptr);
  j["connects"] = f.connects;
  j["quarantined"] =
      o.quarantined ? nlohmann::ordered_json(*o.quarantined) : nlohmann::ordered_json(nullptr);
  std::vector<DriverStatus> list;
  {
    std::lock_guard lock(drivers_mutex);
    for (const DriverSlot& slot : drivers)
      list.push_back(DriverStatus{slot.name, slot.kind, slot.running, slot.last_error,
                                  slot.last_error_unix_ms, slot.driver->health()});
  }
  j["drivers"] = drivers_status_json(list);
  return j;
}

std::string systemd_status_line(const nlohmann::ordered_json& s) {
  return fmt::format("{}; seq {}, acked {}, backlog {}",
                     s["connected"].get<bool>() ? "connected" : "not connected",
                     s["last_seq"].get<std::int64_t>(), s["acked_seq"].get<std::int64_t>(),
                     s["backlog_events"].get<std::int64_t>());
}

}  // namespace

int run_daemon(const AgentConfig& config, std::span<const DriverKind* const> kinds, Logger& log) {
  Env& env = Env::real();
  auto fatal = [&](const Error& error) {
    log.error("daemon", "{}", error.message);
    sd_notifyf(0, "STATUS=failed: %s", error.message.c_str());
    return 1;
  };

  auto key = DeviceKey::load(config.key_file);
  if (!key) return fatal(key.error());
  if (Status dir = make_dir(config.data_dir, 0750); !dir) return fatal(dir.error());
  auto lock = DataDirLock::take(config.data_dir);
  if (!lock) return fatal(lock.error());

  OutboxOptions outbox_options;
  outbox_options.path = config.outbox_path();
  outbox_options.device_id = config.device_id;
  outbox_options.quota_bytes = config.quota_bytes;
  outbox_options.durability = config.durability;
  outbox_options.min_free_bytes = config.min_free_bytes;
  outbox_options.reserve_bytes = config.reserve_bytes;
  auto outbox = Outbox::open(outbox_options, env, log);
  if (!outbox) return fatal(outbox.error());
  const OutboxStats opened = (*outbox)->stats();
  log.info("daemon", "device {} (kid {}), stream {}, seq {}, acked {}, outbox {} of quota {}",
           config.device_id, key->public_jwk().kid, opened.stream, opened.last_seq,
           opened.acked_seq, format_size(opened.backlog_bytes), format_size(opened.quota_bytes));
  if (opened.quarantined)
    log.error("daemon",
              "the previous outbox was unreadable and was moved to {}; a new stream {} starts. "
              "Read the old events with: reflow-agent export --outbox {}",
              *opened.quarantined, opened.stream, *opened.quarantined);

  auto drivers = create_drivers(config, kinds, env, log);
  if (!drivers) return fatal(drivers.error());
  std::mutex drivers_mutex;

  Writer writer(Writer::Options{config.device_id, config.queue_capacity, config.max_batch}, *key,
                **outbox, env, log);
  Forwarder forwarder(config, **outbox, env, log, version());
  if (Status started = forwarder.start(); !started) return fatal(started.error());
  writer.set_commit_listener(
      [&forwarder](std::int64_t last_seq) { forwarder.notify_committed(last_seq); });
  writer.start();

  auto status = [&] {
    return status_json(config, **outbox, forwarder, writer, *drivers, drivers_mutex, env);
  };
  ControlServer control(config.control_socket_path(), writer, status, log);
  if (Status started = control.start(); !started) {
    writer.stop();
    forwarder.stop();
    return fatal(started.error());
  }
  {
    std::lock_guard guard(drivers_mutex);
    start_due_drivers(*drivers, writer, env, log);
  }
  log.info("daemon", "ready: control socket {}, {} driver(s)",
           config.control_socket_path().string(), drivers->size());
  sd_notifyf(0, "READY=1\nSTATUS=%s", systemd_status_line(status()).c_str());

  // The main thread only waits for signals; it wakes up to feed the watchdog, refresh STATUS and
  // retry drivers that failed to start.
  wait_for_stop_signal(
      log, "daemon", k_status_refresh,
      [&] {
        sd_notifyf(0, "STATUS=%s", systemd_status_line(status()).c_str());
        std::lock_guard guard(drivers_mutex);
        start_due_drivers(*drivers, writer, env, log);
      },
      [&] {
        log.info("daemon", "SIGHUP received; reading mqtt.password_file again");
        forwarder.reload();
      });
  {
    std::lock_guard guard(drivers_mutex);
    for (DriverSlot& slot : *drivers)
      if (slot.running) {
        slot.driver->stop();
        slot.running = false;
      }
  }
  control.stop();
  writer.stop();  // commits what was accepted before answering nothing more
  forwarder.stop(3000);
  const OutboxStats last = (*outbox)->stats();
  log.info("daemon", "stopped: seq {}, acked {}, {} events kept in the outbox for the next start",
           last.last_seq, last.acked_seq, last.backlog_events);
  return 0;
}

}  // namespace agent
