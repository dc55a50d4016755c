//! A readable difference between two (masked) pages: header fields, line pointers, heap tuple
//! headers, and the differing byte ranges.

use std::fmt::Write as _;

use super::page::{self, ItemId, Page};

/// Describes how `ours` (redo) differs from `theirs` (the primary's image).
pub fn describe(ours: &Page, theirs: &Page, max_ranges: usize) -> String {
    let mut s = String::new();
    let hdr = |p: &Page| {
        format!(
            "lower {} upper {} special {} flags {:#x} prune_xid {}",
            page::lower(p),
            page::upper(p),
            page::special(p),
            page::flags(p),
            page::prune_xid(p)
        )
    };
    let (h1, h2) = (hdr(ours), hdr(theirs));
    if h1 != h2 {
        let _ = writeln!(s, "  header: redo  {h1}\n          image {h2}");
    }
    let n = page::max_offset(ours)
        .max(page::max_offset(theirs))
        .min(400);
    let mut shown = 0;
    for off in 1..=n {
        let a = page::item_id(ours, off).ok();
        let b = page::item_id(theirs, off).ok();
        let same_bytes = match (a, b) {
            (Some(x), Some(y)) if x == y && x.has_storage() => {
                let end = (x.off + x.len).min(ours.len());
                let r = x.off.min(end)..end;
                ours[r.clone()] == theirs[r]
            }
            _ => a == b,
        };
        if !same_bytes && shown < 8 {
            shown += 1;
            let _ = writeln!(
                s,
                "  item {off}: redo {} | image {}",
                item(ours, a),
                item(theirs, b)
            );
        }
    }
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < ours.len() {
        if ours[i] != theirs[i] {
            let start = i;
            while i < ours.len() && ours[i] != theirs[i] {
                i += 1;
            }
            ranges.push(start..i);
        } else {
            i += 1;
        }
    }
    let _ = writeln!(s, "  {} differing byte ranges:", ranges.len());
    for r in ranges.iter().take(max_ranges) {
        let end = r.end.min(r.start + 16);
        let _ = writeln!(
            s,
            "    [{}..{}) redo {:02x?} image {:02x?}",
            r.start,
            r.end,
            &ours[r.start..end],
            &theirs[r.start..end]
        );
    }
    s
}

fn item(p: &Page, id: Option<ItemId>) -> String {
    let Some(id) = id else {
        return "-".into();
    };
    let mut s = format!("lp(off {} flags {} len {})", id.off, id.flags, id.len);
    if id.is_normal() && id.off + 23 <= p.len() {
        let t = &p[id.off..id.off + 23];
        let u32at = |o: usize| u32::from_le_bytes(t[o..o + 4].try_into().unwrap());
        let u16at = |o: usize| u16::from_le_bytes(t[o..o + 2].try_into().unwrap());
        let _ = write!(
            s,
            " htup?(xmin {} xmax {} cid {} ctid ({},{}) im2 {:#x} im {:#x} hoff {})",
            u32at(0),
            u32at(4),
            u32at(8),
            ((u16at(12) as u32) << 16) | u16at(14) as u32,
            u16at(16),
            u16at(18),
            u16at(20),
            t[22]
        );
    }
    s
}
