#!/usr/bin/env bash
# Compares two variants of the pgbench bench by running two copies of it at the same time, so
# both see the same machine drift (this 2-core machine's speed moves by tens of percent within
# minutes; two identical copies run together differ by about 2-3%).
#
#   scripts/pgbench-ab.sh [ROUNDS]
#
# Environment: A and B are extra environment settings for each copy, e.g.
#   B="STRATA_BENCH_WP_ARGS=--max-appends-in-flight=2" scripts/pgbench-ab.sh 3
# ONLY_A / ONLY_B pick the setup of each copy (default strata), CLIENTS the pgbench clients of
# each copy (default 8), SECS the run length (default 20).
#
# Good for comparing CPU efficiency. Not for scheduler hints (priorities, time slices): a copy
# that gets the CPU sooner takes it from the other copy, which a run alone would not show.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo bench -q -p compute --bench pgbench_quorum --no-run >/dev/null
bin=$(ls -t target/release/deps/pgbench_quorum-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() { # label, env, setup
    env ${2:-} STRATA_BENCH_ONLY="$3" STRATA_BENCH_CLIENTS="${CLIENTS:-8}" \
        STRATA_BENCH_SECS="${SECS:-20}" "$bin" --bench 2>/dev/null | grep '^| 1 ' >"$out/$1" || true
}
tps() { awk -F'|' '{gsub(/ /, "", $5); print $5}' "$out/$1"; }
echo "| round | A TPS | B TPS | B/A |"
echo "| ---: | ---: | ---: | ---: |"
for r in $(seq 1 "$rounds"); do
    run a "${A:-}" "${ONLY_A:-strata}" &
    run b "${B:-}" "${ONLY_B:-strata}" &
    wait
    a=$(tps a)
    b=$(tps b)
    if [ -z "$a" ] || [ -z "$b" ]; then
        echo "round $r: a copy printed no result" >&2
        exit 1
    fi
    echo "| $r | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", b / a}') |"
done
