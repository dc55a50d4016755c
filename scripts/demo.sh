#!/usr/bin/env bash
# Strata's main job, for now: start a throwaway PostgreSQL 15, run a short workload, and decode
# its WAL with `strata waldump`, side by side with Postgres's own pg_waldump.
# Installs what is missing (scripts/setup.sh) and builds Strata first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "==> building strata (release)"
cargo build --release -p strata
STRATA="$PWD/target/release/strata"
PGBIN=/usr/lib/postgresql/15/bin

# Postgres refuses to run as root: run its programs as the postgres user then.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

work=$(mktemp -d /tmp/strata-demo.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$work"
cleanup() {
    as_pg "$PGBIN/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "==> initdb (data checksums on) in $work"
as_pg "$PGBIN/initdb" -D "$work/data" -U postgres --data-checksums >"$work/initdb.log" 2>&1 ||
    { cat "$work/initdb.log"; exit 1; }
# Unix socket only: no TCP port to collide with.
as_pg "$PGBIN/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w \
    -o "-c listen_addresses='' -c unix_socket_directories='$work' -c wal_level=replica -c wal_compression=lz4 -c max_prepared_transactions=4 -c wal_keep_size=1GB" \
    start >/dev/null
sql() { as_pg "$PGBIN/psql" -X -q -At -h "$work" -U postgres -v ON_ERROR_STOP=1 -c "$1" postgres; }

start_lsn=$(sql "select pg_current_wal_lsn()")
echo "==> workload: pgbench -i -s 2, pgbench -c 4 -T 5, DDL, VACUUM, a prepared transaction"
t0=$(date +%s.%N)
as_pg "$PGBIN/pgbench" -h "$work" -U postgres -i -s 2 -q postgres >/dev/null 2>&1
as_pg "$PGBIN/pgbench" -h "$work" -U postgres -c 4 -j 2 -T 5 postgres 2>/dev/null | grep -E "^tps" || true
sql "create table notes(id serial primary key, body text); insert into notes(body) select repeat('note ', g % 50) from generate_series(1, 5000) g; create index on notes(body); delete from notes where id % 3 = 0;"
sql "vacuum notes"
sql "begin; insert into notes(body) values ('prepared'); prepare transaction 'demo';" >/dev/null
sql "commit prepared 'demo'" >/dev/null
sql "select pg_create_restore_point('demo-done')" >/dev/null
sql "checkpoint"
end_lsn=$(sql "select pg_current_wal_lsn()")
echo "    WAL written: $start_lsn .. $end_lsn"
as_pg "$PGBIN/pg_ctl" -D "$work/data" -w stop >/dev/null

echo "==> strata waldump --stats -p pg_wal -s $start_lsn -e $end_lsn"
t1=$(date +%s.%N)
"$STRATA" waldump --stats -p "$work/data/pg_wal" -s "$start_lsn" -e "$end_lsn"
t2=$(date +%s.%N)

echo "==> the same WAL, line by line, against pg_waldump -b"
"$STRATA" waldump -b -p "$work/data/pg_wal" -s "$start_lsn" -e "$end_lsn" >"$work/strata.txt"
# pg_waldump prints commit timestamps in the local time zone; strata prints UTC.
TZ=UTC as_pg "$PGBIN/pg_waldump" -b -p "$work/data/pg_wal" -s "$start_lsn" -e "$end_lsn" 2>/dev/null >"$work/pg.txt"
records=$(grep -c '^rmgr:' "$work/pg.txt")
if diff -q "$work/pg.txt" "$work/strata.txt" >/dev/null; then
    echo "    $records records, $(wc -l <"$work/pg.txt") lines: strata waldump and pg_waldump print the same, byte for byte"
else
    echo "    strata waldump and pg_waldump DIFFER:"
    diff "$work/pg.txt" "$work/strata.txt" | head -20
    exit 1
fi
awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "==> workload %.1f s, strata waldump --stats %.2f s\n", b - a, c - b }'
