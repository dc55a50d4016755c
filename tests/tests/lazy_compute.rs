//! Lazy computes (issue 18): Postgres on a page filesystem that fetches relation pages from
//! the pageserver on first read, started by `strata` by default. Real clusters, real FUSE
//! mounts, real Postgres 15; Postgres itself (a full copy, a plain Postgres running the same
//! SQL) is the oracle.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{
    first_differences, mounts_under, on_new_cluster, pg_dump_db, pgbench, psql, psql_db, read_pid,
    wait_for, StrataCli,
};
use strata_tests::pg::{pg_bin_dir, InitOptions, PgCluster};

/// Starts a compute with `args` after `compute start`; its port. Checks that it is lazy or a
/// full copy as asked.
fn start_compute(s: &StrataCli, args: &[&str], lazy: bool) -> Result<u16> {
    let mut all = vec!["compute", "start"];
    all.extend_from_slice(args);
    let c = s.json(&all)?;
    ensure!(
        c["lazy"].as_bool() == Some(lazy),
        "compute start {args:?}: expected lazy = {lazy}, got {c}"
    );
    Ok(c["port"].as_u64().context("no port")? as u16)
}

/// What psql said, success or not, within `timeout` (then it is killed and this fails).
struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

fn psql_within(port: u16, sql: &str, timeout: Duration) -> Result<Outcome> {
    let mut child = Command::new(pg_bin_dir().join("psql"))
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
        .args(["-p", &port.to_string(), "-c", sql])
        .envs(strata_tests::cluster::compute_auth_env(port))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            return Ok(Outcome {
                success: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("psql {sql:?} on port {port} hung: no answer within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill9(pid: i32) -> Result<()> {
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    ensure!(st.success(), "kill -9 {pid}");
    Ok(())
}

fn ensure_nothing_mounted(s: &StrataCli, when: &str) -> Result<()> {
    let left = mounts_under(&s.dir)?;
    ensure!(left.is_empty(), "{when}: still mounted: {left:?}");
    Ok(())
}

fn lsn_now(port: u16) -> Result<String> {
    psql(port, "SELECT pg_current_wal_insert_lsn()")
}

/// pg_dump of a lazy read-only compute equals pg_dump of a full-copy one at several LSNs of a
/// workload: pgbench, DDL, TOAST, indexes, a second database, a dropped table.
#[test]
fn lazy_and_full_copy_computes_dump_the_same_at_several_lsns() -> Result<()> {
    on_new_cluster("strata-lazy-dump-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create", "lazy"])?;
        let port = start_compute(s, &["main"], true)?;
        let mut points = Vec::new();
        pgbench(port, &["-i", "-q", "-s", "1"])?;
        points.push(("after pgbench -i", lsn_now(port)?));
        pgbench(port, &["-c", "2", "-j", "2", "-t", "200"])?;
        psql(
            port,
            "CREATE TABLE docs(id int PRIMARY KEY, body text);
             INSERT INTO docs SELECT g, repeat(md5(g::text), 300) FROM generate_series(1, 400) g;
             CREATE INDEX docs_body_prefix ON docs (left(body, 10));
             CREATE TABLE doomed(id int); INSERT INTO doomed SELECT generate_series(1, 5000);",
        )?;
        psql(port, "CREATE DATABASE second")?;
        psql_db(
            port,
            "second",
            "CREATE TABLE other(k text PRIMARY KEY, v int);
             INSERT INTO other SELECT 'k' || g, g FROM generate_series(1, 3000) g;",
        )?;
        points.push(("after DDL, TOAST and a second database", lsn_now(port)?));
        psql(
            port,
            "DROP TABLE doomed; UPDATE docs SET body = body || 'x' WHERE id % 7 = 0;
             DELETE FROM pgbench_accounts WHERE aid % 5 = 0;",
        )?;
        psql(port, "VACUUM pgbench_accounts")?;
        pgbench(port, &["-c", "2", "-t", "100"])?;
        points.push(("after DROP TABLE, DELETE and VACUUM", lsn_now(port)?));
        for (i, (label, lsn)) in points.iter().enumerate() {
            let lazy_name = format!("lazy{i}");
            let full_name = format!("full{i}");
            let lazy_port = start_compute(
                s,
                &["main", "--read-only", "--at", lsn, "--name", &lazy_name],
                true,
            )?;
            let full_port = start_compute(
                s,
                &[
                    "main",
                    "--read-only",
                    "--at",
                    lsn,
                    "--name",
                    &full_name,
                    "--full-copy",
                ],
                false,
            )?;
            let dbs: &[&str] = if i == 0 {
                &["postgres"]
            } else {
                &["postgres", "second"]
            };
            for db in dbs {
                let lazy = pg_dump_db(lazy_port, db)?;
                let full = pg_dump_db(full_port, db)?;
                ensure!(
                    full.len() > 1000,
                    "{label}: the {db} dump is suspiciously small"
                );
                if lazy != full {
                    bail!(
                        "{label} ({lsn}), database {db}: the lazy compute's dump differs ({} vs \
                         {} bytes):\n{}",
                        lazy.len(),
                        full.len(),
                        first_differences(&lazy, &full, "lazy", "full")
                    );
                }
                eprintln!(
                    "{label} ({lsn}), {db}: identical dumps ({} bytes)",
                    lazy.len()
                );
            }
            s.run(&["compute", "stop", &lazy_name])?;
            s.run(&["compute", "stop", &full_name])?;
        }
        Ok(())
    })
}

/// Rows written in acknowledged transactions, by id: what must be read back.
type Ledger = BTreeMap<i64, String>;

fn ledger_rows(port: u16) -> Result<Ledger> {
    let out = psql(port, "SELECT id, val FROM ledger ORDER BY id")?;
    out.lines()
        .map(|l| {
            let (id, val) = l.split_once('|').context("a ledger row without |")?;
            Ok((id.parse()?, val.to_string()))
        })
        .collect()
}

fn check_ledger(port: u16, ledger: &Ledger, when: &str) -> Result<()> {
    let got = ledger_rows(port)?;
    if &got != ledger {
        let missing = ledger.iter().filter(|(k, v)| got.get(k) != Some(v)).count();
        let extra = got.keys().filter(|k| !ledger.contains_key(k)).count();
        bail!(
            "{when}: {missing} acknowledged rows missing or different, {extra} unexpected \
             (of {})",
            ledger.len()
        );
    }
    Ok(())
}

/// A read-write lazy compute with the smallest shared_buffers reads back every acknowledged
/// write, though they touch far more pages than fit and are evicted (written to the page
/// filesystem's overlay and read back from it); so does the next compute of the branch.
#[test]
fn a_lazy_writer_reads_its_writes_under_eviction_and_after_a_restart() -> Result<()> {
    on_new_cluster("strata-lazy-ryw-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create", "ryw"])?;
        let port = start_compute(s, &["main"], true)?;
        // The smallest shared_buffers: set, then the postmaster killed; the supervisor starts
        // it again on the same page filesystem, through crash recovery.
        psql(port, "ALTER SYSTEM SET shared_buffers = '128kB'")?;
        let pm = read_pid(&s.dir.join("computes/main/data/postmaster.pid"))?;
        kill9(pm)?;
        wait_for(
            "the restarted compute with shared_buffers = 128kB",
            Duration::from_secs(60),
            || {
                Ok(psql(port, "SHOW shared_buffers")
                    .ok()
                    .filter(|v| v == "128kB"))
            },
        )?;
        // One row per page (fillfactor 10, ~800-byte rows): 3000 rows are ~3000 pages,
        // ~190 times what 16 buffers hold.
        wait_for(
            "a commit on the restarted compute",
            Duration::from_secs(60),
            || {
                Ok(psql(
                    port,
                    "CREATE TABLE ledger(id bigint PRIMARY KEY, val text, pad text) \
                 WITH (fillfactor = 10)",
                )
                .ok())
            },
        )?;
        let mut ledger = Ledger::new();
        for batch in 0..10i64 {
            let lo = batch * 300 + 1;
            let hi = lo + 299;
            psql(
                port,
                &format!(
                    "INSERT INTO ledger SELECT g, 'v0-' || g, repeat('p', 800) \
                     FROM generate_series({lo}, {hi}) g"
                ),
            )?;
            for id in lo..=hi {
                ledger.insert(id, format!("v0-{id}"));
            }
        }
        // Updates scattered over every page, after the pages were evicted.
        for round in 1..=3i64 {
            psql(
                port,
                &format!(
                    "UPDATE ledger SET val = 'v{round}-' || id WHERE id % 7 = {}",
                    round % 7
                ),
            )?;
            for (id, v) in ledger.iter_mut() {
                if id % 7 == round % 7 {
                    *v = format!("v{round}-{id}");
                }
            }
        }
        psql(port, "DELETE FROM ledger WHERE id % 11 = 0")?;
        ledger.retain(|id, _| id % 11 != 0);
        check_ledger(port, &ledger, "on the writer")?;
        let idx = psql(
            port,
            "SET enable_seqscan = off; SELECT count(*) FROM ledger WHERE id > 0",
        )?;
        ensure!(
            idx == ledger.len().to_string(),
            "an index scan counts {idx} rows, the ledger {}",
            ledger.len()
        );
        s.run(&["compute", "stop", "main"])?;
        ensure_nothing_mounted(s, "after compute stop")?;
        let port = start_compute(s, &["main"], true)?;
        check_ledger(port, &ledger, "on the next compute of the branch")?;
        Ok(())
    })
}

/// The statements that create, extend, truncate and replace relation files, as a script
/// run on a lazy compute and on a plain Postgres.
const DDL_SCRIPT: &str = "
CREATE TABLE grow(id int, v text);
INSERT INTO grow SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
DELETE FROM grow WHERE id > 12000;
VACUUM grow;
CREATE INDEX grow_v ON grow(v);
CREATE TABLE shuffled(id int, v text);
INSERT INTO shuffled SELECT (g * 7919) % 10007, repeat(md5(g::text), 3) FROM generate_series(1, 10007) g;
CREATE INDEX shuffled_id ON shuffled(id);
CLUSTER shuffled USING shuffled_id;
CREATE TABLE rewritten(id int PRIMARY KEY, v text);
INSERT INTO rewritten SELECT g, repeat('r', g % 500) FROM generate_series(1, 8000) g;
DELETE FROM rewritten WHERE id % 3 = 0;
VACUUM FULL rewritten;
CREATE TABLE dropped(id int); INSERT INTO dropped SELECT generate_series(1, 10000);
DROP TABLE dropped;
CREATE TABLE after_drop(id int); INSERT INTO after_drop SELECT generate_series(1, 777);
";

/// The script's statements, each run on its own (VACUUM and CLUSTER refuse a transaction
/// block, which one `psql -c` of several statements is).
fn ddl_statements() -> impl Iterator<Item = &'static str> {
    DDL_SCRIPT
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The contents of the script's tables, each read in a fixed order and through its index.
const DDL_QUERIES: &[&str] = &[
    "SELECT count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM grow",
    "SET enable_seqscan = off; SELECT count(*) FROM grow WHERE v > '8'",
    "SELECT count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM shuffled",
    "SET enable_seqscan = off; SELECT string_agg(id::text, ',') FROM (SELECT id FROM shuffled WHERE id BETWEEN 100 AND 140 ORDER BY id) s",
    "SELECT count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM rewritten",
    "SET enable_seqscan = off; SELECT sum(length(v)) FROM rewritten WHERE id < 4000",
    "SELECT count(*) FROM after_drop",
    "SELECT count(*) FROM pg_class WHERE relname = 'dropped'",
    "SELECT pg_relation_size('grow') < 20000 * 80",
];

fn ddl_answers(run: impl Fn(&str) -> Result<String>) -> Result<Vec<String>> {
    DDL_QUERIES
        .iter()
        .map(|q| run(q).map(|a| a.trim().to_string()))
        .collect()
}

/// Relation extension, truncation by VACUUM, DROP TABLE, CREATE INDEX, CLUSTER and VACUUM
/// FULL (new relation files) on a lazy compute give what a plain Postgres gives, on the
/// compute itself and on the next compute of the branch (from the pageserver).
#[test]
fn relation_file_changes_on_a_lazy_compute_match_postgres() -> Result<()> {
    let plain = PgCluster::init(&InitOptions::default())?;
    plain.start()?;
    for stmt in ddl_statements() {
        plain.psql(stmt)?;
    }
    let expected = ddl_answers(|q| plain.psql(q))?;
    on_new_cluster("strata-lazy-ddl-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create", "ddl"])?;
        let port = start_compute(s, &["main"], true)?;
        for stmt in ddl_statements() {
            psql(port, stmt)?;
        }
        let got = ddl_answers(|q| psql(port, q))?;
        ensure!(
            got == expected,
            "the lazy compute answers {got:?}, Postgres {expected:?}"
        );
        s.run(&["compute", "stop", "main"])?;
        let port = start_compute(s, &["main"], true)?;
        let again = ddl_answers(|q| psql(port, q))?;
        ensure!(
            again == expected,
            "the next lazy compute answers {again:?}, Postgres {expected:?}"
        );
        Ok(())
    })
}

/// The pageserver killed (and restarted by the supervisor) while a cold lazy compute scans:
/// the query completes with the right answer or fails with an I/O error; never a wrong
/// answer, never a hang.
#[test]
fn a_pageserver_restart_during_a_lazy_scan_never_gives_a_wrong_answer() -> Result<()> {
    on_new_cluster("strata-lazy-pskill-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create", "scan"])?;
        let port = start_compute(s, &["main"], true)?;
        psql(
            port,
            "CREATE TABLE big(id int, pad text);
             INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 120000) g;",
        )?;
        let query = "SELECT count(*), sum(hashtext(pad)::bigint) FROM big";
        let expected = psql(port, query)?;
        let lsn = lsn_now(port)?;
        for round in 0..2 {
            let name = format!("cold{round}");
            let cold = start_compute(
                s,
                &["main", "--read-only", "--at", &lsn, "--name", &name],
                true,
            )?;
            let ps_pid = read_pid(&s.dir.join("run/pageserver.pid"))?;
            let scan =
                std::thread::spawn(move || psql_within(cold, query, Duration::from_secs(120)));
            // The scan is under way (round 0 kills at once, round 1 a little later).
            std::thread::sleep(Duration::from_millis(50 + 300 * round));
            kill9(ps_pid)?;
            let outcome = scan
                .join()
                .map_err(|_| anyhow::anyhow!("the scan thread panicked"))??;
            if outcome.success {
                ensure!(
                    outcome.stdout == expected,
                    "round {round}: a WRONG answer during the pageserver restart: {} instead of \
                     {expected}",
                    outcome.stdout
                );
                eprintln!("round {round}: the scan completed correctly");
            } else {
                ensure!(
                    outcome.stderr.contains("could not read block")
                        || outcome.stderr.contains("could not read")
                        || outcome.stderr.contains("I/O error"),
                    "round {round}: the scan failed, but not with an I/O error: {}",
                    outcome.stderr
                );
                eprintln!(
                    "round {round}: the scan failed with an I/O error: {}",
                    outcome.stderr
                );
            }
            // Once the pageserver is back, the same compute answers right.
            let after = wait_for(
                "the scan after the restart",
                Duration::from_secs(90),
                || {
                    let o = psql_within(cold, query, Duration::from_secs(60))?;
                    Ok(o.success.then_some(o.stdout))
                },
            )?;
            ensure!(
                after == expected,
                "round {round}: after the restart: {after}"
            );
            s.run(&["compute", "stop", &name])?;
        }
        Ok(())
    })
}

/// `compute stop` with a file open in the mount leaves nothing mounted; so does `strata
/// stop`.
#[test]
fn stops_leave_nothing_mounted_even_with_a_file_open() -> Result<()> {
    on_new_cluster("strata-lazy-mounts-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create", "mounts"])?;
        let port = start_compute(s, &["main"], true)?;
        psql(port, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)")?;
        let ro = start_compute(s, &["main", "--read-only", "--name", "reader"], true)?;
        ensure!(
            psql(ro, "SELECT count(*) FROM t")? == "1",
            "the reader sees t"
        );
        let status = s.run(&["status"])?;
        ensure!(
            status.contains("read-only (lazy)"),
            "status shows no lazy compute:\n{status}"
        );
        // A file held open in the mount (as a backup tool or a shell would) does not block
        // the stop.
        let held = std::fs::File::open(s.dir.join("computes/reader/data/PG_VERSION"))?;
        s.run(&["compute", "stop", "reader"])?;
        drop(held);
        ensure!(
            !s.dir.join("computes/reader").exists(),
            "the stopped compute's directory is still there"
        );
        let left: Vec<String> = mounts_under(&s.dir)?;
        ensure!(left.len() == 1, "one compute left, but mounted: {left:?}");

        s.run(&["stop"])?;
        ensure_nothing_mounted(s, "after strata stop")?;
        Ok(())
    })
}

/// The page filesystem killed under a running compute: the supervisor recreates the compute
/// (a writer at the branch's latest committed LSN, a reader at its own), and every row
/// committed before is there after.
#[test]
fn a_killed_page_filesystem_is_recreated_with_every_commit() -> Result<()> {
    on_new_cluster("strata-lazy-fskill-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create", "fskill"])?;
        let port = start_compute(s, &["main"], true)?;
        psql(
            port,
            "CREATE TABLE kept(id int PRIMARY KEY, v text);
             INSERT INTO kept SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
        )?;
        let lsn = lsn_now(port)?;
        let ro = start_compute(
            s,
            &["main", "--read-only", "--at", &lsn, "--name", "past"],
            true,
        )?;
        psql(
            port,
            "INSERT INTO kept SELECT g, 'late' FROM generate_series(5001, 5100) g",
        )?;
        let expected = psql(
            port,
            "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM kept",
        )?;
        let past = psql(ro, "SELECT count(*) FROM kept")?;
        ensure!(past == "5000", "the reader at {lsn} sees {past} rows");
        for (name, port, want) in [
            ("main", port, expected.clone()),
            ("past", ro, String::new()),
        ] {
            let pid_file = s.dir.join(format!("run/compute-{name}-pagefs.pid"));
            let before = read_pid(&pid_file)?;
            kill9(before)?;
            let t = Instant::now();
            wait_for(
                &format!("compute {name} recreated around a new page filesystem"),
                Duration::from_secs(90),
                || {
                    let now = read_pid(&pid_file).ok();
                    if now.is_none_or(|p| p == before) {
                        return Ok(None);
                    }
                    Ok(psql(port, "SELECT count(*) FROM kept").ok())
                },
            )?;
            eprintln!(
                "compute {name}: answering again {:.1} s after the kill",
                t.elapsed().as_secs_f64()
            );
            if name == "main" {
                let got = psql(
                    port,
                    "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM kept",
                )?;
                ensure!(
                    got == expected,
                    "after the recreation the writer has {got}, before {want}"
                );
                wait_for(
                    "a commit on the recreated writer",
                    Duration::from_secs(60),
                    || Ok(psql(port, "INSERT INTO kept VALUES (6000, 'after')").ok()),
                )?;
            } else {
                let got = psql(port, "SELECT count(*) FROM kept")?;
                ensure!(
                    got == "5000",
                    "after the recreation the reader sees {got} rows"
                );
            }
        }
        let status = s.json(&["status"])?;
        let restarts = status["computes"]
            .as_array()
            .context("no computes in status")?
            .iter()
            .filter(|c| c["lazy"] == true)
            .count();
        ensure!(
            restarts == 2,
            "status lists {restarts} lazy computes: {status}"
        );
        Ok(())
    })
}
