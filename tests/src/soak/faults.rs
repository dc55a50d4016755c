//! The fault injector: one fault at a time, chosen by the seeded generator, each healed within
//! a bounded time (SIGCONT after a pause, the filler removed, or — for a SIGKILL — the
//! cluster's own supervisor restarting the process; the soak restarts nothing). So at most one
//! minority is down at a time, plus occasional 2-of-3 safekeeper outages. After each fault
//! heals, a commit must be acknowledged within the wedge deadline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::components::{signal, wait_gone, Component};
use super::disk::SmallDisk;
use super::ledger::Ledger;
use super::rng::SoakRng;
use crate::cluster::StrataCli;

/// How long a killed process may stay down before the soak calls it not restarted.
pub const RESTART_DEADLINE: Duration = Duration::from_secs(60);
/// How long after a fault healed commits may stay stalled before the soak calls it a wedge.
pub const WEDGE_DEADLINE: Duration = Duration::from_secs(60);
/// A typical fault's whole cycle (calm, fault, recovery): places the disk-full episodes by
/// fault number, so the seed alone fixes the sequence of faults, whatever the timing.
const TYPICAL_CYCLE: Duration = Duration::from_secs(6);
/// A disk-full episode every this many faults (the first between 20% and 60% of the run).
const DISK_FULL_EVERY: u64 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    KillSafekeeper,
    PauseSafekeeper,
    KillPageserver,
    PausePageserver,
    KillWalproposer,
    PauseWalproposer,
    /// Two of three safekeepers stopped or killed together: commits stall until they are back.
    QuorumOutage,
    /// The small disk of two safekeepers filled, then freed.
    DiskFull,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillSafekeeper => "safekeeper SIGKILL",
            FaultKind::PauseSafekeeper => "safekeeper SIGSTOP",
            FaultKind::KillPageserver => "pageserver SIGKILL",
            FaultKind::PausePageserver => "pageserver SIGSTOP",
            FaultKind::KillWalproposer => "walproposer SIGKILL",
            FaultKind::PauseWalproposer => "walproposer SIGSTOP",
            FaultKind::QuorumOutage => "2 of 3 safekeepers down",
            FaultKind::DiskFull => "disk full (2 of 3 safekeepers)",
        }
    }
}

/// The random choice among faults (the disk-full episode is scheduled, not drawn).
const DRAWN: [(FaultKind, u64); 7] = [
    (FaultKind::KillSafekeeper, 3),
    (FaultKind::PauseSafekeeper, 3),
    (FaultKind::KillPageserver, 2),
    (FaultKind::PausePageserver, 2),
    (FaultKind::KillWalproposer, 2),
    (FaultKind::PauseWalproposer, 1),
    (FaultKind::QuorumOutage, 1),
];

/// Sends SIGCONT to what it stopped, even when the soak fails in between.
struct Paused(Vec<i32>);

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = signal(*pid, libc::SIGCONT);
        }
    }
}

pub struct Injector<'a> {
    cli: &'a StrataCli,
    pub cluster: PathBuf,
    pub compute: String,
    pub safekeepers: Vec<u64>,
    pub disk: Option<&'a SmallDisk>,
    pub ledger: Ledger,
    pub rng: SoakRng,
    /// Faults injected so far, by kind.
    pub counts: BTreeMap<FaultKind, u32>,
    started: Instant,
}

impl<'a> Injector<'a> {
    pub fn new(
        cli: &'a StrataCli,
        compute: &str,
        safekeepers: Vec<u64>,
        disk: Option<&'a SmallDisk>,
        ledger: Ledger,
        seed: u64,
    ) -> Injector<'a> {
        Injector {
            cli,
            cluster: cli.dir.clone(),
            compute: compute.to_string(),
            safekeepers,
            disk,
            ledger,
            rng: SoakRng::new(seed),
            counts: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    fn log(&self, what: &str) {
        eprintln!(
            "soak [{:7.1} s] {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Injects faults for `duration`; fails on the first component not restarted or wedge.
    pub fn run(&mut self, duration: Duration) -> Result<()> {
        self.started = Instant::now();
        let end = self.started + duration;
        let expected = (duration.as_secs() / TYPICAL_CYCLE.as_secs()).max(1);
        let first_disk = (expected / 5 + self.rng.below((expected * 2 / 5).max(1)))
            .min(DISK_FULL_EVERY.saturating_sub(1));
        let mut number = 0u64;
        // A run whose faults were slower than typical still gets its disk-full episode.
        let disk_owed =
            |me: &Self| me.disk.is_some() && !me.counts.contains_key(&FaultKind::DiskFull);
        while Instant::now() < end || disk_owed(self) {
            let calm = self
                .rng
                .between(Duration::from_millis(500), Duration::from_secs(3));
            std::thread::sleep(calm);
            // A process still down (restarting after a crash of its own) plus a new fault could
            // make two minorities: every fault starts from a whole cluster.
            self.wait_all_running(RESTART_DEADLINE, "before the next fault")?;
            let disk_turn = number % DISK_FULL_EVERY == first_disk
                || (Instant::now() >= end && disk_owed(self));
            number = number.saturating_add(1);
            let kind = if disk_turn && self.disk.is_some() {
                FaultKind::DiskFull
            } else {
                let weights: Vec<u64> = DRAWN.iter().map(|(_, w)| *w).collect();
                DRAWN[self.rng.weighted(&weights)].0
            };
            let acked_before = self.ledger.acknowledged_count();
            let healed = self
                .inject(kind)
                .with_context(|| format!("fault {}", kind.name()))?;
            *self.counts.entry(kind).or_default() += 1;
            let during = self
                .ledger
                .acknowledged_count()
                .saturating_sub(acked_before);
            self.log(&format!(
                "  healed; {during} commits acknowledged during the fault"
            ));
            self.ledger.wait_for_ack_after(
                healed,
                WEDGE_DEADLINE,
                &format!("{} healed", kind.name()),
            )?;
            self.log(&format!(
                "  first commit {:.2} s after it healed",
                self.ledger
                    .last_ack()
                    .map(|t| t.saturating_duration_since(healed).as_secs_f64())
                    .unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Injects one fault and heals it; when it was healed.
    fn inject(&mut self, kind: FaultKind) -> Result<Instant> {
        let sk = |me: &mut Self| {
            let i = me.rng.below(me.safekeepers.len() as u64) as usize;
            Component::Safekeeper(me.safekeepers[i])
        };
        let wp = Component::Walproposer(self.compute.clone());
        match kind {
            FaultKind::KillSafekeeper => {
                let c = sk(self);
                self.kill(&[c])
            }
            FaultKind::PauseSafekeeper => {
                let c = sk(self);
                self.pause(&[c], Duration::from_secs(1), Duration::from_secs(10))
            }
            FaultKind::KillPageserver => self.kill(&[Component::Pageserver]),
            FaultKind::PausePageserver => self.pause(
                &[Component::Pageserver],
                Duration::from_secs(1),
                Duration::from_secs(10),
            ),
            FaultKind::KillWalproposer => self.kill(&[wp]),
            FaultKind::PauseWalproposer => {
                self.pause(&[wp], Duration::from_secs(1), Duration::from_secs(5))
            }
            FaultKind::QuorumOutage => {
                let spared = self.rng.below(self.safekeepers.len() as u64) as usize;
                let two: Vec<Component> = (0..self.safekeepers.len())
                    .filter(|i| *i != spared)
                    .map(|i| Component::Safekeeper(self.safekeepers[i]))
                    .collect();
                if self.rng.below(3) == 0 {
                    self.kill(&two)
                } else {
                    self.pause(&two, Duration::from_secs(2), Duration::from_secs(15))
                }
            }
            FaultKind::DiskFull => self.disk_full(),
        }
    }

    /// Every process of the cluster: safekeepers, pageserver, the compute's Postgres and
    /// walproposer.
    fn components(&self) -> Vec<Component> {
        let mut all: Vec<Component> = self
            .safekeepers
            .iter()
            .map(|id| Component::Safekeeper(*id))
            .collect();
        all.push(Component::Pageserver);
        all.push(Component::Postgres(self.compute.clone()));
        all.push(Component::Walproposer(self.compute.clone()));
        all
    }

    /// Waits until every component runs (restarted by the cluster itself, not by the soak) and
    /// `strata status` says so, at most `deadline`.
    pub fn wait_all_running(&self, deadline: Duration, when: &str) -> Result<()> {
        let until = Instant::now() + deadline;
        loop {
            let down: Vec<String> = self
                .components()
                .iter()
                .filter(|c| c.running_pid(&self.cluster).is_none())
                .map(|c| c.to_string())
                .collect();
            let status = self.cli.run(&["status"]);
            if down.is_empty() && status.is_ok() {
                return Ok(());
            }
            ensure!(
                Instant::now() < until,
                "{when}: not every component runs after {deadline:?}: down {down:?}; \
                 strata status: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn pid(&self, c: &Component) -> Result<i32> {
        c.running_pid(&self.cluster)
            .with_context(|| format!("{c} is not running before the fault"))
    }

    /// SIGKILL, then wait until the supervisor started each again.
    fn kill(&mut self, targets: &[Component]) -> Result<Instant> {
        let mut killed = Vec::new();
        for c in targets {
            let pid = self.pid(c)?;
            signal(pid, libc::SIGKILL)?;
            self.log(&format!("SIGKILL {c} (pid {pid})"));
            killed.push((c, pid));
        }
        for (_, pid) in &killed {
            wait_gone(*pid, Duration::from_secs(10))?;
        }
        let t0 = Instant::now();
        for (c, pid) in &killed {
            let new = c.wait_restarted(&self.cluster, *pid, RESTART_DEADLINE)?;
            self.log(&format!(
                "  {c} back by itself as pid {new} after {:.2} s",
                t0.elapsed().as_secs_f64()
            ));
        }
        Ok(Instant::now())
    }

    /// SIGSTOP, a random pause in `lo..=hi`, SIGCONT.
    fn pause(&mut self, targets: &[Component], lo: Duration, hi: Duration) -> Result<Instant> {
        let pause = self.rng.between(lo, hi);
        let mut paused = Paused(Vec::new());
        for c in targets {
            let pid = self.pid(c)?;
            signal(pid, libc::SIGSTOP)?;
            paused.0.push(pid);
            self.log(&format!("SIGSTOP {c} (pid {pid}) for {pause:?}"));
        }
        std::thread::sleep(pause);
        drop(paused);
        Ok(Instant::now())
    }

    fn disk_full(&mut self) -> Result<Instant> {
        let disk = self.disk.context("no small disk mounted")?;
        let hold = self
            .rng
            .between(Duration::from_secs(3), Duration::from_secs(12));
        let bytes = match disk.fill() {
            Ok(b) => b,
            Err(e) => {
                let _ = disk.free();
                return Err(e);
            }
        };
        self.log(&format!(
            "disk full: filler of {} MiB, held {hold:?}",
            bytes >> 20
        ));
        std::thread::sleep(hold);
        disk.free()?;
        self.log("  filler removed");
        Ok(Instant::now())
    }
}
