//! The randomized fault soak (issue 17): writers keep a ledger of acknowledged commits while
//! safekeepers, the pageserver and the walproposer are SIGKILLed or SIGSTOPped at random and
//! two safekeepers' disk fills up for a while. It ends with every component running again by
//! itself, and a read-only compute at the final LSN that must hold every acknowledged id.
//!
//! - [`ledger`]: writers and the ledger of acknowledged / uncertain ids.
//! - [`faults`]: the seeded fault injector; [`components`]: finding and signalling processes.
//! - [`disk`]: the small tmpfs under two safekeepers; [`report`]: the figures printed.
//! - [`pgwire`]: a minimal Postgres client that knows whether a COMMIT was answered.

pub mod components;
pub mod disk;
pub mod faults;
pub mod ledger;
pub mod pgwire;
pub mod report;
pub mod rng;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cluster::{psql, StrataCli};
use disk::SmallDisk;
use faults::{Injector, RESTART_DEADLINE, WEDGE_DEADLINE};
use ledger::{Ledger, Writers};
use report::{restarts_in_status, SoakReport};

/// Run parameters, from the environment: `STRATA_SOAK_SECS` (seconds of faults, default 120)
/// and `STRATA_SOAK_SEED` (default: from the clock; printed either way).
pub struct SoakConfig {
    pub fault_secs: u64,
    pub seed: u64,
    pub writers: usize,
}

const DEFAULT_FAULT_SECS: u64 = 120;
const WRITERS: usize = 4;
/// Writes after the last fault, before the ledger is closed.
const FINAL_WRITES: Duration = Duration::from_secs(2);
/// The compute the final check starts.
const CHECK_COMPUTE: &str = "soak-check";

impl SoakConfig {
    pub fn from_env() -> Result<SoakConfig> {
        let num = |name: &str| -> Result<Option<u64>> {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .with_context(|| format!("{name}={v:?} is not a number"))
                })
                .transpose()
        };
        Ok(SoakConfig {
            fault_secs: num("STRATA_SOAK_SECS")?.unwrap_or(DEFAULT_FAULT_SECS),
            seed: num("STRATA_SOAK_SEED")?.unwrap_or_else(rng::fresh_seed),
            writers: WRITERS,
        })
    }
}

/// Runs the soak on a started cluster with no tenant yet; `disk` is the small disk under two
/// of its safekeepers (`None`: no disk-full episode). The report is returned whether or not commits were lost (the caller
/// asserts); a wedge or a component not restarted is an error.
pub fn run(s: &StrataCli, disk: Option<&SmallDisk>, cfg: &SoakConfig) -> Result<SoakReport> {
    eprintln!(
        "fault soak: seed {} (STRATA_SOAK_SEED={} reproduces the fault choice), {} s of faults, {} writers",
        cfg.seed, cfg.seed, cfg.fault_secs, cfg.writers
    );
    s.run(&["tenant", "create"])?;
    let c = s.json(&["compute", "start", "main"])?;
    let port = c["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .context("compute port")?;
    let compute = c["name"].as_str().context("compute name")?.to_string();
    psql(port, ledger::CREATE_TABLE)?;

    let ledger = Ledger::default();
    let writes_began = Instant::now();
    let writers = Writers::start(port, cfg.writers, &ledger);
    let mut injector = Injector::new(
        s,
        &compute,
        components::safekeeper_ids(&s.dir)?,
        disk,
        ledger.clone(),
        cfg.seed,
    );
    let faulted = (|| {
        ledger.wait_for_ack_after(writes_began, WEDGE_DEADLINE, "the writers started")?;
        injector.run(Duration::from_secs(cfg.fault_secs))?;
        injector.wait_all_running(RESTART_DEADLINE, "after the last fault")?;
        ledger.wait_for_ack_after(Instant::now(), WEDGE_DEADLINE, "the last fault")?;
        std::thread::sleep(FINAL_WRITES);
        Ok(())
    })();
    writers.stop();
    let summary = ledger.summary();
    if let Err(e) = faulted {
        eprintln!(
            "soak failed after {} acknowledged commits, faults {:?}, longest stall {:.1} s",
            summary.acknowledged.len(),
            injector.counts,
            summary.longest_stall.as_secs_f64()
        );
        return Err(e);
    }
    let status = s.json(&["status"])?;
    let check = s.json(&[
        "compute",
        "start",
        "main",
        "--read-only",
        "--name",
        CHECK_COMPUTE,
    ])?;
    let check_port = check["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .context("read-only compute port")?;
    let present = present_ids(check_port);
    let _ = s.run(&["compute", "stop", CHECK_COMPUTE]);
    let present = present?;
    let count_present = |ids: &[u64]| {
        ids.iter()
            .filter(|i| present.binary_search(i).is_ok())
            .count()
    };
    Ok(SoakReport {
        seed: cfg.seed,
        fault_secs: cfg.fault_secs,
        acknowledged: summary.acknowledged.len(),
        lost: summary
            .acknowledged
            .iter()
            .filter(|i| present.binary_search(i).is_err())
            .copied()
            .collect(),
        uncertain: summary.uncertain.len(),
        uncertain_present: count_present(&summary.uncertain),
        refused: summary.refused.len(),
        refused_present: count_present(&summary.refused),
        faults: injector.counts.clone(),
        longest_stall: summary.longest_stall,
        restarts: restarts_in_status(&status),
        final_lsn: check["lsn"].as_str().unwrap_or("?").to_string(),
        reasons: summary.reasons,
    })
}

/// The ids in the ledger table, sorted.
fn present_ids(port: u16) -> Result<Vec<u64>> {
    let text = psql(port, "SELECT id FROM soak_ledger ORDER BY id")?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse::<u64>().with_context(|| format!("id {l:?}")))
        .collect()
}
