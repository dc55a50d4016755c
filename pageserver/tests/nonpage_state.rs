//! The non-page state ingest derives from real Postgres 15 WAL, against Postgres's own files
//! after a clean (fast) shutdown: CLOG and MultiXact SLRU pages, the still-prepared
//! transaction's `pg_twophase` file, relmapper files, the checkpoint counters, restore points
//! and the LSN↔commit-time index.
//!
//! One workload, built once: `pg_resetwal` first puts nextXid on a CLOG page boundary and the
//! multixact counters at an offsets / members page boundary, then a transaction with ~33,000
//! subtransactions (some rolled back) crosses into the next CLOG page, two sessions share-lock
//! rows (multixacts across the boundaries), prepared transactions (one left prepared),
//! restore points, two commits a few hundred milliseconds apart, VACUUM FULL of mapped
//! catalogs (local and global relmap).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use layer_format::{Lsn, SlruKind};
use pageserver::import::import_datadir;
use pageserver::ingest::nonpage::counters::XID_STRIDE;
use pageserver::ingest::nonpage::index::COUNT_STRIDE;
use pageserver::ingest::nonpage::read::{
    checkpoint_state_at, commit_count_at, lsn_for_timestamp, prepared_xacts, relmap_at,
    restore_points, slru_page_at, slru_segments,
};
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::timeline::TimelineConf;
use strata_tests::workload::{share_lock_rounds, workload_settings};
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::rmgr::xact::XactRecord;
use walproto::rmgr::ParsedRecord;
use walproto::walfiles::WalDirReader;

const CLOG_XACTS_PER_PAGE: u64 = 32768;
const MULTIXACT_OFFSETS_PER_PAGE: u64 = 2048;
const MULTIXACT_MEMBERS_PER_PAGE: u64 = 1636;
/// `VAR_OID_PREFETCH`: an `XLOG/NEXTOID` record reserves this many OIDs ahead.
const VAR_OID_PREFETCH: u32 = 8192;

fn controldata_u64(cd: &BTreeMap<String, String>, k: &str) -> Result<u64> {
    let v = cd
        .get(k)
        .with_context(|| format!("pg_controldata lacks {k:?}"))?;
    let v = v.rsplit(':').next().unwrap_or(v);
    v.trim().parse().with_context(|| format!("{k}: {v:?}"))
}

/// What the workload leaves for the checks.
struct Run {
    pg: PgCluster,
    base: std::path::PathBuf,
    start: Lsn,
    restore_points: Vec<(String, Lsn)>,
    /// xid of commit A, a time strictly between commits A and B (Postgres µs since 2000).
    commit_a_xid: u32,
    between: i64,
    prepared_gid: String,
}

fn run_workload() -> Result<Run> {
    let mut opts = InitOptions::default();
    for (k, v) in workload_settings() {
        opts = opts.set(&k, &v);
    }
    let pg = PgCluster::init(&opts)?;
    // nextXid on a CLOG page boundary, the next multixact the last of an offsets page, the
    // next member offset the first of a members page (see strata_tests::workload).
    let cd = pg.controldata()?;
    let round_up = |v: u64, m: u64| v.div_ceil(m) * m;
    let xid = round_up(
        controldata_u64(&cd, "Latest checkpoint's NextXID")? + 1,
        CLOG_XACTS_PER_PAGE,
    )
    .max(2 * CLOG_XACTS_PER_PAGE);
    let multi = round_up(
        controldata_u64(&cd, "Latest checkpoint's NextMultiXactId")? + 2,
        MULTIXACT_OFFSETS_PER_PAGE,
    ) - 1;
    let offset = round_up(
        controldata_u64(&cd, "Latest checkpoint's NextMultiOffset")? + 1,
        MULTIXACT_MEMBERS_PER_PAGE,
    );
    let base = pg.copy_data_dir("nonpage-base")?;
    pg.pg_resetwal(&[
        "-x",
        &xid.to_string(),
        "-m",
        &format!("{multi},1"),
        "-O",
        &offset.to_string(),
    ])?;
    let start = pg.latest_checkpoint()?;
    pg.start()?;
    pg.psql(
        "CREATE EXTENSION dblink;
         CREATE TABLE t (id int, note text);
         CREATE TABLE mx (id int PRIMARY KEY, v int);
         INSERT INTO mx SELECT g, 0 FROM generate_series(1, 10) g;",
    )?;
    // ~33,000 subtransactions with xids: the tree crosses into the next CLOG page; every
    // seventh is rolled back (its own ABORT record).
    pg.psql(
        "DO $$
         BEGIN
             FOR i IN 1..33000 LOOP
                 BEGIN
                     INSERT INTO t VALUES (i, 'sub');
                     IF i % 7 = 0 THEN RAISE EXCEPTION 'roll back'; END IF;
                 EXCEPTION WHEN raise_exception THEN NULL;
                 END;
             END LOOP;
         END $$;",
    )?;
    // Top-level commits and aborts on the new page.
    let mut sql = String::new();
    for i in 0..50 {
        if i % 5 == 0 {
            sql.push_str("BEGIN; INSERT INTO t VALUES (0, 'aborted'); ROLLBACK;\n");
        } else {
            sql.push_str("INSERT INTO t VALUES (0, 'committed');\n");
        }
    }
    pg.psql(&sql)?;
    // Enough commits for the commit-time index to cross two strides of its stored count.
    pg.psql(
        "SET synchronous_commit = off;
         DO $$
         BEGIN
             FOR i IN 1..2100 LOOP
                 INSERT INTO t VALUES (i, 'one of many commits');
                 COMMIT;
             END LOOP;
         END $$;",
    )?;
    // Multixacts: two sessions share-lock the same rows (the second through dblink).
    share_lock_rounds(&pg, 4)?;
    // Prepared transactions: committed, rolled back, and one left prepared (with a subxact).
    let prepared_gid = "strata_left_prepared".to_string();
    pg.psql(&format!(
        "BEGIN; INSERT INTO t VALUES (1, 'p1'); PREPARE TRANSACTION 'p1';
         COMMIT PREPARED 'p1';
         BEGIN; INSERT INTO t VALUES (2, 'p2'); PREPARE TRANSACTION 'p2';
         ROLLBACK PREPARED 'p2';
         BEGIN; INSERT INTO t VALUES (3, 'p3'); SAVEPOINT s; INSERT INTO t VALUES (4, 'p3s');
         PREPARE TRANSACTION '{prepared_gid}';"
    ))?;
    // Restore points.
    let mut rps = Vec::new();
    for name in ["strata_rp_1", "strata rp 2"] {
        let out = pg.psql(&format!("SELECT pg_create_restore_point('{name}')"))?;
        rps.push((name.to_string(), out.trim().parse::<Lsn>()?));
        pg.psql("INSERT INTO t VALUES (5, 'between restore points')")?;
    }
    // Commit A, a time, commit B.
    let out = pg.psql(
        "BEGIN; INSERT INTO t VALUES (6, 'A'); SELECT txid_current() % 4294967296; COMMIT;",
    )?;
    let commit_a_xid: u32 = out
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .context("commit A's xid")?;
    let out = pg.psql(
        "SELECT pg_sleep(0.3);
         SELECT ((extract(epoch FROM clock_timestamp()) - 946684800) * 1000000)::bigint;
         SELECT pg_sleep(0.3);",
    )?;
    let between: i64 = out
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .context("the time between commits")?;
    pg.psql("INSERT INTO t VALUES (7, 'B')")?;
    // Relmapper: a local mapped catalog and a shared one.
    pg.psql("VACUUM FULL pg_class; VACUUM FULL pg_authid;")?;
    pg.stop(StopMode::Fast)?;
    Ok(Run {
        pg,
        base,
        start,
        restore_points: rps,
        commit_a_xid,
        between,
        prepared_gid,
    })
}

fn read_file(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// Compares every page of `slru` Strata has history for with Postgres's segment files;
/// returns the number of pages compared.
fn compare_slru(
    tl: &pageserver::timeline::Timeline,
    data: &Path,
    slru: SlruKind,
    lsn: Lsn,
) -> Result<usize> {
    let mut compared = 0;
    for (segno, npages) in slru_segments(tl, slru, lsn)? {
        let path = data.join(slru.dir_name()).join(format!("{segno:04X}"));
        let file = read_file(&path)?;
        for blk in 0..npages {
            let Some(page) = slru_page_at(tl, slru, segno, blk, lsn)? else {
                // No history in the WAL: the page predates the timeline (SLRU import is not
                // part of the base import yet).
                continue;
            };
            let at = blk as usize * 8192;
            let pg_page = file.get(at..at + 8192).with_context(|| {
                format!(
                    "{} has no page {blk} ({} bytes)",
                    path.display(),
                    file.len()
                )
            })?;
            if pg_page != &page[..] {
                let first = pg_page.iter().zip(page.iter()).position(|(a, b)| a != b);
                anyhow::bail!(
                    "{slru:?} segment {segno:04X} page {blk} differs, first at byte {first:?}: postgres {:02x?} strata {:02x?}",
                    first.map(|i| &pg_page[i..(i + 16).min(8192)]),
                    first.map(|i| &page[i..(i + 16).min(8192)]),
                );
            }
            compared += 1;
        }
    }
    Ok(compared)
}

#[test]
fn nonpage_state_against_postgres() -> Result<()> {
    let run = run_workload()?;
    let data = run.pg.data_dir().to_path_buf();
    let scratch = tempfile::tempdir()?;
    let conf = TimelineConf {
        freeze_bytes: 8 * 1024 * 1024,
        ..Default::default()
    };
    let (tl, _) = import_datadir(&run.base, &scratch.path().join("tl"), conf, Some(run.start))?;
    let mut ingest = WalIngest::new(tl, IngestConf::default())?;
    let mut reader = WalDirReader::open(&run.pg.wal_dir(), run.start, None, None)?;
    let mut commit_end: BTreeMap<u32, Lsn> = BTreeMap::new();
    let mut commit_ends: Vec<Lsn> = Vec::new();
    // Every commit the commit-time index holds (COMMIT PREPARED too).
    let mut indexed_ends: Vec<Lsn> = Vec::new();
    let mut last_end = run.start;
    let mut before_last = run.start;
    while let Some(rec) = reader.next_record()? {
        ingest.ingest_record(&rec)?;
        match walproto::rmgr::parse(&rec) {
            Ok(Some(ParsedRecord::Xact(XactRecord::Commit(_)))) => {
                commit_end.insert(rec.xid(), rec.end_lsn);
                commit_ends.push(rec.end_lsn);
                indexed_ends.push(rec.end_lsn);
            }
            Ok(Some(ParsedRecord::Xact(XactRecord::CommitPrepared(_)))) => {
                indexed_ends.push(rec.end_lsn)
            }
            _ => {}
        }
        before_last = last_end;
        last_end = rec.end_lsn;
    }
    ingest.timeline_mut().flush()?;
    let tl = ingest.timeline();
    let cd = run.pg.controldata()?;
    let ckpt = pageserver::import::read_control(&data)?.checkpoint;
    assert!(ckpt < last_end, "the shutdown checkpoint was ingested");

    // SLRU pages, byte for byte.
    let clog = compare_slru(tl, &data, SlruKind::Clog, last_end)?;
    let off = compare_slru(tl, &data, SlruKind::MultiXactOffsets, last_end)?;
    let mem = compare_slru(tl, &data, SlruKind::MultiXactMembers, last_end)?;
    println!("SLRU pages equal: clog {clog}, multixact offsets {off}, members {mem}");
    assert!(
        clog >= 2,
        "the workload crosses a CLOG page: {clog} pages compared"
    );
    assert!(off >= 2 && mem >= 1, "offsets {off}, members {mem}");

    // The prepared transaction's state file: the record's data plus a CRC-32C.
    let prepared = prepared_xacts(tl, last_end)?;
    assert_eq!(prepared.len(), 1, "one transaction is left prepared");
    let (xid, state) = &prepared[0];
    let file = read_file(&data.join(format!("pg_twophase/{xid:08X}")))?;
    ensure!(file.len() == state.len() + 4, "pg_twophase file length");
    assert_eq!(&file[..state.len()], &state[..], "two-phase state differs");
    let crc = crc32c::crc32c(state);
    assert_eq!(
        &file[state.len()..],
        &crc.to_le_bytes(),
        "CRC over the state"
    );
    let gid = run.prepared_gid.as_bytes();
    assert!(
        state.windows(gid.len()).any(|w| w == gid),
        "the state names its GID"
    );

    // Checkpoint counters at the end: the shutdown checkpoint's.
    let s = checkpoint_state_at(tl, last_end)?.context("no checkpoint state")?;
    let next_xid = controldata_u64(&cd, "Latest checkpoint's NextXID")?;
    assert_eq!(s.next_xid32() as u64, next_xid, "NextXID");
    assert_eq!(
        s.next_oid as u64,
        controldata_u64(&cd, "Latest checkpoint's NextOID")?,
        "NextOID"
    );
    assert_eq!(
        s.next_multi as u64,
        controldata_u64(&cd, "Latest checkpoint's NextMultiXactId")?,
        "NextMultiXactId"
    );
    assert_eq!(
        s.next_multi_offset as u64,
        controldata_u64(&cd, "Latest checkpoint's NextMultiOffset")?,
        "NextMultiOffset"
    );
    assert_eq!(
        s.oldest_xid as u64,
        controldata_u64(&cd, "Latest checkpoint's oldestXID")?,
        "oldestXID"
    );
    assert_eq!(
        s.oldest_multi as u64,
        controldata_u64(&cd, "Latest checkpoint's oldestMultiXid")?,
        "oldestMultiXid"
    );
    // Just before the shutdown checkpoint the counters come from the WAL alone: the multixact
    // counters are exact; nextXid is stored rounded up to a multiple of XID_STRIDE (never
    // below Postgres's, less than a stride above); nextOid is the last XLOG/NEXTOID's, which
    // reserves up to VAR_OID_PREFETCH OIDs ahead of what the server had handed out.
    assert_eq!(
        before_last, ckpt,
        "the shutdown checkpoint is the last record"
    );
    let b = checkpoint_state_at(tl, before_last)?.context("no state before the checkpoint")?;
    let wal_next_xid = b.next_xid32() as u64;
    assert!(
        wal_next_xid >= next_xid
            && wal_next_xid - next_xid < XID_STRIDE
            && wal_next_xid.is_multiple_of(XID_STRIDE),
        "NextXID from the WAL alone {wal_next_xid} vs Postgres {next_xid}"
    );
    assert_eq!(b.next_multi, s.next_multi);
    assert_eq!(b.next_multi_offset, s.next_multi_offset);
    assert!(
        b.next_oid >= s.next_oid && b.next_oid - s.next_oid <= VAR_OID_PREFETCH,
        "NextOID from the WAL {} vs Postgres {}",
        b.next_oid,
        s.next_oid
    );

    // Restore points, with the LSNs pg_create_restore_point returned.
    let rps = restore_points(tl, last_end)?;
    let got: Vec<(String, Lsn)> = rps.iter().map(|(n, l, _)| (n.clone(), *l)).collect();
    assert_eq!(got, run.restore_points);
    assert!(restore_points(tl, run.restore_points[0].1)?.len() == 1);
    assert!(restore_points(tl, run.start)?.is_empty());

    // Commit times: between commits A and B lies A.
    let a = *commit_end
        .get(&run.commit_a_xid)
        .context("commit A not found in the WAL")?;
    assert_eq!(lsn_for_timestamp(tl, run.between)?, Some(a));
    assert_eq!(lsn_for_timestamp(tl, 0)?, None);
    assert_eq!(
        lsn_for_timestamp(tl, i64::MAX)?,
        commit_ends.last().copied()
    );
    // The exact number of indexed commits at an LSN, across the stored count's strides: at
    // each commit's end it includes that commit, just before it it does not.
    let n = indexed_ends.len();
    assert!(n > 2 * COUNT_STRIDE as usize, "{n} commits indexed");
    let stride = COUNT_STRIDE as usize;
    for i in [
        0,
        1,
        stride - 2,
        stride - 1,
        stride,
        2 * stride - 1,
        2 * stride,
        n - 1,
    ] {
        let end = indexed_ends[i];
        let (count, newest) = commit_count_at(tl, end)?.context("no commits indexed")?;
        assert_eq!(
            (count, newest.lsn),
            (i as u64 + 1, end),
            "at commit {i}'s end"
        );
        let before = commit_count_at(tl, Lsn(end.0 - 1))?.map(|(c, _)| c);
        assert_eq!(
            before,
            (i > 0).then_some(i as u64),
            "just before commit {i}'s end"
        );
    }

    // Relmapper files: the database's (pg_class moved) and the global one (pg_authid moved).
    let mut relmaps = 0;
    for entry in std::fs::read_dir(data.join("base"))? {
        let entry = entry?;
        let Ok(db) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(m) = relmap_at(tl, 1663, db, last_end)? {
            assert_eq!(
                &read_file(&entry.path().join("pg_filenode.map"))?[..],
                &m[..]
            );
            relmaps += 1;
        }
    }
    assert!(relmaps >= 1, "no database relmap written by the WAL");
    let global = relmap_at(tl, 1664, 0, last_end)?.context("no global relmap")?;
    assert_eq!(
        &read_file(&data.join("global/pg_filenode.map"))?[..],
        &global[..]
    );

    // A resumed ingest loads the same state from the timeline.
    let state = ingest.nonpage_state().clone();
    let tl = ingest.into_timeline();
    let again = WalIngest::new(tl, IngestConf::default())?;
    assert_eq!(again.nonpage_state(), &state);
    Ok(())
}
