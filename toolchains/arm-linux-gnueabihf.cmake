# SPDX-License-Identifier: AGPL-3.0-or-later
# Raspberry Pi OS 32-bit (bookworm; armhf, ARMv7-A with VFPv3-D16 and Thumb-2): Pi 2, 3, 4, 400.
# Debian's armhf is ARMv7; it does not run on the ARMv6 Pi 1 and Zero W (toolchains/README.md).
#   cmake -B build-armhf --toolchain toolchains/arm-linux-gnueabihf.cmake
set(REFLOW_CROSS_TRIPLET arm-linux-gnueabihf)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(REFLOW_CROSS_QEMU qemu-arm)
set(REFLOW_DEB_ARCH armhf)
include(${CMAKE_CURRENT_LIST_DIR}/debian-multiarch.cmake)
