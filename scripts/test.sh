#!/usr/bin/env bash
# Strata's tests: installs what is missing (scripts/setup.sh), checks formatting and lints, then
# runs every test of the workspace, including the ones that start a real PostgreSQL 15.
set -euo pipefail
cd "$(dirname "$0")/.."

# STRATA_SETUP_S3=1: the safekeeper offload tests run against s3s-fs, a local S3 server.
STRATA_SETUP_S3=1 scripts/setup.sh
echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> building the binaries the integration tests start"
cargo build --workspace --bins
echo "==> cargo test"
cargo test --workspace
