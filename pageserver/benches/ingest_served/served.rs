//! The ingest benchmark on the path a running pageserver uses: Postgres 15 → `compute
//! walproposer` → a `safekeeper` → the `pageserver` binary's walreceiver → layers, beside
//! Postgres 15's own recovery of the same WAL from the same base, in alternating rounds.
//!
//! 1. A throw-away Postgres (initdb; its data directory copied as the base, checkpoint S)
//!    streams through the walproposer into one safekeeper (synchronous commit: every commit
//!    the workload makes is in the safekeeper) while the workload runs (pgbench, or the
//!    index-heavy workload). Its end E is `pg_current_wal_lsn()` after the workload; then
//!    Postgres stops and its WAL (S..E, all kept) is copied aside.
//! 2. Each round: **Strata** — a fresh `pageserver` process imports the base (not timed) with
//!    the safekeeper as its WAL source; timed from the import's answer until the walreceiver
//!    has ingested up to E and a `Flush` returns (everything durable, automatic compaction
//!    finished, L0 layers below the compaction threshold: read amplification within its
//!    bound). CPU: the pageserver process's utime + stime over that span (`/proc/<pid>/stat`).
//!    **Postgres** — the same base as a standby over the same WAL in `pg_wal`, timed from
//!    start until `pg_last_wal_replay_lsn()` reaches E; CPU: the postmaster and its children.
//! 3. Medians over the rounds; MB/s, records/s, CPU seconds per GB, and the ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::index_workload::run_index_workload;
use strata_tests::procs::{Pageserver, Safekeeper, Walproposer};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::proto::pageserver as pb;
use walproto::walfiles::WalDirReader;
use walproto::Lsn;

const TENANT: &str = "5e7ed5e7ed5e7ed5e7ed5e7ed5e7ed01";
const TIMELINE: &str = "5e7ed5e7ed5e7ed5e7ed5e7ed5e7ed02";

/// How long one side may take to catch up before the bench gives up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(3600);

/// What WAL to write.
#[derive(Clone, Debug)]
pub enum Workload {
    /// `pgbench -i -s <scale>`, then `<seconds>` s with 4 clients.
    Pgbench { scale: u32, seconds: u32 },
    /// `strata_tests::index_workload` with this many rows.
    Indexes { rows: u64 },
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub workload: Workload,
    /// Rounds (each runs Postgres and every variant once).
    pub rounds: usize,
    /// The pageservers to time, in this order in every round (at least one).
    pub variants: Vec<Variant>,
}

/// One pageserver configuration the rounds time side by side on the same WAL.
#[derive(Clone, Debug, Default)]
pub struct Variant {
    pub name: String,
    /// The tenant's `tenant.toml` (empty: the defaults).
    pub tenant_toml: String,
    /// Another pageserver binary (`None`: the harness's, see `STRATA_PAGESERVER_BIN`).
    pub bin: Option<PathBuf>,
}

impl Variant {
    /// `name:key=value,key=value,…` — tenant config settings, and `bin=PATH` for the binary.
    /// `default:` (or an empty text) is the harness's binary with the default config.
    pub fn parse(text: &str) -> Result<Variant> {
        let (name, settings) = text.split_once(':').unwrap_or((text, ""));
        let mut v = Variant {
            name: if name.trim().is_empty() {
                "default".into()
            } else {
                name.trim().into()
            },
            ..Variant::default()
        };
        for setting in settings.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = setting
                .split_once('=')
                .with_context(|| format!("variant {text:?}: {setting:?} is not key=value"))?;
            match key.trim() {
                "bin" => v.bin = Some(PathBuf::from(value.trim())),
                key => v.tenant_toml += &format!("{key} = {}\n", value.trim()),
            }
        }
        Ok(v)
    }
}

/// One side's timed run.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub secs: f64,
    pub cpu_secs: f64,
    /// Strata: seconds until the walreceiver had ingested the last record (the rest of
    /// `secs` is the final flush and compaction). Postgres: `secs`.
    pub caught_up_secs: f64,
}

/// What the bench measured.
#[derive(Debug)]
pub struct Report {
    pub workload: String,
    pub wal_bytes: u64,
    pub records: u64,
    /// Per variant (in [`Opts::variants`] order), its runs.
    pub strata: Vec<(String, Vec<Run>)>,
    pub postgres: Vec<Run>,
    /// Layer files after the last Strata run's flush.
    pub layers: u32,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Report {
    pub fn median_secs(runs: &[Run]) -> f64 {
        median(runs.iter().map(|r| r.secs).collect())
    }

    /// Postgres's median time over variant `i`'s.
    pub fn ratio(&self, i: usize) -> f64 {
        Self::median_secs(&self.postgres) / Self::median_secs(&self.strata[i].1)
    }

    fn median_cpu(runs: &[Run]) -> f64 {
        median(runs.iter().map(|r| r.cpu_secs).collect())
    }

    /// The printed report: a table, then each round.
    pub fn render(&self) -> String {
        let mb = self.wal_bytes as f64 / 1e6;
        let gb = self.wal_bytes as f64 / 1e9;
        let row = |what: &str, runs: &[Run]| {
            let secs = Self::median_secs(runs);
            format!(
                "| {what} | {secs:.2} | {:.1} | {:.0} | {:.1} |\n",
                mb / secs,
                self.records as f64 / secs,
                Self::median_cpu(runs) / gb
            )
        };
        let mut out = format!(
            "| {} WAL, {mb:.0} MB, {} records; median of {} rounds | seconds | MB/s | records/s | CPU s per GB |\n| --- | ---: | ---: | ---: | ---: |\n",
            self.workload,
            self.records,
            self.postgres.len()
        );
        out += &row(
            "Postgres 15 recovery (standby from pg_wal, start to replay end)",
            &self.postgres,
        );
        for (name, runs) in &self.strata {
            out += &row(
                &format!(
                    "Strata pageserver ({name}): walreceiver from a safekeeper, until durable and compacted"
                ),
                runs,
            );
        }
        for (i, (name, _)) in self.strata.iter().enumerate() {
            out += &format!(
                "Strata ({name}) / Postgres: {:.2}x (median times)\n",
                self.ratio(i)
            );
        }
        out += &format!("layer files after the last run: {}\n", self.layers);
        for (i, p) in self.postgres.iter().enumerate() {
            out += &format!(
                "round {}: Postgres {:.2} s ({:.2} CPU s)",
                i + 1,
                p.secs,
                p.cpu_secs
            );
            for (name, runs) in &self.strata {
                if let Some(s) = runs.get(i) {
                    out += &format!(
                        "; {name} {:.2} s (caught up at {:.2} s, {:.2} CPU s): {:.2}x",
                        s.secs,
                        s.caught_up_secs,
                        s.cpu_secs,
                        p.secs / s.secs
                    );
                }
            }
            out += "\n";
        }
        out
    }
}

/// CPU seconds (user + system) `pid` used so far; with `children`, also of its waited-for
/// children.
fn cpu_secs(pid: u32, children: bool) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // After the command name (which may hold spaces): utime is field 14, stime 15, cutime
    // 16, cstime 17 of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| f.get(i).copied().unwrap_or(0);
    let mut ticks = field(11) + field(12);
    if children {
        ticks += field(13) + field(14);
    }
    // USER_HZ is 100 on Linux.
    Ok(ticks as f64 / 100.0)
}

/// CPU seconds of a Postgres cluster: its postmaster, the children it reaped and the live ones.
fn postgres_cpu(data: &Path) -> Result<f64> {
    let pid_file = std::fs::read_to_string(data.join("postmaster.pid"))?;
    let pm: u32 = pid_file
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("postmaster.pid has no pid")?;
    let mut total = cpu_secs(pm, true)?;
    let children = std::fs::read_to_string(format!("/proc/{pm}/task/{pm}/children"))?;
    for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        total += cpu_secs(c, false).unwrap_or(0.0);
    }
    Ok(total)
}

/// The safekeeper, streaming Postgres's WAL from the walproposer.
struct Source {
    _sk: Safekeeper,
    sk_pg: String,
}

/// Starts the safekeeper and the walproposer streaming `pg` into it.
fn start_source(pg: &PgCluster, scratch: &Path) -> Result<(Source, Walproposer)> {
    let sk = Safekeeper::started_with_replication(scratch, 1)?;
    let wp = Walproposer::start_for(
        pg,
        &[sk.addr()],
        (TENANT, TIMELINE),
        &scratch.join("wp.log"),
        &[],
    )?;
    let sk_pg = sk.pg_addr();
    Ok((Source { _sk: sk, sk_pg }, wp))
}

/// The base, the WAL beside it, and the range the rounds replay.
struct Fixture {
    base: PathBuf,
    wal: PathBuf,
    start: Lsn,
    end: Lsn,
}

/// Writes the WAL through the safekeeper (step 1).
fn write_wal(pg: &PgCluster, opts: &Opts, scratch: &Path) -> Result<(Fixture, Source)> {
    let base = pg.copy_data_dir("base")?;
    let start = pg.latest_checkpoint()?;
    pg.start()?;
    let (source, wp) = start_source(pg, scratch)?;
    match &opts.workload {
        Workload::Pgbench { scale, seconds } => {
            pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"])?;
            pg.pgbench(&["-c", "4", "-j", "2", "-T", &seconds.to_string()])?;
        }
        Workload::Indexes { rows } => run_index_workload(pg, *rows)?,
    }
    // A last commit, which the safekeeper acknowledged, then the end.
    pg.psql("CREATE TABLE bench_end (x int)")?;
    let end = pg.current_wal_lsn()?;
    pg.stop(StopMode::Fast)?;
    drop(wp);
    let wal = scratch.join("wal");
    copy(&pg.wal_dir(), &wal)?;
    Ok((
        Fixture {
            base,
            wal,
            start,
            end,
        },
        source,
    ))
}

pub fn copy(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    ensure!(
        status.success(),
        "copying {} to {} failed",
        from.display(),
        to.display()
    );
    Ok(())
}

/// Writes back every dirty page before a timed run, so neither side pays for the other's files.
pub fn settle() -> Result<()> {
    ensure!(Command::new("sync").status()?.success(), "sync failed");
    Ok(())
}

/// Records of the WAL from `start` to `end` (decoded once, untimed).
fn count_records(f: &Fixture) -> Result<u64> {
    let mut reader = WalDirReader::open(&f.wal, f.start, Some(f.end), None)?;
    let mut n = 0;
    while reader.next_record()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// One Strata run: a fresh pageserver imports the base and catches up from the safekeeper.
async fn strata_run(
    f: &Fixture,
    source: &Source,
    variant: &Variant,
    dir: &Path,
) -> Result<(Run, u32)> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    // Only warnings are logged: log lines are not what is measured.
    let ps = match &variant.bin {
        Some(bin) => Pageserver::start_bin(bin, &dir.join("ps"), &[], "warn")?,
        None => Pageserver::start_logging(&dir.join("ps"), &[], "warn")?,
    };
    let mut c = ps.client().await?;
    c.create_tenant(pb::CreateTenantRequest {
        tenant_id: TENANT.into(),
        config_toml: variant.tenant_toml.clone(),
    })
    .await?;
    settle()?;
    c.import_timeline(pb::ImportTimelineRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
        datadir: f.base.display().to_string(),
        lsn: 0,
        safekeepers: vec![source.sk_pg.clone()],
    })
    .await?;
    let pid = ps.child.id();
    let (t0, cpu0) = (Instant::now(), cpu_secs(pid, false)?);
    let req = pb::TimelineRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
    };
    let caught_up_secs = loop {
        let st = c.timeline_status(req.clone()).await?.into_inner();
        if Lsn(st.last_record_end) >= f.end {
            break t0.elapsed().as_secs_f64();
        }
        if t0.elapsed() > CATCH_UP_LIMIT {
            bail!(
                "the pageserver ingested only up to {} of {} in {CATCH_UP_LIMIT:?} (log: {})",
                Lsn(st.last_record_end),
                f.end,
                dir.join("ps.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let st = c.flush(req.clone()).await?.into_inner();
    let run = Run {
        secs: t0.elapsed().as_secs_f64(),
        cpu_secs: cpu_secs(pid, false)? - cpu0,
        caught_up_secs,
    };
    ensure!(
        Lsn(st.disk_consistent_lsn) >= f.end,
        "after Flush the pageserver is durable only up to {}",
        Lsn(st.disk_consistent_lsn)
    );
    drop(c);
    drop(ps);
    std::fs::remove_dir_all(dir)?;
    Ok((run, st.layers))
}

/// One Postgres run: `base` (in place of `pg`'s data directory) as a standby replaying the
/// WAL segments of `wal` from its `pg_wal` until `end`.
pub fn postgres_run(pg: &PgCluster, base: &Path, wal: &Path, end: Lsn) -> Result<Run> {
    let data = pg.data_dir().to_path_buf();
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    copy(base, &data)?;
    for entry in std::fs::read_dir(data.join("pg_wal"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cp -a {}/0* {}/pg_wal/",
            wal.display(),
            data.display()
        ))
        .status()?;
    ensure!(status.success(), "copying the WAL failed");
    // A standby has no synchronous standby; a kept base carries another cluster's port and
    // socket directory.
    pg.set_config(&[
        ("synchronous_standby_names".into(), String::new()),
        ("port".into(), pg.port().to_string()),
        (
            "unix_socket_directories".into(),
            pg.socket_dir().display().to_string(),
        ),
    ])?;
    pg.make_standby_signal()?;
    settle()?;
    let t = Instant::now();
    pg.start()?;
    // One connected psql polls: a psql process per poll took CPU the recovery shared.
    let mut session = None;
    let mut replayed = Lsn(0);
    while replayed < end {
        ensure!(
            t.elapsed() < CATCH_UP_LIMIT,
            "Postgres recovery did not reach {end} (at {replayed})"
        );
        if session.is_none() {
            session = pg.session().ok();
        }
        match session
            .as_mut()
            .map(|s| s.query_row("select pg_last_wal_replay_lsn()"))
        {
            Some(Ok(row)) => replayed = row.parse().context("pg_last_wal_replay_lsn")?,
            _ => session = None,
        }
        if replayed < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu_secs = postgres_cpu(&data)?;
    pg.stop(StopMode::Immediate)?;
    Ok(Run {
        secs,
        cpu_secs,
        caught_up_secs: secs,
    })
}

/// Runs the bench.
pub async fn run(opts: &Opts) -> Result<Report> {
    let init = InitOptions::default()
        .keep_all_wal()
        .set("synchronous_standby_names", "strata")
        .set("synchronous_commit", "on")
        .set("max_wal_senders", "10");
    let pg = PgCluster::init(&init)?;
    let scratch = pg.base_dir().join("served");
    std::fs::create_dir_all(&scratch)?;
    let (f, source) = write_wal(&pg, opts, &scratch)?;
    let records = count_records(&f)?;
    let mut rep = Report {
        workload: match &opts.workload {
            Workload::Pgbench { scale, seconds } => {
                format!("pgbench (-i -s {scale}, {seconds} s with 4 clients)")
            }
            Workload::Indexes { rows } => format!("index-heavy ({rows} rows)"),
        },
        wal_bytes: f.end.0 - f.start.0,
        records,
        strata: opts
            .variants
            .iter()
            .map(|v| (v.name.clone(), Vec::new()))
            .collect(),
        postgres: Vec::new(),
        layers: 0,
    };
    eprintln!(
        "WAL {}..{}: {} bytes, {records} records",
        f.start, f.end, rep.wal_bytes
    );
    ensure!(!opts.variants.is_empty(), "no pageserver variant to time");
    for round in 0..opts.rounds.max(1) {
        for (i, v) in opts.variants.iter().enumerate() {
            let (s, layers) = strata_run(&f, &source, v, &scratch.join("strata-run")).await?;
            eprintln!(
                "round {}: Strata ({}) {:.2} s (caught up at {:.2} s), {:.2} CPU s",
                round + 1,
                v.name,
                s.secs,
                s.caught_up_secs,
                s.cpu_secs
            );
            rep.strata[i].1.push(s);
            rep.layers = layers;
        }
        let p = postgres_run(&pg, &f.base, &f.wal, f.end)?;
        eprintln!(
            "round {}: Postgres {:.2} s, {:.2} CPU s",
            round + 1,
            p.secs,
            p.cpu_secs
        );
        rep.postgres.push(p);
    }
    Ok(rep)
}
