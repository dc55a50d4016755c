//! GIN redo against Postgres 15 (see `redo_support`).
//!
//! One workload, in steps that each aim at some record types:
//! - jsonb (jsonb_ops and jsonb_path_ops) and tsvector indexes with `fastupdate = on`: rows go
//!   to the pending list (UPDATE_META_PAGE, INSERT_LISTPAGE), and cleaning it moves them into
//!   the entry trees (INSERT, SPLIT) and frees the list pages (DELETE_LISTPAGE).
//! - int[] with `fastupdate = off`: key 1 is in every row, so it gets a posting tree
//!   (CREATE_PTREE) whose leaf takes the following TIDs (INSERT, segment actions); a bulk
//!   of rows through the pending list then splits it (root and non-root leaf splits, downlinks
//!   inserted into the internal data page). Deleting a range of rows and vacuuming empties
//!   posting-tree leaves (VACUUM_DATA_LEAF_PAGE, DELETE_PAGE) and entry pages (VACUUM_PAGE).
//! - text[] keys of ~400 bytes with `fastupdate = off`: few keys per page, so the entry tree
//!   grows internal levels and splits them (SPLIT of internal pages, whose child is redone).
//!
//! SPLIT's left/right/root pages and VACUUM_PAGE's page are always logged as full-page images,
//! so only the child of an internal split is redone (and verified); the test also checks
//! that the WAL holds those image-only records, which redo must not reject.

mod redo_support;

use std::collections::BTreeMap;

use redo_support::{check_against_images, check_production_wal, check_tamper_is_caught, Workload};
use walproto::walfiles::WalDirReader;

const WORKLOAD: Workload = Workload {
    settings: &[("wal_compression", "lz4")],
    steps: &[
        "CREATE TABLE docs (id int, body jsonb, tsv tsvector);
         CREATE INDEX docs_ops ON docs USING gin (body);
         CREATE INDEX docs_path ON docs USING gin (body jsonb_path_ops);
         CREATE INDEX docs_tsv ON docs USING gin (tsv);
         INSERT INTO docs
           SELECT g, jsonb_build_object('k', g % 50, 'n', g,
                                        'tags', jsonb_build_array(g % 7, 'w' || (g % 13))),
                  to_tsvector('simple', 'word' || (g % 37) || ' common tag' || g)
           FROM generate_series(1, 2000) g;
         SELECT gin_clean_pending_list('docs_ops'), gin_clean_pending_list('docs_path');
         DELETE FROM docs WHERE id % 3 = 0;
         VACUUM docs;",
        "CREATE TABLE arr (id int, a int[]);
         CREATE INDEX arr_gin ON arr USING gin (a) WITH (fastupdate = off);
         INSERT INTO arr SELECT g, ARRAY[1, 2 + g % 300] FROM generate_series(1, 5000) g;
         ALTER INDEX arr_gin SET (fastupdate = on, gin_pending_list_limit = 65536);
         INSERT INTO arr SELECT g, ARRAY[1, 2 + g % 300] FROM generate_series(5001, 20000) g;
         SELECT gin_clean_pending_list('arr_gin');
         ALTER INDEX arr_gin SET (fastupdate = off);
         INSERT INTO arr SELECT g, ARRAY[1, 2 + g % 300] FROM generate_series(20001, 20200) g;
         DELETE FROM arr WHERE id BETWEEN 2000 AND 18000;
         VACUUM arr;",
        "CREATE TABLE longkeys (id int, t text[]);
         CREATE INDEX longkeys_gin ON longkeys USING gin (t) WITH (fastupdate = off);
         INSERT INTO longkeys SELECT g, ARRAY[repeat(md5(g::text), 12)]
           FROM generate_series(1, 600) g;",
    ],
};

const MUST_VERIFY: &[&str] = &[
    "Gin/CREATE_PTREE",
    "Gin/INSERT",
    "Gin/SPLIT",
    "Gin/VACUUM_DATA_LEAF_PAGE",
    "Gin/DELETE_PAGE",
    "Gin/UPDATE_META_PAGE",
    "Gin/INSERT_LISTPAGE",
    "Gin/DELETE_LISTPAGE",
];

/// Record types whose pages are all full-page images: they must occur (and replay).
const MUST_OCCUR: &[&str] = &["Gin/SPLIT", "Gin/VACUUM_PAGE"];

/// Flips a bit of the GIN opaque flags (an unused one) on every GIN page redo produced: a bit
/// no mask hides (the special space is never masked).
fn tamper(rec: &walproto::record::DecodedRecord, p: &mut pageserver::redo::Page) {
    if pageserver::redo::record_name(rec).starts_with("Gin/") {
        p[8191] ^= 0x01;
    }
}

/// How many records of each type the run's WAL holds.
fn record_types(run: &strata_tests::redo_run::RedoRun) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut r = WalDirReader::open(&run.pg.wal_dir(), run.start, None, None)?;
    let mut n = BTreeMap::new();
    while let Some(rec) = r.next_record()? {
        let name = pageserver::redo::record_name(&rec);
        // INSERT and SPLIT by page kind, to show each redo path was taken.
        let flags_at = match name.as_str() {
            "Gin/INSERT" => Some(0),
            "Gin/SPLIT" => Some(24),
            _ => None,
        };
        if let Some(f) = flags_at.and_then(|at| rec.main_data().get(at)) {
            let kind = format!(
                "{name} {}{}{}",
                if f & 1 != 0 { "data" } else { "entry" },
                if f & 2 != 0 { " leaf" } else { " internal" },
                if f & 4 != 0 { " root" } else { "" }
            );
            *n.entry(kind).or_insert(0) += 1;
        }
        *n.entry(name).or_insert(0) += 1;
    }
    Ok(n)
}

#[test]
fn gin_redo_matches_postgres() -> anyhow::Result<()> {
    let run = check_against_images(&WORKLOAD, MUST_VERIFY)?;
    let types = record_types(&run)?;
    for (t, c) in types.iter().filter(|(t, _)| t.starts_with("Gin/")) {
        println!("  {t:<28} records {c:>7}");
    }
    for t in MUST_OCCUR {
        assert!(types.contains_key(*t), "no {t} record in the WAL");
    }
    check_tamper_is_caught(&run, "Gin/", tamper)?;
    check_production_wal(&WORKLOAD)?;
    Ok(())
}
