//! An index-heavy workload for benchmarks: one table with a B-tree primary key and GIN (jsonb,
//! tsvector), GiST (points, ranges, trigrams), SP-GiST (text), hash and BRIN indexes beside the
//! heap, filled in batches after the indexes exist (so every index writes its own insert and
//! split records, not a build's page images), then updated, deleted from and vacuumed.

use anyhow::Result;

use crate::pg::PgCluster;

/// The schema: every built-in index access method on one table.
pub const SCHEMA: &str = "
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE TABLE docs (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL,
        code int NOT NULL,
        title text NOT NULL,
        body jsonb NOT NULL,
        words tsvector NOT NULL,
        loc point NOT NULL,
        span int4range NOT NULL
    );
    CREATE INDEX docs_body ON docs USING gin (body);
    CREATE INDEX docs_words ON docs USING gin (words);
    CREATE INDEX docs_loc ON docs USING gist (loc);
    CREATE INDEX docs_span ON docs USING gist (span);
    CREATE INDEX docs_title_trgm ON docs USING gist (title gist_trgm_ops);
    CREATE INDEX docs_title ON docs USING spgist (title);
    CREATE INDEX docs_code ON docs USING hash (code);
    CREATE INDEX docs_at ON docs USING brin (at) WITH (pages_per_range = 4);";

/// One batch of `n` rows starting at row number `from`.
pub fn insert_batch(from: u64, n: u64) -> String {
    format!(
        "INSERT INTO docs (at, code, title, body, words, loc, span)
         SELECT timestamptz '2026-01-01' + g * interval '1 second',
                ((g::bigint * 7919) % 50000)::int,
                'title ' || md5(g::text),
                jsonb_build_object('k', g % 1000, 'tags', jsonb_build_array(g % 7, g % 13, g % 101),
                                   'name', 'n' || (g % 5000)),
                to_tsvector('simple', 'w' || (g % 997) || ' w' || (g % 89) || ' w' || (g % 7) || ' '
                                      || substr(md5(g::text), 1, 6)),
                point((g * 37) % 10007, (g * 91) % 10009),
                int4range((g * 13) % 100000, (g * 13) % 100000 + 1 + g % 50)
         FROM generate_series({from}, {}) g;",
        from + n - 1
    )
}

/// Inserts rows number `from ..= to` in batches of 5,000.
pub fn insert_rows(pg: &PgCluster, from: u64, to: u64) -> Result<()> {
    let batch = 5_000;
    let mut next = from;
    while next <= to {
        let n = batch.min(to - next + 1);
        pg.psql(&insert_batch(next, n))?;
        next += n;
    }
    Ok(())
}

/// Runs the workload: the schema, `rows` rows inserted, a tenth of them updated and a tenth
/// deleted, then VACUUM.
pub fn run_index_workload(pg: &PgCluster, rows: u64) -> Result<()> {
    pg.psql(SCHEMA)?;
    insert_rows(pg, 1, rows)?;
    pg.psql(
        "UPDATE docs SET body = body || '{\"updated\": true}', span = int4range(lower(span), upper(span) + 5)
             WHERE id % 10 = 3;
         DELETE FROM docs WHERE id % 10 = 7;
         VACUUM docs;",
    )?;
    Ok(())
}
