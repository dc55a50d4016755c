//! Term histories and quorum arithmetic: pure functions, unit-tested.
//!
//! A term history is a list of (term, start LSN) entries, strictly increasing in term and
//! non-decreasing in LSN; entry `i` owns the WAL from its start up to entry `i + 1`'s start (the
//! last entry up to the end of the log).

pub use walproto::term_history::{TermHistory, TermSwitch};
use walproto::Lsn;

/// Where the proposer (history `proposer`) starts streaming to an acceptor whose WAL has
/// history `acceptor` and ends at `flush`: the last point where both logs agree. An acceptor
/// without WAL starts at `log_start`. The acceptor truncates everything above this point.
pub fn start_point(
    acceptor: &TermHistory,
    flush: Lsn,
    proposer: &TermHistory,
    log_start: Lsn,
) -> Result<Lsn, String> {
    if flush == Lsn::INVALID || acceptor.up_to(flush).0.is_empty() {
        return Ok(log_start);
    }
    acceptor
        .highest_common_point(flush, proposer)
        .ok_or_else(|| {
            format!(
                "its history {:?} (flush {flush}) shares no term with the proposer's {:?}: \
                 it cannot be truncated to a common point",
                acceptor.0, proposer.0
            )
        })
}

/// Number of acceptors that form a majority of `n`.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The highest LSN that a majority of the `n = positions.len()` acceptors has reached
/// (unknown positions count as 0).
pub fn quorum_lsn(positions: &[Option<Lsn>]) -> Lsn {
    let mut v: Vec<Lsn> = positions.iter().map(|p| p.unwrap_or(Lsn(0))).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.get(majority(positions.len()) - 1)
        .copied()
        .unwrap_or(Lsn(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &[(u64, u64)]) -> TermHistory {
        TermHistory(
            v.iter()
                .map(|&(term, s)| TermSwitch {
                    term,
                    start: Lsn(s),
                })
                .collect(),
        )
    }

    #[test]
    fn quorum() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
        let q = |v: &[Option<u64>]| quorum_lsn(&v.iter().map(|x| x.map(Lsn)).collect::<Vec<_>>());
        assert_eq!(q(&[Some(10), Some(20), Some(30)]), Lsn(20));
        assert_eq!(q(&[Some(10), None, Some(30)]), Lsn(10));
        assert_eq!(q(&[None, None, Some(30)]), Lsn(0));
        assert_eq!(q(&[Some(5)]), Lsn(5));
        assert_eq!(q(&[Some(1), Some(2), Some(3), Some(4), Some(5)]), Lsn(3));
    }

    #[test]
    fn start_points() {
        let prop = h(&[(1, 100), (3, 500), (5, 900)]);
        // Same history, behind: starts at its flush.
        assert_eq!(
            start_point(&h(&[(1, 100)]), Lsn(300), &prop, Lsn(7)),
            Ok(Lsn(300))
        );
        // A divergent term-2 tail from 400 on goes; agreement ends at 400.
        assert_eq!(
            start_point(&h(&[(1, 100), (2, 400)]), Lsn(800), &prop, Lsn(7)),
            Ok(Lsn(400))
        );
        // Term 3 up to 900, beyond that the proposer's term 5: common point 900.
        assert_eq!(
            start_point(&h(&[(1, 100), (3, 500)]), Lsn(1200), &prop, Lsn(7)),
            Ok(Lsn(900))
        );
        // Already in the proposer's term: its flush.
        assert_eq!(start_point(&prop, Lsn(1500), &prop, Lsn(7)), Ok(Lsn(1500)));
        // No WAL: the log start.
        assert_eq!(start_point(&h(&[]), Lsn(0), &prop, Lsn(7)), Ok(Lsn(7)));
        // Entries above the flush do not count.
        assert_eq!(
            start_point(&h(&[(1, 100), (4, 600)]), Lsn(550), &prop, Lsn(7)),
            Ok(Lsn(500))
        );
        assert!(start_point(&h(&[(2, 100)]), Lsn(300), &prop, Lsn(7)).is_err());
    }

    #[test]
    fn extension_and_validation() {
        let donor = h(&[(1, 100), (3, 500), (4, 2000)]);
        assert_eq!(
            donor.extended(Lsn(1000), 6, Lsn(1000)),
            h(&[(1, 100), (3, 500), (6, 1000)])
        );
        assert!(donor.validate().is_ok());
        assert!(h(&[(2, 100), (2, 200)]).validate().is_err());
        assert!(h(&[(2, 200), (3, 100)]).validate().is_err());
        assert!(h(&[(2, 200), (3, 200)]).validate().is_ok());
        let pb = donor.to_pb();
        assert_eq!(TermHistory::from_pb(Some(&pb)), donor);
    }
}
