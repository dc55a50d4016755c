//! The end state of a replay against Postgres's own files: after a clean shutdown the data
//! directory holds every page as the server last had it. Pages whose last writer was a
//! natively redone record are compared with the file's block, masked with that rmgr's mask;
//! visibility-map pages are compared bit for bit (only LSN and checksum masked), which checks
//! the VM bits heap records cleared outside their block references.
//!
//! Two differences are Postgres's own and are classified, not counted as differing:
//! - Sequence pages: `nextval` logs `SEQ_LOG_VALS` values ahead and changes the page without
//!   WAL in between, so the file holds an older state than the last record. Not compared.
//! - VM pages of a database created with `STRATEGY wal_log`: PG15 logs every copied block as
//!   a standard page (`log_newpage_buffer(.., true)`), so a VM page's bitmap lies in the
//!   "hole" and is not in the WAL; any replay, Postgres's included, has those bits clear.
//!   Counted in `vm_bits_lost_by_wal_log_copy` when replay's bits are a subset of the file's.

use std::path::Path;

use walproto::consts::VISIBILITYMAP_FORKNUM;
use walproto::rmgr::{
    RM_BRIN_ID, RM_BTREE_ID, RM_GENERIC_ID, RM_GIN_ID, RM_GIST_ID, RM_HASH_ID, RM_HEAP2_ID,
    RM_HEAP_ID, RM_SPGIST_ID,
};

use super::store::{PageKey, PageStore};
use super::{diff, mask, page};

/// Counts of the end-state comparison.
#[derive(Clone, Debug, Default)]
pub struct DataDirReport {
    /// Pages compared and equal (masked).
    pub equal: u64,
    /// Of which visibility-map pages compared bit for bit.
    pub vm_equal: u64,
    pub differing: u64,
    /// VM pages of `STRATEGY wal_log` databases missing bits the primary has (see above).
    pub vm_bits_lost_by_wal_log_copy: u64,
    /// Pages whose relation or block no longer exists in the data directory.
    pub gone: u64,
    /// Pages last written by a non-native record or a full-page image: not compared.
    pub skipped: u64,
    /// The first differences, described.
    pub problems: Vec<String>,
}

/// Compares the replayed pages of `store` with the blocks in `data_dir`.
pub fn compare_with_data_dir(
    store: &PageStore,
    data_dir: &Path,
    max_reported: usize,
) -> std::io::Result<DataDirReport> {
    let disk = PageStore::new(data_dir);
    let mut rep = DataDirReport::default();
    for (key, ours) in store.pages() {
        let Some(rmid) = store.writer(key) else {
            rep.skipped += 1;
            continue;
        };
        compare_page(
            &mut rep,
            &disk,
            key,
            ours,
            rmid,
            store.is_wal_log_db(key.0.spc, key.0.db),
            max_reported,
        )?;
    }
    Ok(rep)
}

/// Compares one page (`ours`, last written by a record of resource manager `rmid`) with the
/// block in the data directory read through `disk`, and counts the outcome in `rep`.
/// `wal_log_db`: the page's database was created with `STRATEGY wal_log`.
pub fn compare_page(
    rep: &mut DataDirReport,
    disk: &PageStore,
    key: &PageKey,
    ours: &page::Page,
    rmid: u8,
    wal_log_db: bool,
    max_reported: usize,
) -> std::io::Result<()> {
    let vm_page = key.1 == VISIBILITYMAP_FORKNUM;
    let comparable = matches!(
        rmid,
        RM_HEAP_ID
            | RM_HEAP2_ID
            | RM_BTREE_ID
            | RM_HASH_ID
            | RM_GIN_ID
            | RM_GIST_ID
            | RM_SPGIST_ID
            | RM_BRIN_ID
            | RM_GENERIC_ID
    );
    if !vm_page && !comparable {
        rep.skipped += 1;
        return Ok(());
    }
    let Some(theirs) = disk.get(key)? else {
        rep.gone += 1;
        return Ok(());
    };
    let (mut a, mut b) = (Box::new(*ours), theirs);
    if vm_page {
        mask::mask_page_lsn_and_checksum(&mut a);
        mask::mask_page_lsn_and_checksum(&mut b);
    } else {
        mask::mask_for_rmgr(rmid, &mut a, key.2);
        mask::mask_for_rmgr(rmid, &mut b, key.2);
    }
    if a == b {
        rep.equal += 1;
        if vm_page {
            rep.vm_equal += 1;
        }
    } else if vm_page
        && wal_log_db
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
        if rep.problems.len() < max_reported {
            rep.problems.push(describe(key, rmid, &a, &b));
        }
    }
    Ok(())
}

fn describe(key: &PageKey, rmid: u8, ours: &page::Page, theirs: &page::Page) -> String {
    format!(
        "{} fork {} blk {} (last written by rmgr {rmid}) differs from the data directory:\n{}",
        key.0,
        key.1,
        key.2,
        diff::describe(ours, theirs, 8)
    )
}
