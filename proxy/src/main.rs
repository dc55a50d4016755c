//! `strata-proxy`: the Postgres-protocol proxy of a Strata cluster (see the library's
//! documentation). `strata start` runs it; it can run by hand too:
//! `strata-proxy --dir CLUSTER --listen 127.0.0.1:PORT`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strata_proxy::cancel::CancelMap;
use strata_proxy::computes::{Computes, Settings};
use strata_proxy::names::Names;
use strata_proxy::session::Ctx;
use strata_proxy::strata_cli::{find_strata_bin, StrataCli};

#[derive(Parser)]
#[command(
    name = "strata-proxy",
    version,
    about = "The Postgres-protocol proxy of a Strata cluster"
)]
struct Args {
    /// The cluster directory.
    #[arg(long)]
    dir: PathBuf,
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:6432")]
    listen: String,
    /// Stop a read-write compute the proxy started after this many seconds without
    /// connections.
    #[arg(long, default_value_t = 300)]
    idle_stop_secs: u64,
    /// Stop a time travel compute this many seconds after its last connection closed.
    #[arg(long, default_value_t = 30)]
    ephemeral_idle_secs: u64,
    /// The longest a compute start may take (a client waits that long at most).
    #[arg(long, default_value_t = 180)]
    start_timeout_secs: u64,
    /// The proxy's certificate (PEM; `strata init --tls` or `--listen` makes
    /// `<dir>/tls/proxy.pem`): clients' SSLRequests are answered 'S' and their sessions
    /// run over TLS. Goes with --tls-key.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Listen beyond loopback without a certificate (passwords are SCRAM, but queries and
    /// rows would cross the network in clear).
    #[arg(long)]
    no_tls: bool,
}

/// The line `strata start` waits for.
const READY: &str = "strata-proxy listening on";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let bin = find_strata_bin().map_err(anyhow::Error::msg)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(strata_auth::rustls_server_config(cert, key)?),
        _ => return Err(strata_auth::TlsError::HalfIdentity.into()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr().context("the listening address")?;
        strata_auth::check_tls_listener("the proxy's address", addr, tls.is_some(), args.no_tls)?;
        let cli = StrataCli::new(&bin, &dir);
        let computes = Computes::new(
            cli.clone(),
            Settings {
                idle_stop: Duration::from_secs(args.idle_stop_secs),
                ephemeral_idle: Duration::from_secs(args.ephemeral_idle_secs),
                start_timeout: Duration::from_secs(args.start_timeout_secs),
            },
        );
        match Names::load(&dir) {
            Ok(names) => match computes.adopt(&names).await {
                Ok(0) => {}
                Ok(n) => eprintln!("strata-proxy: took over {n} computes it started before"),
                Err(e) => eprintln!("strata-proxy: warning: looking for computes it started: {e}"),
            },
            Err(e) => eprintln!("strata-proxy: warning: {e}"),
        }
        let ctx = Arc::new(Ctx {
            dir: dir.clone(),
            cli,
            computes,
            cancels: CancelMap::default(),
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
        });
        let tls_note = match &args.tls_cert {
            Some(cert) => format!("TLS with {}", cert.display()),
            None => "no TLS: clients use sslmode=disable or prefer".into(),
        };
        println!(
            "{READY} {addr} for the cluster in {} ({tls_note})",
            dir.display()
        );
        strata_proxy::server::run(listener, ctx)
            .await
            .context("serving connections")
    })
}
