//! Every built-in index access method through a running cluster, as a user meets it: a table
//! with B-tree, GIN (jsonb, tsvector), GiST (points, ranges, trigrams), SP-GiST (text), hash,
//! BRIN and bloom (generic WAL) indexes, written on the `main` compute without
//! `wal_consistency_checking`; the pageserver ingests every record natively. A branch at the
//! head and a read-only compute at an earlier moment answer the same index scans as `main`
//! did then (each query is checked to run on its index), so the index pages Strata rebuilt
//! with redo are the ones Postgres wrote.

use anyhow::{ensure, Context, Result};
use strata_tests::cluster::{on_new_cluster, psql, StrataCli};
use strata_tests::index_workload::{insert_batch, SCHEMA};

/// (index that must serve it, query). Each counts rows so results are small and exact.
const QUERIES: &[(&str, &str)] = &[
    (
        "docs_pkey",
        "SELECT count(*) FROM docs WHERE id BETWEEN 1000 AND 1999",
    ),
    (
        "docs_body",
        "SELECT count(*) FROM docs WHERE body @> '{\"k\": 17}'",
    ),
    (
        "docs_words",
        "SELECT count(*) FROM docs WHERE words @@ 'w13 & w5'::tsquery",
    ),
    (
        "docs_loc",
        "SELECT count(*) FROM docs WHERE loc <@ box '((0,0),(2000,2000))'",
    ),
    (
        "docs_span",
        "SELECT count(*) FROM docs WHERE span && int4range(5000, 5100)",
    ),
    (
        "docs_title_trgm",
        "SELECT count(*) FROM docs WHERE title LIKE '%ab1%'",
    ),
    (
        "docs_title",
        "SELECT count(*) FROM docs WHERE title ^@ 'title 0a'",
    ),
    ("docs_code", "SELECT count(*) FROM docs WHERE code = 4242"),
    (
        "docs_at",
        "SELECT count(*) FROM docs WHERE at BETWEEN '2026-01-01 01:00' AND '2026-01-01 02:00'",
    ),
    ("docs_bloom", "SELECT count(*) FROM docs WHERE grp = 3"),
];

/// Planner settings that leave an index scan the only cheap way.
const FORCE_INDEX: &str = "SET enable_seqscan = off; SET max_parallel_workers_per_gather = 0;";

/// The answers of every query on the compute at `port`, after checking each runs on its index.
fn answers(port: u16) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (index, q) in QUERIES {
        let plan = psql(port, &format!("{FORCE_INDEX} EXPLAIN (COSTS OFF) {q}"))?;
        ensure!(plan.contains(index), "{q} does not use {index}:\n{plan}");
        out.push(psql(port, &format!("{FORCE_INDEX} {q}"))?);
    }
    Ok(out)
}

#[test]
fn every_index_access_method_is_served_from_native_redo() -> Result<()> {
    on_new_cluster("strata-index-ams-", scenario)
}

fn scenario(s: &StrataCli) -> Result<()> {
    s.run(&["start"])?;
    s.run(&["tenant", "create", "shop"])?;
    let c = s.json(&["compute", "start", "main"])?;
    let port = c["port"].as_u64().context("port")? as u16;

    psql(port, SCHEMA)?;
    psql(
        port,
        "CREATE EXTENSION bloom;
         ALTER TABLE docs ADD COLUMN grp int NOT NULL DEFAULT 0;
         CREATE INDEX docs_bloom ON docs USING bloom (code, grp);",
    )?;
    for from in (1..=20_000).step_by(5_000) {
        psql(port, &insert_batch(from, 5_000))?;
    }
    psql(port, "UPDATE docs SET grp = id % 5 WHERE id % 3 = 0")?;
    let then = answers(port)?;
    let then_lsn = psql(port, "SELECT pg_current_wal_insert_lsn()")?;

    // More of everything after that moment: deletes, vacuum, inserts that split pages.
    psql(port, "DELETE FROM docs WHERE id % 10 = 7")?;
    psql(
        port,
        "UPDATE docs SET body = body || '{\"k\": 17}' WHERE id % 100 = 1",
    )?;
    psql(port, "VACUUM docs")?;
    for from in (20_001..=30_000).step_by(5_000) {
        psql(port, &insert_batch(from, 5_000))?;
    }
    let now = answers(port)?;
    ensure!(now != then, "the later writes changed no answer");

    // A branch at the head: its compute's pages come from GetPage@LSN with native redo.
    s.run(&["branch", "create", "copy", "--from", "main"])?;
    let b = s.json(&["compute", "start", "copy"])?;
    let bport = b["port"].as_u64().context("branch port")? as u16;
    ensure!(
        answers(bport)? == now,
        "the branch's index scans differ from main's"
    );

    // A read-only compute at the earlier moment sees the indexes as they were then.
    let past = s.json(&[
        "compute", "start", "main", "--at", &then_lsn, "--name", "past",
    ])?;
    let pport = past["port"].as_u64().context("past port")? as u16;
    ensure!(
        answers(pport)? == then,
        "the indexes at {then_lsn} differ from what main answered then"
    );
    Ok(())
}
