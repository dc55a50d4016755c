//! B-tree DEDUP, DELETE and VACUUM redo: the page operations that rebuild posting lists.

use super::btree::{opaque, set_opaque, BTP_HAS_GARBAGE};
use super::itup::{self, IndexTuple, TID_SIZE};
use super::page::{self, perr, AddItem, PResult, Page};

const NO_SHUFFLE: AddItem = AddItem {
    overwrite: false,
    is_heap: false,
};

/// The pending posting list of `_bt_dedup_*` (`BTDedupStateData`, the parts redo uses).
struct Pending {
    base: Vec<u8>,
    baseoff: usize,
    basetupsize: usize,
    htids: Vec<[u8; TID_SIZE]>,
    nitems: usize,
}

impl Pending {
    /// `_bt_dedup_start_pending`.
    fn start(item: &[u8], off: usize) -> PResult<Pending> {
        let t = IndexTuple(item);
        Ok(Pending {
            base: item.to_vec(),
            baseoff: off,
            basetupsize: t.key_size()?,
            htids: t.htids()?,
            nitems: 1,
        })
    }

    /// `_bt_dedup_finish_pending`: adds the base tuple unchanged, or the merged posting list.
    /// Returns whether a posting list (an interval) was written.
    fn finish(&self, newpage: &mut Page) -> PResult<bool> {
        let off = page::max_offset(newpage) + 1;
        if self.nitems == 1 {
            let size = IndexTuple(&self.base).size()?.min(self.base.len());
            page::add_item(newpage, &self.base[..size], off, NO_SHUFFLE)?;
            Ok(false)
        } else {
            let t = itup::form_posting(&self.base, self.basetupsize, &self.htids)?;
            page::add_item(newpage, &t, off, NO_SHUFFLE)?;
            Ok(true)
        }
    }
}

/// `btree_xlog_dedup`: the intervals (`BTDedupInterval`: baseoff, nitems) tell which runs of
/// items the primary merged; the page is rebuilt on a fresh copy in item order.
pub fn redo_dedup(p: &mut Page, data: &[u8], nintervals: usize) -> PResult<()> {
    if data.len() < nintervals * 4 {
        return perr!(
            "{nintervals} dedup intervals need {} bytes, {} present",
            nintervals * 4,
            data.len()
        );
    }
    let intervals: Vec<(usize, usize)> = (0..nintervals)
        .map(|i| {
            Ok((
                page::get_u16(data, 4 * i)? as usize,
                page::get_u16(data, 4 * i + 2)? as usize,
            ))
        })
        .collect::<PResult<_>>()?;
    let o = opaque(p)?;
    let minoff = if o.next == 0 { 1 } else { 2 };
    let maxoff = page::max_offset(p);
    let mut newpage = page::temp_page_copy_special(p)?;
    if o.next != 0 {
        let r = page::item_range(p, 1)?;
        page::add_item(&mut newpage, &p[r], 1, NO_SHUFFLE)?;
    }
    let mut done = 0usize;
    let mut state: Option<Pending> = None;
    for off in minoff..=maxoff {
        let r = page::item_range(p, off)?;
        let item = &p[r];
        match state.as_mut() {
            None => state = Some(Pending::start(item, off)?),
            Some(st)
                if done < nintervals
                    && st.baseoff == intervals[done].0
                    && st.nitems < intervals[done].1 =>
            {
                st.htids.extend(IndexTuple(item).htids()?);
                st.nitems += 1;
            }
            Some(st) => {
                if st.finish(&mut newpage)? {
                    done += 1;
                }
                state = Some(Pending::start(item, off)?);
            }
        }
    }
    if let Some(st) = &state {
        if st.finish(&mut newpage)? {
            done += 1;
        }
    }
    if done != nintervals {
        return perr!("dedup replay produced {done} posting lists, record has {nintervals}");
    }
    if o.flags & BTP_HAS_GARBAGE != 0 {
        let mut no = opaque(&newpage)?;
        no.flags &= !BTP_HAS_GARBAGE;
        set_opaque(&mut newpage, no)?;
    }
    *p = *newpage;
    Ok(())
}

/// `btree_xlog_delete` / `btree_xlog_vacuum` page work: block data is the deleted offsets,
/// the updated offsets, then one `xl_btree_update` (ndeletedtids, then that many u16
/// posting-list positions) per updated offset. Updates first, then deletions.
pub fn redo_delete(p: &mut Page, data: &[u8], ndeleted: usize, nupdated: usize) -> PResult<()> {
    let need = 2 * (ndeleted + nupdated);
    if data.len() < need {
        return perr!(
            "{ndeleted} deleted + {nupdated} updated offsets need {need} bytes, {} present",
            data.len()
        );
    }
    let deleted: Vec<u16> = (0..ndeleted)
        .map(|i| page::get_u16(data, 2 * i))
        .collect::<PResult<_>>()?;
    let mut pos = need;
    for i in 0..nupdated {
        let off = page::get_u16(data, 2 * (ndeleted + i))? as usize;
        let n = page::get_u16(data, pos)? as usize;
        pos += 2;
        let del: Vec<u16> = (0..n)
            .map(|j| page::get_u16(data, pos + 2 * j))
            .collect::<PResult<_>>()?;
        pos += 2 * n;
        let r = page::item_range(p, off)?;
        let newtup = itup::update_posting(&p[r], &del)?;
        page::index_tuple_overwrite(p, off, &newtup)?;
    }
    if ndeleted > 0 {
        page::index_multi_delete(p, &deleted)?;
    }
    Ok(())
}
