//! Replays a WAL directory over a base data directory with Strata's redo and checks every
//! page against Postgres itself: with `wal_consistency_checking = all`, each record of a
//! resource manager with a mask function carries the page as the primary had it after the
//! record. Redo's result and that image are masked as PG15 masks them and compared.
//!
//! Used by the `redo_vs_postgres` and `redo_final_dir` tests and their shared `redo_support`.
//! `strata verify-redo` checks redo differently: through the pageserver's ingest and
//! GetPage@LSN (`crate::verify_redo`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use walproto::consts::VISIBILITYMAP_FORKNUM;
use walproto::record::{BlockRef, DecodedRecord};
use walproto::rmgr::dbase::DbaseRecord;
use walproto::rmgr::smgr::{SmgrRecord, SMGR_TRUNCATE_HEAP, SMGR_TRUNCATE_VM};
use walproto::rmgr::{self, ParsedRecord};
use walproto::walfiles::{WalDirReader, WalReadError};
use walproto::Lsn;

use super::store::{PageKey, PageStore};
use super::{
    diff, extra_targets, has_native_redo, mask, may_create, record_name, redo_block, redo_extra,
    restore_image, Page,
};

/// What to replay and how.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// A copy of the data directory in a clean-shutdown state (the base).
    pub base: PathBuf,
    /// `pg_wal` of the cluster that ran the workload.
    pub wal_dir: PathBuf,
    /// Where the WAL after the base starts (the base's checkpoint).
    pub start: Lsn,
    pub end: Option<Lsn>,
    /// Compare redo results with consistency images (`true`), or ignore the images of
    /// natively redone records as production ingest will (`false`).
    pub check_images: bool,
    /// How many problems to describe in full.
    pub max_reported: usize,
    /// Alters each redo result before it is compared (tests use it to prove the comparison
    /// catches a wrong page); `None` in real use.
    pub tamper: Option<fn(&DecodedRecord, &mut Page)>,
}

/// Counters per record type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeCounts {
    pub verified: u64,
    pub mismatched: u64,
}

/// The outcome of a replay.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub records: u64,
    pub blocks: u64,
    /// Blocks natively redone (no image applied).
    pub redone: u64,
    /// Blocks whose applying full-page image was restored.
    pub images_applied: u64,
    /// Blocks of non-native rmgrs whose consistency image became the page.
    pub nonnative_images: u64,
    /// Redo results equal to the masked consistency image.
    pub verified: u64,
    /// VM pages (Heap2 VISIBLE) also equal to the image without masking the bitmap.
    pub vm_strict_verified: u64,
    pub mismatched: u64,
    /// Blocks of rmgrs without native redo and without an image.
    pub unsupported: u64,
    /// Redo errors (malformed record or page).
    pub errors: u64,
    /// Blocks that did not exist where the record needed an existing page.
    pub missing: u64,
    /// VM pages changed outside block references.
    pub extra_pages: u64,
    pub dbs_copied_pages: u64,
    pub per_type: BTreeMap<String, TypeCounts>,
    /// The first problems, described.
    pub problems: Vec<String>,
    pub last_lsn: Lsn,
}

impl VerifyReport {
    fn problem(&mut self, max: usize, text: impl FnOnce() -> String) {
        if self.problems.len() < max {
            self.problems.push(text());
        }
    }

    /// A one-paragraph summary.
    pub fn summary(&self) -> String {
        format!(
            "records {} blocks {} redone {} images applied {} non-native images {} \
             verified {} (strict VM {}) mismatched {} unsupported {} errors {} missing {} \
             extra VM pages {} pages copied by CREATE DATABASE {} last LSN {}",
            self.records,
            self.blocks,
            self.redone,
            self.images_applied,
            self.nonnative_images,
            self.verified,
            self.vm_strict_verified,
            self.mismatched,
            self.unsupported,
            self.errors,
            self.missing,
            self.extra_pages,
            self.dbs_copied_pages,
            self.last_lsn
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading WAL: {0}")]
    Wal(#[from] WalReadError),
    #[error("reading the base directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Replays the WAL; returns the report and the final pages.
pub fn replay(opts: &VerifyOptions) -> Result<(VerifyReport, PageStore), VerifyError> {
    let mut reader = WalDirReader::open(&opts.wal_dir, opts.start, opts.end, None)?;
    let mut store = PageStore::new(&opts.base);
    let mut rep = VerifyReport::default();
    while let Some(rec) = reader.next_record()? {
        rep.records += 1;
        rep.last_lsn = rec.lsn;
        structural(&rec, &mut store, &mut rep, opts)?;
        for blk in &rec.blocks {
            rep.blocks += 1;
            replay_block(&rec, blk, &mut store, &mut rep, opts)?;
        }
        match extra_targets(&rec) {
            Ok(targets) => {
                for t in targets {
                    let key = (t.rel, t.fork, t.blkno);
                    let cur = store.get(&key)?;
                    if let Some(p) = redo_extra(&t, cur.as_deref()) {
                        store.put_by(key, p, rec.rmid());
                        rep.extra_pages += 1;
                    }
                }
            }
            Err(e) => {
                rep.errors += 1;
                rep.problem(opts.max_reported, || e.to_string());
            }
        }
    }
    Ok((rep, store))
}

/// SMGR and DATABASE records: which pages exist.
fn structural(
    rec: &DecodedRecord,
    store: &mut PageStore,
    rep: &mut VerifyReport,
    opts: &VerifyOptions,
) -> Result<(), VerifyError> {
    if !matches!(rec.rmid(), rmgr::RM_SMGR_ID | rmgr::RM_DBASE_ID) {
        return Ok(());
    }
    let parsed = match rmgr::parse(rec) {
        Ok(p) => p,
        Err(e) => {
            rep.errors += 1;
            rep.problem(opts.max_reported, || {
                format!("{} at {}: {e}", record_name(rec), rec.lsn)
            });
            return Ok(());
        }
    };
    match parsed {
        Some(ParsedRecord::Smgr(SmgrRecord::Create { rnode, fork })) => {
            store.create(rnode, fork as u8)
        }
        Some(ParsedRecord::Smgr(SmgrRecord::Truncate {
            blkno,
            rnode,
            flags,
        })) => {
            if flags & SMGR_TRUNCATE_HEAP != 0 {
                store.truncate(rnode, 0, blkno);
            }
            if flags & SMGR_TRUNCATE_VM != 0 {
                store.truncate(
                    rnode,
                    VISIBILITYMAP_FORKNUM,
                    super::vm::truncated_nblocks(blkno),
                );
            }
            // SMGR_TRUNCATE_FSM: the FSM is not WAL-logged page by page (its pages only
            // ever arrive as full-page images), so its exact surviving size is not tracked.
        }
        Some(ParsedRecord::Dbase(DbaseRecord::CreateFileCopy {
            db_id,
            tablespace_id,
            src_db_id,
            src_tablespace_id,
        })) => {
            let n = store.copy_db((src_tablespace_id, src_db_id), (tablespace_id, db_id))?;
            rep.dbs_copied_pages += n as u64;
        }
        Some(ParsedRecord::Dbase(DbaseRecord::CreateWalLog {
            db_id,
            tablespace_id,
        })) => store.create_wal_log_db(tablespace_id, db_id),
        Some(ParsedRecord::Dbase(DbaseRecord::Drop {
            db_id,
            tablespace_ids,
        })) => {
            for spc in tablespace_ids {
                store.drop_db(spc, db_id);
            }
        }
        _ => {}
    }
    Ok(())
}

fn replay_block(
    rec: &DecodedRecord,
    blk: &BlockRef,
    store: &mut PageStore,
    rep: &mut VerifyReport,
    opts: &VerifyOptions,
) -> Result<(), VerifyError> {
    let key: PageKey = (blk.rel, blk.fork, blk.blkno);
    let native = has_native_redo(rec.rmid());
    let applies = blk.applies_image();
    let check_image = blk.image.as_ref().filter(|i| !i.apply());
    let zero_ok = may_create(rec, blk) || (!native && check_image.is_some());
    let mut page: Box<Page> = match store.get(&key)? {
        Some(p) => p,
        None if zero_ok => Box::new([0u8; 8192]),
        None => {
            rep.missing += 1;
            rep.problem(opts.max_reported, || {
                format!(
                    "{} at {}: block {} ({} fork {} blk {}) does not exist",
                    record_name(rec),
                    rec.lsn,
                    blk.id,
                    blk.rel,
                    blk.fork,
                    blk.blkno
                )
            });
            return Ok(());
        }
    };
    if !native && !applies {
        if check_image.is_none() {
            rep.unsupported += 1;
            rep.problem(opts.max_reported, || {
                format!("no native redo for {} at {}", record_name(rec), rec.lsn)
            });
            return Ok(());
        }
        match restore_image(rec, blk, &mut page) {
            Ok(()) => {
                rep.nonnative_images += 1;
                store.put_by(key, page, rec.rmid());
            }
            Err(e) => {
                rep.errors += 1;
                rep.problem(opts.max_reported, || {
                    format!("{} at {}: {e}", record_name(rec), rec.lsn)
                });
            }
        }
        return Ok(());
    }
    if let Err(e) = redo_block(rec, blk.id, &mut page) {
        rep.errors += 1;
        rep.problem(opts.max_reported, || e.to_string());
        // Continue from the primary's page if we have it, so one error does not cascade.
        if let Some(img) = check_image {
            if img.restore_into(&mut page).is_ok() {
                store.put(key, page);
            }
        }
        return Ok(());
    }
    if applies {
        rep.images_applied += 1;
    } else {
        rep.redone += 1;
        if let Some(tamper) = opts.tamper {
            tamper(rec, &mut page);
        }
    }
    if let (true, false, Some(img)) = (opts.check_images, applies, check_image) {
        let primary = match img.restore() {
            Ok(p) => p,
            Err(e) => {
                rep.errors += 1;
                rep.problem(opts.max_reported, || {
                    format!("{} at {}: image: {e}", record_name(rec), rec.lsn)
                });
                store.put(key, page);
                return Ok(());
            }
        };
        let (mut a, mut b) = (page.clone(), primary.clone());
        mask::mask_for_rmgr(rec.rmid(), &mut a, blk.blkno);
        mask::mask_for_rmgr(rec.rmid(), &mut b, blk.blkno);
        let mut equal = a == b;
        if equal && blk.fork == VISIBILITYMAP_FORKNUM {
            // heap_mask hides the whole bitmap of a VM page; compare it strictly.
            let (mut a, mut b) = (page.clone(), primary.clone());
            mask::mask_page_lsn_and_checksum(&mut a);
            mask::mask_page_lsn_and_checksum(&mut b);
            equal = a == b;
            if equal {
                rep.vm_strict_verified += 1;
            } else {
                let d = diff::describe(&a, &b, 8);
                rep.problem(opts.max_reported, || {
                    format!(
                        "VM page differs (unmasked) {} at {} {} fork {} blk {}\n{d}",
                        record_name(rec),
                        rec.lsn,
                        blk.rel,
                        blk.fork,
                        blk.blkno
                    )
                });
            }
        }
        let counts = rep.per_type.entry(record_name(rec)).or_default();
        if equal {
            counts.verified += 1;
            rep.verified += 1;
        } else {
            counts.mismatched += 1;
            rep.mismatched += 1;
            if blk.fork != VISIBILITYMAP_FORKNUM || a != b {
                let d = diff::describe(&a, &b, 8);
                rep.problem(opts.max_reported, || {
                    format!(
                        "mismatch: {} at {} block {} ({} fork {} blk {}), masked pages differ:\n{d}",
                        record_name(rec),
                        rec.lsn,
                        blk.id,
                        blk.rel,
                        blk.fork,
                        blk.blkno
                    )
                });
            }
            // Carry on from the primary's page so that one bug does not cascade.
            page = primary;
        }
    }
    store.put_by(key, page, rec.rmid());
    Ok(())
}
