//! The `pageserver` binary: tenants and timelines under `--data-dir`, served over gRPC
//! (`strata.pageserver.v1.Pageserver`) on `--listen`.
//!
//! Configuration comes from an optional TOML file (`--config`) with the same keys as the
//! flags (`data_dir`, `listen`, `remote_storage`, `gc_interval`, …); flags win. The flags the
//! daemons share (`--data-dir`, `--listen`, `--metrics-listen`, `--auth-public-key`,
//! `--no-auth`, `--config`) come from `strata_daemon`. Once the server
//! accepts connections it prints exactly `pageserver listening on <addr>` on stdout (the real
//! port when asked for port 0); logs go to stderr (`RUST_LOG`, default `info`). Every
//! `--gc-interval` (default 10 min, 0: off) every tenant is garbage collected. SIGTERM or
//! SIGINT stop it cleanly: no new requests, periodic GC stopped (the tenant being collected
//! finishes), WAL streams stopped, every timeline flushed, a last upload to remote storage.
//!
//! With remote storage, every tenant and timeline the object store holds and the data
//! directory lacks is restored before the tenants are loaded (`remote::startup`), so a
//! pageserver whose disk was wiped comes back with its timelines and resumes ingest from the
//! safekeepers where the object store's copy ends.
//!
//! With `--metrics-listen ADDR` (config key `metrics_listen`) it serves Prometheus metrics on
//! `http://ADDR/metrics` and `/health/live`, `/health/ready` (ready once the tenants are
//! loaded), and prints `pageserver metrics on <addr>`; the gRPC port answers the standard
//! health service (`grpc.health.v1.Health`) too.
//!
//! With `--auth-public-key FILE` (config key `auth_public_key`) every gRPC call needs a token
//! the cluster signed whose scope allows it (`pageserver::service::needed_scope`); the
//! health service stays open. `--safekeeper-token-file` (`safekeeper_token_file`) is the
//! token the walreceivers send the safekeepers. A listen address beyond loopback is refused
//! with auth off unless `--no-auth` (`no_auth = true`) says so.
//!
//! With `--tls-cert FILE --tls-key FILE` (`tls_cert`, `tls_key`) the gRPC port speaks only
//! TLS. A listen address beyond loopback is refused without them unless `--no-tls`
//! (`no_tls = true`) says so.

// mimalloc: ingest allocates and frees many small values across threads (decode and
// ingest); it measured ~10% faster than the system allocator (benches/ingest_vs_recovery.rs).
// Built with `no_thp` (Cargo.toml): with transparent huge pages, every first touch of fresh
// heap memory (WAL chunks, decode buffers, layer buffers) faulted in and zeroed a whole 2 MiB
// page, over a quarter of the served ingest's CPU; without them it took a quarter to a third
// less CPU per GB (docs/benchmarks.md, "Ingest CPU").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Deserialize;
use strata_auth::{check_listener, read_token_file, TokenVerifier};
use strata_daemon::{announce, DaemonArgs};
use strata_metrics::http::ReadyCheck;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tracing::{error, info};

use pageserver::metrics::TimelineCollector;
use pageserver::remote::{restore_missing, RemoteLayerSource, RemoteStorage};
use pageserver::service::background::DEFAULT_GC_INTERVAL;
use pageserver::service::{PageserverService, ServiceAuth};
use pageserver::tenant::TenantManager;

#[derive(Parser, Debug)]
#[command(
    name = "pageserver",
    version,
    about = "Strata pageserver: WAL into layer files, pages at any LSN, branches"
)]
struct Args {
    /// The data directory holds the tenants and timelines
    /// (`tenants/<tenant>/timelines/<timeline>/`).
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Object store for layer files: a directory, file://…, or s3://bucket/prefix.
    #[arg(long, value_name = "URL")]
    remote_storage: Option<String>,
    /// How often every tenant is garbage collected (each timeline's history below its GC
    /// cutoff — the tenant's pitr_interval, branch points and leases — is removed), as
    /// <n><unit> with unit ms, s, m, h or d; 0 turns periodic GC off (the Gc RPC and
    /// `strata gc` still work). A tenant whose GC is already running is skipped that round.
    /// Default 10m.
    #[arg(long, value_name = "INTERVAL", value_parser = parse_duration)]
    gc_interval: Option<Duration>,
    /// A file holding the token (scope `safekeeper`) the walreceivers give the safekeepers as
    /// their replication password.
    #[arg(long, value_name = "FILE")]
    safekeeper_token_file: Option<PathBuf>,
    /// The gRPC service's TLS certificate (PEM, the chain after it): with --tls-key the port
    /// speaks only TLS. Needed for a listen address beyond loopback, unless --no-tls.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Serve a listen address beyond loopback without TLS (refused otherwise).
    #[arg(long)]
    no_tls: bool,
}

/// `0` or `<n><unit>` with unit ms, s, m, h or d.
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit: write e.g. 10m, 30s, 500ms, 1h or 0 (off)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (ms, s, m, h, d), e.g. 10m"))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => return Err(format!("{s:?}: unknown unit {u:?}; use ms, s, m, h or d")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// The config file's keys beyond the shared ones of [`DaemonArgs`].
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    remote_storage: Option<String>,
    /// Like `--gc-interval`, e.g. "10m" or "0".
    gc_interval: Option<String>,
    safekeeper_token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    no_tls: Option<bool>,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:9898";
/// The gRPC service's name, as health checks ask for it.
const PAGESERVER_SERVICE: &str = "strata.pageserver.v1.Pageserver";

fn main() {
    strata_daemon::main("pageserver", run)
}

fn run() -> Result<()> {
    let args = Args::parse();
    let (daemon, file) = args.daemon.load::<FileConfig>(DEFAULT_LISTEN.parse()?)?;
    let (data_dir, listen) = (daemon.data_dir, daemon.listen);
    let remote = match args.remote_storage.or(file.remote_storage) {
        Some(url) => {
            Some(RemoteStorage::from_url(&url).with_context(|| format!("remote storage {url:?}"))?)
        }
        None => None,
    };
    let gc_interval = match (args.gc_interval, &file.gc_interval) {
        (Some(d), _) => d,
        (None, Some(s)) => {
            parse_duration(s).map_err(|e| anyhow::anyhow!("gc_interval in the config file: {e}"))?
        }
        (None, None) => DEFAULT_GC_INTERVAL,
    };
    let auth = service_auth(
        daemon.auth_public_key,
        args.safekeeper_token_file.or(file.safekeeper_token_file),
    )?;
    check_listener(
        "the gRPC address",
        listen,
        auth.verifier.is_some(),
        daemon.no_auth,
    )?;
    let server = strata_auth::grpc_server_tls(
        tonic::transport::Server::builder(),
        listen,
        (
            args.tls_cert.or(file.tls_cert).as_deref(),
            args.tls_key.or(file.tls_key).as_deref(),
        ),
        args.no_tls || file.no_tls.unwrap_or(false),
    )?;
    fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The endpoint answers from the start: live while tenants load, ready once they are.
    let loaded = Arc::new(AtomicBool::new(false));
    if let Some(addr) = daemon.metrics_listen {
        pageserver::metrics::init();
        let flag = loaded.clone();
        let ready: ReadyCheck = Arc::new(move || match flag.load(Ordering::Acquire) {
            true => Ok(()),
            false => Err("tenants are being loaded".into()),
        });
        let bound = rt.block_on(strata_metrics::http::start(addr, ready))?;
        announce(&format!("pageserver metrics on {bound}"));
    }
    if let Some(remote) = &remote {
        // A wiped (or new) data directory gets what the object store holds before loading.
        match rt.block_on(restore_missing(remote, &data_dir)) {
            Ok(rep) => {
                info!(
                    remote_tenants = rep.remote_tenants,
                    restored = rep.timelines_restored.len(),
                    present = rep.timelines_present,
                    failed = rep.failed.len(),
                    "remote storage checked"
                );
            }
            // With local tenants, serve them (their uploaders retry); with none, the object
            // store is all there is: refuse to start empty.
            Err(e) if has_local_tenants(&data_dir) => {
                error!(error = %e, "could not check remote storage; starting with the local tenants");
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "restoring the empty data directory {} from {remote}",
                    data_dir.display()
                )))
            }
        }
    }
    // Timelines restored on demand download from the configured store (or one their URL names).
    let layers = Arc::new(RemoteLayerSource::new(remote.as_ref()));
    let manager = Arc::new(
        TenantManager::load_with(&data_dir, layers)
            .with_context(|| format!("loading {}", data_dir.display()))?,
    );
    let collector = TimelineCollector::register(manager.clone(), remote.is_some());
    // Lags in seconds count from when WAL was first seen, not from the next scrape.
    std::thread::Builder::new()
        .name("metrics-sampler".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            collector.sample();
        })
        .context("starting the metrics sampler")?;
    rt.block_on(serve(
        manager,
        listen,
        remote,
        gc_interval,
        loaded,
        auth,
        server,
    ))
}

/// The verifier of the calls' tokens and the token for the safekeepers, from their files.
fn service_auth(
    public_key: Option<PathBuf>,
    safekeeper_token_file: Option<PathBuf>,
) -> Result<ServiceAuth> {
    let verifier = match &public_key {
        Some(path) => {
            let v = TokenVerifier::from_public_key_file(path)
                .context("loading the public key of --auth-public-key")?;
            info!(public_key = %path.display(), "auth on: every call needs a token signed with this key");
            Some(Arc::new(v))
        }
        None => {
            info!("auth off: every call is allowed (start with --auth-public-key to check tokens)");
            None
        }
    };
    let safekeeper_token = safekeeper_token_file
        .map(|p| read_token_file(&p).context("reading --safekeeper-token-file"))
        .transpose()?;
    Ok(ServiceAuth {
        verifier,
        safekeeper_token,
    })
}

/// Whether the data directory holds any tenant.
fn has_local_tenants(data_dir: &std::path::Path) -> bool {
    fs::read_dir(pageserver::tenant::layout::tenants_dir(data_dir))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

async fn serve(
    manager: Arc<TenantManager>,
    listen: SocketAddr,
    remote: Option<RemoteStorage>,
    gc_interval: Duration,
    loaded: Arc<AtomicBool>,
    auth: ServiceAuth,
    mut server: tonic::transport::Server,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the gRPC address {listen}"))?;
    let addr = listener.local_addr()?;
    let service = PageserverService::start_with_auth(manager.clone(), remote, auth);
    service.start_periodic_gc(gc_interval);
    let timelines: usize = manager.tenants().iter().map(|t| t.timelines().len()).sum();
    info!(%addr, data_dir = %manager.data_dir().display(), tenants = manager.tenants().len(),
          timelines, "pageserver starting");
    // The handlers are installed before the first line is printed: a SIGTERM right after
    // it is a clean stop, not the default action's death.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        info!("shutting down");
    };
    // The listener is bound, so connections are accepted (queued) from here on.
    announce(&format!("pageserver listening on {addr}"));
    // GetPage is small request/response traffic: Nagle's algorithm with delayed ACKs would
    // add ~40 ms to each call.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(PAGESERVER_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    loaded.store(true, Ordering::Release);
    server
        .add_service(health_service)
        .add_service(service.clone().into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server failed")?;
    service.shutdown().await;
    info!("pageserver stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86400)));
        for bad in ["", "10", "m", "10x", "-1s", "1.5s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_file_keys_load_and_a_misspelt_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pageserver.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            DaemonArgs::with_config(path.clone())
                .load::<FileConfig>(DEFAULT_LISTEN.parse().unwrap())
        };
        let (d, own) = load("data_dir = \"/d\"\ngc_interval = \"10m\"\nno_tls = true").unwrap();
        assert_eq!(d.data_dir, PathBuf::from("/d"));
        assert_eq!(
            (own.gc_interval.as_deref(), own.no_tls),
            (Some("10m"), Some(true))
        );
        let e = format!(
            "{:#}",
            load("data_dir = \"/d\"\ngc_intreval = \"10m\"").unwrap_err()
        );
        assert!(e.contains("unknown field `gc_intreval`"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
}
