#!/usr/bin/env bash
# Installs the amd64 Debian packages of a build with `dpkg -i` on this machine and checks what
# they promise: the installed binaries run, the system users and their groups exist, the device
# key and the node's CA are created once and never overwritten (a reinstall keeps them), the
# configs are conffiles, the installed units pass `systemd-analyze verify`, the walkthrough of
# README.md and docs/ runs verbatim on them (walkthrough_test.py); then removes and
# purges the packages, which keeps the keys. Needs root and changes the system: CI runs it on its
# throw-away machine (.ci/run); don't run it on a machine you care about.
#   tests/packaging/deb_test.sh BUILD_DIR
set -euo pipefail
build="${1:?usage: $0 BUILD_DIR (configured with -DCMAKE_INSTALL_PREFIX=/usr, target package built)}"
arch="$(dpkg --print-architecture)"
agent_deb="$(ls "$build"/reflow-agent_*_"$arch".deb)"
ingest_deb="$(ls "$build"/reflow-ingest_*_"$arch".deb)"
failures=0
check() {  # check DESCRIPTION COMMAND...
  local what="$1"; shift
  if "$@"; then echo "ok   - $what"; else echo "FAIL - $what"; failures=$((failures + 1)); fi
}
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (it installs packages)" >&2; exit 2; }

echo "# dpkg -i $agent_deb $ingest_deb"
dpkg -i "$agent_deb" "$ingest_deb"

check "reflow-agent is installed in /usr/bin and runs" /usr/bin/reflow-agent --version
check "reflow-ingest is installed in /usr/bin and runs" /usr/bin/reflow-ingest --version
check "the installed binary is stripped" bash -c "file -L /usr/bin/reflow-agent | grep -q ', stripped'"
check "system user reflow-agent exists" getent passwd reflow-agent
check "system user reflow-ingest exists" getent passwd reflow-ingest
for group in dialout input gpio; do
  if getent group "$group" >/dev/null; then
    check "reflow-agent is in group $group" bash -c "id -nG reflow-agent | tr ' ' '\n' | grep -qx $group"
  fi
done
key=/var/lib/reflow-agent/device.key
check "the device key was generated" test -s "$key"
check "the device key is mode 0600, owned by reflow-agent" \
  bash -c "[ \"\$(stat -c '%a %U' $key)\" = '600 reflow-agent' ]"
check "the public JWK is beside it" \
  python3 -c "import json,sys; j=json.load(open('/var/lib/reflow-agent/device.jwk')); sys.exit(j['kty']!='OKP' or j['crv']!='Ed25519')"
check "the node's CA was created" test -s /var/lib/reflow-ingest/ca/ca.crt
check "the node's store directory is readable by the reflow-ingest group" \
  bash -c "[ \"\$(stat -c '%a %G' /var/lib/reflow-ingest)\" = '750 reflow-ingest' ]"
check "the node's CA directory is the service user's alone" \
  bash -c "[ \"\$(stat -c '%a' /var/lib/reflow-ingest/ca)\" = '700' ]"
check "agent.toml is a conffile" bash -c "dpkg-query -W -f='\${Conffiles}' reflow-agent | grep -q /etc/reflow-agent/agent.toml"
check "reflow-ingest.toml is a conffile" \
  bash -c "dpkg-query -W -f='\${Conffiles}' reflow-ingest | grep -q /etc/reflow-ingest/reflow-ingest.toml"
check "agent.toml is readable by the agent's group only" \
  bash -c "[ \"\$(stat -c '%a %G' /etc/reflow-agent/agent.toml)\" = '640 reflow-agent' ]"
check "the installed agent and ingest deliver verified events (reflow-agent demo)" \
  bash -c "cd /tmp && /usr/bin/reflow-agent demo"
for unit in reflow-agent reflow-ingest; do
  check "systemd-analyze verify $unit.service" systemd-analyze verify "/lib/systemd/system/$unit.service"
  systemd-analyze security --offline=true --no-pager "/lib/systemd/system/$unit.service" | tail -1
done

echo "# the walkthrough of README.md and docs/, verbatim, in a sandbox (walkthrough_test.py)"
check "the docs' walkthrough runs: events verified at the node over mutual TLS, a second device refused by the ACL" \
  python3 "$(dirname "$0")/walkthrough_test.py"

key_sum="$(sha256sum "$key")"
ca_sum="$(sha256sum /var/lib/reflow-ingest/ca/ca.key)"
echo "# dpkg -i again (reinstall)"
dpkg -i "$agent_deb" "$ingest_deb"
check "a reinstall keeps the device key" bash -c "[ \"\$(sha256sum $key)\" = '$key_sum' ]"
check "a reinstall keeps the CA key" \
  bash -c "[ \"\$(sha256sum /var/lib/reflow-ingest/ca/ca.key)\" = '$ca_sum' ]"

echo "# dpkg --purge"
dpkg --purge reflow-agent reflow-ingest
check "the binaries are gone" bash -c "! test -e /usr/bin/reflow-agent && ! test -e /usr/bin/reflow-ingest"
check "the conffiles are gone after purge" bash -c "! test -e /etc/reflow-agent/agent.toml"
check "purge keeps the device key" bash -c "[ \"\$(sha256sum $key)\" = '$key_sum' ]"

echo "# dpkg -i after purge: the kept key is reused, not replaced"
dpkg -i "$agent_deb"
check "the kept device key is reused" bash -c "[ \"\$(sha256sum $key)\" = '$key_sum' ]"
dpkg --purge reflow-agent

if [ "$failures" -ne 0 ]; then echo "$failures check(s) failed"; exit 1; fi
echo "all package checks passed"
