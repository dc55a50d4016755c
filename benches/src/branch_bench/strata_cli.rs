//! The `strata` binary driven through its command line (`--dir D --json`), exactly as a user
//! would: every call is a fresh process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What `strata compute start` is asked for.
#[derive(Clone, Debug, Default)]
pub struct ComputeStart<'a> {
    pub tenant: &'a str,
    pub branch: &'a str,
    /// `--at`: a read-only compute at this past point.
    pub at: Option<&'a str>,
    /// `--name`.
    pub name: Option<&'a str>,
    /// `--full-copy`: the whole database copied before Postgres starts.
    pub full_copy: bool,
}

/// A compute `strata compute start` started.
#[derive(Clone, Debug)]
pub struct Started {
    pub port: u16,
    /// Its `compute start breakdown: …` line (empty when it printed none).
    pub breakdown: String,
}

/// How long the pageserver may take to ingest what is committed before a measurement.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

pub struct StrataCli {
    pub bin: PathBuf,
    pub dir: PathBuf,
}

impl StrataCli {
    /// The `strata` next to this program (target/release/strata for a release build), or
    /// `bin` when given.
    pub fn new(bin: Option<PathBuf>, dir: &Path) -> Result<StrataCli> {
        let bin = match bin {
            Some(b) => b,
            None => std::env::current_exe()
                .context("finding this program's path")?
                .with_file_name("strata"),
        };
        if !bin.exists() {
            bail!(
                "no strata binary at {} (build it: cargo build --release --bins, or pass --strata-bin)",
                bin.display()
            );
        }
        Ok(StrataCli {
            bin,
            dir: dir.to_path_buf(),
        })
    }

    /// Runs `strata --dir D [--json] <args>`; returns its stdout.
    fn exec(&self, json: bool, args: &[&str]) -> Result<String> {
        self.exec_both(json, args).map(|(out, _)| out)
    }

    /// Runs `strata --dir D [--json] <args>`; returns its stdout and stderr.
    fn exec_both(&self, json: bool, args: &[&str]) -> Result<(String, String)> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--dir").arg(&self.dir);
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "strata {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs `strata --dir D <args>` (init, start, stop: commands that print text only).
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.exec(false, args)
    }

    /// Runs `strata --dir D --json <args>` and parses the JSON value it prints.
    pub fn run_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let text = self.exec(true, args)?;
        serde_json::from_str(text.trim())
            .with_context(|| format!("strata {} printed no JSON: {text}", args.join(" ")))
    }

    /// `strata compute start BRANCH --tenant T`: the compute's port.
    pub fn compute_start(&self, tenant: &str, branch: &str) -> Result<u16> {
        self.compute_start_timed(tenant, branch).map(|(p, _)| p)
    }

    /// `strata compute start BRANCH --tenant T`: the compute's port and the breakdown of its
    /// time it printed (`compute start breakdown: …` on stderr; empty if none).
    pub fn compute_start_timed(&self, tenant: &str, branch: &str) -> Result<(u16, String)> {
        let s = self.compute_start_with(&ComputeStart {
            tenant,
            branch,
            ..ComputeStart::default()
        })?;
        Ok((s.port, s.breakdown))
    }

    /// `strata compute start` with the options of `req`.
    pub fn compute_start_with(&self, req: &ComputeStart) -> Result<Started> {
        let mut args = vec!["compute", "start", req.branch, "--tenant", req.tenant];
        if let Some(at) = req.at {
            args.extend(["--at", at]);
        }
        if let Some(name) = req.name {
            args.extend(["--name", name]);
        }
        if req.full_copy {
            args.push("--full-copy");
        }
        let (text, err) = self.exec_both(true, &args)?;
        let v: serde_json::Value = serde_json::from_str(text.trim())
            .with_context(|| format!("strata {} printed no JSON: {text}", args.join(" ")))?;
        let breakdown = err
            .lines()
            .find_map(|l| l.split_once("compute start breakdown: "))
            .map(|(_, b)| b.trim().to_string())
            .unwrap_or_default();
        let port = v
            .get("port")
            .and_then(|p| p.as_u64())
            .with_context(|| format!("strata compute start printed no port: {v}"))?;
        let port = u16::try_from(port).with_context(|| format!("port {port} out of range"))?;
        Ok(Started { port, breakdown })
    }

    /// `strata compute stop NAME`.
    pub fn compute_stop(&self, name: &str) -> Result<()> {
        self.run(&["compute", "stop", name]).map(drop)
    }

    /// Whether `strata <subcommand…> --help` lists `flag` (e.g. `--full-copy`: this strata
    /// has lazy computes).
    pub fn has_flag(&self, subcommand: &[&str], flag: &str) -> Result<bool> {
        let mut args = subcommand.to_vec();
        args.push("--help");
        let help = self.exec(false, &args)?;
        Ok(help
            .split(|c: char| c.is_whitespace() || c == ',')
            .any(|w| w == flag))
    }

    /// `strata branch create NAME --from PARENT --at AT --tenant T`: the branch's LSN.
    pub fn branch_create(
        &self,
        tenant: &str,
        name: &str,
        from: &str,
        at: Option<&str>,
    ) -> Result<String> {
        let mut args = vec!["branch", "create", name, "--from", from, "--tenant", tenant];
        if let Some(a) = at {
            args.extend(["--at", a]);
        }
        let v = self.run_json(&args)?;
        v.get("lsn")
            .and_then(|l| l.as_str())
            .map(str::to_string)
            .with_context(|| format!("strata branch create printed no lsn: {v}"))
    }

    /// Waits until the pageserver has all of `branch`'s committed WAL: creating a branch
    /// (`probe`) at its latest state succeeds only then ("still behind" otherwise); gives up
    /// after a few minutes.
    pub fn wait_caught_up(&self, tenant: &str, branch: &str, probe: &str) -> Result<String> {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            match self.branch_create(tenant, probe, branch, None) {
                Ok(lsn) => return Ok(lsn),
                Err(e) if Instant::now() < deadline && format!("{e:#}").contains("still behind") => {
                    eprintln!("  still ingesting: {e:#}");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("waiting {CATCH_UP_TIMEOUT:?} for the pageserver to have all of {branch}'s WAL")
                    })
                }
            }
        }
    }
}
