//! The page filesystem under a real Postgres 15 on a real FUSE mount. The page source is a
//! stopped Postgres's own data directory; the mounted directory holds only the non-relation
//! files (a slim copy). Postgres is the oracle: the lazy compute must give the same answers
//! as Postgres on a plain copy of the same data directory, statement by statement.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use compute::pagefs::{self, names, DataDirSource, MountedFs, Options};
use strata_tests::{InitOptions, PgCluster, StopMode};

/// Copies every file of `data` but relation files into `dest` (a slim basebackup).
fn slim_copy(data: &Path, dest: &Path, rel: &Path) -> Result<()> {
    let from = data.join(rel);
    for entry in std::fs::read_dir(&from)? {
        let entry = entry?;
        let rel_path = rel.join(entry.file_name());
        let kind = entry.file_type()?;
        let to = dest.join(&rel_path);
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        } else if kind.is_dir() {
            std::fs::create_dir(&to)?;
            slim_copy(data, dest, &rel_path)?;
        } else if names::rel_file_of_path(&rel_path).is_none()
            && entry.file_name() != "postmaster.pid"
        {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

fn settings() -> Vec<(String, String)> {
    vec![
        ("shared_buffers".into(), "128kB".into()),
        ("autovacuum".into(), "off".into()),
        ("fsync".into(), "off".into()),
    ]
}

/// Postgres on a page filesystem. Fields drop in order: Postgres stops before the unmount.
struct Lazy {
    pg: PgCluster,
    mounted: MountedFs,
    source: Arc<DataDirSource>,
}

/// A Postgres whose data directory is a page filesystem over `orig`'s relation files (`orig`
/// stopped), with a slim copy of its other files as the local directory.
fn lazy_cluster(orig: &PgCluster, read_deadline: Duration) -> Result<Lazy> {
    let source = Arc::new(DataDirSource::new(orig.data_dir())?);
    let local = orig.make_postgres_dir("slim")?;
    slim_copy(orig.data_dir(), &local, Path::new(""))?;
    let mut mounted = None;
    let cluster = PgCluster::from_data_dir(
        |data| {
            std::fs::create_dir(data)?;
            let mut opts = Options::new(&local, data);
            opts.read_deadline = read_deadline;
            mounted = Some(pagefs::mount(&opts, source.clone())?);
            Ok(())
        },
        &settings(),
    )?;
    Ok(Lazy {
        pg: cluster,
        mounted: mounted.context("the fill closure mounted")?,
        source,
    })
}

/// A plain full copy of `orig`'s data directory (`orig` stopped).
fn full_copy(orig: &PgCluster) -> Result<PgCluster> {
    PgCluster::from_data_dir(
        |data| {
            let ok = Command::new("cp")
                .arg("-a")
                .arg(orig.data_dir())
                .arg(data)
                .status()?
                .success();
            anyhow::ensure!(ok, "cp -a failed");
            Ok(())
        },
        &settings(),
    )
}

const WORKLOAD: &str = "
CREATE TABLE items (id int PRIMARY KEY, owner text, body text);
INSERT INTO items SELECT g, 'owner' || (g % 97), repeat(md5(g::text), 1 + g % 5)
  FROM generate_series(1, 20000) g;
CREATE INDEX items_owner ON items (owner);
CREATE TABLE docs (id int PRIMARY KEY, doc text);
INSERT INTO docs SELECT g, repeat(md5(g::text), 400) FROM generate_series(1, 60) g;
CREATE UNLOGGED TABLE scratch (k int, v text);
INSERT INTO scratch SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
CREATE TABLE doomed AS SELECT g AS id FROM generate_series(1, 5000) g;
CREATE DATABASE other;
CHECKPOINT;
";

/// The same statements on the lazy compute and on the plain copy: the read-write half.
const CHANGES: &str = "
INSERT INTO items SELECT g, 'late' || (g % 13), md5(g::text) FROM generate_series(20001, 40000) g;
UPDATE items SET body = body || 'x' WHERE id % 7 = 0;
DELETE FROM items WHERE id > 30000;
VACUUM items;
DROP TABLE doomed;
CREATE INDEX items_body ON items (substr(body, 1, 8));
CLUSTER items USING items_owner;
VACUUM FULL docs;
UPDATE docs SET doc = doc || 'tail' WHERE id < 10;
INSERT INTO scratch SELECT g, 'more' FROM generate_series(3001, 4000) g;
CREATE DATABASE fresh;
DROP DATABASE other;
CHECKPOINT;
";

const CHECK: &str = "
SELECT count(*), sum(id), md5(string_agg(owner || body, ',' ORDER BY id)) FROM items;
SELECT count(*), md5(string_agg(doc, ',' ORDER BY id)) FROM docs;
SELECT count(*), md5(string_agg(v, ',' ORDER BY k)) FROM scratch;
SELECT count(*) FROM items WHERE owner = 'owner5';
SELECT count(*) FROM pg_class WHERE relname = 'doomed';
SELECT datname FROM pg_database ORDER BY 1;
";

fn dumps(c: &PgCluster) -> Result<String> {
    Ok(c.pg_dump("postgres", &[])? + &c.psql(CHECK)?)
}

#[test]
fn lazy_postgres_reads_and_writes_like_a_full_copy() -> Result<()> {
    let started = Instant::now();
    let orig = PgCluster::init(&InitOptions::default().set("autovacuum", "off"))?;
    orig.start()?;
    orig.psql(WORKLOAD)?;
    orig.stop(StopMode::Fast)?;

    let copy = full_copy(&orig)?;
    let l = lazy_cluster(&orig, Duration::from_secs(10))?;
    let (lazy, source) = (&l.pg, &l.source);
    copy.start()?;
    lazy.start()?;
    assert_eq!(
        dumps(lazy)?,
        dumps(&copy)?,
        "the lazy compute reads its LSN"
    );
    assert!(
        source.pages_served() > 0,
        "relation pages came from the source"
    );
    lazy.psql_db("fresh", "SELECT 1")
        .expect_err("no database fresh yet");

    copy.psql(CHANGES)?;
    lazy.psql(CHANGES)?;
    for c in [&copy, lazy] {
        c.psql_db(
            "fresh",
            "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
        )?;
    }
    assert_eq!(
        dumps(lazy)?,
        dumps(&copy)?,
        "the lazy compute reads its writes"
    );
    let fresh = "SELECT count(*), sum(g) FROM t";
    assert_eq!(lazy.psql_db("fresh", fresh)?, copy.psql_db("fresh", fresh)?);

    // Postgres restarted on the same mount: everything it wrote is read back.
    lazy.stop(StopMode::Fast)?;
    lazy.start()?;
    assert_eq!(
        dumps(lazy)?,
        dumps(&copy)?,
        "after a restart on the same mount"
    );
    assert_eq!(lazy.psql_db("fresh", fresh)?, "1000|500500\n");

    lazy.stop(StopMode::Fast)?;
    l.mounted.unmount(Duration::from_secs(5))?;
    eprintln!("took {:?}", started.elapsed());
    Ok(())
}

#[test]
fn unreachable_source_fails_the_query_with_an_io_error_within_the_deadline() -> Result<()> {
    let orig = PgCluster::init(&InitOptions::default().set("autovacuum", "off"))?;
    orig.start()?;
    orig.psql(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g",
    )?;
    orig.stop(StopMode::Fast)?;

    let deadline = Duration::from_secs(3);
    let l = lazy_cluster(&orig, deadline)?;
    let (lazy, source) = (&l.pg, &l.source);
    lazy.start()?;
    source.set_unavailable(true);
    let t = Instant::now();
    let err = lazy
        .psql("SELECT count(*) FROM big")
        .expect_err("a query reading pages of an unreachable source must fail");
    let waited = t.elapsed();
    let msg = format!("{err:#}");
    assert!(msg.contains("could not read block"), "{msg}");
    assert!(
        waited >= deadline && waited < deadline + Duration::from_secs(15),
        "failed after {waited:?}, the deadline is {deadline:?}"
    );

    // Back: the same query gives the right answer (nothing wrong was cached).
    source.set_unavailable(false);
    assert_eq!(
        lazy.psql("SELECT count(*), sum(id) FROM big")?,
        "50000|1250025000\n"
    );
    lazy.stop(StopMode::Fast)?;
    l.mounted.unmount(Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn daemon_exits_with_a_message_on_bad_arguments_or_no_pageserver() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (local, mount) = (dir.path().join("local"), dir.path().join("mnt"));
    std::fs::create_dir(&local)?;
    std::fs::create_dir(&mount)?;
    std::fs::write(local.join("PG_VERSION"), "15\n")?;
    let run = |tenant: &str| {
        Command::new(env!("CARGO_BIN_EXE_compute"))
            .args(["pagefs", "--local"])
            .arg(&local)
            .arg("--mount")
            .arg(&mount)
            .args(["--pageserver", "127.0.0.1:1", "--tenant", tenant])
            .args(["--timeline", &"b".repeat(32), "--lsn", "0/16B3748"])
            .args(["--read-deadline-secs", "1", "--lease-ttl-secs", "0"])
            .output()
    };
    let out = run("nothex")?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tenant must be 32 hex"));

    let t = Instant::now();
    let out = run(&"a".repeat(32))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("listing the relation files"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(std::fs::read_dir(&mount)?.count(), 0, "nothing mounted");
    Ok(())
}
