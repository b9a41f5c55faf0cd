#!/usr/bin/env bash
# Checks a cross-built Debian package without installing it: its architecture field, its file
# list (dpkg-deb -c), and that the executables in it are built for that architecture.
#   tests/packaging/deb_contents_test.sh BUILD_DIR DEB_ARCH ELF_MACHINE
#   tests/packaging/deb_contents_test.sh build-arm64 arm64 AArch64
set -euo pipefail
build="${1:?usage: $0 BUILD_DIR DEB_ARCH ELF_MACHINE}"
deb_arch="${2:?}"
machine="${3:?}"
failures=0
check() {
  local what="$1"; shift
  if "$@"; then echo "ok   - $what"; else echo "FAIL - $what"; failures=$((failures + 1)); fi
}
for package in reflow-agent reflow-ingest; do
  deb="$(ls "$build"/${package}_*_"$deb_arch".deb)"
  echo "# $deb"
  dpkg-deb -c "$deb"
  check "$package: Architecture is $deb_arch" \
    bash -c "[ \"\$(dpkg-deb -f '$deb' Architecture)\" = '$deb_arch' ]"
  check "$package: depends on its libraries (dpkg-shlibdeps)" \
    bash -c "dpkg-deb -f '$deb' Depends | grep -q 'libc6'"
  contents="$(dpkg-deb -c "$deb")"
  for path in "./usr/bin/$package" "./lib/systemd/system/$package.service" \
              "./usr/share/doc/$package/README.md" "./usr/share/doc/$package/PROTOCOL.md"; do
    check "$package: contains $path" grep -q " $path\$" <<<"$contents"
  done
  tmp="$(mktemp -d)"
  dpkg-deb -x "$deb" "$tmp"
  check "$package: /usr/bin/$package is an $machine executable" \
    bash -c "LC_ALL=C readelf -h '$tmp/usr/bin/$package' | grep -q 'Machine: *$machine'"
  check "$package: the executable is stripped" \
    bash -c "! LC_ALL=C readelf -S '$tmp/usr/bin/$package' | grep -q '\.symtab'"
  rm -rf "$tmp"
done
check "reflow-agent: /etc/reflow-agent/agent.toml is a conffile" \
  bash -c "dpkg-deb --ctrl-tarfile $build/reflow-agent_*_$deb_arch.deb | tar -xO ./conffiles | grep -qx /etc/reflow-agent/agent.toml"
if [ "$failures" -ne 0 ]; then echo "$failures check(s) failed"; exit 1; fi
echo "all package content checks passed"
