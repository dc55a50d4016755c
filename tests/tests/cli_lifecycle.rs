//! The operator's view of a real cluster (issue 21): `strata status` tells the truth (the
//! safekeepers' commit LSN, the pageserver's received, ingested, durable and remote LSNs with
//! their lags, each compute's LSN and walproposer, and a non-zero exit code on any problem),
//! and the lifecycle commands do what they say.
//!
//! Every `strata` run here has a deadline: a command that hangs fails the test.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use strata_tests::cluster::{bearer_request, on_new_cluster, psql, StrataCli};
use strata_tests::pg::pg_bin_dir;
use walproto::Lsn;

/// Longest a status may take (it asks every service with deadlines of a few seconds).
const STATUS_WITHIN: Duration = Duration::from_secs(30);

/// `strata [--json] args…` with a deadline: (exit code, stdout, stderr).
fn run_with_code(s: &StrataCli, args: &[&str]) -> Result<(i32, String, String)> {
    s.run_within(args, STATUS_WITHIN)
}

/// `strata --json status`: its exit code and what it printed.
fn status(s: &StrataCli) -> Result<(i32, Value)> {
    let (code, out, err) = run_with_code(s, &["--json", "status"])?;
    let v = serde_json::from_str(out.trim())
        .with_context(|| format!("status printed no JSON (exit {code}): {out}{err}"))?;
    Ok((code, v))
}

fn branch<'a>(st: &'a Value, name: &str) -> Result<&'a Value> {
    st["branches"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["branch"] == name))
        .with_context(|| format!("no branch {name} in status: {st}"))
}

fn lsn_field(v: &Value, field: &str) -> Result<Lsn> {
    v[field]
        .as_str()
        .with_context(|| format!("no {field} in {v}"))?
        .parse()
        .map_err(|e| anyhow::anyhow!("{field} of {v}: {e}"))
}

fn lag(b: &Value, what: &str) -> Result<u64> {
    b["lag_bytes"][what]
        .as_u64()
        .with_context(|| format!("no lag_bytes.{what} in {b}"))
}

/// Starts the cluster, creates the default tenant and a compute on `main`; the port.
fn cluster_with_compute(s: &StrataCli) -> Result<u16> {
    s.run(&["start"])?;
    s.run(&["tenant", "create"])?;
    let c = s.json(&["compute", "start", "main"])?;
    let port = c["port"].as_u64().context("compute port")?;
    Ok(u16::try_from(port)?)
}

/// A healthy cluster exits 0 and shows every position; after writes the commit LSN moves,
/// the durable and remote LSNs are seen behind and then catch up (lags move).
#[test]
fn status_shows_positions_and_lags_that_move() -> Result<()> {
    on_new_cluster("strata-status-", |s| {
        let port = cluster_with_compute(s)?;
        psql(port, "CREATE TABLE t (id int, pad text)")?;
        let (code, st) = status(s)?;
        ensure!(code == 0 && st["healthy"] == true, "exit {code}: {st}");
        let main = branch(&st, "main")?;
        let commit0 = lsn_field(main, "commit_lsn")?;
        for f in ["received_lsn", "last_record_end", "disk_consistent_lsn"] {
            lsn_field(main, f)?;
        }
        let compute = &st["computes"][0];
        ensure!(
            compute["walproposer"]["running"] == true && compute["running"] == true,
            "{compute}"
        );
        ensure!(lsn_field(compute, "current_lsn")? >= commit0, "{compute}");

        // Three rounds of ~1 MiB each; right after each, the durable LSN is behind (the
        // pageserver flushes every 10 s or at 32 MiB).
        let mut seen_durable_lag = 0;
        let mut last = st;
        for round in 0..3 {
            psql(
                port,
                &format!(
                    "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g \
                     /* round {round} */"
                ),
            )?;
            let (code, st) = status(s)?;
            ensure!(code == 0, "exit {code}: {st}");
            seen_durable_lag = seen_durable_lag.max(lag(branch(&st, "main")?, "durable")?);
            last = st;
        }
        let commit1 = lsn_field(branch(&last, "main")?, "commit_lsn")?;
        ensure!(
            commit1.0 >= commit0.0 + 3 * 1_000_000,
            "3 MB written, commit LSN moved from {commit0} to {commit1} only"
        );
        ensure!(
            seen_durable_lag > 0,
            "the durable LSN was never seen behind after a write"
        );
        // Then everything catches up: ingested, durable and remote reach the commit LSN.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, st) = status(s)?;
            let b = branch(&st, "main")?;
            let lags: Vec<u64> = ["ingested", "durable", "remote"]
                .iter()
                .map(|w| lag(b, w))
                .collect::<Result<_>>()?;
            if code == 0 && lags.iter().all(|l| *l == 0) {
                eprintln!("caught up: {b}");
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "lags {lags:?} (ingested, durable, remote) not 0 after 60 s: {st}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let (code, text, _) = run_with_code(s, &["status"])?;
        ensure!(code == 0 && text.contains("healthy"), "{code}: {text}");
        ensure!(text.contains("branch main/main: committed"), "{text}");
        Ok(())
    })
}

/// Builds a Postgres C function writing a record of custom resource manager 128 that touches
/// block 0 of a relation without a page image: a real extension's record the pageserver
/// cannot ingest.
fn build_custom_record_function(dir: &Path) -> Result<std::path::PathBuf> {
    let src = dir.join("emit_custom.c");
    std::fs::write(&src, CUSTOM_RECORD_C)?;
    let include = Command::new(pg_bin_dir().join("pg_config"))
        .arg("--includedir-server")
        .output()?;
    ensure!(include.status.success(), "pg_config --includedir-server");
    let include = String::from_utf8(include.stdout)?.trim().to_string();
    let so = dir.join("emit_custom.so");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-I", &include, "-o"])
        .arg(&so)
        .arg(&src)
        .output()?;
    ensure!(
        out.status.success(),
        "compiling the test extension: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(so)
}

const CUSTOM_RECORD_C: &str = r#"
#include "postgres.h"
#include "access/relation.h"
#include "access/xloginsert.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"

PG_MODULE_MAGIC;
PG_FUNCTION_INFO_V1(strata_emit_custom_record);

Datum
strata_emit_custom_record(PG_FUNCTION_ARGS)
{
    Relation rel = relation_open(PG_GETARG_OID(0), RowExclusiveLock);
    Buffer buf = ReadBuffer(rel, 0);
    XLogRecPtr lsn;

    LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
    START_CRIT_SECTION();
    MarkBufferDirty(buf);
    XLogBeginInsert();
    XLogRegisterBuffer(0, buf, REGBUF_STANDARD | REGBUF_NO_IMAGE);
    XLogRegisterData("strata", 6);
    lsn = XLogInsert(128, 0);
    PageSetLSN(BufferGetPage(buf), lsn);
    END_CRIT_SECTION();
    UnlockReleaseBuffer(buf);
    relation_close(rel, RowExclusiveLock);
    XLogFlush(lsn);
    PG_RETURN_LSN(lsn);
}
"#;

/// A record the pageserver cannot ingest stops the branch's ingest: `status` names the record
/// and exits 3 while the compute goes on committing (the committed WAL waits, counted).
#[test]
fn a_stopped_ingest_shows_in_status_with_a_failing_exit() -> Result<()> {
    on_new_cluster("strata-status-stop-", |s| {
        let so = build_custom_record_function(s.dir.parent().context("scratch dir")?)?;
        let port = cluster_with_compute(s)?;
        psql(port, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")?;
        psql(
            port,
            &format!(
                "CREATE FUNCTION emit_custom(regclass) RETURNS pg_lsn AS '{}', \
                 'strata_emit_custom_record' LANGUAGE C STRICT",
                so.display()
            ),
        )?;
        let (code, st) = status(s)?;
        ensure!(code == 0, "before the record: exit {code}: {st}");
        // XLogInsert returns the end of the record.
        let end: Lsn = psql(port, "SELECT emit_custom('t')")?.parse()?;
        // The compute goes on: these commits wait behind the stop.
        psql(port, "INSERT INTO t SELECT generate_series(2, 1000)")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let st = loop {
            let (code, st) = status(s)?;
            let main = branch(&st, "main")?;
            if !main["ingest_stopped"].is_null() {
                ensure!(code == 3, "a stopped ingest exits {code}: {st}");
                break st;
            }
            ensure!(
                Instant::now() < deadline,
                "no ingest stop in status 30 s after the custom record ending at {end}: {st}"
            );
            std::thread::sleep(Duration::from_millis(300));
        };
        let main = branch(&st, "main")?;
        let at = lsn_field(&main["ingest_stopped"], "record_lsn")?;
        ensure!(
            at < end && end.0 - at.0 <= 128,
            "the stop at {at} is not at the record ending at {end}: {main}"
        );
        ensure!(
            lsn_field(main, "last_record_end")? == at,
            "ingest did not stop at the record's start {at}: {main}"
        );
        ensure!(
            lag(main, "ingested")? > 0,
            "the commits after the record are not counted as waiting: {main}"
        );
        let problems = st["problems"].to_string();
        ensure!(
            st["healthy"] == false
                && problems.contains("INGEST STOPPED")
                && problems.contains("custom resource manager 128"),
            "{st}"
        );
        let (code, text, _) = run_with_code(s, &["status"])?;
        ensure!(
            code == 3 && text.contains("INGEST STOPPED at") && text.contains("PROBLEM"),
            "text status exits {code}: {text}"
        );
        Ok(())
    })
}

/// The files under `root` with `id` in their path.
fn path_mentions(root: &Path, id: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in entries {
            let p = e?.path();
            // Files only: an object store has no directories (a local one may leave empty ones).
            if p.is_dir() {
                dirs.push(p);
            } else if p.display().to_string().contains(id) {
                found.push(p.display().to_string());
            }
        }
    }
    Ok(found)
}

/// The files of every safekeeper's data directory with `id` in their path.
fn safekeeper_mentions(s: &StrataCli, id: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(&s.dir)? {
        let p = e?.path();
        let is_sk = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("safekeeper-"));
        if is_sk {
            found.extend(path_mentions(&p, id)?);
        }
    }
    Ok(found)
}

/// A safekeeper's DeleteTimeline, straight over gRPC with the cluster's admin token: its
/// status code and message.
fn safekeeper_delete(
    s: &StrataCli,
    addr: &str,
    tenant: &str,
    timeline: &str,
) -> Result<(tonic::Code, String)> {
    let token = s.admin_token()?;
    use walproto::proto::safekeeper as sk;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let req = bearer_request(
            sk::DeleteTimelineRequest {
                tenant_id: tenant.into(),
                timeline_id: timeline.into(),
            },
            Some(&token),
        )?;
        let mut client = sk::safekeeper_client::SafekeeperClient::new(ch);
        let call = client.delete_timeline(req);
        match tokio::time::timeout(Duration::from_secs(30), call).await {
            Ok(Ok(_)) => Ok((tonic::Code::Ok, String::new())),
            Ok(Err(st)) => Ok((st.code(), st.message().to_string())),
            Err(_) => bail!("safekeeper {addr} did not answer DeleteTimeline within 30 s"),
        }
    })
}

/// `strata --json args…` that must fail: its error line.
fn refused(s: &StrataCli, args: &[&str]) -> Result<String> {
    s.refused_within(args, STATUS_WITHIN)
}

/// The lifecycle on one cluster, every step with `--json` parsed and its effect checked:
/// start, computes listed, leases taken, listed, counted by GC and revoked, restore points
/// printed as Postgres prints LSNs, a branch and then the tenant deleted (computes first; the
/// files gone locally and in the object store), stop; and completions for three shells.
#[test]
fn the_lifecycle_with_json_and_its_effects() -> Result<()> {
    let tmp = strata_tests::cluster::scratch_dir("strata-lifecycle-")?;
    let s = StrataCli::new(&tmp.path().join("cluster"))?;
    let init = s.json(&["init"])?;
    ensure!(
        init["pageserver"]["grpc_addr"].is_string()
            && init["safekeepers"][2]["pg_addr"].is_string(),
        "init --json: {init}"
    );
    let sk_addr = init["safekeepers"][0]["grpc_addr"]
        .as_str()
        .context("a safekeeper's gRPC address")?
        .to_string();
    let result = lifecycle(&s, &sk_addr);
    let _ = s.run(&["stop"]);
    result
}

fn lifecycle(s: &StrataCli, sk_addr: &str) -> Result<()> {
    let started = s.json(&["start"])?;
    let running = started["services"]
        .as_array()
        .context("services")?
        .iter()
        .filter(|v| v["state"] == "running")
        .count();
    ensure!(running >= 4, "start --json: {started}");
    let t = s.json(&["tenant", "create", "shop"])?;
    let tenant_id = t["tenant_id"].as_str().context("tenant_id")?.to_string();
    let port = s.json(&["compute", "start", "main", "--tenant", "shop"])?["port"]
        .as_u64()
        .context("port")?;
    let port = u16::try_from(port)?;
    psql(
        port,
        "CREATE TABLE t AS SELECT generate_series(1, 1000) AS id",
    )?;
    // Postgres writes a restore point without flushing it; the next commit flushes it, and
    // once that commit returns, the next "as of now" read sees both at once (the safekeepers
    // learn the commit LSN only with the walproposer's next message, up to 20 ms later: the
    // CLI counts what a majority flushed). Several rounds, so a read that raced would show.
    let mut rp = String::new();
    for round in 0..5 {
        let name = format!("before-dev-{round}");
        rp = psql(port, &format!("SELECT pg_create_restore_point('{name}')"))?;
        psql(port, &format!("CREATE TABLE flushed_after_{round} ()"))?;
        let points = s.json(&["restore-points", "--tenant", "shop"])?;
        let listed = points
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name.as_str()))
            .with_context(|| format!("restore point {name} not listed right after the commit that flushed it: {points}"))?;
        ensure!(
            listed["lsn"] == rp.as_str(),
            "restore-points prints {} where Postgres prints {rp}",
            listed["lsn"]
        );
    }
    let dev = s.json(&["branch", "create", "dev", "--tenant", "shop"])?;
    let dev_id = dev["timeline_id"].as_str().context("dev id")?.to_string();
    s.json(&["compute", "start", "dev", "--tenant", "shop"])?;
    let computes = s.json(&["compute", "list"])?;
    let names: Vec<&str> = computes
        .as_array()
        .context("compute list")?
        .iter()
        .filter(|c| c["running"] == true)
        .filter_map(|c| c["name"].as_str())
        .collect();
    ensure!(names == ["dev", "main"], "compute list --json: {computes}");

    // A lease shows in the list and in GC's cutoff; revoked, in neither.
    let leased = s.json(&["lease", &rp, "--branch", "main", "--tenant", "shop"])?;
    ensure!(leased["lsn"] == rp.as_str(), "lease --json: {leased}");
    // The lazy computes' page filesystems lease their start LSNs too: look for this lease.
    let lists_it = |list: &Value| {
        list.as_array().is_some_and(|l| {
            l.iter()
                .any(|e| e["branch"] == "main" && e["lsn"] == rp.as_str())
        })
    };
    let list = s.json(&["lease", "list", "--tenant", "shop"])?;
    ensure!(lists_it(&list), "lease list --json: {list}");
    let gc = s.json(&["gc", "--branch", "main", "--tenant", "shop"])?;
    let rp_lsn: Lsn = rp.parse()?;
    let gc_counts_it = |gc: &Value| {
        gc["timelines"][0]["lease_lsns"]
            .as_array()
            .is_some_and(|l| {
                l.iter()
                    .any(|v| v.as_str().and_then(|x| x.parse::<Lsn>().ok()) == Some(rp_lsn))
            })
    };
    ensure!(gc_counts_it(&gc), "GC does not count the lease: {gc}");
    let revoked = s.json(&["lease", "revoke", &rp, "--tenant", "shop"])?;
    ensure!(!lists_it(&revoked["leases"]), "{revoked}");
    ensure!(
        !lists_it(&s.json(&["lease", "list", "--tenant", "shop"])?),
        "the revoked lease is still listed"
    );
    let gc = s.json(&["gc", "--branch", "main", "--tenant", "shop"])?;
    ensure!(
        !gc_counts_it(&gc),
        "GC still counts the revoked lease: {gc}"
    );
    let err = refused(s, &["lease", "revoke", &rp, "--tenant", "shop"])?;
    ensure!(err.contains("no lease"), "{err}");
    // Below the branch's start: said so, and in the user's names.
    let err = refused(
        s,
        &["lease", "0/100", "--branch", "dev", "--tenant", "shop"],
    )?;
    ensure!(
        err.contains("below the start of branch dev") && !err.contains(&dev_id),
        "{err}"
    );

    // A safekeeper refuses to forget a timeline while its walproposer is connected.
    ensure!(
        !safekeeper_mentions(s, &dev_id)?.is_empty(),
        "the safekeepers hold nothing of dev: the checks below prove nothing"
    );
    let (code, msg) = safekeeper_delete(s, sk_addr, &tenant_id, &dev_id)?;
    ensure!(
        code == tonic::Code::FailedPrecondition && msg.contains("proposer"),
        "DeleteTimeline with a proposer connected: {code:?} {msg}"
    );

    // Deleting dev stops its compute and removes its files here, in the object store and on
    // the safekeepers.
    let deleted = s.json(&["branch", "delete", "dev", "--tenant", "shop"])?;
    ensure!(
        deleted["computes_removed"][0] == "dev"
            && deleted["safekeepers"]["removed"]
                .as_array()
                .is_some_and(|r| r.len() == 3 && r.iter().all(|x| x["timelines_removed"] == 1))
            && deleted["safekeepers"]["failures"]
                .as_array()
                .is_some_and(|f| f.is_empty()),
        "branch delete: {deleted}"
    );
    let on_sk = safekeeper_mentions(s, &dev_id)?;
    ensure!(
        on_sk.is_empty(),
        "dev's WAL remains on the safekeepers: {on_sk:?}"
    );
    // Asked again, a safekeeper has nothing left to delete and says so without an error.
    let (code, msg) = safekeeper_delete(s, sk_addr, &tenant_id, &dev_id)?;
    ensure!(
        code == tonic::Code::Ok,
        "a second DeleteTimeline: {code:?} {msg}"
    );
    let local = path_mentions(&s.dir.join("pageserver"), &dev_id)?;
    let remote = path_mentions(&s.dir.join("remote"), &dev_id)?;
    ensure!(
        local.is_empty() && remote.is_empty(),
        "dev's files remain: {local:?} {remote:?}"
    );
    ensure!(
        !path_mentions(&s.dir.join("remote"), &tenant_id)?.is_empty(),
        "the object store holds nothing of the tenant: the check above proves nothing"
    );
    let st = s.json(&["status"])?;
    ensure!(branch(&st, "dev").is_err(), "dev is still in status: {st}");

    // The tenant: computes first, then everything of it, locally and remotely.
    let deleted = s.json(&["tenant", "delete", "shop"])?;
    ensure!(
        deleted["computes_removed"][0] == "main"
            && deleted["remote_objects_deleted"].as_u64() > Some(0),
        "tenant delete: {deleted}"
    );
    let local = path_mentions(&s.dir.join("pageserver"), &tenant_id)?;
    // The pageserver's part of the object store (`t/`) and the safekeepers' offloaded WAL
    // (`wal/`), and the safekeepers' own copies.
    let remote = path_mentions(&s.dir.join("remote"), &tenant_id)?;
    let on_sk = safekeeper_mentions(s, &tenant_id)?;
    ensure!(
        local.is_empty() && remote.is_empty() && on_sk.is_empty(),
        "the tenant's files remain: {local:?} {remote:?} {on_sk:?}"
    );
    ensure!(
        s.json(&["tenant", "list"])?
            .as_array()
            .is_some_and(|l| l.is_empty()),
        "the tenant is still listed"
    );
    ensure!(
        s.json(&["compute", "list"])?
            .as_array()
            .is_some_and(|l| l.is_empty()),
        "computes remain"
    );
    let (code, st) = status(s)?;
    ensure!(code == 0, "status after the deletions exits {code}: {st}");

    for shell in ["bash", "zsh", "fish"] {
        let script = s.run(&["completions", shell])?;
        ensure!(
            script.contains("strata") && script.contains("lease") && script.len() > 1000,
            "{shell} completions: {script}"
        );
        let j = s.json(&["completions", shell])?;
        ensure!(j["shell"] == shell, "{j}");
    }
    let stopped = s.json(&["stop"])?;
    ensure!(
        stopped["services"]
            .as_array()
            .is_some_and(|v| v.iter().all(|x| x["state"] != "running")),
        "stop --json: {stopped}"
    );
    Ok(())
}
