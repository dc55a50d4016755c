//! Damaged real WAL through `strata waldump`: flipped bytes, a wrong `xl_prev`, truncated
//! segments and recycled pages after the end. Each must be a clear error naming the LSN, or a
//! clean end of WAL, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use strata_tests::waldump::strata_bin;
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::consts::{WAL_PAGE_SIZE, WAL_SEGMENT_SIZE};
use walproto::record::record_crc;
use walproto::Lsn;

struct Outcome {
    code: i32,
    records: Vec<(Lsn, u32)>,
    stderr: String,
}

/// Runs `strata waldump -p dir -s start` and returns its exit code, the (LSN, total length)
/// of each printed record, and stderr.
fn waldump(dir: &Path, start: Lsn) -> Result<Outcome> {
    let out = Command::new(strata_bin()?)
        .args(["waldump", "-p"])
        .arg(dir)
        .args(["-s", &start.to_string()])
        .output()
        .context("running strata waldump")?;
    let stdout = String::from_utf8(out.stdout)?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        !stderr.contains("panicked"),
        "strata waldump panicked: {stderr}"
    );
    let mut records = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with("rmgr:")) {
        let lsn = field(line, "lsn: ").parse()?;
        let tot = field(line, "len (rec/tot): ")
            .split('/')
            .nth(1)
            .context("no total length")?
            .trim()
            .parse()?;
        records.push((lsn, tot));
    }
    Ok(Outcome {
        code: out.status.code().unwrap_or(-1),
        records,
        stderr,
    })
}

/// The text after `key` up to the next comma.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let rest = &line[line.find(key).expect(key) + key.len()..];
    rest.split(',').next().unwrap().trim()
}

/// A file and offset holding the byte at `lsn`.
fn locate(dir: &Path, lsn: Lsn) -> (PathBuf, u64) {
    (dir.join(lsn.segment_file_name(1)), lsn.segment_offset())
}

fn patch(dir: &Path, lsn: Lsn, f: impl FnOnce(&mut [u8])) -> Result<()> {
    let (path, off) = locate(dir, lsn);
    let mut bytes = std::fs::read(&path)?;
    f(&mut bytes[off as usize..]);
    std::fs::write(&path, bytes)?;
    Ok(())
}

/// A fresh copy of the pristine WAL to damage.
fn copy_wal(from: &Path, scratch: &Path, name: &str) -> Result<PathBuf> {
    let dir = scratch.join(name);
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
        }
    }
    Ok(dir)
}

/// A record that lies whole inside one page, away from both ends of the list.
fn record_inside_a_page(records: &[(Lsn, u32)], from: usize) -> (usize, Lsn, u32) {
    records[from..]
        .iter()
        .enumerate()
        .map(|(i, &(lsn, tot))| (from + i, lsn, tot))
        .find(|&(_, lsn, tot)| lsn.page_offset() + tot as u64 <= WAL_PAGE_SIZE && tot >= 40)
        .expect("some record fits in a page")
}

#[test]
fn damaged_wal_gives_clear_errors_or_a_clean_end() -> Result<()> {
    // wal_keep_size: the shutdown checkpoint must not recycle the segments under test.
    let pg = PgCluster::init(
        &InitOptions::default()
            .set("wal_compression", "lz4")
            .set("wal_keep_size", "1GB"),
    )?;
    pg.start()?;
    // Begin on a fresh segment, so that the WAL of interest starts at a known record boundary.
    let switched: Lsn = pg.psql("select pg_switch_wal()")?.trim().parse()?;
    let start = if switched.is_segment_start() {
        switched
    } else {
        Lsn((switched.segment_number() + 1) * WAL_SEGMENT_SIZE)
    };
    pg.pgbench(&["-i", "-s", "2", "-q"])?;
    pg.pgbench(&["-c", "2", "-t", "2000"])?;
    pg.stop(StopMode::Fast)?;

    let scratch = tempfile::tempdir()?;
    let pristine = copy_wal(&pg.wal_dir(), scratch.path(), "pristine")?;
    let base = waldump(&pristine, start)?;
    assert_eq!(base.code, 0, "pristine WAL: {}", base.stderr);
    assert!(base.stderr.contains("end of WAL"), "{}", base.stderr);
    let n = base.records.len();
    assert!(n > 10_000, "only {n} records");
    let last_segment = base.records[n - 1].0.segment_number();
    assert!(
        last_segment > start.segment_number(),
        "the WAL must span several segments"
    );

    // A flipped byte inside a record: a checksum error at that record, everything before it
    // printed.
    let (i, lsn, _) = record_inside_a_page(&base.records, n / 2);
    let dir = copy_wal(&pristine, scratch.path(), "flipped")?;
    patch(&dir, Lsn(lsn.0 + 30), |b| b[0] ^= 0x40)?;
    let out = waldump(&dir, start)?;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("corrupt WAL at {lsn}")) && out.stderr.contains("checksum"),
        "{}",
        out.stderr
    );
    assert_eq!(out.records.len(), i);

    // A wrong xl_prev with a CRC that matches: only the prev-link check can catch it.
    let (i, lsn, tot) = record_inside_a_page(&base.records, n / 3);
    let dir = copy_wal(&pristine, scratch.path(), "prev")?;
    patch(&dir, lsn, |b| {
        let rec = &mut b[..tot as usize];
        let prev = u64::from_le_bytes(rec[8..16].try_into().unwrap());
        rec[8..16].copy_from_slice(&(prev - 8).to_le_bytes());
        let crc = record_crc(rec);
        rec[20..24].copy_from_slice(&crc.to_le_bytes());
    })?;
    let out = waldump(&dir, start)?;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("corrupt WAL at {lsn}")) && out.stderr.contains("prev-link"),
        "{}",
        out.stderr
    );
    assert_eq!(out.records.len(), i);

    // A page header with a bad magic number in the middle of the WAL.
    let page = Lsn(base.records[n / 4].0.page_start().0 + WAL_PAGE_SIZE);
    let dir = copy_wal(&pristine, scratch.path(), "magic")?;
    patch(&dir, page, |b| b[0] ^= 0xFF)?;
    let out = waldump(&dir, start)?;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("magic"), "{}", out.stderr);

    // A segment truncated mid-way: a clean end where the data stops, records before it intact.
    let cut = Lsn(start.0 + WAL_SEGMENT_SIZE / 2 + 12_345);
    let dir = copy_wal(&pristine, scratch.path(), "truncated")?;
    let (path, off) = locate(&dir, cut);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .set_len(off)?;
    let out = waldump(&dir, start)?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("end of WAL"), "{}", out.stderr);
    let expected = base
        .records
        .iter()
        .take_while(|(lsn, tot)| Lsn(lsn.0 + *tot as u64) <= cut)
        .count();
    // The record crossing the cut (and at most the one before it, if it ended in the cut page's
    // header) cannot be read; everything before is.
    assert!(
        out.records.len() <= expected && out.records.len() + 2 >= expected,
        "{} records read, {expected} end before the cut",
        out.records.len()
    );
    assert_eq!(out.records[..], base.records[..out.records.len()]);

    // Recycled pages after the end: from a page on, the segment holds an older segment's
    // pages, as a recycled file does beyond the end of the WAL. That is the end, not an error.
    let (_, lsn, _) = record_inside_a_page(&base.records, 2 * n / 3);
    let from_page = Lsn(lsn.page_start().0 + WAL_PAGE_SIZE);
    let dir = copy_wal(&pristine, scratch.path(), "recycled")?;
    let old = std::fs::read(dir.join(start.segment_file_name(1)))?;
    let (path, off) = locate(&dir, from_page);
    assert!(from_page.segment_number() > start.segment_number());
    let mut seg = std::fs::read(&path)?;
    seg[off as usize..].copy_from_slice(&old[off as usize..]);
    std::fs::write(&path, seg)?;
    // And the following segment files are gone, as if never written.
    for s in from_page.segment_number() + 1..=last_segment + 1 {
        let _ = std::fs::remove_file(dir.join(walproto::lsn::segment_file_name(1, s)));
    }
    let out = waldump(&dir, start)?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("recycled"), "{}", out.stderr);
    let expected = base
        .records
        .iter()
        .take_while(|(lsn, _)| *lsn < from_page)
        .count();
    assert!(out.records.len() + 1 >= expected && out.records.len() <= expected);
    Ok(())
}
