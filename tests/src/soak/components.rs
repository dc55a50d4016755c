//! The processes of a local cluster the soak signals, found the way an operator would: the
//! pid files in `<dir>/run/` and the compute's `postmaster.pid`. A pid is read afresh before
//! every signal, so a restarted process is followed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// One long-running process of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Component {
    Safekeeper(u64),
    Pageserver,
    /// The walproposer of the named compute.
    Walproposer(String),
    /// The Postgres postmaster of the named compute.
    Postgres(String),
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Component::Safekeeper(id) => write!(f, "safekeeper-{id}"),
            Component::Pageserver => write!(f, "pageserver"),
            Component::Walproposer(c) => write!(f, "walproposer of compute {c}"),
            Component::Postgres(c) => write!(f, "Postgres of compute {c}"),
        }
    }
}

impl Component {
    pub fn pid_file(&self, cluster: &Path) -> PathBuf {
        let run = cluster.join("run");
        match self {
            Component::Safekeeper(id) => run.join(format!("safekeeper-{id}.pid")),
            Component::Pageserver => run.join("pageserver.pid"),
            Component::Walproposer(c) => run.join(format!("compute-{c}-walproposer.pid")),
            Component::Postgres(c) => cluster.join("computes").join(c).join("data/postmaster.pid"),
        }
    }

    /// The pid its pid file names (first line), if the file exists and holds one.
    pub fn pid(&self, cluster: &Path) -> Option<i32> {
        let text = std::fs::read_to_string(self.pid_file(cluster)).ok()?;
        text.lines().next()?.trim().parse().ok().filter(|p| *p > 0)
    }

    /// Its live pid: named by the pid file, existing, not a zombie.
    pub fn running_pid(&self, cluster: &Path) -> Option<i32> {
        self.pid(cluster).filter(|p| alive(*p))
    }

    /// Waits until it runs as a process other than `old`, started by whatever supervises the
    /// cluster (the soak restarts nothing).
    pub fn wait_restarted(&self, cluster: &Path, old: i32, deadline: Duration) -> Result<i32> {
        let until = Instant::now() + deadline;
        loop {
            match self.running_pid(cluster) {
                Some(p) if p != old => return Ok(p),
                _ if Instant::now() > until => bail!(
                    "{self} was not restarted within {deadline:?} after pid {old} was killed \
                     (pid file {} names {:?}); nothing restarted it",
                    self.pid_file(cluster).display(),
                    self.pid(cluster)
                ),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// The cluster's safekeeper ids: its `safekeeper-<id>` directories.
pub fn safekeeper_ids(cluster: &Path) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = std::fs::read_dir(cluster)?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("safekeeper-")?
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    if ids.len() != 3 {
        bail!(
            "the soak needs 3 safekeepers, {} has {ids:?}",
            cluster.display()
        );
    }
    Ok(ids)
}

/// Whether `pid` exists and is not a zombie (a stopped process counts as alive).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: a plain kill(2) of a process of the cluster this soak started.
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!("kill -{sig} {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `pid` is gone (SIGKILL takes effect asynchronously).
pub fn wait_gone(pid: i32, deadline: Duration) -> Result<()> {
    let until = Instant::now() + deadline;
    while alive(pid) {
        if Instant::now() > until {
            bail!("pid {pid} still exists {deadline:?} after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// After a `strata stop` that failed (a wedged cluster can make it give up), SIGKILLs what
/// still runs of this cluster so a failed soak leaks no daemons: every pid in `run/*.pid`
/// and every compute's postmaster whose command line names the cluster directory (a pid
/// file's pid may have been reused by an unrelated process). Returns what it killed.
pub fn kill_leftovers(cluster: &Path) -> Vec<String> {
    let mut pid_files: Vec<PathBuf> = std::fs::read_dir(cluster.join("run"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pid"))
        .collect();
    pid_files.extend(
        std::fs::read_dir(cluster.join("computes"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("data/postmaster.pid")),
    );
    let needle = cluster.to_string_lossy().into_owned();
    let mut killed = Vec::new();
    for f in pid_files {
        let Some(pid) = std::fs::read_to_string(&f)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
            .filter(|p| *p > 0 && alive(*p))
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmdline.contains(&needle) && signal(pid, libc::SIGKILL).is_ok() {
            // Gone before the caller unmounts the disks it held open.
            let _ = wait_gone(pid, Duration::from_secs(5));
            killed.push(format!("{pid} ({})", f.display()));
        }
    }
    killed
}
