//! The operator's commands of issue 21 on a real cluster, each with its effect checked:
//! `tenant config get|set` (in effect without a restart: GC's PITR window moves; kept in
//! tenant.toml, in the object store and across a restart; bad keys and values refused),
//! `compute start --set` (Postgres runs with the setting; a value Postgres refuses fails the
//! start with Postgres's message), compute logs under `<dir>/logs/`, `waldump --json`, and
//! `strata check` with the cluster stopped (healthy; then a flipped byte, a deleted layer and
//! a stray object are each found, with exit code 3).
//!
//! Every `strata` run has a deadline: a command that hangs fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use strata_tests::cluster::{on_new_cluster, psql, read_pid, wait_for, StrataCli};
use walproto::Lsn;

/// Longest one `strata` command may take here.
const COMMAND_WITHIN: Duration = Duration::from_secs(120);

/// `strata args…` with a deadline: (exit code, stdout, stderr).
fn run_with_code(s: &StrataCli, args: &[&str]) -> Result<(i32, String, String)> {
    s.run_within(args, COMMAND_WITHIN)
}

/// `strata args…` that must fail: its stderr.
fn refused(s: &StrataCli, args: &[&str]) -> Result<String> {
    s.refused_within(args, COMMAND_WITHIN)
}

/// `strata --json check`: exit code and the parsed result.
fn check(s: &StrataCli) -> Result<(i32, Value)> {
    let (code, out, err) = run_with_code(s, &["--json", "check"])?;
    let v = serde_json::from_str(out.trim())
        .with_context(|| format!("check printed no JSON (exit {code}): {out}{err}"))?;
    Ok((code, v))
}

fn lsn(v: &Value) -> Result<Lsn> {
    v.as_str()
        .with_context(|| format!("not an LSN: {v}"))?
        .parse()
        .map_err(|e| anyhow::anyhow!("{v}: {e}"))
}

/// The files under `dir` (recursively).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                found.push(p);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[test]
fn tenant_config_compute_settings_logs_waldump_and_check() -> Result<()> {
    on_new_cluster("strata-ops-", ops)
}

fn ops(s: &StrataCli) -> Result<()> {
    s.run(&["start"])?;
    let t = s.json(&["tenant", "create"])?;
    let tenant_id = t["tenant_id"].as_str().context("tenant_id")?.to_string();
    let main_id = t["timeline_id"]
        .as_str()
        .context("timeline_id")?
        .to_string();

    // A compute with its own settings; Postgres runs with them, and logs under logs/.
    let c = s.json(&[
        "compute",
        "start",
        "main",
        "--set",
        "work_mem=3MB",
        "--set",
        "cluster_name=it's mine",
    ])?;
    let port = u16::try_from(c["port"].as_u64().context("port")?)?;
    ensure!(
        c["settings"]["work_mem"] == "3MB",
        "compute start --json: {c}"
    );
    // Where the compute's own WAL begins (its segment holds nothing readable before).
    let start = c["lsn"].as_str().context("lsn")?.to_string();
    ensure!(
        psql(port, "SHOW work_mem")? == "3MB",
        "work_mem not applied"
    );
    ensure!(
        psql(port, "SHOW cluster_name")? == "it's mine",
        "a quoted value is not kept whole"
    );
    let log = s.dir.join("logs").join("compute-main.log");
    ensure!(
        c["log"].as_str() == Some(log.to_str().context("log path")?),
        "compute start --json names no log: {c}"
    );
    let text = std::fs::read_to_string(&log).with_context(|| format!("{}", log.display()))?;
    ensure!(
        text.contains("database system is ready"),
        "{}: {text}",
        log.display()
    );
    ensure!(
        s.dir.join("logs").join("compute-main-pagefs.log").exists()
            && !s.dir.join("computes/main/postgres.log").exists(),
        "the page filesystem's log is not beside it, or Postgres still logs in the compute's directory"
    );
    // The form is checked before anything starts; a value Postgres refuses fails the start
    // with Postgres's own words, and nothing of the compute stays.
    let err = refused(
        s,
        &["compute", "start", "main", "--read-only", "--set", "port=1"],
    )?;
    ensure!(err.contains("set by Strata"), "{err}");
    let err = refused(
        s,
        &[
            "compute",
            "start",
            "main",
            "--read-only",
            "--set",
            "work_mem",
        ],
    )?;
    ensure!(err.contains("key=value"), "{err}");
    let err = refused(
        s,
        &[
            "compute",
            "start",
            "main",
            "--read-only",
            "--name",
            "bad",
            "--set",
            "shared_buffers=lots",
        ],
    )?;
    ensure!(
        err.contains("invalid value for parameter \"shared_buffers\"")
            && err.contains("logs/compute-bad.log"),
        "Postgres's refusal is not shown: {err}"
    );
    ensure!(
        !s.dir.join("computes/bad").exists(),
        "the failed compute's directory stays"
    );
    // The page filesystem killed: the supervisor recreates the whole compute, settings too.
    let pagefs_pid_file = s.dir.join("run/compute-main-pagefs.pid");
    let pagefs = read_pid(&pagefs_pid_file)?;
    let st = Command::new("kill")
        .args(["-9", &pagefs.to_string()])
        .status()?;
    ensure!(st.success(), "kill -9 {pagefs}");
    wait_for(
        "the recreated compute, with work_mem = 3MB",
        Duration::from_secs(90),
        || {
            let again = read_pid(&pagefs_pid_file).is_ok_and(|p| p != pagefs);
            Ok((again && psql(port, "SHOW work_mem").is_ok_and(|v| v == "3MB")).then_some(()))
        },
    )?;

    // Tenant configuration: defaults listed, one key read.
    let conf = s.json(&["tenant", "config", "get"])?;
    let rows = conf.as_array().context("config rows")?;
    let keys: Vec<&str> = rows.iter().filter_map(|r| r["key"].as_str()).collect();
    ensure!(
        keys == [
            "pitr_interval",
            "freeze_mib",
            "page_cache_pages",
            "auto_compaction"
        ],
        "tenant config get --json: {conf}"
    );
    ensure!(s.run(&["tenant", "config", "get", "pitr_interval"])? == "7d");

    // With the default window GC keeps everything: the PITR cutoff is the start.
    // (The first commit after the recreation may meet the walproposer still connecting.)
    wait_for(
        "a commit on the recreated compute",
        Duration::from_secs(60),
        || {
            Ok(psql(
                port,
                "CREATE TABLE t AS SELECT generate_series(1, 1000) AS id",
            )
            .ok())
        },
    )?;
    let gc = s.json(&["gc", "--branch", "main"])?;
    let pitr_before = lsn(&gc["timelines"][0]["pitr_lsn"])?;

    // Bad keys and values are refused, naming the key and the accepted form.
    let err = refused(s, &["tenant", "config", "set", "pitr=1d"])?;
    ensure!(
        err.contains("unknown") && err.contains("pitr_interval"),
        "{err}"
    );
    let err = refused(s, &["tenant", "config", "set", "freeze_mib=0"])?;
    ensure!(
        err.contains("freeze_mib") && err.contains("1 to 4096"),
        "{err}"
    );
    let err = refused(s, &["tenant", "config", "set", "pitr_interval=2 weeks"])?;
    ensure!(
        err.contains("pitr_interval") && err.contains("unit"),
        "{err}"
    );
    ensure!(s.run(&["tenant", "config", "get", "pitr_interval"])? == "7d");

    // A one-second window, without a restart: GC's PITR cutoff moves past the old one.
    let set = s.json(&[
        "tenant",
        "config",
        "set",
        "pitr_interval=1s",
        "freeze_mib=8",
    ])?;
    ensure!(
        set[0]["key"] == "pitr_interval" && set[0]["value"] == "1s" && set[1]["value"] == "8",
        "tenant config set --json: {set}"
    );
    let toml_path = s
        .dir
        .join("pageserver/tenants")
        .join(&tenant_id)
        .join("tenant.toml");
    let on_disk = std::fs::read_to_string(&toml_path)?;
    ensure!(
        on_disk.contains("pitr_interval = \"1s\"") && on_disk.contains("freeze_mib = 8"),
        "{}: {on_disk}",
        toml_path.display()
    );
    let stored = std::fs::read_to_string(s.dir.join("remote/t").join(&tenant_id).join("config"))?;
    ensure!(
        stored.contains("pitr_interval = \"1s\""),
        "the object store's copy: {stored}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    psql(port, "INSERT INTO t VALUES (0)")?;
    wait_for(
        "GC's PITR cutoff to move with the new window",
        Duration::from_secs(30),
        || {
            psql(port, "INSERT INTO t VALUES (0)")?;
            let gc = s.json(&["gc", "--branch", "main"])?;
            let l = lsn(&gc["timelines"][0]["pitr_lsn"])?;
            Ok((l > pitr_before).then_some(l))
        },
    )?;

    // A 1 MiB freeze size without compaction, without a restart: a burst of WAL is written
    // as several L0 layer files at once (at 32 MiB it would be at most the periodic flush's).
    s.json(&[
        "tenant",
        "config",
        "set",
        "freeze_mib=1",
        "auto_compaction=false",
    ])?;
    let tl_dir = s
        .dir
        .join("pageserver/tenants")
        .join(&tenant_id)
        .join("timelines")
        .join(&main_id);
    let files_before = files_under(&tl_dir)?.len();
    let end = lsn(&Value::from(psql(
        port,
        "CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 40000) g; \
         SELECT pg_current_wal_lsn()",
    )?))?;
    wait_for("the burst ingested", Duration::from_secs(60), || {
        let st = s.json(&["status"])?;
        let b = st["branches"]
            .as_array()
            .and_then(|b| b.iter().find(|x| x["branch"] == "main").cloned())
            .context("main in status")?;
        Ok((lsn(&b["last_record_end"])? >= end).then_some(()))
    })?;
    let new_files = files_under(&tl_dir)?.len().saturating_sub(files_before);
    ensure!(
        new_files >= 5,
        "{new_files} new files in {} after ~10 MB of WAL at freeze_mib = 1",
        tl_dir.display()
    );

    // WAL rows: the compute's segment files decoded as JSON.
    let wal_dir = s.dir.join("computes/main/data/pg_wal");
    let dump = s.json(&[
        "waldump",
        "-p",
        wal_dir.to_str().context("path")?,
        "-s",
        &start,
        "-n",
        "20",
    ])?;
    let recs = dump.as_array().context("waldump --json is an array")?;
    ensure!(
        recs.len() == 20,
        "waldump -n 20 --json: {} rows",
        recs.len()
    );
    ensure!(
        recs.iter()
            .all(|r| r["rmgr"].is_string() && lsn(&r["lsn"]).is_ok())
            && recs
                .windows(2)
                .all(|w| lsn(&w[0]["end_lsn"]).ok() <= lsn(&w[1]["lsn"]).ok()),
        "waldump rows: {dump}"
    );
    let stats = s.json(&[
        "waldump",
        "-p",
        wal_dir.to_str().context("path")?,
        "-s",
        &start,
        "-z",
        "-n",
        "50",
    ])?;
    ensure!(stats["records"] == 50, "waldump -z --json: {stats}");

    // Stopped, started again: the configuration is what tenant.toml says.
    s.run(&["stop"])?;
    s.run(&["start"])?;
    ensure!(s.run(&["tenant", "config", "get", "pitr_interval"])? == "1s");
    let c = s.json(&["compute", "start", "main"])?;
    let port = u16::try_from(c["port"].as_u64().context("port")?)?;
    psql(port, "INSERT INTO t VALUES (1)")?;
    // The uploads catch up, then the cluster stops: check reads the store alone.
    wait_for(
        "the remote LSN to reach the ingested one",
        Duration::from_secs(60),
        || {
            let st = s.json(&["status"])?;
            let b = st["branches"]
                .as_array()
                .and_then(|b| b.iter().find(|x| x["branch"] == "main").cloned())
                .context("main in status")?;
            let caught_up = b["remote_consistent_lsn"] == b["disk_consistent_lsn"]
                && b["disk_consistent_lsn"] == b["last_record_end"];
            Ok(caught_up.then_some(()))
        },
    )?;
    s.run(&["stop"])?;

    let (code, healthy) = check(s)?;
    ensure!(
        code == 0 && healthy["problems"] == 0,
        "check of a healthy store (exit {code}): {healthy}"
    );
    let row = healthy["timelines"]
        .as_array()
        .and_then(|t| t.iter().find(|r| r["branch"] == "main").cloned())
        .context("check lists main")?;
    let retention = &row["retention"];
    ensure!(
        row["layers"].as_u64() > Some(0)
            && retention["pitr_interval"] == "1s"
            && lsn(&retention["oldest_readable_lsn"])? >= lsn(&retention["start_lsn"])?
            && retention["leases"].is_array(),
        "check's retention report: {row}"
    );

    // Damage in the store, each found: a flipped byte, a deleted layer, a stray object.
    let layers_dir = s
        .dir
        .join("remote/t")
        .join(&tenant_id)
        .join(&main_id)
        .join("l");
    let mut layers = files_under(&layers_dir)?;
    layers.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    ensure!(layers.len() >= 2, "too few layers to damage: {layers:?}");
    let flipped = layers.pop().context("a layer")?;
    let mut bytes = std::fs::read(&flipped)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&flipped, &bytes)?;
    let (code, v) = check(s)?;
    let row = v["timelines"][0].clone();
    ensure!(
        code == 3
            && row["checksum_errors"]
                .as_array()
                .is_some_and(|e| e.len() == 1),
        "a flipped byte is not found (exit {code}): {v}"
    );
    bytes[mid] ^= 0x40;
    std::fs::write(&flipped, &bytes)?;
    let deleted = layers.pop().context("another layer")?;
    std::fs::remove_file(&deleted)?;
    std::fs::write(layers_dir.join("stray"), b"no one's")?;
    let (code, v) = check(s)?;
    let row = v["timelines"][0].clone();
    let names = |field: &str| -> Vec<String> {
        row[field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let key = deleted
        .file_name()
        .and_then(|n| n.to_str())
        .context("key")?;
    ensure!(
        code == 3
            && names("missing").iter().any(|m| m.contains(key))
            && names("orphaned").iter().any(|m| m.ends_with("/l/stray"))
            && names("checksum_errors").is_empty(),
        "a deleted layer or a stray object is not found (exit {code}): {v}"
    );
    Ok(())
}

/// `waldump --json` and `verify-redo --json` on a vanilla Postgres's WAL: one row per record
/// that Postgres's own `pg_waldump` prints, at the same LSNs, and a verify-redo report whose
/// counts say every logged page image and the final data directory matched.
#[test]
fn waldump_and_verify_redo_print_json_rows() -> Result<()> {
    let run = strata_tests::redo_run::redo_run(
        true,
        &[],
        &[
            "CREATE TABLE t (id int PRIMARY KEY, v text)",
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 2000) g",
            "UPDATE t SET v = v || '!' WHERE id % 3 = 0",
            "DELETE FROM t WHERE id % 7 = 0",
        ],
    )?;
    let scratch = strata_tests::cluster::scratch_dir("strata-ops-json-")?;
    let s = StrataCli::new(&scratch.path().join("unused"))?;
    let wal = run.pg.wal_dir();
    let wal = wal.to_str().context("WAL path")?;
    let start = run.start.to_string();

    // Postgres's pg_waldump: one "rmgr: … lsn: X, prev …" line per record.
    let pg = Command::new(strata_tests::pg::pg_bin_dir().join("pg_waldump"))
        .args(["-p", wal, "-s", &start])
        .output()?;
    let text = String::from_utf8_lossy(&pg.stdout);
    let pg_lsns: Vec<Lsn> = text
        .lines()
        .filter_map(|l| l.split("lsn: ").nth(1)?.split(',').next()?.parse().ok())
        .collect();
    ensure!(
        pg_lsns.len() > 100,
        "pg_waldump printed {} records",
        pg_lsns.len()
    );
    let dump = s.json(&["waldump", "-p", wal, "-s", &start])?;
    let ours: Vec<Lsn> = dump
        .as_array()
        .context("waldump --json is an array")?
        .iter()
        .map(|r| lsn(&r["lsn"]))
        .collect::<Result<_>>()?;
    ensure!(
        ours == pg_lsns,
        "waldump --json has {} records, pg_waldump {}; first difference at {:?}",
        ours.len(),
        pg_lsns.len(),
        ours.iter().zip(&pg_lsns).position(|(a, b)| a != b)
    );
    let heap = dump
        .as_array()
        .context("rows")?
        .iter()
        .filter(|r| r["rmgr"] == "Heap" && r["blocks"][0]["blk"].is_u64())
        .count();
    ensure!(heap > 100, "{heap} Heap rows with a block reference");

    let base = run.base.to_str().context("base")?;
    let final_dir = run.pg.data_dir().to_str().context("data dir")?;
    let (code, out, err) = run_with_code(
        &s,
        &[
            "--json",
            "verify-redo",
            "--base",
            base,
            "--wal",
            wal,
            "--start",
            &start,
            "--final",
            final_dir,
        ],
    )?;
    let rep: Value = serde_json::from_str(out.trim())
        .with_context(|| format!("verify-redo printed no JSON (exit {code}): {out}{err}"))?;
    ensure!(
        code == 0
            && rep["ok"] == true
            && rep["verified"].as_u64() > Some(100)
            && rep["mismatched"] == 0
            && rep["final"]["differing"] == 0
            && rep["per_rmgr"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x["rmgr"] == "Heap")),
        "verify-redo --json (exit {code}): {rep}"
    );
    Ok(())
}
