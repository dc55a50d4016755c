//! Generic WAL redo against Postgres 15 (see `redo_support`), through contrib `bloom`, which
//! logs every page change as a generic WAL delta (and new pages as full images).

mod redo_support;

use redo_support::{check_against_images, check_production_wal, check_tamper_is_caught, Workload};

const WORKLOAD: Workload = Workload {
    settings: &[],
    steps: &[
        "CREATE EXTENSION bloom;
         CREATE TABLE items (id int, a int, b int, c text);
         INSERT INTO items SELECT g, g % 97, g % 13, 'c' || (g % 31)
           FROM generate_series(1, 3000) g;
         CREATE INDEX items_bloom ON items USING bloom (a, b, c)
           WITH (length = 64, col1 = 2, col2 = 2, col3 = 4);",
        "INSERT INTO items SELECT g, g % 89, g % 7, 'd' || (g % 17)
           FROM generate_series(3001, 6000) g;
         DELETE FROM items WHERE id % 4 = 0 OR id BETWEEN 1000 AND 2200;
         VACUUM items;
         INSERT INTO items SELECT g, g % 83, g % 5, 'e' || g
           FROM generate_series(6001, 7000) g;",
    ],
};

const MUST_VERIFY: &[&str] = &["Generic/Generic"];

/// Flips one byte of the bloom page id at the end of every page generic redo produced.
fn tamper(rec: &walproto::record::DecodedRecord, p: &mut pageserver::redo::Page) {
    if pageserver::redo::record_name(rec).starts_with("Generic/") {
        p[8191] ^= 0x01;
    }
}

#[test]
fn generic_redo_matches_postgres() -> anyhow::Result<()> {
    let run = check_against_images(&WORKLOAD, MUST_VERIFY)?;
    check_tamper_is_caught(&run, "Generic/", tamper)?;
    check_production_wal(&WORKLOAD)?;
    Ok(())
}
