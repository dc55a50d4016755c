//! Term histories: which term wrote which range of the WAL. Shared by the safekeeper (which
//! truncates its divergent tail with them) and the walproposer (which elects with them), so
//! both sides of the protocol apply the same rules.
//!
//! Each entry `(term, start_lsn)` says that WAL from `start_lsn` up to the next entry's start
//! (or the end of the log) was written by the proposer of `term`. Two acceptors whose histories
//! agree up to some LSN hold identical WAL up to that LSN; this is how an elected proposer finds
//! where an acceptor's tail diverges from its own log.

use crate::lsn::Lsn;
use crate::proto::safekeeper as pb;

/// The highest term an acceptor takes. Terms grow by one per election, so a term at the
/// top of `u64` could never be exceeded and would lock its timeline for good.
pub const MAX_TERM: u64 = i64::MAX as u64;

/// The most one request may raise an acceptor's term: an election asks for one above the
/// highest term of a majority, so a legitimate step is small; a hostile client needs billions
/// of requests (each persisted) to push a timeline to [`MAX_TERM`].
pub const MAX_TERM_STEP: u64 = 1 << 32;

/// Why an acceptor at term `current` refuses to move to term `requested` (None: it may).
pub fn term_raise_refusal(current: u64, requested: u64) -> Option<String> {
    if requested > MAX_TERM {
        return Some(format!(
            "term {requested} is above the highest term {MAX_TERM}: no later election could \
             exceed it"
        ));
    }
    let step = requested.checked_sub(current)?;
    (step > MAX_TERM_STEP).then(|| {
        format!(
            "term {requested} is {step} above the current term {current}; a term may rise by \
             at most {MAX_TERM_STEP} at once"
        )
    })
}

/// The term a proposer asks for after greeting acceptors whose highest term is `highest`, or
/// None when none is left (`highest` is at [`MAX_TERM`] or beyond).
pub fn next_term(highest: u64) -> Option<u64> {
    highest.checked_add(1).filter(|t| *t <= MAX_TERM)
}

/// A term and the LSN where its WAL begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermSwitch {
    pub term: u64,
    pub start: Lsn,
}

/// What is wrong with a term history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermHistoryError {
    #[error("term history entry {index}: term {term} does not increase (previous {prev})")]
    TermNotIncreasing { index: usize, term: u64, prev: u64 },
    #[error("term history entry {index}: start LSN {start} is before the previous entry's {prev}")]
    LsnDecreasing { index: usize, start: Lsn, prev: Lsn },
    #[error("term history entry {index}: term 0 is not a real term")]
    ZeroTerm { index: usize },
}

/// Entries ordered by strictly increasing term and non-decreasing start LSN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TermHistory(pub Vec<TermSwitch>);

impl TermHistory {
    /// From the protocol message (a missing history is empty). Validate before trusting it.
    pub fn from_pb(h: Option<&pb::TermHistory>) -> TermHistory {
        TermHistory(
            h.map(|h| {
                h.entries
                    .iter()
                    .map(|e| TermSwitch {
                        term: e.term,
                        start: Lsn(e.start_lsn),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        )
    }

    pub fn to_pb(&self) -> pb::TermHistory {
        pb::TermHistory {
            entries: self
                .0
                .iter()
                .map(|e| pb::TermSwitch {
                    term: e.term,
                    start_lsn: e.start.0,
                })
                .collect(),
        }
    }

    /// The proposer's history for a new `term`: this (the donor's) history up to the donor's
    /// flush LSN, followed by `(term, start)`.
    pub fn extended(&self, donor_flush: Lsn, term: u64, start: Lsn) -> TermHistory {
        let mut h = self.up_to(donor_flush);
        h.0.push(TermSwitch { term, start });
        h
    }

    /// Checks the ordering rules; histories from the network or disk go through this.
    pub fn validate(&self) -> Result<(), TermHistoryError> {
        for (index, e) in self.0.iter().enumerate() {
            if e.term == 0 {
                return Err(TermHistoryError::ZeroTerm { index });
            }
            if index > 0 {
                let p = self.0[index - 1];
                if e.term <= p.term {
                    return Err(TermHistoryError::TermNotIncreasing {
                        index,
                        term: e.term,
                        prev: p.term,
                    });
                }
                if e.start < p.start {
                    return Err(TermHistoryError::LsnDecreasing {
                        index,
                        start: e.start,
                        prev: p.start,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn last(&self) -> Option<TermSwitch> {
        self.0.last().copied()
    }

    /// Term of the WAL ending at `flush`: the last entry starting at or before it (0 if none).
    /// An entry starting exactly at `flush` counts: adopting a proposer's history at election
    /// means this log is a prefix of that term's log.
    pub fn last_log_term(&self, flush: Lsn) -> u64 {
        self.0
            .iter()
            .rev()
            .find(|e| e.start <= flush)
            .map_or(0, |e| e.term)
    }

    /// The entries that describe WAL up to `flush` (entries starting after it are dropped).
    pub fn up_to(&self, flush: Lsn) -> TermHistory {
        TermHistory(
            self.0
                .iter()
                .copied()
                .filter(|e| e.start <= flush)
                .collect(),
        )
    }

    /// The highest LSN up to which a log with this history ending at `our_flush` is identical to
    /// the log described by `theirs` (whose last term is still open-ended). `None` if the two
    /// share no term at all.
    pub fn highest_common_point(&self, our_flush: Lsn, theirs: &TermHistory) -> Option<Lsn> {
        let ours = self.up_to(our_flush);
        let mut i = 0;
        while i < ours.0.len() && i < theirs.0.len() && ours.0[i] == theirs.0[i] {
            i += 1;
        }
        if i == 0 {
            return None;
        }
        let our_end = ours.0.get(i).map_or(our_flush, |e| e.start);
        let their_end = theirs.0.get(i).map_or(Lsn::MAX, |e| e.start);
        Some(our_end.min(their_end).min(our_flush))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &[(u64, u64)]) -> TermHistory {
        TermHistory(
            v.iter()
                .map(|&(term, l)| TermSwitch {
                    term,
                    start: Lsn(l),
                })
                .collect(),
        )
    }

    #[test]
    fn validation() {
        assert!(h(&[(1, 10), (2, 10), (5, 30)]).validate().is_ok());
        assert!(h(&[(1, 10), (1, 20)]).validate().is_err());
        assert!(h(&[(1, 10), (2, 5)]).validate().is_err());
        assert!(h(&[(0, 10)]).validate().is_err());
    }

    #[test]
    fn common_point() {
        let ours = h(&[(1, 100), (2, 200)]);
        // Same history: everything we have is common.
        assert_eq!(
            ours.highest_common_point(Lsn(300), &h(&[(1, 100), (2, 200), (3, 400)])),
            Some(Lsn(300))
        );
        // Proposer's term 2 ended at 250: our tail beyond 250 diverges.
        assert_eq!(
            ours.highest_common_point(Lsn(300), &h(&[(1, 100), (2, 200), (3, 250)])),
            Some(Lsn(250))
        );
        // Our term 2 came from a proposer that lost: common up to the end of term 1.
        assert_eq!(
            ours.highest_common_point(Lsn(300), &h(&[(1, 100), (3, 220)])),
            Some(Lsn(200))
        );
        // Our entry beyond our flush is ignored.
        assert_eq!(
            ours.highest_common_point(Lsn(150), &h(&[(1, 100), (3, 400)])),
            Some(Lsn(150))
        );
        assert_eq!(ours.highest_common_point(Lsn(300), &h(&[(4, 100)])), None);
        assert_eq!(ours.last_log_term(Lsn(199)), 1);
        assert_eq!(ours.last_log_term(Lsn(200)), 2);
        assert_eq!(ours.last_log_term(Lsn(50)), 0);
    }

    #[test]
    fn protocol_round_trip_and_extension() {
        let hist = h(&[(1, 100), (2, 200), (3, 400)]);
        assert_eq!(TermHistory::from_pb(Some(&hist.to_pb())), hist);
        assert_eq!(TermHistory::from_pb(None), TermHistory::default());
        assert_eq!(
            hist.extended(Lsn(300), 7, Lsn(300)),
            h(&[(1, 100), (2, 200), (7, 300)])
        );
    }

    #[test]
    fn terms_that_could_not_be_exceeded_are_refused() {
        assert_eq!(next_term(0), Some(1));
        assert_eq!(next_term(MAX_TERM - 1), Some(MAX_TERM));
        assert_eq!(next_term(MAX_TERM), None);
        assert_eq!(next_term(u64::MAX), None);
        assert!(term_raise_refusal(5, 6).is_none());
        assert!(
            term_raise_refusal(5, 3).is_none(),
            "a lower term is a refused vote, not bad input"
        );
        assert!(term_raise_refusal(0, MAX_TERM_STEP).is_none());
        assert!(term_raise_refusal(0, MAX_TERM_STEP + 1).is_some());
        assert!(term_raise_refusal(MAX_TERM - 1, MAX_TERM).is_none());
        assert!(term_raise_refusal(MAX_TERM, u64::MAX).is_some());
        assert!(term_raise_refusal(u64::MAX - 1, u64::MAX).is_some());
    }
}
