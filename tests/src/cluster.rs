//! Driving a Strata local cluster from tests: the `strata` command (`--dir` a scratch
//! directory, `--json` results) and the Postgres client programs against its computes over
//! loopback TCP, logging in with the cluster's compute password (`<dir>/auth/pgpass`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::pg::pg_bin_dir;
pub use crate::procs::wait_for;
use crate::waldump::strata_bin;

/// The `strata` binary pointed at one cluster directory.
pub struct StrataCli {
    pub bin: PathBuf,
    pub dir: PathBuf,
}

impl StrataCli {
    /// The built `strata` binary (see [`strata_bin`]) with `dir` as its cluster directory.
    pub fn new(dir: &Path) -> Result<StrataCli> {
        register_cluster(dir);
        Ok(StrataCli {
            bin: strata_bin()?,
            dir: dir.to_path_buf(),
        })
    }

    /// Runs `strata --dir DIR args…`; its stdout, trimmed, or an error with both outputs.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "strata {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `strata --json args…` and parses what it printed.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let s = self.run(&all)?;
        serde_json::from_str(&s).with_context(|| format!("strata printed no JSON: {s}"))
    }

    /// Runs `strata --dir DIR args…`, killed if it takes longer than `within`:
    /// (exit code, stdout, stderr), whether it succeeded or not.
    pub fn run_within(&self, args: &[&str], within: Duration) -> Result<(i32, String, String)> {
        let mut child = Command::new(&self.bin)
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting strata")?;
        let t0 = Instant::now();
        while child.try_wait()?.is_none() {
            if t0.elapsed() > within {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                bail!(
                    "strata {args:?} still running after {within:?}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The cluster's admin token (`<dir>/auth/admin.token`, written by `strata init`).
    pub fn admin_token(&self) -> Result<String> {
        let path = self.dir.join("auth/admin.token");
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the admin token {}", path.display()))?;
        Ok(token.trim().to_string())
    }

    /// `strata args…` that must fail (without a panic) within `within`: its stderr.
    pub fn refused_within(&self, args: &[&str], within: Duration) -> Result<String> {
        let (code, out, err) = self.run_within(args, within)?;
        ensure!(code != 0, "strata {args:?} succeeded: {out}");
        ensure!(!err.contains("panicked"), "strata {args:?} panicked: {err}");
        Ok(err)
    }
}

/// The cluster directories this test process made, so that a client given only a compute's
/// port finds the cluster's password file.
static CLUSTER_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Makes `dir`'s computes reachable by [`psql`], [`pgbench`], [`pg_dump`] and
/// [`compute_auth_env`] (done by [`StrataCli::new`]; call it for a cluster driven otherwise).
pub fn register_cluster(dir: &Path) {
    let mut dirs = CLUSTER_DIRS.lock().unwrap_or_else(|p| p.into_inner());
    if !dirs.iter().any(|d| d == dir) {
        dirs.push(dir.to_path_buf());
    }
}

/// The value of `key = N` on a line of a TOML file's text.
fn toml_number(text: &str, key: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

/// Whether cluster `dir` has a compute on `port` (its record says so), or (`by_range`) owns
/// the port range `port` lies in.
fn cluster_owns_port(dir: &Path, port: u16, by_range: bool) -> bool {
    let port = u32::from(port);
    if by_range {
        let cfg = std::fs::read_to_string(dir.join("strata.toml")).unwrap_or_default();
        return toml_number(&cfg, "compute_base_port")
            .is_some_and(|base| (base..base.saturating_add(100)).contains(&port));
    }
    let Ok(computes) = std::fs::read_dir(dir.join("computes")) else {
        return false;
    };
    computes.flatten().any(|c| {
        let rec = std::fs::read_to_string(c.path().join("compute.toml")).unwrap_or_default();
        toml_number(&rec, "port") == Some(port)
    })
}

/// The password file of the registered cluster whose compute listens on `port`; `None` if no
/// registered cluster has one there (a cluster without auth, or a plain Postgres).
pub fn compute_pgpass(port: u16) -> Option<PathBuf> {
    let dirs = CLUSTER_DIRS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // Newest first: a port is reused by later clusters.
    let owner = [false, true].into_iter().find_map(|by_range| {
        dirs.iter()
            .rev()
            .find(|d| cluster_owns_port(d, port, by_range))
    })?;
    Some(owner.join("auth").join("pgpass")).filter(|p| p.exists())
}

/// The compute password of the registered cluster whose compute listens on `port` (from its
/// pgpass file), for clients that are not libpq.
pub fn compute_password(port: u16) -> Option<String> {
    let text = std::fs::read_to_string(compute_pgpass(port)?).ok()?;
    text.lines().next()?.rsplit(':').next().map(str::to_string)
}

/// The environment a libpq client needs to log into the compute on `port`: `PGPASSFILE`, or
/// nothing for a compute that trusts its clients. `cmd.envs(compute_auth_env(port))`.
pub fn compute_auth_env(port: u16) -> Vec<(&'static str, PathBuf)> {
    compute_pgpass(port)
        .map(|p| vec![("PGPASSFILE", p)])
        .unwrap_or_default()
}

/// A scratch directory under /tmp that the Postgres OS user can traverse (computes' data
/// directories live below it).
pub fn scratch_dir(prefix: &str) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp")?;
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(t)
}

/// Runs `scenario` on a new local cluster (`strata init` in a scratch directory named with
/// `prefix`), then `strata stop` whatever the outcome. With `STRATA_KEEP_TMP` set, a failed
/// run's directory is kept and named.
pub fn on_new_cluster(prefix: &str, scenario: impl FnOnce(&StrataCli) -> Result<()>) -> Result<()> {
    on_new_cluster_init(prefix, &[], scenario)
}

/// [`on_new_cluster`] with `strata init init_args…` (e.g. `--remote-storage s3://…`).
pub fn on_new_cluster_init(
    prefix: &str,
    init_args: &[&str],
    scenario: impl FnOnce(&StrataCli) -> Result<()>,
) -> Result<()> {
    let tmp = scratch_dir(prefix)?;
    let s = StrataCli::new(&tmp.path().join("cluster"))?;
    let mut init = vec!["init"];
    init.extend_from_slice(init_args);
    s.run(&init)?;
    let result = scenario(&s);
    let _ = s.run(&["stop"]);
    if result.is_err() && std::env::var_os("STRATA_KEEP_TMP").is_some() {
        eprintln!("STRATA_KEEP_TMP: keeping {}", tmp.keep().display());
    }
    result
}

/// One SQL command through psql over TCP to a compute; unaligned output, trimmed.
pub fn psql(port: u16, sql: &str) -> Result<String> {
    psql_db(port, "postgres", sql)
}

/// [`psql`] in database `db`.
pub fn psql_db(port: u16, db: &str, sql: &str) -> Result<String> {
    let out = Command::new(pg_bin_dir().join("psql"))
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db])
        .args(["-p", &port.to_string(), "-c", sql])
        .envs(compute_auth_env(port))
        .output()?;
    ensure!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `pgbench args… postgres` against a compute.
pub fn pgbench(port: u16, args: &[&str]) -> Result<()> {
    let out = Command::new(pg_bin_dir().join("pgbench"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string()])
        .args(args)
        .arg("postgres")
        .envs(compute_auth_env(port))
        .output()?;
    ensure!(
        out.status.success(),
        "pgbench {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The first ten lines where two texts (dumps) differ, each pair labelled, for a failure
/// message.
pub fn first_differences(a: &str, b: &str, label_a: &str, label_b: &str) -> String {
    a.lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .take(10)
        .map(|(x, y)| format!("{label_a}: {x}\n{label_b}: {y}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `pg_dump` of the `postgres` database of a compute, without pg_dump 15.14+'s random
/// `\restrict` key lines, so two dumps compare.
pub fn pg_dump(port: u16) -> Result<String> {
    pg_dump_db(port, "postgres")
}

/// [`pg_dump`] of database `db`.
pub fn pg_dump_db(port: u16, db: &str) -> Result<String> {
    let out = Command::new(pg_bin_dir().join("pg_dump"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string()])
        .arg(db)
        .envs(compute_auth_env(port))
        .output()?;
    ensure!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// The mount points at or below `dir` (`/proc/self/mountinfo`; `dir` as the kernel shows it,
/// i.e. canonical): what a stopped cluster must not leave behind.
pub fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let dir = dir.canonicalize()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(&dir))
        .map(str::to_string)
        .collect())
}

/// The pid on the first line of a pid file (`run/*.pid`, `postmaster.pid`).
pub fn read_pid(path: &Path) -> Result<i32> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("{} holds no pid", path.display()))
}

/// Creates tablespace `ts` on the compute at `port`, in `<cluster dir>/primary-tablespace`
/// (given to the Postgres OS user); returns that location.
pub fn create_tablespace_ts(s: &StrataCli, port: u16) -> Result<PathBuf> {
    let location = s.dir.join("primary-tablespace");
    std::fs::create_dir_all(&location)?;
    crate::os_user::give_to(crate::os_user::postgres_user()?, &location)?;
    psql(
        port,
        &format!("CREATE TABLESPACE ts LOCATION '{}'", location.display()),
    )?;
    Ok(location)
}

/// `msg` as a gRPC request carrying `token` (if any) as `authorization: Bearer`.
pub fn bearer_request<T>(msg: T, token: Option<&str>) -> Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    Ok(r)
}
