//! Helpers shared by the service and branch tests.
#![allow(dead_code, unused_imports)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use layer_format::Key;
use pageserver::ingest::reldir::RelDirectory;
use pageserver::tenant::TimelineHandle;
use pageserver::timeline::Timeline;
use walproto::Lsn;

const SEG: u64 = 16 << 20;

/// Feeds the WAL in `wal_dir` (16 MiB segments, Postgres timeline 1) from `from` up to `to`
/// to the timeline, as a walreceiver would, in `chunk`-byte pieces. Returns records ingested.
pub fn feed_wal(
    h: &TimelineHandle,
    wal_dir: &Path,
    from: Lsn,
    to: Lsn,
    chunk: usize,
) -> Result<usize> {
    let mut at = from;
    let mut records = 0;
    let mut buf = vec![0u8; chunk];
    while at < to {
        let seg = at.0 / SEG;
        let name = Lsn(seg * SEG).segment_file_name(1);
        let path = wal_dir.join(&name);
        let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        f.seek(SeekFrom::Start(at.0 % SEG))?;
        let n = (chunk as u64).min(to.0 - at.0).min(SEG - at.0 % SEG) as usize;
        f.read_exact(&mut buf[..n])?;
        records += h.receive_wal(at, &buf[..n])?;
        at = Lsn(at.0 + n as u64);
    }
    Ok(records)
}

/// Every relation page of the timeline at `lsn` (per its relation directory there).
pub fn all_pages(tl: &Timeline, lsn: Lsn) -> Result<Vec<(Key, Option<Vec<u8>>)>> {
    let dir = RelDirectory::load(tl, lsn)?;
    let mut out = Vec::new();
    for (rel, fork, n) in dir.all_forks() {
        for b in 0..n {
            let key = Key::rel_block(rel, fork, b);
            out.push((key, tl.get_page(key, lsn)?.map(|p| p.to_vec())));
        }
    }
    Ok(out)
}

/// The keys whose pages differ between two page lists (which must list the same keys).
pub fn differing(a: &[(Key, Option<Vec<u8>>)], b: &[(Key, Option<Vec<u8>>)]) -> Vec<Key> {
    let keys_a: Vec<Key> = a.iter().map(|x| x.0).collect();
    let keys_b: Vec<Key> = b.iter().map(|x| x.0).collect();
    assert_eq!(keys_a, keys_b, "the two timelines have different relations");
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| x.0)
        .collect()
}

/// Runs one query in `pg` and parses its single value.
pub fn query_i64(pg: &strata_tests::PgCluster, sql: &str) -> Result<i64> {
    let out = pg.psql(sql)?;
    out.trim()
        .parse()
        .with_context(|| format!("{sql}: not a number: {out:?}"))
}

pub fn query_lsn(pg: &strata_tests::PgCluster, sql: &str) -> Result<Lsn> {
    let out = pg.psql(sql)?;
    out.trim()
        .parse()
        .with_context(|| format!("{sql}: not an LSN: {out:?}"))
}

/// Replaces `pg`'s (stopped) data directory with the basebackup `tar` and starts it, with
/// the harness's settings appended to the basebackup's `postgresql.conf`.
pub fn start_from_tar(pg: &strata_tests::PgCluster, tar: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let run_as = strata_tests::os_user::postgres_user()?;
    let conf = std::fs::read_to_string(pg.data_dir().join("postgresql.conf"))?;
    std::fs::remove_dir_all(pg.data_dir())?;
    std::fs::create_dir(pg.data_dir())?;
    std::fs::set_permissions(pg.data_dir(), std::fs::Permissions::from_mode(0o700))?;
    strata_tests::os_user::give_to(run_as, pg.data_dir())?;
    let mut child = strata_tests::os_user::command_as(run_as, std::path::Path::new("tar"))
        .arg("-xf")
        .arg("-")
        .current_dir(pg.data_dir())
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("tar stdin")?.write_all(tar)?;
    ensure!(child.wait()?.success(), "tar -x failed");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(pg.data_dir().join("postgresql.conf"))?;
    writeln!(f, "\n# the test harness's settings\n{conf}")?;
    pg.start()
}

/// The pageserver process, from the shared harness.
pub use strata_tests::procs::Pageserver;
