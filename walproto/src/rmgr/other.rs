//! Record type names and short descriptions of the resource managers the pageserver does not
//! interpret: Tablespace, Hash, Gin, Gist, SPGist, BRIN, CommitTs, ReplicationOrigin, Generic,
//! LogicalMessage.

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::{fmt_lsn, Reader};
use super::*;
use crate::consts::XLR_INFO_MASK;

/// `rm_identify` of the rmgrs without a module of their own. `None` for unknown rmgrs.
pub fn identify(rmid: u8, info: u8) -> Option<&'static str> {
    let op = info & !XLR_INFO_MASK;
    let names: &[(u8, &'static str)] = match rmid {
        RM_TBLSPC_ID => &[(0x00, "CREATE"), (0x10, "DROP")],
        RM_HASH_ID => &[
            (0x00, "INIT_META_PAGE"),
            (0x10, "INIT_BITMAP_PAGE"),
            (0x20, "INSERT"),
            (0x30, "ADD_OVFL_PAGE"),
            (0x40, "SPLIT_ALLOCATE_PAGE"),
            (0x50, "SPLIT_PAGE"),
            (0x60, "SPLIT_COMPLETE"),
            (0x70, "MOVE_PAGE_CONTENTS"),
            (0x80, "SQUEEZE_PAGE"),
            (0x90, "DELETE"),
            (0xA0, "SPLIT_CLEANUP"),
            (0xB0, "UPDATE_META_PAGE"),
            (0xC0, "VACUUM_ONE_PAGE"),
        ],
        RM_GIN_ID => &[
            (0x10, "CREATE_PTREE"),
            (0x20, "INSERT"),
            (0x30, "SPLIT"),
            (0x40, "VACUUM_PAGE"),
            (0x50, "DELETE_PAGE"),
            (0x60, "UPDATE_META_PAGE"),
            (0x70, "INSERT_LISTPAGE"),
            (0x80, "DELETE_LISTPAGE"),
            (0x90, "VACUUM_DATA_LEAF_PAGE"),
        ],
        RM_GIST_ID => &[
            (0x00, "PAGE_UPDATE"),
            (0x10, "DELETE"),
            (0x20, "PAGE_REUSE"),
            (0x30, "PAGE_SPLIT"),
            (0x60, "PAGE_DELETE"),
            (0x70, "ASSIGN_LSN"),
        ],
        RM_SPGIST_ID => &[
            (0x10, "ADD_LEAF"),
            (0x20, "MOVE_LEAFS"),
            (0x30, "ADD_NODE"),
            (0x40, "SPLIT_TUPLE"),
            (0x50, "PICKSPLIT"),
            (0x60, "VACUUM_LEAF"),
            (0x70, "VACUUM_ROOT"),
            (0x80, "VACUUM_REDIRECT"),
        ],
        RM_BRIN_ID => &[
            (0x00, "CREATE_INDEX"),
            (0x10, "INSERT"),
            (0x90, "INSERT+INIT"),
            (0x20, "UPDATE"),
            (0xA0, "UPDATE+INIT"),
            (0x30, "SAMEPAGE_UPDATE"),
            (0x40, "REVMAP_EXTEND"),
            (0x50, "DESUMMARIZE"),
        ],
        RM_COMMIT_TS_ID => &[(0x00, "ZEROPAGE"), (0x10, "TRUNCATE")],
        RM_REPLORIGIN_ID => &[(0x00, "SET"), (0x10, "DROP")],
        // generic_identify names every record "Generic".
        RM_GENERIC_ID => return Some("Generic"),
        RM_LOGICALMSG_ID => &[(0x00, "MESSAGE")],
        _ => &[],
    };
    names.iter().find(|(v, _)| *v == op).map(|(_, n)| *n)
}

/// A short description in the style of the rmgr's `rm_desc`: what PostgreSQL 15 prints from
/// the main data (Generic records, Gin posting-list recompression details and Gin insert
/// payloads of data pages are left out).
pub fn describe(rmid: u8, rec: &DecodedRecord, out: &mut String) -> Result<(), RmgrError> {
    let op = rec.header.info & !XLR_INFO_MASK;
    let data = &rec.main_data_bytes();
    match (rmid, op) {
        (RM_TBLSPC_ID, 0x00) => {
            let mut r = Reader::new(data, "Tablespace/CREATE");
            let ts_id = r.u32("ts_id")?;
            let path = r.cstring("ts_path")?;
            let _ = write!(out, "{ts_id} \"{path}\"");
        }
        (RM_TBLSPC_ID, 0x10) => {
            let mut r = Reader::new(data, "Tablespace/DROP");
            let _ = write!(out, "{}", r.u32("ts_id")?);
        }
        (RM_HASH_ID, 0x00) => {
            let mut r = Reader::new(data, "Hash/INIT_META_PAGE");
            let num_tuples = f64::from_bits(r.u64("num_tuples")?);
            r.skip(4, "procid")?;
            let ffactor = r.u16("ffactor")?;
            let _ = write!(
                out,
                "num_tuples {}, fillfactor {}",
                fmt_g(num_tuples),
                ffactor
            );
        }
        (RM_HASH_ID, 0x10) => {
            let mut r = Reader::new(data, "Hash/INIT_BITMAP_PAGE");
            let _ = write!(out, "bmsize {}", r.u16("bmsize")?);
        }
        (RM_HASH_ID, 0x20) => {
            let mut r = Reader::new(data, "Hash/INSERT");
            let _ = write!(out, "off {}", r.u16("offnum")?);
        }
        (RM_HASH_ID, _) => hash_desc(op, data, out)?,
        (RM_GIN_ID, _) => gin_desc(op, rec, out)?,
        (RM_GIST_ID, _) => gist_desc(op, data, out)?,
        (RM_SPGIST_ID, _) => spgist_desc(op, data, out)?,
        (RM_BRIN_ID, _) => brin_desc(op, data, out)?,
        (RM_COMMIT_TS_ID, 0x00) => {
            let mut r = Reader::new(data, "CommitTs/ZEROPAGE");
            let _ = write!(out, "{}", r.i32("pageno")?);
        }
        (RM_COMMIT_TS_ID, 0x10) => {
            let mut r = Reader::new(data, "CommitTs/TRUNCATE");
            let pageno = r.i32("pageno")?;
            let oldest_xid = r.u32("oldestXid")?;
            let _ = write!(out, "pageno {pageno}, oldestXid {oldest_xid}");
        }
        (RM_REPLORIGIN_ID, 0x00) => {
            let mut r = Reader::new(data, "ReplicationOrigin/SET");
            let remote_lsn = r.u64("remote_lsn")?;
            let node_id = r.u16("node_id")?;
            let force = r.u8("force")?;
            let _ = write!(
                out,
                "set {}; lsn {}; force: {}",
                node_id,
                fmt_lsn(remote_lsn),
                force
            );
        }
        (RM_REPLORIGIN_ID, 0x10) => {
            let mut r = Reader::new(data, "ReplicationOrigin/DROP");
            let _ = write!(out, "drop {}", r.u16("node_id")?);
        }
        (RM_LOGICALMSG_ID, 0x00) => {
            let mut r = Reader::new(data, "LogicalMessage/MESSAGE");
            r.skip(4, "dbId")?;
            let transactional = r.bool("transactional")?;
            r.skip(3, "padding")?;
            let prefix_size = r.u64("prefix_size")?;
            let message_size = r.u64("message_size")?;
            let prefix = r.bytes(usize::try_from(prefix_size).unwrap_or(usize::MAX), "prefix")?;
            let message = r.bytes(
                usize::try_from(message_size).unwrap_or(usize::MAX),
                "message",
            )?;
            let _ = write!(
                out,
                "{}, prefix \"{}\"; payload ({} bytes): ",
                if transactional {
                    "transactional"
                } else {
                    "non-transactional"
                },
                util::c_str_lossy(&prefix),
                message_size
            );
            for (i, b) in message.iter().enumerate() {
                let _ = write!(out, "{}{:02X}", if i == 0 { "" } else { " " }, b);
            }
        }
        _ => {}
    }
    Ok(())
}

fn tf(b: bool) -> char {
    if b {
        'T'
    } else {
        'F'
    }
}

/// `hash_desc` for the records not handled inline.
fn hash_desc(op: u8, data: &Bytes, out: &mut String) -> Result<(), RmgrError> {
    match op {
        0x30 => {
            let mut r = Reader::new(data, "Hash/ADD_OVFL_PAGE");
            let bmsize = r.u16("bmsize")?;
            let found = r.bool("bmpage_found")?;
            let _ = write!(out, "bmsize {}, bmpage_found {}", bmsize, tf(found));
        }
        0x40 => {
            let mut r = Reader::new(data, "Hash/SPLIT_ALLOCATE_PAGE");
            let new_bucket = r.u32("new_bucket")?;
            r.skip(4, "bucket flags")?;
            let flags = r.u8("flags")?;
            let _ = write!(
                out,
                "new_bucket {}, meta_page_masks_updated {}, issplitpoint_changed {}",
                new_bucket,
                tf(flags & 0x01 != 0),
                tf(flags & 0x02 != 0)
            );
        }
        0x60 => {
            let mut r = Reader::new(data, "Hash/SPLIT_COMPLETE");
            let old = r.u16("old_bucket_flag")?;
            let new = r.u16("new_bucket_flag")?;
            let _ = write!(out, "old_bucket_flag {old}, new_bucket_flag {new}");
        }
        0x70 => {
            let mut r = Reader::new(data, "Hash/MOVE_PAGE_CONTENTS");
            let ntups = r.u16("ntups")?;
            let same = r.bool("is_prim_bucket_same_wrt_bucket")?;
            let _ = write!(out, "ntups {}, is_primary {}", ntups, tf(same));
        }
        0x80 => {
            let mut r = Reader::new(data, "Hash/SQUEEZE_PAGE");
            let prev = r.u32("prevblkno")?;
            let next = r.u32("nextblkno")?;
            let ntups = r.u16("ntups")?;
            let same = r.bool("is_prim_bucket_same_wrt_bucket")?;
            let _ = write!(
                out,
                "prevblkno {}, nextblkno {}, ntups {}, is_primary {}",
                prev,
                next,
                ntups,
                tf(same)
            );
        }
        0x90 => {
            let mut r = Reader::new(data, "Hash/DELETE");
            let clear = r.bool("clear_dead_marking")?;
            let primary = r.bool("is_primary_bucket_page")?;
            let _ = write!(
                out,
                "clear_dead_marking {}, is_primary {}",
                tf(clear),
                tf(primary)
            );
        }
        0xB0 => {
            let mut r = Reader::new(data, "Hash/UPDATE_META_PAGE");
            let ntuples = f64::from_bits(r.u64("ntuples")?);
            let _ = write!(out, "ntuples {}", fmt_g(ntuples));
        }
        0xC0 => {
            let mut r = Reader::new(data, "Hash/VACUUM_ONE_PAGE");
            let xid = r.u32("latestRemovedXid")?;
            let ntuples = r.i32("ntuples")?;
            let _ = write!(out, "ntuples {ntuples}, latestRemovedXid {xid}");
        }
        _ => {}
    }
    Ok(())
}

/// `gin_desc`, except the posting-list details of data-leaf recompression.
fn gin_desc(op: u8, rec: &DecodedRecord, out: &mut String) -> Result<(), RmgrError> {
    const ISDATA: u16 = 0x01;
    const ISLEAF: u16 = 0x02;
    const SPLIT_ROOT: u16 = 0x04;
    let data = &rec.main_data_bytes();
    match op {
        0x20 => {
            let mut r = Reader::new(data, "Gin/INSERT");
            let flags = r.u16("flags")?;
            let _ = write!(
                out,
                "isdata: {} isleaf: {}",
                tf(flags & ISDATA != 0),
                tf(flags & ISLEAF != 0)
            );
            if flags & ISLEAF == 0 {
                let hi = r.u16("left child")? as u32;
                let lo = r.u16("left child")? as u32;
                let hi2 = r.u16("right child")? as u32;
                let lo2 = r.u16("right child")? as u32;
                let _ = write!(out, " children: {}/{}", hi << 16 | lo, hi2 << 16 | lo2);
            }
            match rec.block(0) {
                Some(b) if b.image.is_some() => out.push_str(if b.applies_image() {
                    " (full page image)"
                } else {
                    " (full page image, for WAL verification)"
                }),
                Some(b) if flags & ISDATA == 0 => {
                    let is_delete = rec.block_data(b).get(2).copied().unwrap_or(0) != 0;
                    let _ = write!(out, " isdelete: {}", tf(is_delete));
                }
                Some(b) if flags & ISLEAF != 0 => desc_recompress_leaf(rec.block_data(b), out),
                Some(b) => {
                    // ginxlogInsertDataInternal: offset, then PostingItem (child, key).
                    let w = |i: usize| {
                        rec.block_data(b)
                            .get(i..i + 2)
                            .map_or(0, |x| u16::from_le_bytes([x[0], x[1]]) as u32)
                    };
                    let _ = write!(
                        out,
                        " pitem: {}-{}/{}",
                        w(2) << 16 | w(4),
                        w(6) << 16 | w(8),
                        w(10)
                    );
                }
                None => {}
            }
        }
        0x90 => match rec.block(0) {
            Some(b) if b.image.is_some() => out.push_str(if b.applies_image() {
                " (full page image)"
            } else {
                " (full page image, for WAL verification)"
            }),
            Some(b) => desc_recompress_leaf(rec.block_data(b), out),
            None => {}
        },
        0x30 => {
            let mut r = Reader::new(data, "Gin/SPLIT");
            r.skip(24, "node, rrlink and children")?;
            let flags = r.u16("flags")?;
            let _ = write!(
                out,
                "isrootsplit: {} isdata: {} isleaf: {}",
                tf(flags & SPLIT_ROOT != 0),
                tf(flags & ISDATA != 0),
                tf(flags & ISLEAF != 0)
            );
        }
        0x80 => {
            let mut r = Reader::new(data, "Gin/DELETE_LISTPAGE");
            r.skip(56, "metadata")?;
            let _ = write!(out, "ndeleted: {}", r.i32("ndeleted")?);
        }
        _ => {}
    }
    Ok(())
}

/// `desc_recompress_leaf` of gindesc.c over a `ginxlogRecompressDataLeaf`; stops quietly where
/// the data runs out.
fn desc_recompress_leaf(data: &[u8], out: &mut String) {
    let u16_at = |i: usize| data.get(i..i + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let Some(nactions) = u16_at(0) else { return };
    let _ = write!(out, " {nactions} segments:");
    let mut pos = 2usize;
    for _ in 0..nactions {
        let (Some(&segno), Some(&action)) = (data.get(pos), data.get(pos + 1)) else {
            return;
        };
        pos += 2;
        let mut nitems = 0u16;
        match action {
            // GIN_SEGMENT_INSERT / GIN_SEGMENT_REPLACE: a GinPostingList, SHORTALIGNed.
            2 | 3 => {
                let Some(nbytes) = u16_at(pos + 6) else {
                    return;
                };
                let size = 8 + nbytes as usize;
                pos += size + (size & 1);
            }
            // GIN_SEGMENT_ADDITEMS: a count and that many item pointers.
            4 => {
                let Some(n) = u16_at(pos) else { return };
                nitems = n;
                pos += 2 + 6 * n as usize;
            }
            _ => {}
        }
        let _ = match action {
            4 => write!(out, " {segno} (add {nitems} items)"),
            1 => write!(out, " {segno} (delete)"),
            2 => write!(out, " {segno} (insert)"),
            3 => write!(out, " {segno} (replace)"),
            _ => {
                let _ = write!(out, " {segno} unknown action {action} ???");
                return;
            }
        };
    }
}

/// `gist_desc`.
fn gist_desc(op: u8, data: &Bytes, out: &mut String) -> Result<(), RmgrError> {
    match op {
        0x10 => {
            let mut r = Reader::new(data, "Gist/DELETE");
            let xid = r.u32("latestRemovedXid")?;
            let n = r.u16("ntodelete")?;
            let _ = write!(out, "delete: latestRemovedXid {xid}, nitems: {n}");
        }
        0x20 => {
            let mut r = Reader::new(data, "Gist/PAGE_REUSE");
            let node = r.rel("node")?;
            let block = r.u32("block")?;
            let xid = r.u64("latestRemovedFullXid")?;
            let _ = write!(
                out,
                "rel {}/{}/{}; blk {}; latestRemovedXid {}:{}",
                node.spc,
                node.db,
                node.rel,
                block,
                xid >> 32,
                xid as u32
            );
        }
        0x30 => {
            let mut r = Reader::new(data, "Gist/PAGE_SPLIT");
            r.skip(18, "origrlink, orignsn, origleaf")?;
            let _ = write!(out, "page_split: splits to {} pages", r.u16("npage")?);
        }
        0x60 => {
            let mut r = Reader::new(data, "Gist/PAGE_DELETE");
            let xid = r.u64("deleteXid")?;
            let downlink = r.u16("downlinkOffset")?;
            let _ = write!(
                out,
                "deleteXid {}:{}; downlink {}",
                xid >> 32,
                xid as u32,
                downlink
            );
        }
        _ => {}
    }
    Ok(())
}

/// `spg_desc`.
fn spgist_desc(op: u8, data: &Bytes, out: &mut String) -> Result<(), RmgrError> {
    match op {
        0x10 => {
            let mut r = Reader::new(data, "SPGist/ADD_LEAF");
            let new_page = r.bool("newPage")?;
            let nulls = r.bool("storesNulls")?;
            let leaf = r.u16("offnumLeaf")?;
            let head = r.u16("offnumHeadLeaf")?;
            let parent = r.u16("offnumParent")?;
            let node = r.u16("nodeI")?;
            let _ = write!(
                out,
                "off: {leaf}, headoff: {head}, parentoff: {parent}, nodeI: {node}"
            );
            if new_page {
                out.push_str(" (newpage)");
            }
            if nulls {
                out.push_str(" (nulls)");
            }
        }
        0x20 => {
            let mut r = Reader::new(data, "SPGist/MOVE_LEAFS");
            let nmoves = r.u16("nMoves")?;
            let new_page = r.bool("newPage")?;
            let replace_dead = r.bool("replaceDead")?;
            let nulls = r.bool("storesNulls")?;
            r.skip(1, "padding")?;
            let parent = r.u16("offnumParent")?;
            let node = r.u16("nodeI")?;
            let _ = write!(out, "nmoves: {nmoves}, parentoff: {parent}, nodeI: {node}");
            if new_page {
                out.push_str(" (newpage)");
            }
            if replace_dead {
                out.push_str(" (replacedead)");
            }
            if nulls {
                out.push_str(" (nulls)");
            }
        }
        0x30 => {
            let mut r = Reader::new(data, "SPGist/ADD_NODE");
            let off = r.u16("offnum")?;
            let new_off = r.u16("offnumNew")?;
            let new_page = r.bool("newPage")?;
            let parent_blk = r.u8("parentBlk")? as i8;
            let parent = r.u16("offnumParent")?;
            let node = r.u16("nodeI")?;
            let _ = write!(
                out,
                "off: {off}, newoff: {new_off}, parentBlk: {parent_blk}, parentoff: {parent}, nodeI: {node}"
            );
            if new_page {
                out.push_str(" (newpage)");
            }
        }
        0x40 => {
            let mut r = Reader::new(data, "SPGist/SPLIT_TUPLE");
            let prefix = r.u16("offnumPrefix")?;
            let postfix = r.u16("offnumPostfix")?;
            let new_page = r.bool("newPage")?;
            let postfix_same = r.bool("postfixBlkSame")?;
            let _ = write!(out, "prefixoff: {prefix}, postfixoff: {postfix}");
            if new_page {
                out.push_str(" (newpage)");
            }
            if postfix_same {
                out.push_str(" (same)");
            }
        }
        0x50 => {
            let mut r = Reader::new(data, "SPGist/PICKSPLIT");
            let root = r.bool("isRootSplit")?;
            r.skip(1, "padding")?;
            let ndelete = r.u16("nDelete")?;
            let ninsert = r.u16("nInsert")?;
            r.skip(2, "initSrc, initDest")?;
            let inner = r.u16("offnumInner")?;
            r.skip(1, "initInner")?;
            let nulls = r.bool("storesNulls")?;
            let inner_is_parent = r.bool("innerIsParent")?;
            r.skip(1, "padding")?;
            let parent = r.u16("offnumParent")?;
            let node = r.u16("nodeI")?;
            let _ = write!(
                out,
                "ndelete: {ndelete}, ninsert: {ninsert}, inneroff: {inner}, parentoff: {parent}, nodeI: {node}"
            );
            if inner_is_parent {
                out.push_str(" (innerIsParent)");
            }
            if nulls {
                out.push_str(" (nulls)");
            }
            if root {
                out.push_str(" (isRootSplit)");
            }
        }
        0x60 => {
            let mut r = Reader::new(data, "SPGist/VACUUM_LEAF");
            let ndead = r.u16("nDead")?;
            let nplaceholder = r.u16("nPlaceholder")?;
            let nmove = r.u16("nMove")?;
            let nchain = r.u16("nChain")?;
            let _ = write!(
                out,
                "ndead: {ndead}, nplaceholder: {nplaceholder}, nmove: {nmove}, nchain: {nchain}"
            );
        }
        0x70 => {
            let mut r = Reader::new(data, "SPGist/VACUUM_ROOT");
            let _ = write!(out, "ndelete: {}", r.u16("nDelete")?);
        }
        0x80 => {
            let mut r = Reader::new(data, "SPGist/VACUUM_REDIRECT");
            let n = r.u16("nToPlaceholder")?;
            let first = r.u16("firstPlaceholder")?;
            let xid = r.u32("newestRedirectXid")?;
            let _ = write!(
                out,
                "ntoplaceholder: {n}, firstplaceholder: {first}, newestredirectxid: {xid}"
            );
        }
        _ => {}
    }
    Ok(())
}

/// `brin_desc` (the init bit is ignored).
fn brin_desc(op: u8, data: &Bytes, out: &mut String) -> Result<(), RmgrError> {
    match op & 0x70 {
        0x00 => {
            let mut r = Reader::new(data, "BRIN/CREATE_INDEX");
            let pages_per_range = r.u32("pagesPerRange")?;
            let version = r.u16("version")?;
            let _ = write!(out, "v{version} pagesPerRange {pages_per_range}");
        }
        0x10 => {
            let mut r = Reader::new(data, "BRIN/INSERT");
            let heap_blk = r.u32("heapBlk")?;
            let ppr = r.u32("pagesPerRange")?;
            let off = r.u16("offnum")?;
            let _ = write!(out, "heapBlk {heap_blk} pagesPerRange {ppr} offnum {off}");
        }
        0x20 => {
            let mut r = Reader::new(data, "BRIN/UPDATE");
            let old = r.u16("oldOffnum")?;
            r.skip(2, "padding")?;
            let heap_blk = r.u32("heapBlk")?;
            let ppr = r.u32("pagesPerRange")?;
            let off = r.u16("offnum")?;
            let _ = write!(
                out,
                "heapBlk {heap_blk} pagesPerRange {ppr} old offnum {old}, new offnum {off}"
            );
        }
        0x30 => {
            let mut r = Reader::new(data, "BRIN/SAMEPAGE_UPDATE");
            let _ = write!(out, "offnum {}", r.u16("offnum")?);
        }
        0x40 => {
            let mut r = Reader::new(data, "BRIN/REVMAP_EXTEND");
            let _ = write!(out, "targetBlk {}", r.u32("targetBlk")?);
        }
        0x50 => {
            let mut r = Reader::new(data, "BRIN/DESUMMARIZE");
            let ppr = r.u32("pagesPerRange")?;
            let heap_blk = r.u32("heapBlk")?;
            let off = r.u16("regOffset")?;
            let _ = write!(
                out,
                "pagesPerRange {ppr}, heapBlk {heap_blk}, page offset {off}"
            );
        }
        _ => {}
    }
    Ok(())
}

/// C's `%g` for the values hash indexes log (tuple counts): integers below 1e6 print plainly;
/// larger or fractional values use six significant digits.
fn fmt_g(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    if (-4..6).contains(&exp) {
        let decimals = (5 - exp).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        let s = format!("{v:.5e}");
        let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
        let mant = if mant.contains('.') {
            mant.trim_end_matches('0').trim_end_matches('.')
        } else {
            mant
        };
        let e: i32 = e.parse().unwrap_or(0);
        format!("{}e{}{:02}", mant, if e < 0 { '-' } else { '+' }, e.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::{record, Buf};

    #[test]
    fn identify_tables() {
        assert_eq!(identify(RM_TBLSPC_ID, 0x10), Some("DROP"));
        assert_eq!(identify(RM_HASH_ID, 0xC0), Some("VACUUM_ONE_PAGE"));
        assert_eq!(identify(RM_HASH_ID, 0xD0), None);
        assert_eq!(identify(RM_GIN_ID, 0x00), None);
        assert_eq!(identify(RM_GIN_ID, 0x90), Some("VACUUM_DATA_LEAF_PAGE"));
        assert_eq!(identify(RM_GIST_ID, 0x40), None);
        assert_eq!(identify(RM_GIST_ID, 0x60), Some("PAGE_DELETE"));
        assert_eq!(identify(RM_SPGIST_ID, 0x00), None);
        assert_eq!(identify(RM_SPGIST_ID, 0x80), Some("VACUUM_REDIRECT"));
        assert_eq!(identify(RM_BRIN_ID, 0x90), Some("INSERT+INIT"));
        assert_eq!(identify(RM_BRIN_ID, 0xA0), Some("UPDATE+INIT"));
        assert_eq!(identify(RM_BRIN_ID, 0xB0), None);
        assert_eq!(identify(RM_COMMIT_TS_ID, 0x20), None);
        assert_eq!(identify(RM_REPLORIGIN_ID, 0x00), Some("SET"));
        assert_eq!(identify(RM_GENERIC_ID, 0x70), Some("Generic"));
        assert_eq!(identify(RM_LOGICALMSG_ID, 0x01), Some("MESSAGE"));
        assert_eq!(identify(200, 0x00), None);
    }

    #[test]
    fn logical_message_and_hash() {
        let data = Buf::new()
            .u32(5)
            .u8(1)
            .pad_to(8)
            .u64(4)
            .u64(5)
            .bytes(b"pfx\0hello")
            .build();
        let rec = record(RM_LOGICALMSG_ID, 0x00, data, None);
        assert_eq!(
            describe_rec(&rec),
            "transactional, prefix \"pfx\"; payload (5 bytes): 68 65 6C 6C 6F"
        );
        let data = Buf::new().f64(1715.0).u32(450).u16(307).build();
        let rec = record(RM_HASH_ID, 0x00, data, None);
        assert_eq!(describe_rec(&rec), "num_tuples 1715, fillfactor 307");
        let rec = record(RM_HASH_ID, 0x00, Bytes::from_static(&[1, 2]), None);
        assert!(describe_rec(&rec).starts_with("<error: Hash/INIT_META_PAGE"));
        assert_eq!(fmt_g(1234567.0), "1.23457e+06");
        assert_eq!(fmt_g(0.5), "0.5");
    }

    fn describe_rec(rec: &DecodedRecord) -> String {
        crate::rmgr::describe(rec)
    }
}
