#!/usr/bin/env bash
# PostgreSQL's own regression suite as a source of real, varied WAL for Strata's redo.
#
# For each mode (wal_consistency_checking = all, then off) this initdb's a fresh cluster
# (data checksums on), keeps a copy of it as the base, runs `pg_regress` with the
# parallel schedule against it, stops it cleanly and runs
#   strata verify-redo --base BASE --wal DATA/pg_wal --final DATA
# which ingests the WAL, checks every page that carries a consistency image (mode "all") and
# compares every page of the final data directory with GetPage at its checkpoint.
# Exits non-zero if any mode reports mismatches, unsupported records, read errors or
# differing final pages. Regression test failures (output diffs) are reported, not fatal:
# the suite is only the WAL source here.
#
# Environment:
#   MODES         modes to run (default "all off")
#   WORK          scratch directory (default: a new /tmp/strata-regress.XXXXXX)
#   STRATA        the strata binary (default: built with cargo into $CARGO_TARGET_DIR)
#   PG_TARBALL    postgresql-15.18.tar.bz2 (default: ../shared/postgres/ from the repo root)
#   PORT          first port to use (default 55432)
#   MAX_CONN      pg_regress --max-connections (default 4: the machine has 2 cores)
#   REUSE=1       keep an existing run's data directory in WORK/<mode> and only verify again
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=/usr/lib/postgresql/15/bin
PG_REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
MODES=${MODES:-"all off"}
PORT=${PORT:-55432}
MAX_CONN=${MAX_CONN:-4}
REUSE=${REUSE:-0}

say() { echo "regress-redo: $*" >&2; }
die() { say "$*"; exit 1; }
now() { date +%s; }
phase_start=0
phase() { phase_start=$(now); say "== $*"; }
phase_done() { say "   took $(($(now) - phase_start)) s"; TIMES+=("$1: $(($(now) - phase_start)) s"); }
TIMES=()

PG_TARBALL=${PG_TARBALL:-}
if [ -z "$PG_TARBALL" ]; then
    for t in "$REPO/../shared/postgres/postgresql-15.18.tar.bz2" /work/shared/postgres/postgresql-15.18.tar.bz2; do
        [ -f "$t" ] && { PG_TARBALL=$t; break; }
    done
fi
[ -f "$PG_TARBALL" ] || die "no postgresql-15.18.tar.bz2 (set PG_TARBALL)"
STRATA_SETUP_REGRESS=1 "$REPO/scripts/setup.sh" >&2
[ -x "$PG_REGRESS" ] || die "no $PG_REGRESS: install postgresql-server-dev-15 (scripts/setup.sh)"
INC=$(pg_config --includedir-server 2>/dev/null || true)
[ -f "$INC/postgres.h" ] || die "no server headers ($INC): install postgresql-server-dev-15 (scripts/setup.sh)"

# Postgres refuses to run as root: run its programs (and pg_regress, whose tests expect to
# connect as the OS user) as the postgres account then.
if [ "$(id -u)" -eq 0 ]; then
    PGUSER_OS=${STRATA_PG_OS_USER:-postgres}
    id "$PGUSER_OS" >/dev/null 2>&1 || die "running as root but there is no OS user $PGUSER_OS"
    as_pg() { runuser -u "$PGUSER_OS" -- env HOME=/tmp "$@"; }
else
    PGUSER_OS=$(id -un)
    as_pg() { "$@"; }
fi

if [ -z "${STRATA:-}" ]; then
    phase "building strata"
    (cd "$REPO" && cargo build -q -p strata --bin strata)
    STRATA=${CARGO_TARGET_DIR:-$REPO/target}/debug/strata
    phase_done build
fi
[ -x "$STRATA" ] || die "no strata binary at $STRATA"

WORK=${WORK:-$(mktemp -d /tmp/strata-regress.XXXXXX)}
mkdir -p "$WORK"
say "scratch directory $WORK"

# The suite's sources and regress.so (built against the installed server headers).
SRC=$WORK/postgresql-15.18/src/test/regress
if [ ! -f "$WORK/lib/regress.so" ]; then
    phase "extracting the regression suite and building regress.so"
    tar xjf "$PG_TARBALL" -C "$WORK" postgresql-15.18/src/test/regress
    mkdir -p "$WORK/lib"
    cc -O2 -fPIC -shared -I"$INC" -o "$WORK/lib/regress.so" "$SRC/regress.c"
    # Tests load autoinc and refint (contrib/spi) from the same directory.
    for l in autoinc refint; do
        ln -sf "/usr/lib/postgresql/15/lib/$l.so" "$WORK/lib/$l.so"
    done
    phase_done "extract+build"
fi
if [ "$(id -u)" -eq 0 ]; then
    chown -R "$PGUSER_OS" "$WORK"
fi

status=0
port=$PORT
for mode in $MODES; do
    case $mode in
        all) wcc=all ;;
        off) wcc="''" ;;
        *) die "unknown mode $mode (all or off)" ;;
    esac
    dir=$WORK/$mode
    data=$dir/data base=$dir/base
    if [ "$REUSE" != 1 ] || [ ! -f "$data/global/pg_control" ]; then
        rm -rf "$dir"
        as_pg mkdir -p "$dir/out"
        phase "[$mode] initdb"
        as_pg "$PG_BIN/initdb" -k -A trust -E UTF8 --locale=C -D "$data" >/dev/null
        cat >>"$data/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$dir'
max_connections = 40
wal_consistency_checking = $wcc
wal_keep_size = '200GB'
max_wal_size = '16GB'
checkpoint_timeout = '1h'
fsync = off
synchronous_commit = off
max_prepared_transactions = 10
EOF
        as_pg cp -a "$data" "$base"
        phase_done "[$mode] initdb"

        phase "[$mode] pg_regress --schedule=parallel_schedule"
        as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 120 start >/dev/null
        # --use-existing leaves creating the database to us: as pg_regress would.
        as_pg "$PG_BIN/psql" -X -q -h "$dir" -p "$port" -d postgres -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE DATABASE "regression" TEMPLATE = template0;
ALTER DATABASE "regression" SET lc_messages TO 'C';
ALTER DATABASE "regression" SET lc_monetary TO 'C';
ALTER DATABASE "regression" SET lc_numeric TO 'C';
ALTER DATABASE "regression" SET lc_time TO 'C';
ALTER DATABASE "regression" SET bytea_output TO 'hex';
ALTER DATABASE "regression" SET timezone_abbreviations TO 'Default';
SQL
        set +e
        (cd "$dir/out" && as_pg "$PG_REGRESS" \
            --use-existing --host="$dir" --port="$port" \
            --bindir="$PG_BIN" --dlpath="$WORK/lib" \
            --inputdir="$SRC" --outputdir="$dir/out" \
            --max-connections="$MAX_CONN" \
            --schedule="$SRC/parallel_schedule") >"$dir/regress.log" 2>&1
        rc=$?
        set -e
        tail -n 3 "$dir/regress.log" >&2
        say "pg_regress exit $rc ($(grep -c ' FAILED\| failed (ignored)' "$dir/regress.log" || true) tests differ from the expected output; not fatal)"
        as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 300 stop >/dev/null
        phase_done "[$mode] pg_regress"
    fi
    say "[$mode] WAL: $(du -sh "$data/pg_wal" | cut -f1), data directory $(du -sh "$data" | cut -f1)"

    phase "[$mode] strata verify-redo --final"
    set +e
    "$STRATA" verify-redo --base "$base" --wal "$data/pg_wal" --final "$data" \
        --timeline-dir "$dir/timeline" --max-reported 20 >"$dir/verify.log" 2>&1
    rc=$?
    set -e
    rm -rf "$dir/timeline"
    phase_done "[$mode] verify-redo"
    echo "===== mode $mode (wal_consistency_checking = ${wcc//\'/}): strata verify-redo exit $rc"
    # The summary, the per-record-type and per-rmgr tables, the final-directory counts;
    # the first problems follow in $dir/verify.log.
    awk '/^--- /{p=1} !p{print}' "$dir/verify.log"
    tail -n 1 "$dir/verify.log"
    say "[$mode] $(grep -c '^--- ' "$dir/verify.log" || true) problems described"
    echo "(full output: $dir/verify.log)"
    [ "$rc" -eq 0 ] || status=1
    port=$((port + 1))
done

echo "===== timings"
for t in "${TIMES[@]}"; do echo "  $t"; done
exit $status
