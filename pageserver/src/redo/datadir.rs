//! The end state of a replay against Postgres's own files: after a clean shutdown the data
//! directory holds every page as the server last had it. Every block of every relation fork
//! on either side is accounted for: compared (masked), or skipped for a named reason.
//!
//! Which mask: the resource manager of the record that last wrote the page when that is an
//! access method's record; otherwise (a full-page image, an imported page, a page replay never
//! touched) the page's own layout says which access method it belongs to ([`rmgr_of_page`]).
//! Visibility-map pages are compared bit for bit (only LSN and checksum masked), which checks
//! the VM bits heap records cleared outside their block references.
//!
//! Skipped, each with its own counter, because Postgres itself does not WAL-log them:
//! - FSM pages: free-space-map changes are never logged (only an occasional hint image).
//! - Sequence pages: `nextval` logs `SEQ_LOG_VALS` values ahead and changes the page without
//!   WAL in between, so the file holds an older state than the last record.
//! - The main, FSM and VM forks of unlogged relations (those with an init fork): only the
//!   init fork is logged. Init forks themselves are compared.
//! - Temporary relation files (`t<backend>_<relfilenode>`): never logged.
//!
//! Masked further than `rm_mask`: the SP-GiST metapage's last-used-pages cache, which
//! `SpGistUpdateMetaPage` writes without WAL (a hint for where to insert); its magic number is
//! compared.
//!
//! Classified, not counted as differing:
//! - VM pages of a database created with `STRATEGY wal_log`: PG15 logs every copied block as
//!   a standard page (`log_newpage_buffer(.., true)`), so a VM page's bitmap lies in the
//!   "hole" and is not in the WAL; any replay, Postgres's included, has those bits clear.
//!   Counted in `vm_bits_lost_by_wal_log_copy` when replay's bits are a subset of the file's.
//! - Empty blocks only in the data directory: relation extension writes all-zero blocks
//!   without WAL (bulk heap extension, hash bucket allocation), and the visibility map is
//!   extended with initialized, empty pages without WAL.
//! - Pages only on the replay side (`gone`): relations dropped, blocks truncated, or pages
//!   never written out.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

use walproto::consts::{BLCKSZ, FSM_FORKNUM, INIT_FORKNUM, VISIBILITYMAP_FORKNUM};
use walproto::record::RelFileNode;
use walproto::rmgr::{
    RM_BRIN_ID, RM_BTREE_ID, RM_GENERIC_ID, RM_GIN_ID, RM_GIST_ID, RM_HASH_ID, RM_HEAP2_ID,
    RM_HEAP_ID, RM_SEQ_ID, RM_SPGIST_ID, RM_XLOG_ID,
};

use super::store::{scan_rel_files, PageKey, PageStore, RelFiles};
use super::{diff, mask, page};

/// Counts of the end-state comparison.
#[derive(Clone, Debug, Default)]
pub struct DataDirReport {
    /// Pages compared and equal (masked).
    pub equal: u64,
    /// Of which visibility-map pages compared bit for bit.
    pub vm_equal: u64,
    pub differing: u64,
    /// Of the compared pages: the mask came from the page's layout ([`rmgr_of_page`]), its
    /// last version being an image or a page replay never touched.
    pub by_layout: u64,
    /// Of the compared pages: never written by replay (the base's block against the final).
    pub untouched: u64,
    /// Of the compared pages: layout not recognized, compared with only LSN and checksum masked.
    pub unclassified: u64,
    /// VM pages of `STRATEGY wal_log` databases missing bits the primary has (see above).
    pub vm_bits_lost_by_wal_log_copy: u64,
    /// Empty blocks only in the data directory (extended without WAL): all zero, or a VM page
    /// with no bit set.
    pub empty_only_in_data_dir: u64,
    /// Pages whose relation or block no longer exists in the data directory.
    pub gone: u64,
    /// Pages not compared, all reasons (each also counted below).
    pub skipped: u64,
    pub skipped_fsm: u64,
    pub skipped_sequence: u64,
    pub skipped_unlogged: u64,
    /// Temporary relation files seen in the data directory (files, not pages).
    pub skipped_temp_files: u64,
    /// Relation forks with blocks on one side only.
    pub forks_only_in_data_dir: u64,
    pub forks_only_in_replay: u64,
    /// The first of those forks, named.
    pub one_sided: Vec<String>,
    /// The first differences, described.
    pub problems: Vec<String>,
}

impl DataDirReport {
    /// One line of counts, as `strata verify-redo` prints it.
    pub fn summary(&self) -> String {
        format!(
            "equal {} (VM {}), differing {}, VM bits lost by wal_log copy {}, gone {}, skipped {} \
             (FSM {}, sequence {}, unlogged {}; temp files {}); of the compared: by layout {}, \
             untouched by replay {}, unclassified {}; empty blocks only in the data directory {}; \
             forks only in the data directory {}, only in replay {}",
            self.equal,
            self.vm_equal,
            self.differing,
            self.vm_bits_lost_by_wal_log_copy,
            self.gone,
            self.skipped,
            self.skipped_fsm,
            self.skipped_sequence,
            self.skipped_unlogged,
            self.skipped_temp_files,
            self.by_layout,
            self.untouched,
            self.unclassified,
            self.empty_only_in_data_dir,
            self.forks_only_in_data_dir,
            self.forks_only_in_replay
        )
    }

    fn problem(&mut self, max: usize, text: impl FnOnce() -> String) {
        if self.problems.len() < max {
            self.problems.push(text());
        }
    }

    /// Counts a fork that has blocks on one side only, naming the first few.
    pub fn note_one_sided(
        &mut self,
        rel: RelFileNode,
        fork: u8,
        nblocks: u32,
        in_data_dir: bool,
        max: usize,
    ) {
        if in_data_dir {
            self.forks_only_in_data_dir += 1;
        } else {
            self.forks_only_in_replay += 1;
        }
        if self.one_sided.len() < max {
            let side = if in_data_dir {
                "data directory"
            } else {
                "replay"
            };
            self.one_sided.push(format!(
                "{rel} fork {fork}: {nblocks} blocks, only in the {side}"
            ));
        }
    }
}

/// What is known about the relation a block belongs to.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockContext {
    /// The relation has an init fork in the data directory.
    pub unlogged: bool,
    /// Its database was created with `STRATEGY wal_log`.
    pub wal_log_db: bool,
    /// The replay side's page is the base's, never written by replay.
    pub untouched: bool,
}

/// Access-method special-space page ids (the last two bytes of the page).
const HASHO_PAGE_ID: u16 = 0xFF80;
const GIST_PAGE_ID: u16 = 0xFF81;
const SPGIST_PAGE_ID: u16 = 0xFF82;
const BLOOM_PAGE_ID: u16 = 0xFF83;
const BRIN_PAGETYPE_META: u16 = 0xF091;
const BRIN_PAGETYPE_REGULAR: u16 = 0xF093;
const SEQ_MAGIC: u32 = 0x1717;

/// The resource manager whose `rm_mask` fits a relation page, from the page alone (the
/// relation's access method is not in the WAL): no special space is a heap page; a 16-byte
/// special space is hash's or GiST's when it ends with their page id, else b-tree's (whose
/// last field, the vacuum cycle id, stays below those ids); an 8-byte special space is a
/// sequence's (magic 0x1717 first), SP-GiST's or bloom's (page id last; bloom pages are
/// written by generic records), BRIN's (page type last), else GIN's (rightlink, maxoff, and
/// flags below 0x100). `None` for a new page or a layout none of these has. Visibility-map
/// and FSM pages are told by their fork, not here.
pub fn rmgr_of_page(p: &page::Page) -> Option<u8> {
    if page::is_new(p) {
        return None;
    }
    let special = page::special(p);
    let lower = page::lower(p);
    let upper = page::upper(p);
    if special > BLCKSZ || upper > special || lower > upper || lower < page::SIZE_OF_PAGE_HEADER {
        return None;
    }
    let last = u16::from_le_bytes([p[BLCKSZ - 2], p[BLCKSZ - 1]]);
    match BLCKSZ - special {
        0 => Some(RM_HEAP_ID),
        16 => Some(match last {
            HASHO_PAGE_ID => RM_HASH_ID,
            GIST_PAGE_ID => RM_GIST_ID,
            _ => RM_BTREE_ID,
        }),
        8 => {
            let first = u32::from_le_bytes(p[special..special + 4].try_into().ok()?);
            match last {
                _ if first == SEQ_MAGIC
                    && last == 0
                    && lower == page::SIZE_OF_PAGE_HEADER + page::ITEM_ID_SIZE =>
                {
                    Some(RM_SEQ_ID)
                }
                SPGIST_PAGE_ID => Some(RM_SPGIST_ID),
                BLOOM_PAGE_ID => Some(RM_GENERIC_ID),
                BRIN_PAGETYPE_META..=BRIN_PAGETYPE_REGULAR => Some(RM_BRIN_ID),
                f if f < 0x100 => Some(RM_GIN_ID),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `SPGIST_META` in the SP-GiST page opaque's flags (its first field).
const SPGIST_META: u16 = 1;

/// Zeroes an SP-GiST metapage's last-used-pages cache (after the 4-byte magic number, up to
/// pd_lower): Postgres updates it without WAL, so the data directory's copy is newer than any
/// replay's. Other pages are left alone.
fn mask_spgist_meta_cache(p: &mut page::Page) {
    let special = page::special(p);
    let is_meta = special + 2 <= BLCKSZ
        && u16::from_le_bytes([p[special], p[special + 1]]) & SPGIST_META != 0;
    let cache_start = page::SIZE_OF_PAGE_HEADER + 4;
    let cache_end = page::lower(p).min(special);
    if is_meta && cache_start < cache_end {
        p[cache_start..cache_end].fill(0);
    }
}

/// Resource managers whose records write access-method pages (their mask fits the page):
/// every natively redone one but XLOG, whose full-page images say nothing of the page's kind.
fn is_page_rmgr(rmid: u8) -> bool {
    rmid != RM_XLOG_ID && super::has_native_redo(rmid)
}

/// Compares every block of every relation fork of the replay (`store`: the base plus what
/// replay wrote) with the data directory `data_dir`.
pub fn compare_with_data_dir(
    store: &PageStore,
    data_dir: &Path,
    max_reported: usize,
) -> io::Result<DataDirReport> {
    let disk = PageStore::new(data_dir);
    let files = scan_rel_files(data_dir)?;
    let mut rep = DataDirReport::default();
    count_temp_files(&mut rep, &files);
    let ours = store.fork_sizes()?;
    for_each_fork(
        &mut rep,
        &ours,
        &files,
        max_reported,
        |rep, rel, fork, n| {
            let unlogged = files.is_unlogged(rel);
            for blk in 0..n {
                let key = (rel, fork, blk);
                if skip_by_fork(rep, fork, unlogged) {
                    continue;
                }
                let ctx = BlockContext {
                    unlogged,
                    wal_log_db: store.is_wal_log_db(rel.spc, rel.db),
                    untouched: !store.pages().contains_key(&key),
                };
                let a = store.get(&key)?;
                let b = disk.get(&key)?;
                compare_block(
                    rep,
                    &key,
                    a.as_deref(),
                    store.writer(&key),
                    b.as_deref(),
                    ctx,
                    max_reported,
                );
            }
            Ok::<(), io::Error>(())
        },
    )?;
    Ok(rep)
}

/// Counts the temporary relation files of the data directory as skipped.
pub fn count_temp_files(rep: &mut DataDirReport, files: &RelFiles) {
    rep.skipped_temp_files += files.temp_files;
}

/// Calls `f(rep, rel, fork, nblocks)` for every fork of either side with the larger of the
/// two sizes, after counting and naming the forks that have blocks on one side only.
pub fn for_each_fork<E>(
    rep: &mut DataDirReport,
    ours: &BTreeMap<(RelFileNode, u8), u32>,
    files: &RelFiles,
    max_reported: usize,
    mut f: impl FnMut(&mut DataDirReport, RelFileNode, u8, u32) -> Result<(), E>,
) -> Result<(), E> {
    let keys: BTreeSet<(RelFileNode, u8)> =
        ours.keys().chain(files.forks.keys()).copied().collect();
    for (rel, fork) in keys {
        let a = ours.get(&(rel, fork)).copied().unwrap_or(0);
        let b = files.forks.get(&(rel, fork)).copied().unwrap_or(0);
        // A fork Postgres does not log is not expected on the replay side.
        let unlogged_fork = fork == FSM_FORKNUM || (files.is_unlogged(rel) && fork != INIT_FORKNUM);
        if a == 0 && b > 0 && !unlogged_fork {
            rep.note_one_sided(rel, fork, b, true, max_reported);
        } else if b == 0 && a > 0 && !unlogged_fork {
            rep.note_one_sided(rel, fork, a, false, max_reported);
        }
        f(rep, rel, fork, a.max(b))?;
    }
    Ok(())
}

/// Skips (and counts) a block of a fork Postgres does not WAL-log; true if skipped.
pub fn skip_by_fork(rep: &mut DataDirReport, fork: u8, unlogged: bool) -> bool {
    if fork == FSM_FORKNUM {
        rep.skipped_fsm += 1;
    } else if unlogged && fork != INIT_FORKNUM {
        rep.skipped_unlogged += 1;
    } else {
        return false;
    }
    rep.skipped += 1;
    true
}

/// Compares one block: `ours` as replay left it (last written by a record of resource
/// manager `writer`, if known), `theirs` from the data directory; either may not exist.
pub fn compare_block(
    rep: &mut DataDirReport,
    key: &PageKey,
    ours: Option<&page::Page>,
    writer: Option<u8>,
    theirs: Option<&page::Page>,
    ctx: BlockContext,
    max_reported: usize,
) {
    if skip_by_fork(rep, key.1, ctx.unlogged) {
        return;
    }
    let (ours, theirs) = match (ours, theirs) {
        (Some(a), Some(b)) => (a, b),
        (Some(_), None) => {
            rep.gone += 1;
            return;
        }
        (None, Some(b))
            if b.iter().all(|&x| x == 0)
                || (key.1 == VISIBILITYMAP_FORKNUM
                    && b[page::SIZE_OF_PAGE_HEADER..].iter().all(|&x| x == 0)) =>
        {
            rep.empty_only_in_data_dir += 1;
            return;
        }
        (None, Some(b)) => {
            rep.differing += 1;
            rep.problem(max_reported, || {
                format!(
                    "{} fork {} blk {} exists only in the data directory (replay has no such \
                     block), which holds a page of kind {:?}",
                    key.0,
                    key.1,
                    key.2,
                    rmgr_of_page(b)
                )
            });
            return;
        }
        (None, None) => return,
    };
    let vm_page = key.1 == VISIBILITYMAP_FORKNUM;
    let by_writer = writer.filter(|&w| is_page_rmgr(w));
    let rmid = if vm_page {
        Some(RM_HEAP2_ID)
    } else {
        by_writer
            .or_else(|| rmgr_of_page(ours))
            .or_else(|| rmgr_of_page(theirs))
    };
    if rmid == Some(RM_SEQ_ID) || rmgr_of_page(theirs) == Some(RM_SEQ_ID) {
        rep.skipped_sequence += 1;
        rep.skipped += 1;
        return;
    }
    let (mut a, mut b) = (Box::new(*ours), Box::new(*theirs));
    match rmid {
        _ if vm_page => {
            mask::mask_page_lsn_and_checksum(&mut a);
            mask::mask_page_lsn_and_checksum(&mut b);
        }
        Some(r) => {
            mask::mask_for_rmgr(r, &mut a, key.2);
            mask::mask_for_rmgr(r, &mut b, key.2);
        }
        None => {
            mask::mask_page_lsn_and_checksum(&mut a);
            mask::mask_page_lsn_and_checksum(&mut b);
        }
    }
    if rmid == Some(RM_SPGIST_ID) {
        mask_spgist_meta_cache(&mut a);
        mask_spgist_meta_cache(&mut b);
    }
    let compared = |rep: &mut DataDirReport| {
        if !vm_page && by_writer.is_none() {
            if rmid.is_some() {
                rep.by_layout += 1;
            } else {
                rep.unclassified += 1;
            }
        }
        if ctx.untouched {
            rep.untouched += 1;
        }
    };
    if a == b {
        rep.equal += 1;
        if vm_page {
            rep.vm_equal += 1;
        }
        compared(rep);
    } else if vm_page
        && ctx.wal_log_db
        && a.iter()
            .zip(b.iter())
            .skip(page::SIZE_OF_PAGE_HEADER)
            .all(|(x, y)| x & !y == 0)
        && a[..page::SIZE_OF_PAGE_HEADER] == b[..page::SIZE_OF_PAGE_HEADER]
    {
        rep.vm_bits_lost_by_wal_log_copy += 1;
    } else if page::is_new(&b) && !page::is_new(&a) {
        // Never written out (e.g. a relation dropped before the shutdown checkpoint's
        // flush reached it): nothing on disk to compare with.
        rep.gone += 1;
    } else {
        rep.differing += 1;
        compared(rep);
        let how = match (by_writer, rmid) {
            (Some(w), _) => format!("last written by rmgr {w}"),
            (None, Some(r)) => format!("an image, masked as rmgr {r} by its layout"),
            (None, None) => "an image of unrecognized layout".to_string(),
        };
        let untouched = if ctx.untouched {
            ", never written by replay"
        } else {
            ""
        };
        rep.problem(max_reported, || {
            format!(
                "{} fork {} blk {} ({how}{untouched}) differs from the data directory:\n{}",
                key.0,
                key.1,
                key.2,
                diff::describe(&a, &b, 8)
            )
        });
    }
}

/// Compares one page (`ours`, last written by a record of resource manager `rmid`) with the
/// block in the data directory read through `disk`, and counts the outcome in `rep`.
/// `wal_log_db`: the page's database was created with `STRATEGY wal_log`. A `rmid` that is
/// not an access method's (XLOG's full-page images) leaves the mask to the page's layout.
pub fn compare_page(
    rep: &mut DataDirReport,
    disk: &PageStore,
    key: &PageKey,
    ours: &page::Page,
    rmid: u8,
    wal_log_db: bool,
    max_reported: usize,
) -> io::Result<()> {
    let theirs = disk.get(key)?;
    let ctx = BlockContext {
        wal_log_db,
        ..BlockContext::default()
    };
    compare_block(
        rep,
        key,
        Some(ours),
        Some(rmid),
        theirs.as_deref(),
        ctx,
        max_reported,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with_special(special_size: usize, tail: &[u8]) -> Box<page::Page> {
        let mut p = Box::new([0u8; BLCKSZ]);
        page::init(&mut p, special_size);
        let n = tail.len();
        p[BLCKSZ - n..].copy_from_slice(tail);
        p
    }

    #[test]
    fn layouts() {
        assert_eq!(rmgr_of_page(&[0u8; BLCKSZ]), None);
        assert_eq!(rmgr_of_page(&page_with_special(0, &[])), Some(RM_HEAP_ID));
        let bt = page_with_special(16, &[0, 0, 1, 0, 0x7f, 0xff]);
        assert_eq!(rmgr_of_page(&bt), Some(RM_BTREE_ID));
        let hash = page_with_special(16, &[0x80, 0xff]);
        assert_eq!(rmgr_of_page(&hash), Some(RM_HASH_ID));
        let gist = page_with_special(16, &[0x81, 0xff]);
        assert_eq!(rmgr_of_page(&gist), Some(RM_GIST_ID));
        let spg = page_with_special(8, &[0x82, 0xff]);
        assert_eq!(rmgr_of_page(&spg), Some(RM_SPGIST_ID));
        let bloom = page_with_special(8, &[0x83, 0xff]);
        assert_eq!(rmgr_of_page(&bloom), Some(RM_GENERIC_ID));
        for t in [0xF091u16, 0xF092, 0xF093] {
            let brin = page_with_special(8, &t.to_le_bytes());
            assert_eq!(rmgr_of_page(&brin), Some(RM_BRIN_ID));
        }
        // GIN: rightlink, maxoff, flags (leaf | compressed).
        let gin = page_with_special(8, &[5, 0, 0, 0, 3, 0, 0x82, 0]);
        assert_eq!(rmgr_of_page(&gin), Some(RM_GIN_ID));
        let mut seq = page_with_special(8, &[0x17, 0x17, 0, 0, 0, 0, 0, 0]);
        page::set_lower(&mut seq, page::SIZE_OF_PAGE_HEADER + page::ITEM_ID_SIZE);
        assert_eq!(rmgr_of_page(&seq), Some(RM_SEQ_ID));
        assert_eq!(rmgr_of_page(&page_with_special(24, &[])), None);
        assert_eq!(rmgr_of_page(&page_with_special(8, &[0xff, 0xfe])), None);
    }

    #[test]
    fn skips_name_their_reason() {
        let rel = RelFileNode {
            spc: 1663,
            db: 5,
            rel: 16384,
        };
        let p = page_with_special(0, &[]);
        let mut rep = DataDirReport::default();
        let ctx = BlockContext::default();
        compare_block(
            &mut rep,
            &(rel, FSM_FORKNUM, 0),
            Some(&p),
            None,
            Some(&p),
            ctx,
            5,
        );
        let unlogged = BlockContext {
            unlogged: true,
            ..ctx
        };
        compare_block(
            &mut rep,
            &(rel, 0, 0),
            Some(&p),
            None,
            Some(&p),
            unlogged,
            5,
        );
        compare_block(
            &mut rep,
            &(rel, INIT_FORKNUM, 0),
            Some(&p),
            None,
            Some(&p),
            unlogged,
            5,
        );
        assert_eq!(
            (rep.skipped_fsm, rep.skipped_unlogged, rep.skipped),
            (1, 1, 2)
        );
        assert_eq!((rep.equal, rep.by_layout), (1, 1));
        let mut other = p.clone();
        other[BLCKSZ - 100] = 1;
        compare_block(&mut rep, &(rel, 0, 1), None, None, Some(&other), ctx, 5);
        compare_block(
            &mut rep,
            &(rel, 0, 2),
            None,
            None,
            Some(&[0u8; BLCKSZ]),
            ctx,
            5,
        );
        compare_block(&mut rep, &(rel, 0, 3), Some(&p), None, None, ctx, 5);
        assert_eq!(
            (rep.differing, rep.empty_only_in_data_dir, rep.gone),
            (1, 1, 1)
        );
    }
}
