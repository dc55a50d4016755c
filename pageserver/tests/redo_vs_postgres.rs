//! Strata's native redo against Postgres itself.
//!
//! A real Postgres 15 runs the full workload with `wal_consistency_checking = all`, so every
//! Heap/Heap2/Btree/Sequence record (and every index AM's) carries the page as the primary
//! had it after the record. Starting from a copy of the data directory taken right after
//! initdb, the WAL is replayed with Strata's redo and every redone page is compared, masked
//! as PG15 masks it, with that image.
//!
//! `STRATA_REDO_FIXTURE=<file>` (three lines: base dir, WAL dir, start LSN) replays an
//! existing run instead of starting Postgres; useful when working on redo.

mod redo_support;

use std::path::PathBuf;

use pageserver::redo::datadir::compare_with_data_dir;
use pageserver::redo::verify::{replay, VerifyOptions};
use pageserver::redo::{has_native_redo, redo_block, Page};
use redo_support::print;
use strata_tests::workload::consistency_checked_workload;
use strata_tests::PgCluster;
use walproto::record::DecodedRecord;
use walproto::walfiles::WalDirReader;
use walproto::Lsn;

/// A finished workload: the base copy, the WAL, where replay starts.
struct Fixture {
    _pg: Option<PgCluster>,
    base: PathBuf,
    /// The data directory after the clean shutdown.
    data: PathBuf,
    wal: PathBuf,
    start: Lsn,
}

fn fixture() -> anyhow::Result<Fixture> {
    if let Some(f) = std::env::var_os("STRATA_REDO_FIXTURE") {
        let text = std::fs::read_to_string(f)?;
        let v: Vec<&str> = text.lines().collect();
        anyhow::ensure!(v.len() >= 3, "fixture file needs base, wal, start");
        let wal = PathBuf::from(v[1]);
        return Ok(Fixture {
            _pg: None,
            data: wal.parent().map(PathBuf::from).unwrap_or_default(),
            base: v[0].into(),
            wal: v[1].into(),
            start: v[2].parse()?,
        });
    }
    let (pg, base, report) = consistency_checked_workload("redo-base")?;
    Ok(Fixture {
        base,
        data: pg.data_dir().to_path_buf(),
        wal: pg.wal_dir(),
        start: report.start,
        _pg: Some(pg),
    })
}

fn options(f: &Fixture, check_images: bool) -> VerifyOptions {
    VerifyOptions {
        base: f.base.clone(),
        wal_dir: f.wal.clone(),
        start: f.start,
        end: None,
        check_images,
        max_reported: 20,
        tamper: None,
    }
}

/// Record types whose redo must have been checked at least once: the workload produces them
/// all, so a zero would mean the check silently skipped them.
const MUST_VERIFY: &[&str] = &[
    "Heap/INSERT",
    "Heap/INSERT+INIT",
    "Heap/DELETE",
    "Heap/UPDATE",
    "Heap/HOT_UPDATE",
    "Heap/LOCK",
    "Heap/INPLACE",
    "Heap/HEAP_CONFIRM",
    "Heap2/PRUNE",
    "Heap2/VACUUM",
    "Heap2/FREEZE_PAGE",
    "Heap2/VISIBLE",
    "Heap2/MULTI_INSERT",
    "Heap2/MULTI_INSERT+INIT",
    "Btree/INSERT_LEAF",
    "Btree/INSERT_UPPER",
    "Btree/SPLIT_L",
    "Btree/SPLIT_R",
    "Btree/NEWROOT",
    "Btree/DEDUP",
    "Btree/DELETE",
    "Btree/VACUUM",
    "Btree/MARK_PAGE_HALFDEAD",
    "Btree/UNLINK_PAGE",
    "Sequence/LOG",
];

#[test]
fn redo_matches_postgres_consistency_images() -> anyhow::Result<()> {
    let f = fixture()?;
    let (rep, store) = replay(&options(&f, true))?;
    print(&rep);
    let disk = compare_with_data_dir(&store, &f.data, 10)?;
    println!("end state vs data directory: {disk:?}");
    assert_eq!(rep.mismatched, 0, "pages differ from Postgres's");
    assert_eq!(rep.unsupported, 0, "records without native redo or image");
    assert_eq!(rep.errors, 0, "redo errors");
    assert_eq!(rep.missing, 0, "records on pages that do not exist");
    assert!(
        rep.verified > 50_000,
        "only {} pages verified",
        rep.verified
    );
    assert!(rep.vm_strict_verified > 0, "no VM page checked strictly");
    assert!(
        rep.extra_pages > 0,
        "no VM bit cleared outside block references"
    );
    for t in MUST_VERIFY {
        let n = rep.per_type.get(*t).map_or(0, |c| c.verified);
        assert!(n > 0, "{t}: no page verified");
    }
    assert_eq!(
        disk.differing, 0,
        "final pages differ from the data directory"
    );
    assert!(disk.equal > 2_000 && disk.vm_equal > 0, "{disk:?}");
    Ok(())
}

#[test]
fn redo_without_native_images_gives_the_same_pages() -> anyhow::Result<()> {
    let f = fixture()?;
    let (checked, with_images) = replay(&options(&f, true))?;
    let (plain, without) = replay(&options(&f, false))?;
    println!("with images:    {}", checked.summary());
    println!("without images: {}", plain.summary());
    assert_eq!(plain.errors, 0, "{:?}", plain.problems);
    assert_eq!(plain.unsupported, 0);
    assert_eq!(
        checked.mismatched, 0,
        "the checked replay itself must match"
    );
    let (a, b) = (with_images.pages(), without.pages());
    assert!(a.len() > 1000, "only {} pages", a.len());
    assert_eq!(a.len(), b.len(), "different sets of pages");
    let differing: Vec<_> = a
        .iter()
        .filter(|(k, p)| b.get(*k) != Some(*p))
        .map(|(k, _)| *k)
        .take(10)
        .collect();
    assert!(differing.is_empty(), "pages differ: {differing:?}");
    Ok(())
}

/// Flips the xmax of the first tuple of every page a Heap/DELETE record redid.
fn tamper_deletes(rec: &DecodedRecord, p: &mut Page) {
    if pageserver::redo::record_name(rec) == "Heap/DELETE" {
        let off = u16::from_le_bytes([p[24], p[25]]) as usize & 0x7FFF;
        if off + 8 <= p.len() {
            p[off + 4] ^= 0x01;
        }
    }
}

/// The comparison is not vacuous: a one-bit change in what redo produced for one record type
/// is caught on exactly those pages (when the touched tuple is not masked).
#[test]
fn a_wrong_redo_result_is_caught() -> anyhow::Result<()> {
    let f = fixture()?;
    let mut opts = options(&f, true);
    opts.max_reported = 1;
    opts.tamper = Some(tamper_deletes);
    let (rep, _) = replay(&opts)?;
    print(&rep);
    let deletes = rep.per_type.get("Heap/DELETE").cloned().unwrap_or_default();
    assert!(
        deletes.mismatched > 1000,
        "tampered deletes not caught: {deletes:?}"
    );
    assert_eq!(
        rep.mismatched, deletes.mismatched,
        "only tampered pages may differ"
    );
    Ok(())
}

/// Redo never panics, whatever page it is given or however a record's bytes are damaged:
/// every native record is applied to garbage pages and, with its payload bytes altered, to a
/// zeroed page. Errors are fine; a panic fails the test.
#[test]
fn redo_never_panics_on_bad_input() -> anyhow::Result<()> {
    let f = fixture()?;
    let mut reader = WalDirReader::open(&f.wal, f.start, None, None)?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut tried, mut failed) = (0u64, 0u64);
    while let Some(rec) = reader.next_record()? {
        if !has_native_redo(rec.rmid()) || rec.blocks.is_empty() {
            continue;
        }
        let mut garbage: Box<Page> = Box::new([0xFF; 8192]);
        for b in garbage.iter_mut().skip(24) {
            *b = next() as u8;
        }
        let mut damaged = rec.clone();
        let mut raw = damaged.raw.to_vec();
        for _ in 0..4 {
            let i = 24 + (next() as usize) % raw.len().saturating_sub(24).max(1);
            if i < raw.len() {
                raw[i] = next() as u8;
            }
        }
        damaged.raw = raw.into();
        for blk in &rec.blocks {
            for (r, mut p) in [
                (&rec, garbage.clone()),
                (&rec, Box::new([0xFF; 8192])),
                (&damaged, Box::new([0u8; 8192])),
            ] {
                tried += 1;
                if redo_block(r, blk.id, &mut p).is_err() {
                    failed += 1;
                }
            }
        }
    }
    println!("{tried} bad-input redos, {failed} reported errors, none panicked");
    assert!(tried > 100_000 && failed > 0);
    Ok(())
}
