//! Start at T → first answer: each kind in turn, in rotating order, round after round; the
//! page cache dropped before each start.

use std::fmt;

use anyhow::{bail, Result};

use super::kind::{in_rounds, Kind};
use super::Bench;

/// One start at T and its first query.
#[derive(Clone, Debug)]
pub struct StartSample {
    pub kind: Kind,
    pub round: usize,
    /// From the request until the server accepted connections at T.
    pub start_secs: f64,
    /// The first query (the point select) on a new connection: psql's whole run.
    pub first_query_wall_ms: f64,
    /// Of which the query alone (`\timing`).
    pub first_query_ms: f64,
    pub detail: String,
    /// The 1-minute load average just before the start.
    pub load: f64,
}

impl StartSample {
    /// Start plus first answer.
    pub fn total_secs(&self) -> f64 {
        self.start_secs + self.first_query_wall_ms / 1000.0
    }
}

impl fmt::Display for StartSample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: start {:.2} s, first query {:.1} ms (query alone {:.2} ms); {}",
            self.kind, self.start_secs, self.first_query_wall_ms, self.first_query_ms, self.detail
        )
    }
}

/// `rounds` rounds of every kind in `kinds`.
pub fn measure(b: &Bench, kinds: &[Kind], rounds: usize) -> Result<Vec<StartSample>> {
    in_rounds(
        kinds,
        rounds,
        |round, kind| {
            format!(
                "scale {}: round {round}/{rounds}: {kind} at T → first query",
                b.ds.scale
            )
        },
        |round, kind| one(b, kind, round),
    )
}

fn one(b: &Bench, kind: Kind, round: usize) -> Result<StartSample> {
    let ds = b.ds;
    let (srv, load) = b.read_only(kind, &format!("start-{round}-{}", kind.tag()))?;
    let q = srv.server.sql_timed(&ds.point_query())?;
    if q.output != ds.point_answer {
        bail!(
            "{kind} at T answers {:?} to {:?}; main at T answered {:?}",
            q.output,
            ds.point_query(),
            ds.point_answer
        );
    }
    Ok(StartSample {
        kind,
        round,
        start_secs: srv.start_secs,
        first_query_wall_ms: q.wall.as_secs_f64() * 1000.0,
        first_query_ms: q.query_ms,
        detail: srv.detail.clone(),
        load,
    })
}
