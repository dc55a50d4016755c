//! The final-directory comparison covers every page and is not vacuous: after a clean
//! shutdown every relation page equals (masked) what replay produced, index pages last
//! written by a full-page image and pages replay never touched included; a byte changed in
//! such a page of the data directory is then reported as differing, by the in-memory replay
//! (`compare_with_data_dir`) and by `verify-redo --final` through a timeline alike.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use pageserver::redo::datadir::{compare_with_data_dir, rmgr_of_page, DataDirReport};
use pageserver::redo::store::PageKey;
use pageserver::redo::verify::{replay, VerifyOptions};
use pageserver::redo::{page, Page};
use pageserver::verify_redo::{verify_redo, VerifyRedoOptions};
use strata_tests::redo_run::redo_run;
use walproto::consts::{BLCKSZ, MAIN_FORKNUM};
use walproto::rmgr::{RM_BTREE_ID, RM_HEAP_ID, RM_XLOG_ID};

const STEPS: &[&str] = &[
    // A b-tree built after its table is filled: its pages are logged as images (XLOG/FPI).
    "CREATE TABLE t (id int, v text);
     INSERT INTO t SELECT g, repeat('x', g % 50) FROM generate_series(1, 20000) g;
     CREATE INDEX t_id ON t (id);
     VACUUM t;",
    // Skipped for their reasons: a sequence, an unlogged table, FSM forks.
    "CREATE SEQUENCE s; SELECT nextval('s') FROM generate_series(1, 5);
     CREATE UNLOGGED TABLE u (a int); INSERT INTO u SELECT generate_series(1, 1000);
     CREATE INDEX u_a ON u (a);
     CHECKPOINT;",
];

fn read_block(path: &Path, blk: u32) -> std::io::Result<Box<Page>> {
    let mut f = OpenOptions::new().read(true).open(path)?;
    f.seek(SeekFrom::Start(blk as u64 * BLCKSZ as u64))?;
    let mut p = Box::new([0u8; BLCKSZ]);
    f.read_exact(&mut p[..])?;
    Ok(p)
}

/// Changes the first byte of the first item of a main-fork block in `data` (a tuple's xmin,
/// an index tuple's heap TID: nothing a mask hides).
fn corrupt(data: &Path, &(rel, fork, blk): &PageKey) -> anyhow::Result<()> {
    assert_eq!((rel.spc, fork), (1663, MAIN_FORKNUM));
    let path = data.join(format!("base/{}/{}", rel.db, rel.rel));
    let p = read_block(&path, blk)
        .map_err(|e| anyhow::anyhow!("reading {} blk {blk}: {e}", path.display()))?;
    let id = page::item_id(&p, 1).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let off = blk as u64 * BLCKSZ as u64 + id.off as u64;
    let mut f = OpenOptions::new().read(true).write(true).open(&path)?;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(&mut b)?;
    b[0] ^= 0x5a;
    f.seek(SeekFrom::Start(off))?;
    f.write_all(&b)?;
    Ok(())
}

fn print(what: &str, d: &DataDirReport) {
    println!("{what}: {}", d.summary());
    for o in &d.one_sided {
        println!("  one side only: {o}");
    }
    for p in &d.problems {
        println!("--- {p}");
    }
}

#[test]
fn final_dir_comparison_covers_every_page() -> anyhow::Result<()> {
    let run = redo_run(false, &[], STEPS)?;
    let opts = VerifyOptions {
        base: run.base.clone(),
        wal_dir: run.pg.wal_dir(),
        start: run.start,
        end: None,
        check_images: false,
        max_reported: 10,
        tamper: None,
    };
    let (rep, store) = replay(&opts)?;
    println!("{}", rep.summary());
    assert_eq!((rep.errors, rep.unsupported, rep.missing), (0, 0, 0));
    let data = run.pg.data_dir();

    let clean = compare_with_data_dir(&store, data, 10)?;
    print("clean", &clean);
    assert_eq!(clean.differing, 0, "differs before any change");
    assert!(clean.by_layout > 0, "no image page compared by its layout");
    assert!(clean.untouched > 0, "no page replay never touched compared");
    assert!(clean.skipped_fsm > 0 && clean.skipped_sequence > 0 && clean.skipped_unlogged > 0);

    let timeline_dir = tempfile::tempdir()?;
    let vopts = VerifyRedoOptions {
        base: run.base.clone(),
        wal_dir: run.pg.wal_dir(),
        start: Some(run.start),
        end: None,
        final_dir: Some(data.to_path_buf()),
        timeline_dir: timeline_dir.path().join("tl"),
        freeze_bytes: 1 << 20,
        verify: true,
        max_reported: 10,
    };
    let v = verify_redo(&vopts)?;
    print!("{}", v.describe());
    let vf = v.final_report.clone().expect("final report");
    assert_eq!(
        vf.differing, 0,
        "verify-redo --final differs before any change"
    );
    assert!(vf.by_layout > 0);

    // A b-tree page whose last version is an image, and a heap page replay never wrote.
    let fpi_index = store
        .pages()
        .iter()
        .find(|(k, p)| {
            k.1 == MAIN_FORKNUM
                && k.0.spc == 1663
                && store.writer(k) == Some(RM_XLOG_ID)
                && k.2 > 0
                && rmgr_of_page(p) == Some(RM_BTREE_ID)
                && page::max_offset(p) > 1
        })
        .map(|(k, _)| *k)
        .expect("a b-tree page written by a full-page image");
    let base_files = pageserver::redo::store::scan_rel_files(&run.base)?;
    let untouched = base_files
        .forks
        .iter()
        .filter(|((rel, fork), n)| rel.spc == 1663 && *fork == MAIN_FORKNUM && **n > 0)
        .flat_map(|((rel, fork), n)| (0..*n).map(move |b| (*rel, *fork, b)))
        .find(|k| {
            !store.pages().contains_key(k)
                && read_block(&data.join(format!("base/{}/{}", k.0.db, k.0.rel)), k.2)
                    .is_ok_and(|p| rmgr_of_page(&p) == Some(RM_HEAP_ID) && page::max_offset(&p) > 0)
        })
        .expect("a heap page replay never touched");
    println!("corrupting {fpi_index:?} (b-tree, image) and {untouched:?} (heap, untouched)");
    corrupt(data, &fpi_index)?;
    corrupt(data, &untouched)?;

    let dirty = compare_with_data_dir(&store, data, 10)?;
    print("after corrupting", &dirty);
    assert_eq!(dirty.differing, 2, "both changed pages must differ");
    for k in [fpi_index, untouched] {
        let name = format!("{} fork {} blk {} ", k.0, k.1, k.2);
        assert!(
            dirty.problems.iter().any(|p| p.starts_with(&name)),
            "{name} not reported"
        );
    }

    let vopts = VerifyRedoOptions {
        timeline_dir: timeline_dir.path().join("tl2"),
        ..vopts
    };
    let v = verify_redo(&vopts)?;
    print!("{}", v.describe());
    assert!(!v.ok());
    assert_eq!(v.final_report.expect("final report").differing, 2);
    Ok(())
}
