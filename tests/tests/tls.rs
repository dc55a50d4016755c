//! TLS on the gRPC ports of a real local cluster (issue 21): `strata init --listen ADDR` with
//! an address of this machine beyond loopback makes a CA and the services' certificates, the
//! services serve gRPC only over TLS there, and the cluster's own parts (the CLI, a
//! compute's walproposer and page filesystem, the safekeepers' peer calls) trust the CA: a
//! compute commits and reads back, a lazy compute on a branch reads its pages, and a client
//! in clear is refused.
//!
//! The address is the machine's first IPv4 address beyond loopback (`hostname -I`); a machine
//! without one runs the same scenario with TLS forced on loopback (`--tls`), and says so.
//!
//! Each daemon on its own (the pageserver and a safekeeper, whose connections are served on
//! threads of their own): with a certificate it answers a client trusting its CA and no
//! client in clear or trusting another CA; told to listen beyond loopback without one, it
//! refuses to start and says how to fix it.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use strata_auth::{ClientTls, ClusterCa, CA_CERT_FILE};
use strata_tests::cluster::{psql, scratch_dir, StrataCli};
use strata_tests::waldump::strata_bin;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use walproto::proto::pageserver as ps;
use walproto::proto::pageserver::pageserver_client::PageserverClient;

/// The daemons' binaries, built beside `strata`, and the flag naming each one's gRPC address.
const DAEMONS: [(&str, &str); 2] = [("pageserver", "--listen"), ("safekeeper", "--listen-grpc")];

/// A daemon `name` with its data directory under `scratch`, listening on `listen`.
fn daemon(scratch: &Path, name: &str, listen: &str) -> Result<Command> {
    let bin = strata_bin()?.with_file_name(name);
    let flag = DAEMONS.iter().find(|d| d.0 == name).context("a daemon")?.1;
    let mut cmd = Command::new(bin);
    match name {
        "pageserver" => cmd.arg("--data-dir").arg(scratch.join(name)),
        _ => cmd
            .arg("--datadir")
            .arg(scratch.join(name))
            .args(["--id", "1"]),
    };
    cmd.args([flag, listen]);
    Ok(cmd)
}

/// A running daemon, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits for its `listening on ADDR` line: the process and ADDR.
fn start(mut cmd: Command) -> Result<(Running, String)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let running = Running(child);
    // The line comes once the port is bound, or stdout closes because the daemon exited.
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some((_, addr)) = line.split_once(" listening on ") {
            return Ok((running, addr.trim().to_string()));
        }
    }
    bail!("{cmd:?} exited without listening")
}

/// A CA in `dir` and a certificate for 127.0.0.1 signed by it: (cert, key, CA file).
fn certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let ca = ClusterCa::create(dir, "test CA")?;
    let (cert, key) = ca.issue(dir, "service", &["127.0.0.1".into()])?;
    Ok((cert, key, dir.join(CA_CERT_FILE)))
}

/// The standard health check of the gRPC service at `addr`, over TLS trusting `tls`'s CA or
/// in clear: `Ok` if it answered, else why not (every cause, the CA named when the
/// certificate does not verify).
fn health(addr: &str, tls: Option<&ClientTls>) -> Result<Result<(), String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let attempt = async {
            let ch = strata_auth::endpoint(addr, tls)
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| strata_auth::connect_error(&e, tls))?;
            HealthClient::new(ch)
                .check(HealthCheckRequest::default())
                .await
                .map_err(|s| format!("{s}"))?;
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(20), attempt)
            .await
            .context("no answer within 20 s")
    })
}

#[test]
fn a_tls_daemon_answers_only_clients_that_trust_its_ca() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let (cert, key, ca) = certificates(&scratch.path().join("ours"))?;
    let (_, _, other_ca) = certificates(&scratch.path().join("other"))?;
    let ours = ClientTls::from_ca_file(&ca)?;
    let other = ClientTls::from_ca_file(&other_ca)?;
    for (name, _) in DAEMONS {
        let mut cmd = daemon(scratch.path(), name, "127.0.0.1:0")?;
        cmd.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key);
        let (_running, addr) = start(cmd)?;
        health(&addr, Some(&ours))?
            .map_err(|e| anyhow::anyhow!("{name} over TLS with its CA: {e}"))?;
        let clear = health(&addr, None)?;
        ensure!(clear.is_err(), "{name} answered a client in clear");
        let wrong = health(&addr, Some(&other))?;
        match wrong {
            Ok(()) => bail!("{name} answered a client trusting another CA"),
            Err(e) => ensure!(
                e.contains("does not verify against") && e.contains("other/ca.pem"),
                "{name}, a client trusting another CA: {e}"
            ),
        }
        // It still serves its own clients after refusing those.
        health(&addr, Some(&ours))?
            .map_err(|e| anyhow::anyhow!("{name} over TLS after the refusals: {e}"))?;
    }
    Ok(())
}

#[test]
fn a_daemon_beyond_loopback_without_a_certificate_refuses_to_start() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    for (name, _) in DAEMONS {
        // Auth off is allowed by --no-auth: only TLS is missing.
        let out = daemon(scratch.path(), name, "0.0.0.0:0")?
            .arg("--no-auth")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{name} started on 0.0.0.0 in clear");
        ensure!(
            stderr.contains("not a loopback address and has no TLS")
                && stderr.contains("--tls-cert")
                && stderr.contains("--no-tls"),
            "{name}: {stderr}"
        );
        // Asked for explicitly, it serves in clear.
        let mut cmd = daemon(scratch.path(), name, "0.0.0.0:0")?;
        cmd.args(["--no-auth", "--no-tls"]);
        let (_running, addr) = start(cmd)?;
        ensure!(addr.starts_with("0.0.0.0:"), "{name} listens on {addr}");
    }
    Ok(())
}

/// This machine's first IPv4 address beyond loopback, if it has one.
fn non_loopback_ipv4() -> Option<String> {
    let out = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|a| !a.is_loopback() && !a.is_unspecified())
        .map(|a| a.to_string())
}

fn text(v: &Value, key: &str) -> Result<String> {
    v[key]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no {key:?} in {v}"))
}

/// What a plaintext (http://) client gets from the gRPC service at `addr`: the error text.
fn clear_client_error(addr: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let attempt = async {
            let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await?;
            PageserverClient::new(ch)
                .list_tenants(ps::ListTenantsRequest {})
                .await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(Ok(())) => anyhow::bail!("a client in clear was answered by {addr}"),
            Ok(Err(e)) => Ok(format!("{e:#}")),
            Err(_) => anyhow::bail!("a client in clear got no answer from {addr} within 20 s"),
        }
    })
}

#[test]
fn a_cluster_with_tls_on_its_grpc_ports_runs_computes_end_to_end() -> Result<()> {
    let (listen_args, host): (Vec<String>, String) = match non_loopback_ipv4() {
        Some(ip) => (vec!["--listen".into(), ip.clone()], ip),
        None => {
            eprintln!("no IPv4 address beyond loopback: TLS forced on 127.0.0.1 (--tls)");
            (vec!["--tls".into()], "127.0.0.1".into())
        }
    };
    let tmp = scratch_dir("strata-tls-")?;
    let s = StrataCli::new(&tmp.path().join("cluster"))?;
    let mut init = vec!["init"];
    init.extend(listen_args.iter().map(String::as_str));
    s.run(&init)?;
    let result = scenario(&s, &host);
    let _ = s.run(&["stop"]);
    if result.is_err() && std::env::var_os("STRATA_KEEP_TMP").is_some() {
        eprintln!("STRATA_KEEP_TMP: keeping {}", tmp.keep().display());
    }
    result
}

fn scenario(s: &StrataCli, host: &str) -> Result<()> {
    let config = std::fs::read_to_string(s.dir.join("strata.toml"))?;
    ensure!(config.contains("tls = true"), "strata.toml: {config}");
    let tls = s.dir.join("tls");
    for key in ["pageserver.key", "safekeeper-1.key", "safekeeper-3.key"] {
        let mode = std::fs::metadata(tls.join(key))?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{key} has mode {mode:o}");
    }
    ensure!(tls.join("ca.pem").exists(), "no CA certificate");

    let started = s.json(&["start"])?;
    let ps_addr = text(&started["pageserver"], "grpc_addr")?;
    ensure!(
        ps_addr.starts_with(&format!("{host}:")),
        "the pageserver is not on {host}: {started}"
    );
    let refused = clear_client_error(&ps_addr)?;
    eprintln!("a client in clear: {refused}");

    // A writer commits through its walproposer (TLS to the safekeepers) and reads back
    // through its page filesystem (TLS to the pageserver).
    s.run(&["tenant", "create", "shop"])?;
    let main = s.json(&["compute", "start", "main"])?;
    let port = main["port"].as_u64().context("no port")? as u16;
    psql(
        port,
        "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 1000) g",
    )?;
    psql(port, "INSERT INTO t VALUES (1001)")?;
    let sum = psql(port, "SELECT sum(x) FROM t")?;
    ensure!(sum == "501501", "the writer read {sum:?}");

    // A branch at the committed state, read by a lazy compute: every page over TLS.
    s.run(&["branch", "create", "dev", "--from", "main"])?;
    let dev = s.json(&["compute", "start", "dev"])?;
    ensure!(dev["lazy"] == true, "a lazy compute: {dev}");
    let dev_port = dev["port"].as_u64().context("no port")? as u16;
    let sum = psql(dev_port, "SELECT sum(x) FROM t")?;
    ensure!(
        sum == "501501",
        "the lazy compute on the branch read {sum:?}"
    );

    let status = s.json(&["status"])?;
    ensure!(status["healthy"] == true, "status: {status}");
    Ok(())
}
