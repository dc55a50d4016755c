//! The page filesystem under a real Postgres 15 on a real FUSE mount. The page source is a
//! stopped Postgres's own data directory; the mounted directory holds only the non-relation
//! files (a slim copy). Postgres is the oracle: the lazy compute must give the same answers
//! as Postgres on a plain copy of the same data directory, statement by statement.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use compute::pagefs::source::copy_data_dir;
use compute::pagefs::{self, DataDirSource, MountedFs, Options};
use strata_tests::{InitOptions, PgCluster, StopMode};

fn settings() -> Vec<(String, String)> {
    vec![
        ("shared_buffers".into(), "128kB".into()),
        ("autovacuum".into(), "off".into()),
        ("fsync".into(), "off".into()),
    ]
}

/// Postgres on a page filesystem. Fields drop in order: Postgres stops before the unmount.
struct Lazy {
    pg: PgCluster,
    mounted: MountedFs,
    source: Arc<DataDirSource>,
    /// The local (slim) directory behind the mount.
    local: std::path::PathBuf,
}

/// A Postgres whose data directory is a page filesystem over `orig`'s relation files (`orig`
/// stopped), with a slim copy of its other files as the local directory.
fn lazy_cluster(orig: &PgCluster, read_deadline: Duration) -> Result<Lazy> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let source = Arc::new(DataDirSource::new(orig.data_dir())?);
    let local = orig.base_dir().join("slim");
    copy_data_dir(orig.data_dir(), &local, false)?;
    detach_tablespaces(&local, false)?;
    let mut mounted = None;
    let cluster = PgCluster::from_data_dir(
        |data| {
            std::fs::create_dir(data)?;
            let mut opts = Options::new(&local, data);
            opts.read_deadline = read_deadline;
            mounted = Some(pagefs::mount(&opts, source.clone())?);
            Ok(())
        },
        &settings(),
    )?;
    Ok(Lazy {
        pg: cluster,
        mounted: mounted.context("the fill closure mounted")?,
        source,
        local,
    })
}

/// A plain full copy of `orig`'s data directory (`orig` stopped).
fn full_copy(orig: &PgCluster) -> Result<PgCluster> {
    PgCluster::from_data_dir(
        |data| {
            copy_data_dir(orig.data_dir(), data, true)?;
            detach_tablespaces(data, true)
        },
        &settings(),
    )
}

/// A copy's `pg_tblspc` links still point at the original's tablespaces. A full copy gets its
/// own copy of each (an in-place tablespace directory); a slim one a link to where a slim
/// basebackup's links point, `../../tablespaces/<oid>`, which does not exist (the mount
/// links it to a directory of virtual relation files of its own).
fn detach_tablespaces(data: &Path, full: bool) -> Result<()> {
    for entry in std::fs::read_dir(data.join("pg_tblspc"))? {
        let link = entry?.path();
        let target = std::fs::read_link(&link)?;
        std::fs::remove_file(&link)?;
        if full {
            copy_data_dir(&target, &link, true)?;
        } else {
            let oid = link.file_name().context("a pg_tblspc entry")?;
            std::os::unix::fs::symlink(Path::new("../../tablespaces").join(oid), &link)?;
        }
    }
    Ok(())
}

const WORKLOAD: &str = "
CREATE TABLE items (id int PRIMARY KEY, owner text, body text);
INSERT INTO items SELECT g, 'owner' || (g % 97), repeat(md5(g::text), 1 + g % 5)
  FROM generate_series(1, 20000) g;
CREATE INDEX items_owner ON items (owner);
CREATE TABLE docs (id int PRIMARY KEY, doc text);
INSERT INTO docs SELECT g, repeat(md5(g::text), 400) FROM generate_series(1, 60) g;
CREATE UNLOGGED TABLE scratch (k int, v text);
INSERT INTO scratch SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
CREATE TABLE doomed AS SELECT g AS id FROM generate_series(1, 5000) g;
CREATE DATABASE other;
CHECKPOINT;
";

/// The same statements on the lazy compute and on the plain copy: the read-write half.
const CHANGES: &str = "
INSERT INTO items SELECT g, 'late' || (g % 13), md5(g::text) FROM generate_series(20001, 40000) g;
UPDATE items SET body = body || 'x' WHERE id % 7 = 0;
DELETE FROM items WHERE id > 30000;
VACUUM items;
DROP TABLE doomed;
CREATE INDEX items_body ON items (substr(body, 1, 8));
CLUSTER items USING items_owner;
VACUUM FULL docs;
UPDATE docs SET doc = doc || 'tail' WHERE id < 10;
INSERT INTO scratch SELECT g, 'more' FROM generate_series(3001, 4000) g;
CREATE DATABASE fresh;
DROP DATABASE other;
CHECKPOINT;
";

const CHECK: &str = "
SELECT count(*), sum(id), md5(string_agg(owner || body, ',' ORDER BY id)) FROM items;
SELECT count(*), md5(string_agg(doc, ',' ORDER BY id)) FROM docs;
SELECT count(*), md5(string_agg(v, ',' ORDER BY k)) FROM scratch;
SELECT count(*) FROM items WHERE owner = 'owner5';
SELECT count(*) FROM pg_class WHERE relname = 'doomed';
SELECT datname FROM pg_database ORDER BY 1;
";

fn dumps(c: &PgCluster) -> Result<String> {
    Ok(c.pg_dump("postgres", &[])? + &c.psql(CHECK)?)
}

#[test]
fn lazy_postgres_reads_and_writes_like_a_full_copy() -> Result<()> {
    let started = Instant::now();
    let orig = PgCluster::init(&InitOptions::default().set("autovacuum", "off"))?;
    orig.start()?;
    orig.psql(WORKLOAD)?;
    orig.stop(StopMode::Fast)?;

    let copy = full_copy(&orig)?;
    let l = lazy_cluster(&orig, Duration::from_secs(10))?;
    let (lazy, source) = (&l.pg, &l.source);
    copy.start()?;
    lazy.start()?;
    assert_eq!(
        dumps(lazy)?,
        dumps(&copy)?,
        "the lazy compute reads its LSN"
    );
    assert!(
        source.pages_served() > 0,
        "relation pages came from the source"
    );
    lazy.psql_db("fresh", "SELECT 1")
        .expect_err("no database fresh yet");

    copy.psql(CHANGES)?;
    lazy.psql(CHANGES)?;
    for c in [&copy, lazy] {
        c.psql_db(
            "fresh",
            "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
        )?;
    }
    assert_eq!(
        dumps(lazy)?,
        dumps(&copy)?,
        "the lazy compute reads its writes"
    );
    let fresh = "SELECT count(*), sum(g) FROM t";
    assert_eq!(lazy.psql_db("fresh", fresh)?, copy.psql_db("fresh", fresh)?);

    // Postgres restarted on the same mount: everything it wrote is read back.
    lazy.stop(StopMode::Fast)?;
    lazy.start()?;
    assert_eq!(
        dumps(lazy)?,
        dumps(&copy)?,
        "after a restart on the same mount"
    );
    assert_eq!(lazy.psql_db("fresh", fresh)?, "1000|500500\n");

    lazy.stop(StopMode::Fast)?;
    l.mounted.unmount(Duration::from_secs(5))?;
    eprintln!("took {:?}", started.elapsed());
    Ok(())
}

#[test]
fn tablespace_relations_are_served_and_written_like_the_others() -> Result<()> {
    let orig = PgCluster::init(&InitOptions::default().set("autovacuum", "off"))?;
    let location = orig.make_postgres_dir("ts_location")?;
    orig.start()?;
    orig.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}';
         CREATE TABLE spaced (id int PRIMARY KEY USING INDEX TABLESPACE ts, v text) TABLESPACE ts;
         INSERT INTO spaced SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CHECKPOINT;",
        location.display()
    ))?;
    orig.stop(StopMode::Fast)?;

    let copy = full_copy(&orig)?;
    let l = lazy_cluster(&orig, Duration::from_secs(10))?;
    let lazy = &l.pg;
    copy.start()?;
    lazy.start()?;
    // The table's file is in the mount, virtual: not in the local directory.
    let file = lazy.psql("SELECT pg_relation_filepath('spaced')")?;
    let file = Path::new(file.trim());
    assert!(file.starts_with("pg_tblspc"), "{}", file.display());
    assert!(lazy.data_dir().join(file).metadata()?.len() > 0);
    // Postgres sees a tablespace link (a hot standby refuses anything else), into the mount.
    let oid = lazy.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'")?;
    let link = lazy.data_dir().join("pg_tblspc").join(oid.trim());
    assert!(link.is_symlink(), "{} is not a link", link.display());
    let target = std::fs::read_link(&link)?;
    let served = Path::new(pagefs::names::SERVED_TABLESPACES_DIR).join(oid.trim());
    assert_eq!(target, lazy.data_dir().canonicalize()?.join(&served));
    let location = lazy.psql(&format!("SELECT pg_tablespace_location({})", oid.trim()))?;
    assert_eq!(Path::new(location.trim()), target);
    let in_served = served.join(file.strip_prefix(Path::new("pg_tblspc").join(oid.trim()))?);
    assert!(
        lazy.data_dir().join(&in_served).metadata()?.len() > 0,
        "{} in the mount",
        in_served.display()
    );
    assert!(
        !l.local.join(&in_served).exists(),
        "{} is local",
        in_served.display()
    );
    const CHECK_SPACED: &str =
        "SELECT count(*), sum(id), md5(string_agg(v, ',' ORDER BY id)) FROM spaced;
        SELECT count(*) FROM spaced WHERE id BETWEEN 100 AND 200;
        SELECT count(*) FROM more;";
    let changes = "UPDATE spaced SET v = v || '!' WHERE id % 3 = 0;
        DELETE FROM spaced WHERE id > 15000;
        VACUUM spaced;
        CREATE TABLE more TABLESPACE ts AS SELECT g FROM generate_series(1, 5000) g;
        CHECKPOINT;";
    copy.psql(changes)?;
    lazy.psql(changes)?;
    let want = copy.psql(CHECK_SPACED)?;
    assert_eq!(lazy.psql(CHECK_SPACED)?, want);
    assert!(l.source.pages_served() > 0);
    lazy.stop(StopMode::Fast)?;
    lazy.start()?;
    assert_eq!(
        lazy.psql(CHECK_SPACED)?,
        want,
        "after a restart on the same mount"
    );
    lazy.stop(StopMode::Fast)?;
    l.mounted.unmount(Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn unreachable_source_fails_the_query_with_an_io_error_within_the_deadline() -> Result<()> {
    let orig = PgCluster::init(&InitOptions::default().set("autovacuum", "off"))?;
    orig.start()?;
    orig.psql(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g",
    )?;
    orig.stop(StopMode::Fast)?;

    let deadline = Duration::from_secs(3);
    let l = lazy_cluster(&orig, deadline)?;
    let (lazy, source) = (&l.pg, &l.source);
    lazy.start()?;
    source.set_unavailable(true);
    let t = Instant::now();
    let err = lazy
        .psql("SELECT count(*) FROM big")
        .expect_err("a query reading pages of an unreachable source must fail");
    let waited = t.elapsed();
    let msg = format!("{err:#}");
    assert!(msg.contains("could not read block"), "{msg}");
    assert!(
        waited >= deadline && waited < deadline + Duration::from_secs(15),
        "failed after {waited:?}, the deadline is {deadline:?}"
    );

    // Back: the same query gives the right answer (nothing wrong was cached).
    source.set_unavailable(false);
    assert_eq!(
        lazy.psql("SELECT count(*), sum(id) FROM big")?,
        "50000|1250025000\n"
    );
    lazy.stop(StopMode::Fast)?;
    l.mounted.unmount(Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn daemon_exits_with_a_message_on_bad_arguments_or_no_pageserver() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (local, mount) = (dir.path().join("local"), dir.path().join("mnt"));
    std::fs::create_dir(&local)?;
    std::fs::create_dir(&mount)?;
    std::fs::write(local.join("PG_VERSION"), "15\n")?;
    let run = |tenant: &str| {
        Command::new(env!("CARGO_BIN_EXE_compute"))
            .args(["pagefs", "--local"])
            .arg(&local)
            .arg("--mount")
            .arg(&mount)
            .args(["--pageserver", "127.0.0.1:1", "--tenant", tenant])
            .args(["--timeline", &"b".repeat(32), "--lsn", "0/16B3748"])
            .args(["--read-deadline-secs", "1", "--lease-ttl-secs", "0"])
            .output()
    };
    let out = run("nothex")?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tenant must be 32 hex"));

    let t = Instant::now();
    let out = run(&"a".repeat(32))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("listing the relation files"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(std::fs::read_dir(&mount)?.count(), 0, "nothing mounted");
    Ok(())
}

/// A stand-in for the pageserver's read path, serving `ListRelations`, `GetPages` and
/// `CreateLease` from a stopped Postgres's data directory over real gRPC (the real pageserver
/// implements them on branch w18-ps); every other call is UNIMPLEMENTED.
mod fake_pageserver {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use compute::pagefs::names::RelTag;
    use compute::pagefs::{DataDirSource, PageSource};
    use tokio_stream::Stream;
    use tonic::{Request, Response, Status, Streaming};
    use walproto::proto::pageserver as pb;
    use walproto::proto::pageserver::pageserver_server::{Pageserver, PageserverServer};

    type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    pub struct Fake {
        pub source: Arc<DataDirSource>,
        pub leases: Arc<AtomicU64>,
        /// The owners of the leases revoked, in order.
        pub revoked: Arc<std::sync::Mutex<Vec<String>>>,
    }

    // Written out as `async_trait` expands methods: the attribute does not see into macros.
    macro_rules! unimplemented_rpcs {
        ($($name:ident($req:ident) -> $resp:ident;)*) => {$(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _: Request<pb::$req>,
            ) -> Pin<Box<dyn std::future::Future<Output = Result<Response<pb::$resp>, Status>>
                + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async { Err(Status::unimplemented(stringify!($name))) })
            }
        )*};
    }

    #[tonic::async_trait]
    impl Pageserver for Fake {
        type BasebackupStream = BoxStream<pb::BasebackupChunk>;
        type GetPagesStream = BoxStream<pb::GetPagesResponse>;

        unimplemented_rpcs! {
            delete_tenant(DeleteTenantRequest) -> DeleteTenantResponse;
            list_leases(TimelineRequest) -> ListLeasesResponse;
            create_tenant(CreateTenantRequest) -> TenantInfo;
            list_tenants(ListTenantsRequest) -> ListTenantsResponse;
            import_timeline(ImportTimelineRequest) -> TimelineInfo;
            create_branch(CreateBranchRequest) -> TimelineInfo;
            list_timelines(ListTimelinesRequest) -> ListTimelinesResponse;
            timeline_status(TimelineRequest) -> TimelineInfo;
            delete_timeline(TimelineRequest) -> DeleteTimelineResponse;
            set_safekeepers(SetSafekeepersRequest) -> TimelineInfo;
            lsn_for_timestamp(LsnForTimestampRequest) -> LsnForTimestampResponse;
            list_restore_points(TimelineRequest) -> ListRestorePointsResponse;
            compact(TimelineRequest) -> CompactResponse;
            flush(TimelineRequest) -> TimelineInfo;
            get_page(GetPageRequest) -> GetPageResponse;
            gc(GcRequest) -> GcResponse;
            rel_size(RelRequest) -> RelSizeResponse;
            rel_exists(RelRequest) -> RelExistsResponse;
            db_size(DbSizeRequest) -> DbSizeResponse;
            slru_segment(SlruSegmentRequest) -> SlruSegmentResponse;
            resume_ingest(TimelineRequest) -> TimelineInfo;
            get_tenant_config(GetTenantConfigRequest) -> TenantConfigResponse;
            set_tenant_config(SetTenantConfigRequest) -> TenantConfigResponse;
        }

        async fn basebackup(
            &self,
            _: Request<pb::BasebackupRequest>,
        ) -> Result<Response<Self::BasebackupStream>, Status> {
            Err(Status::unimplemented("basebackup"))
        }

        async fn create_lease(
            &self,
            req: Request<pb::CreateLeaseRequest>,
        ) -> Result<Response<pb::LeaseResponse>, Status> {
            self.leases.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(pb::LeaseResponse {
                lsn: req.into_inner().lsn,
                expires_unix_ms: 0,
            }))
        }

        async fn revoke_lease(
            &self,
            req: Request<pb::RevokeLeaseRequest>,
        ) -> Result<Response<pb::ListLeasesResponse>, Status> {
            let owner = req.into_inner().owner;
            self.revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(owner);
            Ok(Response::new(pb::ListLeasesResponse::default()))
        }

        async fn list_relations(
            &self,
            req: Request<pb::ListRelationsRequest>,
        ) -> Result<Response<pb::ListRelationsResponse>, Status> {
            let deadline = Instant::now() + Duration::from_secs(5);
            let forks = self
                .source
                .list_relations(deadline)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let files = forks
                .into_iter()
                .map(|f| pb::RelationFile {
                    spc: f.tag.spc,
                    db: f.tag.db,
                    rel: f.tag.rel,
                    fork: f.tag.fork,
                    nblocks: f.nblocks,
                    source_fork: f.source_fork,
                })
                .collect();
            Ok(Response::new(pb::ListRelationsResponse {
                files,
                lsn: req.into_inner().lsn,
            }))
        }

        async fn get_pages(
            &self,
            req: Request<Streaming<pb::GetPagesRequest>>,
        ) -> Result<Response<Self::GetPagesStream>, Status> {
            let mut requests = req.into_inner();
            let source = self.source.clone();
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            tokio::spawn(async move {
                while let Ok(Some(r)) = requests.message().await {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    let mut pages = Vec::new();
                    let mut error = None;
                    for b in &r.blocks {
                        let tag = RelTag {
                            spc: b.spc,
                            db: b.db,
                            rel: b.rel,
                            fork: b.fork,
                        };
                        match source.get_pages(tag, b.blkno, 1, deadline) {
                            Ok(mut p) => pages.append(&mut p),
                            Err(e) => {
                                error = Some(pb::PagesError {
                                    code: tonic::Code::NotFound as i32,
                                    message: e.to_string(),
                                });
                                break;
                            }
                        }
                    }
                    if error.is_some() {
                        pages.clear();
                    }
                    let resp = pb::GetPagesResponse {
                        request_id: r.request_id,
                        pages,
                        lsn: r.lsn,
                        error,
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Response::new(Box::pin(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )))
        }
    }

    /// A running fake pageserver; `stop` kills it as a crash would (streams cut).
    pub struct Running {
        rt: Option<tokio::runtime::Runtime>,
    }

    impl Running {
        pub fn start(port: u16, fake: Fake) -> anyhow::Result<Running> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))?;
            rt.spawn(
                tonic::transport::Server::builder()
                    .add_service(PageserverServer::new(fake))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
            );
            Ok(Running { rt: Some(rt) })
        }

        pub fn stop(mut self) {
            if let Some(rt) = self.rt.take() {
                rt.shutdown_background();
            }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(rt) = self.rt.take() {
                rt.shutdown_background();
            }
        }
    }
}

/// The `compute pagefs` daemon; stopped with SIGTERM (SIGKILL and a lazy unmount if that
/// fails) when dropped.
struct Daemon {
    child: std::process::Child,
    mount: std::path::PathBuf,
}

impl Daemon {
    fn terminate(&mut self, wait: Duration) -> Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "compute pagefs did not exit within {wait:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(10)).is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

/// Postgres on a mount served by the `compute pagefs` daemon; Postgres stops (drops) first.
struct DaemonCluster {
    pg: PgCluster,
    daemon: Daemon,
    log: std::path::PathBuf,
}

/// Starts `compute pagefs` over the (fake) pageserver at `port` on a slim copy of `orig`
/// (stopped), waits for its ready file, and gives the mount to a Postgres (not started).
fn daemon_cluster(orig: &PgCluster, port: u16) -> Result<DaemonCluster> {
    let local = orig.base_dir().join("slim");
    copy_data_dir(orig.data_dir(), &local, false)?;
    let target = DaemonTarget {
        addr: format!("127.0.0.1:{port}"),
        tenant: "a".repeat(32),
        timeline: "b".repeat(32),
        lsn: "0/16B3748".into(),
    };
    daemon_on(orig, &local, &target)
}

/// Which pageserver timeline and LSN the daemon serves.
struct DaemonTarget {
    addr: String,
    tenant: String,
    timeline: String,
    lsn: String,
}

/// Starts `compute pagefs` on the slim directory `local` for `target`, waits for its ready
/// file, and gives the mount to a Postgres (not started); scratch files go in `orig`'s
/// directory.
fn daemon_on(orig: &PgCluster, local: &Path, target: &DaemonTarget) -> Result<DaemonCluster> {
    let log = orig.base_dir().join("pagefs.log");
    let mut daemon = None;
    let pg = PgCluster::from_data_dir(
        |data| {
            std::fs::create_dir(data)?;
            daemon = Some(spawn_daemon(local, data, target, None, orig.base_dir())?);
            Ok(())
        },
        &settings(),
    )?;
    Ok(DaemonCluster {
        pg,
        daemon: daemon.context("the daemon started")?,
        log,
    })
}

/// Runs `compute pagefs` (as `run_as` if given) mounting `local` on `mount` for `target`, its
/// ready file and log (`pagefs.log`) in `scratch`; returns once the ready file is there.
fn spawn_daemon(
    local: &Path,
    mount: &Path,
    target: &DaemonTarget,
    run_as: Option<strata_tests::os_user::RunAs>,
    scratch: &Path,
) -> Result<Daemon> {
    let ready = scratch.join("pagefs.ready");
    let log = scratch.join("pagefs.log");
    let compute = Path::new(env!("CARGO_BIN_EXE_compute"));
    let child = strata_tests::os_user::command_as(run_as, compute)
        .args(["pagefs", "--local"])
        .arg(local)
        .arg("--mount")
        .arg(mount)
        .args(["--pageserver", &target.addr])
        .args(["--tenant", &target.tenant, "--timeline", &target.timeline])
        .args(["--lsn", &target.lsn, "--read-deadline-secs", "30"])
        .args(["--lease-ttl-secs", "3", "--ready-file"])
        .arg(&ready)
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let daemon = Daemon {
        child,
        mount: mount.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no ready file within 30 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(daemon)
}

/// A fake pageserver serving `orig`'s (stopped) data directory on a free port.
fn serve_fake_pageserver(orig: &PgCluster) -> Result<(u16, fake_pageserver::Running)> {
    let fake = fake_pageserver::Fake {
        source: Arc::new(DataDirSource::new(orig.data_dir())?),
        leases: Arc::default(),
        revoked: Arc::default(),
    };
    let port = strata_tests::pg::free_port()?;
    Ok((port, fake_pageserver::Running::start(port, fake)?))
}

/// Non-root FUSE needs `/dev/fuse` open to every user: fusermount3 opens it as the calling
/// user on purpose, and Debian's udev rule makes it 0666. A container may leave it root's
/// alone; then (as root) it is given the mode Debian gives it.
fn let_users_open_dev_fuse() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let mode = std::fs::metadata("/dev/fuse")?.permissions().mode() & 0o777;
    if mode & 0o006 != 0o006 {
        eprintln!("/dev/fuse is {mode:o}: making it 0666, as Debian's udev rule does");
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666))?;
    }
    Ok(())
}

/// The daemon run as the Postgres OS user, not root (mounted by fusermount3, without
/// allow_other), on a directory of that user's: Postgres, the same user, reads through it as
/// from a plain copy, root is kept out, and SIGTERM unmounts.
#[test]
fn the_daemon_serves_a_single_user_without_root() -> Result<()> {
    let run_as = strata_tests::os_user::postgres_user()?;
    let_users_open_dev_fuse()?;
    let orig = PgCluster::init(&InitOptions::default().set("autovacuum", "off"))?;
    orig.start()?;
    orig.psql(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g",
    )?;
    orig.stop(StopMode::Fast)?;
    const SCAN: &str = "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM t";
    let expect = {
        let plain = full_copy(&orig)?;
        plain.start()?;
        plain.psql(SCAN)?
    };
    let (port, _server) = serve_fake_pageserver(&orig)?;
    // A configured slim copy (root cannot write through the mount later), the Postgres
    // user's, moved aside as the local directory; an empty directory of that user's in its
    // place is the mount point.
    let pg = PgCluster::from_data_dir(
        |data| Ok(copy_data_dir(orig.data_dir(), data, false)?),
        &settings(),
    )?;
    let data = pg.data_dir().to_path_buf();
    let local = pg.base_dir().join("slim");
    std::fs::rename(&data, &local)?;
    std::fs::create_dir(&data)?;
    strata_tests::os_user::give_to(run_as, &data)?;
    let target = DaemonTarget {
        addr: format!("127.0.0.1:{port}"),
        tenant: "a".repeat(32),
        timeline: "b".repeat(32),
        lsn: "0/16B3748".into(),
    };
    let mut daemon = spawn_daemon(&local, &data, &target, run_as, pg.base_dir())?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*data.to_string_lossy()))
        .context("the mount is not in the mount table")?;
    assert!(!line.contains("allow_other"), "{line}");
    if let Some(user) = run_as {
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id()))?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .context("no Uid line")?;
        assert_eq!(uid, user.uid.to_string(), "the daemon runs as the user");
        let err = std::fs::metadata(data.join("PG_VERSION")).expect_err("root got in");
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    }
    pg.start()?;
    assert_eq!(pg.psql(SCAN)?, expect);
    pg.stop(StopMode::Fast)?;
    let status = daemon.terminate(Duration::from_secs(15))?;
    assert!(status.success(), "compute pagefs exited with {status}");
    assert!(!is_mounted(&data), "still mounted after SIGTERM");
    Ok(())
}

#[test]
fn daemon_serves_postgres_over_grpc_survives_a_pageserver_restart_and_unmounts() -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let orig = PgCluster::init(&InitOptions::default().set("autovacuum", "off"))?;
    orig.start()?;
    orig.psql(
        "CREATE TABLE early AS SELECT g AS id FROM generate_series(1, 1000) g;
         CREATE TABLE late AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 30000) g;",
    )?;
    orig.stop(StopMode::Fast)?;
    let source = Arc::new(DataDirSource::new(orig.data_dir())?);
    let leases = Arc::new(AtomicU64::new(0));
    let revoked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let fake = || fake_pageserver::Fake {
        source: source.clone(),
        leases: leases.clone(),
        revoked: revoked.clone(),
    };
    let port = strata_tests::pg::free_port()?;
    let server = fake_pageserver::Running::start(port, fake())?;

    let mut dc = daemon_cluster(&orig, port)?;
    let lazy = &dc.pg;
    lazy.start()?;
    assert_eq!(
        lazy.psql("SELECT count(*), sum(id) FROM early")?,
        "1000|500500\n"
    );

    // The pageserver goes away; a scan of pages never read waits for it to come back.
    server.stop();
    const LATE: &str = "SELECT count(*), sum(id), md5(string_agg(v, ',' ORDER BY id)) FROM late";
    let next_server = fake();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        fake_pageserver::Running::start(port, next_server)
    });
    let scan = lazy.psql(LATE);
    let server_again = restart.join().expect("the restart thread");
    let _server_again = server_again?;
    let expect = {
        let plain = full_copy(&orig)?;
        plain.start()?;
        plain.psql(LATE)?
    };
    assert_eq!(scan?, expect, "the scan across the restart is right");
    let daemon_log = std::fs::read_to_string(&dc.log)?;
    assert!(
        daemon_log.contains("retrying"),
        "the scan met the pageserver down: {daemon_log}"
    );
    assert!(
        leases.load(Ordering::SeqCst) >= 1,
        "the daemon took a lease"
    );

    // SIGTERM with a file open in the mount: a lazy unmount, and a clean exit.
    lazy.stop(StopMode::Fast)?;
    let daemon = &mut dc.daemon;
    let mount = daemon.mount.clone();
    let open_file = std::fs::File::open(mount.join("PG_VERSION"))?;
    assert!(is_mounted(&mount));
    let status = daemon.terminate(Duration::from_secs(15))?;
    assert!(status.success(), "compute pagefs exited with {status}");
    assert!(!is_mounted(&mount), "still mounted after SIGTERM");
    drop(open_file);
    // Its lease (its own: `pagefs:<pid>` without --lease-owner) is revoked at the stop.
    let revoked = revoked.lock().unwrap().clone();
    assert_eq!(revoked, [format!("pagefs:{}", daemon.child.id())]);
    Ok(())
}

#[test]
fn a_killed_daemon_makes_queries_fail_instead_of_hanging() -> Result<()> {
    let orig = PgCluster::init(&InitOptions::default().set("autovacuum", "off"))?;
    orig.start()?;
    orig.psql("CREATE TABLE big AS SELECT g AS id FROM generate_series(1, 50000) g")?;
    orig.stop(StopMode::Fast)?;
    let (port, _server) = serve_fake_pageserver(&orig)?;
    let mut dc = daemon_cluster(&orig, port)?;
    dc.pg.start()?;
    assert_eq!(dc.pg.psql("SELECT 1")?, "1\n");
    let pid_file = std::fs::read_to_string(dc.pg.data_dir().join("postmaster.pid"))?;
    let postmaster: i32 = pid_file.lines().next().unwrap_or("").trim().parse()?;

    dc.daemon.child.kill()?;
    dc.daemon.child.wait()?;
    let t = Instant::now();
    let err = dc
        .pg
        .psql("SELECT count(*) FROM big")
        .expect_err("a query on a dead filesystem must fail");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    let msg = format!("{err:#}");
    assert!(
        msg.contains("Transport endpoint is not connected") || msg.contains("could not"),
        "{msg}"
    );

    // Postgres cannot be stopped through its data directory any more: signal it.
    // SAFETY: signalling the postmaster this test started.
    unsafe { libc::kill(postmaster, libc::SIGQUIT) };
    let deadline = Instant::now() + Duration::from_secs(15);
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(postmaster, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above; a postmaster still there after 15 s is killed.
    unsafe { libc::kill(postmaster, libc::SIGKILL) };
    let status = Command::new("umount")
        .arg("-l")
        .arg(&dc.daemon.mount)
        .status()?;
    assert!(status.success(), "umount -l of the dead mount");
    Ok(())
}

#[test]
fn lazy_postgres_on_a_real_pageserver_equals_a_full_copy() -> Result<()> {
    use walproto::proto::pageserver as pb;
    use walproto::proto::pageserver::pageserver_client::PageserverClient;
    const TENANT: &str = "0123456789abcdef0123456789abcdef";
    const TIMELINE: &str = "fedcba9876543210fedcba9876543210";
    let orig = PgCluster::init(&InitOptions::default().set("autovacuum", "off"))?;
    orig.start()?;
    orig.psql(WORKLOAD)?;
    orig.stop(StopMode::Fast)?;

    let ps_dir = orig.base_dir().join("pageserver");
    std::fs::create_dir(&ps_dir)?;
    let ps = strata_tests::procs::Pageserver::start(&ps_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (lsn, slim) = rt.block_on(async {
        let deadline = Duration::from_secs(60);
        let mut c = tokio::time::timeout(
            deadline,
            PageserverClient::connect(format!("http://{}", ps.addr)),
        )
        .await??
        .max_decoding_message_size(64 << 20);
        c.create_tenant(pb::CreateTenantRequest {
            tenant_id: TENANT.into(),
            ..Default::default()
        })
        .await?;
        let tl = c
            .import_timeline(pb::ImportTimelineRequest {
                tenant_id: TENANT.into(),
                timeline_id: TIMELINE.into(),
                datadir: orig.data_dir().display().to_string(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let lsn = tl.last_record_end;
        let mut stream = c
            .basebackup(pb::BasebackupRequest {
                tenant_id: TENANT.into(),
                timeline_id: TIMELINE.into(),
                lsn,
                without_relation_files: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut tar = Vec::new();
        while let Some(chunk) = tokio::time::timeout(deadline, stream.message()).await?? {
            tar.extend_from_slice(&chunk.data);
        }
        anyhow::Ok((lsn, tar))
    })?;
    let local = orig.base_dir().join("slim-from-pageserver");
    std::fs::create_dir(&local)?;
    tar::Archive::new(&slim[..]).unpack(&local)?;
    // One 16 MiB WAL segment and a few MB of other files.
    assert!(
        slim.len() < 24 << 20,
        "a slim basebackup of {} bytes",
        slim.len()
    );

    let copy = full_copy(&orig)?;
    let target = DaemonTarget {
        addr: ps.addr.clone(),
        tenant: TENANT.into(),
        timeline: TIMELINE.into(),
        lsn: walproto::Lsn(lsn).to_string(),
    };
    let dc = daemon_on(&orig, &local, &target)?;
    copy.start()?;
    dc.pg.start()?;
    // An unlogged table's main fork at an LSN is its init fork (empty), as after a crash;
    // the clean copy still has its rows.
    assert_eq!(dc.pg.psql("SELECT count(*) FROM scratch")?, "0\n");
    copy.psql("TRUNCATE scratch")?;
    assert_same(
        &dumps(&dc.pg)?,
        &dumps(&copy)?,
        "lazy on the pageserver at the LSN",
    );
    copy.psql(CHANGES)?;
    dc.pg.psql(CHANGES)?;
    assert_same(&dumps(&dc.pg)?, &dumps(&copy)?, "and its own writes");
    dc.pg.stop(StopMode::Fast)?;
    Ok(())
}

/// Panics with the lines that differ (dumps are too long to print whole).
fn assert_same(lazy: &str, full: &str, what: &str) {
    if lazy != full {
        if let Ok(dir) = std::env::var("PAGEFS_TEST_DUMPS") {
            let _ = std::fs::write(Path::new(&dir).join("lazy.sql"), lazy);
            let _ = std::fs::write(Path::new(&dir).join("full.sql"), full);
        }
        let (a, b): (Vec<&str>, Vec<&str>) = (lazy.lines().collect(), full.lines().collect());
        let differ: Vec<String> = (0..a.len().max(b.len()))
            .filter(|i| a.get(*i) != b.get(*i))
            .take(10)
            .map(|i| format!("line {i}: lazy {:?} full {:?}", a.get(i), b.get(i)))
            .collect();
        panic!("{what}: {} vs {} lines; {differ:#?}", a.len(), b.len());
    }
}
