# SPDX-License-Identifier: AGPL-3.0-or-later
# Included by the top-level CMakeLists.txt when REFLOW_FUZZ=ON, before any target is made: checks
# for clang and its libFuzzer runtime, and instruments every library the fuzzers link (coverage for
# libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer). The fuzzers themselves add
# -fsanitize=fuzzer at link time (tests/fuzz/CMakeLists.txt).
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR
    "REFLOW_FUZZ=ON needs clang, whose runtime has libFuzzer; this build dir uses "
    "${CMAKE_CXX_COMPILER_ID} (${CMAKE_CXX_COMPILER}). Configure a separate build dir with "
    "-DCMAKE_CXX_COMPILER=clang++-19 (.ci/install-fuzz-deps installs it); see tests/fuzz/README.md.")
endif()
if(CMAKE_CXX_COMPILER_VERSION VERSION_LESS 16)
  # libstdc++ 12 hides std::expected from compilers whose __cpp_concepts is below 202002L.
  message(FATAL_ERROR
    "REFLOW_FUZZ=ON needs clang 16 or newer for std::expected with GCC 12's libstdc++; got clang "
    "${CMAKE_CXX_COMPILER_VERSION}. Use -DCMAKE_CXX_COMPILER=clang++-19 (.ci/install-fuzz-deps).")
endif()
include(CheckCXXSourceCompiles)
set(CMAKE_REQUIRED_FLAGS "-fsanitize=fuzzer")
check_cxx_source_compiles(
  "#include <cstddef>
   #include <cstdint>
   extern \"C\" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }"
  REFLOW_HAVE_LIBFUZZER)
unset(CMAKE_REQUIRED_FLAGS)
if(NOT REFLOW_HAVE_LIBFUZZER)
  message(FATAL_ERROR
    "REFLOW_FUZZ=ON: ${CMAKE_CXX_COMPILER} cannot link -fsanitize=fuzzer; install the libFuzzer "
    "runtime of that clang (Debian 12: libclang-rt-19-dev, see .ci/install-fuzz-deps).")
endif()
# libstdc++ 12's std::stable_sort calls std::get_temporary_buffer, deprecated in C++23; clang warns
# about it inside the system header (GCC does not), which -Werror would make an error. The GCC build
# still reports deprecated uses in our own code.
add_compile_options(-Wno-deprecated-declarations)
add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
                    -fno-sanitize-recover=undefined)
add_link_options(-fsanitize=address,undefined)
# OSS-Fuzz's flags: -O1 keeps the sanitizers' reports exact and builds much faster than -O2, and
# line tables are all the reports need. Asserts stay on (no -DNDEBUG): they are findings too.
set(CMAKE_CXX_FLAGS_RELWITHDEBINFO "-O1 -gline-tables-only")
