//! The values of a record's pages: each block reference (an image, or the record for redo),
//! and the visibility-map pages a heap record changes outside its block references.

use bytes::Bytes;
use layer_format::{Key, Value};
use walproto::consts::BLCKSZ;
use walproto::record::{BlockRef, DecodedRecord};
use walproto::rmgr::record_name;

use super::pending::{Pending, PendingRecord};
use super::reldir::RelDirectory;
use super::{record_error, ImageCheck, IngestConf, IngestError};
use crate::redo::{self, extra_targets, has_native_redo, may_create, ExtraOp};

/// Adds the value of every block reference of `rec` (see the module doc of `ingest`), and
/// the fork extensions they imply.
pub(super) fn block_values(
    rec: &DecodedRecord,
    dir: &RelDirectory,
    conf: &IngestConf,
    out: &mut PendingRecord,
) -> Result<(), IngestError> {
    let lsn = rec.end_lsn;
    let native = has_native_redo(rec.rmid());
    for blk in &rec.blocks {
        let key = Key::rel_block(blk.rel, blk.fork, blk.blkno);
        let cur = out.size(dir, blk.rel, blk.fork);
        let check_image = blk.image.as_ref().filter(|i| !i.apply());
        let value = if blk.applies_image() || (!native && check_image.is_some()) {
            Pending::Value(Value::image(restore_image(rec, blk)?))
        } else if native {
            // Heap2 VISIBLE's VM page may not exist yet: then redo starts from zeroes.
            let missing = cur.is_none_or(|n| blk.blkno >= n);
            let init = blk.will_init() || (missing && may_create(rec, blk));
            if let (true, Some(img)) = (conf.collect_checks, check_image) {
                out.checks.push(ImageCheck {
                    key,
                    lsn,
                    rmid: rec.rmid(),
                    fork: blk.fork,
                    blkno: blk.blkno,
                    record: record_name(rec),
                    image: img.clone(),
                });
            }
            Pending::Record { will_init: init }
        } else {
            let e = IngestError::Unsupported {
                record: record_name(rec),
                lsn: rec.lsn,
                block_id: blk.id,
                rel: blk.rel,
                fork: blk.fork,
                blkno: blk.blkno,
            };
            if !conf.count_unsupported {
                return Err(e);
            }
            out.unsupported.push(e.to_string());
            continue;
        };
        if cur.is_none() && !value.will_init() {
            return Err(IngestError::UnknownRelation {
                record: record_name(rec),
                lsn: rec.lsn,
                block_id: blk.id,
                rel: blk.rel,
                fork: blk.fork,
            });
        }
        if cur.is_none_or(|n| blk.blkno >= n) {
            out.sizes.insert((blk.rel, blk.fork), blk.blkno + 1);
        }
        // Two references to one page in a record: the record is stored once and redo
        // applies every reference to the page.
        out.values.insert_if_absent(key, || value);
    }
    Ok(())
}

/// Adds the visibility-map pages a heap record changes outside its block references
/// ([`extra_targets`]): the record, under the VM page's key.
pub(super) fn extra_page_values(
    rec: &DecodedRecord,
    dir: &RelDirectory,
    out: &mut PendingRecord,
) -> Result<(), IngestError> {
    let extras = extra_targets(rec).map_err(|e| record_error(rec, e.to_string()))?;
    for t in extras {
        let key = Key::rel_block(t.rel, t.fork, t.blkno);
        let exists = out.size(dir, t.rel, t.fork).is_some_and(|n| t.blkno < n);
        match t.op {
            // visibilitymap_pin extends the fork with the page if needed.
            ExtraOp::VmClear { .. } => {
                if !exists {
                    out.sizes.insert((t.rel, t.fork), t.blkno + 1);
                }
                out.values
                    .insert_if_absent(key, || Pending::Record { will_init: !exists });
            }
            // Only an existing page is changed.
            ExtraOp::VmTruncate { .. } if exists => {
                out.values
                    .insert_if_absent(key, || Pending::Record { will_init: false });
            }
            ExtraOp::VmTruncate { .. } => {}
        }
    }
    Ok(())
}

/// The page an image-carrying block reference holds after the record
/// ([`redo::restore_image`]).
fn restore_image(rec: &DecodedRecord, blk: &BlockRef) -> Result<Bytes, IngestError> {
    let mut p = Box::new([0u8; BLCKSZ]);
    redo::restore_image(rec, blk, &mut p)
        .map_err(|e| record_error(rec, format!("block {}: {}", blk.id, e.0)))?;
    Ok(Bytes::copy_from_slice(&p[..]))
}
