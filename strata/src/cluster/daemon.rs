//! Background services of the local cluster: started detached (their own process group, so a
//! Ctrl-C in the terminal that ran `strata start` does not reach them), stdout and stderr to a
//! log file, a pid file, and a readiness line the service prints once it accepts connections.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One service's run files: `<run dir>/<name>.pid` and `<log dir>/<name>.log`.
#[derive(Clone, Debug)]
pub struct Daemon {
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
    pub fn start(&self, mut cmd: Command, ready: &str, timeout: Duration) -> Result<i32> {
        match self.state()? {
            State::Running(pid) => bail!("{} is already running (pid {pid})", self.name),
            // A process still exiting may still hold its listening port: let it finish.
            State::Dead(pid) => wait_until_exited(pid, Duration::from_secs(10)),
            State::Stopped => {}
        }
        for p in [&self.pid_file, &self.log_file] {
            if let Some(d) = p.parent() {
                fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .with_context(|| format!("opening {}", self.log_file.display()))?;
        let log_start = log.metadata()?.len();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({:?})", self.name, cmd.get_program()))?;
        let pid = child.id() as i32;
        fs::write(&self.pid_file, format!("{pid}\n"))
            .with_context(|| format!("writing {}", self.pid_file.display()))?;
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

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns whether it ran.
    pub fn stop(&self, grace: Duration) -> Result<bool> {
        let pid = match self.state()? {
            State::Stopped => return Ok(false),
            State::Dead(_) => {
                let _ = fs::remove_file(&self.pid_file);
                return Ok(false);
            }
            State::Running(pid) => pid,
        };
        signal(pid, libc::SIGTERM);
        wait_until_exited(pid, grace);
        if !exited(pid) {
            eprintln!(
                "{} did not stop within {grace:?}: sending SIGKILL",
                self.name
            );
            signal(pid, libc::SIGKILL);
            wait_until_exited(pid, Duration::from_secs(30));
        }
        let _ = fs::remove_file(&self.pid_file);
        Ok(true)
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether `pid` exists and is not a zombie we (or init) have yet to reap.
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    // A zombie, or a process still exiting (its memory, and with it its command line, is
    // released before it becomes a zombie), still answers kill(0).
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if cmdline.is_empty() {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, rest)| {
                let state = rest.trim_start();
                state.starts_with('Z') || state.starts_with('X')
            })
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Gone, or a zombie: its files (listening sockets) are closed.
fn exited(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return true;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| matches!(rest.trim_start().as_bytes().first(), Some(b'Z' | b'X')))
            .unwrap_or(false),
        Err(_) => true,
    }
}

fn wait_until_exited(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !exited(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
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
