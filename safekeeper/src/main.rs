//! The `safekeeper` binary: a Paxos acceptor serving `strata.safekeeper.v1.Safekeeper` over gRPC.
//!
//! Configuration comes from an optional TOML file (`--config`) with the same keys as the flags
//! (`datadir`, `listen_grpc`, `listen_pg`, `id`); flags win. On start it prints
//! `safekeeper <id> listening on <addr>` to stdout (with the real port when asked for port 0),
//! so scripts and tests can find it.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tracing::info;

use safekeeper::service::SafekeeperService;

#[derive(Parser, Debug)]
#[command(
    name = "safekeeper",
    version,
    about = "Strata safekeeper: a Paxos acceptor keeping WAL durable"
)]
struct Args {
    /// Directory holding this safekeeper's timelines (`<tenant>/<timeline>/`); created if missing.
    #[arg(long)]
    datadir: Option<PathBuf>,
    /// Address for the gRPC service, e.g. 127.0.0.1:7676 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR:PORT")]
    listen_grpc: Option<SocketAddr>,
    /// This safekeeper's node id (a positive integer, unique in the cluster).
    #[arg(long)]
    id: Option<u64>,
    /// Address for the Postgres replication protocol (pg_receivewal, standbys, the pageserver),
    /// e.g. 127.0.0.1:5454; not served if not given. Connections are trusted: use loopback or
    /// a private network.
    #[arg(long, value_name = "ADDR:PORT")]
    listen_pg: Option<SocketAddr>,
    /// TOML configuration file with the same keys as the flags.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    datadir: Option<PathBuf>,
    listen_grpc: Option<SocketAddr>,
    id: Option<u64>,
    listen_pg: Option<SocketAddr>,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:7676";
const ID_FILE: &str = "safekeeper.id";

/// The node id is written into the datadir on first start; starting the same datadir under
/// another id would make two nodes out of one and is refused.
fn check_node_id(datadir: &Path, id: u64) -> Result<()> {
    let path = datadir.join(ID_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => {
            let stored: u64 = s
                .trim()
                .parse()
                .with_context(|| format!("{} does not hold a node id: {s:?}", path.display()))?;
            if stored != id {
                bail!(
                    "{} belongs to safekeeper {stored}, not {id}",
                    datadir.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = datadir.join(format!("{ID_FILE}.tmp"));
            fs::write(&tmp, format!("{id}\n"))
                .with_context(|| format!("writing {}", tmp.display()))?;
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
            fs::File::open(datadir)?.sync_all()?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    Ok(())
}

/// Stops the replication server when `serve` returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("safekeeper: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let file = match &args.config {
        Some(p) => {
            let text = fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?;
            toml::from_str::<FileConfig>(&text)
                .with_context(|| format!("parsing config file {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let datadir = args
        .datadir
        .or(file.datadir)
        .context("no data directory: pass --datadir or set `datadir` in the config file")?;
    let id = args
        .id
        .or(file.id)
        .context("no node id: pass --id or set `id` in the config file")?;
    if id == 0 {
        bail!("node id must be a positive integer, got 0");
    }
    let listen = match args.listen_grpc.or(file.listen_grpc) {
        Some(a) => a,
        None => DEFAULT_LISTEN.parse()?,
    };
    fs::create_dir_all(&datadir)
        .with_context(|| format!("creating data directory {}", datadir.display()))?;
    check_node_id(&datadir, id)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listen_pg = args.listen_pg.or(file.listen_pg);
    rt.block_on(serve(datadir, listen, listen_pg, id))
}

async fn serve(
    datadir: PathBuf,
    listen: SocketAddr,
    listen_pg: Option<SocketAddr>,
    id: u64,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the gRPC address {listen}"))?;
    let addr = listener.local_addr()?;
    let service = SafekeeperService::new(id, datadir.clone());
    info!(id, %addr, datadir = %datadir.display(), "safekeeper starting");
    println!("safekeeper {id} listening on {addr}");
    let _replication = match listen_pg {
        Some(pg_addr) => {
            let pg_listener = tokio::net::TcpListener::bind(pg_addr)
                .await
                .with_context(|| format!("binding the replication address {pg_addr}"))?;
            let pg_addr = pg_listener.local_addr()?;
            info!(%pg_addr, "serving the Postgres replication protocol");
            println!("safekeeper {id} serving replication on {pg_addr}");
            Some(AbortOnDrop(tokio::spawn(
                safekeeper::replication_server::serve(pg_listener, service.clone()),
            )))
        }
        None => None,
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        info!("shutting down");
    };
    // Appends are small and latency-bound: do not let Nagle's algorithm hold acknowledgements.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    tonic::transport::Server::builder()
        .add_service(service.clone().into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server failed")?;
    tokio::task::spawn_blocking(move || service.shutdown()).await?;
    Ok(())
}
