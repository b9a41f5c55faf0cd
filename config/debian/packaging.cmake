# SPDX-License-Identifier: AGPL-3.0-or-later
# Debian packages with CPack: reflow-agent (the device daemon) and reflow-ingest (the node), for
# the architecture being built: amd64 natively, arm64 or armhf with the toolchain files.
#
#   cmake -S . -B build-arm64 --toolchain toolchains/aarch64-linux-gnu.cmake \
#         -DCMAKE_INSTALL_PREFIX=/usr
#   cmake --build build-arm64 --target package     # build-arm64/reflow-agent_0.1.0_arm64.deb …
#
# The maintainer scripts in config/debian/<package>/ create the system user, its groups and its
# keys (never overwriting one); the configs under /etc are conffiles.

if(NOT CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  message(STATUS "Debian packages: configure with -DCMAKE_INSTALL_PREFIX=/usr before building "
                 "the `package` target (now ${CMAKE_INSTALL_PREFIX})")
endif()

if(REFLOW_DEB_ARCH)  # set by the toolchain files
  set(_deb_arch ${REFLOW_DEB_ARCH})
else()
  execute_process(COMMAND dpkg --print-architecture OUTPUT_VARIABLE _deb_arch
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME reflow-agent)
set(CPACK_PACKAGE_VENDOR "reflow-agent contributors")
set(CPACK_PACKAGE_CONTACT "reflow-agent maintainers <reflow-agent@localhost>")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_STRIP_FILES ON)
set(CPACK_COMPONENTS_ALL agent ingest)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE ${_deb_arch})
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# dpkg-shlibdeps computes the library dependencies from the binaries (for a cross build it
# reads the target's multiarch packages' shlibs).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

set(_scripts ${PROJECT_SOURCE_DIR}/config/debian)
set(CPACK_DEBIAN_AGENT_PACKAGE_NAME reflow-agent)
set(CPACK_DEBIAN_AGENT_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_AGENT_PACKAGE_RECOMMENDS "systemd")
set(CPACK_DEBIAN_AGENT_PACKAGE_CONTROL_EXTRA
    ${_scripts}/reflow-agent/postinst ${_scripts}/reflow-agent/prerm
    ${_scripts}/reflow-agent/postrm ${_scripts}/reflow-agent/conffiles)
set(CPACK_COMPONENT_AGENT_DESCRIPTION
    "Signed store-and-forward of machine events to a community node\n\
reflow-agent watches machines (3D printers, laser cutters, shredders, scales,\n\
barcode scanners) through its drivers, records their use and material flows as\n\
ValueFlows economic events, signs each with the device's Ed25519 key, keeps them\n\
in an SQLite outbox and delivers them over MQTT to a reflow-ingest node.")

set(CPACK_DEBIAN_INGEST_PACKAGE_NAME reflow-ingest)
set(CPACK_DEBIAN_INGEST_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_INGEST_PACKAGE_RECOMMENDS "mosquitto, systemd")
set(CPACK_DEBIAN_INGEST_PACKAGE_CONTROL_EXTRA
    ${_scripts}/reflow-ingest/postinst ${_scripts}/reflow-ingest/prerm
    ${_scripts}/reflow-ingest/postrm ${_scripts}/reflow-ingest/conffiles)
set(CPACK_COMPONENT_INGEST_DESCRIPTION
    "Community node receiver for reflow-agent devices\n\
reflow-ingest verifies the signed events devices publish over MQTT, stores them\n\
exactly once in SQLite, acknowledges them, and answers queries (events, stats,\n\
material passports); it also runs the node's device registry and certificate\n\
authority, and exports to a ValueFlows (zenflows) server.")

include(CPack)
