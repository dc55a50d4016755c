//! A `safekeeper` process on ports reserved up front, so that a restart comes back at the same
//! addresses and peers can name each other before any of them runs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tonic::transport::Channel;
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::safekeeper_client::SafekeeperClient;
use walproto::Lsn;

use super::{built_bin, free_port, log_tail, signal, wait_until, TENANT, TIMELINE};

/// How long [`Safekeeper::start`] retries a safekeeper that does not come up (a port that the
/// previous incarnation's socket still holds).
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A safekeeper process (not running until [`Safekeeper::start`]); killed when dropped.
pub struct Safekeeper {
    pub id: u64,
    pub grpc_port: u16,
    /// Its replication (Postgres protocol) port, served when `replication` is set.
    pub pg_port: u16,
    pub replication: bool,
    pub datadir: PathBuf,
    /// Where its stderr goes, appended to across restarts (outside the datadir, so that
    /// wiping the datadir keeps it).
    pub log: PathBuf,
    /// More arguments (`--peers`, `--offload-*`, `--auth-public-key`…).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
}

impl Safekeeper {
    /// Safekeeper `id` with its data in `<base>/sk<id>` and its log in `<base>/sk<id>.log`;
    /// its ports are reserved now. Start it with [`Safekeeper::start`].
    pub fn new(base: &Path, id: u64) -> Result<Safekeeper> {
        let datadir = base.join(format!("sk{id}"));
        Ok(Safekeeper {
            id,
            grpc_port: free_port()?,
            pg_port: free_port()?,
            replication: false,
            log: datadir.with_extension("log"),
            datadir,
            args: Vec::new(),
            env: Vec::new(),
            child: None,
        })
    }

    /// [`Safekeeper::new`] and [`Safekeeper::start`].
    pub fn started(base: &Path, id: u64) -> Result<Safekeeper> {
        let mut sk = Safekeeper::new(base, id)?;
        sk.start()?;
        Ok(sk)
    }

    /// [`Safekeeper::started`], serving the replication protocol too.
    pub fn started_with_replication(base: &Path, id: u64) -> Result<Safekeeper> {
        let mut sk = Safekeeper::new(base, id)?;
        sk.replication = true;
        sk.start()?;
        Ok(sk)
    }

    /// Its gRPC address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// Its replication address (served when `replication` is set).
    pub fn pg_addr(&self) -> String {
        format!("127.0.0.1:{}", self.pg_port)
    }

    /// Starts it and waits until it says it listens; retried until [`START_DEADLINE`].
    pub fn start(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "safekeeper {} is running", self.id);
        std::fs::create_dir_all(&self.datadir)
            .with_context(|| format!("creating {}", self.datadir.display()))?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let mut child = self.command()?.spawn().context("starting safekeeper")?;
            let mut out = BufReader::new(child.stdout.take().context("stdout")?);
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            if line.contains("listening on") {
                // Keep reading its stdout (the replication address line follows).
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                self.child = Some(child);
                return Ok(());
            }
            let _ = child.kill();
            let _ = child.wait();
            if Instant::now() >= deadline {
                bail!(
                    "safekeeper {} did not start on {} within {START_DEADLINE:?}: {}",
                    self.id,
                    self.addr(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn command(&self) -> Result<Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = Command::new(built_bin("safekeeper")?);
        cmd.arg("--datadir")
            .arg(&self.datadir)
            .args(["--listen-grpc", &self.addr()])
            .args(["--id", &self.id.to_string()]);
        if self.replication {
            cmd.args(["--listen-pg", &self.pg_addr()]);
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log);
        Ok(cmd)
    }

    /// The running process's pid.
    pub fn pid(&self) -> Result<u32> {
        let child = self.child.as_ref();
        Ok(child
            .with_context(|| format!("safekeeper {} is not running", self.id))?
            .id())
    }

    /// SIGKILL, waiting for the exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, waiting for the exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "-TERM")?;
            c.wait()?;
        }
        Ok(())
    }

    /// Sends `sig` (`-STOP`, `-CONT`…) to the running process.
    pub fn signal(&self, sig: &str) -> Result<()> {
        signal(self.pid()?, sig)
    }

    /// The last 40 lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 40)
    }

    /// Where it keeps the WAL of the test timeline ([`TENANT`]/[`TIMELINE`]).
    pub fn timeline_dir(&self) -> PathBuf {
        self.datadir.join(TENANT).join(TIMELINE)
    }

    /// A gRPC client (messages up to 64 MiB: WAL reads).
    pub async fn client(&self) -> Result<SafekeeperClient<Channel>> {
        let c = SafekeeperClient::connect(format!("http://{}", self.addr()))
            .await
            .with_context(|| format!("connecting to safekeeper {}", self.id))?;
        Ok(c.max_decoding_message_size(64 << 20))
    }

    /// TimelineStatus of the test timeline.
    pub async fn status(&self) -> Result<pb::TimelineStatusResponse> {
        self.status_of(TENANT, TIMELINE).await
    }

    /// TimelineStatus of `tenant`/`timeline`.
    pub async fn status_of(
        &self,
        tenant: &str,
        timeline: &str,
    ) -> Result<pb::TimelineStatusResponse> {
        let r = self
            .client()
            .await?
            .timeline_status(pb::TimelineStatusRequest {
                tenant_id: tenant.into(),
                timeline_id: timeline.into(),
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Waits until its commit LSN of the test timeline reaches `target`.
    pub async fn wait_commit(&self, target: Lsn, timeout: Duration) -> Result<()> {
        let what = format!("safekeeper {}'s commit LSN to reach {target}", self.id);
        wait_until(&what, timeout, || async {
            self.status()
                .await
                .is_ok_and(|s| Lsn(s.commit_lsn) >= target)
        })
        .await
    }
}

impl Drop for Safekeeper {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) process dies of SIGKILL too; resumed, it does not linger
        // half-stopped if the kill fails.
        if self.child.is_some() {
            let _ = self.signal("-CONT");
        }
        self.kill();
    }
}

/// Three safekeepers (ids 1 to 3 under `base`) that know each other as peers, each with
/// `extra` arguments and `env`, started.
pub fn three_safekeepers(
    base: &Path,
    extra: &[String],
    env: &[(String, String)],
) -> Result<Vec<Safekeeper>> {
    let mut sks = (1..=3)
        .map(|id| Safekeeper::new(base, id))
        .collect::<Result<Vec<_>>>()?;
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
        sk.replication = true;
        sk.start()?;
    }
    Ok(sks)
}
