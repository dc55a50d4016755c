//! The `safekeeper` binary: a Paxos acceptor serving `strata.safekeeper.v1.Safekeeper` over gRPC.
//!
//! Configuration comes from an optional TOML file (`--config`) with the same keys as the flags
//! (`data_dir`, `listen`, `listen_pg`, `id`, `remote_storage`, `s3_endpoint`, `s3_region`,
//! `peers`, `partial_offload_interval_secs`, `runtime`, `max_connections`, `connection_threads`,
//! `idle_timeout_secs`, `auth_public_key`, `auth_token_file`, `no_auth`, `tls_cert`, `tls_key`,
//! `tls_ca`, `no_tls`); flags win. The flags the daemons share (`--data-dir`, `--listen`,
//! `--metrics-listen`, `--auth-public-key`, `--no-auth`, `--config`) come from
//! `strata_daemon`; the old `--datadir` and `--listen-grpc` (keys `datadir`, `listen_grpc`)
//! still work. A gRPC or replication address beyond loopback is refused with auth off unless
//! `--no-auth` says so, and a gRPC address beyond loopback without TLS (`--tls-cert`,
//! `--tls-key`) unless `--no-tls` says so. On start it prints
//! `safekeeper <id> listening on <addr>` to stdout (with the real port when asked for port 0),
//! so scripts and tests can find it.
//!
//! With `--metrics-listen ADDR` (config key `metrics_listen`) it serves Prometheus metrics on
//! `http://ADDR/metrics` and `/health/live`, `/health/ready` (ready once the timelines' control
//! files are loaded), and prints `safekeeper <id> metrics on <addr>`; the gRPC port answers
//! the standard health service (`grpc.health.v1.Health`) too.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use strata_daemon::{announce, DaemonArgs};
use strata_metrics::http::ReadyCheck;
use tracing::info;

use safekeeper::config::{ServiceAuth, ServiceConfig};
use safekeeper::conn_threads::ConnLimits;
use safekeeper::peers::Peer;
use safekeeper::remote_storage::{RemoteStorage, S3Options};
use safekeeper::service::SafekeeperService;
use safekeeper::timelines::Timelines;
use strata_auth::{check_listener, read_token_file, ClientTls, TokenVerifier};

#[derive(Parser, Debug)]
#[command(
    name = "safekeeper",
    version,
    about = "Strata safekeeper: a Paxos acceptor keeping WAL durable"
)]
struct Args {
    /// The data directory holds this safekeeper's timelines (`<tenant>/<timeline>/`).
    #[command(flatten)]
    daemon: DaemonArgs,
    /// This safekeeper's node id (a positive integer, unique in the cluster).
    #[arg(long)]
    id: Option<u64>,
    /// Address for the Postgres replication protocol (pg_receivewal, standbys, the pageserver),
    /// e.g. 127.0.0.1:5454; not served if not given. With --auth-public-key the password must
    /// be a token (sent in clear: use loopback or a private network); else connections are
    /// trusted.
    #[arg(long, value_name = "ADDR:PORT")]
    listen_pg: Option<SocketAddr>,
    /// Object store for offloaded WAL: a directory, file:///dir, or s3://bucket/prefix (S3
    /// settings from the AWS_* environment variables: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION). Without it nothing is offloaded or removed.
    #[arg(long, value_name = "URL")]
    remote_storage: Option<String>,
    /// S3 endpoint (e.g. http://127.0.0.1:9000), overriding AWS_ENDPOINT_URL; plain http only
    /// to a loopback endpoint unless AWS_ALLOW_HTTP=true.
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// S3 region, overriding AWS_REGION.
    #[arg(long)]
    s3_region: Option<String>,
    /// The other safekeepers: comma-separated id=host:port (their gRPC addresses).
    #[arg(long, value_name = "ID=ADDR,...", value_delimiter = ',')]
    peers: Vec<Peer>,
    /// Seconds between uploads of the segment being written (complete segments go at once).
    #[arg(long, value_name = "SECS")]
    partial_offload_interval_secs: Option<u64>,
    /// How the async work is scheduled. `per-connection` (default) serves each gRPC
    /// connection on its own thread with a current-thread runtime: a proposer session's
    /// appends are read, written, fsynced inline and answered on one thread with no wake-up
    /// of another thread, and an fsync stalls only its own connection (one proposer session,
    /// one timeline); the replication server and the offload tasks run on a multi-thread
    /// runtime. `multi-thread` runs everything on one worker per core (timelines fsync in
    /// parallel, at the cost of wake-ups between the workers on every append).
    /// `current-thread` runs everything on one thread: an fsync of one timeline stalls all the
    /// others, so only for a safekeeper that serves one or a few timelines. Blocking work
    /// (control files, recovery) runs on a thread pool either way.
    #[arg(long, value_enum)]
    runtime: Option<RuntimeKind>,
    /// gRPC connections open at once (default 1024). At the cap, the connection quiet the
    /// longest is closed to admit a new one; if all are busy, the new one is refused.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// gRPC connections served each on its own thread with `--runtime per-connection`
    /// (default 64); further ones are served on the shared runtime.
    #[arg(long, value_name = "N")]
    connection_threads: Option<usize>,
    /// Seconds after which a gRPC connection that sent and received nothing is closed
    /// (default 60; a walproposer pings every 5 s).
    #[arg(long, value_name = "SECS")]
    idle_timeout_secs: Option<u64>,
    /// A file holding the token (scope `safekeeper`) this safekeeper sends its peers
    /// (status calls and recovery streams).
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// The gRPC service's TLS certificate (PEM, the chain after it): with --tls-key the port
    /// speaks only TLS. Needed for a gRPC address beyond loopback, unless --no-tls.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) the peers' certificates are checked against: the peers are
    /// called over TLS (https) with it, in clear without it.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Serve a gRPC address beyond loopback without TLS (refused otherwise).
    #[arg(long)]
    no_tls: bool,
}

/// The config file's keys beyond the shared ones of [`DaemonArgs`].
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    listen_pg: Option<SocketAddr>,
    remote_storage: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    peers: Option<Vec<String>>,
    partial_offload_interval_secs: Option<u64>,
    runtime: Option<RuntimeKind>,
    max_connections: Option<usize>,
    connection_threads: Option<usize>,
    idle_timeout_secs: Option<u64>,
    auth_token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    no_tls: Option<bool>,
}

/// The `--runtime` choices.
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum RuntimeKind {
    CurrentThread,
    MultiThread,
    #[default]
    PerConnection,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:7676";
/// How long a SIGTERM waits for open gRPC calls before the state is persisted and we exit.
const GRACE: Duration = Duration::from_secs(1);
const ID_FILE: &str = "safekeeper.id";
/// The gRPC service's name, as health checks ask for it.
const SAFEKEEPER_SERVICE: &str = "strata.safekeeper.v1.Safekeeper";

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
    strata_daemon::main("safekeeper", run)
}

fn run() -> Result<()> {
    let args = Args::parse();
    let (daemon, file) = args.daemon.load::<FileConfig>(DEFAULT_LISTEN.parse()?)?;
    let datadir = daemon.data_dir;
    let listen = daemon.listen;
    let id = args
        .id
        .or(file.id)
        .context("no node id: pass --id or set `id` in the config file")?;
    if id == 0 {
        bail!("node id must be a positive integer, got 0");
    }
    fs::create_dir_all(&datadir)
        .with_context(|| format!("creating data directory {}", datadir.display()))?;
    check_node_id(&datadir, id)?;

    let kind = args.runtime.or(file.runtime).unwrap_or_default();
    let rt = match kind {
        RuntimeKind::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        RuntimeKind::MultiThread | RuntimeKind::PerConnection => {
            tokio::runtime::Builder::new_multi_thread()
        }
    }
    .enable_all()
    .build()
    .context("starting the async runtime")?;
    let listen_pg = args.listen_pg.or(file.listen_pg);
    let peers = if args.peers.is_empty() {
        file.peers
            .unwrap_or_default()
            .iter()
            .map(|p| p.parse::<Peer>())
            .collect::<Result<Vec<_>, _>>()
            .context("config file `peers`")?
    } else {
        args.peers
    };
    if let Some(p) = peers.iter().find(|p| p.id == id) {
        bail!("--peers lists this safekeeper's own id: {p}");
    }
    let from_env = S3Options::from_env();
    let s3 = S3Options {
        endpoint: args.s3_endpoint.or(file.s3_endpoint).or(from_env.endpoint),
        region: args.s3_region.or(file.s3_region).or(from_env.region),
        ..from_env
    };
    let mut config = ServiceConfig {
        peers,
        auth: service_auth(
            daemon.auth_public_key,
            args.auth_token_file.or(file.auth_token_file),
            args.tls_ca.or(file.tls_ca),
        )?,
        ..ServiceConfig::default()
    };
    let no_auth = daemon.no_auth;
    let auth_on = config.auth.verifier.is_some();
    check_listener("the gRPC address", listen, auth_on, no_auth)?;
    if let Some(pg_addr) = listen_pg {
        check_listener("the replication address", pg_addr, auth_on, no_auth)?;
    }
    let server = strata_auth::grpc_server_tls(
        grpc_server(),
        listen,
        (
            args.tls_cert.or(file.tls_cert).as_deref(),
            args.tls_key.or(file.tls_key).as_deref(),
        ),
        args.no_tls || file.no_tls.unwrap_or(false),
    )?;
    if let Some(secs) = args
        .partial_offload_interval_secs
        .or(file.partial_offload_interval_secs)
    {
        config.partial_offload_interval = Duration::from_secs(secs);
    }
    let limits = conn_limits(
        kind,
        args.max_connections.or(file.max_connections),
        args.connection_threads.or(file.connection_threads),
        args.idle_timeout_secs.or(file.idle_timeout_secs),
    )?;
    let remote_url = args.remote_storage.or(file.remote_storage);
    let metrics_listen = daemon.metrics_listen;
    rt.block_on(async move {
        // The S3 client wants a runtime even to be built.
        if let Some(url) = &remote_url {
            config.remote = Some(RemoteStorage::parse(url, &s3)?);
        }
        info!(runtime = ?kind, "async runtime");
        serve(
            datadir,
            (listen, listen_pg),
            id,
            config,
            limits,
            metrics_listen,
            server,
        )
        .await
    })
}

/// The verifier of callers' tokens, the token for the peers and the CA their certificates
/// are checked against, from their files.
fn service_auth(
    public_key: Option<PathBuf>,
    token_file: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
) -> Result<ServiceAuth> {
    let verifier = match &public_key {
        Some(path) => {
            let v = TokenVerifier::from_public_key_file(path)
                .context("loading the public key of --auth-public-key")?;
            info!(public_key = %path.display(), "auth on: every caller needs a token signed with this key");
            Some(Arc::new(v))
        }
        None => {
            info!(
                "auth off: every caller is trusted (start with --auth-public-key to check tokens)"
            );
            None
        }
    };
    let peer_token = token_file
        .map(|p| read_token_file(&p).context("reading --auth-token-file"))
        .transpose()?;
    let peer_tls = tls_ca
        .map(|p| ClientTls::from_ca_file(&p).context("loading --tls-ca"))
        .transpose()?;
    Ok(ServiceAuth {
        verifier,
        peer_token,
        peer_tls,
    })
}

/// Serves gRPC on `listen` (with `server`'s settings) and replication on `listen_pg`.
async fn serve(
    datadir: PathBuf,
    (listen, listen_pg): (SocketAddr, Option<SocketAddr>),
    id: u64,
    mut config: ServiceConfig,
    limits: ConnLimits,
    metrics_listen: Option<SocketAddr>,
    server: tonic::transport::Server,
) -> Result<()> {
    // Live from here on; ready once the control files are loaded.
    let loaded = Arc::new(AtomicBool::new(false));
    if let Some(addr) = metrics_listen {
        safekeeper::metrics::init();
        let flag = loaded.clone();
        let ready: ReadyCheck = Arc::new(move || match flag.load(Ordering::Acquire) {
            true => Ok(()),
            false => Err("the timelines' control files are being loaded".into()),
        });
        let bound = strata_metrics::http::start(addr, ready).await?;
        announce(&format!("safekeeper {id} metrics on {bound}"));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the gRPC address {listen}"))?;
    let addr = listener.local_addr()?;
    let pg_listener = match listen_pg {
        Some(pg_addr) => {
            let l = tokio::net::TcpListener::bind(pg_addr)
                .await
                .with_context(|| format!("binding the replication address {pg_addr}"))?;
            config.replication_addr = Some(l.local_addr()?.to_string());
            Some(l)
        }
        None => None,
    };
    let remote = config.remote.clone();
    info!(id, %addr, datadir = %datadir.display(), remote_storage = ?remote.as_ref().map(|r| r.url()), peers = ?config.peers, "safekeeper starting");
    let timelines = Timelines::new(id, datadir.clone(), config);
    timelines.open_all();
    safekeeper::metrics::TimelineCollector::register(timelines.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SAFEKEEPER_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    loaded.store(true, Ordering::Release);
    announce(&format!("safekeeper {id} listening on {addr}"));
    let _replication = match pg_listener {
        Some(pg_listener) => {
            let pg_addr = pg_listener.local_addr()?;
            info!(%pg_addr, "serving the Postgres replication protocol");
            announce(&format!("safekeeper {id} serving replication on {pg_addr}"));
            Some(AbortOnDrop(tokio::spawn(
                safekeeper::replication_server::serve(pg_listener, timelines.clone()),
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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let svc = SafekeeperService::with_timelines(timelines.clone());
    let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    info!(?limits, "gRPC connection limits");
    let accept = safekeeper::conn_threads::serve(
        listener,
        move || {
            server
                .clone()
                .add_service(health_service.clone())
                .add_service(svc.clone().into_server())
        },
        stop_rx,
        live.clone(),
        limits,
    );
    tokio::pin!(accept);
    tokio::select! {
        r = &mut accept => r.context("accepting gRPC connections failed")?,
        _ = shutdown => {
            let _ = stop_tx.send(true);
            // The connections shut down gracefully; a proposer's session never ends on its
            // own: give in-flight calls a moment, then go on without them.
            let deadline = tokio::time::Instant::now() + GRACE;
            while live.load(std::sync::atomic::Ordering::Acquire) > 0 {
                if tokio::time::Instant::now() >= deadline {
                    info!("proposer sessions still open after {GRACE:?}; closing them");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    safekeeper::offload::final_upload(timelines.open_timelines(), id, remote).await;
    tokio::task::spawn_blocking(move || timelines.shutdown()).await?;
    Ok(())
}

/// The connection limits from the flags and config file; dedicated connection threads only
/// with `--runtime per-connection`.
fn conn_limits(
    kind: RuntimeKind,
    max_connections: Option<usize>,
    connection_threads: Option<usize>,
    idle_timeout_secs: Option<u64>,
) -> Result<ConnLimits> {
    let default = ConnLimits::default();
    let limits = ConnLimits {
        dedicated_threads: match kind {
            RuntimeKind::PerConnection => connection_threads.unwrap_or(default.dedicated_threads),
            RuntimeKind::MultiThread | RuntimeKind::CurrentThread => 0,
        },
        max_connections: max_connections.unwrap_or(default.max_connections),
        idle_timeout: idle_timeout_secs.map_or(default.idle_timeout, Duration::from_secs),
    };
    if limits.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    if limits.idle_timeout.is_zero() {
        bail!("--idle-timeout-secs must be at least 1");
    }
    Ok(limits)
}

/// The gRPC server settings. Flow-control windows above anything a proposer keeps in flight
/// (the session stops reading at 64 MiB unsynced), fixed: no WINDOW_UPDATE round trip or BDP
/// ping on the append path. Frames up to 1 MiB carry a large append in few frames.
fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(64 << 20))
        .initial_connection_window_size(Some(128 << 20))
        .http2_adaptive_window(Some(false))
        .max_frame_size(Some(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_keys_load_and_a_misspelt_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("safekeeper.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            DaemonArgs::with_config(path.clone())
                .load::<FileConfig>(DEFAULT_LISTEN.parse().unwrap())
        };
        let (d, own) = load("data_dir = \"/d\"\nid = 2\nmax_connections = 8").unwrap();
        assert_eq!(d.data_dir, PathBuf::from("/d"));
        assert_eq!((own.id, own.max_connections), (Some(2), Some(8)));
        let e = format!("{:#}", load("data_dir = \"/d\"\nidd = 2").unwrap_err());
        assert!(e.contains("unknown field `idd`"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
}
