//! BRIN redo against Postgres 15 (see `redo_support`).
//!
//! A time series table whose heap rows fill one page each pair, indexed with one range per
//! heap page so the build needs two revmap pages (REVMAP_EXTEND, moving regular tuples out
//! of the way). Multi-minmax summaries grow with every new value: updates that widen them
//! first fit in place (SAMEPAGE_UPDATE) and then move to other pages (UPDATE, UPDATE+INIT
//! once the regular pages are full). Summarizing placeholders and desummarizing cover the
//! rest.

mod redo_support;

use redo_support::{check_against_images, check_production_wal, check_tamper_is_caught, Workload};

const WORKLOAD: Workload = Workload {
    settings: &[],
    steps: &[
        "CREATE TABLE ts (t timestamptz NOT NULL, v int, filler text);
         ALTER TABLE ts ALTER COLUMN filler SET STORAGE PLAIN;
         INSERT INTO ts SELECT '2024-01-01'::timestamptz + g * interval '1 minute', g % 1000,
                               repeat('x', 3000)
           FROM generate_series(1, 3200) g;
         CREATE INDEX ts_brin ON ts USING brin (t timestamptz_minmax_multi_ops, v)
           WITH (pages_per_range = 1, autosummarize = off);",
        // Widen summaries: the new row versions stay on their heap pages.
        "UPDATE ts SET filler = NULL, t = t + interval '1 year' WHERE v % 50 = 0;
         UPDATE ts SET t = t - interval '1 year', v = -v WHERE v % 50 = 1;
         UPDATE ts SET t = t + interval '1 day', v = v + 7 WHERE v % 5 = 3;",
        // New heap pages after the summarized ones, summarized in one go.
        "INSERT INTO ts SELECT '2025-01-01'::timestamptz + g * interval '1 minute', g,
                               repeat('y', 3000)
           FROM generate_series(1, 600) g;
         SELECT brin_summarize_new_values('ts_brin');",
        "SELECT brin_desummarize_range('ts_brin', b) FROM generate_series(10, 400, 13) b;
         SELECT brin_summarize_range('ts_brin', b) FROM generate_series(10, 200, 13) b;
         DELETE FROM ts WHERE v % 3 = 0;
         VACUUM ts;",
    ],
};

const MUST_VERIFY: &[&str] = &[
    "BRIN/CREATE_INDEX",
    "BRIN/INSERT",
    "BRIN/INSERT+INIT",
    "BRIN/UPDATE",
    "BRIN/UPDATE+INIT",
    "BRIN/SAMEPAGE_UPDATE",
    "BRIN/REVMAP_EXTEND",
    "BRIN/DESUMMARIZE",
];

/// Flips the high byte of the page type word of every BRIN page redo produced.
fn tamper(rec: &walproto::record::DecodedRecord, p: &mut pageserver::redo::Page) {
    if pageserver::redo::record_name(rec).starts_with("BRIN/") {
        p[8191] ^= 0x01;
    }
}

#[test]
fn brin_redo_matches_postgres() -> anyhow::Result<()> {
    let run = check_against_images(&WORKLOAD, MUST_VERIFY)?;
    check_tamper_is_caught(&run, "BRIN/", tamper)?;
    check_production_wal(&WORKLOAD)?;
    Ok(())
}
