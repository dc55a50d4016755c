//! The `strata` binary driven through its command line (`--dir D --json`), exactly as a user
//! would: every call is a fresh process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

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
        let args = ["compute", "start", branch, "--tenant", tenant];
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
        Ok((port, breakdown))
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
}
