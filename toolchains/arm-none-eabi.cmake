# SPDX-License-Identifier: AGPL-3.0-or-later
# The machine node's firmware image (firmware/stm32, issue 18): Cortex-M4F (STM32F401/F411/F405)
# with hard float, built with Debian 12's gcc-arm-none-eabi against picolibc-arm-none-eabi through
# its specs file. Bare metal: no operating system, no exceptions, no RTTI, no heap; the image's
# own startup (firmware/stm32/src/startup.cpp) and linker script replace picolibc's crt0 and
# picolibc.ld, so from picolibc only memcpy/memset and libgcc's helpers (64-bit division) are
# linked. Used by firmware/stm32 as its own CMake project, which the top-level build drives
# through ExternalProject (firmware/CMakeLists.txt):
#
#   cmake -S firmware/stm32 -B build-fw --toolchain toolchains/arm-none-eabi.cmake
#   cmake --build build-fw            # every board's .elf and .bin, then their flash/RAM use
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)

set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_CXX_COMPILER arm-none-eabi-g++)
set(CMAKE_ASM_COMPILER arm-none-eabi-gcc)
find_program(CMAKE_OBJCOPY arm-none-eabi-objcopy REQUIRED)
find_program(CMAKE_SIZE arm-none-eabi-size REQUIRED)
# CMake's compiler check links an executable, which a bare-metal target cannot without a startup
# and a linker script: check with a static library instead.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)

# -mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard: the F4's single-precision FPU (PM0214 §4.6),
# float arguments in FPU registers. picolibc.specs adds picolibc's include path and, at link time,
# its libc.a for this multilib (thumb/v7e-m+fp/hard) and --gc-sections.
set(_reflow_arm_cpu "-mcpu=cortex-m4 -mthumb -mfpu=fpv4-sp-d16 -mfloat-abi=hard")
set(_reflow_arm_common "${_reflow_arm_cpu} --specs=picolibc.specs -ffunction-sections -fdata-sections")
set(CMAKE_C_FLAGS_INIT "${_reflow_arm_common}")
set(CMAKE_CXX_FLAGS_INIT
    "${_reflow_arm_common} -fno-exceptions -fno-rtti -fno-threadsafe-statics -fno-use-cxa-atexit")
set(CMAKE_ASM_FLAGS_INIT "${_reflow_arm_cpu}")
# -nostartfiles: the image's Reset_Handler is its entry, not picolibc's crt0.
# (The compile flags above, picolibc.specs included, are on the link line too.)
set(CMAKE_EXE_LINKER_FLAGS_INIT "-nostartfiles -Wl,--gc-sections")
# Size first: the image must stay under 32 KiB of flash (firmware/README.md, "Flash and RAM").
set(CMAKE_C_FLAGS_MINSIZEREL_INIT "-Os")
set(CMAKE_CXX_FLAGS_MINSIZEREL_INIT "-Os")

# Find programs on the build machine; never look for target libraries or headers there.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
