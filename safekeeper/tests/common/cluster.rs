//! A real cluster for the offload tests: safekeeper processes on fixed ports (so a restart
//! comes back at the same address and peers can name each other), `s3s-fs` as a local S3
//! server, Postgres 15 with the built `compute walproposer`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::pg::free_port;
use strata_tests::{InitOptions, PgCluster};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::proto::safekeeper as pb;
use walproto::Lsn;

use super::{TENANT, TIMELINE};

/// A built binary of this workspace: `<target>/{debug,release}/<name>`, the newest.
pub fn workspace_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join(name))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "the {name} binary is not built: no {}/{{debug,release}}/{name}. Build it first: \
                 cargo build --bins",
                target.display()
            )
        })
}

/// A safekeeper process with fixed gRPC and replication ports.
pub struct Sk {
    pub id: u64,
    pub grpc_port: u16,
    pub pg_port: u16,
    pub datadir: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
}

impl Sk {
    /// Ports are picked now; start it with [`Sk::start`].
    pub fn new(base: &Path, id: u64) -> Sk {
        let datadir = base.join(format!("sk{id}"));
        Sk {
            id,
            grpc_port: free_port().unwrap(),
            pg_port: free_port().unwrap(),
            datadir,
            args: Vec::new(),
            env: Vec::new(),
            child: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    pub fn pg_addr(&self) -> String {
        format!("127.0.0.1:{}", self.pg_port)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "safekeeper {} is running", self.id);
        std::fs::create_dir_all(&self.datadir).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .unwrap();
            let mut child = Command::new(env!("CARGO_BIN_EXE_safekeeper"))
                .arg("--datadir")
                .arg(&self.datadir)
                .args([
                    "--listen-grpc",
                    &self.addr(),
                    "--listen-pg",
                    &self.pg_addr(),
                ])
                .args(["--id", &self.id.to_string()])
                .args(&self.args)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .env("RUST_LOG", "info")
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .expect("start safekeeper");
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            if line.contains("listening on") {
                // Keep reading its stdout (the replication address line follows).
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "safekeeper {} did not start: {}",
                self.id,
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

    /// SIGTERM, waiting for the exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            c.wait().unwrap();
        }
    }

    fn log_path(&self) -> PathBuf {
        // Outside the datadir, so that wiping the datadir keeps the log.
        self.datadir.with_extension("log")
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
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

    /// Waits until this safekeeper's commit LSN reaches `target`; false on timeout.
    pub async fn wait_commit(&self, target: walproto::Lsn, timeout: Duration) -> bool {
        wait_until(timeout, || async {
            self.status()
                .await
                .is_some_and(|s| walproto::Lsn(s.commit_lsn) >= target)
        })
        .await
    }
}

impl Drop for Sk {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three safekeepers that know each other, each with `extra` arguments and `env`.
pub fn three_safekeepers(base: &Path, extra: &[String], env: &[(String, String)]) -> Vec<Sk> {
    let mut sks: Vec<Sk> = (1..=3).map(|id| Sk::new(base, id)).collect();
    let all: Vec<(u64, String)> = sks.iter().map(|s| (s.id, s.addr())).collect();
    for sk in &mut sks {
        let peers: Vec<String> = all
            .iter()
            .filter(|(id, _)| *id != sk.id)
            .map(|(id, a)| format!("{id}={a}"))
            .collect();
        sk.args = vec!["--peers".into(), peers.join(",")];
        sk.args.extend(extra.iter().cloned());
        sk.env = env.to_vec();
        sk.start();
    }
    sks
}

/// A `compute walproposer` process.
pub struct Wp {
    pub child: Child,
    pub log: PathBuf,
}

impl Wp {
    pub fn start(pg: &PgCluster, sks: &[Sk], log: &Path) -> Wp {
        let addrs: Vec<String> = sks.iter().map(|s| s.addr()).collect();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(workspace_bin("compute"))
            .args(["walproposer", "--pg"])
            .arg(format!(
                "host={} port={} user=postgres",
                pg.socket_dir().display(),
                pg.port()
            ))
            .args(["--safekeepers", &addrs.join(",")])
            .args(["--tenant", TENANT, "--timeline", TIMELINE])
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Wp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Postgres 15 set up for the walproposer (commits wait for the safekeeper quorum).
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

/// Runs `sql` through psql; panics with the walproposer's log if it fails.
pub fn psql(pg: &PgCluster, wp: &Wp, sql: &str) -> String {
    pg.psql(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}\nwalproposer log:\n{}", wp.log_text()))
}

/// A local S3 server (`s3s-fs`) on a free loopback port, killed when dropped.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub root: PathBuf,
    pub bucket: String,
}

pub const S3_ACCESS_KEY: &str = "strata-test-access";
pub const S3_SECRET_KEY: &str = "strata-test-secret";

impl S3Server {
    /// Fails (does not skip) when `s3s-fs` is not installed.
    pub fn start(base: &Path) -> S3Server {
        let bin = find_s3s_fs().unwrap_or_else(|| {
            panic!(
                "s3s-fs is not installed (not on PATH, not in ~/.cargo/bin): run \
                 `STRATA_SETUP_S3=1 scripts/setup.sh` to install it"
            )
        });
        let root = base.join("s3");
        let bucket = "strata-wal".to_string();
        std::fs::create_dir_all(root.join(&bucket)).unwrap();
        let port = free_port().unwrap();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(base.join("s3s-fs.log"))
                    .map(Stdio::from)
                    .unwrap(),
            )
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
            bucket,
        }
    }

    /// The environment a safekeeper needs to use it.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_s3s_fs() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        let p = home.join("bin/s3s-fs");
        p.is_file().then_some(p)
    })
}

/// `<root>/wal/<tenant>/<timeline>`: where a directory store keeps the WAL.
pub fn wal_objects(root: &Path) -> PathBuf {
    root.join("wal").join(TENANT).join(TIMELINE)
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes enough WAL through Postgres for `segments` complete segments after the current one,
/// each holding real records (a table, rows, a segment switch). Returns the insert LSN after.
pub fn make_segments(pg: &PgCluster, wp: &Wp, segments: usize) -> Lsn {
    psql(pg, wp, "CREATE TABLE IF NOT EXISTS t(id int, pad text)");
    for i in 0..segments {
        psql(
            pg,
            wp,
            &format!("INSERT INTO t SELECT g, repeat('{i}', 100) FROM generate_series(1, 2000) g"),
        );
        psql(pg, wp, "SELECT pg_switch_wal()");
    }
    psql(pg, wp, "INSERT INTO t VALUES (0, 'after the switches')");
    pg.current_wal_insert_lsn().unwrap()
}

/// Postgres's pg_wal bytes for segment `segno`.
pub fn pg_segment(pg: &PgCluster, segno: u64) -> Vec<u8> {
    std::fs::read(
        pg.wal_dir()
            .join(Lsn(segno * WAL_SEGMENT_SIZE).segment_file_name(1)),
    )
    .unwrap()
}

/// Postgres's pg_wal bytes over `[from, to)`.
pub fn pg_wal_range(pg: &PgCluster, from: Lsn, to: Lsn) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let seg = pg_segment(pg, at.segment_number());
        let off = at.segment_offset() as usize;
        let n = (WAL_SEGMENT_SIZE as usize - off).min((to.0 - at.0) as usize);
        out.extend_from_slice(&seg[off..off + n]);
        at = Lsn(at.0 + n as u64);
    }
    out
}

/// Runs `sql` over a client connection; false if it was not acknowledged within `timeout`
/// (a commit waits for the safekeeper quorum).
pub async fn commit_within(pg: &PgCluster, sql: &str, timeout: Duration) -> bool {
    let cfg = walproto::pgclient::ConnConfig {
        host: pg.socket_dir().display().to_string(),
        port: pg.port(),
        application_name: Some("offload-test".into()),
        ..walproto::pgclient::ConnConfig::default()
    };
    let mut conn = walproto::pgclient::PgConnection::connect(&cfg)
        .await
        .unwrap();
    match tokio::time::timeout(timeout, conn.simple_query(sql)).await {
        Ok(r) => {
            r.unwrap();
            true
        }
        Err(_) => false,
    }
}

/// WAL `[from, to)` from a directory of segment files (`name` or `name.partial`).
pub fn read_segments(dir: &Path, from: Lsn, to: Lsn) -> Vec<u8> {
    let mut out = Vec::with_capacity((to.0 - from.0) as usize);
    let mut at = from;
    while at < to {
        let name = at.segment_file_name(1);
        let path = [dir.join(&name), dir.join(format!("{name}.partial"))]
            .into_iter()
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no segment {name} in {}", dir.display()));
        let bytes = std::fs::read(&path).unwrap();
        let off = at.segment_offset() as usize;
        let n = (WAL_SEGMENT_SIZE as usize - off).min((to.0 - at.0) as usize);
        out.extend_from_slice(&bytes[off..off + n]);
        at = Lsn(at.0 + n as u64);
    }
    out
}
