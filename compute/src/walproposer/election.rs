//! Winning a term: greet every safekeeper, ask for votes in a term above any seen, pick the
//! donor among a majority of grants, and announce the new term history to each voter.

use std::time::Duration;

use anyhow::{bail, Result};
use tokio::task::JoinSet;
use tracing::{info, warn};
use walproto::proto::safekeeper as pb;
use walproto::term_history::{next_term, MAX_TERM};
use walproto::Lsn;

use super::history::{majority, start_point, TermHistory, TermSwitch};
use super::session::{Session, SessionError};
use super::SafekeeperToken;

/// A safekeeper that granted its vote.
pub struct Voter {
    pub idx: usize,
    pub session: Session,
    pub vote: pb::VoteResponse,
}

impl Voter {
    pub fn history(&self) -> TermHistory {
        TermHistory::from_pb(self.vote.term_history.as_ref())
    }
}

/// The outcome of a successful vote.
pub struct Won {
    pub term: u64,
    pub voters: Vec<Voter>,
}

impl Won {
    /// The most advanced log among the voters: highest (last log term, flush LSN).
    pub fn donor(&self) -> &Voter {
        self.voters
            .iter()
            .max_by_key(|v| (v.vote.last_log_term, v.vote.flush_lsn))
            .expect("a won election has voters")
    }
}

/// Greets all safekeepers and asks for votes until a majority grants one. Transient failures
/// are retried; losing to another proposer (a safekeeper at our term or above refused) and a
/// safekeeper rejecting our identity are errors.
pub async fn campaign(
    safekeepers: &[String],
    greeting: &pb::Greeting,
    timeout: Duration,
    token: Option<&SafekeeperToken>,
    tls: Option<&strata_auth::ClientTls>,
) -> Result<Won> {
    let n = safekeepers.len();
    let need = majority(n);
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut set = JoinSet::new();
        for (idx, addr) in safekeepers.iter().enumerate() {
            let (addr, g) = (addr.clone(), greeting.clone());
            let (token, tls) = (token.cloned(), tls.cloned());
            set.spawn(async move {
                let s = Session::open(&addr, g, timeout, token.as_ref(), tls.as_ref()).await;
                (idx, s)
            });
        }
        let mut greeted = Vec::new();
        while let Some(r) = set.join_next().await {
            let (idx, r) = r?;
            match r {
                Ok((s, g)) => greeted.push((idx, s, g)),
                Err(e) if e.is_fatal() => bail!("{e}"),
                Err(e) => warn!("greeting failed: {e}"),
            }
        }
        if greeted.len() < need {
            warn!(
                reachable = greeted.len(),
                n, "not enough safekeepers reachable for an election; retrying"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        let term = term_above(safekeepers, &greeted)?;
        info!(term, "requesting votes");
        let mut set = JoinSet::new();
        for (idx, mut s, _) in greeted {
            set.spawn(async move {
                let v = s.vote(term, timeout).await;
                (idx, s, v)
            });
        }
        let mut voters = Vec::new();
        let mut refused = Vec::new();
        while let Some(r) = set.join_next().await {
            let (idx, session, v) = r?;
            match v {
                Ok(vote) if vote.vote_granted => voters.push(Voter { idx, session, vote }),
                Ok(vote) => refused.push(format!("{} (at term {})", safekeepers[idx], vote.term)),
                Err(e @ SessionError::Superseded { .. }) => bail!("{e}"),
                Err(e) => warn!("vote request failed: {e}"),
            }
        }
        if voters.len() >= need {
            voters.sort_by_key(|v| v.idx);
            info!(term, votes = voters.len(), n, "elected");
            return Ok(Won { term, voters });
        }
        if !refused.is_empty() {
            bail!(
                "lost the election for term {term}: {} refused their votes: another walproposer \
                 is running for this timeline",
                refused.join(", ")
            );
        }
        warn!(term, votes = voters.len(), "no majority of votes; retrying");
        tokio::time::sleep(backoff).await;
    }
}

/// The term to ask for: one above the highest term any greeted safekeeper holds. A term at
/// the ceiling cannot be exceeded: an error naming the safekeeper, never a wrapped term.
fn term_above(
    safekeepers: &[String],
    greeted: &[(usize, Session, pb::GreetingResponse)],
) -> Result<u64> {
    let Some((idx, _, highest)) = greeted.iter().max_by_key(|(_, _, g)| g.term) else {
        bail!("no safekeeper was greeted");
    };
    next_term(highest.term).ok_or_else(|| {
        anyhow::anyhow!(
            "safekeeper {} is at term {}, and no term above it may be used (the highest is \
             {MAX_TERM}): no election can be won on this timeline; its term must be reset by hand",
            safekeepers[*idx],
            highest.term
        )
    })
}

/// The new term's history and where each voter's stream starts.
pub struct Plan {
    pub history: TermHistory,
    /// Where this term's WAL begins (the donor's flush LSN, or the bootstrap LSN).
    pub term_start: Lsn,
    /// Per voter (same order as `Won::voters`).
    pub starts: Vec<Lsn>,
    /// The highest commit LSN any voter knows (committed by earlier terms).
    pub commit: Lsn,
}

/// Computes the new history from the donor and each voter's start point. `pg_flush` is
/// Postgres's current WAL end: a donor beyond it would mean the safekeepers hold WAL that
/// Postgres never wrote (a different history), which is refused.
pub fn plan(won: &Won, pg_flush: Lsn, bootstrap: Lsn) -> Result<Plan> {
    let donor = won.donor();
    let donor_flush = Lsn(donor.vote.flush_lsn);
    let donor_hist = donor.history();
    if donor_flush > pg_flush {
        bail!(
            "safekeeper #{} has WAL up to {donor_flush} (last term {}), beyond Postgres's flush \
             position {pg_flush}: the safekeepers hold a history this Postgres did not write \
             (a different or restored cluster?); refusing to continue",
            donor.idx + 1,
            donor.vote.last_log_term
        );
    }
    let (history, term_start) =
        if donor_flush == Lsn(0) || donor_hist.up_to(donor_flush).0.is_empty() {
            let h = TermHistory(vec![TermSwitch {
                term: won.term,
                start: bootstrap,
            }]);
            (h, bootstrap)
        } else {
            (
                donor_hist.extended(donor_flush, won.term, donor_flush),
                donor_flush,
            )
        };
    history
        .validate()
        .map_err(|e| anyhow::anyhow!("the donor's term history is invalid: {e}"))?;
    let mut starts = Vec::new();
    for v in &won.voters {
        let s = start_point(&v.history(), Lsn(v.vote.flush_lsn), &history, term_start)
            .map_err(|m| anyhow::anyhow!("safekeeper #{}: {m}", v.idx + 1))?;
        if s < Lsn(v.vote.commit_lsn) {
            bail!(
                "safekeeper #{}: commit LSN {} is above the point {s} where its log agrees with \
                 the donor's: the safekeepers' logs are inconsistent",
                v.idx + 1,
                Lsn(v.vote.commit_lsn)
            );
        }
        starts.push(s);
    }
    let commit = won
        .voters
        .iter()
        .map(|v| Lsn(v.vote.commit_lsn))
        .max()
        .unwrap_or(Lsn(0));
    Ok(Plan {
        history,
        term_start,
        starts,
        commit,
    })
}
