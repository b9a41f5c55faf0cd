# SPDX-License-Identifier: AGPL-3.0-or-later
# Raspberry Pi OS 64-bit (bookworm; arm64): Pi 3, 4, 5, 400, Zero 2 W.
#   cmake -B build-arm64 --toolchain toolchains/aarch64-linux-gnu.cmake
# Packages: toolchains/README.md (.ci/install-cross-deps arm64 installs them).
set(REFLOW_CROSS_TRIPLET aarch64-linux-gnu)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(REFLOW_CROSS_QEMU qemu-aarch64)
set(REFLOW_DEB_ARCH arm64)
include(${CMAKE_CURRENT_LIST_DIR}/debian-multiarch.cmake)
