//! The cluster's own flags: `--dir` (every command) and `strata init`'s.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use strata::lifecycle::InitOptions;

/// Where the cluster lives: `--dir`, else `$STRATA_DIR`, else `./.strata`.
#[derive(Args, Clone, Debug)]
pub struct DirArg {
    /// The cluster directory (default: $STRATA_DIR, else ./.strata).
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

impl DirArg {
    /// The cluster directory as an absolute path (it need not exist yet). Every path derived
    /// from it reaches child processes that run elsewhere (Postgres programs run with cwd `/`
    /// as the postgres user, services keep running after a `cd`), so a relative one would
    /// name the wrong place.
    pub fn path(&self) -> Result<PathBuf> {
        let given = self
            .dir
            .clone()
            .or_else(|| std::env::var_os("STRATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(".strata"));
        std::path::absolute(&given).with_context(|| {
            format!(
                "making the cluster directory {:?} an absolute path (from the current directory)",
                given.display()
            )
        })
    }

    /// `--dir` as given on the command line, made absolute; `None` without `--dir`.
    pub fn explicit(&self) -> Result<Option<PathBuf>> {
        match &self.dir {
            Some(_) => self.path().map(Some),
            None => Ok(None),
        }
    }
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Number of safekeepers (odd).
    #[arg(long, default_value_t = 3)]
    pub safekeepers: usize,
    /// Object store: a directory, or s3://bucket/prefix (endpoint and keys from AWS_* variables).
    /// Default: <dir>/remote.
    #[arg(long, value_name = "URL")]
    pub remote_storage: Option<String>,
    /// Directory with PostgreSQL 15's programs.
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pub pg_bin: PathBuf,
    /// No authentication: the services accept every caller and computes trust every client
    /// (by default the services verify signed tokens and computes ask for a password).
    #[arg(long)]
    pub no_auth: bool,
    /// The address the services' gRPC ports listen on and are dialed at (an IP address of
    /// this machine; default 127.0.0.1). Beyond loopback it turns TLS on: `<dir>/tls/` gets
    /// a CA and a certificate per service. Replication and metrics ports stay on loopback.
    #[arg(long, value_name = "IP")]
    pub listen: Option<std::net::IpAddr>,
    /// TLS on the gRPC ports even on loopback (always on beyond it).
    #[arg(long)]
    pub tls: bool,
    /// No metrics: the pageserver and the safekeepers serve no `/metrics` endpoint, and no
    /// service records any (`STRATA_METRICS=off` in their environment); for measuring what
    /// metrics cost.
    #[arg(long)]
    pub no_metrics: bool,
}

impl InitArgs {
    pub fn options(&self) -> InitOptions {
        InitOptions {
            safekeepers: self.safekeepers,
            remote_storage: self.remote_storage.clone(),
            pg_bin: self.pg_bin.clone(),
            no_auth: self.no_auth,
            listen: self.listen,
            tls: self.tls,
            no_metrics: self.no_metrics,
        }
    }
}
