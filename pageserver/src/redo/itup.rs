//! Index tuples (`access/itup.h`) and nbtree posting lists (`access/nbtree.h`,
//! `nbtdedup.c`): the tuple surgery B-tree redo repeats.
//!
//! `IndexTupleData`: `t_tid` (bi_hi, bi_lo, ip_posid: 6 bytes) then `t_info` (size in the low
//! 13 bits). A posting list tuple has `INDEX_ALT_TID_MASK` in `t_info` and `BT_IS_POSTING` in
//! the offset of `t_tid`, whose block number field holds the byte offset of the TID array.

use super::page::{self, get_u16, perr, PResult};

pub const INDEX_SIZE_MASK: u16 = 0x1FFF;
pub const INDEX_ALT_TID_MASK: u16 = 0x2000;
pub const BT_IS_POSTING: u16 = 0x2000;
pub const BT_OFFSET_MASK: u16 = 0x0FFF;
/// `sizeof(ItemPointerData)`.
pub const TID_SIZE: usize = 6;

/// A read-only view of an index tuple.
#[derive(Clone, Copy)]
pub struct IndexTuple<'a>(pub &'a [u8]);

impl IndexTuple<'_> {
    pub fn t_info(&self) -> PResult<u16> {
        get_u16(self.0, 6)
    }
    /// `IndexTupleSize`.
    pub fn size(&self) -> PResult<usize> {
        Ok((self.t_info()? & INDEX_SIZE_MASK) as usize)
    }
    /// The block number field of `t_tid` (a downlink, a top parent, a posting offset).
    pub fn block(&self) -> PResult<u32> {
        Ok(((get_u16(self.0, 0)? as u32) << 16) | get_u16(self.0, 2)? as u32)
    }
    pub fn tid_offset(&self) -> PResult<u16> {
        get_u16(self.0, 4)
    }
    /// `BTreeTupleIsPosting`.
    pub fn is_posting(&self) -> PResult<bool> {
        Ok(self.t_info()? & INDEX_ALT_TID_MASK != 0 && self.tid_offset()? & BT_IS_POSTING != 0)
    }
    /// `BTreeTupleGetNPosting`.
    pub fn n_posting(&self) -> PResult<usize> {
        Ok((self.tid_offset()? & BT_OFFSET_MASK) as usize)
    }
    /// The posting list's TIDs (checked against the tuple), or the single heap TID.
    pub fn htids(&self) -> PResult<Vec<[u8; TID_SIZE]>> {
        if !self.is_posting()? {
            let Some(t) = self.0.get(..TID_SIZE) else {
                return perr!("index tuple too short");
            };
            return Ok(vec![t.try_into().unwrap()]);
        }
        let off = self.block()? as usize;
        let n = self.n_posting()?;
        let Some(list) = self.0.get(off..off + n * TID_SIZE) else {
            return perr!(
                "posting list of {n} TIDs at {off} overruns a {}-byte tuple",
                self.0.len()
            );
        };
        Ok(list
            .chunks_exact(TID_SIZE)
            .map(|c| c.try_into().unwrap())
            .collect())
    }
    /// Bytes of the key part: up to the posting list, or the whole tuple.
    pub fn key_size(&self) -> PResult<usize> {
        if self.is_posting()? {
            Ok(self.block()? as usize)
        } else {
            self.size()
        }
    }
}

/// `ItemPointerSetBlockNumber` on a tuple's `t_tid`.
pub fn set_block(t: &mut [u8], blk: u32) -> PResult<()> {
    page::put_u16(t, 0, (blk >> 16) as u16)?;
    page::put_u16(t, 2, blk as u16)
}

/// `_bt_form_posting` / the tuple building of `_bt_update_posting`: the key part of `base`
/// (up to `keysize` bytes) with `htids`, as a posting list if there are several.
pub fn form_posting(base: &[u8], keysize: usize, htids: &[[u8; TID_SIZE]]) -> PResult<Vec<u8>> {
    if htids.is_empty() || keysize > base.len() || keysize < 8 {
        return perr!(
            "cannot form a posting tuple of {} TIDs from {keysize} key bytes",
            htids.len()
        );
    }
    let newsize = if htids.len() > 1 {
        page::maxalign(keysize + htids.len() * TID_SIZE)
    } else {
        keysize
    };
    if newsize > INDEX_SIZE_MASK as usize {
        return perr!("posting tuple of {newsize} bytes is too large");
    }
    let mut t = vec![0u8; newsize];
    t[..keysize].copy_from_slice(&base[..keysize]);
    let mut info = get_u16(&t, 6)? & !INDEX_SIZE_MASK;
    info |= newsize as u16;
    if htids.len() > 1 {
        info |= INDEX_ALT_TID_MASK;
        page::put_u16(&mut t, 4, htids.len() as u16 | BT_IS_POSTING)?;
        set_block(&mut t, keysize as u32)?;
        for (i, tid) in htids.iter().enumerate() {
            t[keysize + i * TID_SIZE..keysize + (i + 1) * TID_SIZE].copy_from_slice(tid);
        }
    } else {
        info &= !INDEX_ALT_TID_MASK;
        t[..TID_SIZE].copy_from_slice(&htids[0]);
    }
    page::put_u16(&mut t, 6, info)?;
    Ok(t)
}

/// `_bt_swap_posting`: the new item's heap TID goes into the posting list at `postingoff`,
/// the list's last TID moves into the new item. Returns the new posting list tuple
/// (same size as `oposting`); `newitem` is changed in place.
pub fn swap_posting(newitem: &mut [u8], oposting: &[u8], postingoff: usize) -> PResult<Vec<u8>> {
    let o = IndexTuple(oposting);
    if !o.is_posting()? {
        return perr!("posting split target is not a posting list tuple");
    }
    let nhtids = o.n_posting()?;
    if !(postingoff > 0 && postingoff < nhtids) {
        return perr!(
            "posting list tuple with {nhtids} items cannot be split at offset {postingoff}"
        );
    }
    let size = o.size()?;
    let Some(src) = oposting.get(..size) else {
        return perr!(
            "posting tuple size {size} exceeds its item ({} bytes)",
            oposting.len()
        );
    };
    let mut n = src.to_vec();
    let base = IndexTuple(&n).block()? as usize;
    if base + nhtids * TID_SIZE > n.len() || newitem.len() < TID_SIZE {
        return perr!("posting list overruns its tuple");
    }
    let at = base + postingoff * TID_SIZE;
    let last = base + (nhtids - 1) * TID_SIZE;
    let maxtid: [u8; TID_SIZE] = n[last..last + TID_SIZE].try_into().unwrap();
    n.copy_within(at..last, at + TID_SIZE);
    n[at..at + TID_SIZE].copy_from_slice(&newitem[..TID_SIZE]);
    newitem[..TID_SIZE].copy_from_slice(&maxtid);
    Ok(n)
}

/// `_bt_update_posting`: the posting tuple without the TIDs at positions `deletetids`.
pub fn update_posting(orig: &[u8], deletetids: &[u16]) -> PResult<Vec<u8>> {
    let o = IndexTuple(orig);
    if !o.is_posting()? {
        return perr!("updated tuple is not a posting list tuple");
    }
    let all = o.htids()?;
    let keep: Vec<[u8; TID_SIZE]> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| !deletetids.contains(&(*i as u16)))
        .map(|(_, t)| *t)
        .collect();
    if keep.is_empty() || keep.len() + deletetids.len() != all.len() {
        return perr!(
            "deleting {} of {} posting TIDs leaves {}",
            deletetids.len(),
            all.len(),
            keep.len()
        );
    }
    form_posting(orig, o.key_size()?, &keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(blk: u16, off: u16) -> [u8; TID_SIZE] {
        let mut t = [0u8; TID_SIZE];
        t[2..4].copy_from_slice(&blk.to_le_bytes());
        t[4..6].copy_from_slice(&off.to_le_bytes());
        t
    }

    /// A 16-byte non-pivot tuple: TID, t_info, an 8-byte key.
    fn plain(t: [u8; TID_SIZE]) -> Vec<u8> {
        let mut v = vec![0u8; 16];
        v[..6].copy_from_slice(&t);
        v[6..8].copy_from_slice(&16u16.to_le_bytes());
        v[8..16].copy_from_slice(&42u64.to_le_bytes());
        v
    }

    #[test]
    fn posting_form_swap_update() {
        let tids = [tid(1, 1), tid(1, 3), tid(2, 5)];
        let p = form_posting(&plain(tids[0]), 16, &tids).unwrap();
        assert_eq!(p.len(), 40); // MAXALIGN(16 + 3 * 6)
        let it = IndexTuple(&p);
        assert!(it.is_posting().unwrap());
        assert_eq!((it.n_posting().unwrap(), it.key_size().unwrap()), (3, 16));
        assert_eq!(it.htids().unwrap(), tids);

        // A new item with TID (1,2) splits the list at 1: the list keeps three TIDs, the
        // new item takes the old maximum.
        let mut newitem = plain(tid(1, 2));
        let np = swap_posting(&mut newitem, &p, 1).unwrap();
        assert_eq!(
            IndexTuple(&np).htids().unwrap(),
            [tid(1, 1), tid(1, 2), tid(1, 3)]
        );
        assert_eq!(&newitem[..6], &tid(2, 5));
        assert!(swap_posting(&mut newitem, &p, 3).is_err());
        assert!(swap_posting(&mut newitem, &plain(tid(0, 1)), 1).is_err());

        // Removing two of three TIDs gives a plain tuple again.
        let u = update_posting(&p, &[0, 2]).unwrap();
        assert_eq!(u.len(), 16);
        assert!(!IndexTuple(&u).is_posting().unwrap());
        assert_eq!(&u[..6], &tid(1, 3));
        assert!(update_posting(&p, &[0, 1, 2]).is_err());
        assert!(update_posting(&u, &[0]).is_err());
    }

    #[test]
    fn truncated_tuples_are_errors() {
        assert!(IndexTuple(&[1, 2, 3]).size().is_err());
        let mut bad = plain(tid(1, 1));
        bad[6..8].copy_from_slice(&(INDEX_ALT_TID_MASK | 16).to_le_bytes());
        bad[4..6].copy_from_slice(&(BT_IS_POSTING | 100).to_le_bytes());
        assert!(IndexTuple(&bad).htids().is_err());
    }
}
