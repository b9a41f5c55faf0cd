// SPDX-License-Identifier: AGPL-3.0-or-later
// The board layer of the STM32F4 image (issue 18): implements firmware/app's interfaces on the
// chip and runs the App from its main loop.
//
//   USART1 PA9 (TX) / PA10 (RX), 115200 8N1   the link to the Pi (docs/firmware-link.md); the
//                                             same pins the ROM bootloader uses for stm32flash
//   USART2 PA3 (RX), 9600 8N1                 the RDM6300 badge reader (its TX only)
//   ADC1 channel 0, PA0                       the clamp (SCT-013 with burden and bias divider)
//   PB0, pull-up, active low                  the running contact
//   PB1, pull-up, active low                  the S0 pulse output (open collector, EN 62053-31)
//   LED (board's user LED)                    lit once the agent's config arrived
//   TIM2 update at the configured rate        one ADC conversion per tick
//   SysTick 1 kHz                             the millisecond clock (LINK §2)
//   flash sector 3                            the boot counter, an append-only log of words
//
// Interrupt handlers only move bytes and samples into single-producer/single-consumer rings;
// everything else happens in main's loop, as the App requires. The QEMU variant
// (REFLOW_FW_SEMIHOSTING, board netduinoplus2) reads its clamp samples and keeps its boot counter
// in host files through semihosting, since QEMU emulates neither the ADC's input nor flash
// programming, and reads no GPIO (QEMU's STM32F405 has none). It also paces the samples by
// SysTick rather than TIM2: QEMU 7.2's STM32F2xx timer model does not reload at ARR (its counter
// runs on past it and the update interrupts come late and irregularly: 140 a second where 1000
// were due), while its SysTick keeps time.
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "reflow/fw/app.hpp"
#include "reflow/stm32/regs.hpp"
#if REFLOW_FW_SEMIHOSTING
#include "semihost.hpp"
#endif

namespace {

namespace r = reflow::stm32;

// Clocks (Makefile/CMake per board): the core's clock, which SysTick counts, and TIM2's. After
// reset both are the 16 MHz HSI on real boards (RM0368 §6.2). QEMU's netduinoplus2 runs its core
// clock at 168 MHz and its timers at 1 GHz whatever RCC says (hw/arm/stm32f405_soc.c).
constexpr std::uint32_t k_core_hz = REFLOW_FW_CORE_HZ;
constexpr std::uint32_t k_tim2_hz = REFLOW_FW_TIM2_HZ;
constexpr std::uint32_t k_pclk_hz = 16'000'000;  // APB1 and APB2 at HSI, no prescaler
constexpr std::uint32_t k_link_baud = 115'200;
constexpr std::uint32_t k_badge_baud = 9'600;  // RDM6300
constexpr std::uint16_t k_mid_rail_counts = 2048;

/// A ring written by one interrupt handler and read by the main loop (single producer, single
/// consumer: each index is written by one side only; 32-bit accesses are atomic on the M4).
template <typename T, std::size_t N>
class IsrRing {
  static_assert((N & (N - 1)) == 0, "N must be a power of two");

 public:
  /// From the interrupt: false when full (the item is lost).
  bool push(T item) {
    const std::uint32_t head = m_head;
    if (head - m_tail == N) return false;
    m_items[head % N] = item;
    asm volatile("dmb" ::: "memory");
    m_head = head + 1;
    return true;
  }
  /// From the main loop.
  bool pop(T& item) {
    const std::uint32_t tail = m_tail;
    if (tail == m_head) return false;
    asm volatile("dmb" ::: "memory");
    item = m_items[tail % N];
    m_tail = tail + 1;
    return true;
  }

 private:
  std::array<T, N> m_items{};
  volatile std::uint32_t m_head = 0;
  volatile std::uint32_t m_tail = 0;
};

volatile std::uint32_t g_ms = 0;  // SysTick
IsrRing<std::uint8_t, 256> g_link_rx;
IsrRing<std::uint8_t, 32> g_badge_rx;
volatile std::uint32_t g_rx_lost = 0;  // bytes lost to a full ring or a USART overrun
#if !REFLOW_FW_SEMIHOSTING
IsrRing<std::uint16_t, 256> g_samples;  // 64 ms at 4 kHz of slack for the main loop
volatile std::uint32_t g_samples_lost = 0;
#endif

void set_field(volatile std::uint32_t& reg, unsigned shift, unsigned bits, std::uint32_t value) {
  const std::uint32_t mask = ((1U << bits) - 1) << shift;
  reg = (reg & ~mask) | (value << shift);
}

void pin_mode(std::uintptr_t port, unsigned pin, r::gpio::Mode mode) {
  set_field(r::gpio::moder(port), pin * 2, 2, static_cast<std::uint32_t>(mode));
}

void pin_pull(std::uintptr_t port, unsigned pin, r::gpio::Pull pull) {
  set_field(r::gpio::pupdr(port), pin * 2, 2, static_cast<std::uint32_t>(pull));
}

void pin_alternate(std::uintptr_t port, unsigned pin, std::uint32_t af) {
  pin_mode(port, pin, r::gpio::Mode::alternate);
  if (pin < 8)
    set_field(r::gpio::afrl(port), pin * 4, 4, af);
  else
    set_field(r::gpio::afrh(port), (pin - 8) * 4, 4, af);
}

void set_led(bool on) {
  const bool level = REFLOW_FW_LED_ACTIVE_LOW ? !on : on;
  r::gpio::bsrr(REFLOW_FW_LED_PORT) = 1U << (REFLOW_FW_LED_PIN + (level ? 0 : 16));
}

/// An active-low input with pull-up: true when pulled to ground. Never active under QEMU.
bool input_active([[maybe_unused]] unsigned pin) {
#if REFLOW_FW_SEMIHOSTING
  return false;
#else
  return (r::gpio::idr(r::gpio::k_port_b) & (1U << pin)) == 0;
#endif
}

void usart_init(std::uintptr_t usart, std::uint32_t baud, bool transmit) {
  r::usart::brr(usart) = r::usart::brr_for(k_pclk_hz, baud);
  r::usart::cr1(usart) = r::usart::k_cr1_ue | r::usart::k_cr1_re | r::usart::k_cr1_rxneie |
                         (transmit ? r::usart::k_cr1_te : 0);
}

void usart_receive(std::uintptr_t usart, auto& ring) {
  // Reading SR then DR clears RXNE and ORE (RM0368 §19.6.1).
  const std::uint32_t sr = r::usart::sr(usart);
  if ((sr & (r::usart::k_sr_rxne | r::usart::k_sr_ore)) == 0) return;
  const auto byte = static_cast<std::uint8_t>(r::usart::dr(usart));
  if ((sr & r::usart::k_sr_ore) != 0) g_rx_lost = g_rx_lost + 1;
  if ((sr & r::usart::k_sr_rxne) != 0 && !ring.push(byte)) g_rx_lost = g_rx_lost + 1;
}

void board_init() {
  using namespace r;
  rcc::ahb1enr() |= rcc::k_ahb1_gpioa | rcc::k_ahb1_gpiob | rcc::k_ahb1_gpioc;
  rcc::apb1enr() |= rcc::k_apb1_tim2 | rcc::k_apb1_usart2;
  rcc::apb2enr() |= rcc::k_apb2_usart1 | rcc::k_apb2_adc1;
  asm volatile("dsb" ::: "memory");  // the clocks run before their registers are written

  pin_alternate(gpio::k_port_a, 9, gpio::k_af_usart12);   // USART1_TX
  pin_alternate(gpio::k_port_a, 10, gpio::k_af_usart12);  // USART1_RX
  pin_pull(gpio::k_port_a, 10, gpio::Pull::up);           // idle high with the Pi unplugged
  pin_alternate(gpio::k_port_a, 3, gpio::k_af_usart12);   // USART2_RX
  pin_pull(gpio::k_port_a, 3, gpio::Pull::up);
  pin_mode(gpio::k_port_a, 0, gpio::Mode::analog);  // ADC1_IN0
  pin_mode(gpio::k_port_b, 0, gpio::Mode::input);   // running
  pin_pull(gpio::k_port_b, 0, gpio::Pull::up);
  pin_mode(gpio::k_port_b, 1, gpio::Mode::input);  // S0
  pin_pull(gpio::k_port_b, 1, gpio::Pull::up);
  pin_mode(REFLOW_FW_LED_PORT, REFLOW_FW_LED_PIN, gpio::Mode::output);
  set_led(false);

  usart_init(usart::k_usart1, k_link_baud, true);
  usart_init(usart::k_usart2, k_badge_baud, false);

  // ADC1: one regular conversion of channel 0 per software start, 12 bits, right-aligned.
  adc::ccr() = adc::k_ccr_adcpre_div2;
  set_field(adc::smpr2(), 0, 3, adc::k_smp_84_cycles);
  adc::sqr1() = 0;  // one conversion in the sequence
  adc::sqr3() = 0;  // channel 0
  adc::cr2() = adc::k_cr2_adon;

  core::syst_rvr() = k_core_hz / 1000 - 1;
  core::syst_cvr() = 0;
  core::syst_csr() = core::k_csr_enable | core::k_csr_tickint | core::k_csr_clksource_cpu;

  core::nvic_enable(irq::k_usart1);
  core::nvic_enable(irq::k_usart2);
  core::nvic_enable(irq::k_tim2);
}

/// TIM2 counts at 1 MHz and overflows `rate_hz` times a second.
void start_sampling(std::uint32_t rate_hz) {
  using namespace r;
  if (REFLOW_FW_SEMIHOSTING) return;  // paced by SysTick (see the top of this file)
  tim2::cr1() = 0;
  tim2::psc() = k_tim2_hz / 1'000'000 - 1;
  tim2::arr() = 1'000'000 / rate_hz - 1;
  tim2::egr() = tim2::k_egr_ug;  // load PSC and ARR now
  tim2::sr() = 0;
  tim2::dier() = tim2::k_dier_uie;
  tim2::cr1() = tim2::k_cr1_cen;
#if !REFLOW_FW_SEMIHOSTING
  adc::cr2() = adc::cr2() | adc::k_cr2_swstart;  // the first conversion, read at the first tick
#endif
}

class SysTickClock final : public reflow::fw::Clock {
 public:
  /// Extends SysTick's 32-bit count (49 days) to 64 bits; called from the main loop only.
  std::uint64_t now_ms() override {
    const std::uint32_t now = g_ms;
    if (now < m_last) m_high += std::uint64_t{1} << 32;
    m_last = now;
    return m_high | now;
  }

 private:
  std::uint32_t m_last = 0;
  std::uint64_t m_high = 0;
};

class UsartSink final : public reflow::fw::ByteSink {
 public:
  /// Blocks until every byte is in the transmitter: at 115200 baud a 70-byte frame takes 6 ms,
  /// while the interrupts keep sampling.
  void write(std::span<const std::uint8_t> bytes) override {
    for (const std::uint8_t b : bytes) {
      while ((r::usart::sr(r::usart::k_usart1) & r::usart::k_sr_txe) == 0) {
      }
      r::usart::dr(r::usart::k_usart1) = b;
    }
  }
};

#if REFLOW_FW_SEMIHOSTING
/// The boot counter in the host file fw-boot.bin (4 bytes, little-endian) in QEMU's working
/// directory: it survives the emulator's restarts as flash survives a board's.
class HostBootCounter final : public reflow::fw::BootCounter {
 public:
  std::uint32_t increment(bool& ok) override {
    std::uint32_t value = 0;
    if (const int in = r::semihost::open("fw-boot.bin", r::semihost::k_mode_read_binary); in >= 0) {
      if (r::semihost::read(in, &value, sizeof value) != sizeof value) value = 0;
      r::semihost::close(in);
    }
    ++value;
    const int out = r::semihost::open("fw-boot.bin", r::semihost::k_mode_write_binary);
    ok = out >= 0 && r::semihost::write(out, &value, sizeof value);
    if (out >= 0) r::semihost::close(out);
    return value;
  }
};
using BoardBootCounter = HostBootCounter;

/// The board's log on QEMU's standard error, in the words of reflow-fw-sim's log, so that tests
/// wait for what the board did ("configured at", "sent seq N at T ms, K unacked").
class HostLog {
 public:
  HostLog& operator<<(const char* text) {
    for (; *text != 0 && m_size + 1 < m_line.size(); ++text)
      m_line[m_size++] = *text;
    return *this;
  }
  HostLog& operator<<(std::uint64_t value) {
    std::array<char, 21> digits{};
    std::size_t n = 0;
    do {
      digits[n++] = static_cast<char>('0' + value % 10);
      value /= 10;
    } while (value != 0);
    while (n > 0 && m_size + 1 < m_line.size())
      m_line[m_size++] = digits[--n];
    return *this;
  }
  /// Writes the line and a newline.
  void end() {
    *this << "\n";
    m_line[m_size] = 0;
    r::semihost::write0(m_line.data());
    m_size = 0;
  }

 private:
  std::array<char, 96> m_line{};
  std::size_t m_size = 0;
};

/// The clamp's samples from the host file fw-samples.bin: ADC counts as 16-bit little-endian
/// words, one per TIM2 tick from the agent's config on; mid-rail (no current) after its end.
class HostSamples {
 public:
  std::uint16_t next() {
    if (m_at == m_size) refill();
    return m_at < m_size ? m_buffer[m_at++] : k_mid_rail_counts;
  }

 private:
  void refill() {
    m_at = m_size = 0;
    if (m_handle == k_unopened)
      m_handle = r::semihost::open("fw-samples.bin", r::semihost::k_mode_read_binary);
    if (m_handle < 0) return;
    m_size = r::semihost::read(m_handle, m_buffer.data(), sizeof m_buffer) / 2;
  }

  static constexpr int k_unopened = -2;
  int m_handle = k_unopened;
  std::array<std::uint16_t, 128> m_buffer{};
  std::size_t m_at = 0;
  std::size_t m_size = 0;
};
#else
/// The boot counter in flash sector 3: an append-only log of 32-bit words, each the next count,
/// so that the 16 KiB sector is erased once every 4096 boots (10 000 erase cycles guaranteed,
/// RM0368 §3.5, datasheet "Flash memory endurance"). The count is the last programmed word.
class FlashBootCounter final : public reflow::fw::BootCounter {
 public:
  std::uint32_t increment(bool& ok) override {
    using namespace r::flash;
    const auto* words = reinterpret_cast<const volatile std::uint32_t*>(k_boot_counter_address);
    constexpr std::size_t k_words = k_boot_counter_bytes / 4;
    std::size_t used = 0;
    while (used < k_words && words[used] != 0xFFFF'FFFF)
      ++used;
    const std::uint32_t value = (used == 0 ? 0 : words[used - 1]) + 1;
    unlock();
    ok = true;
    if (used == k_words) {  // full: erase the sector and start again (RM0368 §3.5.4)
      wait_idle();
      cr() = k_cr_psize_x32 | k_cr_ser | cr_snb(k_boot_counter_sector);
      cr() = cr() | k_cr_strt;
      ok = wait_idle();
      used = 0;
    }
    if (ok) {  // program one word (RM0368 §3.5.5)
      cr() = k_cr_psize_x32 | k_cr_pg;
      *const_cast<volatile std::uint32_t*>(words + used) = value;
      ok = wait_idle() && words[used] == value;
    }
    cr() = k_cr_lock;
    return value;
  }

 private:
  static void unlock() {
    using namespace r::flash;
    if ((cr() & k_cr_lock) == 0) return;
    keyr() = k_key1;
    keyr() = k_key2;
  }
  /// Waits for BSY to clear; false (and the error flags cleared) when an error was raised.
  static bool wait_idle() {
    using namespace r::flash;
    while ((sr() & k_sr_bsy) != 0) {
    }
    const std::uint32_t errors = sr() & k_sr_errors;
    sr() = errors;  // write 1 to clear
    return errors == 0;
  }
};
using BoardBootCounter = FlashBootCounter;
#endif

reflow::fw::Hello identity() {
  reflow::fw::Hello hello;
  hello.fw_version = REFLOW_FW_VERSION;
  hello.capabilities = reflow::fw::k_cap_current | reflow::fw::k_cap_running_input |
                       reflow::fw::k_cap_s0 | reflow::fw::k_cap_badge;
#if REFLOW_FW_SEMIHOSTING
  // QEMU maps no unique ID: a fixed one, "QEMU" and the board's name.
  constexpr char k_id[] = "QEMU-nd+2-01";
  for (std::size_t i = 0; i < hello.board_id.size(); ++i)
    hello.board_id[i] = static_cast<std::uint8_t>(k_id[i]);
#else
  for (std::size_t i = 0; i < hello.board_id.size(); ++i)
    hello.board_id[i] = *reinterpret_cast<const volatile std::uint8_t*>(r::k_unique_id + i);
#endif
  return hello;
}

SysTickClock g_clock;
UsartSink g_uart;
BoardBootCounter g_boot_counter;

}  // namespace

extern "C" void SysTick_Handler() {
  g_ms = g_ms + 1;
}

extern "C" void USART1_IRQHandler() {
  usart_receive(r::usart::k_usart1, g_link_rx);
}

extern "C" void USART2_IRQHandler() {
  usart_receive(r::usart::k_usart2, g_badge_rx);
}

extern "C" void TIM2_IRQHandler() {
  r::tim2::sr() = ~r::tim2::k_sr_uif;
#if !REFLOW_FW_SEMIHOSTING
  // The conversion started at the previous tick finished long ago (~12 µs): take it and start
  // the next, so every sample is taken at a tick, without waiting here.
  const auto counts = static_cast<std::uint16_t>(r::adc::dr() & 0x0FFF);
  r::adc::cr2() = r::adc::cr2() | r::adc::k_cr2_swstart;
  if (!g_samples.push(counts)) g_samples_lost = g_samples_lost + 1;
#endif
}

int main() {
  board_init();
  static reflow::fw::App app(g_clock, g_uart, g_boot_counter, identity());
  app.begin();
#if REFLOW_FW_SEMIHOSTING
  static HostSamples samples;
  static HostLog log;
  std::uint64_t samples_taken = 0;
  std::uint32_t sampling_from_ms = 0;
  std::uint32_t last_seq_logged = 0;
  std::size_t unacked_logged = 0;
  (log << "boot " << app.boot()).end();
#else
  std::uint32_t samples_lost_seen = 0;
#endif
  std::uint32_t sampling_rate_hz = 0;
  std::uint32_t inputs_ms = 0;
  for (;;) {
    for (std::uint8_t byte = 0; g_link_rx.pop(byte);)
      app.on_rx_byte(byte);
    for (std::uint8_t byte = 0; g_badge_rx.pop(byte);)
      app.on_badge_byte(byte);

    if (app.configured() && app.config().sample_rate_hz != sampling_rate_hz) {
      sampling_rate_hz = app.config().sample_rate_hz;
      start_sampling(sampling_rate_hz);
      set_led(true);
#if REFLOW_FW_SEMIHOSTING
      sampling_from_ms = g_ms;
      samples_taken = 0;
      (log << "configured at " << g_clock.now_ms() << " ms").end();
#endif
    }
#if REFLOW_FW_SEMIHOSTING
    if (sampling_rate_hz != 0) {
      const std::uint64_t due = std::uint64_t{g_ms - sampling_from_ms} * sampling_rate_hz / 1000;
      for (; samples_taken < due; ++samples_taken)
        app.on_sample(samples.next());
    }
#else
    for (std::uint16_t counts = 0; g_samples.pop(counts);)
      app.on_sample(counts);
    for (const std::uint32_t lost = g_samples_lost; samples_lost_seen != lost; ++samples_lost_seen)
      app.note_dropped_sample();
#endif
    if (const std::uint32_t now = g_ms; now != inputs_ms) {  // the inputs once a millisecond
      inputs_ms = now;
      app.on_running(input_active(0));
      app.on_s0(input_active(1));
    }
    app.poll();
#if REFLOW_FW_SEMIHOSTING
    if (app.last_seq() != last_seq_logged || app.unacked() != unacked_logged) {
      last_seq_logged = app.last_seq();
      unacked_logged = app.unacked();
      (log << "sent seq " << last_seq_logged << " at " << g_clock.now_ms() << " ms, "
           << unacked_logged << " unacked")
          .end();
    }
#endif
    asm volatile("wfi");  // until the next interrupt: SysTick at the latest
  }
}
