//! Taking a consistent cut: fence every member's walproposer (all or none), note each one's
//! quorum commit LSN, lift the fences, and store the cut in the object store only if every
//! fence held throughout.
//! Why this is consistent: "Groups and consistent cuts" in `docs/architecture.md`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::store::{Cut, Group, GroupStore, Member};
use crate::cluster::ClusterConfig;
use crate::computes::{self, ComputeRecord};

/// A fence not lifted within this lifts itself (a coordinator that died mid-cut).
pub const FENCE_TTL: Duration = Duration::from_secs(5);
/// Names of the automatic cutter's cuts start with this (refused for named cuts).
pub const AUTO_PREFIX: &str = "auto-";
/// Connecting to and hearing from one walproposer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// How a member is cut.
enum Way {
    /// Its writer's walproposer (a compute's, or an imported source's) serves a fence here.
    Fence(SocketAddr),
    /// No writer: nothing can commit, so the cut is where its committed WAL ends (`lsn`),
    /// provided the safekeepers' commit LSN (`commit`) has not moved by the end of the cut.
    Idle { lsn: String, commit: u64 },
}

/// How `member` is cut: the fence of its read-write compute if it has one, else its end of
/// committed WAL.
fn way(dir: &Path, cfg: &ClusterConfig, member: &Member) -> Result<Way> {
    let writer = ComputeRecord::list(dir)?
        .into_iter()
        .find(|c| c.timeline_id == member.timeline_id && !c.read_only);
    let Some(rec) = writer else {
        let commit = idle_commit(cfg, member)?;
        let mut ps = crate::mgmt::Pageserver::connect(&cfg.pageserver.grpc_addr())?;
        let lsn = computes::wait_for_committed_wal(
            cfg,
            &mut ps,
            &member.tenant_id,
            &member.timeline_id,
            false,
            &crate::output::Output::new(false),
        )
        .with_context(|| format!("member {} (no compute running)", member.tenant))?;
        return Ok(Way::Idle {
            lsn: lsn.to_string(),
            commit,
        });
    };
    let p = computes::control_file(dir, &rec.name);
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "member {}: compute {} has no fence address ({} unreadable; a compute started \
             before groups existed needs a restart)",
            member.tenant,
            rec.name,
            p.display()
        )
    })?;
    let addr = text
        .trim()
        .parse()
        .with_context(|| format!("{} holds no address", p.display()))?;
    Ok(Way::Fence(addr))
}

/// The safekeepers' commit LSN of a member without a writer (the LSN they were told: with no
/// walproposer, WAL flushed beyond it is not streamed to the pageserver).
fn idle_commit(cfg: &ClusterConfig, member: &Member) -> Result<u64> {
    computes::committed_on_safekeepers(cfg, &member.tenant_id, &member.timeline_id, false)
        .map(|c| c.marked)
        .with_context(|| format!("member {} (no compute running)", member.tenant))
}

/// POSTs `path_and_query` to `addr` with `token` as its bearer token; the JSON answer of a
/// 200.
fn post(addr: SocketAddr, path_and_query: &str, token: Option<&str>) -> Result<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let _ = s.set_nodelay(true);
    let authorization = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST {path_and_query} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending to {addr}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .with_context(|| format!("no answer from {addr} within {HTTP_TIMEOUT:?}"))?;
    let status = answer.split(' ').nth(1).unwrap_or("");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    if status != "200" {
        bail!("{addr} answered {status}: {body}");
    }
    serde_json::from_str(body).with_context(|| format!("{addr} answered {body:?}"))
}

/// A fence taken on one member.
struct Held {
    addr: SocketAddr,
    token: u64,
    commit: String,
}

fn fence(addr: SocketAddr, token: Option<&str>) -> Result<Held> {
    let v = post(
        addr,
        &format!("/fence?ttl_ms={}", FENCE_TTL.as_millis()),
        token,
    )?;
    let token = v["token"]
        .as_u64()
        .context("the fence answer has no token")?;
    let commit = v["commit_lsn"]
        .as_str()
        .context("the fence answer has no commit_lsn")?
        .to_string();
    Ok(Held {
        addr,
        token,
        commit,
    })
}

/// Lifts a fence; true if it held throughout.
fn unfence(h: &Held, token: Option<&str>) -> Result<bool> {
    let v = post(h.addr, &format!("/unfence?token={}", h.token), token)?;
    v["held"]
        .as_bool()
        .context("the unfence answer has no held")
}

/// Runs `f` on every item at once (one thread each: the pause is one round trip, not N).
fn on_all<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|i| s.spawn(|| f(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a fence thread panicked"))
            .collect()
    })
}

/// Takes and stores a cut named `name` of `group`. On any failure every fence taken is lifted
/// and nothing is stored.
pub fn take(gs: &GroupStore, group: &Group, name: &str) -> Result<Cut> {
    let dir = gs.dir();
    // Automatic names are unique by their time; the cutter does not read every cut each time.
    if !name.starts_with(AUTO_PREFIX) && gs.cuts(group)?.iter().any(|c| c.name == name) {
        bail!("group {} already has a cut named {name:?}", group.name);
    }
    let cfg = ClusterConfig::load(dir)?;
    let mut missing = Vec::new();
    let mut found = Vec::new();
    let mut idle = Vec::new();
    for m in &group.members {
        match way(dir, &cfg, m) {
            Ok(Way::Fence(a)) => found.push((m.tenant.clone(), a)),
            Ok(Way::Idle { lsn, commit }) => idle.push((m, lsn, commit)),
            Err(e) => missing.push(format!("{e:#}")),
        }
    }
    if !missing.is_empty() {
        bail!("no cut taken: {}", missing.join("; "));
    }
    // The CLI's token (the cluster's admin token, or $STRATA_TOKEN): the fence needs admin.
    let token = crate::auth_setup::cli_token()?;
    let token = token.as_deref();
    let t0 = Instant::now();
    let fenced = on_all(&found, |(_, a)| fence(*a, token));
    let time_us = unix_micros_now();
    let held: Vec<&Held> = fenced.iter().filter_map(|r| r.as_ref().ok()).collect();
    let lifted = on_all(&held, |h| unfence(h, token));
    let pause_ms = t0.elapsed().as_secs_f64() * 1000.0;

    let mut problems = Vec::new();
    for ((tenant, addr), r) in found.iter().zip(&fenced) {
        if let Err(e) = r {
            problems.push(format!("fencing member {tenant} ({addr}): {e:#}"));
        }
    }
    for (h, r) in held.iter().zip(&lifted) {
        let tenant = found
            .iter()
            .find(|(_, a)| *a == h.addr)
            .map_or("?", |(t, _)| t.as_str());
        match r {
            Ok(true) => {}
            Ok(false) => problems.push(format!(
                "member {tenant}: the fence did not hold (its walproposer restarted, or the \
                 fence outlived its {FENCE_TTL:?} deadline)"
            )),
            Err(e) => problems.push(format!("lifting the fence of member {tenant}: {e:#}")),
        }
    }
    // A member without a writer is cut where its committed WAL ended before the fences, if
    // nothing committed there up to now (after the cut's time): then every commit of it
    // acknowledged before that time is inside.
    for (m, _, before) in &idle {
        match idle_commit(&cfg, m) {
            Ok(now) if now == *before => {}
            Ok(now) => problems.push(format!(
                "member {} had no compute, but its commit LSN moved from {} to {} during the \
                 cut (a compute started: the next cut fences it)",
                m.tenant,
                walproto::Lsn(*before),
                walproto::Lsn(now)
            )),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        bail!(
            "no cut taken (every fence taken was lifted): {}",
            problems.join("; ")
        );
    }
    let mut lsns: BTreeMap<String, String> = found
        .iter()
        .zip(&fenced)
        .filter_map(|((t, _), r)| r.as_ref().ok().map(|h| (t.clone(), h.commit.clone())))
        .collect();
    lsns.extend(
        idle.iter()
            .map(|(m, lsn, _)| (m.tenant.clone(), lsn.clone())),
    );
    let cut = Cut {
        name: name.to_string(),
        time_us,
        lsns,
        pause_ms,
    };
    gs.add_cut(group, &cut)?;
    Ok(cut)
}

pub fn unix_micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
