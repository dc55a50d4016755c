//! One pgbench database in a fresh Strata cluster, with a point in time T in its past and
//! everything the measurements compare against: main's answers at T, a `pg_basebackup`
//! taken before T and the WAL from it to past T (Postgres's own PITR replays them).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use walproto::Lsn;

use crate::branch_bench::pgprog::{PgProgs, Server};
use crate::branch_bench::report::mib;
use crate::branch_bench::step;
use crate::branch_bench::strata_cli::{ComputeStart, StrataCli};

/// The tenant every dataset lives in (one cluster per dataset).
pub const TENANT: &str = "bench";

/// How to make a dataset.
#[derive(Clone, Debug)]
pub struct DatasetOptions {
    pub scale: u32,
    pub pg_bin: PathBuf,
    pub strata_bin: Option<PathBuf>,
    /// pgbench clients of the TPC-B-like workload before and after T.
    pub clients: u32,
    /// Seconds of that workload before T (WAL the PITR replays and the pageserver redoes)
    /// and again after T (T is truly in the past).
    pub workload_secs: u32,
    /// Start main with `--full-copy` (the strata has lazy computes; main is only the loader).
    pub main_full_copy: bool,
}

/// A pgbench database at scale N with a past point T.
pub struct Dataset {
    pub scale: u32,
    /// The directory holding the cluster, the base backup and the WAL copies.
    pub dir: PathBuf,
    pub strata: StrataCli,
    pub t: Lsn,
    /// An account the workload updated just before T (and that is changed again after T).
    pub point_aid: u64,
    /// Its balance at T.
    pub point_answer: String,
    /// `count(*)|sum(abalance)` of pgbench_accounts at T.
    pub scan_answer: String,
    /// Rows of pgbench_history at T.
    pub history_rows: u64,
    /// pg_database_size at T.
    pub db_bytes: u64,
    /// pg_relation_size of pgbench_accounts and of its primary key at T.
    pub accounts_bytes: u64,
    pub accounts_pkey_bytes: u64,
    /// `pg_basebackup` of main taken before T, and main's WAL segments since.
    pub anchor: PathBuf,
    pub wal_archive: PathBuf,
}

impl Dataset {
    /// The point query every server at T answers first.
    pub fn point_query(&self) -> String {
        format!(
            "SELECT abalance FROM pgbench_accounts WHERE aid = {}",
            self.point_aid
        )
    }
}

/// The sequential scan whose answer is checked against main at T.
pub const SCAN_QUERY: &str = "SELECT count(*), sum(abalance) FROM pgbench_accounts";

/// Makes the dataset in `dir` (a new directory the Postgres user can enter): a cluster,
/// `pgbench -i`, a base backup, workload, T, more workload; then main is stopped (its data
/// directory is a full copy: no disk to spare at large scales).
pub fn make(opts: &DatasetOptions, progs: &PgProgs, dir: &Path) -> Result<Dataset> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    progs.give(dir)?;
    let strata = StrataCli::new(opts.strata_bin.clone(), &dir.join("strata"))?;
    let pg_bin = opts.pg_bin.display().to_string();
    // Its psql runs as the Postgres OS user over TCP, without the cluster's password.
    step("strata init", || {
        strata.run(&["init", "--no-auth", "--pg-bin", &pg_bin])
    })?;
    step("strata start", || strata.run(&["start"]))?;
    step("strata tenant create", || {
        strata.run(&["tenant", "create", TENANT])
    })?;
    let started = step("strata compute start main", || {
        strata.compute_start_with(&ComputeStart {
            tenant: TENANT,
            branch: "main",
            full_copy: opts.main_full_copy,
            ..ComputeStart::default()
        })
    })?;
    let main = Server {
        progs: progs.clone(),
        port: started.port,
    };
    // Wherever this strata keeps a compute's data directory (the PITR reads its WAL).
    let main_wal =
        PathBuf::from(main.sql("SELECT current_setting('data_directory')")?).join("pg_wal");
    ensure!(
        main_wal.is_dir(),
        "main's WAL is not at {} (strata --dir {} status)",
        main_wal.display(),
        strata.dir.display()
    );
    // The warm rounds read whole relations with pg_prewarm.
    main.sql("CREATE EXTENSION IF NOT EXISTS pg_prewarm")?;
    let scale = opts.scale.to_string();
    let t_load = Instant::now();
    step(&format!("pgbench -i -s {scale}"), || {
        main.pgbench(&["-i", "-q", "-s", &scale])
    })?;
    let load_secs = t_load.elapsed().as_secs_f64();
    // From the base backup on, every segment stays until it is copied.
    main.sql("ALTER SYSTEM SET wal_keep_size = '1TB'")?;
    main.sql("SELECT pg_reload_conf()")?;
    let anchor = dir.join("anchor");
    step("pg_basebackup of main (the PITR's base)", || {
        main.pg_basebackup(&anchor)
    })?;

    let workload = |what: &str| {
        let c = opts.clients.to_string();
        let secs = opts.workload_secs.to_string();
        step(&format!("pgbench TPC-B-like {secs} s {what}"), || {
            main.pgbench(&["-n", "-c", &c, "-j", &c, "-T", &secs])
        })
    };
    workload("before T")?;
    // T: nothing writes between reading main's answers and the restore point.
    let point_aid: u64 = main
        .sql("SELECT aid FROM pgbench_history ORDER BY mtime DESC, aid LIMIT 1")?
        .parse()
        .context("the last pgbench_history row's aid")?;
    let point_query = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {point_aid}");
    let point_answer = main.sql(&point_query)?;
    let scan_answer = step("main's answer to the scan at T", || main.sql(SCAN_QUERY))?;
    let history_rows: u64 = main
        .sql("SELECT count(*) FROM pgbench_history")?
        .parse()
        .context("count of pgbench_history")?;
    let size = |sql: &str| -> Result<u64> { main.sql(sql)?.parse().context(sql.to_string()) };
    let db_bytes = size("SELECT pg_database_size('postgres')")?;
    let accounts_bytes = size("SELECT pg_relation_size('pgbench_accounts')")?;
    let accounts_pkey_bytes = size("SELECT pg_relation_size('pgbench_accounts_pkey')")?;
    let t = main.lsn("SELECT pg_create_restore_point('lazy-bench-t')")?;
    eprintln!(
        "  T = {t}: account {point_aid} has {point_answer}; scan {scan_answer}; database \
         {:.1} MiB, pgbench_accounts {:.1} MiB (+ {:.1} MiB key); loaded in {load_secs:.0} s",
        mib(db_bytes),
        mib(accounts_bytes),
        mib(accounts_pkey_bytes)
    );
    // After T the point answer changes: a server past T answers differently.
    main.sql(&format!(
        "UPDATE pgbench_accounts SET abalance = abalance + 1000000 WHERE aid = {point_aid}"
    ))?;
    workload("after T")?;
    main.sql("SELECT pg_switch_wal()")?;
    step("wait until the pageserver has all of main's WAL", || {
        strata.wait_caught_up(TENANT, "main", "caught-up")
    })?;
    let wal_archive = dir.join("wal-archive");
    step("copy main's WAL since the base backup", || {
        copy_segments(&main_wal, &anchor, &wal_archive, progs)
    })?;
    step("strata compute stop main", || strata.compute_stop("main"))?;
    Ok(Dataset {
        scale: opts.scale,
        dir: dir.to_path_buf(),
        strata,
        t,
        point_aid,
        point_answer,
        scan_answer,
        history_rows,
        db_bytes,
        accounts_bytes,
        accounts_pkey_bytes,
        anchor,
        wal_archive,
    })
}

/// Copies the WAL segments of `wal_dir` from the base backup's first on into `archive`
/// (for the PITR's `restore_command`).
fn copy_segments(wal_dir: &Path, anchor: &Path, archive: &Path, progs: &PgProgs) -> Result<()> {
    let label = std::fs::read_to_string(anchor.join("backup_label"))
        .with_context(|| format!("reading {}/backup_label", anchor.display()))?;
    let first = first_segment(&label)?;
    std::fs::create_dir_all(archive)?;
    progs.give(archive)?;
    let mut copied = 0usize;
    for e in std::fs::read_dir(wal_dir).with_context(|| format!("listing {}", wal_dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let is_segment = name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit());
        if is_segment && name.as_str() >= first.as_str() {
            let to = archive.join(&name);
            std::fs::copy(e.path(), &to)
                .with_context(|| format!("copying {}", e.path().display()))?;
            progs.give(&to)?;
            copied += 1;
        }
    }
    ensure!(
        copied > 0,
        "no WAL segment from {first} on in {}",
        wal_dir.display()
    );
    eprintln!("  {copied} segments from {first} on");
    Ok(())
}

/// The segment file named in `START WAL LOCATION: 0/5000028 (file 000000010000000000000005)`.
fn first_segment(backup_label: &str) -> Result<String> {
    backup_label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION:"))
        .and_then(|l| l.split_once("(file "))
        .map(|(_, f)| f.trim_end_matches(')').trim().to_string())
        .filter(|f| f.len() == 24)
        .with_context(|| format!("no START WAL LOCATION file in backup_label: {backup_label:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_segment() {
        let l = "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\n\
                 CHECKPOINT LOCATION: 0/5000060\n";
        assert_eq!(first_segment(l).unwrap(), "000000010000000000000005");
        assert!(first_segment("CHECKPOINT LOCATION: 0/5000060\n").is_err());
        assert!(first_segment("START WAL LOCATION: 0/5000028 (file 0001)\n").is_err());
    }
}
