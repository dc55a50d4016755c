#!/usr/bin/env bash
# Generates a small, real WAL sample (pgbench -i -s 2 and a 10 s run with 4 clients on a
# throw-away PostgreSQL 15 cluster) and copies its complete 16 MiB segments to OUTDIR.
# Used as input for benchmarks and as fuzz seeds.
#   scripts/gen-wal-sample.sh OUTDIR [--scale N] [--seconds S] [--compression off|pglz|lz4|zstd]
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 OUTDIR [--scale N] [--seconds S] [--compression off|pglz|lz4|zstd]" >&2
    exit 2
fi
out=$(realpath -m "$1")
shift
cd "$(dirname "$0")/.."
exec cargo run -q -p strata-tests --bin gen-wal-sample -- "$out" "$@"
