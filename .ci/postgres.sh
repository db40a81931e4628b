#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests (tests/audit: NEGMINER_TEST_POSTGRES_URL).
#
#   export NEGMINER_TEST_POSTGRES_URL=$(.ci/postgres.sh start)   # prints the SQLAlchemy URL
#   .venv/bin/python -m pytest -q tests/audit
#   .ci/postgres.sh stop                                         # stops it, removes its folder
#
# start [DIR]: initdb a cluster in DIR (default: a new /tmp/negminer-pg.XXXXXX), start it
# listening only on a Unix socket in DIR (no TCP port, nothing to collide with), create the
# database `negminer`, print postgresql+psycopg://negminer@/negminer?host=DIR. As root (CI) the
# server runs as the `postgres` user (else `nobody`): initdb refuses root.
# stop [DIR]: stop the server and remove DIR; DIR defaults to the socket folder named by
# NEGMINER_TEST_POSTGRES_URL. Needs initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin
# (Debian: apt-get install postgresql). Durability is off (fsync): for tests only.
set -euo pipefail

find_bin() {
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"  # the real bin folder: createdb lies beside it
    return
  fi
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ] || {
    echo "postgres.sh: no pg_ctl/initdb on PATH or in /usr/lib/postgresql/*/bin (apt-get install postgresql)" >&2
    exit 1
  }
  echo "$dir"
}

as_owner() {  # run a command as the server's owner (root is refused by initdb and postgres)
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u "$owner" -- "$@")  # from /: the owner may not enter the caller's folder
  else
    "$@"
  fi
}

start() {
  local dir=${1:-}
  bin=$(find_bin)
  if [ "$(id -u)" -eq 0 ]; then
    owner=postgres
    id -u "$owner" >/dev/null 2>&1 || owner=nobody
  else
    owner=$(id -un)
  fi
  if [ -z "$dir" ]; then
    dir=$(mktemp -d /tmp/negminer-pg.XXXXXX)  # short: a socket path is at most 107 bytes
  else
    mkdir -p "$dir"
  fi
  dir=$(cd "$dir" && pwd)
  [ ! -e "$dir/data" ] || { echo "postgres.sh: $dir/data exists (already started? stop it first)" >&2; exit 1; }
  [ "$(id -u)" -ne 0 ] || chown "$owner" "$dir"
  chmod 700 "$dir"
  : >"$dir/initdb.log"  # marks the folder as ours for stop
  as_owner "$bin/initdb" -D "$dir/data" -U negminer --auth=trust -E UTF8 --locale=C --no-sync --no-instructions \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  local options="-c listen_addresses='' -k '$dir' -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  options+=" -c max_connections=200"
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$options" start >/dev/null ||
    { cat "$dir/server.log" >&2; exit 1; }
  as_owner "$bin/createdb" -h "$dir" -U negminer negminer
  echo "postgresql+psycopg://negminer@/negminer?host=$dir"
}

stop() {
  local dir=${1:-}
  if [ -z "$dir" ]; then
    [[ ${NEGMINER_TEST_POSTGRES_URL:-} == *"?host=/"* ]] ||
      { echo "postgres.sh stop: give DIR (or set NEGMINER_TEST_POSTGRES_URL as start printed it)" >&2; exit 1; }
    dir=${NEGMINER_TEST_POSTGRES_URL##*\?host=}
    dir=${dir%%&*}
  fi
  [ -d "$dir" ] || return 0
  if [ -z "$(ls -A "$dir")" ]; then  # made for start, which failed before writing to it
    rmdir "$dir"
    return 0
  fi
  [ -f "$dir/initdb.log" ] ||
    { echo "postgres.sh stop: $dir is not a folder that start made; left in place" >&2; exit 1; }
  if [ -f "$dir/data/postmaster.pid" ]; then
    bin=$(find_bin)
    owner=$(stat -c %U "$dir/data")
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start [DIR] | stop [DIR]" >&2; exit 2 ;;
esac
