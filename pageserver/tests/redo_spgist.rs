//! SP-GiST redo against Postgres 15 (see `redo_support`).

mod redo_support;

use redo_support::{check_against_images, check_production_wal, check_tamper_is_caught, Workload};

const WORKLOAD: Workload = Workload {
    settings: &[],
    steps: &[
        // Indexes built empty (the build is logged as images), then filled by inserts.
        "CREATE TABLE pts (id serial, p point);
         CREATE INDEX pts_quad ON pts USING spgist (p quad_point_ops);
         CREATE INDEX pts_kd ON pts USING spgist (p kd_point_ops);
         CREATE TABLE words (id serial, w text);
         CREATE INDEX words_radix ON words USING spgist (w);
         CREATE TABLE spans (id serial, r int4range);
         CREATE INDEX spans_r ON spans USING spgist (r);
         CREATE TABLE tiny (id serial, p point);
         CREATE INDEX tiny_p ON tiny USING spgist (p);",
        // Points, one in five NULL: the nulls tree splits too.
        "INSERT INTO pts (p)
           SELECT CASE WHEN g % 5 = 0 THEN NULL
                       ELSE point((g * 37) % 1000, (g * 91) % 997) END
           FROM generate_series(1, 6000) g;",
        // Text: long shared prefixes split prefix tuples; second letters that appear only
        // later add nodes to inner tuples until they no longer fit their page.
        "INSERT INTO words (w)
           SELECT CASE WHEN g % 23 = 0 THEN NULL
                       ELSE 'https://www.example.com/section-' || (g % 13) || '/item/'
                            || md5(g::text) END
           FROM generate_series(1, 1500) g;
         INSERT INTO words (w)
           SELECT chr(65 + g % 26) || chr(65 + (g / 26) % 8) || md5(g::text)
           FROM generate_series(1, 4000) g;
         INSERT INTO words (w)
           SELECT chr(65 + g % 26) || chr(75 + (g / 26) % 50) || md5(g::text)
           FROM generate_series(1, 3000) g;",
        "INSERT INTO spans (r)
           SELECT int4range(g % 500, g % 500 + 1 + g % 40) FROM generate_series(1, 3000) g;
         INSERT INTO tiny (p) SELECT point(g, g) FROM generate_series(1, 20) g;",
        // Whole chains deleted leave DEAD tuples; scattered deletes leave placeholders.
        "DELETE FROM pts WHERE id % 3 = 0 OR p <@ box '((0,0),(300,300))';
         DELETE FROM words WHERE id % 4 = 0;
         DELETE FROM spans WHERE id % 2 = 0;
         DELETE FROM tiny WHERE id % 2 = 0;",
        "VACUUM pts, words, spans, tiny;",
        // The deleting transaction is now older than every snapshot: redirects go.
        "VACUUM pts, words, spans, tiny;",
        "INSERT INTO pts (p) SELECT point(g % 300, g % 301) FROM generate_series(1, 1000) g;
         INSERT INTO words (w) SELECT 'https://www.example.com/' || g FROM generate_series(1, 500) g;",
    ],
};

const MUST_VERIFY: &[&str] = &[
    "SPGist/ADD_LEAF",
    "SPGist/MOVE_LEAFS",
    "SPGist/ADD_NODE",
    "SPGist/SPLIT_TUPLE",
    "SPGist/PICKSPLIT",
    "SPGist/VACUUM_LEAF",
    "SPGist/VACUUM_ROOT",
    "SPGist/VACUUM_REDIRECT",
];

/// Flips a bit of the page id at the end of the special space of every SP-GiST page redo
/// produced (spg_mask leaves the special space alone).
fn tamper(rec: &walproto::record::DecodedRecord, p: &mut pageserver::redo::Page) {
    if pageserver::redo::record_name(rec).starts_with("SPGist/") {
        p[8191] ^= 0x01;
    }
}

#[test]
fn spgist_redo_matches_postgres() -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let run = check_against_images(&WORKLOAD, MUST_VERIFY)?;
    check_tamper_is_caught(&run, "SPGist/", tamper)?;
    check_production_wal(&WORKLOAD)?;
    println!("took {:?}", t.elapsed());
    Ok(())
}
