//! The cost of authentication and metrics (`auth_metrics_cost`, issue 21): two local clusters
//! side by side, one as `strata init` makes it (auth and metrics on) and one made with
//! `strata init --no-auth --no-metrics`, measured in alternating rounds.
//!
//! - [`Side`]: one cluster with its tenant, its compute and what a reader needs (the
//!   pageserver's address, a tenant token when it has auth, the compute's password).
//! - [`getpage`]: timed page reads over gRPC straight from the pageserver.
//! - [`report`]: medians over rounds, spread, ratios and the table.

pub mod getpage;
pub mod report;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::branch_bench::pgprog::{parse_pgbench, PgProgs, Server};
use crate::branch_bench::strata_cli::{ComputeStart, StrataCli};
use getpage::PageTarget;

/// The tenant each cluster holds.
pub const TENANT: &str = "bench";
/// The compute each cluster runs pgbench on.
const COMPUTE: &str = "bench";

/// One of the two clusters.
pub struct Side {
    /// `on` (auth and metrics) or `off`.
    pub label: &'static str,
    pub cli: StrataCli,
    /// Postgres programs logging into this cluster's compute.
    pub progs: PgProgs,
    /// `http://127.0.0.1:PORT` of the pageserver's gRPC.
    pub grpc_url: String,
    /// A `tenant:bench` token (pages of that tenant only), as a page reader has; none
    /// without auth.
    pub token: Option<String>,
    /// The pageserver's `/metrics` address, when it serves one.
    pub metrics_addr: Option<String>,
    pub target: PageTarget,
    /// The compute's port while it runs.
    pub port: u16,
}

impl Side {
    /// `strata init INIT_ARGS`, start, a tenant, a compute on its main branch and
    /// `pgbench -i -s scale` there.
    pub fn create(
        label: &'static str,
        init_args: &[&str],
        strata_bin: Option<std::path::PathBuf>,
        progs: &PgProgs,
        dir: &Path,
        scale: u32,
    ) -> Result<Side> {
        let cli = StrataCli::new(strata_bin, dir)?;
        let pg_bin = progs.bin.to_string_lossy().into_owned();
        let mut args = vec!["init"];
        args.extend_from_slice(init_args);
        args.extend(["--pg-bin", &pg_bin]);
        cli.run(&args)?;
        cli.run(&["start"])?;
        let t = cli.run_json(&["tenant", "create", TENANT])?;
        let id = |k: &str| {
            t[k].as_str()
                .map(str::to_string)
                .with_context(|| format!("strata tenant create printed no {k}: {t}"))
        };
        let (tenant_id, timeline_id) = (id("tenant_id")?, id("timeline_id")?);
        let cfg = read_config(dir)?;
        let port_of = |table: &str, key: &str| {
            cfg.get(table)
                .and_then(|t| t.get(key))
                .and_then(|p| p.as_integer())
        };
        let grpc_port = port_of("pageserver", "grpc_port")
            .with_context(|| format!("{}: no [pageserver] grpc_port", dir.display()))?;
        let metrics_addr = port_of("pageserver", "metrics_port").map(|p| format!("127.0.0.1:{p}"));
        let auth = cfg.get("auth").and_then(|a| a.as_bool()) == Some(true);
        let (token, password) = if auth {
            let t = cli.run_json(&["token", "issue", "--scope", &format!("tenant:{TENANT}")])?;
            let token = t["token"]
                .as_str()
                .with_context(|| format!("strata token issue printed no token: {t}"))?;
            let pw = std::fs::read_to_string(dir.join("auth/compute_password"))
                .context("reading the cluster's compute password")?;
            (Some(token.to_string()), Some(pw.trim().to_string()))
        } else {
            (None, None)
        };
        let progs = progs.with_password(password);
        let port = cli
            .compute_start_with(&ComputeStart {
                tenant: TENANT,
                branch: "main",
                name: Some(COMPUTE),
                ..ComputeStart::default()
            })?
            .port;
        let server = Server {
            progs: progs.clone(),
            port,
        };
        server.pgbench(&["-i", "-q", "-s", &scale.to_string()])?;
        let ids = server.sql(
            "SELECT oid, pg_relation_filenode('pgbench_accounts') FROM pg_database \
             WHERE datname = current_database()",
        )?;
        let (db, rel) = ids
            .split_once('|')
            .and_then(|(d, r)| Some((d.parse().ok()?, r.parse().ok()?)))
            .with_context(|| format!("the database's and pgbench_accounts' OIDs: {ids:?}"))?;
        Ok(Side {
            label,
            cli,
            progs,
            grpc_url: format!("http://127.0.0.1:{grpc_port}"),
            token,
            metrics_addr,
            target: PageTarget {
                tenant_id,
                timeline_id,
                db,
                rel,
            },
            port,
        })
    }

    fn server(&self) -> Server {
        Server {
            progs: self.progs.clone(),
            port: self.port,
        }
    }

    /// pgbench_accounts' size in blocks.
    pub fn accounts_blocks(&self) -> Result<u32> {
        let n = self
            .server()
            .sql("SELECT pg_relation_size('pgbench_accounts') / 8192")?;
        n.parse()
            .with_context(|| format!("pgbench_accounts' size in blocks: {n:?}"))
    }

    /// `pgbench ARGS -T secs -c clients -j clients`: its TPS.
    pub fn pgbench_tps(&self, args: &[&str], secs: u32, clients: u32) -> Result<f64> {
        let (secs, clients) = (secs.to_string(), clients.to_string());
        let mut all = args.to_vec();
        all.extend([
            "-T",
            secs.as_str(),
            "-c",
            clients.as_str(),
            "-j",
            clients.as_str(),
        ]);
        let out = self.server().pgbench(&all)?;
        Ok(parse_pgbench(&out)?.tps)
    }

    /// Stops the compute and waits until the pageserver has everything it committed, so
    /// that page reads at the last record end read a timeline nothing changes any more.
    pub fn stop_compute(&self) -> Result<()> {
        self.cli.compute_stop(COMPUTE)?;
        self.cli.wait_caught_up(TENANT, "main", "caught-up")?;
        Ok(())
    }

    /// `strata tenant config set KEY=VALUE` on the bench's tenant.
    pub fn set_tenant_config(&self, setting: &str) -> Result<()> {
        self.cli
            .run(&["tenant", "config", "set", setting, "--tenant", TENANT])?;
        Ok(())
    }

    /// How many page reads the pageserver has counted as needing redo and as not, from its
    /// `/metrics`; `None` without a metrics endpoint.
    pub fn redo_counts(&self) -> Result<Option<RedoCounts>> {
        let Some(addr) = &self.metrics_addr else {
            return Ok(None);
        };
        let body = http_get(addr, "/metrics")?;
        let count = |redo: &str| -> Result<u64> {
            let prefix = format!("strata_pageserver_getpage_seconds_count{{redo=\"{redo}\"}} ");
            body.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map_or(Ok(0), |v| {
                    v.trim()
                        .parse()
                        .with_context(|| format!("{addr}/metrics: {prefix}{v}"))
                })
        };
        Ok(Some(RedoCounts {
            needed: count("needed")?,
            none: count("none")?,
        }))
    }

    pub fn stop(&self) -> Result<()> {
        self.cli.run(&["stop"]).map(drop)
    }
}

/// Page reads the pageserver counted, by whether they needed redo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedoCounts {
    pub needed: u64,
    pub none: u64,
}

impl RedoCounts {
    /// The reads counted since `before`.
    pub fn since(self, before: RedoCounts) -> RedoCounts {
        RedoCounts {
            needed: self.needed.saturating_sub(before.needed),
            none: self.none.saturating_sub(before.none),
        }
    }
}

/// The cluster's `strata.toml`.
fn read_config(dir: &Path) -> Result<toml::Table> {
    let p = dir.join("strata.toml");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    text.parse()
        .with_context(|| format!("parsing {}", p.display()))
}

/// The body of `GET path` on `addr` (HTTP/1.0, so the server closes when done).
fn http_get(addr: &str, path: &str) -> Result<String> {
    let deadline = Duration::from_secs(10);
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(deadline))?;
    s.set_write_timeout(Some(deadline))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading {addr}{path} (at most {deadline:?})"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr}{path}: no HTTP answer: {text:?}"))?;
    ensure!(
        head.starts_with("HTTP/1.") && head.split(' ').nth(1) == Some("200"),
        "{addr}{path}: {}",
        head.lines().next().unwrap_or_default()
    );
    if body.is_empty() {
        bail!("{addr}{path}: an empty body");
    }
    Ok(body.to_string())
}
