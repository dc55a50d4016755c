//! GetPage does not wait for an ingest batch (issue 22).
//!
//! A real Postgres 15 writes a table, then a logical message with the test failpoint's pause
//! prefix, then updates the table. The timeline (imported from the base, through the tenant
//! manager) takes that WAL as one chunk, as the walreceiver hands it over: one ingest batch,
//! which the failpoint (`STRATA_FAILPOINT_PAUSE_MESSAGE` / `_WHILE`) holds right after the
//! message. While the batch is held: the status answers, the ingest position is the end of the
//! message while the rest of the batch is decoded and waiting, and GetPage of the table's pages
//! at that position completes and sees the inserts. Once released, the batch completes, and
//! the same reads give the same pages.
//!
//! Every read runs with a deadline, so a read that waits for the batch fails the test instead
//! of hanging it.

mod service_support;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use layer_format::Key;
use pageserver::tenant::{TenantConf, TenantManager, TimelineHandle, TimelineStatus};
use service_support::{feed_wal, query_i64, query_lsn};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::{Lsn, RelFileNode};

const PAUSE_PREFIX: &str = "strata-test-pause";
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `f` on a thread of its own; fails if it does not answer within [`DEADLINE`].
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE)
        .with_context(|| format!("{what}: no answer in {DEADLINE:?} (waiting for the batch?)"))
}

fn status(h: &Arc<TimelineHandle>) -> Result<TimelineStatus> {
    let h = h.clone();
    within("status", move || h.status())
}

/// The table's pages at `lsn`: (newest version's LSN, bytes) of each.
fn pages(
    h: &Arc<TimelineHandle>,
    rel: RelFileNode,
    n: u32,
    lsn: Lsn,
) -> Result<Vec<(Lsn, Vec<u8>)>> {
    let h = h.clone();
    within("GetPage", move || {
        (0..n)
            .map(|blk| {
                let v = h
                    .read(|t| t.get_page_version(Key::rel_block(rel, 0, blk), lsn))?
                    .with_context(|| format!("block {blk} does not exist at {lsn}"))?;
                Ok((v.lsn, v.page.to_vec()))
            })
            .collect::<Result<Vec<_>>>()
    })?
}

#[test]
fn getpage_completes_while_an_ingest_batch_is_held() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let hold = scratch.path().join("hold-the-batch");
    std::fs::write(&hold, b"")?;
    // Read once, at the first logical message ingested: before anything ingests.
    std::env::set_var("STRATA_FAILPOINT_PAUSE_MESSAGE", PAUSE_PREFIX);
    std::env::set_var("STRATA_FAILPOINT_PAUSE_WHILE", &hold);

    let opts = InitOptions::default()
        .keep_all_wal()
        .set("fsync", "off")
        .set("autovacuum", "off");
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("base")?;
    pg.start()?;
    pg.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'before the pause' FROM generate_series(1, 2000) g;",
    )?;
    // The table's pages before the pause (the updates add more).
    let blocks = query_i64(&pg, "SELECT pg_relation_size('t') / 8192")? as u32;
    let before_msg = pg.current_wal_insert_lsn()?;
    pg.psql(&format!(
        "SELECT pg_logical_emit_message(false, '{PAUSE_PREFIX}', 'hold here')"
    ))?;
    let after_msg = pg.current_wal_insert_lsn()?;
    pg.psql("UPDATE t SET v = 'after the pause' WHERE id % 3 = 0;")?;
    let end = query_lsn(&pg, "SELECT pg_current_wal_insert_lsn()")?;
    let rel = RelFileNode {
        spc: 1663,
        db: query_i64(
            &pg,
            "SELECT oid FROM pg_database WHERE datname = 'postgres'",
        )? as u32,
        rel: query_i64(&pg, "SELECT pg_relation_filenode('t')")? as u32,
    };
    pg.stop(StopMode::Fast)?;
    ensure!(blocks > 1, "the table has {blocks} pages");

    let data = tempfile::tempdir()?;
    let m = TenantManager::load(data.path())?;
    let tenant = m.create_tenant(None, TenantConf::default())?;
    let h = tenant.import_timeline(None, &base, None, vec![])?;
    let start = h.status().last_record_end;
    println!("imported at {start}; message in {before_msg}..{after_msg}; WAL ends at {end}");

    // The whole WAL in one chunk: one batch (the WAL is far smaller than a segment unless
    // it crosses one, and then the message's batch still holds the records after it).
    let feeder = {
        let (h, wal) = (h.clone(), pg.wal_dir());
        std::thread::spawn(move || feed_wal(&h, &wal, start, end, 64 << 20))
    };

    // The batch reaches the message and is held there.
    let t0 = Instant::now();
    let held = loop {
        let st = status(&h)?;
        if st.last_record_end > before_msg {
            break st;
        }
        ensure!(
            t0.elapsed() < DEADLINE,
            "ingest did not reach the message: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("held: {held:?}");
    ensure!(
        held.last_record_end <= after_msg,
        "ingest went past the message: {held:?}"
    );
    ensure!(
        held.received_lsn > held.last_record_end,
        "the rest of the batch is not waiting: {held:?}"
    );
    // Reads at the held position complete, and see the inserts.
    let at = held.last_record_end;
    let seen = pages(&h, rel, blocks, at)?;
    ensure!(
        seen.iter().all(|(l, _)| *l > start && *l <= at),
        "page versions outside {start}..{at}: {:?}",
        seen.iter().map(|(l, _)| l).collect::<Vec<_>>()
    );
    // Still held: the reads did not need the batch to finish.
    let still = status(&h)?;
    ensure!(
        still.last_record_end == at,
        "the batch moved on before it was released: {still:?}"
    );

    std::fs::remove_file(&hold)?;
    let records = feeder.join().expect("the feeding thread panicked")?;
    let done = status(&h)?;
    println!("released: {records} records, {done:?}");
    ensure!(
        done.last_record_end > after_msg && done.received_lsn == end,
        "after the release the batch did not complete: {done:?}"
    );
    ensure!(
        pages(&h, rel, blocks, at)? == seen,
        "the pages read while the batch was held differ from the same reads after it"
    );
    let updated = pages(&h, rel, blocks, done.last_record_end)?;
    ensure!(
        updated.iter().zip(&seen).all(|(u, s)| u.1 != s.1),
        "the updates after the pause did not change every page"
    );
    Ok(())
}
