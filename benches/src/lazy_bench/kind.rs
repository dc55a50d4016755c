//! The ways of getting a server at a past LSN that the benchmark compares.

use std::fmt;

use anyhow::Result;

use crate::branch_bench::step;

/// How a server at T comes to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `strata compute start --at T`: a slim basebackup, the page filesystem, Postgres.
    Lazy,
    /// `strata compute start --at T --full-copy`: every page copied first, then Postgres.
    FullCopy,
    /// Postgres's own PITR: copy a base backup, replay the WAL to T, promote.
    Pitr,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Lazy => "lazy",
            Kind::FullCopy => "full copy",
            Kind::Pitr => "PITR",
        }
    }

    /// A short tag for compute and branch names.
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Lazy => "lazy",
            Kind::FullCopy => "full",
            Kind::Pitr => "pitr",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "lazy" => Some(Kind::Lazy),
            "full" | "full-copy" => Some(Kind::FullCopy),
            "pitr" => Some(Kind::Pitr),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The order of `kinds` in round `round`: rotated by one each round, so that no kind always
/// runs first (after the cache drop) or right after another's heavy I/O.
pub fn round_order(kinds: &[Kind], round: usize) -> Vec<Kind> {
    let mut k = kinds.to_vec();
    if !k.is_empty() {
        let shift = round % k.len();
        k.rotate_left(shift);
    }
    k
}

/// Runs `f` for each of `kinds` in each of `rounds` rounds, in [`round_order`], each a timed
/// step named `what(round, kind)` (rounds counted from 1 there, from 0 for `f`) whose result
/// is printed on stderr.
pub fn in_rounds<T: fmt::Display>(
    kinds: &[Kind],
    rounds: usize,
    what: impl Fn(usize, Kind) -> String,
    mut f: impl FnMut(usize, Kind) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for round in 0..rounds {
        for kind in round_order(kinds, round) {
            let r = step(&what(round + 1, kind), || f(round, kind))?;
            eprintln!("  {r}");
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate() {
        let all = [Kind::Lazy, Kind::FullCopy, Kind::Pitr];
        assert_eq!(round_order(&all, 0), all.to_vec());
        assert_eq!(
            round_order(&all, 1),
            vec![Kind::FullCopy, Kind::Pitr, Kind::Lazy]
        );
        assert_eq!(round_order(&all, 3), all.to_vec());
        assert!(round_order(&[], 2).is_empty());
        assert_eq!(Kind::parse("full-copy"), Some(Kind::FullCopy));
        assert_eq!(Kind::parse("nope"), None);
    }
}
