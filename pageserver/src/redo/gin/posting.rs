//! GIN's compressed posting lists (`ginpostinglist.c`): a segment is the first item pointer in
//! full, a byte count, then each following item as a varbyte-encoded delta of
//! `block << 11 | offset`.
//!
//! Redo re-encodes a segment when a record adds items to it, so the encoder must produce the
//! primary's bytes exactly, including the zero padding byte after an odd byte count.

use crate::redo::page::{get_u16, perr, shortalign, PResult};

/// Bytes before the varbyte data: `first` (6) and `nbytes` (2).
pub const SEGMENT_HEADER: usize = 8;
/// Offset bits in the integer form of an item pointer (`MaxHeapTuplesPerPageBits`).
const OFFSET_BITS: u32 = 11;
/// The longest varbyte encoding of a 43-bit integer.
const MAX_VARBYTE: usize = 7;

/// A heap item pointer as GIN orders it: by block, then offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tid {
    pub block: u32,
    pub off: u16,
}

impl Tid {
    /// Reads an `ItemPointerData` (block as two 16-bit halves, high first, then offset).
    pub fn read(b: &[u8], at: usize) -> PResult<Tid> {
        let hi = get_u16(b, at)? as u32;
        let lo = get_u16(b, at + 2)? as u32;
        Ok(Tid {
            block: (hi << 16) | lo,
            off: get_u16(b, at + 4)?,
        })
    }

    pub fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&((self.block >> 16) as u16).to_le_bytes());
        out.extend_from_slice(&(self.block as u16).to_le_bytes());
        out.extend_from_slice(&self.off.to_le_bytes());
    }

    fn to_int(self) -> u64 {
        ((self.block as u64) << OFFSET_BITS) | self.off as u64
    }

    fn from_int(v: u64) -> Tid {
        Tid {
            block: (v >> OFFSET_BITS) as u32,
            off: (v & ((1 << OFFSET_BITS) - 1)) as u16,
        }
    }
}

/// `SizeOfGinPostingList` of the segment starting at `seg[0]`.
pub fn segment_size(seg: &[u8]) -> PResult<usize> {
    let nbytes = get_u16(seg, 6)? as usize;
    let size = SEGMENT_HEADER + shortalign(nbytes);
    if size > seg.len() {
        return perr!(
            "posting list segment of {size} bytes overruns the {} bytes left",
            seg.len()
        );
    }
    Ok(size)
}

/// Decodes one segment (`seg` starts at it; only its own bytes are read).
pub fn decode_segment(seg: &[u8]) -> PResult<Vec<Tid>> {
    let size = segment_size(seg)?;
    let first = Tid::read(seg, 0)?;
    let nbytes = get_u16(seg, 6)? as usize;
    let bytes = &seg[SEGMENT_HEADER..SEGMENT_HEADER + nbytes];
    let mut out = Vec::with_capacity(nbytes + 1);
    out.push(first);
    let mut val = first.to_int();
    let mut pos = 0;
    while pos < bytes.len() {
        let mut delta = 0u64;
        let mut shift = 0;
        loop {
            let Some(&c) = bytes.get(pos) else {
                return perr!("varbyte integer runs past a {size}-byte segment");
            };
            pos += 1;
            if shift == 7 * (MAX_VARBYTE as u32 - 1) {
                // The seventh byte keeps all its bits.
                delta |= (c as u64) << shift;
                break;
            }
            delta |= ((c & 0x7F) as u64) << shift;
            if c & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        val = val.wrapping_add(delta);
        out.push(Tid::from_int(val));
    }
    Ok(out)
}

fn encode_varbyte(mut v: u64, out: &mut Vec<u8>) {
    while v > 0x7F {
        out.push(0x80 | (v & 0x7F) as u8);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `ginCompressPostingList`: encodes as many of `items` as fit in `maxsize` bytes; returns
/// the segment (short-aligned, zero padded) and how many items it holds.
pub fn encode(items: &[Tid], maxsize: usize) -> PResult<(Vec<u8>, usize)> {
    let Some(&first) = items.first() else {
        return perr!("cannot encode an empty posting list");
    };
    let maxsize = maxsize & !1;
    if maxsize <= SEGMENT_HEADER {
        return perr!("posting list size limit {maxsize} too small");
    }
    let maxbytes = maxsize - SEGMENT_HEADER;
    let mut out = Vec::with_capacity(maxsize.min(items.len() * 2 + SEGMENT_HEADER));
    first.write(&mut out);
    out.extend_from_slice(&[0, 0]);
    let mut prev = first.to_int();
    let mut packed = 1;
    let mut buf = Vec::with_capacity(MAX_VARBYTE);
    for t in &items[1..] {
        let val = t.to_int();
        buf.clear();
        encode_varbyte(val.wrapping_sub(prev), &mut buf);
        if out.len() - SEGMENT_HEADER + buf.len() > maxbytes {
            break;
        }
        out.extend_from_slice(&buf);
        prev = val;
        packed += 1;
    }
    let nbytes = out.len() - SEGMENT_HEADER;
    out[6..8].copy_from_slice(&(nbytes as u16).to_le_bytes());
    if nbytes % 2 == 1 {
        out.push(0);
    }
    Ok((out, packed))
}

/// `ginMergeItemPointers`: the union of two sorted lists, one copy of equal items.
pub fn merge(a: &[Tid], b: &[Tid]) -> Vec<Tid> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(b[j]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tids(v: &[(u32, u16)]) -> Vec<Tid> {
        v.iter().map(|&(block, off)| Tid { block, off }).collect()
    }

    #[test]
    fn roundtrip_and_padding() {
        let items = tids(&[(0, 1), (0, 2), (3, 7), (70000, 1), (4_000_000_000, 5)]);
        let (seg, n) = encode(&items, 8192).unwrap();
        assert_eq!(n, items.len());
        assert_eq!(seg.len() % 2, 0);
        assert_eq!(segment_size(&seg).unwrap(), seg.len());
        assert_eq!(decode_segment(&seg).unwrap(), items);
        // Deltas 1 (1 byte), 3<<11|5 (2 bytes), ... ; an odd count gets a zero pad.
        let (seg, _) = encode(&tids(&[(0, 1), (0, 2)]), 8192).unwrap();
        assert_eq!(seg, vec![0, 0, 0, 0, 1, 0, 1, 0, 1, 0]);
    }

    #[test]
    fn size_limit_and_merge() {
        let items: Vec<Tid> = (1..100).map(|i| Tid { block: i, off: 1 }).collect();
        let (seg, n) = encode(&items, 21).unwrap();
        // 20 bytes: 8 header, 12 bytes of 2-byte deltas = 6 more items.
        assert_eq!((seg.len(), n), (20, 7));
        let m = merge(&tids(&[(1, 1), (2, 1)]), &tids(&[(1, 1), (1, 5), (3, 1)]));
        assert_eq!(m, tids(&[(1, 1), (1, 5), (2, 1), (3, 1)]));
        assert!(encode(&[], 100).is_err());
        assert!(decode_segment(&[0, 0, 0, 0, 1, 0, 3, 0, 0x80, 0x80, 0]).is_err());
    }
}
