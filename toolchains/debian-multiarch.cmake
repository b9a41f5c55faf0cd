# SPDX-License-Identifier: AGPL-3.0-or-later
# Shared part of the Debian cross toolchain files (aarch64-linux-gnu.cmake,
# arm-linux-gnueabihf.cmake). Each sets REFLOW_CROSS_TRIPLET, CMAKE_SYSTEM_PROCESSOR and
# REFLOW_CROSS_QEMU, then includes this file.
#
# Debian's multiarch layout is the "sysroot": the cross compiler comes from
# crossbuild-essential-<arch>, the libraries from the target architecture's -dev packages
# (`apt-get install libsqlite3-dev:arm64 …`), which put their files in /usr/lib/<triplet>/ and
# /usr/include/<triplet>/ beside the build machine's own. Architecture-independent headers
# (nlohmann_json, CLI11) stay in /usr/include, where both architectures share them.
#
# Nothing of the build machine's own architecture may end up in the build: its multiarch
# directories are ignored by every find_*() call, pkg-config is the target's
# (<triplet>-pkg-config only reads /usr/lib/<triplet>/pkgconfig and /usr/share/pkgconfig),
# find_program() looks only at the build machine (compilers, qemu), and libraries, headers and
# CMake packages are searched only under the target's root paths.
set(CMAKE_SYSTEM_NAME Linux)

set(CMAKE_C_COMPILER ${REFLOW_CROSS_TRIPLET}-gcc)
set(CMAKE_CXX_COMPILER ${REFLOW_CROSS_TRIPLET}-g++)
set(CMAKE_LIBRARY_ARCHITECTURE ${REFLOW_CROSS_TRIPLET})
set(PKG_CONFIG_EXECUTABLE ${REFLOW_CROSS_TRIPLET}-pkg-config CACHE FILEPATH
    "pkg-config of the target architecture (Debian package pkgconf:<arch>)")

# "/" is the root because Debian's multiarch libraries live in the host's /usr; the
# cross compiler's own libc and libstdc++ are in /usr/<triplet>.
set(CMAKE_FIND_ROOT_PATH /usr/${REFLOW_CROSS_TRIPLET} /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# The build machine's multiarch directories, for every architecture Debian knows except the
# target: whatever the build machine is (amd64 on CI, arm64 for a 32-bit build on a Pi 4).
set(_reflow_other_triplets x86_64-linux-gnu i386-linux-gnu aarch64-linux-gnu
    arm-linux-gnueabihf arm-linux-gnueabi riscv64-linux-gnu powerpc64le-linux-gnu s390x-linux-gnu)
list(REMOVE_ITEM _reflow_other_triplets ${REFLOW_CROSS_TRIPLET})
foreach(_triplet IN LISTS _reflow_other_triplets)
  list(APPEND CMAKE_SYSTEM_IGNORE_PATH
       /lib/${_triplet} /usr/lib/${_triplet} /usr/include/${_triplet}
       /usr/lib/${_triplet}/cmake /usr/lib/${_triplet}/pkgconfig)
endforeach()

# Cross-built tests run under QEMU user-mode emulation (Debian package qemu-user). The target's
# dynamic loader and libraries are the multiarch ones installed above, so no -L is needed.
# ctest and gtest_discover_tests() both use this emulator.
find_program(REFLOW_CROSS_EMULATOR ${REFLOW_CROSS_QEMU})
if(REFLOW_CROSS_EMULATOR)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${REFLOW_CROSS_EMULATOR})
endif()
