//! The ledger of commits: writers insert unique ids, one autocommit statement each, and record
//! an id as acknowledged only after Postgres answered its COMMIT with success. An id whose
//! answer never came (connection lost, session ended while the commit waited) is uncertain: it
//! may or may not exist. Lost = acknowledged but missing at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::pgwire::{Outcome, PgConn};

/// The soak's table: one row per attempted id.
pub const CREATE_TABLE: &str =
    "CREATE TABLE soak_ledger (id bigint PRIMARY KEY, writer int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before a writer reconnects, so a down Postgres is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Book {
    acknowledged: Vec<u64>,
    uncertain: Vec<u64>,
    refused: Vec<u64>,
    first_ack: Option<Instant>,
    last_ack: Option<Instant>,
    longest_stall: Duration,
    /// A sample of why outcomes were uncertain or refused, for the report.
    reasons: Vec<String>,
}

/// The shared ledger (cheap to clone).
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<Book>>);

/// What the ledger holds at the end.
pub struct LedgerSummary {
    pub acknowledged: Vec<u64>,
    pub uncertain: Vec<u64>,
    pub refused: Vec<u64>,
    pub longest_stall: Duration,
    pub reasons: Vec<String>,
}

const MAX_REASONS: usize = 8;

impl Ledger {
    fn book(&self) -> MutexGuard<'_, Book> {
        // A writer that panicked holding the lock left the book consistent (pushes only).
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acknowledge(&self, id: u64) {
        let now = Instant::now();
        let mut b = self.book();
        if let Some(prev) = b.last_ack {
            b.longest_stall = b.longest_stall.max(now.duration_since(prev));
        }
        b.first_ack.get_or_insert(now);
        b.last_ack = Some(now);
        b.acknowledged.push(id);
    }

    fn unsure(&self, id: u64, refused: bool, why: String) {
        let mut b = self.book();
        if refused {
            b.refused.push(id);
        } else {
            b.uncertain.push(id);
        }
        if b.reasons.len() < MAX_REASONS {
            b.reasons.push(format!("id {id}: {why}"));
        }
    }

    /// When the latest commit was acknowledged (None before the first).
    pub fn last_ack(&self) -> Option<Instant> {
        self.book().last_ack
    }

    pub fn acknowledged_count(&self) -> usize {
        self.book().acknowledged.len()
    }

    /// Waits until a commit is acknowledged after `since`, at most `deadline`.
    pub fn wait_for_ack_after(&self, since: Instant, deadline: Duration, what: &str) -> Result<()> {
        let until = since + deadline;
        loop {
            if self.last_ack().is_some_and(|t| t > since) {
                return Ok(());
            }
            if Instant::now() > until {
                let last = self
                    .last_ack()
                    .map(|t| {
                        format!(
                            "{:.1} s before",
                            since.saturating_duration_since(t).as_secs_f64()
                        )
                    })
                    .unwrap_or_else(|| "never".into());
                bail!(
                    "wedged: no commit acknowledged within {deadline:?} after {what} (the last one \
                     was acknowledged {last}; {} acknowledged in all)",
                    self.acknowledged_count()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything recorded, ids sorted; the stall still open at the end counts too.
    pub fn summary(&self) -> LedgerSummary {
        let b = self.book();
        let open = b.last_ack.map(|t| t.elapsed()).unwrap_or_default();
        let sorted = |v: &Vec<u64>| {
            let mut v = v.clone();
            v.sort_unstable();
            v
        };
        LedgerSummary {
            acknowledged: sorted(&b.acknowledged),
            uncertain: sorted(&b.uncertain),
            refused: sorted(&b.refused),
            longest_stall: b.longest_stall.max(open),
            reasons: b.reasons.clone(),
        }
    }
}

/// Writer threads inserting ids into [`CREATE_TABLE`]'s table until stopped.
pub struct Writers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Writers {
    pub fn start(port: u16, count: usize, ledger: &Ledger) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let next_id = Arc::new(AtomicU64::new(1));
        let handles = (0..count)
            .map(|w| {
                let (stop, next_id, ledger) = (stop.clone(), next_id.clone(), ledger.clone());
                std::thread::spawn(move || write_loop(port, w, &next_id, &ledger, &stop))
            })
            .collect();
        Writers { stop, handles }
    }

    /// Stops the writers: a statement still waiting for its answer is abandoned (uncertain).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

fn write_loop(port: u16, writer: usize, next_id: &AtomicU64, ledger: &Ledger, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut conn = match PgConn::connect(port, CONNECT_TIMEOUT) {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(RECONNECT_PAUSE);
                continue;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let sql = format!("INSERT INTO soak_ledger (id, writer) VALUES ({id}, {writer})");
            match conn.execute(&sql, stop) {
                Outcome::Committed => ledger.acknowledge(id),
                Outcome::Refused(why) => {
                    ledger.unsure(id, true, why);
                    std::thread::sleep(RECONNECT_PAUSE);
                }
                Outcome::Uncertain(why) => {
                    ledger.unsure(id, false, why);
                    break;
                }
            }
        }
    }
}
