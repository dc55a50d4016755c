//! One branch as `strata status` shows it: what the safekeepers committed, what the
//! pageserver received, ingested, made durable locally and uploaded, how far each is behind
//! the commit LSN in bytes, and what is wrong with it, in plain words.
//!
//! A branch that takes no new WAL is healthy when nothing waits for it: no compute writes to
//! it, so the walreceiver has nothing to stream ("no safekeeper to stream from"). It is an
//! error when committed WAL waits and is not streamed, when ingest stopped at a record, or
//! when the branch failed to load.

use anyhow::Result;
use serde_json::json;
use walproto::proto::pageserver::{IngestStop, TimelineInfo};
use walproto::proto::safekeeper::TimelineStatusResponse;

use strata::output::pg_lsn;

/// What the safekeepers say about one branch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SafekeeperView {
    /// How many answered (with or without WAL of the branch), of how many.
    pub answered: usize,
    pub of: usize,
    /// The highest commit LSN among those that have WAL of it; `None`: none has any.
    pub commit_lsn: Option<u64>,
    /// Why the others did not answer.
    pub errors: Vec<String>,
}

impl SafekeeperView {
    pub fn from_answers(answers: Vec<Result<Option<TimelineStatusResponse>>>) -> SafekeeperView {
        let mut v = SafekeeperView {
            of: answers.len(),
            ..Default::default()
        };
        for a in answers {
            match a {
                Ok(s) => {
                    v.answered += 1;
                    if let Some(s) = s {
                        v.commit_lsn = Some(v.commit_lsn.unwrap_or(0).max(s.commit_lsn));
                    }
                }
                Err(e) => v.errors.push(format!("{e:#}")),
            }
        }
        v
    }
}

/// One branch's positions, lags and problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchHealth {
    pub commit_lsn: Option<u64>,
    pub received: u64,
    pub ingested: u64,
    pub durable: u64,
    pub remote: u64,
    /// Errors: each makes `strata status` exit non-zero.
    pub problems: Vec<String>,
    /// Plain facts that are not errors (an idle branch).
    pub notes: Vec<String>,
    /// Committed WAL waits and the walreceiver does not stream it (one of the problems).
    pub unstreamed: bool,
}

/// Bytes from `lsn` up to `newest` (0 when it is not behind).
fn lag(newest: u64, lsn: u64) -> u64 {
    newest.saturating_sub(lsn)
}

fn stop_problem(s: &IngestStop, readable_to: u64) -> String {
    let resume = if s.needs_restart {
        "restart the pageserver to resume"
    } else {
        "an upgraded pageserver resumes from there after a restart (or `ResumeIngest`)"
    };
    format!(
        "INGEST STOPPED at {}: {} cannot be ingested: {}; reads up to {} work, the safekeepers \
         keep the WAL after it; {resume}",
        pg_lsn(s.record_lsn),
        s.record,
        s.reason,
        pg_lsn(readable_to)
    )
}

impl BranchHealth {
    pub fn assess(t: &TimelineInfo, sk: &SafekeeperView) -> BranchHealth {
        let mut h = BranchHealth {
            commit_lsn: sk.commit_lsn,
            received: t.received_lsn,
            ingested: t.last_record_end,
            durable: t.disk_consistent_lsn,
            remote: t.remote_consistent_lsn,
            problems: Vec::new(),
            notes: Vec::new(),
            unstreamed: false,
        };
        if !t.broken_reason.is_empty() {
            h.problems.push(format!(
                "the pageserver could not load this branch: {}",
                t.broken_reason
            ));
        }
        if let Some(s) = &t.ingest_stop {
            h.problems.push(stop_problem(s, t.last_record_end));
        }
        if sk.of > 0 && sk.answered.saturating_mul(2) <= sk.of {
            h.problems.push(format!(
                "only {} of {} safekeepers answer, no majority: nothing commits on this branch \
                 ({})",
                sk.answered,
                sk.of,
                sk.errors.join("; ")
            ));
        }
        // A commit LSN inside a record (a writer stopped mid-record) is reached only when the
        // rest comes: received counts, not only complete records.
        let waiting = sk
            .commit_lsn
            .map_or(0, |c| lag(c, t.received_lsn.max(t.last_record_end)));
        if t.ingest_stop.is_none() && !t.walreceiver_problem.is_empty() {
            if waiting > 0 {
                h.unstreamed = true;
                h.problems.push(format!(
                    "not streaming: {} committed bytes wait on the safekeepers; {}",
                    waiting, t.walreceiver_problem
                ));
            } else {
                h.notes.push(
                    "idle: up to date with the safekeepers, no compute writes to it".to_string(),
                );
            }
        }
        h
    }

    /// The newest position known: the commit LSN, else what the pageserver has.
    fn newest(&self) -> u64 {
        self.commit_lsn
            .unwrap_or(0)
            .max(self.received)
            .max(self.ingested)
    }

    /// "committed 0/3000200 received 0/3000200 ingested 0/3000200 (lag 0) durable ..." text.
    pub fn positions_text(&self) -> String {
        let newest = self.newest();
        let commit = self
            .commit_lsn
            .map_or("none (no WAL on the safekeepers)".to_string(), pg_lsn);
        let with_lag = |what: &str, l: u64| {
            if l == 0 && what == "remote" {
                return "remote none yet".to_string();
            }
            match lag(newest, l) {
                0 => format!("{what} {}", pg_lsn(l)),
                n => format!("{what} {} (-{n} B)", pg_lsn(l)),
            }
        };
        format!(
            "committed {commit}, {}, {}, {}, {}",
            with_lag("received", self.received),
            with_lag("ingested", self.ingested),
            with_lag("durable", self.durable),
            with_lag("remote", self.remote)
        )
    }

    /// The positions and lags (bytes behind the newest known position) as JSON fields.
    pub fn json(&self) -> serde_json::Value {
        let newest = self.newest();
        json!({
            "commit_lsn": self.commit_lsn.map(pg_lsn),
            "received_lsn": pg_lsn(self.received),
            "last_record_end": pg_lsn(self.ingested),
            "disk_consistent_lsn": pg_lsn(self.durable),
            "remote_consistent_lsn": pg_lsn(self.remote),
            "lag_bytes": {
                "received": lag(newest, self.received),
                "ingested": lag(newest, self.ingested),
                "durable": lag(newest, self.durable),
                "remote": lag(newest, self.remote),
            },
            "problems": self.problems,
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(end: u64) -> TimelineInfo {
        TimelineInfo {
            received_lsn: end,
            last_record_end: end,
            disk_consistent_lsn: end,
            remote_consistent_lsn: end,
            ..Default::default()
        }
    }

    fn sks(commit: Option<u64>, answered: usize) -> SafekeeperView {
        SafekeeperView {
            answered,
            of: 3,
            commit_lsn: commit,
            errors: vec![],
        }
    }

    #[test]
    fn an_idle_branch_is_healthy_and_waiting_wal_is_not() {
        let mut t = timeline(0x2000);
        t.walreceiver_problem = "no safekeeper to stream from: none has WAL after 0/2000".into();
        let h = BranchHealth::assess(&t, &sks(Some(0x2000), 3));
        assert!(h.problems.is_empty(), "{h:?}");
        assert_eq!(h.notes.len(), 1);
        let h = BranchHealth::assess(&t, &sks(None, 3));
        assert!(h.problems.is_empty(), "{h:?}");

        let h = BranchHealth::assess(&t, &sks(Some(0x2100), 3));
        assert_eq!(h.problems.len(), 1, "{h:?}");
        assert!(h.problems[0].contains("256 committed bytes wait"), "{h:?}");
        assert_eq!(h.json()["lag_bytes"]["ingested"], 256);
        assert!(h.positions_text().contains("ingested 0/2000 (-256 B)"));
    }

    #[test]
    fn a_stop_a_broken_branch_and_a_lost_majority_are_errors() {
        let mut t = timeline(0x1000);
        t.ingest_stop = Some(IngestStop {
            record_lsn: 0x1000,
            record: "a custom resource manager 128 (info 0x00)".into(),
            reason: "records of custom resource manager 128 cannot be ingested".into(),
            since_unix_ms: 1,
            needs_restart: false,
        });
        t.walreceiver_problem = "ignored while stopped".into();
        let h = BranchHealth::assess(&t, &sks(Some(0x1100), 1));
        assert_eq!(h.problems.len(), 2, "{h:?}");
        assert!(h.problems[0].starts_with("INGEST STOPPED at 0/1000: a custom resource"));
        assert!(h.problems[1].contains("only 1 of 3 safekeepers"));
        t.ingest_stop = None;
        t.walreceiver_problem.clear();
        t.broken_reason = "layer file missing".into();
        let h = BranchHealth::assess(&t, &sks(Some(0x1000), 3));
        assert_eq!(h.problems.len(), 1, "{h:?}");
        assert!(h.problems[0].contains("could not load"));
    }

    #[test]
    fn lags_count_from_the_commit_lsn() {
        let t = TimelineInfo {
            received_lsn: 0x3000,
            last_record_end: 0x2F00,
            disk_consistent_lsn: 0x1000,
            remote_consistent_lsn: 0,
            ..Default::default()
        };
        let h = BranchHealth::assess(&t, &sks(Some(0x3000), 3));
        assert!(h.problems.is_empty());
        let j = h.json();
        assert_eq!(j["lag_bytes"]["received"], 0);
        assert_eq!(j["lag_bytes"]["ingested"], 0x100);
        assert_eq!(j["lag_bytes"]["durable"], 0x2000);
        assert_eq!(j["lag_bytes"]["remote"], 0x3000);
        assert_eq!(j["commit_lsn"], "0/3000");
        assert!(h.positions_text().contains("remote none yet"));
    }
}
