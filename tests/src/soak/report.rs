//! What the soak prints at the end: commits acknowledged and lost, faults by kind, the longest
//! stall, and the restarts `strata status --json` counted.

use std::collections::BTreeMap;
use std::time::Duration;

use super::faults::FaultKind;

pub struct SoakReport {
    pub seed: u64,
    pub fault_secs: u64,
    pub acknowledged: usize,
    /// Acknowledged ids missing from the read-only compute at the end.
    pub lost: Vec<u64>,
    /// Unacknowledged ids (connection lost or session ended while committing), and how many
    /// of them exist at the end.
    pub uncertain: usize,
    pub uncertain_present: usize,
    /// Ids Postgres answered with an ERROR (rolled back), and how many exist at the end.
    pub refused: usize,
    pub refused_present: usize,
    pub faults: BTreeMap<FaultKind, u32>,
    pub longest_stall: Duration,
    /// (component, restarts) as `strata status --json` reports them.
    pub restarts: Vec<(String, u64)>,
    pub final_lsn: String,
    pub reasons: Vec<String>,
}

impl SoakReport {
    pub fn print(&self) {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{}: {n}", k.name()))
            .collect();
        let total: u32 = self.faults.values().sum();
        let restarts = if self.restarts.is_empty() {
            "none reported by `strata status --json`".to_string()
        } else {
            self.restarts
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        eprintln!(
            "=== fault soak report (seed {}, {} s of faults) ===",
            self.seed, self.fault_secs
        );
        eprintln!("commits acknowledged: {}", self.acknowledged);
        eprintln!(
            "lost (acknowledged, missing at the end): {}",
            self.lost.len()
        );
        if !self.lost.is_empty() {
            let shown: Vec<&u64> = self.lost.iter().take(20).collect();
            eprintln!("  first lost ids: {shown:?}");
        }
        eprintln!(
            "uncertain (no answer to COMMIT): {}, of which present at the end: {}",
            self.uncertain, self.uncertain_present
        );
        eprintln!(
            "refused (ERROR, rolled back): {}, of which present at the end: {}",
            self.refused, self.refused_present
        );
        eprintln!("faults: {total} ({})", faults.join(", "));
        eprintln!(
            "longest stall (no commit acknowledged): {:.2} s",
            self.longest_stall.as_secs_f64()
        );
        eprintln!("restarts: {restarts}");
        eprintln!("read-only compute at {} holds the ledger", self.final_lsn);
        for r in &self.reasons {
            eprintln!("  sample unacknowledged outcome: {r}");
        }
    }
}

/// Every `restarts` count in `strata status --json`, named by its object's `service` or
/// `name` (the supervisor reports one per daemon and per compute process).
pub fn restarts_in_status(status: &serde_json::Value) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    collect_restarts(status, "status", &mut found);
    found
}

fn collect_restarts(v: &serde_json::Value, path: &str, found: &mut Vec<(String, u64)>) {
    match v {
        serde_json::Value::Object(map) => {
            let label = ["service", "name", "process"]
                .iter()
                .find_map(|k| map.get(*k).and_then(|n| n.as_str()))
                .map(str::to_string)
                .unwrap_or_else(|| path.to_string());
            // An object with its own count: its parts (e.g. `supervision`) repeat it.
            if let Some(n) = map.get("restarts").and_then(|n| n.as_u64()) {
                found.push((label, n));
                return;
            }
            for (k, child) in map {
                collect_restarts(child, &format!("{label}.{k}"), found);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_restarts(child, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_found_wherever_the_status_puts_them() {
        let st = serde_json::json!({
            "services": [
                {"service": "safekeeper-1", "restarts": 2, "supervision": {"restarts": 2}},
                {"service": "pageserver"},
            ],
            "computes": [{"name": "main", "walproposer": {"restarts": 3}}],
        });
        assert_eq!(
            restarts_in_status(&st),
            vec![
                ("main.walproposer".to_string(), 3),
                ("safekeeper-1".to_string(), 2)
            ]
        );
    }
}
