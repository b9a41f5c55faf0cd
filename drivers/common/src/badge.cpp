// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/drivers/badge.hpp>

#include <algorithm>

#include <fmt/format.h>
#include <toml++/toml.h>

#include <reflow/core/units.hpp>
#include <reflow/drivers/driver_state.hpp>
#include <reflow/drivers/serial_port.hpp>
#include <reflow/drivers/valueflows.hpp>

namespace agent {
namespace {

constexpr std::uint8_t k_stx = 0x02;
constexpr std::uint8_t k_etx = 0x03;
constexpr std::size_t k_em4100_body = 12;  // 10 data + 2 checksum hex digits

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

void Em4100Decoder::bad() {
  ++m_bad_frames;
  m_buffer.clear();
  m_in_frame = false;
}

std::optional<std::string> Em4100Decoder::feed(std::uint8_t byte) {
  if (byte == k_stx) {
    if (m_in_frame) bad();  // a frame cut short by the next one
    m_in_frame = true;
    m_in_noise = false;
    m_buffer.clear();
    return std::nullopt;
  }
  if (!m_in_frame) {
    // Bytes outside a frame: one run of noise counts once.
    if (!m_in_noise) ++m_bad_frames;
    m_in_noise = true;
    return std::nullopt;
  }
  if (byte != k_etx) {
    if (hex_value(static_cast<char>(byte)) < 0 || m_buffer.size() == k_em4100_body) {
      bad();
      m_in_noise = true;  // the rest of this garbage is the same bad frame
      return std::nullopt;
    }
    m_buffer.push_back(static_cast<char>(byte));
    return std::nullopt;
  }
  if (m_buffer.size() != k_em4100_body) {
    bad();
    return std::nullopt;
  }
  std::uint8_t x = 0;
  for (std::size_t i = 0; i < 10; i += 2)
    x ^= static_cast<std::uint8_t>(hex_value(m_buffer[i]) * 16 + hex_value(m_buffer[i + 1]));
  const auto sum =
      static_cast<std::uint8_t>(hex_value(m_buffer[10]) * 16 + hex_value(m_buffer[11]));
  if (x != sum) {
    bad();
    return std::nullopt;
  }
  std::string id = m_buffer.substr(0, 10);
  m_buffer.clear();
  m_in_frame = false;
  ++m_frames;
  return id;
}

DriverKeyInfo badge_key_info() {
  return {"badge", "table", "(none)",
          "[driver.badge]: a badge reader at this machine (source, device, window); see "
          "badge_keys and the README's \"Badges and members\""};
}

const std::vector<DriverKeyInfo>& badge_keys() {
  static const std::vector<DriverKeyInfo> keys = {
      {"source", "enum(mcu|serial|evdev)", "(required)",
       "mcu: the board's own reader (mcu driver only); serial: an RDM6300/EM4100 module "
       "(9600 8N1); evdev: a USB reader in keyboard mode (types the card number and Enter)"},
      {"device", "string", "(required for serial and evdev)",
       "the reader's serial device (/dev/serial/by-id/…) or input device "
       "(/dev/input/by-id/…-event-kbd)"},
      {"window", "duration", "\"2m\"",
       "a session beginning at most this long after a known badge is that member's"},
  };
  return keys;
}

Result<std::optional<BadgeConfig>> parse_badge_config(
    const DriverConfig& config, const std::vector<std::string_view>& sources) {
  const toml::node* node = config.table->get("badge");
  if (node == nullptr) return std::optional<BadgeConfig>{};
  DriverTable outer(config);
  const toml::table* sub = node->as_table();
  if (sub == nullptr)
    return std::unexpected(outer.error("badge", "expected a table [driver.badge]"));
  // The sub-table read with the driver's own getters: errors say driver.NAME.badge.KEY.
  DriverConfig inner = config;
  inner.name = config.name + ".badge";
  inner.table = std::shared_ptr<const toml::table>(config.table, sub);
  DriverTable table(inner);
  if (Status keys = table.check_keys(badge_keys()); !keys) return std::unexpected(keys.error());
  if (sub->contains("kind") || sub->contains("name"))
    return std::unexpected(table.error(sub->contains("kind") ? "kind" : "name",
                                       "unknown key for a badge table (known keys: source, "
                                       "device, window)"));
  BadgeConfig out;
  auto source = table.choice("source", "", sources);
  if (!source) return std::unexpected(source.error());
  if (source->empty())
    return std::unexpected(table.error("source", "is required (one of the listed sources)"));
  out.source = *source == "serial"  ? BadgeConfig::Source::serial
               : *source == "evdev" ? BadgeConfig::Source::evdev
                                    : BadgeConfig::Source::mcu;
  if (out.source != BadgeConfig::Source::mcu) {
    auto device = table.required_string("device");
    if (!device) return std::unexpected(device.error());
    out.device = *device;
  } else if (sub->contains("device")) {
    return std::unexpected(table.error("device", "is not used with source \"mcu\""));
  }
  auto window = table.duration("window", std::chrono::minutes(2));
  if (!window) return std::unexpected(window.error());
  if (window->count() <= 0) return std::unexpected(table.error("window", "must be above 0"));
  out.window = *window;
  if (config.members_file.empty() || config.members_provider.empty())
    return std::unexpected(
        table.error("source",
                    "needs [members] file and provider in the agent config (who the badges are, "
                    "and the makerspace's agent reference)"));
  out.members_file = config.members_file;
  out.provider = config.members_provider;
  out.secret_file = site_secret_path(config.data_dir);
  return std::optional<BadgeConfig>{std::move(out)};
}

void attribute(nlohmann::ordered_json& event, const Attribution& who) {
  const auto action = event.value("action", std::string());
  if (action == "use") {
    event["provider"] = who.provider;
    event["receiver"] = who.receiver;
  } else if (action == "consume") {
    event["receiver"] = who.receiver;
  }
}

Result<std::unique_ptr<BadgeAttribution>> BadgeAttribution::open(const BadgeConfig& config,
                                                                 std::string machine,
                                                                 std::filesystem::path state_dir,
                                                                 Logger& log,
                                                                 std::string component) {
  auto secret = load_or_create_site_secret(config.secret_file);
  if (!secret) return std::unexpected(secret.error());
  auto members = Members::load(config.members_file);
  if (!members) return std::unexpected(members.error());
  log.info(component, "badges: {} member(s) from {}", members->all().size(),
           config.members_file.string());
  return std::unique_ptr<BadgeAttribution>(
      new BadgeAttribution(config, *secret, std::move(*members), std::move(machine),
                           std::move(state_dir), log, std::move(component)));
}

BadgeAttribution::BadgeAttribution(const BadgeConfig& config, SiteSecret secret, Members members,
                                   std::string machine, std::filesystem::path state_dir,
                                   Logger& log, std::string component)
    : m_config(config),
      m_secret(secret),
      m_members(std::move(members)),
      m_machine(std::move(machine)),
      m_state_dir(std::move(state_dir)),
      m_log(log),
      m_component(std::move(component)) {
  load_history();
}

// The recent known badges, kept so that a badge just before an agent restart still attributes
// the session after it: {"version":1,"badges":[{"at_ms":N,"handle":"ada"}…]}, handles (not
// hashes) so that a member removed from the members file is forgotten with it.
void BadgeAttribution::load_history() {
  auto state = load_driver_state(m_state_dir / k_badges_file);
  if (!state) {
    m_log.warning(m_component, "badges seen before the restart are forgotten: {}",
                  state.error().message);
    return;
  }
  const auto badges = state->find("badges");
  if (badges == state->end() || !badges->is_array()) return;
  for (const auto& b : *badges) {
    if (!b.is_object() || !b.contains("at_ms") || !b["at_ms"].is_number_integer() ||
        !b.contains("handle") || !b["handle"].is_string())
      continue;
    const Member* member = m_members.by_handle(b["handle"].get<std::string>());
    if (member == nullptr) continue;
    m_history.push_back(Seen{b["at_ms"].get<std::int64_t>(), member});
  }
  while (m_history.size() > k_history)
    m_history.pop_front();
}

// Called with m_mutex held.
void BadgeAttribution::save_history() const {
  nlohmann::json badges = nlohmann::json::array();
  for (const Seen& s : m_history)
    badges.push_back({{"at_ms", s.at_ms}, {"handle", s.member->handle}});
  if (Status saved = save_driver_state(m_state_dir / k_badges_file,
                                       {{"version", 1}, {"badges", std::move(badges)}});
      !saved)
    m_log.error(m_component, "cannot keep the recent badges for a restart: {}",
                saved.error().message);
}

nlohmann::ordered_json unknown_badge_event(std::string_view machine, std::string_view hash,
                                           std::int64_t at_unix_ms, std::string_view process) {
  nlohmann::ordered_json event;
  event["action"] = "cite";
  event["resourceInventoriedAs"] = machine;
  event["resourceQuantity"] = vf::quantity(1, "one");
  event["hasPointInTime"] = format_rfc3339_ms(at_unix_ms);
  event["inputOf"] = process;
  event["note"] = "unknown badge";
  event["meta"] = {{"badge", "unknown"}, {"badge_hash", hash}};
  return event;
}

std::optional<std::string> BadgeAttribution::on_card(std::string_view card_hex, std::int64_t at_ms,
                                                     std::int64_t seen_unix_ms) {
  const std::string hash = badge_hash(m_secret, card_hex);
  const Member* member = m_members.by_badge(hash);
  const std::string at = format_rfc3339_ms(seen_unix_ms);
  if (member == nullptr) {
    m_log.warning(m_component,
                  "unknown badge {} at {} ({}); enrol it with `reflow-agent members add HANDLE "
                  "--agent REF --last-unknown --machine {}`",
                  hash, m_machine, at, m_machine);
    // Saved before it is counted: a status that shows it finds the file.
    if (Status s = save_last_unknown(m_state_dir, UnknownBadge{hash, at}); !s)
      m_log.error(m_component, "cannot keep the last unknown badge: {}", s.error().message);
    std::lock_guard lock(m_mutex);
    ++m_unknown;
    return hash;
  }
  m_log.info(m_component, "badge of {} at {} ({})", member->handle, m_machine, at);
  std::lock_guard lock(m_mutex);
  ++m_known;
  m_last_member = member->handle;
  m_history.push_back(Seen{at_ms, member});
  while (m_history.size() > k_history)
    m_history.pop_front();
  save_history();
  return std::nullopt;
}

std::optional<Attribution> BadgeAttribution::for_session(std::int64_t begin_ms) const {
  std::lock_guard lock(m_mutex);
  const Seen* best = nullptr;
  for (const Seen& s : m_history) {
    if (s.at_ms > begin_ms) continue;
    if (begin_ms - s.at_ms > m_config.window.count()) continue;
    if (best == nullptr || s.at_ms >= best->at_ms) best = &s;
  }
  if (best == nullptr) return std::nullopt;
  return Attribution{best->member->handle, best->member->agent, m_config.provider};
}

std::vector<std::pair<std::int64_t, Attribution>> BadgeAttribution::handovers(
    std::int64_t begin_ms, std::int64_t end_ms, const std::optional<Attribution>& first) const {
  std::lock_guard lock(m_mutex);
  std::vector<const Seen*> inside;
  for (const Seen& s : m_history)
    if (s.at_ms > begin_ms && s.at_ms < end_ms) inside.push_back(&s);
  std::stable_sort(inside.begin(), inside.end(),
                   [](const Seen* a, const Seen* b) { return a->at_ms < b->at_ms; });
  std::vector<std::pair<std::int64_t, Attribution>> out;
  std::string current = first ? first->handle : std::string();
  for (const Seen* s : inside) {
    if (s->member->handle == current) continue;
    current = s->member->handle;
    out.emplace_back(s->at_ms, Attribution{s->member->handle, s->member->agent, m_config.provider});
  }
  return out;
}

void BadgeAttribution::forget_badges() {
  std::lock_guard lock(m_mutex);
  m_history.clear();
  save_history();
}

void BadgeAttribution::count_unbadged_session() {
  std::lock_guard lock(m_mutex);
  ++m_unbadged;
}

std::string BadgeAttribution::status() const {
  std::lock_guard lock(m_mutex);
  return fmt::format("badges {} (known {}, unknown {}), sessions without badge {}{}",
                     m_known + m_unknown, m_known, m_unknown, m_unbadged,
                     m_last_member.empty() ? "" : fmt::format(", last member {}", m_last_member));
}

std::uint64_t BadgeAttribution::known_badges() const {
  std::lock_guard lock(m_mutex);
  return m_known;
}
std::uint64_t BadgeAttribution::unknown_badges() const {
  std::lock_guard lock(m_mutex);
  return m_unknown;
}
std::uint64_t BadgeAttribution::unbadged_sessions() const {
  std::lock_guard lock(m_mutex);
  return m_unbadged;
}

std::unique_ptr<BadgeReader> make_badge_reader(const BadgeConfig& config, BadgeAttribution& badges,
                                               Env& env, Logger& log, std::string component) {
  switch (config.source) {
    case BadgeConfig::Source::serial:
      return std::make_unique<SerialBadgeReader>(config.device, badges, env, log,
                                                 std::move(component));
    case BadgeConfig::Source::evdev:
      return std::make_unique<EvdevBadgeReader>(
          config.device, badges, env, log, std::move(component),
          [&env](const std::filesystem::path& path, bool grab) {
            return open_evdev_source(path, grab, env);
          });
    case BadgeConfig::Source::mcu:
      break;
  }
  return nullptr;
}

SerialBadgeReader::SerialBadgeReader(std::string device, BadgeAttribution& badges, Env& env,
                                     Logger& log, std::string component)
    : m_device(std::move(device)),
      m_badges(badges),
      m_env(env),
      m_log(log),
      m_component(std::move(component)) {}

SerialBadgeReader::~SerialBadgeReader() {
  stop();
}

void SerialBadgeReader::start() {
  if (m_thread.joinable()) return;
  m_thread = std::jthread([this](std::stop_token stop) { run(stop); });
}

void SerialBadgeReader::stop() {
  if (!m_thread.joinable()) return;
  m_thread.request_stop();
  m_thread.join();
}

std::string SerialBadgeReader::status() const {
  std::lock_guard lock(m_mutex);
  return fmt::format("{}, frames {}, bad frames {}", m_state, m_frames, m_bad_frames);
}

std::uint64_t SerialBadgeReader::bad_frames() const {
  std::lock_guard lock(m_mutex);
  return m_bad_frames;
}

void SerialBadgeReader::run(std::stop_token stop) {
  using namespace std::chrono_literals;
  constexpr auto k_reopen = 5s;
  constexpr std::int64_t k_repeat_ms = 2000;  // a held card repeats its frame
  std::string last_id;
  std::int64_t last_at = 0;
  while (!stop.stop_requested()) {
    auto port =
        SerialPort::open(m_device, SerialSettings{9600, 8, SerialSettings::Parity::none, 1});
    if (!port) {
      {
        std::lock_guard lock(m_mutex);
        m_state = fmt::format("reader waiting for {}", m_device);
      }
      m_log.warning(m_component, "badge reader: {}", port.error().message);
      m_env.sleep_until(m_env.steady_now() + k_reopen, stop);
      continue;
    }
    {
      std::lock_guard lock(m_mutex);
      m_state = "reader open";
    }
    Em4100Decoder decoder;
    std::uint64_t bad_before = 0;
    while (!stop.stop_requested()) {
      std::array<std::byte, 64> buffer{};
      auto n = (*port)->read(buffer, std::chrono::steady_clock::now() + 200ms, stop);
      if (!n) {
        m_log.warning(m_component, "badge reader: {}", n.error().message);
        break;
      }
      for (std::size_t i = 0; i < *n; ++i) {
        auto id = decoder.feed(static_cast<std::uint8_t>(buffer[i]));
        if (decoder.bad_frames() != bad_before) {
          bad_before = decoder.bad_frames();
          std::lock_guard lock(m_mutex);
          ++m_bad_frames;
          m_log.debug(m_component, "badge reader: a bad frame skipped");
        }
        if (!id) continue;
        {
          std::lock_guard lock(m_mutex);
          ++m_frames;
        }
        const std::int64_t now = m_env.now_unix_ms();
        const bool repeat = *id == last_id && now - last_at < k_repeat_ms;
        last_at = now;
        if (repeat) continue;
        last_id = *id;
        m_badges.on_card(*id, now);
      }
    }
    {
      std::lock_guard lock(m_mutex);
      m_state = fmt::format("reader waiting for {}", m_device);
    }
    m_env.sleep_until(m_env.steady_now() + k_reopen, stop);
  }
  std::fill(last_id.begin(), last_id.end(), '\0');
}

EvdevBadgeReader::EvdevBadgeReader(std::filesystem::path device, BadgeAttribution& badges, Env& env,
                                   Logger& log, std::string component,
                                   KeyEventSourceFactory open_keys)
    : m_device(std::move(device)),
      m_badges(badges),
      m_env(env),
      m_log(log),
      m_component(std::move(component)),
      m_open_keys(std::move(open_keys)) {}

EvdevBadgeReader::~EvdevBadgeReader() {
  stop();
}

void EvdevBadgeReader::start() {
  if (m_thread.joinable()) return;
  m_thread = std::jthread([this](std::stop_token stop) { run(stop); });
}

void EvdevBadgeReader::stop() {
  if (!m_thread.joinable()) return;
  m_thread.request_stop();
  m_thread.join();
}

std::string EvdevBadgeReader::status() const {
  std::lock_guard lock(m_mutex);
  return fmt::format("{}, cards {}, bad codes {}", m_state, m_frames, m_bad_frames);
}

std::uint64_t EvdevBadgeReader::bad_frames() const {
  std::lock_guard lock(m_mutex);
  return m_bad_frames;
}

void EvdevBadgeReader::on_code(std::string& code, std::string& last_id, std::int64_t& last_at) {
  constexpr std::int64_t k_repeat_ms = 2000;  // a held card is typed again
  const bool card = !code.empty() && code.size() <= k_max_typed_card &&
                    std::all_of(code.begin(), code.end(), [](char c) { return hex_value(c) >= 0; });
  if (!card) {
    // Not logged: it may be a card number in a form this reader should not have typed.
    std::fill(code.begin(), code.end(), '\0');
    std::lock_guard lock(m_mutex);
    ++m_bad_frames;
    m_log.debug(m_component, "badge reader: a typed code that is not a card number skipped");
    return;
  }
  {
    std::lock_guard lock(m_mutex);
    ++m_frames;
  }
  const std::int64_t now = m_env.now_unix_ms();
  const bool repeat = code == last_id && now - last_at < k_repeat_ms;
  last_at = now;
  if (!repeat) {
    last_id = code;
    m_badges.on_card(code, now);
  }
  std::fill(code.begin(), code.end(), '\0');
}

void EvdevBadgeReader::run(std::stop_token stop) {
  using namespace std::chrono_literals;
  constexpr auto k_reopen = 5s;
  constexpr auto k_inter_key = 200ms;
  std::string last_id;
  std::int64_t last_at = 0;
  while (!stop.stop_requested()) {
    auto source = m_open_keys(m_device, true);
    if (!source) {
      {
        std::lock_guard lock(m_mutex);
        m_state = fmt::format("reader waiting for {}", m_device.string());
      }
      m_log.warning(m_component, "badge reader: {}", source.error().message);
      m_env.sleep_until(m_env.steady_now() + k_reopen, stop);
      continue;
    }
    {
      std::lock_guard lock(m_mutex);
      m_state = "reader open";
    }
    KeyDecoder decoder(k_inter_key);
    while (!stop.stop_requested()) {
      // Waits a key gap at most while a number is being typed, so a half-typed one is dropped
      // (KeyDecoder::drop_fragment) even when no key follows it.
      const auto deadline =
          m_env.steady_now() + (decoder.pending() ? k_inter_key : std::chrono::milliseconds(1000));
      auto events = (*source)->wait(deadline, stop);
      if (!events) {
        m_log.warning(m_component, "badge reader: {}", events.error().message);
        break;
      }
      const std::uint64_t spoiled_before = decoder.malformed() + decoder.fragments();
      if (events->empty()) decoder.drop_fragment();
      for (const KeyEvent& e : *events)
        if (auto code = decoder.feed(e)) on_code(*code, last_id, last_at);
      // Half-typed numbers and keys that no card number has: bad frames, not logged.
      if (const auto spoiled = decoder.malformed() + decoder.fragments() - spoiled_before) {
        std::lock_guard lock(m_mutex);
        m_bad_frames += spoiled;
      }
    }
    decoder.reset();
    source->reset();
    if (stop.stop_requested()) break;
    {
      std::lock_guard lock(m_mutex);
      m_state = fmt::format("reader waiting for {}", m_device.string());
    }
    m_env.sleep_until(m_env.steady_now() + k_reopen, stop);
  }
  {
    std::lock_guard lock(m_mutex);
    m_state = "reader stopped";
  }
  std::fill(last_id.begin(), last_id.end(), '\0');
}

}  // namespace agent
