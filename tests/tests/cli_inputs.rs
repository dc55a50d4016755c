//! What users type, with the real `strata` binary and a real cluster (issue 17, items 6, 8, 10):
//! - names that would write into or delete other directories (`''`, `a/b`, `..`, spaces) are
//!   refused where they enter, `compute stop ''` deletes nothing, and a name stored before the
//!   rule existed is still usable;
//! - a relative cluster directory (the default `./.strata`, or `--dir rel/dir`) works for the
//!   whole life of a cluster, although Postgres programs run with cwd `/`;
//! - commands that need the safekeepers or the pageserver fail within their deadline, naming
//!   what they waited for, when those are stopped (SIGSTOP), and work again after SIGCONT.
//!
//! Every `strata` run here has a deadline: a command that hangs fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{on_new_cluster, psql, scratch_dir, StrataCli};
use strata_tests::waldump::strata_bin;

/// Longest any command here may take when it works (a compute start with a basebackup).
const WORKS_WITHIN: Duration = Duration::from_secs(60);

/// One `strata` run: where, with which arguments and environment.
struct Run<'a> {
    cwd: &'a Path,
    args: Vec<String>,
    env: Vec<(&'a str, String)>,
}

impl<'a> Run<'a> {
    fn new(cwd: &'a Path, args: &[&str]) -> Run<'a> {
        Run {
            cwd,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    fn env(mut self, k: &'a str, v: &str) -> Self {
        self.env.push((k, v.to_string()));
        self
    }

    /// Runs the command; kills it and fails if it is not done within `limit`.
    fn output(&self, limit: Duration) -> Result<(Output, Duration)> {
        let mut cmd = Command::new(strata_bin()?);
        cmd.args(&self.args)
            .current_dir(self.cwd)
            .env_remove("STRATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("starting strata")?;
        // Outputs are small: read them after the exit (a pipe holds 64 KiB).
        loop {
            if child.try_wait()?.is_some() {
                return Ok((child.wait_with_output()?, t0.elapsed()));
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                bail!(
                    "strata {} still running after {limit:?} (killed); it printed:\n{}{}",
                    self.args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the command expecting success within [`WORKS_WITHIN`]; its stdout.
    fn ok(&self) -> Result<String> {
        let (out, _) = self.output(WORKS_WITHIN)?;
        ensure!(
            out.status.success(),
            "strata {} failed ({}):\n{}{}",
            self.args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs the command expecting it to fail within `limit`, without a panic, with an error
    /// line holding every one of `needles`; the error line and how long it took.
    fn refused(&self, limit: Duration, needles: &[&str]) -> Result<(String, Duration)> {
        let (out, took) = self.output(limit)?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let what = format!("strata {}", self.args.join(" "));
        ensure!(
            !out.status.success(),
            "{what} succeeded but should have failed:\n{}{stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        ensure!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("strata: error:") || l.starts_with("error:"))
            .with_context(|| format!("{what}: no error line:\n{stderr}"))?
            .to_string();
        for n in needles {
            ensure!(
                line.contains(n),
                "{what}: the error does not mention {n:?}: {line}"
            );
        }
        Ok((line, took))
    }
}

/// A run of `strata --dir <s.dir> args…` from `/`.
fn at<'a>(s: &StrataCli, args: &[&str]) -> Run<'a> {
    let mut all = vec!["--dir".to_string(), s.dir.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Run {
        cwd: Path::new("/"),
        args: all,
        env: Vec::new(),
    }
}

fn port_of(json: &str) -> Result<u16> {
    let v: serde_json::Value = serde_json::from_str(json).context("compute start --json")?;
    let p = v["port"].as_u64().context("no port")?;
    u16::try_from(p).context("port")
}

// ---- item 8: names ---------------------------------------------------------------------------

#[test]
fn names_that_would_break_or_delete_directories_are_refused() -> Result<()> {
    on_new_cluster("strata-names-", |s| {
        s.run(&["start"])?;
        // Before any work: clap refuses the name.
        let short = Duration::from_secs(10);
        for bad in ["", "a b", "a/b", "..", "-x", &"t".repeat(64)] {
            at(s, &["tenant", "create", "--", bad]).refused(short, &["not a valid tenant name"])?;
        }
        s.run(&["tenant", "create", "shop"])?;
        for bad in ["", ".", "a b", "x/y", "../up"] {
            at(s, &["branch", "create", "--", bad]).refused(short, &["not a valid branch name"])?;
        }
        let main = at(s, &["--json", "compute", "start", "main"]).ok()?;
        let port = port_of(&main)?;
        psql(port, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)")?;
        for bad in ["", ".", "a/b", "x y"] {
            at(
                s,
                &["compute", "start", "main", "--read-only", "--name", bad],
            )
            .refused(WORKS_WITHIN, &["not a valid compute name"])?;
        }
        // `compute stop ''` named the computes directory itself and removed every compute.
        for bad in ["", ".", "..", "main/data"] {
            at(s, &["compute", "stop", bad]).refused(short, &["not a valid compute name"])?;
        }
        ensure!(
            s.dir.join("computes/main/data/PG_VERSION").exists(),
            "compute main's data directory is gone"
        );
        ensure!(
            psql(port, "SELECT count(*) FROM t")? == "1",
            "compute main answers"
        );
        ensure!(
            !s.dir.join("computes/compute.toml").exists() && !s.dir.join("computes/data").exists(),
            "something was written into computes/ itself"
        );

        // A branch stored before the rule existed: still usable, its compute named explicitly.
        at(s, &["branch", "create", "old"]).ok()?;
        let names_file = s.dir.join("names.toml");
        let text = std::fs::read_to_string(&names_file)?;
        ensure!(text.contains("old = "), "names.toml: {text}");
        std::fs::write(&names_file, text.replace("old = ", "\"old name\" = "))?;
        at(s, &["compute", "start", "old name", "--read-only"])
            .refused(WORKS_WITHIN, &["not a valid compute name", "--name"])?;
        let ro = at(
            s,
            &[
                "--json",
                "compute",
                "start",
                "old name",
                "--read-only",
                "--name",
                "old",
            ],
        )
        .ok()?;
        ensure!(
            psql(port_of(&ro)?, "SELECT count(*) FROM t")? == "1",
            "the read-only compute of the branch \"old name\""
        );
        at(s, &["compute", "stop", "old"]).ok()?;
        let rows = at(
            s,
            &[
                "query",
                "-t",
                "--branch",
                "old name",
                "--at",
                "@9999999999",
                "SELECT count(*) FROM t",
            ],
        );
        // A time after the last commit reads the latest state of the branch.
        ensure!(rows.ok()? == "1", "time travel on the branch \"old name\"");
        Ok(())
    })
}

// ---- item 10: a relative cluster directory ------------------------------------------------------

/// The whole life of a cluster whose directory is relative to `cwd`: `dir_args` is `[]` (the
/// default `./.strata`) or `["--dir", "rel/dir"]`.
fn cluster_in_relative_dir(cwd: &Path, dir_args: &[&str], dir: &Path) -> Result<()> {
    strata_tests::cluster::register_cluster(dir);
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = dir_args.to_vec();
        all.extend_from_slice(args);
        Run::new(cwd, &all).ok()
    };
    let scenario = || -> Result<()> {
        run(&["init"])?;
        run(&["start"])?;
        run(&["tenant", "create"])?;
        let port = port_of(&run(&["--json", "compute", "start", "main"])?)?;
        psql(
            port,
            "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 10)",
        )?;
        let lsn = psql(port, "SELECT pg_current_wal_insert_lsn()")?;
        ensure!(
            run(&["query", "-t", "--at", &lsn, "SELECT sum(x) FROM t"])? == "55",
            "time travel at {lsn}"
        );
        run(&["stop"])?;
        Ok(())
    };
    let result = scenario();
    if result.is_err() {
        let _ = run(&["stop"]);
    }
    result?;
    ensure!(
        dir.join("strata.toml").exists(),
        "no cluster in {}",
        dir.display()
    );
    ensure!(
        !Path::new("/.strata").exists() && !Path::new("/rel").exists(),
        "something was created relative to / instead of {}",
        cwd.display()
    );
    Ok(())
}

#[test]
fn the_default_relative_cluster_dir_works() -> Result<()> {
    let tmp = scratch_dir("strata-reldefault-")?;
    cluster_in_relative_dir(tmp.path(), &[], &tmp.path().join(".strata"))
}

#[test]
fn a_relative_dir_option_works() -> Result<()> {
    let tmp = scratch_dir("strata-reldir-")?;
    cluster_in_relative_dir(
        tmp.path(),
        &["--dir", "rel/dir"],
        &tmp.path().join("rel/dir"),
    )
}

// ---- item 6: waits with deadlines and reasons -----------------------------------------------------

/// Processes stopped with SIGSTOP, continued when dropped (a failed test leaves none stopped).
struct Stopped(Vec<i32>);

impl Stopped {
    fn new(dir: &Path, services: &[&str]) -> Result<Stopped> {
        let mut s = Stopped(Vec::new());
        for name in services {
            let pid = pid_of(dir, name)?;
            signal(pid, libc::SIGSTOP)?;
            s.0.push(pid);
        }
        Ok(s)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = signal(*pid, libc::SIGCONT);
        }
    }
}

fn pid_of(dir: &Path, service: &str) -> Result<i32> {
    let p: PathBuf = dir.join("run").join(format!("{service}.pid"));
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: {text:?}", p.display()))
}

fn signal(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: kill has no memory preconditions; the pid is one of this cluster's services.
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn commands_fail_in_time_saying_what_they_wait_for() -> Result<()> {
    on_new_cluster("strata-waits-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create"])?;
        let port = port_of(&at(s, &["--json", "compute", "start", "main"]).ok()?)?;
        psql(port, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)")?;
        let soon = Duration::from_secs(30);

        // No safekeeper answers: what is committed is unknown; nothing is created.
        {
            let _stopped = Stopped::new(&s.dir, &["safekeeper-1", "safekeeper-2", "safekeeper-3"])?;
            for args in [
                vec!["branch", "create", "x"],
                vec!["query", "--at", "@9999999999", "SELECT 1"],
                vec!["compute", "start", "main", "--read-only", "--name", "ro"],
            ] {
                let (line, took) = at(s, &args).refused(soon, &["no safekeeper reachable"])?;
                eprintln!("strata {}: failed after {took:?}: {line}", args.join(" "));
            }
        }
        // The pageserver does not answer: the call's deadline names it.
        {
            let _stopped = Stopped::new(&s.dir, &["pageserver"])?;
            let (line, took) = at(s, &["branch", "create", "y"])
                .refused(Duration::from_secs(50), &["pageserver did not answer"])?;
            eprintln!("strata branch create y: failed after {took:?}: {line}");
        }
        // The deadline's override is checked, not ignored.
        at(s, &["branch", "create", "z"])
            .env("STRATA_WAIT_SECS", "soon")
            .refused(soon, &["STRATA_WAIT_SECS", "not a number of seconds"])?;
        // Everything continues: the same commands work again.
        psql(port, "INSERT INTO t VALUES (2)")?;
        at(s, &["branch", "create", "x"]).ok()?;
        let rows = at(
            s,
            &[
                "query",
                "-t",
                "--at",
                "@9999999999",
                "SELECT count(*) FROM t",
            ],
        )
        .ok()?;
        ensure!(
            rows == "2",
            "after SIGCONT, time travel at the latest state: {rows}"
        );
        let names: Vec<String> = std::fs::read_to_string(s.dir.join("names.toml"))?
            .lines()
            .map(str::to_string)
            .collect();
        ensure!(
            !names.iter().any(|l| l.starts_with("y ")),
            "branch y was created while the pageserver was stopped: {names:?}"
        );
        Ok(())
    })
}

// ---- issue 21, item 5: the audit's fixes on a cluster that is not started -------------------

/// On an initialized cluster whose services are not running: `tenant import` fails at once
/// naming the pageserver (before any pg_basebackup of the source, which here does not even
/// exist), an error says each cause once, and `basebackup` takes `--out-dir` while `--dir`
/// stays the cluster directory.
#[test]
fn the_audits_fixes_on_a_stopped_cluster() -> Result<()> {
    let tmp = scratch_dir("strata-audit-")?;
    let s = StrataCli::new(&tmp.path().join("cluster"))?;
    s.run(&["init"])?;
    let (line, took) = at(
        &s,
        &[
            "tenant",
            "import",
            "--from",
            "host=127.0.0.1 port=1 user=postgres dbname=postgres",
            "--name",
            "shop",
        ],
    )
    .refused(Duration::from_secs(20), &["pageserver", "strata start"])?;
    ensure!(
        took < Duration::from_secs(10) && !line.contains("port=1") && !line.contains("source"),
        "the import looked at the source before the cluster ({took:?}): {line}"
    );
    let (line, _) = at(&s, &["gc"]).refused(Duration::from_secs(20), &["no tenant"])?;
    eprintln!("gc without tenants: {line}");
    s.run(&["tenant", "list"])?;
    // The pageserver is down: connecting fails; the error says each cause once.
    let mut names = std::fs::read_to_string(s.dir.join("names.toml")).unwrap_or_default();
    names.push_str(
        "default_tenant = \"t\"\n[tenants]\nt = \"5b0bbed5b0bbed5b0bbed5b0bbed5b01\"\n\
         [branches.t]\nmain = \"5b0bbed5b0bbed5b0bbed5b0bbed5b02\"\n",
    );
    std::fs::write(s.dir.join("names.toml"), names)?;
    let (line, _) = at(&s, &["gc"]).refused(Duration::from_secs(30), &["pageserver"])?;
    let parts: Vec<&str> = line.split(": ").collect();
    for w in parts.windows(2) {
        ensure!(w[0] != w[1], "{:?} said twice: {line}", w[0]);
    }
    // `--out-dir` is basebackup's; `--dir` the cluster's (here: a timeline that is missing).
    let out = tmp.path().join("bb");
    let missing = tmp.path().join("no-timeline");
    let (line, _) = at(
        &s,
        &[
            "basebackup",
            "--timeline-dir",
            &missing.display().to_string(),
            "--out-dir",
            &out.display().to_string(),
        ],
    )
    .refused(Duration::from_secs(20), &["no-timeline"])?;
    ensure!(!line.contains("--dir"), "{line}");
    Ok(())
}
