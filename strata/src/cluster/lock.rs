//! The cluster lock: an flock on `<dir>/cluster.lock` that keeps a compute start from
//! resolving a branch name that `strata branch restore` is about to move; and the names lock
//! (`<dir>/names.lock`), held by every command that changes `names.toml` from its load to its
//! store, so two changes at once (two branch creations) never lose one of them.
//!
//! A compute start holds it shared from "resolve the name" until its compute runs and is
//! registered; a restore holds it exclusive around "move the name, stop the old computes".
//! So a start either finishes before the restore moves the name (and the restore then stops
//! its compute with the other old ones), or resolves the name after the move. Compute starts
//! do not wait for each other. The lock is the kernel's: a process that dies lets it go.
//! See `docs/architecture.md`, "Restore and compute start".
//!
//! The failpoint [`pause_at`] widens a window for tests: `STRATA_FAILPOINT_PAUSE_AT=<name>`
//! with `STRATA_FAILPOINT_PAUSE_WHILE=<path>` holds the process at the point of that name
//! while the file exists.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const LOCK_FILE: &str = "cluster.lock";
const NAMES_LOCK_FILE: &str = "names.lock";
/// A names change holds its lock for a pageserver call or two (a branch creation, a delete).
const WAIT_FOR_NAMES_CHANGE: Duration = Duration::from_secs(120);
/// A restore holds the lock while it writes `names.toml` and stops the old computes.
const WAIT_FOR_RESTORE: Duration = Duration::from_secs(120);
/// A compute start holds it until its compute runs: a full-copy start of a large branch
/// takes minutes.
const WAIT_FOR_COMPUTE_STARTS: Duration = Duration::from_secs(600);
const RETRY: Duration = Duration::from_millis(50);
/// The longest a failpoint holds a process.
const PAUSE_LIMIT: Duration = Duration::from_secs(120);

/// The lock, held until dropped.
#[derive(Debug)]
pub struct ClusterLock {
    _file: File,
}

/// The names lock, held until dropped; [`crate::names::Names::store`] asks for it.
#[derive(Debug)]
pub struct NamesLock {
    _held: ClusterLock,
}

impl NamesLock {
    /// For a change of `names.toml` (load, change, store): exclusive among such changes.
    /// Taken after the cluster lock where both are held (a restore).
    pub fn acquire(dir: &Path) -> Result<NamesLock> {
        let held = acquire(
            &dir.join(NAMES_LOCK_FILE),
            Mode::Exclusive,
            WAIT_FOR_NAMES_CHANGE,
            "another command changing the cluster's names (names.toml) to finish",
        )?;
        Ok(NamesLock { _held: held })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Shared,
    Exclusive,
}

impl ClusterLock {
    /// Any other exclusive lock on the file `path` (created if missing), waiting up to
    /// `limit` for `what`.
    pub fn exclusive(path: &Path, limit: Duration, what: &str) -> Result<ClusterLock> {
        acquire(path, Mode::Exclusive, limit, what)
    }

    /// For a compute start: shared, so starts run side by side; waits for a running restore.
    pub fn for_compute_start(dir: &Path) -> Result<ClusterLock> {
        acquire(
            &lock_file(dir),
            Mode::Shared,
            WAIT_FOR_RESTORE,
            "a `strata branch restore` to finish moving its branch name",
        )
    }

    /// For a restore: exclusive; waits for compute starts that may have resolved the name.
    pub fn for_restore(dir: &Path) -> Result<ClusterLock> {
        acquire(
            &lock_file(dir),
            Mode::Exclusive,
            WAIT_FOR_COMPUTE_STARTS,
            "compute starts in progress to finish (one may be on the branch being restored)",
        )
    }
}

pub fn lock_file(dir: &Path) -> PathBuf {
    dir.join(LOCK_FILE)
}

fn acquire(path: &Path, mode: Mode, limit: Duration, what: &str) -> Result<ClusterLock> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the lock {}", path.display()))?;
    let deadline = Instant::now() + limit;
    let mut told = false;
    loop {
        let tried = match mode {
            Mode::Shared => file.try_lock_shared(),
            Mode::Exclusive => file.try_lock(),
        };
        match tried {
            Ok(()) => return Ok(ClusterLock { _file: file }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        if !told {
            eprintln!(
                "waiting for {what} (the lock {}; up to {} s)",
                path.display(),
                limit.as_secs()
            );
            told = true;
        }
        if Instant::now() >= deadline {
            bail!(
                "waited {} s for {what}: the lock {} is still held (a hung `strata` process? \
                 `fuser {}` names it)",
                limit.as_secs(),
                path.display(),
                path.display()
            );
        }
        std::thread::sleep(RETRY);
    }
}

/// The failpoint `name` (see the module's documentation): holds the process while
/// `STRATA_FAILPOINT_PAUSE_WHILE`'s file exists, if `STRATA_FAILPOINT_PAUSE_AT` is `name`.
pub fn pause_at(name: &str) -> Result<()> {
    if std::env::var_os("STRATA_FAILPOINT_PAUSE_AT").is_none_or(|at| at != name) {
        return Ok(());
    }
    let Some(hold) = std::env::var_os("STRATA_FAILPOINT_PAUSE_WHILE") else {
        bail!("STRATA_FAILPOINT_PAUSE_AT={name} needs STRATA_FAILPOINT_PAUSE_WHILE=<path>");
    };
    let hold = PathBuf::from(hold);
    eprintln!("failpoint {name}: paused while {} exists", hold.display());
    let deadline = Instant::now() + PAUSE_LIMIT;
    while hold.exists() {
        if Instant::now() >= deadline {
            bail!(
                "failpoint {name}: {} still exists after {} s",
                hold.display(),
                PAUSE_LIMIT.as_secs()
            );
        }
        std::thread::sleep(RETRY);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_share_the_lock_and_a_restore_excludes_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = ClusterLock::for_compute_start(dir.path()).unwrap();
        let b = ClusterLock::for_compute_start(dir.path()).unwrap();
        let path = lock_file(dir.path());
        let held = acquire(&path, Mode::Exclusive, Duration::ZERO, "the test");
        let e = held.unwrap_err().to_string();
        assert!(
            e.contains("still held") && e.contains("cluster.lock"),
            "{e}"
        );
        drop((a, b));
        let restore = ClusterLock::for_restore(dir.path()).unwrap();
        let e = acquire(&path, Mode::Shared, Duration::ZERO, "the test").unwrap_err();
        assert!(e.to_string().contains("waited 0 s for the test"), "{e}");
        drop(restore);
        ClusterLock::for_compute_start(dir.path()).unwrap();
    }

    #[test]
    fn names_changes_exclude_each_other_but_not_compute_starts() {
        let dir = tempfile::tempdir().unwrap();
        let change = NamesLock::acquire(dir.path()).unwrap();
        let path = dir.path().join(NAMES_LOCK_FILE);
        let e = acquire(&path, Mode::Exclusive, Duration::ZERO, "a second change").unwrap_err();
        assert!(e.to_string().contains("names.lock"), "{e}");
        let start = ClusterLock::for_compute_start(dir.path()).unwrap();
        drop((change, start));
        NamesLock::acquire(dir.path()).unwrap();
    }
}
