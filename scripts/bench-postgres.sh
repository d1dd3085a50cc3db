#!/usr/bin/env bash
# Benchmarks of several nodes on one PostgreSQL queue: starts a scratch PostgreSQL server from
# Debian's packages (initdb + pg_ctl in a temporary directory, loopback only, trusted local
# logins, fsync on as a site would run it; as the postgres user when run as root), then runs
#   jnsc bench queue      claims/s with 8 workers, PostgreSQL and SQLite in the same run
#   jnsc bench receivers  ingest of one series by 2 receivers against 1
# and stops the server. Arguments are passed to `bench receivers` (e.g. --slices 100).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$bin" ]; then
  echo "PostgreSQL is not installed (apt-get install -y postgresql)" >&2
  exit 1
fi
jnsc=${JNSC:-target/release/jnsc}
[ -x "$jnsc" ] || cargo build --release --locked
dir=$(mktemp -d /tmp/jnsc-bench-postgres-XXXXXX)
as_server=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$dir"
  as_server=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() {
  "${as_server[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop > /dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
"${as_server[@]}" "$bin/initdb" -D "$dir/data" -U jnsc -A trust -E UTF8 --locale=C > /dev/null
"${as_server[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start > /dev/null
server="postgres://jnsc@127.0.0.1:$port/postgres"
echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port; $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== jnsc bench queue"
"$jnsc" bench queue --server "$server"
echo "== jnsc bench receivers"
"$jnsc" bench receivers --server "$server" "$@"
