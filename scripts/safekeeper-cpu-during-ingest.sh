#!/usr/bin/env bash
# The safekeeper's CPU while a pageserver catches up from it: one `ingest_served` run (one
# round, the safekeeper binary given), printing the safekeeper's CPU ticks (10 ms) from the end
# of the WAL's writing to the end of the Strata round. Run it for two builds alternately
# (A B A B) and compare the ticks; the WAL is fresh each run.
#
#   BENCH=target/release/deps/ingest_served-<hash> scripts/safekeeper-cpu-during-ingest.sh <safekeeper>
#   (SCALE, SECS: pgbench's -s and run seconds; defaults 20 and 60, about 280 MB of WAL)
set -euo pipefail
sk_bin=${1:?usage: BENCH=<ingest_served bench binary> $0 <safekeeper binary>}
bench=${BENCH:?set BENCH to the ingest_served bench binary (cargo bench -p pageserver --bench ingest_served --no-run)}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
STRATA_SAFEKEEPER_BIN=$sk_bin STRATA_BENCH_VARIANTS="default:" STRATA_BENCH_SCALE=${SCALE:-20} \
  STRATA_BENCH_SECONDS=${SECS:-60} STRATA_BENCH_RUNS=1 timeout 1200 "$bench" --bench >"$out" 2>&1 &
bp=$!
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_for() { # pattern, with a deadline of 20 minutes
  for _ in $(seq 12000); do grep -q "$1" "$out" && return 0; sleep 0.1; done
  echo "no '$1' from the bench after 20 min: $(tail -3 "$out")" >&2; exit 1
}
wait_for "^WAL"
bench_pid=$(pgrep -P "$bp" | head -1)
sk=$(pgrep -P "$bench_pid" -f "safekeeper.*--datadir" | head -1)
[ -n "$sk" ] || { echo "the bench runs no safekeeper" >&2; exit 1; }
t0=$(ticks "$sk")
wait_for "round 1: Strata"
t1=$(ticks "$sk")
wait "$bp"
echo "$(basename "$sk_bin"): $(grep '^WAL' "$out" | cut -d' ' -f3-4) safekeeper_ticks=$((t1 - t0)) $(grep 'round 1: Strata' "$out")"
