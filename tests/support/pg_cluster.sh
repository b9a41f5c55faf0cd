#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the store tests (tests/support/pg_cluster.hpp).
#   pg_cluster.sh start STATE_DIR   initdb + pg_ctl start; writes the cluster's directory to
#                                   STATE_DIR/cluster (its unix socket is in that directory)
#   pg_cluster.sh stop STATE_DIR    stops it and removes it
# The tests use its database reflow_tests, a schema each. Exits 0 without starting anything when
# Debian's postgresql-15 is not installed (the tests then skip, saying so). The cluster listens on
# a unix socket only, trusts local connections (user "postgres") and does not fsync: it holds test
# data for one test run. initdb refuses to run as root, so under root (CI) the cluster belongs to
# the user "nobody".
set -euo pipefail
bin=/usr/lib/postgresql/15/bin
state=$2
case "$1" in
  start)
    mkdir -p "$state"
    rm -f "$state/cluster"
    if [ ! -x "$bin/initdb" ] || [ ! -x "$bin/pg_ctl" ]; then
      echo "pg_cluster: no PostgreSQL 15 in $bin (Debian: apt-get install postgresql); not started"
      exit 0
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/reflow-pg.XXXXXX")
    as=()
    if [ "$(id -u)" -eq 0 ]; then
      chown nobody "$dir"
      as=(runuser -u nobody --)
    fi
    "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
      --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log"; exit 1; }
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start \
      -o "-c listen_addresses='' -c unix_socket_directories='$dir' -c fsync=off \
          -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
      >/dev/null || { cat "$dir/server.log"; exit 1; }
    # One database for all tests, each in a schema of its own (pg_cluster.hpp): creating a
    # database per test cost 0.8 s.
    "$bin/psql" -h "$dir" -U postgres -d postgres -qAtX -c 'CREATE DATABASE reflow_tests' \
      >/dev/null || { cat "$dir/server.log"; exit 1; }
    echo "$dir" >"$state/cluster"
    ;;
  stop)
    [ -f "$state/cluster" ] || exit 0
    dir=$(cat "$state/cluster")
    as=()
    if [ "$(id -u)" -eq 0 ]; then as=(runuser -u nobody --); fi
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir" "$state/cluster"
    ;;
  *)
    echo "usage: $0 start|stop STATE_DIR" >&2
    exit 2
    ;;
esac
