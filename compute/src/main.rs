//! The `compute` binary.
//!
//! ```text
//! compute walproposer --pg "host=/tmp port=5432 user=postgres" \
//!     --safekeepers 127.0.0.1:7676,127.0.0.1:7677,127.0.0.1:7678 \
//!     --tenant <32 hex> --timeline <32 hex> [--slot strata] [--application-name strata]
//! compute pagefs --local DIR --mount DIR --pageserver HOST:PORT --tenant HEX --timeline HEX \
//!     --lsn X/Y [--read-only] [--ready-file PATH] [--lease-ttl-secs 600] [--read-deadline-secs 30]
//! ```
//!
//! Logs go to stderr (`RUST_LOG`, default `info`). Fatal errors (bad settings, another
//! walproposer elected, Postgres gone) end the process with status 1 and a message naming the
//! problem; SIGTERM/SIGINT end it with status 0.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use compute::pg::ConnConfig;
use compute::walproposer::{self, Config};
use walproto::Lsn;

#[derive(Parser)]
#[command(name = "compute", about = "The Strata compute side")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Stream WAL from Postgres 15 to a safekeeper majority; report to Postgres as flushed only
    /// what a majority has fsynced.
    Walproposer(WpArgs),
    /// Mount the page filesystem of a lazy compute (a data directory whose relation files are
    /// read from the pageserver) and serve it until SIGTERM/SIGINT.
    Pagefs(compute::pagefs::daemon::PagefsArgs),
}

#[derive(clap::Args)]
struct WpArgs {
    /// libpq-style connection string to Postgres (`host=... port=... user=...`).
    #[arg(long, value_name = "CONNSTR")]
    pg: String,
    /// Comma-separated `host:port` gRPC addresses of the safekeepers.
    #[arg(long, value_name = "ADDRS", value_delimiter = ',', required = true)]
    safekeepers: Vec<String>,
    /// Tenant id (32 hex characters).
    #[arg(long)]
    tenant: String,
    /// Timeline id (32 hex characters).
    #[arg(long)]
    timeline: String,
    /// Physical replication slot (created if missing).
    #[arg(long, default_value = "strata")]
    slot: String,
    /// Application name; Postgres's synchronous_standby_names must name it.
    #[arg(long, default_value = "strata")]
    application_name: String,
    /// Id shown in the safekeepers' logs (default: walproposer-<pid>).
    #[arg(long)]
    proposer_id: Option<String>,
    /// Where the safekeepers' WAL begins when none has any (default: the start of Postgres's
    /// current WAL segment), e.g. 0/3000000.
    #[arg(long, value_name = "LSN")]
    start_lsn: Option<Lsn>,
    /// Pause reading from Postgres while a majority is this many MiB behind.
    #[arg(long, default_value_t = 16)]
    max_lag_mb: u64,
    /// Appends sent to one safekeeper and not yet answered. WAL that arrives meanwhile waits
    /// and goes in the next append, so each append (and each safekeeper fsync) carries more
    /// commits: fewer, larger appends cost less CPU per commit.
    #[arg(long, default_value_t = 1)]
    max_appends_in_flight: usize,
    /// Most WAL in MiB kept in memory for lagging or reconnecting safekeepers.
    #[arg(long, default_value_t = 512)]
    max_buffer_mb: u64,
    /// Timeout in seconds for connecting and election steps.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
    /// Address of the HTTP endpoint for Prometheus metrics (`/metrics`) and health checks
    /// (`/health/live`; `/health/ready`: elected and streaming), e.g. 127.0.0.1:9900; prints
    /// `walproposer metrics on <addr>`. Not served if not given.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// With --metrics-listen: write the bound address there (atomically, each start), where a
    /// group coordinator finds the fence routes (`POST /fence?ttl_ms=N`, `POST
    /// /unfence?token=T`).
    #[arg(long, value_name = "PATH", requires = "metrics_listen")]
    control_file: Option<std::path::PathBuf>,
    /// Check tokens on the fence routes against this public key (`<cluster>/auth/
    /// public_key.pem`): they need scope admin (401 without a valid token, 403 with another
    /// scope). Without it anyone who reaches --metrics-listen may fence.
    #[arg(long, value_name = "FILE", requires = "metrics_listen")]
    auth_public_key: Option<std::path::PathBuf>,
    /// A file holding the token (scope `safekeeper`) sent to the safekeepers on every
    /// Propose call; needed when they check tokens (`--auth-public-key`).
    #[arg(long, value_name = "FILE")]
    safekeeper_token_file: Option<std::path::PathBuf>,
    /// The CA certificate (PEM) the safekeepers' certificates are checked against: they are
    /// called over TLS (https) with it, in clear without it.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
}

fn main() {
    strata_daemon::main("compute", || run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    let a = match cli.cmd {
        Cmd::Walproposer(a) => a,
        Cmd::Pagefs(a) => return compute::pagefs::daemon::run(a),
    };
    let pg = ConnConfig::parse(&a.pg).context("--pg")?;
    let mut cfg = Config::new(pg, a.safekeepers, &a.tenant, &a.timeline);
    cfg.slot = a.slot;
    cfg.application_name = a.application_name;
    if let Some(id) = a.proposer_id {
        cfg.proposer_id = id;
    }
    cfg.start_lsn = a.start_lsn;
    cfg.max_lag = a.max_lag_mb << 20;
    cfg.max_inflight = cfg.max_lag;
    cfg.max_appends_in_flight = a.max_appends_in_flight.max(1);
    cfg.max_buffer = a.max_buffer_mb << 20;
    cfg.timeout = Duration::from_secs(a.timeout_secs.max(1));
    cfg.safekeeper_token = a
        .safekeeper_token_file
        .map(|p| strata_auth::read_token_file(&p).context("--safekeeper-token-file"))
        .transpose()?
        .map(walproposer::SafekeeperToken);
    cfg.safekeeper_tls = a
        .tls_ca
        .map(|p| strata_auth::ClientTls::from_ca_file(&p).context("--tls-ca"))
        .transpose()?;
    let fence_verifier = a
        .auth_public_key
        .map(|p| strata_auth::TokenVerifier::from_public_key_file(&p).context("--auth-public-key"))
        .transpose()?;
    let metrics_listen = a.metrics_listen;
    let control_file = a.control_file;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        if let Some(addr) = metrics_listen {
            walproposer::metrics::init();
            let bound = strata_metrics::http::start_with_control(
                addr,
                std::sync::Arc::new(walproposer::metrics::ready),
                Some(std::sync::Arc::new(
                    move |req: &strata_metrics::http::ControlRequest| {
                        walproposer::fence::control(req, fence_verifier.as_ref())
                    },
                )),
            )
            .await?;
            strata_daemon::announce(&format!("walproposer metrics on {bound}"));
            if let Some(path) = &control_file {
                write_control_file(path, bound)?;
            }
        }
        // The walproposer runs as a task, not as the future `block_on` polls: waking that
        // future writes the runtime's eventfd (a syscall and an extra epoll round) every time,
        // which the main loop would pay on each acknowledgement and each WAL message; a task
        // woken on the runtime's own thread is only queued.
        let mut wp = tokio::spawn(walproposer::run(cfg));
        let r = tokio::select! {
            r = &mut wp => r.context("the walproposer task failed")?,
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); Ok(()) }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
        };
        wp.abort();
        r
    })
}

/// Writes `addr` to `path` durably: a temporary file, fsynced, renamed over it.
fn write_control_file(path: &std::path::Path, addr: std::net::SocketAddr) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(format!("{addr}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
