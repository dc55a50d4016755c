//! Lazy computes (issue 18): Postgres on a page filesystem that fetches relation pages from
//! the pageserver on first read, started by `strata` by default. Real clusters, real FUSE
//! mounts, real Postgres 15; Postgres itself (a full copy, a plain Postgres running the same
//! SQL) is the oracle.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{
    create_tablespace_ts, first_differences, mounts_under, on_new_cluster, pg_dump_db, pgbench,
    psql, psql_db, read_pid, wait_for, StrataCli,
};
use strata_tests::pg::{pg_bin_dir, InitOptions, PgCluster};
use walproto::Lsn;

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
                ensure_same_dumps(&format!("{label} ({lsn})"), lazy_port, full_port, db)?;
            }
            s.run(&["compute", "stop", &lazy_name])?;
            s.run(&["compute", "stop", &full_name])?;
        }
        Ok(())
    })
}

/// pg_dump of database `db` on the lazy compute equals (byte for byte) the full copy's.
fn ensure_same_dumps(label: &str, lazy_port: u16, full_port: u16, db: &str) -> Result<()> {
    let lazy = pg_dump_db(lazy_port, db)?;
    let full = pg_dump_db(full_port, db)?;
    ensure!(
        full.len() > 1000,
        "{label}: the {db} dump is suspiciously small"
    );
    if lazy != full {
        bail!(
            "{label}, database {db}: the lazy compute's dump differs ({} vs {} bytes):\n{}",
            lazy.len(),
            full.len(),
            first_differences(&lazy, &full, "lazy", "full")
        );
    }
    eprintln!("{label}, {db}: identical dumps ({} bytes)", lazy.len());
    Ok(())
}

/// A lazy compute's `pg_tblspc/<oid>` for tablespace `ts` is a link (a hot standby refuses
/// anything else) into its own mount, and `pg_tablespace_location` says so.
fn ensure_served_tablespace(s: &StrataCli, name: &str, port: u16) -> Result<()> {
    let oid = psql(port, "SELECT oid FROM pg_tablespace WHERE spcname = 'ts'")?;
    let data = s.dir.join(format!("computes/{name}/data")).canonicalize()?;
    let link = data.join("pg_tblspc").join(&oid);
    let target =
        std::fs::read_link(&link).with_context(|| format!("{} is not a link", link.display()))?;
    ensure!(
        target == data.join("strata_tablespaces").join(&oid),
        "compute {name}'s tablespace link points to {}",
        target.display()
    );
    let location = psql(port, &format!("SELECT pg_tablespace_location({oid})"))?;
    ensure!(
        std::path::Path::new(&location) == target,
        "pg_tablespace_location says {location}, the link {}",
        target.display()
    );
    Ok(())
}

/// A branch with a tablespace (a table, an index and a whole database in it) gets lazy
/// computes: a read-only one (a hot standby, whose tablespace check wants links) dumps the
/// same as a full copy, and so does a read-write one after writes into the tablespace.
#[test]
fn a_branch_with_a_tablespace_is_lazy_and_dumps_like_a_full_copy() -> Result<()> {
    on_new_cluster("strata-lazy-tblspc-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create", "t"])?;
        let main = start_compute(s, &["main"], true)?;
        create_tablespace_ts(s, main)?;
        psql(
            main,
            "CREATE TABLE spaced (id int PRIMARY KEY USING INDEX TABLESPACE ts, v text)
               TABLESPACE ts;
             INSERT INTO spaced SELECT g, repeat(md5(g::text), 1 + g % 40)
               FROM generate_series(1, 20000) g;
             CREATE INDEX spaced_v ON spaced (left(v, 8)) TABLESPACE ts;
             CREATE TABLE plain AS SELECT g AS id FROM generate_series(1, 3000) g;",
        )?;
        psql(main, "CREATE DATABASE spacedb TABLESPACE ts")?;
        psql_db(
            main,
            "spacedb",
            "CREATE TABLE inside (k int PRIMARY KEY, v text);
             INSERT INTO inside SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
        )?;
        let at = lsn_now(main)?;
        s.run(&["branch", "create", "b", "--at", &at])?;
        let lazy = start_compute(s, &["b", "--read-only", "--name", "ro-lazy"], true)?;
        let full = start_compute(
            s,
            &["b", "--read-only", "--name", "ro-full", "--full-copy"],
            false,
        )?;
        ensure_served_tablespace(s, "ro-lazy", lazy)?;
        for db in ["postgres", "spacedb"] {
            ensure_same_dumps("read-only on the branch", lazy, full, db)?;
        }
        s.run(&["compute", "stop", "ro-lazy"])?;
        s.run(&["compute", "stop", "ro-full"])?;

        let writer = start_compute(s, &["b"], true)?;
        ensure_served_tablespace(s, "b", writer)?;
        psql(
            writer,
            "UPDATE spaced SET v = v || '!' WHERE id % 3 = 0;
             DELETE FROM spaced WHERE id > 15000;
             CREATE TABLE more TABLESPACE ts AS SELECT g FROM generate_series(1, 5000) g;
             CREATE INDEX more_g ON more (g) TABLESPACE ts;",
        )?;
        psql(writer, "VACUUM spaced")?;
        psql_db(
            writer,
            "spacedb",
            "UPDATE inside SET v = 'w' WHERE k % 10 = 0",
        )?;
        // Everything the writer did is committed: a full copy at its LSN has it all.
        let written = lsn_now(writer)?;
        let full = start_compute(
            s,
            &[
                "b",
                "--read-only",
                "--at",
                &written,
                "--name",
                "check",
                "--full-copy",
            ],
            false,
        )?;
        for db in ["postgres", "spacedb"] {
            ensure_same_dumps("the writer on the branch", writer, full, db)?;
        }
        Ok(())
    })
}

/// The leases of `branch` of tenant `t` as (LSN, owner), owner "" for a user's.
fn leases(s: &StrataCli, branch: &str) -> Result<Vec<(Lsn, String)>> {
    let list = s.json(&["lease", "list", "--branch", branch, "--tenant", "t"])?;
    list.as_array()
        .with_context(|| format!("lease list --json: {list}"))?
        .iter()
        .map(|l| {
            let lsn = l["lsn"]
                .as_str()
                .context("a lease without an LSN")?
                .parse()?;
            let owner = l["owner"]
                .as_str()
                .context("a lease without an owner field")?;
            Ok((lsn, owner.to_string()))
        })
        .collect()
}

/// A lazy compute's lease is its own: owned by `compute:<name>`, listed with its owner, left
/// alone by a user's `lease revoke` of the same LSN, revoked by the compute's stop, and not
/// what refuses `branch delete` (a user's lease does).
#[test]
fn a_lazy_computes_lease_is_its_own() -> Result<()> {
    on_new_cluster("strata-lazy-lease-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create", "t"])?;
        let c = s.json(&["compute", "start", "main"])?;
        let at: Lsn = c["lsn"]
            .as_str()
            .context("compute start: no LSN")?
            .parse()?;
        let compute_lease = (at, "compute:main".to_string());
        ensure!(
            leases(s, "main")? == [compute_lease.clone()],
            "the compute's lease: {:?}",
            leases(s, "main")?
        );
        // A user's lease on the same LSN is another lease; revoking it leaves the compute's.
        let at_text = at.to_string();
        s.run(&["lease", &at_text, "--branch", "main", "--tenant", "t"])?;
        let user_lease = (at, String::new());
        let both = leases(s, "main")?;
        ensure!(
            both.contains(&compute_lease) && both.contains(&user_lease) && both.len() == 2,
            "{both:?}"
        );
        s.run(&["lease", "revoke", &at_text, "--tenant", "t"])?;
        ensure!(leases(s, "main")? == std::slice::from_ref(&compute_lease));
        let err = s
            .run(&["lease", "revoke", &at_text, "--tenant", "t"])
            .err()
            .context("a second revoke of the user's lease succeeded")?;
        ensure!(format!("{err:#}").contains("no lease"), "{err:#}");
        // The other way round: the compute's lease revoked by owner, the user's kept.
        s.run(&["lease", &at_text, "--branch", "main", "--tenant", "t"])?;
        s.run(&[
            "lease",
            "revoke",
            &at_text,
            "--owner",
            "compute:main",
            "--tenant",
            "t",
        ])?;
        ensure!(leases(s, "main")? == std::slice::from_ref(&user_lease));
        s.run(&["lease", "revoke", &at_text, "--tenant", "t"])?;

        // A compute's stop revokes its lease (no waiting for the TTL).
        let ro = s.json(&["compute", "start", "main", "--read-only", "--name", "ro"])?;
        let ro_at: Lsn = ro["lsn"].as_str().context("no LSN")?.parse()?;
        let listed = leases(s, "main")?;
        ensure!(listed.contains(&(ro_at, "compute:ro".into())), "{listed:?}");
        s.run(&["compute", "stop", "ro"])?;
        let listed = leases(s, "main")?;
        ensure!(
            !listed.iter().any(|(_, o)| o == "compute:ro"),
            "compute ro stopped, its lease left: {listed:?}"
        );

        // branch delete: the user's lease refuses it, the running compute's does not.
        let port = c["port"].as_u64().context("no port")? as u16;
        let point = lsn_now(port)?;
        s.run(&["branch", "create", "b", "--at", &point, "--tenant", "t"])?;
        let b = s.json(&["compute", "start", "b", "--tenant", "t"])?;
        let b_at = b["lsn"].as_str().context("no LSN")?.to_string();
        s.run(&["lease", &b_at, "--branch", "b", "--tenant", "t"])?;
        let err = s
            .run(&["branch", "delete", "b", "--tenant", "t"])
            .err()
            .context("branch delete with a user's lease succeeded")?;
        let err = format!("{err:#}");
        ensure!(
            err.contains("unexpired leases") && !err.contains("compute:"),
            "the refusal should name only the user's lease: {err}"
        );
        s.run(&["lease", "revoke", &b_at, "--branch", "b", "--tenant", "t"])?;
        let gone = s.json(&["branch", "delete", "b", "--tenant", "t"])?;
        ensure!(
            gone["leases_dropped"]
                .as_array()
                .is_some_and(|l| l.is_empty()),
            "branch delete: {gone}"
        );
        Ok(())
    })
}

/// Points the cluster's `pg_bin` at `bin`.
fn set_pg_bin(s: &StrataCli, bin: &std::path::Path) -> Result<()> {
    let path = s.dir.join("strata.toml");
    let toml = std::fs::read_to_string(&path)?;
    let line = toml
        .lines()
        .find(|l| l.starts_with("pg_bin = "))
        .context("strata.toml has no pg_bin")?;
    let new = toml.replace(line, &format!("pg_bin = {:?}", bin.display().to_string()));
    std::fs::write(&path, new)?;
    Ok(())
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}

/// A lazy compute whose Postgres refuses to start after the page filesystem is mounted (a
/// setting it rejects, passed by a pg_ctl wrapper) fails `compute start` with Postgres's own
/// reason, and leaves nothing: no mount, no page filesystem daemon, no compute, no lease.
#[test]
fn a_start_that_fails_after_mounting_leaves_nothing_behind() -> Result<()> {
    on_new_cluster("strata-lazy-badstart-", |s| {
        s.run(&["start"])?;
        s.run(&["tenant", "create", "t"])?;
        let real = pg_bin_dir();
        let refusing = s.dir.join("pg-bin-refusing");
        std::fs::create_dir(&refusing)?;
        for e in std::fs::read_dir(&real)? {
            let e = e?;
            if e.file_name() != "pg_ctl" {
                std::os::unix::fs::symlink(e.path(), refusing.join(e.file_name()))?;
            }
        }
        let pg_ctl = refusing.join("pg_ctl");
        std::fs::write(
            &pg_ctl,
            format!(
                "#!/bin/sh\nexec '{}' \"$@\" -o '-c max_connections=-5'\n",
                real.join("pg_ctl").display()
            ),
        )?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pg_ctl, std::fs::Permissions::from_mode(0o755))?;
        }
        set_pg_bin(s, &refusing)?;
        let err = s
            .run(&["compute", "start", "main", "--tenant", "t"])
            .err()
            .context("compute start with a refusing Postgres succeeded")?;
        let err = format!("{err:#}");
        ensure!(
            err.contains("max_connections"),
            "the error should carry Postgres's reason: {err}"
        );
        ensure_nothing_mounted(s, "after the failed start")?;
        let data = s.dir.join("computes/main/data");
        let left = processes_naming(&data.display().to_string());
        ensure!(
            left.is_empty(),
            "processes still on {}: {left:?}",
            data.display()
        );
        ensure!(
            !s.dir.join("computes/main").exists(),
            "the failed compute's directory is left"
        );
        let listed = s.json(&["compute", "list"])?;
        ensure!(
            listed.as_array().is_some_and(|l| l.is_empty()),
            "compute list after the failed start: {listed}"
        );
        let held = leases(s, "main")?;
        ensure!(held.is_empty(), "leases after the failed start: {held:?}");
        // With the real programs back, the same start works.
        set_pg_bin(s, &real)?;
        let port = start_compute(s, &["main", "--tenant", "t"], true)?;
        ensure!(psql(port, "SELECT 1")? == "1");
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
