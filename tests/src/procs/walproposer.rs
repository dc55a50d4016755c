//! The `compute walproposer` process and the Postgres it streams from.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use super::{built_bin, Safekeeper, TENANT, TIMELINE};
use crate::{InitOptions, PgCluster};

/// A `compute walproposer` process; killed when dropped.
pub struct Walproposer {
    pub child: Child,
    /// Its stderr, appended to.
    pub log: PathBuf,
}

impl Walproposer {
    /// Streams `pg`'s WAL of the test timeline ([`TENANT`]/[`TIMELINE`]) to `sks`, with
    /// `extra` arguments.
    pub fn start(
        pg: &PgCluster,
        sks: &[Safekeeper],
        log: &Path,
        extra: &[&str],
    ) -> Result<Walproposer> {
        let addrs: Vec<String> = sks.iter().map(|s| s.addr()).collect();
        Self::start_for(pg, &addrs, (TENANT, TIMELINE), log, extra)
    }

    /// Streams `pg`'s WAL of timeline `(tenant, timeline)` to the safekeepers at gRPC
    /// addresses `addrs`, with `extra` arguments.
    pub fn start_for(
        pg: &PgCluster,
        addrs: &[String],
        (tenant, timeline): (&str, &str),
        log: &Path,
        extra: &[&str],
    ) -> Result<Walproposer> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(built_bin("compute")?)
            .args(["walproposer", "--pg"])
            .arg(format!(
                "host={} port={} user=postgres",
                pg.socket_dir().display(),
                pg.port()
            ))
            .args(["--safekeepers", &addrs.join(",")])
            .args(["--tenant", tenant, "--timeline", timeline])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("starting compute walproposer")?;
        Ok(Walproposer {
            child,
            log: log.to_path_buf(),
        })
    }

    /// SIGKILL, waiting for the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything it logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Walproposer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings for a Postgres 15 whose commits wait for the walproposer's safekeeper quorum.
pub fn walproposer_pg_options() -> InitOptions {
    InitOptions::default()
        .set("synchronous_standby_names", "strata")
        .set("synchronous_commit", "on")
        .set("wal_keep_size", "1GB")
        .set("max_wal_senders", "10")
}

/// A started Postgres 15 with [`walproposer_pg_options`].
pub fn walproposer_postgres() -> Result<PgCluster> {
    let pg = PgCluster::init(&walproposer_pg_options())?;
    pg.start()?;
    Ok(pg)
}
