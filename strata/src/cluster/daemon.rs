//! Background services of the local cluster: started detached (their own process group, so a
//! Ctrl-C in the terminal that ran `strata start` does not reach them), stdout and stderr to a
//! log file, a pid file, and a readiness line the service prints once it accepts connections.
//!
//! Every service started here is supervised: once ready, its spec is recorded
//! (`run/<name>.spec`) and the cluster's supervisor restarts it whenever it dies, until
//! [`Daemon::stop`] (which removes the spec first, so a deliberate stop is never undone). The
//! supervisor's own process is started here too ([`ensure_supervisor`]); its loop is
//! `supervisor.rs`'s.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use super::process::alive;
use super::process::{signal, wait_until_exited};
use super::spec::{self, Launch, ServiceLock, Spec};

/// One service's run files: `<run dir>/<name>.pid` and `<log dir>/<name>.log`.
#[derive(Clone, Debug)]
pub struct Daemon {
    pub cluster_dir: PathBuf,
    pub name: String,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
}

/// What `status` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running(i32),
    Stopped,
    /// A pid file whose process is gone (a crash, a kill -9).
    Dead(i32),
}

impl Daemon {
    pub fn new(cluster_dir: &Path, name: &str) -> Daemon {
        Daemon {
            cluster_dir: cluster_dir.to_path_buf(),
            name: name.to_string(),
            pid_file: cluster_dir.join("run").join(format!("{name}.pid")),
            log_file: cluster_dir.join("logs").join(format!("{name}.log")),
        }
    }

    pub fn state(&self) -> Result<State> {
        let text = match fs::read_to_string(&self.pid_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::Stopped),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", self.pid_file.display()))
            }
        };
        let pid: i32 = text
            .trim()
            .parse()
            .with_context(|| format!("{} holds no pid", self.pid_file.display()))?;
        Ok(if alive(pid) {
            State::Running(pid)
        } else {
            State::Dead(pid)
        })
    }

    /// Starts `cmd` in the background and waits until its log shows a line containing `ready`
    /// (the service's "listening on" line), or fails with the log's tail if it exits first.
    /// Once ready, the service is supervised (see the module's comment).
    pub fn start(&self, cmd: Command, ready: &str, timeout: Duration) -> Result<i32> {
        let spec = self.spec_of(&cmd, ready);
        let pid = {
            let _lock = ServiceLock::acquire(&self.cluster_dir, &self.name, spec::LOCK_TIMEOUT)?;
            let pid = self.start_unsupervised(cmd, ready, timeout)?;
            spec::write_spec(&self.cluster_dir, &spec)?;
            spec::reset_state(&self.cluster_dir, &self.name)?;
            pid
        };
        if let Err(e) = ensure_supervisor(&self.cluster_dir) {
            eprintln!(
                "warning: {} runs, but nothing restarts it if it dies: {e:#}",
                self.name
            );
        }
        Ok(pid)
    }

    /// How the supervisor starts `cmd` again: the same program, arguments, directory and
    /// environment (this process's, with the command's changes).
    fn spec_of(&self, cmd: &Command, ready: &str) -> Spec {
        let mut env: BTreeMap<String, String> = std::env::vars().collect();
        for (k, v) in cmd.get_envs() {
            let k = k.to_string_lossy().into_owned();
            match v {
                Some(v) => env.insert(k, v.to_string_lossy().into_owned()),
                None => env.remove(&k),
            };
        }
        Spec {
            name: self.name.clone(),
            launch: Launch::Process {
                program: PathBuf::from(cmd.get_program()),
                args: cmd
                    .get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
                env,
                cwd: cmd.get_current_dir().map(Path::to_path_buf),
                ready: ready.to_string(),
                log_file: self.log_file.clone(),
            },
        }
    }

    fn start_unsupervised(&self, cmd: Command, ready: &str, timeout: Duration) -> Result<i32> {
        match self.state()? {
            State::Running(pid) => bail!("{} is already running (pid {pid})", self.name),
            // A process still exiting may still hold its listening port: let it finish.
            State::Dead(pid) => {
                wait_until_exited(pid, Duration::from_secs(10));
            }
            State::Stopped => {}
        }
        let log_start = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        let mut child = self.spawn_detached(cmd)?;
        let pid = child.id() as i32;
        let deadline = Instant::now() + timeout;
        loop {
            if log_has_line(&self.log_file, log_start, ready)? {
                // The child is not waited for: it outlives this command. Dropping `child`
                // does not kill it.
                return Ok(pid);
            }
            if let Some(status) = child.try_wait()? {
                let _ = fs::remove_file(&self.pid_file);
                bail!(
                    "{} exited ({status}) before it was ready; its log ({}):\n{}",
                    self.name,
                    self.log_file.display(),
                    tail(&self.log_file, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {:?}; its log ({}):\n{}",
                    self.name,
                    timeout,
                    self.log_file.display(),
                    tail(&self.log_file, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Spawns `cmd` in its own process group (a Ctrl-C of the terminal does not reach it),
    /// stdin closed, output appended to the log, and records its pid. Used for the first start
    /// and for the supervisor's restarts.
    pub(crate) fn spawn_detached(&self, mut cmd: Command) -> Result<Child> {
        if let Some(d) = self.pid_file.parent() {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let log = open_log(&self.log_file)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({:?})", self.name, cmd.get_program()))?;
        // Whole or not at all: `status` reads it at any moment.
        spec::write_atomically(
            &self.pid_file,
            format!("{}\n", child.id()).as_bytes(),
            0o644,
        )?;
        Ok(child)
    }

    /// Stops supervising it, then SIGTERM (and SIGCONT, so that a stopped process handles
    /// it), then SIGKILL if it has not exited within `grace`. Returns whether it ran.
    pub fn stop(&self, grace: Duration) -> Result<bool> {
        spec::forget(&self.cluster_dir, &self.name)?;
        let pid = match self.state()? {
            State::Stopped => return Ok(false),
            State::Dead(_) => {
                let _ = fs::remove_file(&self.pid_file);
                return Ok(false);
            }
            State::Running(pid) => pid,
        };
        signal(pid, libc::SIGTERM);
        signal(pid, libc::SIGCONT);
        if !wait_until_exited(pid, grace) {
            eprintln!(
                "{} did not stop within {grace:?}: sending SIGKILL",
                self.name
            );
            signal(pid, libc::SIGKILL);
            if !wait_until_exited(pid, Duration::from_secs(30)) {
                bail!(
                    "{} (pid {pid}) is still there 30 s after SIGKILL (stuck in the kernel?)",
                    self.name
                );
            }
        }
        let _ = fs::remove_file(&self.pid_file);
        Ok(true)
    }
}

/// The supervisor's own service name (`run/supervisor.pid`, `logs/supervisor.log`).
pub const SUPERVISOR: &str = "supervisor";
/// How long a command waits for a supervisor it started to run.
const SUPERVISOR_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The supervisor's own process.
pub fn supervisor_daemon(cluster_dir: &Path) -> Daemon {
    Daemon::new(cluster_dir, SUPERVISOR)
}

/// Starts the supervisor (`strata supervise`, see `supervisor.rs`) if `cluster_dir` holds a
/// cluster and no supervisor runs. Called by [`Daemon::start`] and by every command that finds
/// services meant to run.
pub fn ensure_supervisor(cluster_dir: &Path) -> Result<()> {
    if !cluster_dir.join(super::config::CONFIG_FILE).exists() {
        return Ok(());
    }
    let d = supervisor_daemon(cluster_dir);
    if let State::Running(_) = d.state()? {
        return Ok(());
    }
    let dir = cluster_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", cluster_dir.display()))?;
    let exe = std::env::current_exe().context("locating the strata binary")?;
    let log = open_log(&d.log_file)?;
    let mut child = Command::new(&exe)
        .arg("--dir")
        .arg(&dir)
        .arg("supervise")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the supervisor ({})", exe.display()))?;
    // The supervisor writes its own pid file once it holds the supervisor lock; one started
    // by a concurrent command may win instead, which is as good.
    let deadline = Instant::now() + SUPERVISOR_START_TIMEOUT;
    loop {
        if let State::Running(_) = d.state()? {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!(
                    "the supervisor exited ({status}) as it started; its log ({}):\n{}",
                    d.log_file.display(),
                    tail(&d.log_file, 10)
                );
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the supervisor did not write {} within {SUPERVISOR_START_TIMEOUT:?}; its log:\n{}",
                d.pid_file.display(),
                tail(&d.log_file, 10)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A service's log, opened for appending (its directory created if needed).
pub fn open_log(path: &Path) -> Result<File> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn log_has_line(path: &Path, from: u64, needle: &str) -> Result<bool> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(from))?;
    for line in BufReader::new(f).lines() {
        if line?.contains(needle) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_waits_for_ready_and_stop_terminates() {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::new(dir.path(), "sleeper");
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "sleep 0.2; echo sleeper listening on x; exec sleep 30",
        ]);
        let pid = d
            .start(cmd, "listening on", Duration::from_secs(10))
            .unwrap();
        assert_eq!(d.state().unwrap(), State::Running(pid));
        assert!(d.stop(Duration::from_secs(5)).unwrap());
        assert_eq!(d.state().unwrap(), State::Stopped);
    }

    #[test]
    fn start_reports_an_early_exit_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::new(dir.path(), "broken");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'bad flag --frobnicate' >&2; exit 3"]);
        let e = d
            .start(cmd, "listening on", Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad flag --frobnicate"), "{e}");
        assert_eq!(d.state().unwrap(), State::Stopped);
    }
}
