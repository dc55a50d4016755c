//! Relation-directory changes of a record: the relations a transaction's end drops, SMGR
//! CREATE / TRUNCATE, DATABASE CREATE (both strategies) and DROP; then the fork sizes the
//! record sets, and the directory values (relation sizes, a database's relation list, the
//! database list) that change with them.

use std::collections::BTreeSet;

use bytes::Bytes;
use layer_format::{Key, Value};
use walproto::consts::{BLCKSZ, VISIBILITYMAP_FORKNUM};
use walproto::record::{DecodedRecord, RelFileNode};
use walproto::rmgr::dbase::DbaseRecord;
use walproto::rmgr::smgr::{SmgrRecord, SMGR_TRUNCATE_HEAP, SMGR_TRUNCATE_VM};
use walproto::rmgr::xact::XactRecord;
use walproto::rmgr::ParsedRecord;

use super::pending::PendingRecord;
use super::reldir::{size_value, RelDirectory};
use super::{record_error, IngestError};
use crate::redo;
use crate::timeline::Timeline;

/// A record's change to the relation directory.
pub(super) enum RelChange {
    DropRels(Vec<RelFileNode>),
    Smgr(SmgrRecord),
    Dbase(DbaseRecord),
}

impl RelChange {
    /// The change `parsed` makes, if any.
    pub(super) fn of(parsed: Option<&ParsedRecord>) -> Option<RelChange> {
        match parsed? {
            ParsedRecord::Smgr(s) => Some(RelChange::Smgr(*s)),
            ParsedRecord::Dbase(d) => Some(RelChange::Dbase(d.clone())),
            ParsedRecord::Xact(x) => dropped_rels(x).map(|r| RelChange::DropRels(r.to_vec())),
            _ => None,
        }
    }
}

/// The relations whose files a transaction record drops, if any.
fn dropped_rels(x: &XactRecord) -> Option<&[RelFileNode]> {
    match x {
        XactRecord::Commit(p)
        | XactRecord::Abort(p)
        | XactRecord::CommitPrepared(p)
        | XactRecord::AbortPrepared(p)
            if !p.rels.is_empty() =>
        {
            Some(&p.rels)
        }
        _ => None,
    }
}

/// Which directory values a record changed.
#[derive(Default)]
pub(super) struct DirChanges {
    /// Databases whose relation list changed.
    dbs: Vec<(u32, u32)>,
    /// The database list changed.
    db_list: bool,
}

/// What applying a change needs besides the record.
pub(super) struct DirState<'a> {
    pub(super) tl: &'a Timeline,
    pub(super) dir: &'a mut RelDirectory,
    /// Databases created with `STRATEGY wal_log` (see `WalIngest::is_wal_log_db`).
    pub(super) wal_log_dbs: &'a mut BTreeSet<(u32, u32)>,
}

impl DirState<'_> {
    /// Applies `change` to the directory and to the record's pending sizes and values.
    pub(super) fn apply(
        &mut self,
        rec: &DecodedRecord,
        change: RelChange,
        out: &mut PendingRecord,
        changed: &mut DirChanges,
    ) -> Result<(), IngestError> {
        match change {
            // The relation's files go with the transaction's end (smgrdounlinkall at commit,
            // or the files of relations created by an aborted transaction): it no longer
            // exists, so a basebackup or RelExists must not show it. Its old pages stay in
            // the layers for reads at earlier LSNs.
            RelChange::DropRels(rels) => {
                for rel in rels {
                    out.sizes.0.retain(|((r, _), _)| *r != rel);
                    if self.dir.drop_rel(rel) {
                        changed.dbs.push((rel.spc, rel.db));
                    }
                }
            }
            RelChange::Smgr(SmgrRecord::Create { rnode, fork }) => {
                let fork = u8::try_from(fork).map_err(|_| record_error(rec, "bad fork"))?;
                if self.dir.size(rnode, fork).is_none() {
                    out.sizes.insert((rnode, fork), 0u32);
                }
            }
            RelChange::Smgr(SmgrRecord::Truncate {
                blkno,
                rnode,
                flags,
            }) => {
                let mut cut = |fork: u8, n: u32| {
                    if let Some(cur) = self.dir.size(rnode, fork) {
                        if n < cur {
                            out.sizes.insert((rnode, fork), n);
                        }
                    }
                };
                if flags & SMGR_TRUNCATE_HEAP != 0 {
                    cut(0, blkno);
                }
                if flags & SMGR_TRUNCATE_VM != 0 {
                    cut(VISIBILITYMAP_FORKNUM, redo::vm::truncated_nblocks(blkno));
                }
                // SMGR_TRUNCATE_FSM: FSM pages only ever arrive as full-page images, which
                // initialize them; the FSM's exact surviving size is not tracked.
            }
            RelChange::Dbase(DbaseRecord::CreateFileCopy {
                db_id,
                tablespace_id,
                src_db_id,
                src_tablespace_id,
            }) => {
                self.copy_database((src_tablespace_id, src_db_id), (tablespace_id, db_id), out)?;
                changed.db_list = true;
                changed.dbs.push((tablespace_id, db_id));
            }
            RelChange::Dbase(DbaseRecord::CreateWalLog {
                db_id,
                tablespace_id,
            }) => {
                changed.db_list |= self.dir.drop_db((tablespace_id, db_id));
                self.wal_log_dbs.insert((tablespace_id, db_id));
            }
            RelChange::Dbase(DbaseRecord::Drop {
                db_id,
                tablespace_ids,
            }) => {
                for spc in tablespace_ids {
                    if self.dir.drop_db((spc, db_id)) {
                        changed.db_list = true;
                        changed.dbs.push((spc, db_id));
                    }
                    self.wal_log_dbs.remove(&(spc, db_id));
                }
            }
        }
        Ok(())
    }

    /// CREATE DATABASE with `STRATEGY file_copy`: every page of the template, as of the
    /// ingest position, becomes an image in the new database.
    fn copy_database(
        &mut self,
        (src_spc, src_db): (u32, u32),
        (spc, db): (u32, u32),
        out: &mut PendingRecord,
    ) -> Result<(), IngestError> {
        let at = self.tl.last_record_end();
        self.dir.drop_db((spc, db));
        for (src_rel, fork, n) in self.dir.forks((src_spc, src_db)) {
            let rel = RelFileNode {
                spc,
                db,
                rel: src_rel.rel,
            };
            for b in 0..n {
                let page = self.tl.get_page(Key::rel_block(src_rel, fork, b), at)?;
                let page = page.map_or_else(
                    || Bytes::from(vec![0u8; BLCKSZ]),
                    |p| Bytes::copy_from_slice(&p[..]),
                );
                out.values
                    .insert(Key::rel_block(rel, fork, b), Value::image(page));
            }
            out.sizes.insert((rel, fork), n);
        }
        // The copied directory includes the template's pg_filenode.map; WAL has no RelMap
        // UPDATE for it, so the copy must carry it over.
        if let Some(map) = self.tl.get_image_value(Key::relmap(src_spc, src_db), at)? {
            out.values.insert(Key::relmap(spc, db), Value::image(map));
        }
        Ok(())
    }

    /// Moves the record's fork sizes into the directory and adds the size and directory
    /// values that changed.
    pub(super) fn size_and_directory_values(
        &mut self,
        mut changed: DirChanges,
        out: &mut PendingRecord,
    ) {
        for &((rel, fork), n) in &out.sizes.0 {
            let had_db = self.dir.has_db((rel.spc, rel.db));
            if self.dir.set_size(rel, fork, n) {
                changed.dbs.push((rel.spc, rel.db));
            }
            changed.db_list |= !had_db;
            out.values
                .insert(Key::rel_size(rel, fork), Value::image(size_value(n)));
        }
        changed.dbs.sort();
        changed.dbs.dedup();
        for db in changed.dbs {
            out.values.insert(
                Key::rel_dir(db.0, db.1),
                Value::image(self.dir.rel_dir_value(db)),
            );
        }
        if changed.db_list {
            out.values
                .insert(Key::db_dir(), Value::image(self.dir.db_dir_value()));
        }
    }
}
