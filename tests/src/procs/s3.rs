//! `s3s-fs`: a real S3 server over a local directory, for the offload and remote-storage
//! tests. It must be installed (`STRATA_SETUP_S3=1 scripts/setup.sh`); without it the tests
//! fail, they do not skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::free_port;

pub const S3_ACCESS_KEY: &str = "strata-test-access";
pub const S3_SECRET_KEY: &str = "strata-test-secret";
pub const S3_REGION: &str = "us-east-1";

/// How long [`S3Server::start`] waits for it to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// An `s3s-fs` process on a reserved loopback port; killed when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The directory it serves; bucket `b` is `<root>/b`.
    pub root: PathBuf,
    pub bucket: String,
}

impl S3Server {
    /// Serves `root` with `bucket` created (its log: `<root>.log`); waits until it accepts
    /// connections.
    pub fn start(root: &Path, bucket: &str) -> Result<S3Server> {
        let bin = find_s3s_fs()?;
        std::fs::create_dir_all(root.join(bucket))
            .with_context(|| format!("creating {}", root.join(bucket).display()))?;
        let port = free_port()?;
        let log = std::fs::File::create(root.with_extension("log"))?;
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root)
            .env(
                "RUST_LOG",
                std::env::var("S3S_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting s3s-fs")?;
        let mut s = S3Server {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            root: root.to_path_buf(),
            bucket: bucket.to_string(),
        };
        let deadline = Instant::now() + START_DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = s.child.try_wait()? {
                bail!("s3s-fs exited at start: {st}");
            }
            if Instant::now() >= deadline {
                bail!("s3s-fs did not accept connections on {port} within {START_DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    /// The environment a safekeeper or pageserver needs to use it.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            ("AWS_REGION", S3_REGION),
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

/// The `s3s-fs` binary on PATH or in `~/.cargo/bin`; an error saying how to install it.
pub fn find_s3s_fs() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    dirs.extend(cargo_home.map(|c| c.join("bin")));
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .context(
            "s3s-fs is not installed (not on PATH, not in ~/.cargo/bin): run \
             `STRATA_SETUP_S3=1 scripts/setup.sh` to install it",
        )
}
