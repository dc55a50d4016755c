//! Issue 17, items 5 and 9, on real clusters (the `strata` binaries, Postgres 15).
//!
//! - A branch and a read-only compute at a page-aligned and at a segment-aligned LSN that
//!   lie inside a record: the LSN resolves to that record's end (Postgres's
//!   `recovery_target_lsn` with `recovery_target_inclusive = off` replays every record
//!   starting before the target), the branch's compute starts and commits, and both computes
//!   hold what Postgres's own recovery to that LSN holds (`pg_dump` compared). Before, the
//!   branch's ingest wanted a record at the page start for ever and its compute hung.
//! - A table and an index in a tablespace: a read-only compute at a past LSN, `strata query
//!   --at` and a branch's read-write compute read them (and the branch writes), with
//!   `pg_tblspc/<oid>` a link to the compute's own directory. Before, the read-only
//!   computes PANICked on an in-place `pg_tblspc/<oid>` directory.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{create_tablespace_ts, on_new_cluster, pg_dump, psql, StrataCli};
use strata_tests::pg::pg_bin_dir;
use strata_tests::pitr::postgres_pitr;
use strata_tests::waldump::{parse_record_line, record_end, run_pg_waldump};
use walproto::consts::{WAL_PAGE_SIZE, WAL_SEGMENT_SIZE};
use walproto::Lsn;

fn port_of(v: &serde_json::Value) -> Result<u16> {
    let p = v["port"]
        .as_u64()
        .with_context(|| format!("no port in {v}"))?;
    Ok(u16::try_from(p)?)
}

/// A WAL position strictly inside the record `start..end`.
#[derive(Clone, Copy, Debug)]
struct Inside {
    at: Lsn,
    start: Lsn,
    end: Lsn,
}

/// Every record in `from..to` of `wal_dir`: (start, end).
fn records(wal_dir: &Path, from: Lsn, to: Lsn) -> Result<Vec<(Lsn, Lsn)>> {
    let text = run_pg_waldump(wal_dir, from, to, &[])?;
    text.lines()
        .filter(|l| l.starts_with("rmgr: "))
        .map(|l| {
            let r = parse_record_line(l)?;
            Ok((r.lsn, record_end(r.lsn, r.tot_len)))
        })
        .collect()
}

/// The first multiple of `step` at or after `from` that lies strictly inside a record.
fn first_inside(recs: &[(Lsn, Lsn)], from: Lsn, step: u64) -> Option<Inside> {
    recs.iter().find_map(|&(start, end)| {
        let at = start.0.div_ceil(step) * step;
        (at >= from.0 && start.0 < at && at < end.0).then_some(Inside {
            at: Lsn(at),
            start,
            end,
        })
    })
}

#[test]
fn branches_and_read_only_computes_at_lsns_inside_records() -> Result<()> {
    on_new_cluster("strata-lsn-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create", "t"])?;
        let main = port_of(&s.json(&["compute", "start", "main"])?)?;
        psql(main, "ALTER SYSTEM SET wal_keep_size = '4GB'")?;
        psql(main, "SELECT pg_reload_conf()")?;
        let base = s.dir.join("oracle-base");
        let st = Command::new(pg_bin_dir().join("pg_basebackup"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &main.to_string()])
            .envs(strata_tests::cluster::compute_auth_env(main))
            .arg("-D")
            .arg(&base)
            .args(["-Fp", "-X", "stream", "-c", "fast", "--no-sync"])
            .status()?;
        ensure!(st.success(), "pg_basebackup of the compute");
        let wal_dir = s.dir.join("computes/main/data/pg_wal");

        psql(main, "CREATE TABLE big (id int PRIMARY KEY, pad text)")?;
        let from: Lsn = psql(main, "SELECT pg_current_wal_insert_lsn()")?.parse()?;
        // Rows of ~1.5 KB (below the TOAST threshold: stored as they are), 1,000 per
        // transaction, until a segment boundary falls inside a record.
        let (mut page, mut segment) = (None, None);
        let mut after_first_commit = from;
        for batch in 0..40 {
            psql(
                main,
                &format!(
                    "INSERT INTO big SELECT g, repeat(md5(g::text), 45) \
                     FROM generate_series({}, {}) g",
                    batch * 1000 + 1,
                    batch * 1000 + 1000
                ),
            )?;
            if batch == 0 {
                after_first_commit = psql(main, "SELECT pg_current_wal_insert_lsn()")?.parse()?;
            }
            if batch < 11 {
                continue;
            }
            let to: Lsn = psql(main, "SELECT pg_current_wal_insert_lsn()")?.parse()?;
            let recs = records(&wal_dir, from, to)?;
            // After the first batch committed, so the state there has rows.
            page = first_inside(&recs, after_first_commit, WAL_PAGE_SIZE);
            segment = first_inside(&recs, after_first_commit, WAL_SEGMENT_SIZE);
            if page.is_some() && segment.is_some() {
                break;
            }
        }
        let (Some(page), Some(segment)) = (page, segment) else {
            bail!("no page and segment boundary inside a record in 40,000 rows of WAL");
        };
        eprintln!("inside a record: page-aligned {page:?}, segment-aligned {segment:?}");
        // Close the segment so Postgres's recovery finds every record in a complete file.
        psql(main, "SELECT pg_switch_wal()")?;
        psql(main, "CHECKPOINT")?;

        for (label, p) in [("page", page), ("segment", segment)] {
            check_point(s, &base, &wal_dir, label, p)?;
        }
        Ok(())
    })
}

/// A branch and a read-only compute at `p.at` hold Postgres's state there, and the branch
/// commits.
fn check_point(s: &StrataCli, base: &Path, wal_dir: &Path, label: &str, p: Inside) -> Result<()> {
    let at = p.at.to_string();
    let recovery = [
        ("recovery_target_lsn".to_string(), at.clone()),
        ("recovery_target_inclusive".to_string(), "off".to_string()),
    ];
    let oracle = postgres_pitr(base, wal_dir, &format!("{label}-aligned {at}"), &recovery)?;
    ensure!(oracle.contains("big"), "{label}: the oracle has no table");

    let branch = format!("b-{label}");
    let b = s.json(&["branch", "create", &branch, "--at", &at])?;
    let resolved: Lsn = b["lsn"].as_str().context("lsn")?.parse()?;
    ensure!(
        resolved == p.end,
        "{label}: branch at {at} (inside the record {}..{}) starts at {resolved}, not at the \
         record's end",
        p.start,
        p.end
    );
    let port = port_of(&s.json(&["compute", "start", &branch])?)?;
    let dump = pg_dump(port)?;
    ensure!(
        dump == oracle,
        "{label}: the branch at {at} differs from Postgres's recovery to it"
    );
    psql(port, "INSERT INTO big VALUES (-1, 'written on the branch')")?;
    let n = psql(port, "SELECT count(*) FROM big WHERE id = -1")?;
    ensure!(n == "1", "{label}: the branch's write is not there: {n}");
    s.run(&["compute", "stop", &branch])?;

    let name = format!("ro-{label}");
    let ro = s.json(&[
        "compute",
        "start",
        "main",
        "--at",
        &at,
        "--read-only",
        "--name",
        &name,
    ])?;
    let dump = pg_dump(port_of(&ro)?)?;
    s.run(&["compute", "stop", &name])?;
    ensure!(
        dump == oracle,
        "{label}: the read-only compute at {at} differs from Postgres's recovery to it"
    );
    eprintln!(
        "{label}-aligned {at} inside {}..{}: branch and read-only compute equal Postgres's \
         recovery ({} bytes of pg_dump)",
        p.start,
        p.end,
        dump.len()
    );
    Ok(())
}

/// A table and an index in tablespace `ts` read (and written) everywhere.
#[test]
fn tablespaces_in_read_only_computes_queries_and_branches() -> Result<()> {
    on_new_cluster("strata-tblspc-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create", "t"])?;
        let main = port_of(&s.json(&["compute", "start", "main"])?)?;
        let location = create_tablespace_ts(s, main)?;
        psql(
            main,
            "CREATE TABLE tt (id int PRIMARY KEY USING INDEX TABLESPACE ts, v text) TABLESPACE ts;
             CREATE INDEX tt_v ON tt (v) TABLESPACE ts;
             INSERT INTO tt SELECT g, md5(g::text) FROM generate_series(1, 2000) g;",
        )?;
        let past = psql(main, "SELECT pg_current_wal_insert_lsn()")?;
        psql(
            main,
            "INSERT INTO tt SELECT g, md5(g::text) FROM generate_series(2001, 3000) g",
        )?;
        // The rows as of `past`, and one found through the index.
        let rows_sql = "SELECT count(*), md5(string_agg(id || v, ',' ORDER BY id)) FROM tt";
        let expected = psql(main, &format!("{rows_sql} WHERE id <= 2000"))?;
        let by_index = "SET enable_seqscan = off; SET enable_bitmapscan = off; \
                        SELECT id FROM tt WHERE v = md5('1234')";
        ensure!(psql(main, by_index)? == "1234");

        let ro = s.json(&["compute", "start", "main", "--at", &past, "--name", "ro"])?;
        let ro_port = port_of(&ro)?;
        ensure!(
            psql(ro_port, rows_sql)? == expected,
            "read-only compute at {past}"
        );
        ensure!(
            psql(ro_port, by_index)? == "1234",
            "index on the read-only compute"
        );
        check_own_tablespace(s, "ro", ro_port, &location)?;
        s.run(&["compute", "stop", "ro"])?;

        let q = s.run(&["query", "-t", "--at", &past, rows_sql])?;
        ensure!(q == expected, "strata query --at {past}: {q} vs {expected}");

        s.run(&["branch", "create", "b", "--at", &past])?;
        let b = port_of(&s.json(&["compute", "start", "b"])?)?;
        ensure!(psql(b, rows_sql)? == expected, "branch at {past}");
        ensure!(psql(b, by_index)? == "1234", "index on the branch");
        check_own_tablespace(s, "b", b, &location)?;
        psql(
            b,
            "INSERT INTO tt VALUES (-1, 'branch'); CREATE TABLE t2 (x int) TABLESPACE ts; \
             INSERT INTO t2 VALUES (7)",
        )?;
        let written = psql(
            b,
            "SET enable_seqscan = off; SET enable_bitmapscan = off; \
             SELECT id FROM tt WHERE v = 'branch'; SELECT x FROM t2",
        )?;
        ensure!(written == "-1\n7", "the branch's writes: {written:?}");
        // The primary is untouched by the branch.
        ensure!(psql(main, "SELECT count(*) FROM tt WHERE id = -1")? == "0");
        Ok(())
    })
}

/// The compute's `pg_tblspc/<oid>` is a link to a directory of its own, not the primary's.
fn check_own_tablespace(s: &StrataCli, name: &str, port: u16, primary: &Path) -> Result<()> {
    let oid = psql(port, "SELECT oid FROM pg_tablespace WHERE spcname = 'ts'")?;
    let link = s.dir.join(format!("computes/{name}/data/pg_tblspc/{oid}"));
    ensure!(link.is_symlink(), "{} is not a link", link.display());
    let target = std::fs::read_link(&link)?;
    ensure!(
        target.starts_with(s.dir.join(format!("computes/{name}"))) && target != primary,
        "compute {name}'s tablespace is at {}",
        target.display()
    );
    let location = psql(port, &format!("SELECT pg_tablespace_location({oid})"))?;
    ensure!(
        Path::new(&location) == target,
        "pg_tablespace_location says {location}, the link {}",
        target.display()
    );
    Ok(())
}
