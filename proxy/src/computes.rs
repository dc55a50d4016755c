//! The computes behind the proxy: for each branch (read-write) and each (branch, LSN) (a time
//! travel moment, read-only) one slot that knows the compute serving it, how many proxied
//! connections use it and when the last one closed.
//!
//! A connection to a slot without a compute finds a running one (`strata compute list`) or
//! starts one (`strata compute start`); connections arriving meanwhile wait for that start
//! (the slot's lock), so a branch gets one start. Computes the proxy started are recorded
//! (`<cluster dir>/proxy/started.json`) and stopped (`strata compute stop`) once no
//! connection used them for the idle time (`--idle-stop-secs` for branches,
//! `--ephemeral-idle-secs` for moments); the next connection starts them again. Computes
//! started by hand are used, never stopped.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::at::{format_lsn, parse_lsn};
use crate::error::ClientError;
use crate::names::{Branch, Names};
use crate::strata_cli::{CliError, StrataCli};

/// How long quick `strata` commands (list, stop) may take.
const QUICK: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct Settings {
    /// A read-write compute the proxy started is stopped after this long without connections.
    pub idle_stop: Duration,
    /// A time travel compute is stopped this long after its last connection closed.
    pub ephemeral_idle: Duration,
    /// The longest `strata compute start` may take.
    pub start_timeout: Duration,
}

/// What a connection is served by: a branch's read-write compute, or a read-only compute at
/// one LSN of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub branch: Branch,
    pub at_lsn: Option<u64>,
}

impl Key {
    fn describe(&self) -> String {
        match self.at_lsn {
            Some(l) => format!(
                "branch \"{}\" of tenant \"{}\" at {}",
                self.branch.branch,
                self.branch.tenant,
                format_lsn(l)
            ),
            None => format!(
                "branch \"{}\" of tenant \"{}\"",
                self.branch.branch, self.branch.tenant
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub name: String,
    pub port: u16,
    /// Started by the proxy (and so stopped by it when idle).
    pub ours: bool,
}

#[derive(Default)]
struct Slot {
    state: tokio::sync::Mutex<Option<Running>>,
    conns: AtomicUsize,
    last_active_ms: AtomicU64,
}

impl Slot {
    fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::SeqCst);
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_active_ms.load(Ordering::SeqCst)))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A connection's use of a compute: while it lives, the compute is not stopped.
pub struct Lease {
    slot: Arc<Slot>,
    pub port: u16,
    pub name: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.touch();
        self.slot.conns.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The computes the proxy started: `<cluster dir>/proxy/started.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    pub computes: BTreeSet<String>,
}

pub fn started_file(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("proxy").join("started.json")
}

impl Started {
    /// The record; empty if there is none or it cannot be read (then the proxy stops none of
    /// the computes it may have started before: never one it did not start).
    pub fn load(cluster_dir: &Path) -> Started {
        std::fs::read(started_file(cluster_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn store(&self, cluster_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        crate::durable::write_file(&started_file(cluster_dir), &bytes, 0o644)
    }
}

/// A row of `strata compute list --json`.
#[derive(Clone, Debug, Deserialize)]
struct ComputeRow {
    name: String,
    branch: String,
    tenant_id: String,
    timeline_id: String,
    port: u16,
    read_only: bool,
    lsn: String,
    #[serde(default)]
    running: bool,
}

impl ComputeRow {
    fn serves(&self, key: &Key) -> bool {
        self.running
            && self.tenant_id == key.branch.tenant_id
            && self.timeline_id == key.branch.timeline_id
            && match key.at_lsn {
                None => !self.read_only,
                Some(l) => self.read_only && parse_lsn(&self.lsn) == Some(l),
            }
    }
}

pub struct Computes {
    cli: StrataCli,
    settings: Settings,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    started: Mutex<Started>,
}

impl Computes {
    pub fn new(cli: StrataCli, settings: Settings) -> Computes {
        let started = Started::load(&cli.dir);
        Computes {
            cli,
            settings,
            slots: Mutex::new(HashMap::new()),
            started: Mutex::new(started),
        }
    }

    fn slot(&self, key: &Key) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(key.clone())
            .or_insert_with(|| {
                let s = Slot::default();
                s.touch();
                Arc::new(s)
            })
            .clone()
    }

    /// The compute serving `key`, found or started; connections that arrive during a start
    /// wait for it rather than start another.
    pub async fn acquire(&self, key: &Key) -> Result<Lease, ClientError> {
        let slot = self.slot(key);
        // A start in progress takes at most its own deadline.
        let wait = self.settings.start_timeout + QUICK;
        let mut state = tokio::time::timeout(wait, slot.state.lock())
            .await
            .map_err(|_| {
                ClientError::cannot_connect(format!(
                    "waited {} s for another connection's start of the compute of {}",
                    wait.as_secs(),
                    key.describe()
                ))
            })?;
        if state.is_none() {
            *state = Some(self.find_or_start(key).await?);
            slot.touch();
        }
        let Some(r) = state.as_ref() else {
            return Err(ClientError::internal(
                "a compute slot is empty after a start",
            ));
        };
        slot.conns.fetch_add(1, Ordering::SeqCst);
        Ok(Lease {
            slot: slot.clone(),
            port: r.port,
            name: r.name.clone(),
        })
    }

    /// Forgets the compute of `key` if it is still the one on `port` (it refused a
    /// connection: stopped by hand, or dead); the next [`Computes::acquire`] looks again.
    pub async fn invalidate(&self, key: &Key, port: u16) {
        let slot = self.slot(key);
        let mut state = slot.state.lock().await;
        if state.as_ref().is_some_and(|r| r.port == port) {
            *state = None;
        }
    }

    async fn list(&self) -> Result<Vec<ComputeRow>, CliError> {
        let v = self.cli.json(&["compute", "list"], QUICK).await?;
        serde_json::from_value(v.clone()).map_err(|_| CliError::NotJson {
            command: "compute list".into(),
            output: v.to_string(),
        })
    }

    fn is_ours(&self, name: &str) -> bool {
        let started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        started.computes.contains(name)
    }

    fn record(&self, name: &str, ours: bool) {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let changed = if ours {
            started.computes.insert(name.to_string())
        } else {
            started.computes.remove(name)
        };
        if changed {
            if let Err(e) = started.store(&self.cli.dir) {
                eprintln!("strata-proxy: warning: recording the computes it started: {e}");
            }
        }
    }

    async fn find_or_start(&self, key: &Key) -> Result<Running, ClientError> {
        let rows = self.list().await.map_err(|e| {
            ClientError::cannot_connect(format!("listing the computes: {}", e.message()))
        })?;
        if let Some(row) = rows.iter().find(|r| r.serves(key)) {
            return Ok(Running {
                name: row.name.clone(),
                port: row.port,
                ours: self.is_ours(&row.name),
            });
        }
        self.start(key, &rows).await
    }

    async fn start(&self, key: &Key, rows: &[ComputeRow]) -> Result<Running, ClientError> {
        let b = &key.branch;
        let mut args: Vec<String> = vec![
            "compute".into(),
            "start".into(),
            b.branch.clone(),
            "--tenant".into(),
            b.tenant.clone(),
        ];
        if let Some(lsn) = key.at_lsn {
            args.extend(["--read-only".into(), "--at".into(), format_lsn(lsn)]);
            let name = moment_compute_name(b, lsn);
            // A name taken (by a compute of another tenant) leaves the choice to strata.
            if rows.iter().all(|r| r.name != name) {
                args.extend(["--name".into(), name]);
            }
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        eprintln!("strata-proxy: starting a compute for {}", key.describe());
        let started = self
            .cli
            .json(&argv, self.settings.start_timeout)
            .await
            .map_err(|e| start_error(key, e))?;
        let (Some(name), Some(port)) = (
            started["name"].as_str(),
            started["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
        ) else {
            return Err(ClientError::cannot_connect(format!(
                "`strata compute start` printed no name and port: {started}"
            )));
        };
        self.record(name, true);
        eprintln!(
            "strata-proxy: started compute {name} on port {port} for {}",
            key.describe()
        );
        Ok(Running {
            name: name.to_string(),
            port,
            ours: true,
        })
    }

    /// Stops the computes the proxy started that no connection used for their idle time,
    /// and forgets (never stops) the others that idle as long. Called every second.
    pub async fn stop_idle(&self) {
        let slots: Vec<(Key, Arc<Slot>)> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
        };
        for (key, slot) in slots {
            let limit = if key.at_lsn.is_some() {
                self.settings.ephemeral_idle
            } else {
                self.settings.idle_stop
            };
            if slot.conns.load(Ordering::SeqCst) > 0 || slot.idle_for() < limit {
                continue;
            }
            // Busy: a connection is starting or finding its compute.
            let Ok(mut state) = slot.state.try_lock() else {
                continue;
            };
            // Connections count themselves under the lock: none can arrive now.
            if slot.conns.load(Ordering::SeqCst) > 0 {
                continue;
            }
            let taken = state.take();
            // The name now belongs to another compute (`branch restore` moved the branch to a
            // new timeline and the next connection started a compute under the same name) or
            // to none: nothing of this slot is left to stop.
            let gone = match &taken {
                Some(r) if r.ours => !self.still_serves(&key, &r.name).await,
                _ => false,
            };
            match taken {
                Some(r) if gone => {
                    eprintln!(
                        "strata-proxy: compute {} no longer serves {}: forgotten",
                        r.name,
                        key.describe()
                    );
                }
                Some(r) if r.ours => {
                    eprintln!(
                        "strata-proxy: stopping compute {} ({}): no connection for {} s",
                        r.name,
                        key.describe(),
                        slot.idle_for().as_secs()
                    );
                    match self.cli.json(&["compute", "stop", &r.name], QUICK).await {
                        Ok(_) => self.record(&r.name, false),
                        Err(e) => {
                            eprintln!(
                                "strata-proxy: stopping compute {} failed (trying again after \
                                 another idle period): {}",
                                r.name,
                                e.message()
                            );
                            *state = Some(r);
                            slot.touch();
                        }
                    }
                }
                // Not ours: looked up again by the next connection.
                Some(_) | None => {}
            }
            drop(state);
            self.drop_unused_slot(&key);
        }
    }

    /// Whether the compute called `name` still runs for `key`; true when the list cannot be
    /// read (then stopping it is what an idle slot asks for).
    async fn still_serves(&self, key: &Key, name: &str) -> bool {
        match self.list().await {
            Ok(rows) => rows.iter().any(|r| r.name == name && r.serves(key)),
            Err(_) => true,
        }
    }

    /// Removes an empty slot nobody holds (time travel moments would pile up otherwise).
    fn drop_unused_slot(&self, key: &Key) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let unused = slots.get(key).is_some_and(|s| {
            Arc::strong_count(s) == 1 && s.state.try_lock().is_ok_and(|st| st.is_none())
        });
        if unused {
            slots.remove(key);
        }
    }

    /// At the proxy's start: the computes it started before (a restart) that still run get
    /// their slots back, so their idle time counts from now; the record forgets the others.
    pub async fn adopt(&self, names: &Names) -> Result<usize, CliError> {
        let rows = self.list().await?;
        let recorded = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .computes
            .clone();
        let mut adopted = 0;
        for name in recorded {
            let row = rows.iter().find(|r| r.name == name && r.running);
            let tenant = row.and_then(|r| names.tenant_of_id(&r.tenant_id));
            let (Some(row), Some(tenant)) = (row, tenant) else {
                self.record(&name, false);
                continue;
            };
            let key = Key {
                branch: Branch {
                    tenant: tenant.to_string(),
                    branch: row.branch.clone(),
                    tenant_id: row.tenant_id.clone(),
                    timeline_id: row.timeline_id.clone(),
                },
                at_lsn: if row.read_only {
                    parse_lsn(&row.lsn)
                } else {
                    None
                },
            };
            let slot = self.slot(&key);
            *slot.state.lock().await = Some(Running {
                name: row.name.clone(),
                port: row.port,
                ours: true,
            });
            slot.touch();
            adopted += 1;
        }
        Ok(adopted)
    }
}

/// A time travel compute's name: the branch, the LSN and the tenant id's start (one name per
/// moment, so `strata compute list` says what it is).
fn moment_compute_name(b: &Branch, lsn: u64) -> String {
    let tenant: String = b.tenant_id.chars().take(6).collect();
    let name = format!("{}-at-{lsn:X}-{tenant}", b.branch);
    // A branch named before the name rule (a space in it) or a long one: without its name.
    let valid = name.len() <= 63
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        name
    } else {
        format!("at-{lsn:X}-{tenant}")
    }
}

/// A failed start as the client sees it: a moment that cannot be read is the client's
/// mistake (22023), anything else a compute that cannot start now (57P03).
fn start_error(key: &Key, e: CliError) -> ClientError {
    let text = e.message();
    let unreadable = ["beyond", "GC cutoff", "below timeline", "below branch"];
    if key.at_lsn.is_some() && unreadable.iter().any(|w| text.contains(w)) {
        return ClientError::bad_value(format!("{} cannot be read: {text}", key.describe()));
    }
    ClientError::cannot_connect(format!("could not start a compute for {}", key.describe()))
        .with_detail(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch() -> Branch {
        Branch {
            tenant: "shop".into(),
            branch: "main".into(),
            tenant_id: "aabbccddeeff".into(),
            timeline_id: "t1".into(),
        }
    }

    #[test]
    fn rows_serve_their_branch_and_moment_only() {
        let row = |read_only: bool, lsn: &str, running: bool| ComputeRow {
            name: "c".into(),
            branch: "main".into(),
            tenant_id: "aabbccddeeff".into(),
            timeline_id: "t1".into(),
            port: 1,
            read_only,
            lsn: lsn.into(),
            running,
        };
        let rw = Key {
            branch: branch(),
            at_lsn: None,
        };
        let at = Key {
            branch: branch(),
            at_lsn: Some(0x16B37A8),
        };
        assert!(row(false, "0/1000000", true).serves(&rw));
        assert!(!row(false, "0/1000000", false).serves(&rw));
        assert!(!row(true, "0/016B37A8", true).serves(&rw));
        assert!(row(true, "0/016B37A8", true).serves(&at));
        assert!(!row(true, "0/016B37A9", true).serves(&at));
        assert_eq!(
            moment_compute_name(&branch(), 0x16B37A8),
            "main-at-16B37A8-aabbcc"
        );
        let old_name = Branch {
            branch: "old name".into(),
            ..branch()
        };
        assert_eq!(moment_compute_name(&old_name, 0x10), "at-10-aabbcc");
    }

    #[test]
    fn unreadable_moments_are_the_clients_mistake() {
        let at = Key {
            branch: branch(),
            at_lsn: Some(1),
        };
        let fail = |m: &str| CliError::Failed {
            command: "compute start".into(),
            message: m.into(),
        };
        assert_eq!(
            start_error(&at, fail("LSN 0/1 is below timeline x's GC cutoff")).code,
            "22023"
        );
        assert_eq!(
            start_error(&at, fail("no safekeeper reachable")).code,
            "57P03"
        );
        let rw = Key {
            branch: branch(),
            at_lsn: None,
        };
        assert_eq!(start_error(&rw, fail("LSN beyond")).code, "57P03");
    }

    #[test]
    fn the_started_record_survives_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let c = Computes::new(
            StrataCli::new(Path::new("/nonexistent"), d.path()),
            Settings {
                idle_stop: Duration::from_secs(1),
                ephemeral_idle: Duration::from_secs(1),
                start_timeout: Duration::from_secs(1),
            },
        );
        c.record("main", true);
        c.record("dev", true);
        c.record("main", false);
        assert_eq!(
            Started::load(d.path())
                .computes
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["dev".to_string()]
        );
    }
}
