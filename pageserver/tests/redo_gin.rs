//! GIN redo against Postgres 15 (see `redo_support`).

mod redo_support;

use redo_support::{check_against_images, check_production_wal, check_tamper_is_caught, Workload};

const WORKLOAD: Workload = Workload {
    settings: &[],
    steps: &["CREATE TABLE docs (id serial, body jsonb);
              CREATE INDEX docs_body ON docs USING gin (body);
              INSERT INTO docs (body)
                SELECT jsonb_build_object('k', g % 100, 'tags', jsonb_build_array(g % 7, g % 11))
                FROM generate_series(1, 20000) g;"],
};

const MUST_VERIFY: &[&str] = &["Gin/INSERT_LISTPAGE"];

/// Flips one byte of every GIN page redo produced.
fn tamper(rec: &walproto::record::DecodedRecord, p: &mut pageserver::redo::Page) {
    if pageserver::redo::record_name(rec).starts_with("Gin/") {
        p[8191] ^= 0x01;
    }
}

#[test]
fn gin_redo_matches_postgres() -> anyhow::Result<()> {
    let run = check_against_images(&WORKLOAD, MUST_VERIFY)?;
    check_tamper_is_caught(&run, "Gin/", tamper)?;
    check_production_wal(&WORKLOAD)?;
    Ok(())
}
