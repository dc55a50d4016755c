//! Posting-tree ("data") pages: leaf pages hold compressed posting-list segments from
//! `DATA_START` to `pd_lower`; internal pages hold an array of `PostingItem`s (child block,
//! key item pointer) counted by the opaque `maxoff`.

use walproto::consts::BLCKSZ;

use super::posting::{self, Tid};
use super::{opaque, set_opaque, GIN_COMPRESSED};
use crate::redo::page::{self, get_u16, perr, shortalign, PResult, Page};

/// `GinDataPageGetData`: after the header and the MAXALIGNed right bound item pointer.
pub const DATA_START: usize = page::SIZE_OF_PAGE_HEADER + 8;
/// `sizeof(PostingItem)`: child block id (4) and key item pointer (6), 2-byte aligned.
pub const POSTING_ITEM_SIZE: usize = 10;

const SEGMENT_DELETE: u8 = 1;
const SEGMENT_INSERT: u8 = 2;
const SEGMENT_REPLACE: u8 = 3;
const SEGMENT_ADDITEMS: u8 = 4;

/// `GinDataPageSetDataSize`.
fn set_data_size(p: &mut Page, size: usize) -> PResult<()> {
    let end = DATA_START + size;
    if end > page::special(p) || end > BLCKSZ {
        return perr!(
            "data of {size} bytes does not fit before pd_special {}",
            page::special(p)
        );
    }
    page::set_lower(p, end);
    Ok(())
}

/// Turns a pre-9.4 leaf page (an array of `maxoff` plain item pointers) into one compressed
/// segment, as redo does before changing such a page.
fn convert_uncompressed(p: &mut Page) -> PResult<()> {
    let mut o = opaque(p)?;
    let n = o.maxoff as usize;
    let mut size = 0;
    if n > 0 {
        let items = (0..n)
            .map(|i| Tid::read(p, DATA_START + 6 * i))
            .collect::<PResult<Vec<_>>>()?;
        let (seg, packed) = posting::encode(&items, BLCKSZ)?;
        if packed != n {
            return perr!("uncompressed leaf items do not fit one segment");
        }
        if DATA_START + seg.len() > BLCKSZ {
            return perr!("converted segment overruns the page");
        }
        p[DATA_START..DATA_START + seg.len()].copy_from_slice(&seg);
        size = seg.len();
    }
    set_data_size(p, size)?;
    o.flags |= GIN_COMPRESSED;
    o.maxoff = 0;
    set_opaque(p, o)
}

/// `ginRedoRecompress`: applies a `ginxlogRecompressDataLeaf` (segment actions in segment
/// order) to a leaf page. The new segment list is built aside and written back over the old
/// one; bytes past its end stay as they were, as in Postgres, whose writes never pass it.
pub fn recompress(p: &mut Page, data: &[u8]) -> PResult<()> {
    if opaque(p)?.flags & GIN_COMPRESSED == 0 {
        convert_uncompressed(p)?;
    }
    let lower = page::lower(p);
    if lower < DATA_START || lower > page::special(p) {
        return perr!("data leaf pd_lower {lower} outside the page's data area");
    }
    let old = p[DATA_START..lower].to_vec();
    let mut out: Vec<u8> = Vec::with_capacity(old.len() + 64);
    let nactions = get_u16(data, 0)? as usize;
    let mut w = 2usize;
    let mut pos = 0usize;
    let mut segno = 0usize;
    for _ in 0..nactions {
        let (Some(&a_segno), Some(&action)) = (data.get(w), data.get(w + 1)) else {
            return perr!("segment action overruns the record");
        };
        w += 2;
        let mut newseg: Option<Vec<u8>> = None;
        let mut added: Vec<Tid> = Vec::new();
        match action {
            SEGMENT_INSERT | SEGMENT_REPLACE => {
                let size = posting::segment_size(data.get(w..).unwrap_or(&[]))?;
                newseg = Some(data[w..w + size].to_vec());
                w += shortalign(size);
            }
            SEGMENT_ADDITEMS => {
                let n = get_u16(data, w)? as usize;
                w += 2;
                for i in 0..n {
                    added.push(Tid::read(data, w + 6 * i)?);
                }
                w += 6 * n;
            }
            SEGMENT_DELETE => {}
            _ => return perr!("unexpected GIN leaf action {action}"),
        }
        while segno < a_segno as usize {
            if pos >= old.len() {
                return perr!("segment {a_segno} is past the page's last segment");
            }
            let size = posting::segment_size(&old[pos..])?;
            out.extend_from_slice(&old[pos..pos + size]);
            pos += size;
            segno += 1;
        }
        let oldsize = if pos < old.len() {
            posting::segment_size(&old[pos..])?
        } else {
            0
        };
        match action {
            SEGMENT_DELETE => {
                pos += oldsize;
                segno += 1;
            }
            SEGMENT_INSERT => out.extend_from_slice(newseg.as_deref().unwrap_or(&[])),
            SEGMENT_REPLACE => {
                out.extend_from_slice(newseg.as_deref().unwrap_or(&[]));
                pos += oldsize;
                segno += 1;
            }
            _ => {
                // ADDITEMS: the old segment merged with the new items, re-encoded.
                if oldsize == 0 {
                    return perr!("items added to segment {a_segno}, which does not exist");
                }
                let olditems = posting::decode_segment(&old[pos..])?;
                let items = posting::merge(&added, &olditems);
                let (seg, packed) = posting::encode(&items, BLCKSZ)?;
                if packed != items.len() {
                    return perr!("segment {a_segno} with added items does not fit a page");
                }
                out.extend_from_slice(&seg);
                pos += oldsize;
                segno += 1;
            }
        }
    }
    out.extend_from_slice(&old[pos.min(old.len())..]);
    set_data_size(p, out.len())?;
    p[DATA_START..DATA_START + out.len()].copy_from_slice(&out);
    Ok(())
}

/// Byte offset of `PostingItem` number `i` (1-based) on an internal data page.
fn item_pos(i: usize) -> usize {
    DATA_START + (i - 1) * POSTING_ITEM_SIZE
}

/// `PostingItemSetBlockNumber` on item `offset`, which must exist.
pub fn set_item_child(p: &mut Page, offset: usize, child: u32) -> PResult<()> {
    let maxoff = opaque(p)?.maxoff as usize;
    if offset == 0 || offset > maxoff {
        return perr!("posting item {offset} outside 1..={maxoff}");
    }
    let at = item_pos(offset);
    page::put_u16(p, at, (child >> 16) as u16)?;
    page::put_u16(p, at + 2, child as u16)
}

/// `GinDataPageAddPostingItem`: inserts `item` at `offset` (0 = append), shifting the rest.
pub fn add_item(p: &mut Page, item: &[u8], offset: usize) -> PResult<()> {
    let Some(item) = item.get(..POSTING_ITEM_SIZE) else {
        return perr!("posting item shorter than {POSTING_ITEM_SIZE} bytes");
    };
    let mut o = opaque(p)?;
    let maxoff = o.maxoff as usize;
    let offset = if offset == 0 { maxoff + 1 } else { offset };
    if offset > maxoff + 1 {
        return perr!("posting item offset {offset} beyond {maxoff} + 1");
    }
    let end = item_pos(maxoff + 2);
    if end > page::special(p) {
        return perr!("no room for posting item {}", maxoff + 1);
    }
    let at = item_pos(offset);
    p.copy_within(at..item_pos(maxoff + 1), at + POSTING_ITEM_SIZE);
    p[at..at + POSTING_ITEM_SIZE].copy_from_slice(item);
    o.maxoff += 1;
    set_opaque(p, o)?;
    set_data_size(p, (maxoff + 1) * POSTING_ITEM_SIZE)
}

/// `GinPageDeletePostingItem`.
pub fn delete_item(p: &mut Page, offset: usize) -> PResult<()> {
    let mut o = opaque(p)?;
    let maxoff = o.maxoff as usize;
    if offset == 0 || offset > maxoff {
        return perr!("posting item {offset} outside 1..={maxoff}");
    }
    let end = item_pos(maxoff + 1);
    if end > page::special(p) {
        return perr!("{maxoff} posting items overrun pd_special");
    }
    p.copy_within(item_pos(offset + 1)..end, item_pos(offset));
    o.maxoff -= 1;
    set_opaque(p, o)?;
    set_data_size(p, (maxoff - 1) * POSTING_ITEM_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redo::gin::{init_page, GIN_DATA, GIN_LEAF};

    fn tid(block: u32, off: u16) -> Tid {
        Tid { block, off }
    }

    fn leaf(segments: &[Vec<u8>]) -> Box<Page> {
        let mut p = Box::new([0u8; BLCKSZ]);
        init_page(&mut p, GIN_DATA | GIN_LEAF | GIN_COMPRESSED).unwrap();
        let all: Vec<u8> = segments.concat();
        p[DATA_START..DATA_START + all.len()].copy_from_slice(&all);
        set_data_size(&mut p, all.len()).unwrap();
        p
    }

    fn seg(items: &[Tid]) -> Vec<u8> {
        posting::encode(items, BLCKSZ).unwrap().0
    }

    #[test]
    fn segment_actions() {
        let s0 = seg(&[tid(1, 1), tid(1, 2)]);
        let s1 = seg(&[tid(5, 1), tid(6, 3)]);
        let s2 = seg(&[tid(9, 1)]);
        let mut p = leaf(&[s0.clone(), s1.clone(), s2.clone()]);
        let new = seg(&[tid(7, 1), tid(7, 2), tid(8, 1)]);
        // ADDITEMS to segment 0, DELETE segment 1, INSERT a segment before segment 2.
        let mut rec = vec![3, 0, 0, 4, 1, 0];
        tid(1, 5).write(&mut rec);
        rec.extend_from_slice(&[1, 1, 2, 2]);
        rec.extend_from_slice(&new);
        recompress(&mut p, &rec).unwrap();
        let merged = seg(&[tid(1, 1), tid(1, 2), tid(1, 5)]);
        let want = [merged, new, s2].concat();
        assert_eq!(page::lower(&p), DATA_START + want.len());
        assert_eq!(&p[DATA_START..DATA_START + want.len()], &want[..]);
        // A truncated record, or a segment past the end, is an error.
        assert!(recompress(&mut p, &[1, 0, 7, 1]).is_err());
        assert!(recompress(&mut p, &[1, 0, 0, 3, 1]).is_err());
    }

    #[test]
    fn posting_items() {
        let mut p = Box::new([0u8; BLCKSZ]);
        init_page(&mut p, GIN_DATA).unwrap();
        add_item(&mut p, &[0, 0, 10, 0, 0, 0, 1, 0, 1, 0], 0).unwrap();
        add_item(&mut p, &[0, 0, 11, 0, 0, 0, 2, 0, 1, 0], 1).unwrap();
        assert_eq!(opaque(&p).unwrap().maxoff, 2);
        assert_eq!(page::lower(&p), DATA_START + 2 * POSTING_ITEM_SIZE);
        assert_eq!(p[DATA_START + 2], 11);
        set_item_child(&mut p, 2, 0x0001_0002).unwrap();
        assert_eq!(&p[DATA_START + 10..DATA_START + 14], &[1, 0, 2, 0]);
        delete_item(&mut p, 1).unwrap();
        assert_eq!(p[DATA_START + 2], 2);
        assert!(delete_item(&mut p, 2).is_err());
        assert!(add_item(&mut p, &[0; 10], 3).is_err());
    }
}
