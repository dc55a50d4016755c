//! `compute pagefs`: mounts the page filesystem of a lazy compute and serves it in the
//! foreground until SIGTERM/SIGINT (then unmounts, lazily if files are open) or until
//! something else unmounts it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use walproto::Lsn;

use super::grpc::{keep_lease, GrpcSource};
use super::Options;

/// How long a stop waits for the kernel to end the session after the lazy unmount.
const UNMOUNT_WAIT: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct PagefsArgs {
    /// The slim basebackup: every file of the data directory but relation files.
    #[arg(long, value_name = "DIR")]
    pub local: PathBuf,
    /// An empty directory to mount the data directory on.
    #[arg(long, value_name = "DIR")]
    pub mount: PathBuf,
    /// The pageserver's gRPC address.
    #[arg(long, value_name = "HOST:PORT")]
    pub pageserver: String,
    /// Tenant id (32 hex characters).
    #[arg(long, value_name = "HEX")]
    pub tenant: String,
    /// Timeline id (32 hex characters).
    #[arg(long, value_name = "HEX")]
    pub timeline: String,
    /// The LSN the compute starts at: relation files as they were then.
    #[arg(long, value_name = "X/Y")]
    pub lsn: Lsn,
    /// A read-only compute (pages are read at --lsn either way; hint-bit writes stay in the
    /// overlay).
    #[arg(long)]
    pub read_only: bool,
    /// Written once the mount answers.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// The LSN lease's time to live, renewed every third of it (0: no lease).
    #[arg(long, default_value_t = 600)]
    pub lease_ttl_secs: u64,
    /// Who holds the lease (`strata` says `compute:<name>`; default `pagefs:<pid>`): the lease
    /// is revoked at a clean stop, and no other holder's lease on the LSN is touched.
    #[arg(long, value_name = "NAME")]
    pub lease_owner: Option<String>,
    /// How long a read retries an unreachable pageserver before failing with EIO.
    #[arg(long, default_value_t = 30)]
    pub read_deadline_secs: u64,
    /// A file holding the token (scope `tenant:<id>`) to call a pageserver that checks tokens.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) the pageserver's certificate is checked against: it is called
    /// over TLS (https) with it, in clear without it.
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
}

fn check_id(name: &str, id: &str) -> Result<()> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--{name} must be 32 hex characters, got {id:?}");
    }
    Ok(())
}

pub fn run(args: PagefsArgs) -> Result<()> {
    check_id("tenant", &args.tenant)?;
    check_id("timeline", &args.timeline)?;
    if args.lsn == Lsn::INVALID {
        bail!("--lsn must not be 0/0");
    }
    if args.read_deadline_secs == 0 {
        bail!("--read-deadline-secs must be at least 1");
    }
    let token = match &args.token_file {
        Some(p) => Some(
            strata_auth::read_token_file(p)
                .with_context(|| format!("--token-file {}", p.display()))?,
        ),
        None => None,
    };
    let tls = args
        .tls_ca
        .as_deref()
        .map(strata_auth::ClientTls::from_ca_file)
        .transpose()
        .context("--tls-ca")?;
    let source = Arc::new(
        GrpcSource::new(
            &args.pageserver,
            (&args.tenant, &args.timeline, args.lsn.0),
            token,
            tls,
        )
        .context("starting the gRPC client")?,
    );
    let owner = args
        .lease_owner
        .clone()
        .unwrap_or_else(|| format!("pagefs:{}", std::process::id()));
    let lease = (args.lease_ttl_secs > 0).then(|| {
        Lease::keep(
            &source,
            args.lsn,
            Duration::from_secs(args.lease_ttl_secs),
            owner,
        )
    });
    let mut opts = Options::new(&args.local, &args.mount);
    opts.read_deadline = Duration::from_secs(args.read_deadline_secs);
    let mounted = match super::mount(&opts, source) {
        Ok(m) => m,
        Err(e) => {
            if let Some(lease) = lease {
                lease.end();
            }
            return Err(e.context("mounting the page filesystem"));
        }
    };
    if let Some(ready) = &args.ready_file {
        write_ready_file(ready, &args)?;
    }
    tracing::info!(
        "serving {} at {} ({})",
        args.mount.display(),
        args.lsn,
        if args.read_only {
            "read-only"
        } else {
            "read-write"
        }
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: unmounting"); break; }
                _ = term.recv() => { tracing::info!("SIGTERM: unmounting"); break; }
                _ = tick.tick() => if !mounted.is_serving() {
                    tracing::info!("{} was unmounted", args.mount.display());
                    break;
                }
            }
        }
        anyhow::Ok(())
    })?;
    let unmounted = mounted.unmount(UNMOUNT_WAIT);
    if let Some(lease) = lease {
        lease.end();
    }
    unmounted
}

/// The compute's lease on its LSN, renewed in a thread of its own.
struct Lease {
    source: Arc<GrpcSource>,
    lsn: Lsn,
    owner: String,
    stop: Arc<AtomicBool>,
    renewer: std::thread::JoinHandle<()>,
}

impl Lease {
    fn keep(source: &Arc<GrpcSource>, lsn: Lsn, ttl: Duration, owner: String) -> Lease {
        let stop = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (source, stop, owner) = (source.clone(), stop.clone(), owner.clone());
            std::thread::spawn(move || keep_lease(source, ttl, &owner, stop))
        };
        Lease {
            source: source.clone(),
            lsn,
            owner,
            stop,
            renewer,
        }
    }

    /// Stops renewing and revokes the lease: nothing reads at the LSN for this compute any
    /// more, so GC need not keep it. A failed revoke leaves the lease to expire.
    fn end(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.renewer.join();
        match self.source.revoke_lease(&self.owner) {
            Ok(()) => tracing::info!("revoked the lease of {} on {}", self.owner, self.lsn),
            Err(e) => tracing::warn!(
                "could not revoke the lease of {} on {} ({e}); it expires by itself",
                self.owner,
                self.lsn
            ),
        }
    }
}

fn write_ready_file(path: &std::path::Path, args: &PagefsArgs) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", args.mount.display()))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
