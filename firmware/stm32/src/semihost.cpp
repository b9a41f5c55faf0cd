// SPDX-License-Identifier: AGPL-3.0-or-later
#include "semihost.hpp"

#include <cstring>

namespace reflow::stm32::semihost {
namespace {

// r0: the operation, r1: its parameter block; the result comes back in r0 (§4.1 "The
// semihosting interface", M-profile: BKPT 0xAB).
std::int32_t call(std::uint32_t operation, const void* parameters) {
  register std::uint32_t r0 asm("r0") = operation;
  register const void* r1 asm("r1") = parameters;
  asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return static_cast<std::int32_t>(r0);
}

constexpr std::uint32_t k_sys_open = 0x01;
constexpr std::uint32_t k_sys_close = 0x02;
constexpr std::uint32_t k_sys_write0 = 0x04;
constexpr std::uint32_t k_sys_write = 0x05;
constexpr std::uint32_t k_sys_read = 0x06;

}  // namespace

int open(const char* path, std::uint32_t mode) {
  const std::uintptr_t block[3] = {reinterpret_cast<std::uintptr_t>(path), mode, std::strlen(path)};
  return call(k_sys_open, block);
}

std::size_t read(int handle, void* data, std::size_t size) {
  const std::uintptr_t block[3] = {static_cast<std::uintptr_t>(handle),
                                   reinterpret_cast<std::uintptr_t>(data), size};
  // SYS_READ returns the number of bytes *not* read.
  const std::int32_t left = call(k_sys_read, block);
  if (left < 0 || static_cast<std::size_t>(left) > size) return 0;
  return size - static_cast<std::size_t>(left);
}

bool write(int handle, const void* data, std::size_t size) {
  const std::uintptr_t block[3] = {static_cast<std::uintptr_t>(handle),
                                   reinterpret_cast<std::uintptr_t>(data), size};
  return call(k_sys_write, block) == 0;
}

void close(int handle) {
  const std::uintptr_t block[1] = {static_cast<std::uintptr_t>(handle)};
  call(k_sys_close, block);
}

void write0(const char* text) {
  call(k_sys_write0, text);
}

}  // namespace reflow::stm32::semihost
