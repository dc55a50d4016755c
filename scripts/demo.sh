#!/usr/bin/env bash
# Strata's main job: `strata demo`. A local cluster (three safekeepers, a pageserver, an object
# store directory) starts; a tenant is created; pgbench runs through a compute; a table is
# dropped by mistake; the moment before the drop is found by time and by restore point; a
# branch is made there and a compute on it shows the table back. Each step prints its time.
# Exits 0 only if the table came back intact.
# Installs what is missing (scripts/setup.sh) and builds Strata (release) first.
# Extra arguments go to `strata demo` (see `strata demo --help`: --scale, --seconds, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "==> building strata, pageserver, safekeeper, compute (release)"
cargo build --release --bins
echo "==> strata demo $*"
exec target/release/strata demo "$@"
