//! A `pageserver` process.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, Result};
use tonic::transport::Channel;
use walproto::proto::pageserver::pageserver_client::PageserverClient;

use super::{built_bin, signal};

/// A running pageserver process on a port the kernel picked; killed when dropped.
pub struct Pageserver {
    pub child: Child,
    pub addr: String,
}

impl Pageserver {
    /// Starts it on `data` (its log: `<data>.log`, appended to).
    pub fn start(data: &Path) -> Result<Pageserver> {
        Self::start_with(data, &[])
    }

    /// [`Pageserver::start`] with `extra` arguments.
    pub fn start_with(data: &Path, extra: &[&str]) -> Result<Pageserver> {
        Self::start_logging(data, extra, "info")
    }

    /// [`Pageserver::start_with`], logging at `rust_log` (a `RUST_LOG` filter): benchmarks
    /// time the process with `warn`, so that log lines are not part of what they measure.
    /// The binary is [`built_bin`]'s (`STRATA_PAGESERVER_BIN` picks another build).
    pub fn start_logging(data: &Path, extra: &[&str], rust_log: &str) -> Result<Pageserver> {
        Self::start_bin(&built_bin("pageserver")?, data, extra, rust_log)
    }

    /// [`Pageserver::start_logging`] of the binary `bin` (a bench times two builds side by side).
    pub fn start_bin(
        bin: &Path,
        data: &Path,
        extra: &[&str],
        rust_log: &str,
    ) -> Result<Pageserver> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))?;
        let mut child = Command::new(bin)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting pageserver")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("pageserver listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_string();
        Ok(Pageserver { child, addr })
    }

    pub async fn client(&self) -> Result<PageserverClient<Channel>> {
        Ok(PageserverClient::connect(format!("http://{}", self.addr)).await?)
    }

    /// SIGKILL, waiting for the exit.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, waiting for the exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        signal(self.child.id(), "-TERM")?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Pageserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
