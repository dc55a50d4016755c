//! The read RPCs besides GetPage: relation size and existence, database size and SLRU
//! segments at an LSN. Each reads the stored directory values (`Key::db_dir`,
//! `Key::rel_dir`, `Key::rel_size`, the SLRU segment list) and pages through the timeline's
//! read path, the same one GetPage uses: a branch reads through to its ancestor as of the
//! branch point, and an LSN below the GC cutoff is refused.
//!
//! A fork exists when its database's relation list names it (a dropped database's list is
//! empty); its size is the `Key::rel_size` value.

use layer_format::{Key, Lsn, SlruKind};
use walproto::consts::BLCKSZ;
use walproto::record::RelFileNode;

use crate::ingest::nonpage::read::{slru_page_at, slru_segments};
use crate::ingest::reldir::{decode_db_dir, decode_rel_dir};
use crate::tenant::TenantError;
use crate::timeline::Timeline;

type Result<T> = std::result::Result<T, TenantError>;

fn read_err(what: String) -> impl FnOnce(crate::timeline::TimelineError) -> TenantError {
    TenantError::timeline(what)
}

fn malformed(key: Key, lsn: Lsn, what: &str) -> TenantError {
    TenantError::Timeline {
        context: format!("reading {what} at {lsn}"),
        source: Box::new(crate::timeline::TimelineError::Reconstruct {
            key,
            lsn,
            reason: format!("malformed {what} value"),
        }),
    }
}

/// The (spc, db) pairs holding relations at `lsn`.
pub fn databases(tl: &Timeline, lsn: Lsn) -> Result<Vec<(u32, u32)>> {
    let key = Key::db_dir();
    match tl
        .get_image_value(key, lsn)
        .map_err(read_err(format!("reading the database list at {lsn}")))?
    {
        Some(b) => decode_db_dir(&b).ok_or_else(|| malformed(key, lsn, "database list")),
        None => Ok(Vec::new()),
    }
}

/// The forks `(relnode, fork)` of database (`spc`, `db`) at `lsn`.
pub fn db_forks(tl: &Timeline, spc: u32, db: u32, lsn: Lsn) -> Result<Vec<(u32, u8)>> {
    let key = Key::rel_dir(spc, db);
    match tl.get_image_value(key, lsn).map_err(read_err(format!(
        "reading the relation list of database {spc}/{db} at {lsn}"
    )))? {
        Some(b) => decode_rel_dir(&b).ok_or_else(|| malformed(key, lsn, "relation list")),
        None => Ok(Vec::new()),
    }
}

/// The stored size of a fork (whether or not a relation list names it).
fn stored_size(tl: &Timeline, rel: RelFileNode, fork: u8, lsn: Lsn) -> Result<Option<u32>> {
    let key = Key::rel_size(rel, fork);
    let what = format!(
        "the size of relation {}/{}/{} fork {fork}",
        rel.spc, rel.db, rel.rel
    );
    match tl
        .get_image_value(key, lsn)
        .map_err(read_err(format!("reading {what} at {lsn}")))?
    {
        Some(b) if b.len() == 4 => Ok(Some(u32::from_le_bytes(b[..].try_into().expect("4 bytes")))),
        Some(_) => Err(malformed(key, lsn, "relation size")),
        None => Ok(None),
    }
}

/// Whether the fork exists at `lsn`.
pub fn rel_exists(tl: &Timeline, rel: RelFileNode, fork: u8, lsn: Lsn) -> Result<bool> {
    Ok(db_forks(tl, rel.spc, rel.db, lsn)?.contains(&(rel.rel, fork)))
}

/// The fork's size in blocks at `lsn`; NOT_FOUND if it does not exist then.
pub fn rel_size(tl: &Timeline, rel: RelFileNode, fork: u8, lsn: Lsn) -> Result<u32> {
    let name = format!("relation {}/{}/{} fork {fork}", rel.spc, rel.db, rel.rel);
    if !rel_exists(tl, rel, fork, lsn)? {
        return Err(TenantError::NotFound(format!(
            "{name} does not exist at LSN {lsn}"
        )));
    }
    stored_size(tl, rel, fork, lsn)?.ok_or_else(|| {
        malformed(
            Key::rel_size(rel, fork),
            lsn,
            &format!("{name}: listed without a size:"),
        )
    })
}

/// The database's relation files at `lsn`: (bytes, forks). `spc` 0: every tablespace.
/// NOT_FOUND if no relation of the database exists then.
pub fn db_size(tl: &Timeline, spc: u32, db: u32, lsn: Lsn) -> Result<(u64, u32)> {
    let dbs: Vec<(u32, u32)> = databases(tl, lsn)?
        .into_iter()
        .filter(|&(s, d)| d == db && (spc == 0 || s == spc))
        .collect();
    if dbs.is_empty() {
        let what = if spc == 0 {
            format!("database {db}")
        } else {
            format!("database {db} in tablespace {spc}")
        };
        return Err(TenantError::NotFound(format!(
            "{what} has no relations at LSN {lsn} (it does not exist then)"
        )));
    }
    let (mut bytes, mut forks) = (0u64, 0u32);
    for (s, d) in dbs {
        for (rel, fork) in db_forks(tl, s, d, lsn)? {
            let r = RelFileNode { spc: s, db: d, rel };
            let n = stored_size(tl, r, fork, lsn)?.ok_or_else(|| {
                malformed(
                    Key::rel_size(r, fork),
                    lsn,
                    "relation listed without a size:",
                )
            })?;
            bytes += n as u64 * BLCKSZ as u64;
            forks += 1;
        }
    }
    Ok((bytes, forks))
}

/// Segment `segno` of `kind` at `lsn`, as Postgres writes the file: every page, zeros for a
/// page without history. NOT_FOUND (naming the existing segments) if it does not exist then.
pub fn slru_segment(tl: &Timeline, kind: SlruKind, segno: u32, lsn: Lsn) -> Result<Vec<u8>> {
    let segs = slru_segments(tl, kind, lsn).map_err(read_err(format!(
        "reading the {} segment list at {lsn}",
        kind.dir_name()
    )))?;
    let Some(&npages) = segs.get(&segno) else {
        let have: Vec<String> = segs.keys().map(|s| format!("{s:04X}")).collect();
        return Err(TenantError::NotFound(format!(
            "{}/{segno:04X} does not exist at LSN {lsn}; segments then: [{}]",
            kind.dir_name(),
            have.join(", ")
        )));
    };
    let mut out = Vec::with_capacity(npages as usize * BLCKSZ);
    for blk in 0..npages {
        match slru_page_at(tl, kind, segno, blk, lsn).map_err(read_err(format!(
            "reading {}/{segno:04X} page {blk} at {lsn}",
            kind.dir_name()
        )))? {
            Some(p) => out.extend_from_slice(&p[..]),
            None => out.resize(out.len() + BLCKSZ, 0),
        }
    }
    Ok(out)
}
