//! How commands talk: people get progress on stderr and a readable result on stdout; with
//! `--json`, stdout carries exactly one JSON value per command and progress stays on stderr.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Output {
    pub json: bool,
    started: Instant,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output {
            json,
            started: Instant::now(),
        }
    }

    /// A step of a long operation, with the time since the command started.
    pub fn step(&self, what: &str) {
        eprintln!("[{:>6.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// The command's result.
    pub fn result(&self, human: &str, value: serde_json::Value) {
        if self.json {
            println!("{value}");
        } else {
            println!("{human}");
        }
    }
}

/// Runs `f` with everything it prints to stdout sent to stderr instead (file descriptor 1
/// points at 2 meanwhile): with `--json`, the messages of commands written for people stay
/// off the one JSON value stdout carries.
pub fn stdout_to_stderr<T>(f: impl FnOnce() -> T) -> T {
    let _ = std::io::stdout().flush();
    // SAFETY: fcntl and dup2 on the process's own standard descriptors; the saved copy is
    // restored and closed below. It is close-on-exec: a daemon started meanwhile must not
    // hold the real stdout open (a reader would wait for its end forever).
    let saved = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 0) };
    if saved < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        return f();
    }
    let r = f();
    let _ = std::io::stdout().flush();
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    r
}

/// A byte counter drawn in place on a terminal, every 0.2 s at most; silent otherwise.
pub struct Progress {
    label: String,
    tty: bool,
    last: Option<Instant>,
}

impl Progress {
    pub fn new(label: &str) -> Progress {
        Progress {
            label: label.to_string(),
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    pub fn bytes(&mut self, n: u64) {
        if !self.tty {
            return;
        }
        if self.last.is_some_and(|t| t.elapsed().as_millis() < 200) {
            return;
        }
        self.last = Some(Instant::now());
        eprint!("\r  {}: {:.1} MiB", self.label, n as f64 / (1 << 20) as f64);
        let _ = std::io::stderr().flush();
    }

    pub fn done(&self, n: u64) {
        if self.tty {
            eprintln!("\r  {}: {:.1} MiB", self.label, n as f64 / (1 << 20) as f64);
        }
    }
}

/// An LSN the way Postgres prints it (`0/18F1780`, no zero padding), so what `strata` prints
/// can be compared with `pg_current_wal_lsn()` by eye.
pub fn pg_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

/// An error and its causes, `: `-separated like `{:#}`, without saying a thing twice: a cause
/// whose text its parent already contains (libraries often put their source's text in their
/// own message, and contexts sometimes repeat it) is left out, and a parent whose whole text
/// its cause repeats gives way to the cause.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        match parts.last_mut() {
            _ if text.is_empty() => {}
            Some(p) if p.contains(&text) => {}
            // The cause says all its parent said, and more.
            Some(p) if text.contains(p.as_str()) => *p = text,
            _ => parts.push(text),
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_say_each_thing_once() {
        use anyhow::Context;
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no WAL segment file for 0/1");
        let e = Err::<(), _>(io)
            .context("no WAL segment file for 0/1")
            .context("reading WAL")
            .unwrap_err();
        assert_eq!(
            super::error_text(&e),
            "reading WAL: no WAL segment file for 0/1"
        );
        let e = anyhow::anyhow!("Connection refused")
            .context("tcp connect error: Connection refused")
            .context("tcp connect error")
            .context("connecting to the pageserver");
        assert_eq!(
            super::error_text(&e),
            "connecting to the pageserver: tcp connect error: Connection refused"
        );
    }

    #[test]
    fn lsns_print_like_postgres() {
        assert_eq!(super::pg_lsn(0x18F1780), "0/18F1780");
        assert_eq!(super::pg_lsn(0), "0/0");
        assert_eq!(super::pg_lsn(0x1_0000_00A0), "1/A0");
    }
}
