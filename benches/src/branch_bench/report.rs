//! The result table of `branch_vs_pitr`.

use std::fmt::Write as _;

/// One point in time T, measured both ways.
#[derive(Clone, Debug)]
pub struct Row {
    /// WAL since the base backup, as a multiple of the database size at T (asked for).
    pub multiple: f64,
    /// The LSN of T.
    pub lsn: String,
    /// WAL bytes from the base backup's start to T.
    pub wal_bytes: u64,
    /// The database's size at T (bloat from the workload makes it grow).
    pub db_bytes_at_t: u64,
    /// `strata branch create --at T` + `strata compute start` + the first query.
    pub strata_secs: f64,
    /// Of which: the branch creation.
    pub strata_branch_secs: f64,
    /// Of which: `strata compute start` (basebackup from the pageserver, Postgres start).
    pub strata_compute_secs: f64,
    /// Copy the base backup + replay to T + promote + the first query.
    pub pg_secs: f64,
    /// Of which: copying the base backup.
    pub pg_copy_secs: f64,
    /// The first query's answer on both (they must match each other and main at T).
    pub answer: String,
    /// `strata compute start`'s own breakdown of its time (its `compute start breakdown:`
    /// line), and the first query's seconds.
    pub strata_breakdown: String,
    pub strata_query_secs: f64,
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// The table, one line per T, under a header naming the command; then Strata's breakdown
/// per T.
pub fn table(command: &str, db_bytes: u64, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "command: {command}");
    let _ = writeln!(
        s,
        "database size at the base backup: {:.1} MiB; query: SELECT count(*), sum(abalance) FROM pgbench_accounts",
        mib(db_bytes)
    );
    let _ = writeln!(
        s,
        "× actual: WAL since the base backup / the database's size at T"
    );
    let _ = writeln!(
        s,
        "{:>6} | {:>12} | {:>10} | {:>9} | {:>11} | {:>27} | {:>17} | {:>7} | answer (both)",
        "WAL ×",
        "T (LSN)",
        "WAL MiB",
        "× actual",
        "DB MiB at T",
        "Strata s (branch, compute)",
        "Postgres s (copy)",
        "ratio"
    );
    let _ = writeln!(s, "{}", "-".repeat(136));
    for r in rows {
        let actual = if r.db_bytes_at_t > 0 {
            r.wal_bytes as f64 / r.db_bytes_at_t as f64
        } else {
            0.0
        };
        let ratio = if r.strata_secs > 0.0 {
            r.pg_secs / r.strata_secs
        } else {
            f64::INFINITY
        };
        let _ = writeln!(
            s,
            "{:>6} | {:>12} | {:>10.1} | {:>9.2} | {:>11.1} | {:>7.2} ({:>7.2}, {:>8.2}) | {:>7.2} ({:>7.2}) | {:>6.1}× | {}",
            format!("{}×", r.multiple),
            r.lsn,
            mib(r.wal_bytes),
            actual,
            mib(r.db_bytes_at_t),
            r.strata_secs,
            r.strata_branch_secs,
            r.strata_compute_secs,
            r.pg_secs,
            r.pg_copy_secs,
            ratio,
            r.answer
        );
    }
    let _ = writeln!(s, "Strata's time at each T:");
    for r in rows {
        let _ = writeln!(
            s,
            "  {}×: branch create {:.2} s; compute start {:.2} s ({}); first query {:.2} s",
            r.multiple,
            r.strata_branch_secs,
            r.strata_compute_secs,
            if r.strata_breakdown.is_empty() {
                "no breakdown printed"
            } else {
                &r.strata_breakdown
            },
            r.strata_query_secs
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_line_per_row_and_the_ratio() {
        let row = Row {
            multiple: 5.0,
            lsn: "0/5000028".into(),
            wal_bytes: 500 << 20,
            db_bytes_at_t: 120 << 20,
            strata_secs: 2.0,
            strata_branch_secs: 0.5,
            strata_compute_secs: 1.25,
            pg_secs: 30.0,
            pg_copy_secs: 3.0,
            answer: "1000000|42".into(),
            strata_breakdown: "basebackup 1.00 s".into(),
            strata_query_secs: 0.25,
        };
        let t = table("branch_vs_pitr --scale 10", 100 << 20, &[row.clone(), row]);
        assert!(t.contains("4.17"), "× actual is of the size at T: {t}");
        assert!(t.contains("(basebackup 1.00 s); first query 0.25 s"), "{t}");
        assert!(t.starts_with("command: branch_vs_pitr --scale 10\n"));
        assert_eq!(t.lines().filter(|l| l.contains("0/5000028")).count(), 2);
        assert!(t.contains("15.0×"), "{t}");
        assert!(t.contains("120.0"), "{t}");
        assert!(t.contains("2.00 (   0.50,     1.25)"), "{t}");
        // The header's columns line up with the rows'.
        let header = t.lines().nth(3).unwrap();
        let first = t.lines().nth(5).unwrap();
        assert_eq!(
            header.char_indices().filter(|(_, c)| *c == '|').count(),
            first.char_indices().filter(|(_, c)| *c == '|').count() - 1,
            "{t}"
        );
    }
}
