// SPDX-License-Identifier: AGPL-3.0-or-later
// ARM semihosting (ARM's "Semihosting for AArch32 and AArch64", version 2.0, §5 "Semihosting
// operations"): file access on the host through `BKPT 0xAB` on M-profile cores. Only in the
// QEMU board variant (REFLOW_FW_SEMIHOSTING): `qemu-system-arm -semihosting-config
// enable=on,target=native` answers these calls with the host's files, relative to QEMU's
// working directory. On a board without a debugger attached, BKPT is a HardFault, so the real
// boards' images never contain these calls.
#pragma once

#include <cstddef>
#include <cstdint>

namespace reflow::stm32::semihost {

/// SYS_OPEN modes (§5.3 SYS_OPEN, Table 5-1): the fopen() mode strings "rb" and "wb".
inline constexpr std::uint32_t k_mode_read_binary = 1;
inline constexpr std::uint32_t k_mode_write_binary = 5;

/// SYS_OPEN (0x01): a host file's handle, or -1 when it cannot be opened.
int open(const char* path, std::uint32_t mode);
/// SYS_READ (0x06): up to `size` bytes into `data`; returns the bytes read (0 at end of file).
std::size_t read(int handle, void* data, std::size_t size);
/// SYS_WRITE (0x05): returns true when every byte was written.
bool write(int handle, const void* data, std::size_t size);
/// SYS_CLOSE (0x02).
void close(int handle);
/// SYS_WRITE0 (0x04): a NUL-terminated text on the debug console (QEMU: its standard error).
void write0(const char* text);

}  // namespace reflow::stm32::semihost
