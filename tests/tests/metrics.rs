//! Metrics and health of a real local cluster (issue 21, item 2): every service's `/metrics`
//! is scraped before and after a pgbench run through a compute; the positions move, the lags
//! return to zero, page reads are counted with their histograms, every health endpoint
//! (HTTP and gRPC) answers ready, and a record the pageserver refuses shows up as
//! `strata_pageserver_ingest_stopped 1` with a lag that grows.
//!
//! The refused record is a real one: the pageserver runs with the test failpoint
//! `STRATA_FAILPOINT_REFUSE_MESSAGE=strata-test-stop`, and the compute writes
//! `pg_logical_emit_message(true, 'strata-test-stop', …)`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{on_new_cluster, pgbench, psql, StrataCli};

const STOP_PREFIX: &str = "strata-test-stop";
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` on `addr`: (status code, body).
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .with_context(|| format!("reading the answer to GET {path} from {addr}"))?;
    let (head, body) = out.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// One scrape: `name{labels}` → value, for every sample.
#[derive(Debug, Clone)]
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn of(addr: &str) -> Result<Scrape> {
        let (status, body) = http_get(addr, "/metrics")?;
        ensure!(status == 200, "GET /metrics on {addr}: {status} {body}");
        let mut samples = BTreeMap::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line
                .rsplit_once(' ')
                .with_context(|| format!("not a sample: {line:?}"))?;
            let v: f64 = value
                .parse()
                .with_context(|| format!("not a value: {line:?}"))?;
            samples.insert(series.to_string(), v);
        }
        Ok(Scrape(samples))
    }

    /// The one series of `name` (any labels); fails if there is none or several.
    fn one(&self, name: &str) -> Result<f64> {
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| *v)
            .collect();
        match found.as_slice() {
            [v] => Ok(*v),
            [] => bail!("no metric {name}"),
            _ => bail!("{} series of {name}, expected one", found.len()),
        }
    }

    /// The sum over every series of `name` (0 when there is none).
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| *v)
            .sum()
    }

    fn exact(&self, series: &str) -> Result<f64> {
        self.0
            .get(series)
            .copied()
            .with_context(|| format!("no series {series}"))
    }
}

/// Retries `check` until it succeeds, at most `timeout`; the error names `what` and why the
/// last try failed.
fn retry<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("waited {timeout:?} for {what}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// The metrics addresses `strata start` printed: (service, host:port).
fn metrics_addrs(start_output: &str) -> Vec<(String, String)> {
    start_output
        .lines()
        .filter_map(|l| {
            let name = l.strip_prefix("started ")?.split_whitespace().next()?;
            let rest = l.split_once("metrics on http://")?.1;
            let addr = rest.strip_suffix("/metrics")?;
            Some((name.to_string(), addr.to_string()))
        })
        .collect()
}

/// The walproposer's metrics address, from its log ("walproposer metrics on ADDR").
fn walproposer_metrics_addr(s: &StrataCli) -> Result<String> {
    for e in std::fs::read_dir(s.dir.join("logs"))? {
        let text = std::fs::read_to_string(e?.path()).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("walproposer metrics on "))
        {
            return Ok(addr.to_string());
        }
    }
    bail!("no walproposer log names its metrics address")
}

fn port_of(v: &serde_json::Value) -> Result<u16> {
    u16::try_from(v["port"].as_u64().context("no port")?).context("port")
}

/// The standard gRPC health check of `service` on `addr`.
fn grpc_health(addr: &str, service: &str) -> Result<i32> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let check = async {
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?;
            let mut c = HealthClient::new(channel);
            let r = c
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await?;
            anyhow::Ok(r.into_inner().status)
        };
        tokio::time::timeout(HTTP_TIMEOUT, check)
            .await
            .with_context(|| format!("gRPC health check of {service} on {addr}"))?
    })
}

#[test]
fn every_service_exposes_metrics_and_health_and_a_stopped_ingest_shows() -> Result<()> {
    on_new_cluster("strata-metrics-", scenario)
}

fn scenario(s: &StrataCli) -> Result<()> {
    // `strata start` with the failpoint in the pageserver's environment.
    let out = Command::new(&s.bin)
        .arg("--dir")
        .arg(&s.dir)
        .arg("start")
        .env("STRATA_FAILPOINT_REFUSE_MESSAGE", STOP_PREFIX)
        .output()?;
    let started = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.success(),
        "strata start: {started}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addrs = metrics_addrs(&started);
    ensure!(
        addrs.len() == 4,
        "one metrics address per service: {started}"
    );
    let ps = addrs
        .iter()
        .find(|(n, _)| n == "pageserver")
        .map(|(_, a)| a.clone())
        .context("the pageserver's metrics address")?;
    let sks: Vec<String> = addrs
        .iter()
        .filter(|(n, _)| n.starts_with("safekeeper-"))
        .map(|(_, a)| a.clone())
        .collect();

    // Health: live and ready over HTTP, SERVING (1) over gRPC.
    for addr in std::iter::once(&ps).chain(&sks) {
        for path in ["/health/live", "/health/ready"] {
            let (status, body) = http_get(addr, path)?;
            ensure!(status == 200, "GET {path} on {addr}: {status} {body}");
        }
        ensure!(
            http_get(addr, "/nothing")?.0 == 404,
            "unknown path on {addr}"
        );
    }
    let cfg = std::fs::read_to_string(s.dir.join("strata.toml"))?;
    let grpc_port = |section: &str| -> Result<String> {
        let after = cfg.split(section).nth(1).context("section")?;
        let line = after
            .lines()
            .find(|l| l.starts_with("grpc_port"))
            .context("grpc_port")?;
        Ok(format!(
            "127.0.0.1:{}",
            line.rsplit(' ').next().unwrap_or("")
        ))
    };
    ensure!(
        grpc_health(
            &grpc_port("[pageserver]")?,
            "strata.pageserver.v1.Pageserver"
        )? == 1,
        "the pageserver's gRPC health"
    );
    ensure!(
        grpc_health(
            &grpc_port("[[safekeepers]]")?,
            "strata.safekeeper.v1.Safekeeper"
        )? == 1,
        "a safekeeper's gRPC health"
    );

    s.run(&["tenant", "create", "shop"])?;
    let port = port_of(&s.json(&["compute", "start", "main"])?)?;
    let wp = walproposer_metrics_addr(s)?;
    let (status, body) = http_get(&wp, "/health/ready")?;
    ensure!(status == 200, "walproposer ready: {status} {body}");

    psql(
        port,
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
    )?;
    let ps1 = Scrape::of(&ps)?;
    let sk1: Vec<Scrape> = sks.iter().map(|a| Scrape::of(a)).collect::<Result<_>>()?;
    let wp1 = Scrape::of(&wp)?;

    pgbench(port, &["-i", "-s", "1", "-q"])?;
    pgbench(port, &["-c", "2", "-T", "3"])?;
    let end: u64 = {
        let l = psql(port, "SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn")?;
        l.parse()
            .with_context(|| format!("an LSN as a number: {l:?}"))?
    };

    // Everything moved.
    let wp2 = Scrape::of(&wp)?;
    ensure!(
        wp2.one("strata_walproposer_flush_lsn")? > wp1.one("strata_walproposer_flush_lsn")?,
        "the walproposer's flush LSN moved"
    );
    ensure!(
        wp2.one("strata_walproposer_quorum_seconds_count")?
            > wp1.one("strata_walproposer_quorum_seconds_count")?,
        "quorum latencies were recorded"
    );
    ensure!(wp2.one("strata_walproposer_elections_total")? == 1.0);
    ensure!(wp2.one("strata_walproposer_append_seconds_count")? > 0.0);
    for (addr, before) in sks.iter().zip(&sk1) {
        let after = Scrape::of(addr)?;
        for m in [
            "strata_safekeeper_commit_lsn",
            "strata_safekeeper_flush_lsn",
            "strata_safekeeper_append_seconds_count",
            "strata_safekeeper_fsync_seconds_count",
            "strata_safekeeper_wal_written_bytes_total",
        ] {
            ensure!(
                after.sum(m) > before.sum(m),
                "{m} on safekeeper {addr}: {} then {}",
                before.sum(m),
                after.sum(m)
            );
        }
    }
    // The pageserver catches up: every lag back to zero once the WAL is ingested, flushed
    // (every 10 s) and uploaded.
    let caught_up = retry(
        "the pageserver's lags to return to 0",
        Duration::from_secs(90),
        || {
            let now = Scrape::of(&ps)?;
            let ingested = now.one("strata_pageserver_ingested_lsn")?;
            let lags = [
                "strata_pageserver_ingest_lag_bytes",
                "strata_pageserver_durable_lag_bytes",
                "strata_pageserver_remote_lag_bytes",
                "strata_pageserver_ingest_lag_seconds",
            ];
            let all_zero = lags.iter().all(|m| now.one(m).is_ok_and(|v| v == 0.0));
            if ingested >= end as f64 && all_zero {
                Ok(now)
            } else {
                let shown: Vec<String> = lags
                    .iter()
                    .map(|m| format!("{m} = {:?}", now.one(m).ok()))
                    .collect();
                bail!("ingested {ingested} of {end}; {}", shown.join(", "))
            }
        },
    )?;
    for m in [
        "strata_pageserver_received_lsn",
        "strata_pageserver_ingested_lsn",
        "strata_pageserver_durable_lsn",
        "strata_pageserver_remote_lsn",
        "strata_pageserver_commit_lsn",
    ] {
        ensure!(
            caught_up.one(m)? > ps1.one(m)?,
            "{m}: {} then {}",
            ps1.one(m)?,
            caught_up.one(m)?
        );
    }
    ensure!(
        caught_up.exact("strata_pageserver_ingest_records_total")?
            > ps1.exact("strata_pageserver_ingest_records_total")?
    );
    ensure!(caught_up.one("strata_pageserver_ingest_stopped")? == 0.0);
    ensure!(caught_up.one("strata_pageserver_layer_local_bytes")? > 0.0);
    ensure!(caught_up.one("strata_pageserver_layer_remote_bytes")? > 0.0);

    // Page reads: a fresh compute (its basebackup) and a query on it.
    let reads = |s: &Scrape| s.sum("strata_pageserver_getpage_seconds_count");
    let visited = |s: &Scrape| s.exact("strata_pageserver_getpage_layers_visited_count");
    let before = Scrape::of(&ps)?;
    let lsn = psql(port, "SELECT pg_current_wal_flush_lsn()")?;
    let count = s.run(&[
        "query",
        "--at",
        &lsn,
        "SELECT count(*) FROM pgbench_accounts",
    ])?;
    ensure!(
        count.contains("100000"),
        "query on a fresh compute: {count}"
    );
    let after = Scrape::of(&ps)?;
    ensure!(
        reads(&after) > reads(&before) && visited(&after)? > visited(&before)?,
        "page reads counted: {} then {}",
        reads(&before),
        reads(&after)
    );
    ensure!(
        after.exact("strata_pageserver_getpage_seconds_bucket{redo=\"none\",le=\"+Inf\"}")? > 0.0,
        "reads without redo are in their histogram"
    );
    after.exact("strata_pageserver_getpage_seconds_bucket{redo=\"needed\",le=\"0.001\"}")?;
    after.exact("strata_pageserver_getpage_layers_visited_bucket{le=\"4\"}")?;

    // A record the pageserver refuses: ingest stops, visibly, and the lag grows.
    psql(
        port,
        &format!("SELECT pg_logical_emit_message(true, '{STOP_PREFIX}', 'refuse me')"),
    )?;
    let stopped = retry("ingest_stopped 1", Duration::from_secs(30), || {
        let now = Scrape::of(&ps)?;
        let v = now.one("strata_pageserver_ingest_stopped")?;
        ensure!(v == 1.0, "strata_pageserver_ingest_stopped = {v}");
        Ok(now)
    })?;
    ensure!(stopped.exact("strata_pageserver_ingest_errors_total")? >= 1.0);
    ensure!(stopped.one("strata_pageserver_ingest_lag_bytes")? > 0.0);
    psql(
        port,
        "INSERT INTO t SELECT g FROM generate_series(1, 10000) g",
    )?;
    let grown = retry("the ingest lag to grow", Duration::from_secs(30), || {
        let now = Scrape::of(&ps)?;
        let secs = now.one("strata_pageserver_ingest_lag_seconds")?;
        let was = stopped.one("strata_pageserver_ingest_lag_seconds")?;
        ensure!(
            secs >= 2.0 && secs > was,
            "ingest lag {secs} s, was {was} s"
        );
        Ok(now)
    })?;
    ensure!(grown.one("strata_pageserver_ingest_stopped")? == 1.0);
    ensure!(
        grown.one("strata_pageserver_ingested_lsn")?
            == stopped.one("strata_pageserver_ingested_lsn")?,
        "nothing is ingested past the stop"
    );
    // The safekeepers see the pageserver fall behind: their commit LSN moves on, what the
    // pageserver made durable does not.
    let sk = Scrape::of(&sks[0])?;
    let commit = sk.one("strata_safekeeper_commit_lsn")?;
    ensure!(
        sk.one("strata_safekeeper_consumer_lag_bytes")? > 0.0
            && commit > stopped.one("strata_pageserver_ingested_lsn")?,
        "the safekeeper's commit {commit} is past the stop"
    );
    Ok(())
}

/// Whether the process in `pid_file` runs with `STRATA_METRICS=off` in its environment.
fn runs_without_metrics(pid_file: &std::path::Path) -> Result<bool> {
    let pid = std::fs::read_to_string(pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?;
    let env = std::fs::read(format!("/proc/{}/environ", pid.trim()))?;
    Ok(env.split(|b| *b == 0).any(|v| v == b"STRATA_METRICS=off"))
}

/// `strata init --no-metrics`: no metrics ports, nothing printed or served, `status` says so,
/// and the pageserver, every safekeeper and a compute's walproposer run with
/// `STRATA_METRICS=off` (so none of them records).
#[test]
fn a_cluster_made_without_metrics_records_none() -> Result<()> {
    let tmp = strata_tests::cluster::scratch_dir("strata-no-metrics-")?;
    let s = StrataCli::new(&tmp.path().join("cluster"))?;
    s.run(&["init", "--no-metrics"])?;
    let result = (|| {
        let started = s.run(&["start"])?;
        ensure!(
            metrics_addrs(&started).is_empty(),
            "strata start names metrics addresses: {started}"
        );
        let cfg = std::fs::read_to_string(s.dir.join("strata.toml"))?;
        ensure!(
            !cfg.contains("metrics_port") && cfg.contains("metrics = false"),
            "strata.toml: {cfg}"
        );
        let status = s.json(&["status"])?;
        ensure!(status["metrics"] == false, "status: {status}");
        s.run(&["tenant", "create", "t"])?;
        s.json(&["compute", "start", "main", "--name", "w"])?;
        let services = ["pageserver", "safekeeper-1", "safekeeper-2", "safekeeper-3"];
        for name in services.into_iter().chain(["compute-w-walproposer"]) {
            ensure!(
                runs_without_metrics(&s.dir.join("run").join(format!("{name}.pid")))?,
                "{name} runs without STRATA_METRICS=off"
            );
        }
        Ok(())
    })();
    let _ = s.run(&["stop"]);
    result
}
