//! The cluster's supervisor (`strata supervise`, a background service with `run/supervisor.pid`):
//! every 250 ms it looks at each service that has a spec (`run/<name>.spec`, see
//! [`super::spec`]) and restarts the ones whose process is gone, with exponential backoff
//! (none for the first crash, then 0.25 s doubling up to 10 s; back to none once a service ran
//! 10 s). It records restarts and the last exit in `run/<name>.state` for `strata status`.
//!
//! A process counts as gone when its pid does not exist, is a zombie, or belongs to a process
//! with another start time (the pid was reused). Services it restarts are its children: it
//! reaps them, so it knows their exit status.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::daemon::{ensure_supervisor, supervisor_daemon, tail, Daemon};
use super::process::{alive, reap_child, start_time};
use super::spec::{self, Launch, ServiceLock, ServiceState, Spec};

/// How often every service is looked at.
const POLL: Duration = Duration::from_millis(250);
/// A service that ran this long is stable: its next crash is restarted at once again.
const STABLE: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a restarted Postgres may take to write its postmaster.pid.
const POSTMASTER_PID_TIMEOUT: Duration = Duration::from_secs(10);
const READY_LINE: &str = "supervising the services of";

/// The wait before restarting a service that failed `failures_in_a_row` times since it last
/// ran for a stable period.
pub fn backoff(failures_in_a_row: u32) -> Duration {
    if failures_in_a_row == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(failures_in_a_row - 1).unwrap_or(u32::MAX);
    FIRST_BACKOFF
        .checked_mul(factor)
        .map_or(MAX_BACKOFF, |d| d.min(MAX_BACKOFF))
}

/// How the supervisor brings a lazy compute back (its page filesystem, Postgres and
/// walproposer together): `computes::lazy::recreate`, handed in by `strata supervise`, so that
/// the cluster layer does not reach up into the computes built on it. The new postmaster's
/// pid, or `None` when the compute is gone.
pub type RecreateLazyCompute = fn(&Path, &str) -> Result<Option<i32>>;

/// Stops the supervisor (after `strata stop` stopped every service).
pub fn stop(cluster_dir: &Path) -> Result<bool> {
    supervisor_daemon(cluster_dir).stop(Duration::from_secs(10))
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// `strata supervise`: runs until SIGTERM, or until the cluster directory is gone.
pub fn run(cluster_dir: &Path, recreate_lazy: RecreateLazyCompute) -> Result<()> {
    // Not the lock named like the service: `Daemon::stop` takes that one to stop it.
    let Some(_lock) = ServiceLock::try_acquire(cluster_dir, "supervisor-instance")? else {
        println!("another supervisor runs for {}", cluster_dir.display());
        return Ok(());
    };
    let d = supervisor_daemon(cluster_dir);
    fs::write(&d.pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", d.pid_file.display()))?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            request_stop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            request_stop as *const () as libc::sighandler_t,
        );
    }
    log(&format!("{READY_LINE} {}", cluster_dir.display()));
    let mut sup = Supervisor::new(cluster_dir, recreate_lazy);
    while !STOP_REQUESTED.load(Ordering::SeqCst) {
        if !cluster_dir.join(super::config::CONFIG_FILE).exists() {
            log("the cluster directory is gone: exiting");
            break;
        }
        sup.tick();
        std::thread::sleep(POLL);
    }
    log("stopping (services keep running)");
    if fs::read_to_string(&d.pid_file).is_ok_and(|t| t.trim() == std::process::id().to_string()) {
        let _ = fs::remove_file(&d.pid_file);
    }
    Ok(())
}

fn log(msg: &str) {
    let now = spec::unix_ms_now();
    println!("[{}.{:03}] {msg}", now / 1000, now % 1000);
}

/// What the supervisor remembers of one service between looks.
#[derive(Default)]
struct Watched {
    /// The process last seen alive, and its start time (to notice pid reuse).
    pid: Option<(i32, Option<u64>)>,
    alive_since: Option<Instant>,
    /// Set while the service is down: when to restart it.
    restart_at: Option<Instant>,
}

pub struct Supervisor {
    dir: PathBuf,
    recreate_lazy: RecreateLazyCompute,
    watched: HashMap<String, Watched>,
    /// Services this supervisor restarted and has not reaped yet.
    children: Vec<i32>,
    /// Exit statuses of reaped children, by pid.
    exits: HashMap<i32, String>,
}

impl Supervisor {
    pub fn new(cluster_dir: &Path, recreate_lazy: RecreateLazyCompute) -> Supervisor {
        Supervisor {
            dir: cluster_dir.to_path_buf(),
            recreate_lazy,
            watched: HashMap::new(),
            children: Vec::new(),
            exits: HashMap::new(),
        }
    }

    /// One look at every supervised service.
    pub fn tick(&mut self) {
        // Reaped, its zombie is gone and its exit status known.
        let exits = &mut self.exits;
        self.children.retain(|&pid| match reap_child(pid) {
            Some(how) => {
                exits.insert(pid, how);
                false
            }
            None => true,
        });
        let names = match spec::supervised_names(&self.dir) {
            Ok(n) => n,
            Err(e) => {
                log(&format!("cannot list the services: {e:#}"));
                return;
            }
        };
        self.watched.retain(|n, _| names.contains(n));
        for name in names {
            if let Err(e) = self.check(&name) {
                log(&format!("{name}: {e:#}"));
            }
        }
        // Exit statuses nobody asked for (a restart that was replaced) are not kept forever.
        if self.exits.len() > 1000 {
            self.exits.clear();
        }
    }

    fn check(&mut self, name: &str) -> Result<()> {
        // A command starting or stopping it holds the lock: look again next time.
        let Some(_lock) = ServiceLock::try_acquire(&self.dir, name)? else {
            return Ok(());
        };
        let Some(spec) = spec::read_spec(&self.dir, name)? else {
            self.watched.remove(name);
            return Ok(());
        };
        let pid = current_pid(&self.dir, &spec);
        let w = self.watched.entry(name.to_string()).or_default();
        if let Some(pid) = pid.filter(|p| alive(*p)) {
            let started = start_time(pid);
            match w.pid {
                Some((p, t)) if p == pid && t != started => {
                    // The same pid, another process: ours is gone.
                }
                Some((p, _)) if p == pid => {
                    return self.note_alive(name);
                }
                _ => {
                    w.pid = Some((pid, started));
                    w.alive_since = Some(Instant::now());
                    w.restart_at = None;
                    return self.note_alive(name);
                }
            }
        }
        let mut state = spec::read_state(&self.dir, name)?;
        let now = Instant::now();
        let restart_at = match w.restart_at {
            Some(t) => t,
            None => {
                let how = pid
                    .and_then(|p| self.exit_of(p))
                    .unwrap_or_else(|| match pid {
                        Some(p) => format!("pid {p} is gone (not the supervisor's child: its exit status is unknown)"),
                        None => "no process (its pid file is missing)".to_string(),
                    });
                let delay = backoff(state.failures_in_a_row);
                state.last_exit = Some(how.clone());
                state.last_exit_unix_ms = Some(spec::unix_ms_now());
                state.last_error = Some(format!(
                    "{how}; the end of {}:\n{}",
                    spec.log_file().display(),
                    tail(spec.log_file(), 5)
                ));
                state.next_restart_unix_ms = Some(spec::unix_ms_now() + delay.as_millis() as u64);
                spec::write_state(&self.dir, name, &state)?;
                log(&format!(
                    "{name} is down ({how}); restarting it in {delay:?}"
                ));
                let w = self.watched.entry(name.to_string()).or_default();
                w.pid = None;
                w.alive_since = None;
                w.restart_at = Some(now + delay);
                now + delay
            }
        };
        if now < restart_at {
            return Ok(());
        }
        state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
        let result = restart(&self.dir, &spec, self.recreate_lazy);
        let w = self.watched.entry(name.to_string()).or_default();
        match result {
            Ok(Restarted::Pid(pid)) => {
                if matches!(
                    spec.launch,
                    Launch::Process { .. } | Launch::LazyCompute { .. }
                ) {
                    self.children.push(pid);
                }
                state.restarts = state.restarts.saturating_add(1);
                state.last_restart_unix_ms = Some(spec::unix_ms_now());
                state.next_restart_unix_ms = None;
                w.pid = Some((pid, start_time(pid)));
                w.alive_since = Some(Instant::now());
                w.restart_at = None;
                log(&format!(
                    "restarted {name} (pid {pid}, restart {})",
                    state.restarts
                ));
            }
            Ok(Restarted::Abandoned(why)) => {
                log(&format!("no longer supervising {name}: {why}"));
                state.last_error = Some(why);
                state.next_restart_unix_ms = None;
                spec::remove_spec(&self.dir, name)?;
                self.watched.remove(name);
            }
            Err(e) => {
                let delay = backoff(state.failures_in_a_row);
                log(&format!(
                    "restarting {name} failed: {e:#}; trying again in {delay:?}"
                ));
                state.last_error = Some(format!("restart failed: {e:#}"));
                state.next_restart_unix_ms = Some(spec::unix_ms_now() + delay.as_millis() as u64);
                w.restart_at = Some(Instant::now() + delay);
            }
        }
        spec::write_state(&self.dir, name, &state)
    }

    /// How child `pid` ended, if it was this supervisor's child (reaped now if it just died).
    fn exit_of(&mut self, pid: i32) -> Option<String> {
        if let Some(how) = self.exits.remove(&pid) {
            return Some(how);
        }
        let how = reap_child(pid)?;
        self.children.retain(|&c| c != pid);
        Some(how)
    }

    /// A live service that ran for a stable period starts its backoff over.
    fn note_alive(&mut self, name: &str) -> Result<()> {
        let stable = self
            .watched
            .get(name)
            .and_then(|w| w.alive_since)
            .is_some_and(|t| t.elapsed() >= STABLE);
        if !stable {
            return Ok(());
        }
        let mut state = spec::read_state(&self.dir, name)?;
        if state.failures_in_a_row == 0 {
            return Ok(());
        }
        state.failures_in_a_row = 0;
        spec::write_state(&self.dir, name, &state)
    }
}

/// The pid the service runs as now, if any is recorded.
pub fn current_pid(cluster_dir: &Path, spec: &Spec) -> Option<i32> {
    let file = match &spec.launch {
        Launch::Process { .. } | Launch::LazyCompute { .. } => {
            Daemon::new(cluster_dir, &spec.name).pid_file
        }
        Launch::Postgres { data_dir, .. } => data_dir.join("postmaster.pid"),
    };
    fs::read_to_string(file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

enum Restarted {
    Pid(i32),
    /// Nothing left to restart (a compute whose data directory was removed).
    Abandoned(String),
}

fn restart(
    cluster_dir: &Path,
    spec: &Spec,
    recreate_lazy: RecreateLazyCompute,
) -> Result<Restarted> {
    match &spec.launch {
        Launch::Process {
            program,
            args,
            env,
            cwd,
            ..
        } => {
            let mut cmd = Command::new(program);
            cmd.args(args).env_clear().envs(env);
            if let Some(d) = cwd {
                cmd.current_dir(d);
            }
            let child = Daemon::new(cluster_dir, &spec.name).spawn_detached(cmd)?;
            Ok(Restarted::Pid(child.id() as i32))
        }
        Launch::LazyCompute { compute, .. } => match recreate_lazy(cluster_dir, compute)? {
            Some(pid) => Ok(Restarted::Pid(pid)),
            None => Ok(Restarted::Abandoned(format!(
                "compute {compute} is gone (no compute record)"
            ))),
        },
        Launch::Postgres {
            pg_bin,
            data_dir,
            log_file,
        } => {
            if !data_dir.join("PG_VERSION").exists() {
                return Ok(Restarted::Abandoned(format!(
                    "its data directory {} is gone",
                    data_dir.display()
                )));
            }
            let pg = compute::node::PgPrograms::new(pg_bin)?;
            let old = current_pid(cluster_dir, spec);
            // A killed postmaster's lock file names its pid, which answers kill(0) until the
            // zombie is reaped by init (whenever that is): Postgres would refuse to start.
            // Its orphaned backends still hold the shared memory, which Postgres checks on
            // its own.
            let lock_file = data_dir.join("postmaster.pid");
            if old.is_some_and(|p| !alive(p)) {
                fs::remove_file(&lock_file)
                    .with_context(|| format!("removing the stale {}", lock_file.display()))?;
            }
            let log_start = fs::metadata(log_file).map(|m| m.len()).unwrap_or(0);
            // -W: pg_ctl returns once the postmaster is forked; the postmaster's own lock
            // file says when it runs (recovery may take a while, and other services wait).
            let out = compute::node::os_user::command_as(pg.run_as, &pg_bin.join("pg_ctl"))
                .args(["start", "-W", "-D"])
                .arg(data_dir)
                .arg("-l")
                .arg(log_file)
                .current_dir("/")
                .stdin(Stdio::null())
                .output()
                .context("running pg_ctl start")?;
            if !out.status.success() {
                bail!(
                    "pg_ctl start failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let deadline = Instant::now() + POSTMASTER_PID_TIMEOUT;
            loop {
                if let Some(pid) = current_pid(cluster_dir, spec) {
                    if Some(pid) != old && alive(pid) {
                        return Ok(Restarted::Pid(pid));
                    }
                }
                let new_log = log_since(log_file, log_start);
                if new_log
                    .lines()
                    .any(|l| l.contains("FATAL:") || l.contains("PANIC:"))
                {
                    bail!("the postmaster failed to start:\n{}", new_log.trim_end());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "the postmaster did not write {} within {POSTMASTER_PID_TIMEOUT:?}; the \
                         end of its log:\n{}",
                        lock_file.display(),
                        tail(log_file, 5)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// What was appended to `path` after its first `from` bytes (at most the last 64 KiB).
fn log_since(path: &Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(64 << 10));
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Supervises a compute's Postgres (started by `pg_ctl`, running now) as `name`.
pub fn watch_postgres(
    cluster_dir: &Path,
    name: &str,
    pg_bin: &Path,
    node: &compute::node::ComputeNode,
) -> Result<()> {
    let s = Spec {
        name: name.to_string(),
        launch: Launch::Postgres {
            pg_bin: pg_bin.to_path_buf(),
            data_dir: node.data_dir.clone(),
            log_file: node.log_file.clone(),
        },
    };
    {
        let _lock = ServiceLock::acquire(cluster_dir, name, spec::LOCK_TIMEOUT)?;
        spec::write_spec(cluster_dir, &s)?;
        spec::reset_state(cluster_dir, name)?;
    }
    ensure_supervisor(cluster_dir)
}

/// What `strata status` shows of a service's supervision.
pub struct Supervision {
    /// It has a spec: the supervisor restarts it when it dies.
    pub supervised: bool,
    pub state: ServiceState,
}

pub fn supervision(cluster_dir: &Path, name: &str) -> Supervision {
    Supervision {
        supervised: spec::is_supervised(cluster_dir, name),
        state: spec::read_state(cluster_dir, name).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_nothing_up_to_its_cap() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(2));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    fn sleeper_spec(dir: &Path, name: &str) -> Spec {
        Spec {
            name: name.into(),
            launch: Launch::Process {
                program: "/bin/sh".into(),
                args: vec![
                    "-c".into(),
                    "echo sleeper listening on x; exec sleep 30".into(),
                ],
                env: std::env::vars().collect(),
                cwd: None,
                ready: "listening on".into(),
                log_file: dir.join("logs").join(format!("{name}.log")),
            },
        }
    }

    /// The supervisor restarts a killed child and counts it; a forgotten service stays down.
    #[test]
    fn a_killed_service_is_restarted_and_a_forgotten_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("logs")).unwrap();
        let spec = sleeper_spec(dir.path(), "svc");
        spec::write_spec(dir.path(), &spec).unwrap();
        let mut sup = Supervisor::new(dir.path(), |_, compute| {
            bail!("no lazy compute in this test (asked for {compute})")
        });
        // No pid file: started at once.
        sup.tick();
        let first = current_pid(dir.path(), &spec).unwrap();
        assert!(super::super::process::wait_until_alive(
            first,
            Duration::from_secs(5)
        ));
        assert_eq!(spec::read_state(dir.path(), "svc").unwrap().restarts, 1);
        super::super::process::signal(first, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(100));
        sup.tick(); // notices and (backoff 0.25 s after one failure) waits
        let st = spec::read_state(dir.path(), "svc").unwrap();
        assert_eq!(
            st.last_exit.as_deref(),
            Some("killed by signal 9 (SIGKILL)"),
            "{st:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let second = loop {
            sup.tick();
            match current_pid(dir.path(), &spec) {
                Some(p) if p != first && alive(p) => break p,
                _ if Instant::now() > deadline => panic!("not restarted within 5 s"),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        assert_eq!(spec::read_state(dir.path(), "svc").unwrap().restarts, 2);
        spec::forget(dir.path(), "svc").unwrap();
        super::super::process::signal(second, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(100));
        sup.tick();
        sup.tick();
        assert_eq!(current_pid(dir.path(), &spec), Some(second));
        assert!(!alive(second));
    }
}
