//! Restoring and querying a group (`strata group branch`, `strata group query`): every member at its LSN of a cut (or, with
//! `--naive`, at one wall-clock time), then the settlement of in-doubt two-phase transactions.
//!
//! Settlement needs evidence that a gid committed somewhere. Postgres keeps none after the
//! fact: `pg_prepared_xacts` forgets a gid once it is committed *or* rolled back, and a
//! member may never have prepared it. So the evidence is the application's: each
//! participant's prepared transaction inserts its gid into [`EVIDENCE_TABLE`] on its member.
//! A gid whose row is visible on a member committed there, so the coordinator had decided to
//! commit (it issues COMMIT PREPARED only after every PREPARE succeeded): an in-doubt
//! participant of it is committed. An in-doubt gid with no such row anywhere is rolled back:
//! no member committed it within the cut, so no client saw it commit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::store::{find_cut, Group, GroupStore, Member};
use crate::branches::{self, NewBranch};
use crate::cluster::ClusterConfig;
use crate::computes::{self, StartRequest};
use crate::output::{stdout_to_stderr, Output};
use crate::target::Target;

/// The table (`gid text`) a participant's prepared transaction writes its gid to.
pub const EVIDENCE_TABLE: &str = "strata_2pc_gids";

/// Where each member goes: an LSN of a cut, or the same time for all (`--naive`).
fn targets(gs: &GroupStore, g: &Group, at: &str, naive: bool) -> Result<(String, Vec<Target>)> {
    if naive {
        let us = match Target::parse(at)? {
            Target::Time(us) => us,
            _ => bail!("--naive takes a time (2026-11-21 22:10:05+00 or @<unix seconds>)"),
        };
        return Ok((
            format!("time {} (naive)", crate::target::format_time(us)),
            g.members.iter().map(|_| Target::Time(us)).collect(),
        ));
    }
    let cut = find_cut(g, &gs.cuts(g)?, at)?;
    let mut out = Vec::new();
    for m in &g.members {
        let lsn = cut
            .lsns
            .get(&m.tenant)
            .with_context(|| format!("cut {} has no LSN for member {}", cut.name, m.tenant))?;
        out.push(Target::Lsn(lsn.parse().map_err(|e| {
            anyhow::anyhow!("cut {}: bad LSN {lsn:?}: {e}", cut.name)
        })?));
    }
    Ok((
        format!(
            "cut {} ({})",
            cut.name,
            crate::target::format_time(cut.time_us)
        ),
        out,
    ))
}

fn target_text(t: &Target) -> String {
    match t {
        Target::Lsn(l) => l.to_string(),
        Target::Time(us) => crate::target::format_time(*us),
        Target::RestorePoint(n) => n.clone(),
    }
}

/// A restored member: its compute's port.
struct Restored<'a> {
    member: &'a Member,
    compute: String,
    port: u16,
}

/// A group restored by [`branch`]: where, each member's compute, and what was settled.
#[derive(Debug)]
pub struct GroupRestored {
    /// The cut (or, naive, the time) as "cut NAME (TIME)" or "time TIME (naive)".
    pub at: String,
    pub members: Vec<RestoredMember>,
    pub settled: Vec<Settled>,
}

#[derive(Debug)]
pub struct RestoredMember {
    pub tenant: String,
    pub compute: String,
    pub port: u16,
}

/// A member's restore as far as it got: its new branch (if made) and compute (if started).
struct MemberRestore<'a> {
    member: &'a Member,
    branch_made: bool,
    started: Result<Restored<'a>>,
}

/// Compute names for the members' new branch: the branch's name, then `<branch>-1`, … (as
/// `compute start` names them), chosen up front so that parallel starts do not pick the same.
fn compute_names(dir: &Path, new_branch: &str, count: usize) -> Result<Vec<String>> {
    let existing = computes::ComputeRecord::list(dir)?;
    let taken = |n: &str| existing.iter().any(|c| c.name == n);
    let names: Vec<String> = (0..)
        .map(|i| match i {
            0 => new_branch.to_string(),
            _ => format!("{new_branch}-{i}"),
        })
        .filter(|n| !taken(n))
        .take(count)
        .collect();
    for n in &names {
        crate::names::validate(crate::names::Kind::Compute, n)
            .with_context(|| format!("naming the members' computes after branch {new_branch}"))?;
    }
    Ok(names)
}

/// Branches member `m` at `t` and starts a read-write compute `compute` on the new branch.
fn restore_member<'a>(
    dir: &Path,
    m: &'a Member,
    t: &Target,
    new_branch: &str,
    compute: &str,
) -> MemberRestore<'a> {
    let quiet = Output::new(false);
    // Branch creations take turns on the names lock (`cluster::lock`) inside `branches`.
    let at = target_text(t);
    let made = branches::create(
        dir,
        &NewBranch {
            name: new_branch,
            from: &m.branch,
            at: Some(&at),
            exclusive: false,
            tenant: Some(&m.tenant),
        },
        &quiet,
    );
    if let Err(e) = made {
        return MemberRestore {
            member: m,
            branch_made: false,
            started: Err(e.context(format!("branching member {}", m.tenant))),
        };
    }
    let started = computes::start(
        dir,
        StartRequest {
            branch: new_branch,
            tenant: Some(&m.tenant),
            at: None,
            read_only: false,
            name: Some(compute.to_string()),
            ttl_secs: None,
            full_copy: false,
            settings: &[],
        },
        &quiet,
    )
    .map(|rec| Restored {
        member: m,
        compute: rec.name,
        port: rec.port,
    })
    .with_context(|| format!("starting the compute of member {}", m.tenant));
    MemberRestore {
        member: m,
        branch_made: true,
        started,
    }
}

/// After a member failed: deletes the new branch (with its compute) on every member that has
/// one, so a retry can use the same name; says what could not be removed.
fn undo(dir: &Path, new_branch: &str, attempts: &[MemberRestore], out: &Output) -> String {
    let mut left = Vec::new();
    for a in attempts.iter().filter(|a| a.branch_made) {
        out.step(&format!(
            "member {}: deleting branch {new_branch}",
            a.member.tenant
        ));
        let deleted = crate::delete::branch_delete(
            dir,
            new_branch,
            Some(&a.member.tenant),
            false,
            &Output::new(false),
        );
        if let Err(e) = deleted {
            left.push(format!(
                "branch {new_branch} of {} is left (deleting it failed: {e:#})",
                a.member.tenant
            ));
        }
    }
    if left.is_empty() {
        "the other members' new branches were deleted".into()
    } else {
        left.join("; ")
    }
}

/// Restores every member of group `name` at the cut `at` (naive: the time `at`) as branch
/// `new_branch` with a read-write compute, then settles in-doubt two-phase transactions
/// (naive: only lists them).
pub fn branch(
    dir: &Path,
    name: &str,
    at: &str,
    new_branch: &str,
    naive: bool,
    out: &Output,
) -> Result<GroupRestored> {
    let gs = GroupStore::open(dir)?;
    let g = gs.load(name)?;
    let (what, targets) = targets(&gs, &g, at, naive)?;
    let cfg = ClusterConfig::load(dir)?;
    let computes = compute_names(dir, new_branch, g.members.len())?;
    for (m, t) in g.members.iter().zip(&targets) {
        out.step(&format!(
            "member {}: branch {new_branch} of {} at {}",
            m.tenant,
            m.branch,
            target_text(t)
        ));
    }
    // Every member at once: a thread each branches it and starts its compute (the starts
    // claim distinct ports, see `computes::ports`).
    let attempts: Vec<MemberRestore> = stdout_to_stderr(|| {
        std::thread::scope(|s| {
            let threads: Vec<_> = g
                .members
                .iter()
                .zip(&targets)
                .zip(&computes)
                .map(|((m, t), c)| s.spawn(move || restore_member(dir, m, t, new_branch, c)))
                .collect();
            threads
                .into_iter()
                .zip(&g.members)
                .map(|(h, m)| {
                    h.join().unwrap_or_else(|_| MemberRestore {
                        member: m,
                        branch_made: false,
                        started: Err(anyhow::anyhow!(
                            "restoring member {}: its thread panicked",
                            m.tenant
                        )),
                    })
                })
                .collect()
        })
    });
    let failures: Vec<String> = attempts
        .iter()
        .filter_map(|a| a.started.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    if !failures.is_empty() {
        let left = stdout_to_stderr(|| undo(dir, new_branch, &attempts, out));
        bail!("group {name} not restored: {}; {left}", failures.join("; "));
    }
    let restored: Vec<Restored> = attempts
        .into_iter()
        .filter_map(|a| a.started.ok())
        .collect();
    // A naive restore is the server-by-server baseline: nothing is settled across members.
    out.step(if naive {
        "listing in-doubt two-phase transactions (naive: not settled)"
    } else {
        "settling in-doubt two-phase transactions"
    });
    let settled = settle(dir, &cfg, &restored, !naive)?;
    Ok(GroupRestored {
        at: what,
        members: restored
            .into_iter()
            .map(|r| RestoredMember {
                tenant: r.member.tenant.clone(),
                compute: r.compute,
                port: r.port,
            })
            .collect(),
        settled,
    })
}

/// An in-doubt two-phase transaction settled (or, naive, only found) on a member.
#[derive(Debug)]
pub struct Settled {
    pub tenant: String,
    pub gid: String,
    /// What was done: "COMMIT PREPARED", "ROLLBACK PREPARED", or (naive) "LEFT PREPARED".
    pub action: &'static str,
    pub why: String,
}

fn hex_decode(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

/// `'text'` as an SQL literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Commits each in-doubt gid committed on another member, rolls back the others (only
/// lists them unless `apply`).
fn settle(
    dir: &Path,
    cfg: &ClusterConfig,
    members: &[Restored],
    apply: bool,
) -> Result<Vec<Settled>> {
    // (member index, database, gid) of every prepared transaction.
    let mut prepared = Vec::new();
    for (i, r) in members.iter().enumerate() {
        let node = computes::node(dir, cfg, &r.compute)?;
        let rows = node.psql(
            r.port,
            "postgres",
            "SELECT encode(convert_to(database, 'UTF8'), 'hex') || ' ' || \
             encode(convert_to(gid, 'UTF8'), 'hex') FROM pg_prepared_xacts",
        )?;
        for row in rows.lines().filter(|l| !l.is_empty()) {
            let (db, gid) = row
                .split_once(' ')
                .and_then(|(d, g)| Some((hex_decode(d)?, hex_decode(g)?)))
                .with_context(|| format!("unexpected pg_prepared_xacts row {row:?}"))?;
            prepared.push((i, db, gid));
        }
    }
    let databases: BTreeSet<&str> = prepared.iter().map(|(_, d, _)| d.as_str()).collect();
    // gid → the members whose evidence table shows it committed.
    let mut committed_on: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let wanted: Vec<String> = prepared.iter().map(|(_, _, g)| literal(g)).collect();
    if !wanted.is_empty() {
        for (i, r) in members.iter().enumerate() {
            let node = computes::node(dir, cfg, &r.compute)?;
            for db in &databases {
                let sql = format!(
                    "SELECT encode(convert_to(gid, 'UTF8'), 'hex') FROM {EVIDENCE_TABLE} \
                     WHERE gid IN ({})",
                    wanted.join(",")
                );
                let has_table = node.psql(
                    r.port,
                    db,
                    &format!(
                        "SELECT to_regclass({}) IS NOT NULL",
                        literal(EVIDENCE_TABLE)
                    ),
                )?;
                if has_table.trim() != "t" {
                    continue;
                }
                for row in node.psql(r.port, db, &sql)?.lines() {
                    if let Some(g) = hex_decode(row.trim()) {
                        committed_on.entry(g).or_default().push(i);
                    }
                }
            }
        }
    }
    let mut settled = Vec::new();
    for (i, db, gid) in prepared {
        let r = &members[i];
        let witnesses: Vec<&str> = committed_on
            .get(&gid)
            .into_iter()
            .flatten()
            .filter(|&&w| w != i)
            .map(|&w| members[w].member.tenant.as_str())
            .collect();
        let (action, why) = if !apply {
            (
                "LEFT PREPARED",
                "a naive restore settles nothing".to_string(),
            )
        } else if witnesses.is_empty() {
            (
                "ROLLBACK PREPARED",
                format!("committed on no other member within the cut ({EVIDENCE_TABLE})"),
            )
        } else {
            (
                "COMMIT PREPARED",
                format!("committed on {}", witnesses.join(", ")),
            )
        };
        if apply {
            computes::node(dir, cfg, &r.compute)?
                .psql(r.port, &db, &format!("{action} {}", literal(&gid)))
                .with_context(|| format!("{action} {gid:?} on member {}", r.member.tenant))?;
        }
        settled.push(Settled {
            tenant: r.member.tenant.clone(),
            gid,
            action,
            why,
        });
    }
    Ok(settled)
}

/// What [`query`] got from each member.
#[derive(Debug)]
pub struct GroupQuery {
    /// The cut, as "cut NAME (TIME)".
    pub at: String,
    pub members: Vec<MemberRows>,
}

#[derive(Debug)]
pub struct MemberRows {
    pub tenant: String,
    pub lsn: String,
    /// psql's output.
    pub output: String,
}

/// One read-only query per member at its LSN of the cut (in-doubt transactions show as in
/// progress: nothing is settled on a read-only compute).
pub fn query(dir: &Path, name: &str, at: &str, sql: &str, database: &str) -> Result<GroupQuery> {
    let gs = GroupStore::open(dir)?;
    let g = gs.load(name)?;
    let (what, targets) = targets(&gs, &g, at, false)?;
    let cfg = ClusterConfig::load(dir)?;
    let mut members = Vec::new();
    for (m, t) in g.members.iter().zip(targets) {
        let compute = format!("groupquery-{}-{}", m.tenant, std::process::id());
        let compute = if crate::names::validate(crate::names::Kind::Compute, &compute).is_ok() {
            compute
        } else {
            format!("groupquery-{}", std::process::id())
        };
        let rec = stdout_to_stderr(|| {
            computes::start(
                dir,
                StartRequest {
                    branch: &m.branch,
                    tenant: Some(&m.tenant),
                    at: Some(t),
                    read_only: true,
                    name: Some(compute.clone()),
                    ttl_secs: None,
                    full_copy: false,
                    settings: &[],
                },
                &Output::new(false),
            )
        })
        .with_context(|| format!("member {}", m.tenant))?;
        let rows = computes::node(dir, &cfg, &compute)?.psql(rec.port, database, sql);
        computes::remove(dir, &cfg, &compute)?;
        let rows = rows.with_context(|| format!("member {}", m.tenant))?;
        members.push(MemberRows {
            tenant: m.tenant.clone(),
            lsn: rec.lsn,
            output: rows,
        });
    }
    Ok(GroupQuery { at: what, members })
}
