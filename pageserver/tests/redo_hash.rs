//! Hash index redo against Postgres 15 (see `redo_support`).

mod redo_support;

use redo_support::{check_against_images, check_production_wal, check_tamper_is_caught, Workload};

const WORKLOAD: Workload = Workload {
    settings: &[],
    steps: &[
        // An index created on an empty table (INIT_META_PAGE, INIT_BITMAP_PAGE) grows by
        // bucket splits; one heavily duplicated key chains overflow pages.
        "CREATE TABLE h (id int, k int);
         CREATE INDEX h_k ON h USING hash (k);
         INSERT INTO h SELECT g, g FROM generate_series(1, 20000) g;
         INSERT INTO h SELECT g, 7 FROM generate_series(20001, 26000) g;",
        // Half-emptied overflow pages: VACUUM deletes, moves tuples back along the chain and
        // frees overflow pages, then updates the metapage's tuple count.
        "DELETE FROM h WHERE k = 7 AND id % 2 = 0;
         DELETE FROM h WHERE id <= 5000;
         VACUUM h;",
        // A full bucket page whose deleted tuples an index scan marks LP_DEAD ...
        "INSERT INTO h SELECT g, 9 FROM generate_series(30001, 31500) g;
         DELETE FROM h WHERE k = 9 AND id < 30600;",
        "SET enable_seqscan = off;
         SET enable_bitmapscan = off;
         SELECT count(*) FROM h WHERE k = 9;",
        // ... so the next insert there removes them first (VACUUM_ONE_PAGE).
        "INSERT INTO h SELECT g, 9 FROM generate_series(40001, 40050) g;",
        // An index built over existing rows: with a low fill factor the metapage starts
        // with over 512 buckets (multi-phase splitpoints). An unlogged index logs its init
        // fork's metapage and bitmap.
        "CREATE TABLE h2 AS SELECT g AS id, g % 1000 AS k FROM generate_series(1, 40000) g;
         CREATE INDEX h2_k ON h2 USING hash (k) WITH (fillfactor = 10);
         CREATE UNLOGGED TABLE u (k int);
         CREATE INDEX u_k ON u USING hash (k);",
    ],
};

/// Every hash record type but SPLIT_PAGE, whose only block is always a full-page image
/// (`REGBUF_FORCE_IMAGE`): replay restores it and never runs redo, so there is nothing to
/// verify; [`split_page_images`] checks that the workload reaches it.
const MUST_VERIFY: &[&str] = &[
    "Hash/INIT_META_PAGE",
    "Hash/INIT_BITMAP_PAGE",
    "Hash/INSERT",
    "Hash/ADD_OVFL_PAGE",
    "Hash/SPLIT_ALLOCATE_PAGE",
    "Hash/SPLIT_COMPLETE",
    "Hash/MOVE_PAGE_CONTENTS",
    "Hash/SQUEEZE_PAGE",
    "Hash/DELETE",
    "Hash/SPLIT_CLEANUP",
    "Hash/UPDATE_META_PAGE",
    "Hash/VACUUM_ONE_PAGE",
];

/// Flips the high byte of `hasho_page_id` on every bucket or overflow page hash redo
/// produced (their line pointer arrays are real, unlike a bitmap's or the metapage's).
fn tamper(rec: &walproto::record::DecodedRecord, p: &mut pageserver::redo::Page) {
    let flag = u16::from_le_bytes([p[8188], p[8189]]);
    if pageserver::redo::record_name(rec).starts_with("Hash/") && flag & 0x3 != 0 {
        p[8191] ^= 0x01;
    }
}

/// Counts the SPLIT_PAGE records of a run whose block carries an image to restore.
fn split_page_images(run: &strata_tests::redo_run::RedoRun) -> anyhow::Result<u64> {
    let mut reader =
        walproto::walfiles::WalDirReader::open(&run.pg.wal_dir(), run.start, None, None)?;
    let mut n = 0;
    while let Some(rec) = reader.next_record()? {
        if pageserver::redo::record_name(&rec) == "Hash/SPLIT_PAGE"
            && rec.block(0).is_some_and(|b| b.applies_image())
        {
            n += 1;
        }
    }
    Ok(n)
}

#[test]
fn hash_redo_matches_postgres() -> anyhow::Result<()> {
    let run = check_against_images(&WORKLOAD, MUST_VERIFY)?;
    let splits = split_page_images(&run)?;
    println!("Hash/SPLIT_PAGE records restored from their image: {splits}");
    assert!(splits > 0, "the workload logs no Hash/SPLIT_PAGE");
    check_tamper_is_caught(&run, "Hash/", tamper)?;
    check_production_wal(&WORKLOAD)?;
    Ok(())
}
