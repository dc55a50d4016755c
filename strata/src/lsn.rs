//! LSN resolution: what an `--at` target (an LSN, a time, a restore point) means on a branch,
//! and what is committed on a branch, waited for until the pageserver has ingested it. Branch
//! creation, computes, time-travel queries and group cuts all start from these.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use walproto::proto::pageserver as ps;
use walproto::proto::safekeeper as sk;
use walproto::Lsn;

use crate::cluster::ClusterConfig;
use crate::mgmt::Pageserver;
use crate::output::Output;
use crate::target::Target;

/// An `--at` target as the pageserver's branch request wants it.
pub fn to_request_target(t: &Target) -> ps::create_branch_request::Target {
    use ps::create_branch_request::Target as T;
    match t {
        Target::Lsn(l) => T::Lsn(l.0),
        Target::Time(us) => T::TimestampMicros(*us),
        Target::RestorePoint(n) => T::RestorePoint(n.clone()),
    }
}

/// The LSN an `--at` target means on a timeline.
pub fn resolve_lsn(
    ps: &mut Pageserver,
    tenant_id: &str,
    timeline_id: &str,
    target: &Target,
    inclusive: bool,
) -> Result<Lsn> {
    match target {
        Target::Lsn(l) => Ok(*l),
        Target::Time(us) => Ok(Lsn(ps.lsn_for_timestamp(
            tenant_id,
            timeline_id,
            *us,
            inclusive,
        )?)),
        Target::RestorePoint(name) => {
            let points = ps.restore_points(tenant_id, timeline_id)?;
            match points.iter().find(|p| &p.name == name) {
                Some(p) => Ok(Lsn(p.lsn)),
                None => {
                    let known: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
                    bail!(
                        "no restore point named {name:?} on this branch; restore points: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )
                }
            }
        }
    }
}

/// The LSN every committed record of the branch ends at, once the pageserver has ingested all
/// of it (a new read-write compute continues exactly there). A writer also needs a safekeeper
/// majority and no uncommitted tail.
///
/// A reader counts as committed what a majority of the safekeepers flushed in the newest term
/// ([`Committed::for_reader`]), not only what they were told is committed: the walproposer
/// acknowledges a commit to Postgres as soon as a majority flushed it, but tells the
/// safekeepers the new commit LSN only with its next message (up to its commit delay later),
/// and a read "as of now" right after a commit must see it. The pageserver receives WAL up to
/// the safekeepers' commit LSN, so the wait ends once the walproposer has sent it; with no
/// walproposer to send it (the compute is gone), the read settles for the marked commit LSN
/// after [`UNMARKED_COMMIT_GRACE`], and says so.
///
/// Never waits for WAL that cannot come: it fails at once when no safekeeper answers (what is
/// committed is unknown) or the pageserver reports its ingest of the branch stopped, and after
/// [`crate::mgmt::wait_limit`] otherwise, saying where the pageserver is, what it waited for
/// and what the pageserver's walreceiver reports.
pub fn wait_for_committed_wal(
    cfg: &ClusterConfig,
    ps: &mut Pageserver,
    tenant_id: &str,
    timeline_id: &str,
    for_writer: bool,
    out: &Output,
) -> Result<Lsn> {
    let limit = crate::mgmt::wait_limit()?;
    let mut known = committed_on_safekeepers(cfg, tenant_id, timeline_id, for_writer)?;
    let mut committed = if for_writer {
        known.marked
    } else {
        known.for_reader()
    };
    let started = Instant::now();
    let deadline = started + limit;
    let mut announced = false;
    let mut last_problem = String::new();
    loop {
        let st = ps.timeline_status(tenant_id, timeline_id)?;
        // Received up to the commit LSN: every complete committed record is ingested; a
        // commit LSN inside a record (after a quorum outage) is never reached until a writer
        // commits the rest, which a reader need not wait for.
        if st.last_record_end >= committed || (!for_writer && st.received_lsn >= committed) {
            return Ok(Lsn(st.last_record_end));
        }
        if let Some(why) = crate::mgmt::ingest_stopped(&st) {
            bail!("cannot reach the committed LSN {}: {why}", Lsn(committed));
        }
        if committed > known.marked && started.elapsed() > UNMARKED_COMMIT_GRACE {
            let now = committed_on_safekeepers(cfg, tenant_id, timeline_id, for_writer)?;
            if now.marked < committed {
                out.step(&format!(
                    "a majority of the safekeepers flushed WAL up to {}, but no walproposer \
                     marked it committed (the branch's compute is gone?): reading up to the \
                     commit LSN {}",
                    Lsn(committed),
                    Lsn(now.marked)
                ));
                known.marked = now.marked.max(known.marked);
                committed = known.marked;
            }
        }
        if !announced {
            out.step(&format!(
                "waiting up to {} s for the pageserver to ingest up to {} (at {})",
                limit.as_secs(),
                Lsn(committed),
                Lsn(st.last_record_end)
            ));
            announced = true;
        }
        if st.walreceiver_problem != last_problem && !st.walreceiver_problem.is_empty() {
            out.step(&format!(
                "the pageserver reports: {}",
                st.walreceiver_problem
            ));
        }
        last_problem = st.walreceiver_problem;
        if Instant::now() > deadline {
            let reason = if last_problem.is_empty() {
                "its walreceiver reports no problem (slow ingest? see logs/pageserver.log)"
                    .to_string()
            } else {
                format!("its walreceiver reports: {last_problem}")
            };
            bail!(
                "the pageserver is at {}, and the safekeepers committed up to {}: still behind \
                 after waiting {} s; {reason} (wait longer with {}=SECONDS)",
                Lsn(st.last_record_end),
                Lsn(committed),
                limit.as_secs(),
                crate::mgmt::WAIT_ENV
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long a reader waits for a walproposer to mark as committed what a majority of the
/// safekeepers already flushed (it does within its commit delay, 20 ms, when it is running).
const UNMARKED_COMMIT_GRACE: Duration = Duration::from_secs(2);

/// What the safekeepers know of a branch's committed WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Committed {
    /// The highest commit LSN a safekeeper was told (0: none has WAL of the branch yet).
    pub(crate) marked: u64,
    /// The highest LSN a majority of all the safekeepers flushed in the newest term any of them
    /// holds WAL of (0: fewer than a majority answered with WAL of that term).
    majority_flushed: u64,
}

impl Committed {
    /// Everything a client may have seen committed: WAL flushed by a majority in one term is
    /// committed (any later proposer's election meets one of that majority and continues from
    /// its WAL), even before the safekeepers are told.
    fn for_reader(&self) -> u64 {
        self.marked.max(self.majority_flushed)
    }

    fn from_statuses(statuses: &[sk::TimelineStatusResponse], safekeepers: usize) -> Committed {
        let last_log_term = |s: &sk::TimelineStatusResponse| {
            s.term_history
                .as_ref()
                .and_then(|h| h.entries.last())
                .map_or(0, |e| e.term)
        };
        let marked = statuses.iter().map(|s| s.commit_lsn).max().unwrap_or(0);
        let newest = statuses.iter().map(last_log_term).max().unwrap_or(0);
        let mut flushed: Vec<u64> = statuses
            .iter()
            .filter(|s| last_log_term(s) == newest && newest > 0)
            .map(|s| s.flush_lsn)
            .collect();
        flushed.sort_unstable_by(|a, b| b.cmp(a));
        let majority = safekeepers / 2 + 1;
        Committed {
            marked,
            majority_flushed: flushed.get(majority - 1).copied().unwrap_or(0),
        }
    }
}

/// What the safekeepers know of the branch's committed WAL. Fails when none answers: then
/// nobody can tell what is committed, and a read "as of now" could silently miss acknowledged
/// commits.
pub(crate) fn committed_on_safekeepers(
    cfg: &ClusterConfig,
    tenant_id: &str,
    timeline_id: &str,
    for_writer: bool,
) -> Result<Committed> {
    let statuses =
        crate::mgmt::safekeeper_statuses(&cfg.safekeeper_grpc_addrs(), tenant_id, timeline_id);
    let mut answered = 0usize;
    let mut with_wal = Vec::new();
    let mut failures = Vec::new();
    for s in statuses {
        match s {
            Ok(s) => {
                answered += 1;
                with_wal.extend(s);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    if answered == 0 {
        bail!(
            "no safekeeper reachable, so what is committed on this branch is unknown: {} \
             (`strata status`; `strata start` starts stopped ones)",
            failures.join("; ")
        );
    }
    if for_writer && answered.saturating_mul(2) <= cfg.safekeepers.len() {
        bail!(
            "only {answered} of {} safekeepers answer: a read-write compute needs a majority \
             ({}; `strata status`)",
            cfg.safekeepers.len(),
            failures.join("; ")
        );
    }
    let committed = Committed::from_statuses(&with_wal, cfg.safekeepers.len());
    let flush = with_wal.iter().map(|s| s.flush_lsn).max().unwrap_or(0);
    if for_writer && flush > committed.marked {
        bail!(
            "a safekeeper holds WAL up to {} beyond the commit LSN {} (a compute stopped uncleanly); \
             start a read-only compute, or branch at {}",
            Lsn(flush),
            Lsn(committed.marked),
            Lsn(committed.marked)
        );
    }
    Ok(committed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(terms: &[u64], flush: u64, commit: u64) -> sk::TimelineStatusResponse {
        sk::TimelineStatusResponse {
            flush_lsn: flush,
            commit_lsn: commit,
            term_history: Some(sk::TermHistory {
                entries: terms
                    .iter()
                    .map(|&term| sk::TermSwitch { term, start_lsn: 0 })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_reader_counts_what_a_majority_flushed_in_the_newest_term() {
        // The walproposer acknowledged 300 (two of three flushed it) but told nobody yet.
        let c = Committed::from_statuses(
            &[
                status(&[1, 2], 300, 200),
                status(&[1, 2], 350, 200),
                status(&[1, 2], 250, 200),
            ],
            3,
        );
        assert_eq!(c.marked, 200);
        assert_eq!(c.majority_flushed, 300);
        assert_eq!(c.for_reader(), 300);
    }

    #[test]
    fn flushes_of_an_older_term_or_of_a_minority_commit_nothing() {
        // Only one safekeeper holds WAL of term 3: a minority, whatever it flushed.
        let c = Committed::from_statuses(
            &[
                status(&[1, 3], 900, 200),
                status(&[1, 2], 800, 200),
                status(&[1, 2], 800, 200),
            ],
            3,
        );
        assert_eq!(c.majority_flushed, 0);
        assert_eq!(c.for_reader(), 200);
        // Two of three answered, one of them with WAL: no majority of the three.
        let c = Committed::from_statuses(&[status(&[1], 500, 100)], 3);
        assert_eq!(c.for_reader(), 100);
        // No safekeeper has WAL of the branch yet.
        assert_eq!(Committed::from_statuses(&[], 3).for_reader(), 0);
    }
}
