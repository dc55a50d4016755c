#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine that already has the Rust toolchain, for
# building and testing Strata:
#   - PostgreSQL 15 server and client programs (on Debian 12 the postgresql-15 package
#     includes contrib: bloom, dblink, test_decoding, which the tests use), installed with
#     apt-get only when missing. The tests start their own throw-away clusters, so the
#     Debian system cluster is kept from running.
#   - fuse3 (fusermount3), which the lazy compute's page filesystem mounts with.
#   - With STRATA_SETUP_S3=1: s3s-fs, a local S3 server for the object-storage tests.
#   - postgresql-server-dev-15: the server headers (a test compiles a small C extension) and
#     pg_regress (scripts/regress-redo.sh runs PostgreSQL's regression suite with it).
# Prints what it did. Run as root or as a user with sudo.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

say() { printf 'setup: %s\n' "$*"; }

apt_updated=0
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        $SUDO apt-get update -q
        apt_updated=1
    fi
    say "apt-get install $*"
    $SUDO apt-get install -y -q --no-install-recommends "$@"
}

have_postgres() {
    for prog in initdb pg_ctl postgres psql pgbench pg_waldump pg_resetwal pg_controldata pg_basebackup; do
        [ -x "$PG_BIN/$prog" ] || return 1
    done
    # contrib modules the workload needs
    for ext in bloom dblink pg_trgm btree_gist; do
        [ -f "/usr/share/postgresql/15/extension/$ext.control" ] || return 1
    done
    [ -f /usr/lib/postgresql/15/lib/test_decoding.so ] || return 1
}

install_postgres() {
    if have_postgres; then
        say "PostgreSQL 15 already installed: $("$PG_BIN/postgres" --version)"
        return
    fi
    # Keep package scripts from starting the system cluster while installing.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        added_policy=1
    fi
    apt_install postgresql-15 postgresql-client-15
    if [ "$added_policy" -eq 1 ]; then
        $SUDO rm -f "$policy"
    fi
    have_postgres || { say "PostgreSQL 15 programs still missing under $PG_BIN"; exit 1; }
    say "installed $("$PG_BIN/postgres" --version)"
}

stop_system_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    local ver name port status rest
    while read -r ver name port status rest; do
        [ "$ver" = "Ver" ] && continue
        if [ "$status" = "online" ]; then
            say "stopping the system cluster $ver/$name (the tests run their own)"
            $SUDO pg_ctlcluster "$ver" "$name" stop
        fi
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            if systemctl is-enabled --quiet "postgresql@$ver-$name" 2>/dev/null; then
                say "disabling postgresql@$ver-$name"
                $SUDO systemctl disable --quiet "postgresql@$ver-$name" || true
            fi
        fi
    done < <(pg_lsclusters 2>/dev/null)
}

install_c_toolchain() {
    # zstd-sys and other -sys crates compile C code.
    if command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; then
        say "C compiler present: $(cc --version | head -n1)"
    else
        apt_install build-essential pkg-config
    fi
}

install_s3s_fs() {
    if command -v s3s-fs >/dev/null 2>&1; then
        say "s3s-fs already installed: $(command -v s3s-fs)"
        return
    fi
    # `cargo install` puts it in ~/.cargo/bin, which may not be on PATH (the tests look there).
    if [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
        say "s3s-fs already installed: ${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
        return
    fi
    say "cargo install s3s-fs@0.14.1 --locked --features binary"
    cargo install s3s-fs@0.14.1 --locked --features binary
}

install_test_tools() {
    # strace: a safekeeper test checks the fsyncs of an offload by tracing the system calls.
    # mount (util-linux) and tmpfs: the disk-full tests run a safekeeper on a small filesystem.
    if command -v strace >/dev/null 2>&1; then
        say "strace present"
    else
        apt_install strace
    fi
}

install_fuse() {
    if command -v fusermount3 >/dev/null 2>&1; then
        say "fuse3 already installed"
        return
    fi
    apt_install fuse3
}

install_c_toolchain
install_test_tools
install_postgres
install_fuse
stop_system_cluster
# The server headers: tests/tests/cli_lifecycle.rs compiles a small C extension (a custom
# resource manager's record), and scripts/regress-redo.sh needs pg_regress.
if [ -x /usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress ] \
    && [ -f "$("$PG_BIN/pg_config" --includedir-server 2>/dev/null)/postgres.h" ]; then
    say "postgresql-server-dev-15 already installed"
else
    apt_install postgresql-server-dev-15
fi
if [ "${STRATA_SETUP_S3:-0}" = "1" ]; then
    install_s3s_fs
else
    say "skipping s3s-fs (set STRATA_SETUP_S3=1 to install it)"
fi
say "done"
