//! GiST redo against Postgres 15 (see `redo_support`).

mod redo_support;

use std::collections::BTreeMap;

use redo_support::{check_against_images, check_production_wal, check_tamper_is_caught, Workload};
use strata_tests::redo_run::{redo_run, RedoRun};
use strata_tests::waldump::{run_pg_waldump, wal_end_after_clean_stop};

/// Indexes on points, boxes, ranges (an exclusion constraint), tsvector, trigrams and
/// btree_gist text, all built empty so the inserts are logged as GiST records; long text keys
/// make the btree_gist index three levels deep.
const SETUP: &str = "CREATE EXTENSION btree_gist; CREATE EXTENSION pg_trgm;
    CREATE TABLE geo (id int, p point, b box);
    CREATE INDEX geo_p ON geo USING gist (p);
    CREATE INDEX geo_b ON geo USING gist (b);
    INSERT INTO geo SELECT g, point(g % 61, g / 61),
        box(point(g % 61, g / 61), point(g % 61 + 2, g / 61 + 3))
      FROM generate_series(1, 3000) g;
    CREATE TABLE rsv (id int, r int4range, EXCLUDE USING gist (r WITH &&));
    INSERT INTO rsv SELECT g, int4range(g * 10, g * 10 + 5) FROM generate_series(1, 1500) g;
    CREATE TABLE docs (id int, t text, v tsvector);
    CREATE INDEX docs_v ON docs USING gist (v);
    CREATE INDEX docs_t ON docs USING gist (t gist_trgm_ops);
    INSERT INTO docs SELECT g, md5(g::text) || ' ' || md5((g * 7)::text),
        to_tsvector('simple', 'w' || (g % 97) || ' x' || (g % 13) || ' y' || g)
      FROM generate_series(1, 1500) g;
    CREATE TABLE bt (id int, k text);
    CREATE INDEX bt_k ON bt USING gist (k);
    INSERT INTO bt SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 2500) g;";

/// Whole key ranges deleted so leaf pages empty out: VACUUM deletes tuples (PAGE_UPDATE) and
/// then the empty pages (PAGE_DELETE).
const DELETE_AND_VACUUM: &str = "DELETE FROM geo WHERE id <= 1500;
    DELETE FROM bt WHERE k < '8';
    DELETE FROM rsv WHERE id % 3 = 0;
    VACUUM geo; VACUUM bt; VACUUM rsv;";

/// Transactions pass the pages' deleteXid, the next VACUUM puts them in the FSM, and new
/// inserts take them back (PAGE_REUSE).
const RECYCLE: &str = "SELECT txid_current(); SELECT txid_current(); SELECT txid_current();
    VACUUM geo; VACUUM bt;
    INSERT INTO geo SELECT g, point(g % 61, g / 61 - 30), box(point(0, 0), point(1, 1))
      FROM generate_series(3001, 4500) g;
    INSERT INTO bt SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 2500) g
      WHERE md5(g::text) < '8';";

/// A plain index scan after a delete marks the dead tuples LP_DEAD (F_HAS_GARBAGE); inserts
/// into those full pages prune them first (DELETE).
const KILL_AND_PRUNE: &[&str] = &[
    "DELETE FROM geo WHERE id BETWEEN 1900 AND 2400;",
    "SET enable_seqscan = off; SET enable_bitmapscan = off;
     SELECT count(id) FROM geo WHERE p <@ box '((0,30),(61,40))';
     SELECT count(id) FROM geo WHERE b && box '((0,30),(61,40))';",
    "INSERT INTO geo SELECT g, point(g % 61, 31 + (g % 97) / 10.0),
        box(point(g % 61, 31 + (g % 97) / 10.0), point(g % 61 + 1, 32 + (g % 97) / 10.0))
      FROM generate_series(5000, 6500) g;",
];

const STEPS: &[&str] = &[
    SETUP,
    DELETE_AND_VACUUM,
    RECYCLE,
    KILL_AND_PRUNE[0],
    KILL_AND_PRUNE[1],
    KILL_AND_PRUNE[2],
];

const WORKLOAD: Workload = Workload {
    settings: &[],
    steps: STEPS,
};

/// At `wal_level = minimal` an index created in the same transaction is not WAL-logged until
/// commit; its inserts take fake LSNs, and ASSIGN_LSN records make them distinct.
const UNLOGGED_BUILD: Workload = Workload {
    settings: &[("wal_level", "minimal"), ("max_wal_senders", "0")],
    steps: &["BEGIN;
              CREATE TABLE fresh (p point);
              CREATE INDEX fresh_p ON fresh USING gist (p);
              INSERT INTO fresh SELECT point(g % 50, g / 50) FROM generate_series(1, 2000) g;
              COMMIT;"],
};

const MUST_VERIFY: &[&str] = &[
    "Gist/PAGE_UPDATE",
    "Gist/PAGE_SPLIT",
    "Gist/PAGE_DELETE",
    "Gist/DELETE",
];

/// Flips a byte of the first line pointer of every GiST page redo produced (gist_mask leaves
/// line pointer offsets and lengths alone).
fn tamper(rec: &walproto::record::DecodedRecord, p: &mut pageserver::redo::Page) {
    if pageserver::redo::record_name(rec).starts_with("Gist/") {
        p[24] ^= 0x08;
    }
}

/// How often each GiST record type appears in the run's WAL, by pg_waldump, and how many
/// root splits each index had (a PAGE_SPLIT whose first page is block 0).
type Counts = BTreeMap<String, usize>;

fn gist_record_counts(run: &RedoRun) -> anyhow::Result<(Counts, Counts)> {
    let end = wal_end_after_clean_stop(&run.pg)?;
    let out = run_pg_waldump(&run.pg.wal_dir(), run.start, end, &["-r", "Gist"])?;
    let (mut types, mut root_splits) = (Counts::new(), Counts::new());
    let mut in_split = false;
    for line in out.lines() {
        if let Some((_, rest)) = line.split_once("desc: ") {
            let t = rest.split_whitespace().next().unwrap_or("").to_string();
            in_split = t == "PAGE_SPLIT";
            *types.entry(t).or_insert(0) += 1;
        } else if let Some((_, rest)) = line.split_once("blkref #1: rel ") {
            let mut words = rest.split_whitespace();
            let rel = words.next().unwrap_or("").to_string();
            if in_split && words.nth(2) == Some("blk") && words.next() == Some("0") {
                *root_splits.entry(rel).or_insert(0) += 1;
            }
        }
    }
    println!("GiST records in the WAL: {types:?}; root splits by index: {root_splits:?}");
    Ok((types, root_splits))
}

#[test]
fn gist_redo_matches_postgres() -> anyhow::Result<()> {
    let run = check_against_images(&WORKLOAD, MUST_VERIFY)?;
    // PAGE_REUSE registers no block, so it is never "verified": check it was replayed.
    let (counts, root_splits) = gist_record_counts(&run)?;
    assert!(
        counts.get("PAGE_REUSE").copied().unwrap_or(0) > 0,
        "no PAGE_REUSE in the WAL"
    );
    // Two root splits: some index is at least three levels deep.
    assert!(
        root_splits.values().any(|&n| n >= 2),
        "no index grew past two levels"
    );
    check_tamper_is_caught(&run, "Gist/", tamper)?;
    check_production_wal(&WORKLOAD)?;
    Ok(())
}

#[test]
fn gist_assign_lsn_replays() -> anyhow::Result<()> {
    // ASSIGN_LSN registers no block either: check it is in the WAL and the replay of that WAL
    // (the index arrives as page images at commit) ends with the data directory's pages.
    let run = redo_run(false, UNLOGGED_BUILD.settings, UNLOGGED_BUILD.steps)?;
    let (counts, _) = gist_record_counts(&run)?;
    assert!(
        counts.get("ASSIGN_LSN").copied().unwrap_or(0) > 0,
        "no ASSIGN_LSN in the WAL"
    );
    check_production_wal(&UNLOGGED_BUILD)?;
    Ok(())
}
