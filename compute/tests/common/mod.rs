//! Real processes for the walproposer tests: safekeepers started from the built binary, the
//! `compute walproposer` binary, Postgres 15 through `strata-tests`, and WAL comparison.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use compute::pg::{ConnConfig, PgConnection};
use strata_tests::{InitOptions, PgCluster};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::proto::safekeeper as pb;
use walproto::Lsn;

pub const TENANT: &str = "0123456789abcdef0123456789abcdef";
pub const TIMELINE: &str = "fedcba9876543210fedcba9876543210";

/// The `safekeeper` binary: `$STRATA_SAFEKEEPER_BIN`, else the newest of
/// `<target>/{debug,release}/safekeeper` (`<target>` = `$CARGO_TARGET_DIR` or the workspace's).
/// The tests never build it; the documented test command does (`cargo build --bins` first).
pub fn safekeeper_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_SAFEKEEPER_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "STRATA_SAFEKEEPER_BIN={} does not exist",
            p.display()
        );
        return p;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("safekeeper"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "the safekeeper binary is not built: no {}/{{debug,release}}/safekeeper. Build it \
                 first (`cargo build --bins`) or set STRATA_SAFEKEEPER_BIN",
                target.display()
            )
        })
}

/// A safekeeper process on a fixed port (so a restart comes back at the same address).
pub struct Sk {
    pub id: u64,
    pub port: u16,
    pub datadir: PathBuf,
    pub child: Option<Child>,
}

impl Sk {
    pub fn new(base: &Path, id: u64) -> Sk {
        let datadir = base.join(format!("sk{id}"));
        std::fs::create_dir_all(&datadir).unwrap();
        let mut sk = Sk {
            id,
            port: strata_tests::pg::free_port().unwrap(),
            datadir,
            child: None,
        };
        sk.start();
        sk
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "safekeeper {} already running",
            self.id
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.datadir.join("safekeeper.log"))
                .unwrap();
            let mut child = Command::new(safekeeper_bin())
                .arg("--datadir")
                .arg(&self.datadir)
                .args(["--listen-grpc", &self.addr(), "--id", &self.id.to_string()])
                .env("RUST_LOG", "info")
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .expect("start safekeeper");
            let mut line = String::new();
            let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
            if line.contains("listening on") {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "safekeeper {} did not start on {}: {}",
                self.id,
                self.addr(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.datadir.join("safekeeper.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn timeline_dir(&self) -> PathBuf {
        self.datadir.join(TENANT).join(TIMELINE)
    }

    pub async fn status(&self) -> Option<pb::TimelineStatusResponse> {
        let mut c =
            pb::safekeeper_client::SafekeeperClient::connect(format!("http://{}", self.addr()))
                .await
                .ok()?;
        c.timeline_status(pb::TimelineStatusRequest {
            tenant_id: TENANT.into(),
            timeline_id: TIMELINE.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner())
    }
}

impl Drop for Sk {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `compute walproposer` process.
pub struct Wp {
    pub child: Child,
    pub log: PathBuf,
}

impl Wp {
    pub fn start(pg: &PgCluster, sks: &[Sk], log: &Path, extra: &[&str]) -> Wp {
        let addrs: Vec<String> = sks.iter().map(|s| s.addr()).collect();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_compute"))
            .args(["walproposer", "--pg"])
            .arg(format!(
                "host={} port={} user=postgres",
                pg.socket_dir().display(),
                pg.port()
            ))
            .args(["--safekeepers", &addrs.join(",")])
            .args(["--tenant", TENANT, "--timeline", TIMELINE])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start compute walproposer");
        Wp {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Wp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Postgres 15 set up for the walproposer.
pub fn postgres() -> PgCluster {
    let pg = PgCluster::init(
        &InitOptions::default()
            .set("synchronous_standby_names", "strata")
            .set("synchronous_commit", "on")
            .set("wal_keep_size", "1GB")
            .set("max_wal_senders", "10"),
    )
    .unwrap();
    pg.start().unwrap();
    pg
}

pub fn client_config(pg: &PgCluster) -> ConnConfig {
    ConnConfig {
        host: pg.socket_dir().display().to_string(),
        port: pg.port(),
        application_name: Some("ledger".into()),
        ..ConnConfig::default()
    }
}

pub async fn client(pg: &PgCluster) -> PgConnection {
    PgConnection::connect(&client_config(pg)).await.unwrap()
}

/// Runs `sql` and waits at most `timeout` for it to be acknowledged.
pub async fn commit_within(conn: &mut PgConnection, sql: &str, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, conn.simple_query(sql)).await {
        Ok(r) => {
            r.unwrap();
            true
        }
        Err(_) => false,
    }
}

/// Reads WAL `[from, to)` from a directory of segment files (`name` or `name.partial`).
pub fn read_wal(dir: &Path, from: Lsn, to: Lsn) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity((to.0 - from.0) as usize);
    let mut at = from;
    while at < to {
        let name = at.segment_file_name(1);
        let path = [dir.join(&name), dir.join(format!("{name}.partial"))]
            .into_iter()
            .find(|p| p.exists())
            .ok_or_else(|| format!("no segment {name} in {}", dir.display()))?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let off = at.segment_offset() as usize;
        let n = ((WAL_SEGMENT_SIZE as usize) - off).min((to.0 - at.0) as usize);
        if bytes.len() < off + n {
            return Err(format!("{} is short", path.display()));
        }
        out.extend_from_slice(&bytes[off..off + n]);
        at = Lsn(at.0 + n as u64);
    }
    Ok(out)
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pg_current_wal_flush_lsn()` over a client connection.
pub async fn pg_flush_lsn(conn: &mut PgConnection) -> Lsn {
    let rows = conn
        .simple_query("SELECT pg_current_wal_flush_lsn()")
        .await
        .unwrap();
    rows[0][0].as_deref().unwrap().parse().unwrap()
}

/// Where each safekeeper's WAL begins and ends (local start, flush), from TimelineStatus.
pub async fn sk_range(sk: &Sk) -> Option<(Lsn, Lsn, u64)> {
    let st = sk.status().await?;
    Some((Lsn(st.local_start_lsn), Lsn(st.flush_lsn), st.term))
}

/// Compares one safekeeper's WAL over `[from, to)` with Postgres's pg_wal.
pub fn same_wal_as_postgres(pg: &PgCluster, sk: &Sk, from: Lsn, to: Lsn) -> Result<(), String> {
    let theirs = read_wal(&pg.wal_dir(), from, to)?;
    let ours = read_wal(&sk.timeline_dir(), from, to)?;
    if theirs == ours {
        return Ok(());
    }
    let first = theirs
        .iter()
        .zip(ours.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    Err(format!(
        "safekeeper {}: WAL {from}..{to} differs from Postgres's at {}",
        sk.id,
        Lsn(from.0 + first as u64)
    ))
}
