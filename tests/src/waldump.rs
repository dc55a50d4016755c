//! Running `pg_waldump` / `strata waldump`, parsing their text, and comparing the two.
//!
//! `pg_waldump` is the reference decoder: `strata waldump` must print the same records
//! with the same framing (lengths, xid, LSNs, block references). These helpers turn the
//! `-b` output into records so tests can compare the fields that both tools must agree
//! on, and list the distinct (rmgr, record type) pairs to check workload coverage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use walproto::consts::{SIZE_OF_LONG_PAGE_HEADER, SIZE_OF_SHORT_PAGE_HEADER};
use walproto::consts::{WAL_PAGE_SIZE, WAL_SEGMENT_SIZE};
use walproto::Lsn;

use crate::pg::{pg_bin_dir, PgCluster};

/// One record of `pg_waldump -b` output: the record line and its block-reference lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpRecord {
    /// The record line exactly as printed.
    pub line: String,
    pub rmgr: String,
    pub rec_len: u32,
    pub tot_len: u32,
    pub xid: u32,
    pub lsn: Lsn,
    pub prev: Lsn,
    /// Everything after `desc: `.
    pub desc: String,
    /// The `\tblkref #N: ...` lines, exactly as printed (without the trailing newline).
    pub blkrefs: Vec<String>,
}

impl DumpRecord {
    /// The record type: the first word of the description (`INSERT_LEAF`, `COMMIT`, ...).
    pub fn record_type(&self) -> &str {
        self.desc.split_whitespace().next().unwrap_or("")
    }

    /// The fields both decoders must agree on, as one line: everything but the
    /// description beyond its first word.
    pub fn key(&self) -> String {
        format!(
            "{} len {}/{} tx {} lsn {} prev {} {}",
            self.rmgr,
            self.rec_len,
            self.tot_len,
            self.xid,
            self.lsn,
            self.prev,
            self.record_type()
        )
    }
}

/// Parses the text of `pg_waldump [-b]` (the same format `strata waldump` prints).
/// Lines that are neither record nor block-reference lines are errors: they would mean the
/// format is not what the comparison assumes.
pub fn parse_dump(text: &str) -> Result<Vec<DumpRecord>> {
    let mut records: Vec<DumpRecord> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("\tblkref #") {
            let last = records
                .last_mut()
                .with_context(|| format!("line {}: blkref before any record", n + 1))?;
            last.blkrefs.push(line.trim_end().to_string());
        } else if line.starts_with("rmgr: ") {
            records.push(parse_record_line(line).with_context(|| format!("line {}", n + 1))?);
        } else if line.trim().is_empty() {
            continue;
        } else {
            bail!("line {}: unexpected waldump output {line:?}", n + 1);
        }
    }
    Ok(records)
}

/// Parses `rmgr: %-11s len (rec/tot): %6u/%8u, tx: %10u, lsn: %X/%08X, prev %X/%08X, desc: ...`.
pub fn parse_record_line(line: &str) -> Result<DumpRecord> {
    let bad = || format!("malformed record line {line:?}");
    let rest = line.strip_prefix("rmgr: ").with_context(bad)?;
    let (rmgr, rest) = rest.split_once(" len (rec/tot): ").with_context(bad)?;
    let (lens, rest) = rest.split_once(", tx: ").with_context(bad)?;
    let (rec_len, tot_len) = lens.split_once('/').with_context(bad)?;
    let (xid, rest) = rest.split_once(", lsn: ").with_context(bad)?;
    let (lsn, rest) = rest.split_once(", prev ").with_context(bad)?;
    let (prev, desc) = match rest.split_once(", desc: ") {
        Some((p, d)) => (p, d),
        None => (rest.strip_suffix(", desc:").with_context(bad)?, ""),
    };
    Ok(DumpRecord {
        line: line.trim_end().to_string(),
        rmgr: rmgr.trim().to_string(),
        rec_len: rec_len.trim().parse().with_context(bad)?,
        tot_len: tot_len.trim().parse().with_context(bad)?,
        xid: xid.trim().parse().with_context(bad)?,
        lsn: lsn.trim().parse().with_context(bad)?,
        prev: prev.trim().parse().with_context(bad)?,
        desc: desc.trim_end().to_string(),
        blkrefs: Vec::new(),
    })
}

/// How many records of each (rmgr, record type) pair appear.
pub fn record_type_counts(records: &[DumpRecord]) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry((r.rmgr.clone(), r.record_type().to_string()))
            .or_insert(0) += 1;
    }
    m
}

/// Runs `pg_waldump -b -p <wal_dir> -s <start> -e <end>` (plus `extra` arguments) and
/// returns its standard output; fails if it exits non-zero.
pub fn run_pg_waldump(wal_dir: &Path, start: Lsn, end: Lsn, extra: &[&str]) -> Result<String> {
    let mut cmd = Command::new(pg_bin_dir().join("pg_waldump"));
    // Timestamps in descriptions print in the local zone; strata prints UTC.
    cmd.env("TZ", "UTC");
    cmd.arg("-b")
        .arg("-p")
        .arg(wal_dir)
        .arg("-s")
        .arg(start.to_string())
        .arg("-e")
        .arg(end.to_string())
        .args(extra);
    run_capture(cmd)
}

/// Runs `<strata> waldump -b -p <wal_dir> -s <start> -e <end>` (plus `extra` arguments).
pub fn run_strata_waldump(
    strata: &Path,
    wal_dir: &Path,
    start: Lsn,
    end: Lsn,
    extra: &[&str],
) -> Result<String> {
    let mut cmd = Command::new(strata);
    cmd.arg("waldump")
        .arg("-b")
        .arg("-p")
        .arg(wal_dir)
        .arg("-s")
        .arg(start.to_string())
        .arg("-e")
        .arg(end.to_string())
        .args(extra);
    run_capture(cmd)
}

fn run_capture(mut cmd: Command) -> Result<String> {
    let desc = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("spawning {desc}"))?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{desc}: output is not UTF-8"))
}

/// The `strata` binary to test: `$STRATA_BIN`, else the one built beside the running test
/// (see [`crate::procs::built_bin`]).
pub fn strata_bin() -> Result<PathBuf> {
    crate::procs::built_bin("strata")
}

/// The position just after a record that starts at `start` and is `tot_len` bytes long,
/// accounting for page headers it crosses (Postgres's `EndRecPtr`): where a reader stops
/// when that record is the last one. Passing it as `-e` makes `pg_waldump` end cleanly.
pub fn record_end(start: Lsn, tot_len: u32) -> Lsn {
    let mut pos = start.0;
    let mut remaining = u64::from(tot_len);
    loop {
        let page_left = WAL_PAGE_SIZE - pos % WAL_PAGE_SIZE;
        if remaining <= page_left {
            pos += remaining;
            break;
        }
        remaining -= page_left;
        pos += page_left;
        pos += if pos.is_multiple_of(WAL_SEGMENT_SIZE) {
            SIZE_OF_LONG_PAGE_HEADER as u64
        } else {
            SIZE_OF_SHORT_PAGE_HEADER as u64
        };
    }
    Lsn((pos + 7) & !7)
}

/// The end of the WAL of a cleanly stopped cluster: the end of its shutdown checkpoint,
/// which is the control file's latest checkpoint and the last record written (on the
/// control file's current timeline).
pub fn wal_end_after_clean_stop(pg: &PgCluster) -> Result<Lsn> {
    ensure!(!pg.is_running(), "stop the cluster first");
    let ckpt = pg.latest_checkpoint()?;
    let cd = pg.controldata()?;
    let tli = cd
        .get("Latest checkpoint's TimeLineID")
        .context("pg_controldata printed no timeline")?;
    let mut cmd = Command::new(pg_bin_dir().join("pg_waldump"));
    cmd.arg("-p")
        .arg(pg.wal_dir())
        .arg("-s")
        .arg(ckpt.to_string())
        .arg("-n")
        .arg("1")
        .arg("-t")
        .arg(tli);
    let out = run_capture(cmd)?;
    let rec = parse_record_line(out.lines().next().context("pg_waldump printed nothing")?)?;
    ensure!(
        rec.rmgr == "XLOG" && rec.record_type() == "CHECKPOINT_SHUTDOWN",
        "latest checkpoint {ckpt} is not a shutdown checkpoint: {}",
        rec.line
    );
    Ok(record_end(ckpt, rec.tot_len))
}

/// The result of comparing two dumps.
#[derive(Debug, Default)]
pub struct Comparison {
    pub records_left: usize,
    pub records_right: usize,
    /// Lines (record keys and blkref lines) that differ, as (left, right) pairs in order.
    pub differences: Vec<(String, String)>,
    /// Record and blkref lines identical in full, description included.
    pub exact_lines: usize,
    pub total_lines: usize,
    /// Record lines that match in the compared fields but not in full (the description
    /// differs), by "rmgr TYPE": where the description printers still disagree.
    pub inexact_by_type: BTreeMap<String, usize>,
    /// The first few such record lines, (pg_waldump, strata).
    pub inexact_examples: Vec<(String, String)>,
}

impl Comparison {
    pub fn is_match(&self) -> bool {
        self.differences.is_empty() && self.records_left == self.records_right
    }

    /// A report of the first `n` differences for a failure message.
    pub fn describe(&self, n: usize) -> String {
        let mut s = format!(
            "{} vs {} records, {} differing lines; first {}:\n",
            self.records_left,
            self.records_right,
            self.differences.len(),
            n.min(self.differences.len())
        );
        for (l, r) in self.differences.iter().take(n) {
            s.push_str(&format!("  pg_waldump: {l}\n  strata:     {r}\n"));
        }
        s
    }
}

/// Compares record by record: each record's [`DumpRecord::key`] and each of its blkref
/// lines must be identical. Missing records or blkrefs on one side count as differences.
pub fn compare(left: &[DumpRecord], right: &[DumpRecord]) -> Comparison {
    const MISSING: &str = "<missing>";
    let mut c = Comparison {
        records_left: left.len(),
        records_right: right.len(),
        ..Default::default()
    };
    for i in 0..left.len().max(right.len()) {
        let (l, r) = (left.get(i), right.get(i));
        c.total_lines += 1 + l.map_or(0, |l| l.blkrefs.len());
        let (lk, rk) = (l.map(DumpRecord::key), r.map(DumpRecord::key));
        if lk != rk {
            c.differences.push((
                l.map_or(MISSING.into(), |l| l.line.clone()),
                r.map_or(MISSING.into(), |r| r.line.clone()),
            ));
        }
        if let (Some(l), Some(r)) = (l, r) {
            if l.line == r.line {
                c.exact_lines += 1;
            } else if lk == rk {
                *c.inexact_by_type
                    .entry(format!("{} {}", l.rmgr, l.record_type()))
                    .or_insert(0) += 1;
                if c.inexact_examples.len() < 5 {
                    c.inexact_examples.push((l.line.clone(), r.line.clone()));
                }
            }
            for j in 0..l.blkrefs.len().max(r.blkrefs.len()) {
                let (lb, rb) = (l.blkrefs.get(j), r.blkrefs.get(j));
                if lb == rb {
                    c.exact_lines += 1;
                } else {
                    c.differences.push((
                        format!("{} @ {}", lb.map_or(MISSING, String::as_str), l.lsn),
                        format!("{} @ {}", rb.map_or(MISSING, String::as_str), r.lsn),
                    ));
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
rmgr: XLOG        len (rec/tot):     49/  8241, tx:      65536, lsn: 0/0200D5F0, prev 0/0200B808, desc: FPI_FOR_HINT \n\
\tblkref #0: rel 1663/5/2608 fork fsm blk 2 (FPW); hole: offset: 0, length: 0\n\
rmgr: Heap2       len (rec/tot):     60/    60, tx:      65536, lsn: 0/0200F640, prev 0/0200D5F0, desc: NEW_CID rel 1663/5/2608; tid 13/67\n";

    #[test]
    fn parses_records_and_blkrefs() {
        let recs = parse_dump(SAMPLE).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].rmgr, "XLOG");
        assert_eq!((recs[0].rec_len, recs[0].tot_len), (49, 8241));
        assert_eq!(recs[0].xid, 65536);
        assert_eq!(recs[0].lsn, Lsn(0x0200_D5F0));
        assert_eq!(recs[0].prev, Lsn(0x0200_B808));
        assert_eq!(recs[0].record_type(), "FPI_FOR_HINT");
        assert_eq!(recs[0].blkrefs.len(), 1);
        assert_eq!(recs[1].record_type(), "NEW_CID");
        assert!(recs[1].blkrefs.is_empty());
    }

    #[test]
    fn rejects_unknown_lines() {
        assert!(parse_dump("pg_waldump: error: something\n").is_err());
    }

    #[test]
    fn compare_reports_field_differences_only() {
        let a = parse_dump(SAMPLE).unwrap();
        let mut b = a.clone();
        // Different description text beyond the first word is not a difference...
        b[1].desc = "NEW_CID something else".into();
        b[1].line.push('x');
        let c = compare(&a, &b);
        assert!(c.is_match(), "{}", c.describe(5));
        assert_eq!(c.exact_lines, 2);
        assert_eq!(c.total_lines, 3);
        // ...but a different length, or a different block reference, is.
        b[0].tot_len = 8240;
        b[0].blkrefs[0] = "\tblkref #0: rel 1663/5/2608 fork fsm blk 3 (FPW)".into();
        let c = compare(&a, &b);
        assert_eq!(c.differences.len(), 2);
        // A missing record is a difference too.
        let c = compare(&a, &a[..1]);
        assert!(!c.is_match());
    }

    #[test]
    fn record_end_crosses_page_headers() {
        // Fits in the page.
        assert_eq!(record_end(Lsn(0x0200_0028), 114), Lsn(0x0200_0028 + 120));
        // Starts 16 bytes before a page end: 16 bytes, then 24 bytes of page header.
        let start = Lsn(0x0200_2000 - 16);
        assert_eq!(record_end(start, 114), Lsn(0x0200_2000 + 24 + 104));
        // Crosses into a new segment: the long page header.
        let start = Lsn(0x0300_0000 - 16);
        assert_eq!(record_end(start, 114), Lsn(0x0300_0000 + 40 + 104));
    }
}
