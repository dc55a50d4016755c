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
