//! Timeline storage against real Postgres 15 WAL: import a base, ingest the WAL of the full
//! workload (run with `wal_consistency_checking = all`) into layer files, and read every
//! natively redone page back with GetPage@LSN against Postgres's own images.
//!
//! The workload runs once (about 20 s); one test performs every check on it, in order:
//! verify-redo through the library (zero mismatched, zero unsupported, the final data
//! directory equal), the `strata verify-redo` command, a kill -9 of an ingesting process
//! and its resumption, and bad input (a WAL gap, a record for a relation that does not
//! exist, an LSN below the timeline's start).
//!
//! `STRATA_TIMELINE_FIXTURE=<file>` reuses a saved workload (see `save_fixture`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use layer_format::Key;
use pageserver::import::import_datadir;
use pageserver::ingest::{IngestConf, IngestError, WalIngest};
use pageserver::timeline::{Timeline, TimelineConf, TimelineMetadata};
use pageserver::verify_redo::{verify_redo, VerifyRedoOptions};
use walproto::walfiles::WalDirReader;
use walproto::Lsn;

use fixture::{fixture, Fixture};

fn options(f: &Fixture, tl_dir: &Path) -> VerifyRedoOptions {
    VerifyRedoOptions {
        base: f.base.clone(),
        wal_dir: f.wal.clone(),
        start: Some(f.start),
        end: None,
        final_dir: Some(f.data.clone()),
        timeline_dir: tl_dir.to_path_buf(),
        freeze_bytes: 16 * 1024 * 1024,
        verify: true,
        max_reported: 10,
    }
}

#[test]
fn timeline_ingest_against_postgres() -> anyhow::Result<()> {
    let f = fixture()?;
    let scratch = tempfile::tempdir()?;
    verify_redo_library(&f, scratch.path())?;
    verify_redo_command(&f, scratch.path())?;
    kill_and_resume(&f, scratch.path())?;
    bad_input(&f, scratch.path())?;
    Ok(())
}

/// Zero mismatched, zero unsupported, many record types verified, several L0 layers, the
/// final data directory equal.
fn verify_redo_library(f: &Fixture, scratch: &Path) -> anyhow::Result<()> {
    let rep = verify_redo(&options(f, &scratch.join("verify")))?;
    println!("{}", rep.describe());
    assert_eq!(rep.mismatched, 0, "pages differ from Postgres's images");
    assert_eq!(rep.ingest.unsupported, 0, "records without redo or image");
    assert!(
        rep.verified > 50_000,
        "only {} pages verified",
        rep.verified
    );
    assert!(rep.vm_strict_verified > 0, "no VM page compared strictly");
    for t in [
        "Heap/INSERT",
        "Heap/DELETE",
        "Heap/HOT_UPDATE",
        "Heap/LOCK",
        "Heap2/PRUNE",
        "Heap2/VISIBLE",
        "Btree/INSERT_LEAF",
        "Btree/SPLIT_L",
        "Btree/UNLINK_PAGE",
        "Sequence/LOG",
    ] {
        let n = rep.per_type.get(t).map_or(0, |c| c.verified);
        assert!(n > 0, "{t}: no page verified");
    }
    assert!(
        rep.writes.l0_flushes >= 5,
        "only {} L0 layers",
        rep.writes.l0_flushes
    );
    assert!(
        rep.reads.quantile(1.0) >= 2,
        "reads never reached older layer files"
    );
    let fin = rep.final_report.as_ref().expect("final comparison ran");
    assert_eq!(fin.differing, 0, "final pages differ: {:?}", fin.problems);
    assert!(fin.equal > 2_000 && fin.vm_equal > 0, "{fin:?}");
    // The metadata lists exactly the layer files in the directory.
    let dir = scratch.join("verify");
    let meta = TimelineMetadata::load(&dir)?.expect("metadata");
    let mut files: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".delta") || n.ends_with(".image"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = meta.layers.iter().map(|d| d.file_name()).collect();
    listed.sort();
    assert_eq!(files, listed);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A slice of the WAL through the real `strata verify-redo` binary.
fn verify_redo_command(f: &Fixture, scratch: &Path) -> anyhow::Result<()> {
    let bin = strata_tests::waldump::strata_bin()?;
    let end = Lsn(f.start.0 + 96 * 1024 * 1024);
    let out = Command::new(&bin)
        .arg("verify-redo")
        .args(["--base".as_ref(), f.base.as_os_str()])
        .args(["--wal".as_ref(), f.wal.as_os_str()])
        .args(["--start", &f.start.to_string(), "--end", &end.to_string()])
        .args(["--freeze-mib", "4"])
        .arg("--timeline-dir")
        .arg(scratch.join("cli"))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "strata verify-redo failed");
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.starts_with("verified ") && last.ends_with(", mismatched 0, unsupported 0"),
        "{last}"
    );
    // A bad base is an error naming the directory, with a non-zero exit.
    let out = Command::new(&bin)
        .arg("verify-redo")
        .args(["--base".as_ref(), scratch.join("nowhere").as_os_str()])
        .args(["--wal".as_ref(), f.wal.as_os_str()])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
    Ok(())
}

/// Every page of every fork at `lsn`, for comparing two timelines.
fn all_pages(ing: &WalIngest, lsn: Lsn) -> anyhow::Result<Vec<(Key, Option<Vec<u8>>)>> {
    let tl = ing.timeline();
    let mut out = Vec::new();
    for (rel, fork, n) in ing.directory().all_forks() {
        for b in 0..n {
            let key = Key::rel_block(rel, fork, b);
            out.push((key, tl.get_page(key, lsn)?.map(|p| p.to_vec())));
        }
    }
    Ok(out)
}

/// kill -9 of a process ingesting WAL (after some layers are durable), restart from the
/// durable metadata, finish: the same pages as an uninterrupted ingest.
fn kill_and_resume(f: &Fixture, scratch: &Path) -> anyhow::Result<()> {
    let end = Lsn(f.start.0 + 256 * 1024 * 1024);
    let killed = scratch.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingest-wal"))
        .arg(&f.base)
        .arg(&f.wal)
        .arg(f.start.to_string())
        .arg(end.to_string())
        .arg(&killed)
        .arg((512 * 1024).to_string())
        .spawn()?;
    let t0 = Instant::now();
    let mut durable = Lsn::INVALID;
    loop {
        if let Ok(Some(m)) = TimelineMetadata::load(&killed) {
            durable = m.disk_consistent_lsn;
        }
        // Midway: some layers durable, well before the end.
        if durable.0 > f.start.0 + 32 * 1024 * 1024 {
            break;
        }
        assert!(
            child.try_wait()?.is_none(),
            "the ingest finished before it was killed"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the ingest makes no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?; // SIGKILL
    child.wait()?;
    println!("killed the ingest with {durable} durable");
    assert!(durable < end);

    let mut opts = options(f, &killed);
    opts.end = Some(end);
    opts.final_dir = None;
    opts.verify = false;
    opts.freeze_bytes = 512 * 1024;
    let resumed = verify_redo(&opts)?;
    println!("resumed: {}", resumed.describe());
    assert!(resumed.resumed_from.is_some_and(|l| l >= durable));
    assert!(resumed.import.is_none());

    opts.timeline_dir = scratch.join("reference");
    let reference = verify_redo(&opts)?;
    assert_eq!(resumed.last_lsn, reference.last_lsn);

    let conf = TimelineConf::default();
    let a = WalIngest::new(
        Timeline::open(&killed, conf.clone(), None)?,
        IngestConf::default(),
    )?;
    let b = WalIngest::new(
        Timeline::open(&opts.timeline_dir, conf, None)?,
        IngestConf::default(),
    )?;
    assert_eq!(
        a.timeline().last_record_lsn(),
        b.timeline().last_record_lsn()
    );
    assert_eq!(a.directory(), b.directory(), "relation directories differ");
    // Pages at the end and at the point of the kill.
    let last = a.timeline().last_record_end();
    for lsn in [durable, last] {
        let (pa, pb) = (all_pages(&a, lsn)?, all_pages(&b, lsn)?);
        assert!(pa.len() > 1000, "only {} pages", pa.len());
        let differing: Vec<_> = pa
            .iter()
            .zip(&pb)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.0)
            .take(5)
            .collect();
        assert!(differing.is_empty(), "pages differ at {lsn}: {differing:?}");
    }
    Ok(())
}

/// A timeline over the base whose history starts at `start` (the base is vouched for there).
fn ingest_at(f: &Fixture, dir: &Path, start: Lsn) -> anyhow::Result<WalIngest> {
    let (tl, _) = import_datadir(&f.base, dir, TimelineConf::default(), Some(start))?;
    Ok(WalIngest::new(tl, IngestConf::default())?)
}

/// A WAL gap, a record for a relation that does not exist, an LSN below the timeline's
/// start: each a clear error, and the timeline unchanged.
fn bad_input(f: &Fixture, scratch: &Path) -> anyhow::Result<()> {
    let mut reader = WalDirReader::open(&f.wal, f.start, None, None)?;
    let first: Vec<_> = (0..200)
        .map(|_| reader.next_record())
        .collect::<Result<Option<Vec<_>>, _>>()?
        .expect("200 records");

    // A gap: record 11 after record 9.
    let mut ing = ingest_at(f, &scratch.join("gap"), f.start)?;
    for r in &first[..10] {
        ing.ingest_record(r)?;
    }
    let err = ing.ingest_record(&first[11]).unwrap_err();
    println!("gap: {err}");
    assert!(matches!(err, IngestError::Gap { .. }), "{err}");
    assert!(err.to_string().contains(&first[11].lsn.to_string()));
    assert_eq!(ing.timeline().last_record_lsn(), first[9].lsn);
    // The right record still goes in.
    ing.ingest_record(&first[10])?;

    // Below the start.
    let mut ing = ingest_at(f, &scratch.join("below"), first[5].lsn)?;
    let err = ing.ingest_record(&first[4]).unwrap_err();
    println!("below start: {err}");
    assert!(matches!(err, IngestError::BelowStart { .. }), "{err}");

    // A record for a relation the base does not have: the first heap record, not
    // initializing its page, on a relation created in the WAL.
    let mut reader = WalDirReader::open(&f.wal, f.start, None, None)?;
    let probe = ingest_at(f, &scratch.join("probe"), f.start)?;
    let rec = loop {
        let Some(r) = reader.next_record()? else {
            anyhow::bail!("no suitable record");
        };
        let fits = r.rmid() == walproto::rmgr::RM_HEAP_ID
            && r.blocks.len() == 1
            && !r.blocks[0].will_init()
            && !r.blocks[0].applies_image()
            && probe.directory().size(r.blocks[0].rel, 0).is_none();
        if fits {
            break r;
        }
    };
    let mut ing = ingest_at(f, &scratch.join("norel"), rec.lsn)?;
    let err = ing.ingest_record(&rec).unwrap_err();
    println!("no relation: {err}");
    assert!(matches!(err, IngestError::UnknownRelation { .. }), "{err}");
    assert!(err.to_string().contains(&rec.blocks[0].rel.to_string()));
    assert_eq!(ing.timeline().last_record_lsn(), Lsn::INVALID);
    Ok(())
}

mod fixture {
    use std::path::PathBuf;

    use strata_tests::workload::consistency_checked_workload;
    use strata_tests::PgCluster;
    use walproto::Lsn;

    /// A finished workload: the base copy, the WAL, the final data directory, the start LSN.
    pub struct Fixture {
        pub _pg: Option<PgCluster>,
        pub base: PathBuf,
        pub wal: PathBuf,
        pub data: PathBuf,
        pub start: Lsn,
    }

    /// Runs the full workload once, or reuses `STRATA_TIMELINE_FIXTURE=<file>` (four lines:
    /// base dir, WAL dir, final data dir, start LSN).
    pub fn fixture() -> anyhow::Result<Fixture> {
        if let Some(f) = std::env::var_os("STRATA_TIMELINE_FIXTURE") {
            let text = std::fs::read_to_string(f)?;
            let v: Vec<&str> = text.lines().collect();
            anyhow::ensure!(v.len() >= 4, "fixture file needs base, wal, data, start");
            return Ok(Fixture {
                _pg: None,
                base: v[0].into(),
                wal: v[1].into(),
                data: v[2].into(),
                start: v[3].parse()?,
            });
        }
        let (pg, base, report) = consistency_checked_workload("redo-base")?;
        Ok(Fixture {
            base,
            wal: pg.wal_dir(),
            data: pg.data_dir().to_path_buf(),
            start: report.start,
            _pg: Some(pg),
        })
    }

    /// Saves a fixture for `STRATA_TIMELINE_FIXTURE` into `STRATA_SAVE_FIXTURE=<dir>`.
    #[test]
    #[ignore]
    fn save_fixture() -> anyhow::Result<()> {
        let out = PathBuf::from(std::env::var("STRATA_SAVE_FIXTURE")?);
        let f = fixture()?;
        std::fs::create_dir_all(&out)?;
        for (src, name) in [(&f.base, "base"), (&f.data, "data")] {
            let st = std::process::Command::new("cp")
                .arg("-a")
                .arg(src)
                .arg(out.join(name))
                .status()?;
            anyhow::ensure!(st.success());
        }
        std::fs::write(
            out.join("fixture"),
            format!(
                "{}\n{}\n{}\n{}\n",
                out.join("base").display(),
                out.join("data/pg_wal").display(),
                out.join("data").display(),
                f.start
            ),
        )?;
        Ok(())
    }
}
