//! Facts about processes from `/proc`, and signals: enough to tell a live service from a dead
//! one, a zombie, or an unrelated process that reused its pid.

use std::fs;
use std::time::{Duration, Instant};

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and
/// parentheses): the state is the first, the start time (clock ticks since boot) the 20th.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// When the process started (clock ticks since boot): the same pid with another start time
/// is another process.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn is_zombie(fields: &[String]) -> bool {
    matches!(
        fields.first().map(|s| s.as_bytes().first()),
        Some(Some(b'Z' | b'X'))
    )
}

/// Whether `pid` exists and is not a zombie we (or init) have yet to reap.
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
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
    stat_fields(pid).is_some_and(|f| !is_zombie(&f))
}

/// Gone, or a zombie: its files (listening sockets) are closed.
pub fn exited(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return true;
    }
    stat_fields(pid).is_none_or(|f| is_zombie(&f))
}

/// Polls `done` every 10 ms until it holds or `timeout` passed; returns whether it held.
fn poll_until(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Waits until `pid` exited or `timeout` passed; returns whether it exited.
pub fn wait_until_exited(pid: i32, timeout: Duration) -> bool {
    poll_until(timeout, || exited(pid))
}

/// Waits until a just-started `pid` looks alive: right after exec, its
/// `/proc/<pid>/cmdline` may still be empty for an instant.
#[cfg(test)]
pub fn wait_until_alive(pid: i32, timeout: Duration) -> bool {
    poll_until(timeout, || alive(pid))
}

/// Reaps `pid`, a child of this process, if it exited: how it ended. (Only the given
/// children: a wait for any child would steal other waits' children.)
pub fn reap_child(pid: i32) -> Option<String> {
    let mut status = 0;
    // SAFETY: waitpid writes only into `status`.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (r == pid).then(|| describe_wait_status(status))
}

/// "exit status 1", "killed by signal 9 (SIGKILL)".
pub fn describe_wait_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        format!("killed by signal {sig}{}", signal_name(sig))
    } else {
        format!("wait status {status:#x}")
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGQUIT => " (SIGQUIT)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaped_child_is_described_and_its_start_time_known() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(wait_until_alive(pid, Duration::from_secs(5)));
        assert!(start_time(pid).is_some());
        signal(pid, libc::SIGKILL);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_wait_status(status.into_raw()),
            "killed by signal 9 (SIGKILL)"
        );
        assert!(!alive(pid));
        assert!(exited(pid));
        assert!(!alive(0) && !alive(-1));
    }
}
