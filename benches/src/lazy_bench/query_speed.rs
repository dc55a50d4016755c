//! Query speed on a lazy compute against a full-copy one, each measurement on a compute
//! started for it after the page cache was dropped:
//! - `pgbench -S` for N seconds right after the start (cold), then every block of
//!   pgbench_accounts and its key read once (`pg_prewarm(…, 'read')`, timed too), then
//!   `pgbench -S` again (warm);
//! - `SELECT count(*), sum(abalance) FROM pgbench_accounts` right after the start (cold) and
//!   again (warm), in MB/s of the table's size, the answer checked against main at T;
//! - TPC-B-like pgbench on a read-write compute of a new branch at T, then its
//!   pgbench_history checked: every transaction pgbench counted is there.

use std::fmt;

use anyhow::{bail, ensure, Context, Result};

use super::dataset::{Dataset, SCAN_QUERY};
use super::kind::{in_rounds, Kind};
use super::Bench;
use crate::branch_bench::pgprog::{parse_pgbench, PgbenchResult, Server};

/// How long each pgbench run lasts, and its clients.
#[derive(Clone, Copy, Debug)]
pub struct SpeedOptions {
    pub select_secs: u32,
    pub rw_secs: u32,
    pub clients: u32,
}

/// One round of one kind.
#[derive(Clone, Debug)]
pub struct SpeedSample {
    pub kind: Kind,
    pub round: usize,
    pub select_cold_tps: f64,
    pub select_warm_tps: f64,
    /// pg_prewarm's read of pgbench_accounts and its key, after the cold run.
    pub prewarm_mb_s: f64,
    pub scan_cold_mb_s: f64,
    pub scan_warm_mb_s: f64,
    pub rw_tps: f64,
    /// The 1-minute load average before each of its three computes started.
    pub loads: Vec<f64>,
}

impl fmt::Display for SpeedSample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: -S cold {:.0} tps, warm {:.0} tps; prewarm {:.0} MB/s; scan cold {:.0} MB/s, \
             warm {:.0} MB/s; read-write {:.0} tps",
            self.kind,
            self.select_cold_tps,
            self.select_warm_tps,
            self.prewarm_mb_s,
            self.scan_cold_mb_s,
            self.scan_warm_mb_s,
            self.rw_tps
        )
    }
}

/// `rounds` rounds of lazy and full copy (whichever of them `kinds` has), alternating.
pub fn measure(
    b: &Bench,
    kinds: &[Kind],
    rounds: usize,
    opts: &SpeedOptions,
) -> Result<Vec<SpeedSample>> {
    let computes: Vec<Kind> = kinds.iter().copied().filter(|k| *k != Kind::Pitr).collect();
    in_rounds(
        &computes,
        rounds,
        |round, kind| {
            format!(
                "scale {}: query speed round {round}/{rounds}: {kind}",
                b.ds.scale
            )
        },
        |round, kind| one(b, kind, round, opts),
    )
}

fn one(b: &Bench, kind: Kind, round: usize, opts: &SpeedOptions) -> Result<SpeedSample> {
    let tag = kind.tag();
    let mut loads = Vec::new();

    let (srv, load) = b.read_only(kind, &format!("select-{round}-{tag}"))?;
    loads.push(load);
    let select_cold = select_only(&srv.server, opts)?;
    let prewarm = srv.server.sql_timed(
        "SELECT pg_prewarm('pgbench_accounts', 'read') + pg_prewarm('pgbench_accounts_pkey', 'read')",
    )?;
    let blocks: u64 = prewarm.output.parse().context("pg_prewarm's block count")?;
    let prewarm_mb_s = mb_per_s(blocks.saturating_mul(8192), prewarm.query_ms)?;
    let select_warm = select_only(&srv.server, opts)?;
    drop(srv);

    let (srv, load) = b.read_only(kind, &format!("scan-{round}-{tag}"))?;
    loads.push(load);
    let scan_cold_mb_s = scan(b.ds, &srv.server, kind)?;
    let scan_warm_mb_s = scan(b.ds, &srv.server, kind)?;
    drop(srv);

    let (srv, load) = b.read_write(kind, &format!("rw-{round}-{tag}"))?;
    loads.push(load);
    let rw = read_write(b.ds, &srv.server, opts)?;
    drop(srv);

    Ok(SpeedSample {
        kind,
        round,
        select_cold_tps: select_cold.tps,
        select_warm_tps: select_warm.tps,
        prewarm_mb_s,
        scan_cold_mb_s,
        scan_warm_mb_s,
        rw_tps: rw.tps,
        loads,
    })
}

fn select_only(server: &Server, opts: &SpeedOptions) -> Result<PgbenchResult> {
    let c = opts.clients.to_string();
    let secs = opts.select_secs.to_string();
    parse_pgbench(&server.pgbench(&["-n", "-S", "-c", &c, "-j", &c, "-T", &secs])?)
}

/// The checked scan of pgbench_accounts, in MB/s of the table's size at T.
fn scan(ds: &Dataset, server: &Server, kind: Kind) -> Result<f64> {
    let q = server.sql_timed(SCAN_QUERY)?;
    if q.output != ds.scan_answer {
        bail!(
            "{kind} at T answers {:?} to {SCAN_QUERY:?}; main at T answered {:?}",
            q.output,
            ds.scan_answer
        );
    }
    mb_per_s(ds.accounts_bytes, q.query_ms)
}

/// TPC-B-like pgbench on a read-write compute at T, then every counted transaction's
/// history row read back.
fn read_write(ds: &Dataset, server: &Server, opts: &SpeedOptions) -> Result<PgbenchResult> {
    let c = opts.clients.to_string();
    let secs = opts.rw_secs.to_string();
    let r = parse_pgbench(&server.pgbench(&["-n", "-c", &c, "-j", &c, "-T", &secs])?)?;
    let rows: u64 = server
        .sql("SELECT count(*) FROM pgbench_history")?
        .parse()
        .context("count of pgbench_history")?;
    let want = ds.history_rows.checked_add(r.transactions);
    ensure!(
        Some(rows) == want,
        "after {} acknowledged transactions on a branch at T (which had {} history rows) it \
         has {rows}",
        r.transactions,
        ds.history_rows
    );
    Ok(r)
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, ms: f64) -> Result<f64> {
    ensure!(ms > 0.0, "a read of {bytes} bytes took {ms} ms");
    Ok(bytes as f64 / 1e6 / (ms / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn megabytes_per_second() {
        assert_eq!(mb_per_s(200_000_000, 1000.0).unwrap(), 200.0);
        assert!(mb_per_s(1, 0.0).is_err());
    }
}
