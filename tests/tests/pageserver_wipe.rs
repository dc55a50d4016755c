//! A pageserver that loses its disk comes back from the object store. A Strata cluster (real
//! binaries) with its object store on s3s-fs (a real S3 server on loopback, real 32-hex ids)
//! runs a workload through a compute; once the pageserver's `remote_consistent_lsn` reaches
//! the committed LSN, the pageserver is SIGKILLed and its data directory wiped. `strata start`
//! starts it again: it restores the tenant config, the timeline and its safekeepers from the
//! object store without downloading a layer (they are downloaded on demand, at the first read
//! that visits each), and resumes ingest where the manifest ends. A new compute's `pg_dump` must
//! equal the one taken before the wipe, and writes made after the restart must arrive too.
//!
//! s3s-fs must be installed (`STRATA_SETUP_S3=1 scripts/setup.sh`); without it the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{pg_dump, pgbench, psql, scratch_dir, wait_for};
use strata_tests::procs::S3Server;
use strata_tests::waldump::strata_bin;
use walproto::Lsn;

const BUCKET: &str = "strata";

struct Strata {
    bin: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Strata {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()?;
        if !out.status.success() {
            bail!(
                "strata {} failed ({}): {}{}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail("pageserver", 20)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let s = self.run(&all)?;
        serde_json::from_str(&s).with_context(|| format!("strata printed no JSON: {s}"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    fn log_tail(&self, name: &str, n: usize) -> String {
        let text = self.log(name);
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {name}.log ---\n{}",
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }

    /// The `main` branch's entry of `strata status --json`.
    fn branch_status(&self) -> Result<serde_json::Value> {
        let st = self.json(&["status"])?;
        st["branches"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["branch"] == "main"))
            .cloned()
            .with_context(|| format!("no main branch in strata status: {st}"))
    }

    fn pageserver_pid(&self) -> Result<i64> {
        let st = self.json(&["status"])?;
        st["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["service"] == "pageserver"))
            .and_then(|s| s["pid"].as_i64())
            .with_context(|| format!("no running pageserver in strata status: {st}"))
    }

    /// Waits until the pageserver's `remote_consistent_lsn` of `main` reaches `lsn`.
    fn wait_remote(&self, lsn: Lsn) -> Result<Lsn> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let b = self.branch_status()?;
            let remote: Lsn = b["remote_consistent_lsn"]
                .as_str()
                .context("remote_consistent_lsn")?
                .parse()
                .map_err(|_| anyhow::anyhow!("bad LSN in {b}"))?;
            if remote >= lsn {
                return Ok(remote);
            }
            if Instant::now() > deadline {
                bail!(
                    "remote_consistent_lsn stayed at {remote}, below the committed {lsn}: {b}\n{}",
                    self.log_tail("pageserver", 20)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn compute_port(s: &Strata, name: &str, read_only: bool) -> Result<u16> {
    let mut args = vec!["compute", "start", "main", "--name", name];
    if read_only {
        args.push("--read-only");
    }
    let c = s.json(&args)?;
    Ok(c["port"].as_u64().context("port")? as u16)
}

/// Every object key under the bucket (s3s-fs keeps objects as files under `<root>/<bucket>`).
fn object_keys(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if let Ok(rel) = p.strip_prefix(base) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut v = Vec::new();
    walk(&root.join(BUCKET), &root.join(BUCKET), &mut v);
    v
}

#[test]
fn wiped_pageserver_comes_back_from_s3() -> Result<()> {
    let tmp = scratch_dir("strata-wipe-")?;
    let s3_root = tmp.path().join("s3");
    let server = S3Server::start(&s3_root, BUCKET)?;
    let s = Strata {
        bin: strata_bin()?,
        dir: tmp.path().join("cluster"),
        env: server.env(),
    };
    strata_tests::cluster::register_cluster(&s.dir);
    s.run(&[
        "init",
        "--remote-storage",
        &format!("s3://{BUCKET}/cluster1"),
    ])?;
    let result = scenario(&s, &s3_root);
    let _ = s.run(&["stop"]);
    drop(server);
    if result.is_err() && std::env::var_os("STRATA_KEEP_TMP").is_some() {
        eprintln!("STRATA_KEEP_TMP: keeping {}", tmp.keep().display());
    }
    result
}

fn scenario(s: &Strata, s3_root: &Path) -> Result<()> {
    s.run(&["start"])?;
    s.run(&["tenant", "create", "wiped"])?;
    // The writer runs throughout: the pageserver dies and comes back under it.
    let port = compute_port(s, "main", false)?;
    pgbench(port, &["-i", "-q", "-s", "1"])?;
    pgbench(port, &["-c", "2", "-j", "2", "-t", "300"])?;
    psql(
        port,
        "CREATE TABLE notes(id serial PRIMARY KEY, body text);
         INSERT INTO notes(body) SELECT repeat('n', g % 300) FROM generate_series(1, 3000) g;
         CREATE INDEX ON notes(body);",
    )?;
    let committed: Lsn = psql(port, "SELECT pg_current_wal_flush_lsn()")?
        .parse()
        .map_err(|_| anyhow::anyhow!("bad LSN from Postgres"))?;
    // Dumps are compared between read-only computes on both sides: a standby shows a
    // sequence as WAL-logged (ahead of the writer's value).
    let ro = compute_port(s, "before", true)?;
    let before = pg_dump(ro)?;
    s.run(&["compute", "stop", "before"])?;
    ensure!(before.len() > 1000, "the dump is suspiciously small");
    let t0 = Instant::now();
    let remote = s.wait_remote(committed)?;
    eprintln!(
        "remote_consistent_lsn {remote} >= committed {committed} after {:?}",
        t0.elapsed()
    );

    // The pageserver's keys (under `<prefix>/t/`; the safekeepers' WAL is elsewhere) are
    // short enough for s3s-fs.
    let keys: Vec<String> = object_keys(s3_root)
        .into_iter()
        .filter(|k| k.starts_with("cluster1/t/"))
        .collect();
    let layers = keys.iter().filter(|k| k.contains("/l/")).count();
    ensure!(layers > 0, "no layer objects in the store: {keys:?}");
    let longest = keys.iter().map(String::len).max().unwrap_or(0);
    eprintln!(
        "{} objects, {layers} layers, longest key {longest} bytes",
        keys.len()
    );
    ensure!(longest <= 128, "a key of {longest} bytes: {keys:?}");
    // `strata check` reads the same store over S3: every manifest's layers there, each
    // checksum right. The writer runs on: an upload or a compaction caught halfway shows as an
    // orphaned or missing layer, so a clean check within a minute is what is asked.
    let checked = wait_for(
        "a clean `strata check` over S3",
        Duration::from_secs(60),
        || {
            let v = s.json(&["check"])?;
            Ok((v["problems"] == 0).then_some(v))
        },
    )?;
    ensure!(
        checked["timelines"][0]["layers"].as_u64() > Some(0),
        "check over S3 saw no layers: {checked}"
    );

    // Wipe the pageserver's disk while it is frozen, then SIGKILL it: the cluster's supervisor
    // restarts it on the empty directory.
    let pid = s.pageserver_pid()?;
    let signal = |sig: &str| -> Result<()> {
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()?;
        ensure!(st.success(), "kill {sig} {pid}");
        Ok(())
    };
    // The restarted pageserver's restore, then its readiness, in its log.
    let count = |what: &str| s.log("pageserver").matches(what).count();
    let restored = "restored from remote storage at start";
    let listening = "pageserver listening on";
    let (restores_before, listens_before) = (count(restored), count(listening));
    signal("-STOP")?;
    let data = s.dir.join("pageserver");
    std::fs::remove_dir_all(&data)?;
    std::fs::create_dir_all(&data)?;
    signal("-KILL")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie still has /proc/<pid>, but no cmdline.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "pageserver {pid} survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(restored) == restores_before || count(listening) == listens_before {
        ensure!(
            Instant::now() < deadline,
            "the supervisor's restart of the pageserver did not restore and listen within 60 s:\n{}",
            s.log_tail("pageserver", 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.run(&["start"])?;
    let log = s.log("pageserver");
    ensure!(
        log.contains("restored from remote storage at start"),
        "the pageserver did not report a restore:\n{}",
        s.log_tail("pageserver", 30)
    );
    ensure!(
        data.join("tenants").read_dir()?.count() == 1,
        "the tenant directory was not restored"
    );
    // Nothing was downloaded at start: the layers come on demand.
    let restore_line = log
        .lines()
        .find(|l| l.contains("restored from remote storage at start"))
        .unwrap_or_default();
    ensure!(
        restore_line.contains("layers_downloaded=0")
            && !restore_line.contains("layers_on_demand=0"),
        "the start downloaded layers, or left none on demand: {restore_line}"
    );
    let on_demand = |log: &str| log.matches("layer downloaded on demand").count();
    let at_start = on_demand(&s.log("pageserver"));

    // The same database, through a new compute on the restored pageserver.
    let ro = compute_port(s, "after", true)?;
    let after = pg_dump(ro)?;
    s.run(&["compute", "stop", "after"])?;
    if after != before {
        let diff: Vec<String> = before
            .lines()
            .zip(after.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("before: {a}\nafter:  {b}"))
            .collect();
        bail!(
            "pg_dump after the wipe differs ({} vs {} bytes):\n{}",
            before.len(),
            after.len(),
            diff.join("\n")
        );
    }
    eprintln!("identical pg_dump after the wipe ({} bytes)", after.len());
    let downloaded = on_demand(&s.log("pageserver"));
    eprintln!(
        "layers downloaded on demand: {at_start} once loaded, {downloaded} after the dump, of {layers} in the store"
    );
    ensure!(
        downloaded > 0,
        "the dump read nothing from the object store: {}",
        s.log_tail("pageserver", 20)
    );

    // Writes after the restart (by the writer that ran across it) reach the restored
    // pageserver: a fresh compute sees them.
    psql(
        port,
        "INSERT INTO notes(body) SELECT 'after ' || g FROM generate_series(1, 500) g",
    )?;
    pgbench(port, &["-c", "2", "-t", "100"])?;
    let expect = psql(
        port,
        "SELECT count(*), sum(abalance) FROM pgbench_accounts, (SELECT count(*) FROM notes) n \
         GROUP BY n.count",
    )?;
    let notes = psql(port, "SELECT count(*) FROM notes")?;
    ensure!(notes == "3500", "notes: {notes}");
    let committed: Lsn = psql(port, "SELECT pg_current_wal_flush_lsn()")?
        .parse()
        .map_err(|_| anyhow::anyhow!("bad LSN from Postgres"))?;
    let port = compute_port(s, "check", true)?;
    let got = psql(
        port,
        "SELECT count(*), sum(abalance) FROM pgbench_accounts, (SELECT count(*) FROM notes) n \
         GROUP BY n.count",
    )?;
    ensure!(got == expect, "after the restart: {got}, expected {expect}");
    ensure!(psql(port, "SELECT count(*) FROM notes")? == "3500");
    s.run(&["compute", "stop", "check"])?;
    // And they become durable in the object store again.
    let remote = s.wait_remote(committed)?;
    eprintln!("after the restart: remote_consistent_lsn {remote} >= committed {committed}");
    Ok(())
}
