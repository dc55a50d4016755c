//! Import of real PostgreSQL 15 data directories: a `pg_basebackup` taken under load (torn
//! pages fixed by the WAL's full-page images) imported, ingested further and turned back into
//! a basebackup equal to the original; bad input refused with errors that name the problem;
//! the page checksum and control file formats checked against files Postgres wrote.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use layer_format::Lsn;
use pageserver::basebackup::checksum::page_checksum;
use pageserver::basebackup::{basebackup_to_dir, record_ending_at, BasebackupOptions, Mode};
use pageserver::import::{import_datadir, import_pg_basebackup, read_control_file};
use pageserver::ingest::{IngestConf, WalIngest};
use pageserver::timeline::TimelineConf;
use strata_tests::{InitOptions, PgCluster, StopMode};
use walproto::walfiles::WalDirReader;

fn err_text<T>(r: Result<T, impl std::fmt::Display>) -> String {
    match r {
        Ok(_) => "(no error)".into(),
        Err(e) => e.to_string(),
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()?;
    ensure!(st.success(), "cp -a {} {}", from.display(), to.display());
    Ok(())
}

#[test]
fn pg_basebackup_stream_under_load_imports_and_round_trips() -> Result<()> {
    pg_basebackup_round_trip("stream")
}

#[test]
fn pg_basebackup_fetch_under_load_imports_and_round_trips() -> Result<()> {
    pg_basebackup_round_trip("fetch")
}

fn pg_basebackup_round_trip(wal_method: &str) -> Result<()> {
    let pg = PgCluster::init(&InitOptions::default().keep_all_wal().set("fsync", "off"))?;
    pg.start()?;
    pg.pgbench(&["-i", "-s", "2", "-q"])?;
    pg.psql("CREATE TABLE notes AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 20000) g;")?;
    // pgbench keeps writing while the backup copies files.
    let mut load = pg
        .command("pgbench")
        .args(["-h", &pg.socket_dir().display().to_string()])
        .args(["-p", &pg.port().to_string(), "-U", "postgres"])
        .args(["-T", "4", "-c", "2", "-n", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting pgbench")?;
    std::thread::sleep(std::time::Duration::from_millis(700));
    let backup = pg.pg_basebackup("backup", wal_method)?;
    ensure!(load.wait()?.success(), "pgbench failed");
    pg.psql("UPDATE notes SET body = 'after the backup' WHERE id % 10 = 0;")?;
    let point = pg.current_wal_insert_lsn()?;
    let dump = pg.pg_dump("postgres", &[])?;
    pg.stop(StopMode::Fast)?;

    // A backup needs its backup_label: import_datadir refuses it.
    let scratch = tempfile::tempdir()?;
    let e = err_text(import_datadir(
        &backup,
        &scratch.path().join("x"),
        TimelineConf::default(),
        None,
    ));
    ensure!(e.contains("backup_label"), "{e}");

    let t0 = std::time::Instant::now();
    let (tl, rep) =
        import_pg_basebackup(&backup, &scratch.path().join("tl"), TimelineConf::default())?;
    println!(
        "pg_basebackup -X {wal_method} import: {} blocks at {}, {} WAL records to {}, consistent from {} ({:?})",
        rep.blocks,
        rep.lsn,
        rep.wal_records,
        rep.wal_end,
        rep.consistent_lsn,
        t0.elapsed()
    );
    ensure!(rep.from_backup && rep.consistent_lsn > rep.lsn && rep.wal_end >= rep.consistent_lsn);

    // Below the backup's end the copy may be torn: no basebackup there.
    let mut early = BasebackupOptions::new(rep.lsn, Mode::ReadWrite);
    early.prev_lsn = Some(rep.prev_lsn);
    let e = err_text(basebackup_to_dir(
        &tl,
        &early,
        &scratch.path().join("early"),
    ));
    ensure!(e.contains("consistent only from"), "{e}");

    // The rest of the original's WAL (records already ingested are skipped).
    let mut ing = WalIngest::new(tl, IngestConf::default())?;
    let mut r = WalDirReader::open(&pg.wal_dir(), rep.lsn, None, None)?;
    let mut last = None;
    while let Some(rec) = r.next_record()? {
        ing.ingest_record(&rec)?;
        if rec.end_lsn <= point {
            last = Some((rec.lsn, rec.end_lsn));
        }
    }
    let (prev, lsn) = last.context("no record before the point")?;
    ensure!(record_ending_at(&pg.wal_dir(), lsn)? == prev);
    let mut o = BasebackupOptions::new(lsn, Mode::ReadWrite);
    o.prev_lsn = Some(prev);
    let tl = ing.timeline();
    let c = PgCluster::from_data_dir(
        |d| {
            basebackup_to_dir(tl, &o, d)?;
            Ok(())
        },
        &[("fsync".into(), "off".into())],
    )?;
    c.start()?;
    let got = c.pg_dump("postgres", &[])?;
    if got != dump {
        let (a, b): (Vec<&str>, Vec<&str>) = (dump.lines().collect(), got.lines().collect());
        let diff: Vec<String> = (0..a.len().max(b.len()))
            .filter(|&i| a.get(i) != b.get(i))
            .take(10)
            .map(|i| {
                format!(
                    "line {i}: original {:?} / basebackup {:?}",
                    a.get(i),
                    b.get(i)
                )
            })
            .collect();
        anyhow::bail!(
            "pg_dump after the pg_basebackup import differs:\n{}",
            diff.join("\n")
        );
    }
    ensure!(
        c.psql("SELECT count(*) FROM notes WHERE body = 'after the backup'")?
            .trim()
            == "2000"
    );
    Ok(())
}

#[test]
fn bad_input_is_refused_and_formats_match_postgres() -> Result<()> {
    let pg = PgCluster::init(&InitOptions::default())?;
    let clean = pg.copy_data_dir("clean")?;
    let scratch = tempfile::tempdir()?;
    let tl_dir = |n: &str| scratch.path().join(n);
    let conf = TimelineConf::default;

    // Data page checksums: every page initdb wrote (checksums on) verifies.
    let mut pages = 0;
    for e in std::fs::read_dir(clean.join("base/1"))? {
        let p = e?.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'_' || b.is_ascii_lowercase())
        {
            continue;
        }
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        if data.len() % 8192 != 0 || name.contains('.') || name.starts_with("pg_") {
            continue;
        }
        for (blk, page) in data.chunks_exact(8192).enumerate() {
            let page: &[u8; 8192] = page.try_into().unwrap();
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            let stored = u16::from_le_bytes([page[8], page[9]]);
            ensure!(
                page_checksum(page, blk as u32) == stored,
                "{name} block {blk}: checksum {} vs stored {stored}",
                page_checksum(page, blk as u32)
            );
            pages += 1;
        }
    }
    ensure!(pages > 100, "only {pages} pages checked");
    let control = read_control_file(&clean)?;
    ensure!(control.data_checksums());
    let cd = pg.controldata()?;
    ensure!(cd["Database system identifier"] == control.system_identifier().to_string());
    ensure!(cd["Latest checkpoint location"].parse::<Lsn>()? == control.checkpoint_lsn());

    // Not a data directory.
    let empty = tempfile::tempdir()?;
    let e = err_text(import_datadir(empty.path(), &tl_dir("a"), conf(), None));
    ensure!(
        e.contains("PG_VERSION") && e.contains("not a PostgreSQL data directory"),
        "{e}"
    );
    // Another version.
    let v14 = scratch.path().join("v14");
    copy_dir(&clean, &v14)?;
    std::fs::write(v14.join("PG_VERSION"), "14\n")?;
    let e = err_text(import_datadir(&v14, &tl_dir("b"), conf(), None));
    ensure!(e.contains("PostgreSQL 14"), "{e}");
    // A damaged control file.
    let torn = scratch.path().join("torn");
    copy_dir(&clean, &torn)?;
    let mut b = std::fs::read(torn.join("global/pg_control"))?;
    b[40] ^= 0xFF;
    std::fs::write(torn.join("global/pg_control"), &b)?;
    let e = err_text(import_datadir(&torn, &tl_dir("c"), conf(), None));
    ensure!(e.contains("pg_control") && e.contains("CRC"), "{e}");
    // Missing files.
    let nomap = scratch.path().join("nomap");
    copy_dir(&clean, &nomap)?;
    std::fs::remove_file(nomap.join("global/pg_filenode.map"))?;
    let e = err_text(import_datadir(&nomap, &tl_dir("d"), conf(), None));
    ensure!(
        e.contains("pg_filenode.map") && e.contains("missing"),
        "{e}"
    );
    ensure!(!tl_dir("d").exists(), "a refused import leaves no timeline");
    let noxact = scratch.path().join("noxact");
    copy_dir(&clean, &noxact)?;
    std::fs::remove_dir_all(noxact.join("pg_xact"))?;
    let e = err_text(import_datadir(&noxact, &tl_dir("e"), conf(), None));
    ensure!(e.contains("pg_xact"), "{e}");
    // Not shut down cleanly, and no backup_label.
    pg.start()?;
    pg.psql("CREATE TABLE t (x int)")?;
    pg.stop(StopMode::Immediate)?;
    let e = err_text(import_datadir(pg.data_dir(), &tl_dir("f"), conf(), None));
    ensure!(
        e.contains("not shut down cleanly") && e.contains("backup_label"),
        "{e}"
    );
    let e = err_text(import_pg_basebackup(pg.data_dir(), &tl_dir("g"), conf()));
    ensure!(e.contains("no backup_label"), "{e}");

    // Basebackup LSNs that are not record boundaries of the timeline.
    let (tl, rep) = import_datadir(&clean, &tl_dir("ok"), conf(), None)?;
    let bb = |lsn: Lsn, prev: Option<Lsn>| {
        let mut o = BasebackupOptions::new(lsn, Mode::ReadWrite);
        o.prev_lsn = prev;
        err_text(basebackup_to_dir(
            &tl,
            &o,
            &scratch.path().join(format!("bb-{lsn}")),
        ))
    };
    let e = bb(Lsn(rep.lsn.0 + 8), None);
    ensure!(e.contains("outside the timeline"), "{e}");
    let e = bb(Lsn(rep.lsn.0 - 8), None);
    ensure!(e.contains("outside the timeline"), "{e}");
    let e = bb(rep.lsn, Some(Lsn(rep.prev_lsn.0 + 8)));
    ensure!(e.contains("not at the given"), "{e}");
    let e = err_text(record_ending_at(&clean.join("pg_wal"), Lsn(rep.lsn.0 + 8)));
    ensure!(e.contains("not a record boundary"), "{e}");
    ensure!(record_ending_at(&clean.join("pg_wal"), rep.lsn)? == rep.prev_lsn);
    Ok(())
}
