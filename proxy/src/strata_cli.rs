//! Running the `strata` command for what the proxy does not do itself: starting and stopping
//! computes, listing them, resolving a moment to an LSN. Each run has a deadline; its error
//! is the command's own `strata: error:` text.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("running {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("`strata {command}` did not finish within {} s", .limit.as_secs())]
    Timeout { command: String, limit: Duration },
    /// The command failed; `message` is what it said after `strata: error:`.
    #[error("`strata {command}` failed: {message}")]
    Failed { command: String, message: String },
    #[error("`strata {command}` printed no JSON: {output}")]
    NotJson { command: String, output: String },
}

impl CliError {
    /// The command's own words, without the command line.
    pub fn message(&self) -> String {
        match self {
            CliError::Failed { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// The `strata` binary and the cluster directory it works on.
#[derive(Clone, Debug)]
pub struct StrataCli {
    pub bin: PathBuf,
    pub dir: PathBuf,
}

/// `$STRATA_BIN`, else `strata` next to this program.
pub fn find_strata_bin() -> Result<PathBuf, String> {
    if let Some(b) = std::env::var_os("STRATA_BIN") {
        return Ok(PathBuf::from(b));
    }
    let exe = std::env::current_exe().map_err(|e| format!("locating this program: {e}"))?;
    let bin = exe
        .parent()
        .map(|d| d.join("strata"))
        .ok_or("this program has no directory")?;
    if !bin.exists() {
        return Err(format!(
            "no strata binary next to the proxy ({}); set STRATA_BIN",
            bin.display()
        ));
    }
    Ok(bin)
}

impl StrataCli {
    pub fn new(bin: &Path, dir: &Path) -> StrataCli {
        StrataCli {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
        }
    }

    /// Runs `strata --dir DIR --json args…` within `limit`; the JSON it printed.
    pub async fn json(
        &self,
        args: &[&str],
        limit: Duration,
    ) -> Result<serde_json::Value, CliError> {
        let command = args.join(" ");
        let child = tokio::process::Command::new(&self.bin)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A run past its deadline is not left behind.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CliError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(r) => r.map_err(|source| CliError::Spawn {
                bin: self.bin.clone(),
                source,
            })?,
            Err(_) => return Err(CliError::Timeout { command, limit }),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(CliError::Failed {
                command,
                message: error_text(&stderr, out.status),
            });
        }
        serde_json::from_str(stdout.trim()).map_err(|_| CliError::NotJson {
            command,
            output: stdout.trim().to_string(),
        })
    }
}

/// What follows `strata: error:` (the command's error and causes), or the end of its output.
fn error_text(stderr: &str, status: std::process::ExitStatus) -> String {
    match stderr.find("strata: error:") {
        Some(i) => stderr[i + "strata: error:".len()..].trim().to_string(),
        None => {
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(5)..].join("\n");
            format!("{status}: {tail}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_strata(script: &str) -> (tempfile::TempDir, StrataCli) {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("strata");
        std::fs::write(&bin, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cli = StrataCli::new(&bin, d.path());
        (d, cli)
    }

    #[tokio::test]
    async fn json_errors_and_deadlines() {
        let (_d, cli) = fake_strata(r#"echo '{"port": 5}'"#);
        let v = cli.json(&["x"], Duration::from_secs(5)).await.unwrap();
        assert_eq!(v["port"], 5);
        let (_d, cli) =
            fake_strata("echo progress >&2; echo 'strata: error: no branch' >&2; exit 1");
        let e = cli.json(&["x"], Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.message(), "no branch");
        let (_d, cli) = fake_strata("exec sleep 30");
        let e = cli
            .json(&["compute", "start"], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, CliError::Timeout { .. }), "{e}");
    }
}
