# SPDX-License-Identifier: AGPL-3.0-or-later
# Prints each image's flash and RAM use from arm-none-eabi-size (Berkeley format: text, data,
# bss) and fails when one exceeds its budget (firmware/README.md, "Flash and RAM"):
#   flash = text + data   (code, constants, the vector table and .data's initial values)
#   RAM   = data + bss    (.bss includes the 2 KiB main stack reserved by ld/stm32f4.ld)
# cmake -DSIZE=arm-none-eabi-size "-DIMAGES=a.elf;b.elf" -DFLASH_BUDGET=32768 -DRAM_BUDGET=8192
#       -P size_report.cmake
set(over "")
message("image                          flash (bytes)      RAM (bytes)")
foreach(image IN LISTS IMAGES)
  execute_process(COMMAND ${SIZE} -B ${image} OUTPUT_VARIABLE out RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${SIZE} ${image} failed")
  endif()
  # The second line: "text data bss dec hex filename"
  string(REGEX MATCH "\n[ \t]*([0-9]+)[ \t]+([0-9]+)[ \t]+([0-9]+)" _ "${out}")
  math(EXPR flash "${CMAKE_MATCH_1} + ${CMAKE_MATCH_2}")
  math(EXPR ram "${CMAKE_MATCH_2} + ${CMAKE_MATCH_3}")
  get_filename_component(name ${image} NAME_WE)
  math(EXPR flash_pct "100 * ${flash} / ${FLASH_BUDGET}")
  math(EXPR ram_pct "100 * ${ram} / ${RAM_BUDGET}")
  string(LENGTH "${name}" len)
  math(EXPR pad "30 - ${len}")
  string(REPEAT " " ${pad} spaces)
  message("${name}${spaces} ${flash} (${flash_pct}% of ${FLASH_BUDGET})  ${ram} (${ram_pct}% of ${RAM_BUDGET})")
  if(flash GREATER FLASH_BUDGET OR ram GREATER RAM_BUDGET)
    list(APPEND over ${name})
  endif()
endforeach()
if(over)
  message(FATAL_ERROR "over the flash or RAM budget: ${over}")
endif()
