// SPDX-License-Identifier: AGPL-3.0-or-later
// The barcode driver: the key, serial-line and hidraw decoders; the scanner reader through its
// KeyEventSource seam (recorded input_event streams on FakeEnv time), in serial mode through real
// pseudo-terminals, and through /dev/uinput and the real libevdev backend where the machine has
// it; the `barcode` kind.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <libevdev/libevdev-uinput.h>
#include <libevdev/libevdev.h>
#include <linux/input-event-codes.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/device/config.hpp>
#include <reflow/device/driver.hpp>
#include <reflow/device/driver_table.hpp>

#include "capturing_sink.hpp"
#include "files.hpp"
#include "key_event_source.hpp"
#include "line_decoder.hpp"
#include "pty.hpp"
#include "replay_key_source.hpp"
#include "scanner.hpp"
#include "temp_dir.hpp"

namespace agent {
const DriverKind& barcode_driver_kind();

namespace barcode {
namespace {

const std::filesystem::path k_testdata =
    std::filesystem::path(REFLOW_SOURCE_DIR) / "drivers" / "barcode" / "testdata";
constexpr auto k_bound = std::chrono::seconds(30);

using reflow_test::read_text;

Result<AgentConfig> agent_config(const std::string& driver_tables) {
  return parse_config(
      "[agent]\ndevice_id = \"test-01\"\nkey_file = \"/tmp/k\"\ndata_dir = \"/tmp/d\"\n\n" +
          driver_tables,
      "driver.toml");
}

// Waits (bounded) for a condition another thread makes true; not a timing.
template <typename Predicate>
bool wait_until(Predicate predicate) {
  const auto give_up = std::chrono::steady_clock::now() + k_bound;
  while (!predicate()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Collects the reader's callbacks.
class Scans {
 public:
  std::function<void(const Scan&)> callback() {
    return [this](const Scan& scan) {
      {
        std::lock_guard lock(m_mutex);
        m_scans.push_back(scan);
      }
      m_changed.notify_all();
    };
  }
  // Waits (bounded) until `n` scans came; returns all.
  std::vector<Scan> wait_for(std::size_t n) {
    std::unique_lock lock(m_mutex);
    m_changed.wait_for(lock, k_bound, [&] { return m_scans.size() >= n; });
    return m_scans;
  }
  std::vector<Scan> all() {
    std::lock_guard lock(m_mutex);
    return m_scans;
  }

 private:
  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::vector<Scan> m_scans;
};

// Builds key event streams as a scanner types them: 1 ms between events.
class Typist {
 public:
  Typist& key(std::uint16_t code, std::int32_t value) {
    m_events.push_back({m_t_us, EV_KEY, code, value});
    m_events.push_back({m_t_us, EV_SYN, SYN_REPORT, 0});
    m_t_us += 1000;
    return *this;
  }
  Typist& tap(std::uint16_t code) { return key(code, 1).key(code, 0); }
  Typist& shifted(std::uint16_t code) {
    return key(KEY_LEFTSHIFT, 1).tap(code).key(KEY_LEFTSHIFT, 0);
  }
  Typist& enter() { return tap(KEY_ENTER); }
  Typist& pause(std::chrono::milliseconds ms) {
    m_t_us += ms.count() * 1000;
    return *this;
  }
  const std::vector<KeyEvent>& events() const { return m_events; }

 private:
  std::int64_t m_t_us = 5'000'000;
  std::vector<KeyEvent> m_events;
};

std::vector<std::string> decode(KeyDecoder& decoder, const std::vector<KeyEvent>& events) {
  std::vector<std::string> codes;
  for (const KeyEvent& e : events)
    if (auto code = decoder.feed(e)) codes.push_back(*code);
  return codes;
}

// ---------------------------------------------------------------------------------------------
// KeyDecoder

TEST(KeyDecoderTest, TypesLettersDigitsAndShiftedSymbolsOnAUsLayout) {
  Typist t;
  t.tap(KEY_U).tap(KEY_R).tap(KEY_N).shifted(KEY_SEMICOLON).shifted(KEY_X).tap(KEY_SEMICOLON);
  t.tap(KEY_4).tap(KEY_2).tap(KEY_MINUS).shifted(KEY_MINUS).shifted(KEY_EQUAL).tap(KEY_SLASH);
  t.tap(KEY_DOT).shifted(KEY_1).shifted(KEY_2).shifted(KEY_SLASH).tap(KEY_EQUAL).enter();
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_EQ(decode(decoder, t.events()), std::vector<std::string>{"urn:X;42-_+/.!@?="});
  EXPECT_EQ(decoder.fragments(), 0u);
  EXPECT_EQ(decoder.malformed(), 0u);
}

TEST(KeyDecoderTest, RightShiftCountsAndReleasingShiftEndsIt) {
  Typist t;
  t.key(KEY_RIGHTSHIFT, 1).tap(KEY_A).key(KEY_RIGHTSHIFT, 0).tap(KEY_A).enter();
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_EQ(decode(decoder, t.events()), std::vector<std::string>{"Aa"});
}

TEST(KeyDecoderTest, CapsLockUpperCasesLettersOnlyAndShiftInvertsIt) {
  Typist t;
  t.tap(KEY_CAPSLOCK).tap(KEY_W).tap(KEY_1).shifted(KEY_B).shifted(KEY_SEMICOLON).enter();
  t.tap(KEY_CAPSLOCK).tap(KEY_W).enter();
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_EQ(decode(decoder, t.events()), (std::vector<std::string>{"W1b:", "w"}));
}

TEST(KeyDecoderTest, KeypadDigitsAndKeypadEnterEndACode) {
  Typist t;
  for (std::uint16_t key : {KEY_KP4, KEY_KP0, KEY_KP0, KEY_KP6, KEY_KPDOT, KEY_KPMINUS, KEY_KP9})
    t.tap(key);
  t.tap(KEY_KPENTER);
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_EQ(decode(decoder, t.events()), std::vector<std::string>{"4006.-9"});
}

TEST(KeyDecoderTest, DropsAFragmentWhenTheNextKeyComesAfterTheTimeout) {
  Typist t;
  t.tap(KEY_A).tap(KEY_B).pause(std::chrono::milliseconds(500)).tap(KEY_C).tap(KEY_D).enter();
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_EQ(decode(decoder, t.events()), std::vector<std::string>{"cd"});
  EXPECT_EQ(decoder.fragments(), 1u);
  EXPECT_EQ(decoder.last_dropped(), "ab");
}

// Found by tests/fuzz (barcode_decoders): the gap between two far-apart timestamps overflowed
// std::int64_t, so a forward jump read as a step back (and the other way round).
TEST(KeyDecoderTest, TimestampsFarApartDoNotOverflowTheGap) {
  const std::int64_t early = std::numeric_limits<std::int64_t>::min() + 1;
  const std::int64_t late = std::numeric_limits<std::int64_t>::max();
  KeyDecoder decoder(std::chrono::milliseconds(200));
  const std::vector<KeyEvent> forward = {
      {early, EV_KEY, KEY_A, 1}, {late, EV_KEY, KEY_B, 1}, {late, EV_KEY, KEY_ENTER, 1}};
  EXPECT_EQ(decode(decoder, forward), std::vector<std::string>{"b"});
  EXPECT_EQ(decoder.fragments(), 1u);
  const std::vector<KeyEvent> backward = {
      {late, EV_KEY, KEY_C, 1}, {early, EV_KEY, KEY_D, 1}, {early, EV_KEY, KEY_ENTER, 1}};
  EXPECT_EQ(decode(decoder, backward), std::vector<std::string>{"cd"});
  EXPECT_EQ(decoder.fragments(), 1u);
}

TEST(KeyDecoderTest, APauseShorterThanTheTimeoutKeepsTheCode) {
  Typist t;
  t.tap(KEY_A).pause(std::chrono::milliseconds(150)).tap(KEY_B).enter();
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_EQ(decode(decoder, t.events()), std::vector<std::string>{"ab"});
  EXPECT_EQ(decoder.fragments(), 0u);
}

TEST(KeyDecoderTest, DecodesTwoQuickScansBackToBack) {
  Typist t;
  t.tap(KEY_1).tap(KEY_2).enter().tap(KEY_3).tap(KEY_4).enter();
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_EQ(decode(decoder, t.events()), (std::vector<std::string>{"12", "34"}));
}

TEST(KeyDecoderTest, AnUnknownKeySpoilsTheCodeAndCountsAsMalformed) {
  Typist t;
  t.tap(KEY_A).tap(KEY_F1).tap(KEY_B).enter().tap(KEY_C).enter();
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_EQ(decode(decoder, t.events()), std::vector<std::string>{"c"});
  EXPECT_EQ(decoder.malformed(), 1u);
  EXPECT_NE(decoder.last_unknown().find("KEY_F1"), std::string::npos);
}

TEST(KeyDecoderTest, ACtrlCombinationSpoilsTheCode) {
  Typist t;
  t.tap(KEY_A).key(KEY_LEFTCTRL, 1).tap(KEY_RIGHTBRACE).key(KEY_LEFTCTRL, 0).tap(KEY_B).enter();
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_TRUE(decode(decoder, t.events()).empty());
  EXPECT_EQ(decoder.malformed(), 1u);
}

TEST(KeyDecoderTest, AutorepeatRepeatsCharactersButNotEnterOrCapsLock) {
  Typist t;
  t.key(KEY_A, 1).key(KEY_A, 2).key(KEY_A, 2).key(KEY_A, 0);
  t.key(KEY_CAPSLOCK, 1).key(KEY_CAPSLOCK, 2).key(KEY_CAPSLOCK, 0).tap(KEY_B);
  t.key(KEY_ENTER, 1).key(KEY_ENTER, 2).key(KEY_ENTER, 2).key(KEY_ENTER, 0);
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_EQ(decode(decoder, t.events()), std::vector<std::string>{"aaaB"});
}

TEST(KeyDecoderTest, IgnoresOtherEventTypesAndEmptyCodes) {
  Typist t;
  t.enter().enter().tap(KEY_A).enter();
  std::vector<KeyEvent> events = t.events();
  events.insert(events.begin() + 4, KeyEvent{5'000'000, EV_MSC, MSC_SCAN, 0x70004});
  events.insert(events.begin() + 4, KeyEvent{5'000'000, EV_LED, LED_NUML, 1});
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_EQ(decode(decoder, events), std::vector<std::string>{"a"});
  EXPECT_EQ(decoder.malformed(), 0u);
}

TEST(KeyDecoderTest, SynDroppedDropsTheFragmentAndTheResyncOnlySetsShift) {
  Typist t;
  t.tap(KEY_A).tap(KEY_B);
  std::vector<KeyEvent> events = t.events();
  // The kernel lost events; libevdev's resync says Shift is down now and replays a key state.
  events.push_back({6'000'000, EV_SYN, SYN_DROPPED, 0});
  events.push_back({6'000'000, EV_KEY, KEY_LEFTSHIFT, 1});
  events.push_back({6'000'000, EV_KEY, KEY_Q, 1});
  events.push_back({6'000'000, EV_SYN, SYN_REPORT, 0});
  Typist after;
  after.tap(KEY_C).enter();
  for (const KeyEvent& e : after.events())
    events.push_back({6'001'000 + e.time_us - 5'000'000, e.type, e.code, e.value});
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_EQ(decode(decoder, events), std::vector<std::string>{"C"});
  EXPECT_EQ(decoder.fragments(), 1u);
}

TEST(KeyDecoderTest, ResetDropsTheFragmentAndForgetsModifiers) {
  Typist t;
  t.key(KEY_LEFTSHIFT, 1).tap(KEY_CAPSLOCK).tap(KEY_A);
  KeyDecoder decoder(std::chrono::milliseconds(200));
  EXPECT_TRUE(decode(decoder, t.events()).empty());
  EXPECT_TRUE(decoder.pending());
  decoder.reset();
  EXPECT_FALSE(decoder.pending());
  EXPECT_EQ(decoder.fragments(), 1u);
  EXPECT_EQ(decode(decoder, Typist().tap(KEY_A).enter().events()), std::vector<std::string>{"a"});
}

// ---------------------------------------------------------------------------------------------
// LineDecoder and HidrawDecoder

TEST(LineDecoderTest, EndsCodesAtCrLfOrCrlfAndIgnoresEmptyLines) {
  LineDecoder lines;
  EXPECT_EQ(lines.feed("urn:x:batch:1\rWEB+SPOOLMAN:S-2\n\n\r\n12345\r\n"),
            (std::vector<std::string>{"urn:x:batch:1", "WEB+SPOOLMAN:S-2", "12345"}));
  EXPECT_FALSE(lines.pending());
}

TEST(LineDecoderTest, KeepsAPartialLineAcrossReadsAndDropsNulBytes) {
  using namespace std::string_view_literals;
  LineDecoder lines;
  EXPECT_TRUE(lines.feed("urn:x:ba").empty());
  EXPECT_TRUE(lines.pending());
  EXPECT_EQ(lines.feed("tch:7\r"), std::vector<std::string>{"urn:x:batch:7"});
  EXPECT_EQ(lines.feed("\nA\0B\x1d"
                       "C\r"sv),
            std::vector<std::string>{"AB\x1d"
                                     "C"});
  EXPECT_TRUE(lines.feed("half").empty());
  EXPECT_EQ(lines.drop(), "half");
  EXPECT_FALSE(lines.pending());
}

TEST(LineDecoderTest, DiscardsAndCountsAnOverlongLineUpToItsTerminator) {
  LineDecoder lines(16);
  EXPECT_TRUE(lines.feed(std::string(40, 'x')).empty());
  EXPECT_EQ(lines.overlong(), 1u);
  EXPECT_TRUE(lines.feed(std::string(40, 'y')).empty());
  EXPECT_EQ(lines.feed("\r\nshort\r\n"), std::vector<std::string>{"short"});
  EXPECT_EQ(lines.overlong(), 1u);
  EXPECT_EQ(lines.feed(std::string(16, 'z') + "\n"),
            std::vector<std::string>{std::string(16, 'z')});
}

std::vector<std::uint8_t> report(std::string_view data, std::size_t length_byte) {
  std::vector<std::uint8_t> r(k_hidraw_report_bytes, 0);
  r[0] = static_cast<std::uint8_t>(length_byte);
  for (std::size_t i = 0; i < data.size() && i + 1 < r.size(); ++i)
    r[i + 1] = static_cast<std::uint8_t>(data[i]);
  return r;
}

std::vector<std::uint8_t> report(std::string_view data) {
  return report(data, data.size());
}

TEST(HidrawDecoderTest, ReadsLengthPrefixedNulPaddedReports) {
  HidrawDecoder decoder;
  EXPECT_EQ(decoder.feed(report("urn:x:batch:42\r")), std::vector<std::string>{"urn:x:batch:42"});
  // No suffix programmed: a report that is not full ends the code.
  EXPECT_EQ(decoder.feed(report("WEB+SPOOLMAN:S-9")), std::vector<std::string>{"WEB+SPOOLMAN:S-9"});
  EXPECT_TRUE(decoder.feed(report("", 0)).empty());
  EXPECT_EQ(decoder.malformed(), 0u);
}

TEST(HidrawDecoderTest, JoinsFullReportsOfALongCode) {
  const std::string code = "https://example.org/batch/" + std::string(80, '7');
  HidrawDecoder decoder;
  EXPECT_TRUE(decoder.feed(report(code.substr(0, 63))).empty());
  EXPECT_TRUE(decoder.pending());
  EXPECT_EQ(decoder.feed(report(code.substr(63) + "\r\n")), std::vector<std::string>{code});
  EXPECT_FALSE(decoder.pending());
}

TEST(HidrawDecoderTest, CountsAReportWhoseLengthExceedsWhatWasRead) {
  HidrawDecoder decoder;
  EXPECT_TRUE(decoder.feed(report(std::string(63, 'a'))).empty());
  auto bad = report("abc", 20);
  bad.resize(8);
  EXPECT_TRUE(decoder.feed(bad).empty());
  EXPECT_EQ(decoder.malformed(), 1u);
  EXPECT_FALSE(decoder.pending());
  EXPECT_EQ(decoder.feed(report("ok\r")), std::vector<std::string>{"ok"});
}

// ---------------------------------------------------------------------------------------------
// Config

class ScannerConfigTest : public ::testing::Test {
 protected:
  Result<ScannerConfig> parse(const std::string& keys, std::string_view prefix = "") {
    auto config = agent_config("[[driver]]\nkind = \"barcode\"\nname = \"s1\"\n" + keys);
    EXPECT_TRUE(config) << config.error().message;
    if (!config) return std::unexpected(config.error());
    m_config = config->drivers.at(0);
    DriverTable table(m_config);
    if (Status known = table.check_keys(scanner_keys(prefix)); !known)
      return std::unexpected(known.error());
    return parse_scanner_config(table, prefix);
  }
  DriverConfig m_config;
};

TEST_F(ScannerConfigTest, ReadsPatternsInOrderFromALinePerPattern) {
  auto config = parse(
      "path = \"/dev/input/by-id/usb-X-event-kbd\"\n"
      "patterns = '''\n"
      "# our labels first\n"
      "batch = ^urn:example:batch:[0-9A-Za-z-]+$\n"
      "\n"
      "spool = ^WEB\\+SPOOLMAN:S-[0-9]+$\n"
      "any-urn = ^urn:.*$\n"
      "'''\n");
  ASSERT_TRUE(config) << config.error().message;
  ASSERT_EQ(config->patterns.size(), 3u);
  EXPECT_EQ(config->patterns[0].name, "batch");
  EXPECT_EQ(config->patterns[1].name, "spool");
  EXPECT_EQ(config->patterns[1].source, "^WEB\\+SPOOLMAN:S-[0-9]+$");
  EXPECT_EQ(config->patterns[2].name, "any-urn");
  EXPECT_TRUE(std::regex_match("WEB+SPOOLMAN:S-17", config->patterns[1].regex));
  EXPECT_EQ(config->mode, ScannerMode::evdev);
  EXPECT_TRUE(config->grab);
  EXPECT_EQ(config->inter_key_timeout, std::chrono::milliseconds(200));
}

TEST_F(ScannerConfigTest, DerivesTheModeFromThePathUnlessSet) {
  auto serial = parse("path = \"/dev/serial/by-id/usb-Scanner-if00\"\n");
  ASSERT_TRUE(serial) << serial.error().message;
  EXPECT_EQ(serial->mode, ScannerMode::serial);
  EXPECT_TRUE(serial->patterns.empty());
  auto hidraw = parse("path = \"/dev/hidraw2\"\n");
  ASSERT_TRUE(hidraw) << hidraw.error().message;
  EXPECT_EQ(hidraw->mode, ScannerMode::hidraw);
  auto forced = parse(
      "path = \"/dev/scanner\"\nmode = \"evdev\"\naccess = \"shared\"\n"
      "inter_key_timeout = \"300ms\"\n");
  ASSERT_TRUE(forced) << forced.error().message;
  EXPECT_EQ(forced->mode, ScannerMode::evdev);
  EXPECT_FALSE(forced->grab);
  EXPECT_EQ(forced->inter_key_timeout, std::chrono::milliseconds(300));
  auto rs232 = parse("path = \"/dev/ttyS0\"\nbaud = 115200\nparity = \"even\"\nstop_bits = 2\n");
  ASSERT_TRUE(rs232) << rs232.error().message;
  EXPECT_EQ(rs232->serial.baud, 115200);
  EXPECT_EQ(rs232->serial.parity, SerialSettings::Parity::even);
  EXPECT_EQ(rs232->serial.stop_bits, 2);
}

TEST_F(ScannerConfigTest, ABadRegexNamesThePatternItsLineAndTheKey) {
  auto config = parse(
      "path = \"/dev/input/event3\"\n"
      "patterns = '''\n"
      "batch = ^urn:x:batch:[0-9+$\n"
      "'''\n");
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error().code, ErrorCode::invalid_config);
  EXPECT_NE(config.error().message.find("driver.toml:"), std::string::npos)
      << config.error().message;
  EXPECT_NE(config.error().message.find("driver.s1.patterns"), std::string::npos);
  EXPECT_NE(config.error().message.find("`batch`"), std::string::npos);
  EXPECT_NE(config.error().message.find("pattern line 1"), std::string::npos);
}

TEST_F(ScannerConfigTest, RejectsMissingPathNamelessPatternsAndAnArray) {
  EXPECT_FALSE(parse("mode = \"serial\"\n"));
  auto no_name = parse("path = \"/dev/ttyACM0\"\npatterns = \"= ^x$\"\n");
  ASSERT_FALSE(no_name);
  EXPECT_NE(no_name.error().message.find("name"), std::string::npos);
  auto twice = parse("path = \"/dev/ttyACM0\"\npatterns = \"a = x\\na = y\"\n");
  ASSERT_FALSE(twice);
  EXPECT_NE(twice.error().message.find("named twice"), std::string::npos);
  EXPECT_FALSE(parse("path = \"/dev/ttyACM0\"\npatterns = [\"a = x\"]\n"));
  EXPECT_FALSE(parse("path = \"/dev/ttyACM0\"\ninter_key_timeout = \"0s\"\n"));
  EXPECT_FALSE(parse("path = \"/dev/ttyACM0\"\naccess = \"yes\"\n"));
}

TEST_F(ScannerConfigTest, TheStationPrefixSpellsPathAsScanner) {
  const auto& keys = scanner_keys("scanner_");
  ASSERT_FALSE(keys.empty());
  EXPECT_EQ(keys[0].key, "scanner");
  EXPECT_EQ(keys[1].key, "scanner_mode");
  EXPECT_EQ(&scanner_keys("scanner_"), &keys);  // stable: DriverKeyInfo holds views
  auto config = parse(
      "scanner = \"/dev/serial/by-id/usb-Scanner-if00\"\n"
      "scanner_patterns = \"batch = ^B[0-9]+$\"\n",
      "scanner_");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->path, "/dev/serial/by-id/usb-Scanner-if00");
  EXPECT_EQ(config->mode, ScannerMode::serial);
  ASSERT_EQ(config->patterns.size(), 1u);
  auto unprefixed = parse("scanner = \"/dev/ttyACM0\"\npath = \"/dev/ttyACM0\"\n", "scanner_");
  ASSERT_FALSE(unprefixed);
  EXPECT_NE(unprefixed.error().message.find("unknown key"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// ScannerReader through the KeyEventSource seam, on FakeEnv time

class ScannerReaderTest : public ::testing::Test {
 protected:
  ScannerConfig config_of(const std::filesystem::path& driver_toml) {
    auto config = agent_config(read_text(driver_toml));
    EXPECT_TRUE(config) << config.error().message;
    if (!config) return {};
    DriverTable table(config->drivers.at(0));
    auto scanner = parse_scanner_config(table, "");
    EXPECT_TRUE(scanner) << scanner.error().message;
    return scanner ? *scanner : ScannerConfig{};
  }

  static ScannerConfig plain_config() {
    ScannerConfig config;
    config.path = "/dev/input/by-id/usb-Test-event-kbd";
    return config;
  }

  // Each open gets the next of `sessions`: a recording (unplugged when it is over unless it is
  // the last) or, for an empty optional, "no such device".
  KeyEventSourceFactory factory(std::vector<std::optional<std::vector<KeyEvent>>> sessions) {
    return [this, sessions](const std::filesystem::path& path,
                            bool grab) -> Result<std::unique_ptr<KeyEventSource>> {
      const std::size_t n = m_opens++;
      EXPECT_EQ(path, "/dev/input/by-id/usb-Test-event-kbd");
      EXPECT_TRUE(grab);
      if (n >= sessions.size() || !sessions[n])
        return fail(ErrorCode::device_unavailable, "replay: no such device");
      return std::make_unique<ReplayKeySource>(*sessions[n], m_env, n + 1 < sessions.size(),
                                               &m_delivered);
    };
  }

  FakeEnv m_env;
  Logger m_log{LogLevel::error};
  std::atomic<std::size_t> m_opens{0};
  std::atomic<std::size_t> m_delivered{0};
  Scans m_scans;
};

TEST_F(ScannerReaderTest, GoldenCasesGiveTheExpectedScans) {
  std::size_t cases = 0;
  for (const auto& entry : std::filesystem::directory_iterator(k_testdata)) {
    SCOPED_TRACE(entry.path().filename().string());
    ++cases;
    auto events = load_key_recording(entry.path() / "events.txt");
    ASSERT_TRUE(events) << events.error().message;
    ScannerConfig config = config_of(entry.path() / "driver.toml");
    config.path = "/dev/input/by-id/usb-Test-event-kbd";
    std::vector<nlohmann::json> expected;
    std::ifstream in(entry.path() / "expected.jsonl");
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) expected.push_back(nlohmann::json::parse(line));

    FakeEnv env;
    Scans scans;
    auto reader = make_scanner_reader(
        config, env, m_log, "test",
        [&](const std::filesystem::path&, bool) -> Result<std::unique_ptr<KeyEventSource>> {
          return std::make_unique<ReplayKeySource>(*events, env);
        });
    ASSERT_TRUE(reader->start(scans.callback()));
    ASSERT_TRUE(env.wait_for_sleepers(1));
    env.advance_ms(10'000);  // longer than every recording
    const auto got = scans.wait_for(expected.size());
    // The whole recording is taken in once the reader waits for the clock again.
    ASSERT_TRUE(wait_until([&] { return reader->health().scans == expected.size(); }));
    ASSERT_TRUE(env.wait_for_sleepers(1));
    reader->stop();
    ASSERT_EQ(got.size(), expected.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].code, expected[i]["code"].get<std::string>());
      EXPECT_EQ(got[i].label, expected[i]["label"].get<std::string>());
    }
    EXPECT_EQ(scans.all().size(), expected.size());
    const ScannerHealth health = reader->health();
    EXPECT_EQ(health.fragments, entry.path().filename() == "fragment_dropped" ? 1u : 0u);
    EXPECT_EQ(health.malformed, 0u);
    EXPECT_EQ(health.state, "stopped");
  }
  EXPECT_GE(cases, 6u);
}

TEST_F(ScannerReaderTest, ScansCarryTheEnvClockAndUnmatchedCodesAreCounted) {
  ScannerConfig config = plain_config();
  config.patterns.push_back({"batch", "^B[0-9]+$", std::regex("^B[0-9]+$")});
  Typist t;
  t.shifted(KEY_B).tap(KEY_7).enter().tap(KEY_X).enter();
  auto reader = make_scanner_reader(config, m_env, m_log, "test", factory({t.events()}));
  ASSERT_TRUE(reader->start(m_scans.callback()));
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  m_env.advance_ms(1000);
  const auto scans = m_scans.wait_for(2);
  ASSERT_EQ(scans.size(), 2u);
  EXPECT_EQ(scans[0].code, "B7");
  EXPECT_EQ(scans[0].label, "batch");
  EXPECT_EQ(scans[1].code, "x");
  EXPECT_EQ(scans[1].label, "");
  EXPECT_EQ(scans[0].unix_ms, 1'767'225'601'000);
  EXPECT_EQ(scans[0].at, std::chrono::steady_clock::time_point{} + std::chrono::seconds(1));
  ASSERT_TRUE(wait_until([&] { return reader->health().scans == 2; }));
  const ScannerHealth health = reader->health();
  EXPECT_EQ(health.unmatched, 1u);
  EXPECT_EQ(health.state, "connected");
  reader->stop();
}

TEST_F(ScannerReaderTest, WithoutPatternsEveryCodeIsOfClassCode) {
  Typist t;
  t.tap(KEY_X).enter();
  auto reader = make_scanner_reader(plain_config(), m_env, m_log, "test", factory({t.events()}));
  ASSERT_TRUE(reader->start(m_scans.callback()));
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  m_env.advance_ms(1000);
  const auto scans = m_scans.wait_for(1);
  ASSERT_EQ(scans.size(), 1u);
  EXPECT_EQ(scans[0].label, "code");
  reader->stop();
  EXPECT_EQ(reader->health().unmatched, 0u);
}

TEST_F(ScannerReaderTest, DropsATrailingFragmentOnceNoKeyComesForTheTimeout) {
  Typist t;
  t.tap(KEY_A).tap(KEY_B);
  auto reader = make_scanner_reader(plain_config(), m_env, m_log, "test", factory({t.events()}));
  ASSERT_TRUE(reader->start(m_scans.callback()));
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  m_env.advance_ms(10);  // the keys arrive; the code is not ended
  ASSERT_TRUE(wait_until([&] { return m_delivered == t.events().size(); }))
      << m_delivered << " of " << t.events().size();
  ASSERT_TRUE(m_env.wait_for_sleepers(1));  // until 200 ms after the last key
  m_env.advance_ms(199);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  EXPECT_EQ(reader->health().fragments, 0u);
  m_env.advance_ms(1);
  ASSERT_TRUE(wait_until([&] { return reader->health().fragments == 1; }));
  reader->stop();
  EXPECT_TRUE(m_scans.all().empty());
}

TEST_F(ScannerReaderTest, ReconnectsAfterUnplugWithBackoffOnTheEnvClock) {
  Typist first, second;
  first.tap(KEY_1).enter().tap(KEY_2);  // unplugged in the middle of the second code
  second.tap(KEY_3).enter();
  auto reader = make_scanner_reader(plain_config(), m_env, m_log, "test",
                                    factory({first.events(), std::nullopt, second.events()}));
  ASSERT_TRUE(reader->start(m_scans.callback()));
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  m_env.advance_ms(100);
  ASSERT_EQ(m_scans.wait_for(1).size(), 1u);
  // The device vanishes: the half-typed "2" is a fragment, the error is counted, 1 s backoff.
  ASSERT_TRUE(wait_until([&] { return reader->health().errors == 1; }));
  EXPECT_EQ(reader->health().state, "waiting for device");
  EXPECT_EQ(reader->health().fragments, 1u);
  EXPECT_NE(reader->health().last_error.find("unplugged"), std::string::npos);
  EXPECT_EQ(reader->health().last_error_unix_ms, 1'767'225'600'100);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  EXPECT_EQ(m_opens, 1u);
  m_env.advance_ms(1000);  // reopen fails; the backoff doubles
  ASSERT_TRUE(wait_until([&] { return reader->health().errors == 2; }));
  EXPECT_EQ(m_opens, 2u);
  EXPECT_NE(reader->health().last_error.find("no such device"), std::string::npos);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  m_env.advance_ms(1999);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  EXPECT_EQ(m_opens, 2u);
  m_env.advance_ms(1);  // 2 s after the failure: replugged
  ASSERT_TRUE(wait_until([&] { return reader->health().state == "connected"; }));
  EXPECT_EQ(m_opens, 3u);
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  m_env.advance_ms(100);
  const auto scans = m_scans.wait_for(2);
  ASSERT_EQ(scans.size(), 2u);
  EXPECT_EQ(scans[0].code, "1");
  EXPECT_EQ(scans[1].code, "3");
  reader->stop();
  EXPECT_EQ(reader->health().scans, 2u);
}

TEST_F(ScannerReaderTest, BackoffGrowsToThirtySecondsAndStopIsIdempotent) {
  auto reader = make_scanner_reader(plain_config(), m_env, m_log, "test", factory({}));
  ASSERT_TRUE(reader->start(m_scans.callback()));
  ASSERT_TRUE(wait_until([&] { return reader->health().errors == 1; }));
  // Retries after 1, 2, 4, 8, 16, 30, 30 s.
  for (std::int64_t wait_ms : {1000, 2000, 4000, 8000, 16000, 30000, 30000}) {
    const std::size_t opens = m_opens;
    ASSERT_TRUE(wait_until([&] { return reader->health().errors == opens; }));
    ASSERT_TRUE(m_env.wait_for_sleepers(1));
    EXPECT_EQ(reader->health().state, "waiting for device");
    m_env.advance_ms(wait_ms - 1);
    ASSERT_TRUE(m_env.wait_for_sleepers(1));
    EXPECT_EQ(m_opens, opens) << "retried before " << wait_ms << " ms";
    m_env.advance_ms(1);
    ASSERT_TRUE(wait_until([&] { return m_opens == opens + 1; })) << wait_ms;
  }
  reader->stop();
  reader->stop();
  EXPECT_EQ(reader->health().state, "stopped");
  EXPECT_TRUE(m_scans.all().empty());
}

// ---------------------------------------------------------------------------------------------
// Serial mode through real pseudo-terminals

using reflow_test::Pty;

class SerialScannerTest : public ::testing::Test {
 protected:
  void point_link_at(const Pty& pty) {
    std::filesystem::remove(m_link);
    std::filesystem::create_symlink(pty.name(), m_link);
  }

  reflow_test::TempDir m_dir;
  std::filesystem::path m_link = m_dir / "usb-Example_Scanner-if00";
  FakeEnv m_env;
  Logger m_log{LogLevel::error};
  Scans m_scans;
};

TEST_F(SerialScannerTest, ReadsCrLfCodesAndSurvivesTheDeviceVanishingAndComingBack) {
  auto first = std::make_unique<Pty>();
  ASSERT_TRUE(first->ok()) << "openpty failed";
  point_link_at(*first);
  ScannerConfig config;
  config.path = m_link.string();
  config.mode = ScannerMode::serial;
  config.patterns.push_back(
      {"spool", "^WEB\\+SPOOLMAN:S-[0-9]+$", std::regex("^WEB\\+SPOOLMAN:S-[0-9]+$")});
  auto reader = make_scanner_reader(config, m_env, m_log, "test");
  ASSERT_TRUE(reader->start(m_scans.callback()));
  ASSERT_TRUE(wait_until([&] { return reader->health().state == "connected"; }))
      << reader->health().last_error;
  first->close_slave();  // the reader holds its own

  ASSERT_TRUE(first->write("WEB+SPOOLMAN:S-17\r\nurn:x:ba"));
  ASSERT_TRUE(first->write("tch:42\r"));
  auto scans = m_scans.wait_for(2);
  ASSERT_EQ(scans.size(), 2u);
  EXPECT_EQ(scans[0].code, "WEB+SPOOLMAN:S-17");
  EXPECT_EQ(scans[0].label, "spool");
  EXPECT_EQ(scans[1].code, "urn:x:batch:42");
  EXPECT_EQ(scans[1].label, "");

  // Unplugged: the pty goes away with its by-id link.
  first->close_master();
  std::filesystem::remove(m_link);
  ASSERT_TRUE(wait_until([&] { return reader->health().errors == 1; }));
  EXPECT_EQ(reader->health().state, "waiting for device");
  ASSERT_TRUE(m_env.wait_for_sleepers(1));
  m_env.advance_ms(1000);  // the link is still missing
  ASSERT_TRUE(wait_until([&] { return reader->health().errors == 2; }));
  ASSERT_TRUE(m_env.wait_for_sleepers(1));

  // Replugged: a new pty behind the same by-id name.
  auto second = std::make_unique<Pty>();
  ASSERT_TRUE(second->ok());
  point_link_at(*second);
  m_env.advance_ms(2000);
  ASSERT_TRUE(wait_until([&] { return reader->health().state == "connected"; }));
  ASSERT_TRUE(second->write("WEB+SPOOLMAN:S-18\n"));
  scans = m_scans.wait_for(3);
  ASSERT_EQ(scans.size(), 3u);
  EXPECT_EQ(scans[2].code, "WEB+SPOOLMAN:S-18");
  reader->stop();
  const ScannerHealth health = reader->health();
  EXPECT_EQ(health.scans, 3u);
  EXPECT_EQ(health.errors, 2u);
}

// ---------------------------------------------------------------------------------------------
// The real libevdev backend through /dev/uinput

TEST(UinputScannerTest, ScansAVirtualKeyboardThroughTheRealEvdevBackendWithAGrab) {
  if (::access("/dev/uinput", W_OK) != 0)
    GTEST_SKIP() << "/dev/uinput is absent or not writable here (load the uinput module and "
                    "run as a user who may write it): the virtual scanner needs it";
  libevdev* dev = libevdev_new();
  libevdev_set_name(dev, "reflow-agent test scanner");
  libevdev_enable_event_type(dev, EV_KEY);
  for (unsigned code = KEY_ESC; code <= KEY_KPDOT; ++code)
    libevdev_enable_event_code(dev, EV_KEY, code, nullptr);
  libevdev_enable_event_code(dev, EV_KEY, KEY_KPENTER, nullptr);
  libevdev_uinput* uinput = nullptr;
  const int rc = libevdev_uinput_create_from_device(dev, LIBEVDEV_UINPUT_OPEN_MANAGED, &uinput);
  if (rc < 0) {
    libevdev_free(dev);
    GTEST_SKIP() << "cannot create a uinput device: " << std::strerror(-rc);
  }
  const char* devnode = libevdev_uinput_get_devnode(uinput);
  const std::string node = devnode ? devnode : "";
  ASSERT_FALSE(node.empty());
  // udev may still be creating the node or setting its permissions.
  ASSERT_TRUE(wait_until([&] {
    const int fd = ::open(node.c_str(), O_RDONLY | O_NONBLOCK);
    if (fd >= 0) ::close(fd);
    return fd >= 0;
  })) << node;

  FakeEnv env;
  Logger log(LogLevel::error);
  Scans scans;
  ScannerConfig config;
  config.path = node;
  auto reader = make_scanner_reader(config, env, log, "test");
  ASSERT_TRUE(reader->start(scans.callback()));
  ASSERT_TRUE(wait_until([&] { return reader->health().state == "connected"; }))
      << reader->health().last_error;

  // The grab is exclusive: a second reader is refused.
  auto second = open_evdev_source(node, true, env);
  EXPECT_FALSE(second);

  const auto key = [&](unsigned code, int value) {
    libevdev_uinput_write_event(uinput, EV_KEY, code, value);
    libevdev_uinput_write_event(uinput, EV_SYN, SYN_REPORT, 0);
  };
  const auto tap = [&](unsigned code) {
    key(code, 1);
    key(code, 0);
  };
  for (unsigned code : {KEY_U, KEY_R, KEY_N})
    tap(code);
  key(KEY_LEFTSHIFT, 1);
  tap(KEY_SEMICOLON);
  key(KEY_LEFTSHIFT, 0);
  for (unsigned code : {KEY_4, KEY_2})
    tap(code);
  tap(KEY_KPENTER);
  const auto got = scans.wait_for(1);
  reader->stop();
  libevdev_uinput_destroy(uinput);
  libevdev_free(dev);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].code, "urn:42");
}

// ---------------------------------------------------------------------------------------------
// The `barcode` kind

TEST(BarcodeDriverTest, LogsScansShowsTheLastInHealthAndEmitsNothing) {
  FakeEnv env;
  Logger log(LogLevel::error);
  auto config = agent_config(read_text(k_testdata / "shifted_batch" / "driver.toml"));
  ASSERT_TRUE(config) << config.error().message;
  DriverTable table(config->drivers.at(0));
  auto scanner = parse_scanner_config(table, "");
  ASSERT_TRUE(scanner) << scanner.error().message;
  auto events = load_key_recording(k_testdata / "shifted_batch" / "events.txt");
  ASSERT_TRUE(events) << events.error().message;
  auto driver = make_barcode_driver(
      *scanner, "front", env, log,
      [&](const std::filesystem::path&, bool) -> Result<std::unique_ptr<KeyEventSource>> {
        return std::make_unique<ReplayKeySource>(*events, env);
      });
  reflow_test::CapturingSink sink;
  reflow_test::TempDir state;
  ASSERT_TRUE(driver->start(sink, state.path()));
  ASSERT_TRUE(env.wait_for_sleepers(1));
  env.advance_ms(1000);
  ASSERT_TRUE(wait_until([&] {
    return driver->health().state.find("urn:x:batch:42") != std::string::npos;
  })) << driver->health().state;
  const DriverHealth health = driver->health();
  EXPECT_NE(health.state.find("connected; 1 scans"), std::string::npos) << health.state;
  EXPECT_NE(health.state.find("(batch)"), std::string::npos) << health.state;
  EXPECT_EQ(health.errors, 0u);
  driver->stop();
  EXPECT_TRUE(sink.events().empty());
}

TEST(BarcodeDriverTest, TheKindValidatesItsKeysAndOpensNothing) {
  const DriverKind& kind = barcode_driver_kind();
  EXPECT_EQ(kind.kind(), "barcode");
  Logger log(LogLevel::error);
  auto good = agent_config(
      "[[driver]]\nkind = \"barcode\"\nname = \"b\"\npath = "
      "\"/dev/input/by-id/none-event-kbd\"\n");
  ASSERT_TRUE(good) << good.error().message;
  EXPECT_TRUE(kind.create(good->drivers.at(0), Env::real(), log));
  auto unknown = agent_config(
      "[[driver]]\nkind = \"barcode\"\nname = \"b\"\npath = \"/dev/ttyACM0\"\nsuffix = \"CR\"\n");
  ASSERT_TRUE(unknown) << unknown.error().message;
  auto refused = kind.create(unknown->drivers.at(0), Env::real(), log);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("suffix"), std::string::npos);
}

TEST(BarcodeDriverTest, ReplayRecordingsRejectMalformedLines) {
  EXPECT_TRUE(parse_key_recording("1.000001 EV_KEY KEY_A 1\n1.000002 1 30 0\n", "x"));
  auto bad = parse_key_recording("# c\n1.5 EV_KEY KEY_A 1\n", "x");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("x:2"), std::string::npos);
  EXPECT_FALSE(parse_key_recording("1.000001 EV_KEY KEY_NOPE 1\n", "x"));
}

}  // namespace
}  // namespace barcode
}  // namespace agent
