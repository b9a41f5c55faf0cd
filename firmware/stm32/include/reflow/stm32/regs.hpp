// SPDX-License-Identifier: AGPL-3.0-or-later
// The few STM32F4 and Cortex-M4 registers the machine node uses (issue 18), as addresses and bit
// positions, with no vendor SDK (none is packaged for Debian). Each block cites its section in
// ST's reference manuals — RM0368 (STM32F401), RM0383 (STM32F411), RM0090 (STM32F405/407, the
// chip of QEMU's netduinoplus2) — and in PM0214 (the Cortex-M4 programming manual) for the core
// peripherals. Every register used here has the same address and bits on the three chips; where a
// manual's section number differs it is given per manual. Only what the board layer touches is
// defined: this is not a full device header.
#pragma once

#include <cstdint>

namespace reflow::stm32 {

/// A memory-mapped 32-bit register at `address`.
inline volatile std::uint32_t& reg(std::uintptr_t address) {
  return *reinterpret_cast<volatile std::uint32_t*>(address);
}

// --- RCC: reset and clock control. RM0368 §6.3, RM0383 §6.3, RM0090 §7.3 ("RCC registers").
// The boards run from the 16 MHz internal RC oscillator (HSI) that is selected after reset: the
// node samples a few kHz and talks at 115200 baud, so no PLL is set up (RM0368 §6.2.2).
namespace rcc {
inline constexpr std::uintptr_t k_base = 0x4002'3800;
inline volatile std::uint32_t& ahb1enr() {
  return reg(k_base + 0x30);
}  ///< §6.3.9 / §7.3.10
inline volatile std::uint32_t& apb1enr() {
  return reg(k_base + 0x40);
}  ///< §6.3.11 / §7.3.13
inline volatile std::uint32_t& apb2enr() {
  return reg(k_base + 0x44);
}  ///< §6.3.12 / §7.3.14
inline constexpr std::uint32_t k_ahb1_gpioa = 1U << 0;
inline constexpr std::uint32_t k_ahb1_gpiob = 1U << 1;
inline constexpr std::uint32_t k_ahb1_gpioc = 1U << 2;
inline constexpr std::uint32_t k_apb1_tim2 = 1U << 0;
inline constexpr std::uint32_t k_apb1_usart2 = 1U << 17;
inline constexpr std::uint32_t k_apb2_usart1 = 1U << 4;
inline constexpr std::uint32_t k_apb2_adc1 = 1U << 8;
}  // namespace rcc

// --- GPIO. RM0368 §8.4, RM0383 §8.4, RM0090 §8.4 ("GPIO registers"); ports A, B, C.
namespace gpio {
inline constexpr std::uintptr_t k_port_a = 0x4002'0000;
inline constexpr std::uintptr_t k_port_b = 0x4002'0400;
inline constexpr std::uintptr_t k_port_c = 0x4002'0800;
inline volatile std::uint32_t& moder(std::uintptr_t port) {
  return reg(port + 0x00);
}
inline volatile std::uint32_t& pupdr(std::uintptr_t port) {
  return reg(port + 0x0C);
}
inline volatile std::uint32_t& idr(std::uintptr_t port) {
  return reg(port + 0x10);
}
inline volatile std::uint32_t& bsrr(std::uintptr_t port) {
  return reg(port + 0x18);
}
inline volatile std::uint32_t& afrl(std::uintptr_t port) {
  return reg(port + 0x20);
}
inline volatile std::uint32_t& afrh(std::uintptr_t port) {
  return reg(port + 0x24);
}
/// MODER's two bits per pin (§8.4.1).
enum class Mode : std::uint32_t { input = 0b00, output = 0b01, alternate = 0b10, analog = 0b11 };
/// PUPDR's two bits per pin (§8.4.4).
enum class Pull : std::uint32_t { none = 0b00, up = 0b01, down = 0b10 };
/// AF7 is USART1/USART2 on PA2, PA3, PA9, PA10 (datasheets' "Alternate function mapping").
inline constexpr std::uint32_t k_af_usart12 = 7;
}  // namespace gpio

// --- USART. RM0368 §19.6, RM0383 §19.6, RM0090 §30.6 ("USART registers").
namespace usart {
inline constexpr std::uintptr_t k_usart1 = 0x4001'1000;  ///< on APB2
inline constexpr std::uintptr_t k_usart2 = 0x4000'4400;  ///< on APB1
inline volatile std::uint32_t& sr(std::uintptr_t u) {
  return reg(u + 0x00);
}
inline volatile std::uint32_t& dr(std::uintptr_t u) {
  return reg(u + 0x04);
}
inline volatile std::uint32_t& brr(std::uintptr_t u) {
  return reg(u + 0x08);
}
inline volatile std::uint32_t& cr1(std::uintptr_t u) {
  return reg(u + 0x0C);
}
inline constexpr std::uint32_t k_sr_ore = 1U << 3;   ///< overrun: a byte was lost
inline constexpr std::uint32_t k_sr_rxne = 1U << 5;  ///< a received byte is in DR
inline constexpr std::uint32_t k_sr_txe = 1U << 7;   ///< DR can take the next byte
inline constexpr std::uint32_t k_cr1_re = 1U << 2;
inline constexpr std::uint32_t k_cr1_te = 1U << 3;
inline constexpr std::uint32_t k_cr1_rxneie = 1U << 5;
inline constexpr std::uint32_t k_cr1_ue = 1U << 13;
/// BRR for 16× oversampling: USARTDIV = f_ck / (16 × baud) in 12.4 fixed point, i.e.
/// f_ck / baud rounded (§19.3.4, "Fractional baud rate generation").
constexpr std::uint32_t brr_for(std::uint32_t clock_hz, std::uint32_t baud) {
  return (clock_hz + baud / 2) / baud;
}
}  // namespace usart

// --- ADC1. RM0368 §11.12, RM0383 §11.12, RM0090 §13.13 ("ADC registers"); the common
// register CCR at ADC base + 0x300 (§11.12.16 / §13.13.17).
namespace adc {
inline constexpr std::uintptr_t k_adc1 = 0x4001'2000;
inline volatile std::uint32_t& sr() {
  return reg(k_adc1 + 0x00);
}
inline volatile std::uint32_t& cr2() {
  return reg(k_adc1 + 0x08);
}
inline volatile std::uint32_t& smpr2() {
  return reg(k_adc1 + 0x10);
}  ///< channels 0–9
inline volatile std::uint32_t& sqr1() {
  return reg(k_adc1 + 0x2C);
}
inline volatile std::uint32_t& sqr3() {
  return reg(k_adc1 + 0x34);
}
inline volatile std::uint32_t& dr() {
  return reg(k_adc1 + 0x4C);
}
inline volatile std::uint32_t& ccr() {
  return reg(k_adc1 + 0x304);
}
inline constexpr std::uint32_t k_sr_eoc = 1U << 1;
inline constexpr std::uint32_t k_cr2_adon = 1U << 0;
inline constexpr std::uint32_t k_cr2_swstart = 1U << 30;
/// CCR ADCPRE (bits 17:16): 0b00 is PCLK2 / 2, 8 MHz at HSI (ADCCLK at most 36 MHz).
inline constexpr std::uint32_t k_ccr_adcpre_div2 = 0b00U << 16;
/// SMPR sampling time 0b100: 84 cycles, ~10 µs at 8 MHz, for the clamp's high-impedance divider.
inline constexpr std::uint32_t k_smp_84_cycles = 0b100;
}  // namespace adc

// --- TIM2, a 32-bit general-purpose timer. RM0368 §13.4, RM0383 §13.4, RM0090 §18.4
// ("TIM2 to TIM5 registers"). Its update event paces the clamp's sampling.
namespace tim2 {
inline constexpr std::uintptr_t k_base = 0x4000'0000;
inline volatile std::uint32_t& cr1() {
  return reg(k_base + 0x00);
}
inline volatile std::uint32_t& dier() {
  return reg(k_base + 0x0C);
}
inline volatile std::uint32_t& sr() {
  return reg(k_base + 0x10);
}
inline volatile std::uint32_t& egr() {
  return reg(k_base + 0x14);
}
inline volatile std::uint32_t& psc() {
  return reg(k_base + 0x28);
}
inline volatile std::uint32_t& arr() {
  return reg(k_base + 0x2C);
}
inline constexpr std::uint32_t k_cr1_cen = 1U << 0;
inline constexpr std::uint32_t k_dier_uie = 1U << 0;
inline constexpr std::uint32_t k_sr_uif = 1U << 0;
inline constexpr std::uint32_t k_egr_ug = 1U << 0;
}  // namespace tim2

// --- Flash interface. RM0368 §3.8, RM0383 §3.8, RM0090 §3.9 ("Flash interface registers");
// programming and sector erase: RM0368 §3.5.4–§3.5.5, RM0090 §3.6.3–§3.6.4.
namespace flash {
inline constexpr std::uintptr_t k_base = 0x4002'3C00;
inline volatile std::uint32_t& keyr() {
  return reg(k_base + 0x04);
}
inline volatile std::uint32_t& sr() {
  return reg(k_base + 0x0C);
}
inline volatile std::uint32_t& cr() {
  return reg(k_base + 0x10);
}
inline constexpr std::uint32_t k_key1 = 0x4567'0123;  ///< KEYR unlock sequence (§3.5.1)
inline constexpr std::uint32_t k_key2 = 0xCDEF'89AB;
inline constexpr std::uint32_t k_sr_errors = 0xF2;  ///< OPERR, WRPERR, PGAERR, PGPERR, PGSERR
inline constexpr std::uint32_t k_sr_bsy = 1U << 16;
inline constexpr std::uint32_t k_cr_pg = 1U << 0;
inline constexpr std::uint32_t k_cr_ser = 1U << 1;
inline constexpr std::uint32_t k_cr_psize_x32 = 0b10U << 8;  ///< 32-bit writes (2.7–3.6 V)
inline constexpr std::uint32_t k_cr_strt = 1U << 16;
inline constexpr std::uint32_t k_cr_lock = 1U << 31;
constexpr std::uint32_t cr_snb(std::uint32_t sector) {
  return sector << 3;
}
/// Sector 3: 16 KiB at 0x0800C000 on all three chips (RM0368 §3.3 Table 5, RM0090 §3.3
/// Table 5): the boot counter's. The image lives in sectors 0–2 (48 KiB).
inline constexpr std::uint32_t k_boot_counter_sector = 3;
inline constexpr std::uintptr_t k_boot_counter_address = 0x0800'C000;
inline constexpr std::uint32_t k_boot_counter_bytes = 16 * 1024;
}  // namespace flash

/// The 96-bit unique device ID (RM0368 §24.1, RM0383 §24.1, RM0090 §39.1): hello's board_id.
inline constexpr std::uintptr_t k_unique_id = 0x1FFF'7A10;

// --- Cortex-M4 core peripherals (PM0214).
namespace core {
/// SysTick (PM0214 §4.5): the millisecond clock.
inline volatile std::uint32_t& syst_csr() {
  return reg(0xE000'E010);
}
inline volatile std::uint32_t& syst_rvr() {
  return reg(0xE000'E014);
}
inline volatile std::uint32_t& syst_cvr() {
  return reg(0xE000'E018);
}
inline constexpr std::uint32_t k_csr_enable = 1U << 0;
inline constexpr std::uint32_t k_csr_tickint = 1U << 1;
inline constexpr std::uint32_t k_csr_clksource_cpu = 1U << 2;
/// NVIC interrupt set-enable registers (PM0214 §4.2.2).
inline void nvic_enable(unsigned irq) {
  reg(0xE000'E100 + 4 * (irq / 32)) = 1U << (irq % 32);
}
/// CPACR (PM0214 §4.6.1): full access to CP10 and CP11, the FPU.
inline volatile std::uint32_t& cpacr() {
  return reg(0xE000'ED88);
}
inline constexpr std::uint32_t k_cpacr_fpu_full = 0xFU << 20;
}  // namespace core

/// Interrupt numbers (position in the vector table after the 16 system exceptions): RM0368
/// §10.2 Table 38, RM0090 §12.2 Table 61.
namespace irq {
inline constexpr unsigned k_tim2 = 28;
inline constexpr unsigned k_usart1 = 37;
inline constexpr unsigned k_usart2 = 38;
}  // namespace irq

}  // namespace reflow::stm32
