// SPDX-License-Identifier: AGPL-3.0-or-later
// The vector table and the reset handler of the STM32F4 image (issue 18). The Cortex-M4 loads
// the initial stack pointer and the reset handler's address from the first two words of the
// table, which the linker script (ld/stm32f4.ld) places at the start of flash (PM0214 §2.3.4
// "Vector table"). Reset_Handler copies .data from flash, zeroes .bss, enables the FPU (the image
// is built for hard float, PM0214 §4.6.6 "Enabling the FPU"), runs the static constructors and
// calls main. Only the interrupts the board uses have handlers; every other one stops in
// Default_Handler, where a debugger finds it.
#include <array>
#include <cstddef>
#include <cstdint>

#include "reflow/stm32/regs.hpp"

extern "C" {
// From the linker script.
extern std::uint32_t __data_start;
extern std::uint32_t __data_end;
extern const std::uint32_t __data_load;
extern std::uint32_t __bss_start;
extern std::uint32_t __bss_end;
extern std::uint32_t __stack_top;
using InitFunction = void (*)();
extern InitFunction __init_array_start[];
extern InitFunction __init_array_end[];

int main();
void Reset_Handler();
void Default_Handler();
// The board's handlers (board.cpp).
void SysTick_Handler();
void TIM2_IRQHandler();
void USART1_IRQHandler();
void USART2_IRQHandler();

// A pure virtual function is never called (every interface is implemented); GCC still names this
// in abstract classes' vtables.
void __cxa_pure_virtual() {
  for (;;) {
  }
}
}

void Default_Handler() {
  for (;;) {
  }
}

void Reset_Handler() {
  std::uint32_t* to = &__data_start;
  for (const std::uint32_t* from = &__data_load; to < &__data_end;)
    *to++ = *from++;
  for (std::uint32_t* p = &__bss_start; p < &__bss_end;)
    *p++ = 0;
  reflow::stm32::core::cpacr() |= reflow::stm32::core::k_cpacr_fpu_full;
  asm volatile("dsb\n\tisb" ::: "memory");
  for (InitFunction* f = __init_array_start; f < __init_array_end; ++f)
    (*f)();
  main();
  for (;;) {
  }
}

namespace {

using Vector = void (*)();
namespace irq = reflow::stm32::irq;
// The device interrupts up to USART2 (38), the last one the board uses.
constexpr std::size_t k_irqs = irq::k_usart2 + 1;

constexpr std::array<Vector, k_irqs> irq_vectors() {
  std::array<Vector, k_irqs> v{};
  for (auto& handler : v)
    handler = Default_Handler;
  v[irq::k_tim2] = TIM2_IRQHandler;
  v[irq::k_usart1] = USART1_IRQHandler;
  v[irq::k_usart2] = USART2_IRQHandler;
  return v;
}

/// PM0214 §2.3.4 Figure 12: the initial SP, then 15 system exceptions, then the interrupts.
struct VectorTable {
  std::uint32_t* initial_sp;
  std::array<Vector, 15> system;
  std::array<Vector, k_irqs> device;
};

}  // namespace

__attribute__((section(".isr_vector"), used)) const VectorTable g_vector_table{
    &__stack_top,
    {Reset_Handler, Default_Handler /* NMI */, Default_Handler /* HardFault */,
     Default_Handler /* MemManage */, Default_Handler /* BusFault */,
     Default_Handler /* UsageFault */, nullptr, nullptr, nullptr, nullptr,
     Default_Handler /* SVCall */, Default_Handler /* DebugMonitor */, nullptr,
     Default_Handler /* PendSV */, SysTick_Handler},
    irq_vectors(),
};
