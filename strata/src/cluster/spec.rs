//! What the supervisor knows about a service, in `<cluster dir>/run/`:
//!
//! - `<name>.spec`: how to start it again (written once it is ready; removed first by a
//!   deliberate stop, so the supervisor never undoes a stop). Mode 0600: it holds the
//!   environment the service was started with.
//! - `<name>.state`: restarts, the last exit and error, the last restart time (written by the
//!   supervisor, read by `strata status`).
//! - `<name>.lock`: held while a service is started, restarted or stopped, so that the
//!   supervisor never restarts a service while a `strata` command starts or stops it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// How to start a service again.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub launch: Launch,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Launch {
    /// A program that is the service itself (its pid in `run/<name>.pid`), output appended to
    /// `log_file`.
    Process {
        program: PathBuf,
        args: Vec<String>,
        /// The whole environment it was started with.
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
        /// The line it prints once it accepts connections.
        ready: String,
        log_file: PathBuf,
    },
    /// A compute's Postgres, started with `pg_ctl start` (which forks the postmaster and
    /// exits); the postmaster's pid is the first line of `<data_dir>/postmaster.pid`.
    Postgres {
        pg_bin: PathBuf,
        data_dir: PathBuf,
        log_file: PathBuf,
    },
    /// A lazy compute's page filesystem (`compute pagefs`, its pid in `run/<name>.pid`). It
    /// is not restarted alone: the compute is recreated around a new one
    /// (`computes::lazy::recreate`).
    LazyCompute { compute: String, log_file: PathBuf },
}

impl Spec {
    /// The file that names the running process, and the log to show when it dies.
    pub fn log_file(&self) -> &Path {
        match &self.launch {
            Launch::Process { log_file, .. }
            | Launch::Postgres { log_file, .. }
            | Launch::LazyCompute { log_file, .. } => log_file,
        }
    }
}

/// What the supervisor saw of a service.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceState {
    /// Restarts by the supervisor since the service was last started by a command.
    pub restarts: u64,
    /// How the last run ended ("killed by signal 9 (SIGKILL)", "exit status 1", …).
    pub last_exit: Option<String>,
    /// The last failure, with the tail of the service's log.
    pub last_error: Option<String>,
    pub last_exit_unix_ms: Option<u64>,
    pub last_restart_unix_ms: Option<u64>,
    /// Restarts since the service last ran for a stable period (drives the backoff).
    pub failures_in_a_row: u32,
    /// When the next restart is due, while the service is down.
    pub next_restart_unix_ms: Option<u64>,
}

pub fn run_dir(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("run")
}

fn spec_path(cluster_dir: &Path, name: &str) -> PathBuf {
    run_dir(cluster_dir).join(format!("{name}.spec"))
}

fn state_path(cluster_dir: &Path, name: &str) -> PathBuf {
    run_dir(cluster_dir).join(format!("{name}.state"))
}

/// Writes `bytes` to `path` whole or not at all (a reader never sees half a file).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        std::io::Write::write_all(&mut f, bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}

/// Reads a JSON file; `None` if it does not exist.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn write_spec(cluster_dir: &Path, spec: &Spec) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(spec)?;
    write_atomically(&spec_path(cluster_dir, &spec.name), &bytes, 0o600)
}

pub fn read_spec(cluster_dir: &Path, name: &str) -> Result<Option<Spec>> {
    read_json(&spec_path(cluster_dir, name))
}

/// Whether the service is meant to run (it has a spec).
pub fn is_supervised(cluster_dir: &Path, name: &str) -> bool {
    spec_path(cluster_dir, name).exists()
}

pub fn remove_spec(cluster_dir: &Path, name: &str) -> Result<()> {
    let p = spec_path(cluster_dir, name);
    match fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// The names of every service with a spec, sorted.
pub fn supervised_names(cluster_dir: &Path) -> Result<Vec<String>> {
    let d = run_dir(cluster_dir);
    let entries = match fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".spec")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

pub fn read_state(cluster_dir: &Path, name: &str) -> Result<ServiceState> {
    Ok(read_json(&state_path(cluster_dir, name))?.unwrap_or_default())
}

pub fn write_state(cluster_dir: &Path, name: &str, state: &ServiceState) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(state)?;
    write_atomically(&state_path(cluster_dir, name), &bytes, 0o644)
}

/// Records that a command (re)starts the service: the supervisor's count starts again.
pub fn reset_state(cluster_dir: &Path, name: &str) -> Result<()> {
    write_state(cluster_dir, name, &ServiceState::default())
}

/// An exclusive lock on one service (`run/<name>.lock`, flock): released when dropped, or
/// by the kernel when its holder dies.
pub struct ServiceLock {
    _file: File,
}

impl ServiceLock {
    fn open(cluster_dir: &Path, name: &str) -> Result<File> {
        let d = run_dir(cluster_dir);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let p = d.join(format!("{name}.lock"));
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))
    }

    fn try_flock(f: &File) -> bool {
        // SAFETY: flock on an open descriptor has no memory-safety preconditions.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    /// The lock, if nobody holds it now.
    pub fn try_acquire(cluster_dir: &Path, name: &str) -> Result<Option<ServiceLock>> {
        let f = Self::open(cluster_dir, name)?;
        Ok(Self::try_flock(&f).then_some(ServiceLock { _file: f }))
    }

    /// The lock, waiting at most `timeout` for its holder (the supervisor restarting the
    /// service, or another command starting or stopping it).
    pub fn acquire(cluster_dir: &Path, name: &str, timeout: Duration) -> Result<ServiceLock> {
        let f = Self::open(cluster_dir, name)?;
        let deadline = Instant::now() + timeout;
        while !Self::try_flock(&f) {
            if Instant::now() >= deadline {
                bail!(
                    "{name} is being started, restarted or stopped by another process (its lock \
                     run/{name}.lock is held) and was not released within {timeout:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(ServiceLock { _file: f })
    }
}

/// Stops supervising `name`: after this, the supervisor does not restart it.
pub fn forget(cluster_dir: &Path, name: &str) -> Result<()> {
    let _lock = ServiceLock::acquire(cluster_dir, name, LOCK_TIMEOUT)?;
    remove_spec(cluster_dir, name)
}

/// How long a command waits for a service's lock: the supervisor holds it at most for one
/// restart (a Postgres restart waits up to 10 s for its postmaster.pid).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(20);

pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_a_held_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec {
            name: "svc".into(),
            launch: Launch::Postgres {
                pg_bin: "/usr/bin".into(),
                data_dir: "/d".into(),
                log_file: "/l".into(),
            },
        };
        write_spec(dir.path(), &spec).unwrap();
        assert_eq!(read_spec(dir.path(), "svc").unwrap(), Some(spec));
        assert_eq!(supervised_names(dir.path()).unwrap(), vec!["svc"]);
        let held = ServiceLock::try_acquire(dir.path(), "svc").unwrap();
        assert!(held.is_some());
        assert!(ServiceLock::try_acquire(dir.path(), "svc")
            .unwrap()
            .is_none());
        let e = ServiceLock::acquire(dir.path(), "svc", Duration::from_millis(50))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("run/svc.lock is held"), "{e}");
        drop(held);
        forget(dir.path(), "svc").unwrap();
        assert!(!is_supervised(dir.path(), "svc"));
        assert_eq!(
            read_state(dir.path(), "svc").unwrap(),
            ServiceState::default()
        );
    }
}
