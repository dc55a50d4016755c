//! Redo of SP-GiST (`access/spgist/spgxlog.c`) records, one block at a time.
//!
//! Every record carries its tuples in the main data, unaligned; each block reference is
//! replayed on its own (source, destination, inner and parent pages), in the same page
//! operations Postgres uses, so tuples land on the same bytes: `PageAddItem` with shuffling at a
//! given offset, replacing placeholders, and dead tuples (`spgFormDeadTuple`) re-added at the
//! offsets they replace. The special space counts redirects and placeholders; those counters
//! are kept with the same (release-build, wrapping) arithmetic as Postgres.

use walproto::consts::BLCKSZ;
use walproto::record::{BlockRef, DecodedRecord};

use super::page::{self, perr, AddItem, PResult, Page};

const ADD_LEAF: u8 = 0x10;
const MOVE_LEAFS: u8 = 0x20;
const ADD_NODE: u8 = 0x30;
const SPLIT_TUPLE: u8 = 0x40;
const PICKSPLIT: u8 = 0x50;
const VACUUM_LEAF: u8 = 0x60;
const VACUUM_ROOT: u8 = 0x70;
const VACUUM_REDIRECT: u8 = 0x80;

/// `tupstate` values.
const REDIRECT: u8 = 1;
const DEAD: u8 = 2;
const PLACEHOLDER: u8 = 3;

/// Page flags in the special space.
pub const SPGIST_META: u16 = 1 << 0;
pub const SPGIST_LEAF: u16 = 1 << 2;
pub const SPGIST_NULLS: u16 = 1 << 3;
/// `SPGIST_PAGE_ID`, the last two bytes of every SP-GiST page.
pub const SPGIST_PAGE_ID: u16 = 0xFF82;
/// `sizeof(SpGistPageOpaqueData)`: flags, nRedirection, nPlaceholder, page id.
const OPAQUE_SIZE: usize = 8;
/// `SGDTSIZE`: a dead (redirect / placeholder / dead) tuple.
const SGDTSIZE: usize = 16;
/// Bytes of a leaf tuple header read to learn its size (`SpGistLeafTupleData`).
const LEAF_HDR: usize = 12;
/// `SpGistInnerTupleData` (bit fields word + size).
const INNER_HDR: usize = 6;
/// `SGITHDRSZ`: where an inner tuple's prefix starts.
const SGITHDRSZ: usize = 8;
/// `IndexTupleData` header of a node tuple.
const NODE_HDR: usize = 8;

const INVALID_BLOCK: u32 = 0xFFFF_FFFF;
const NO_SHUFFLE_FLAGS: AddItem = AddItem {
    overwrite: false,
    is_heap: false,
};

/// `spgxlogState`: what replay needs to form dead tuples.
#[derive(Clone, Copy, Debug, Default)]
struct XlState {
    my_xid: u32,
    is_build: bool,
}

/// A bounds-checked cursor over the record's main data.
struct Cursor<'a> {
    d: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn at(d: &'a [u8], pos: usize) -> Self {
        Cursor { d, pos }
    }

    fn bytes(&mut self, n: usize, what: &str) -> PResult<&'a [u8]> {
        let end = match self.pos.checked_add(n) {
            Some(e) if e <= self.d.len() => e,
            _ => {
                return perr!(
                    "record data too short for {what}: {n} bytes at {} of {}",
                    self.pos,
                    self.d.len()
                )
            }
        };
        let s = &self.d[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn offsets(&mut self, n: usize, what: &str) -> PResult<Vec<u16>> {
        let len = n.checked_mul(2).ok_or_else(|| overflow(what))?;
        let b = self.bytes(len, what)?;
        Ok(b.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }

    /// An unaligned leaf tuple: its size is the 30-bit field above `tupstate`.
    fn leaf_tuple(&mut self) -> PResult<&'a [u8]> {
        let w = page::get_u32(self.d, self.pos).map_err(|_| short("a leaf tuple header"))?;
        let size = (w >> 2) as usize;
        if size < LEAF_HDR {
            return perr!("leaf tuple of size {size} is shorter than its header");
        }
        self.bytes(size, "a leaf tuple")
    }

    /// An unaligned inner tuple: its size is the uint16 after the bit fields.
    fn inner_tuple(&mut self) -> PResult<&'a [u8]> {
        let size = page::get_u16(self.d, self.pos + 4)
            .map_err(|_| short("an inner tuple header"))? as usize;
        if size < INNER_HDR {
            return perr!("inner tuple of size {size} is shorter than its header");
        }
        self.bytes(size, "an inner tuple")
    }
}

fn short(what: &str) -> page::PageError {
    page::PageError(format!("record data too short for {what}"))
}

fn overflow(what: &str) -> page::PageError {
    page::PageError(format!("size overflow reading {what}"))
}

fn u16_at(d: &[u8], off: usize, what: &str) -> PResult<u16> {
    page::get_u16(d, off).map_err(|_| short(what))
}

fn u32_at(d: &[u8], off: usize, what: &str) -> PResult<u32> {
    page::get_u32(d, off).map_err(|_| short(what))
}

fn bool_at(d: &[u8], off: usize, what: &str) -> PResult<bool> {
    match d.get(off) {
        Some(b) => Ok(*b != 0),
        None => perr!("record data too short for {what}"),
    }
}

fn state_at(d: &[u8], off: usize) -> PResult<XlState> {
    Ok(XlState {
        my_xid: u32_at(d, off, "stateSrc.myXid")?,
        is_build: bool_at(d, off + 4, "stateSrc.isBuild")?,
    })
}

fn other_blkno(rec: &DecodedRecord, id: u8) -> PResult<u32> {
    match rec.block(id) {
        Some(b) => Ok(b.blkno),
        None => perr!("record has no block {id}"),
    }
}

// ---- the special space ----

fn opaque_pos(p: &Page) -> PResult<usize> {
    let s = page::special(p);
    if s.checked_add(OPAQUE_SIZE).is_none_or(|e| e > BLCKSZ) {
        return perr!("pd_special {s} leaves no room for the SP-GiST opaque data");
    }
    Ok(s)
}

/// Adds `delta` (wrapping, as Postgres's uint16 fields) to the counter at `field` (2 =
/// nRedirection, 4 = nPlaceholder).
fn bump(p: &mut Page, field: usize, delta: i32) -> PResult<()> {
    let pos = opaque_pos(p)? + field;
    let v = page::get_u16(p, pos)?;
    page::put_u16(p, pos, (v as i32).wrapping_add(delta) as u16)
}

const N_REDIRECTION: usize = 2;
const N_PLACEHOLDER: usize = 4;

/// `SpGistInitPage`: an empty page whose special space holds `flags` and the page id.
pub fn init_page(p: &mut Page, flags: u16) {
    page::init(p, OPAQUE_SIZE);
    let s = BLCKSZ - OPAQUE_SIZE;
    p[s..s + 2].copy_from_slice(&flags.to_le_bytes());
    p[s + 6..s + 8].copy_from_slice(&SPGIST_PAGE_ID.to_le_bytes());
}

fn leaf_flags(stores_nulls: bool) -> u16 {
    SPGIST_LEAF | if stores_nulls { SPGIST_NULLS } else { 0 }
}

// ---- tuples on the page ----

/// `spgFormDeadTuple`: a redirect points at (blkno, offnum) and remembers the xid; the other
/// states have an invalid pointer and no xid.
fn dead_tuple(tupstate: u8, blkno: u32, offnum: u16, st: XlState) -> [u8; SGDTSIZE] {
    let mut t = [0u8; SGDTSIZE];
    let word = tupstate as u32 | ((SGDTSIZE as u32) << 2);
    t[0..4].copy_from_slice(&word.to_le_bytes());
    let (blk, off, xid) = if tupstate == REDIRECT {
        (blkno, offnum, st.my_xid)
    } else {
        (INVALID_BLOCK, 0, 0)
    };
    set_item_pointer(&mut t[6..12], blk, off);
    t[12..16].copy_from_slice(&xid.to_le_bytes());
    t
}

/// `ItemPointerSet` on 6 bytes: block number high half, low half, offset.
fn set_item_pointer(b: &mut [u8], blkno: u32, offnum: u16) {
    b[0..2].copy_from_slice(&((blkno >> 16) as u16).to_le_bytes());
    b[2..4].copy_from_slice(&(blkno as u16).to_le_bytes());
    b[4..6].copy_from_slice(&offnum.to_le_bytes());
}

/// The bytes of item `off` with at least `min` of them (`PageGetItem`).
fn item_mut(p: &mut Page, off: u16, min: usize) -> PResult<&mut [u8]> {
    let r = page::item_range(p, off as usize)?;
    if r.len() < min {
        return perr!(
            "item {off} has {} bytes, less than the {min} expected",
            r.len()
        );
    }
    Ok(&mut p[r])
}

fn tupstate_of(p: &mut Page, off: u16) -> PResult<u8> {
    Ok(item_mut(p, off, 4)?[0] & 3)
}

/// `PageAddItem` at `off` (shuffling later items up), which must land there.
fn add_at(p: &mut Page, tuple: &[u8], off: u16) -> PResult<()> {
    let got = page::add_item(p, tuple, off as usize, NO_SHUFFLE_FLAGS)?;
    if got != off as usize {
        return perr!(
            "failed to add item of size {} at offset {off} (landed at {got})",
            tuple.len()
        );
    }
    Ok(())
}

/// Replaces the item at `off` by `tuple` (`PageIndexTupleDelete` + `PageAddItem`).
fn replace_at(p: &mut Page, tuple: &[u8], off: u16) -> PResult<()> {
    page::index_tuple_delete(p, off as usize)?;
    add_at(p, tuple, off)
}

/// `addOrReplaceTuple`: add at `off`, replacing the placeholder there if `off` exists.
fn add_or_replace(p: &mut Page, tuple: &[u8], off: u16) -> PResult<()> {
    if off as usize <= page::max_offset(p) {
        if tupstate_of(p, off)? != PLACEHOLDER {
            return perr!("SP-GiST tuple {off} to be replaced is not a placeholder");
        }
        bump(p, N_PLACEHOLDER, -1)?;
        page::index_tuple_delete(p, off as usize)?;
    }
    add_at(p, tuple, off)
}

/// `SGLT_SET_NEXTOFFSET` on leaf tuple `off`: keep the two flag bits of `t_info`.
fn set_next_offset(p: &mut Page, off: u16, next: u16) -> PResult<()> {
    let t = item_mut(p, off, LEAF_HDR)?;
    let info = u16::from_le_bytes([t[4], t[5]]);
    let info = (info & 0xC000) | (next & 0x3FFF);
    t[4..6].copy_from_slice(&info.to_le_bytes());
    Ok(())
}

/// `spgUpdateNodeLink`: point node `node_i` of inner tuple `off` at (blkno, target).
fn update_node_link(p: &mut Page, off: u16, node_i: u16, blkno: u32, target: u16) -> PResult<()> {
    let t = item_mut(p, off, INNER_HDR)?;
    let w = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let n_nodes = ((w >> 3) & 0x1FFF) as usize;
    let prefix_size = (w >> 16) as usize;
    let mut pos = SGITHDRSZ + prefix_size;
    for i in 0..n_nodes {
        let Some(node) = t.get_mut(pos..pos + NODE_HDR) else {
            return perr!("node {i} of inner tuple {off} lies beyond the tuple");
        };
        if i == node_i as usize {
            set_item_pointer(&mut node[0..6], blkno, target);
            return Ok(());
        }
        pos += (u16::from_le_bytes([node[6], node[7]]) & 0x1FFF) as usize;
    }
    perr!("failed to find requested node {node_i} in SP-GiST inner tuple {off} ({n_nodes} nodes)")
}

/// `spgPageIndexMultiDelete`: remove `items`, then put a dead tuple at each of their offsets,
/// `first` for the record's first listed item and `rest` for the others.
fn multi_delete_to_dead(
    p: &mut Page,
    items: &[u16],
    first: u8,
    rest: u8,
    target: (u32, u16),
    st: XlState,
) -> PResult<()> {
    let Some(&first_item) = items.first() else {
        return Ok(());
    };
    let mut sorted = items.to_vec();
    sorted.sort_unstable();
    page::index_multi_delete(p, &sorted)?;
    for &itemno in &sorted {
        let state = if itemno == first_item { first } else { rest };
        let t = dead_tuple(state, target.0, target.1, st);
        add_at(p, &t, itemno)?;
        match state {
            REDIRECT => bump(p, N_REDIRECTION, 1)?,
            PLACEHOLDER => bump(p, N_PLACEHOLDER, 1)?,
            _ => {}
        }
    }
    Ok(())
}

// ---- the records ----

/// Applies a record to one of its blocks.
pub fn redo(rec: &DecodedRecord, blk: &BlockRef, p: &mut Page) -> PResult<()> {
    let d = rec.main_data();
    let touched = match rec.rmgr_info() {
        ADD_LEAF => add_leaf(rec, d, blk.id, p)?,
        MOVE_LEAFS => move_leafs(rec, d, blk.id, p)?,
        ADD_NODE => add_node(rec, d, blk.id, p)?,
        SPLIT_TUPLE => split_tuple(d, blk.id, p)?,
        PICKSPLIT => pick_split(rec, d, blk.id, p)?,
        VACUUM_LEAF => vacuum_leaf(d, blk.id, p)?,
        VACUUM_ROOT => vacuum_root(d, blk.id, p)?,
        VACUUM_REDIRECT => vacuum_redirect(d, blk.id, p)?,
        op => return perr!("unknown SP-GiST op code {op:#x}"),
    };
    if touched {
        page::set_lsn(p, rec.end_lsn.0);
    }
    Ok(())
}

/// `spgxlogAddLeaf` (10 bytes) + the leaf tuple. Block 0: the leaf page; block 1: the parent.
fn add_leaf(rec: &DecodedRecord, d: &[u8], id: u8, p: &mut Page) -> PResult<bool> {
    let new_page = bool_at(d, 0, "newPage")?;
    let nulls = bool_at(d, 1, "storesNulls")?;
    let leaf = u16_at(d, 2, "offnumLeaf")?;
    let head = u16_at(d, 4, "offnumHeadLeaf")?;
    let parent = u16_at(d, 6, "offnumParent")?;
    let node_i = u16_at(d, 8, "nodeI")?;
    match id {
        0 => {
            let tuple = Cursor::at(d, 10).leaf_tuple()?;
            if new_page {
                init_page(p, leaf_flags(nulls));
            }
            if leaf != head {
                add_or_replace(p, tuple, leaf)?;
                if head != 0 {
                    set_next_offset(p, head, leaf)?;
                }
            } else {
                // The new tuple takes the place of a DEAD one.
                replace_at(p, tuple, leaf)?;
            }
            Ok(true)
        }
        1 if parent != 0 => {
            let blkno = other_blkno(rec, 0)?;
            update_node_link(p, parent, node_i, blkno, leaf)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// `spgxlogMoveLeafs` (20 bytes), offsets, leaf tuples. Block 0: source, 1: destination,
/// 2: parent.
fn move_leafs(rec: &DecodedRecord, d: &[u8], id: u8, p: &mut Page) -> PResult<bool> {
    let n_moves = u16_at(d, 0, "nMoves")? as usize;
    let new_page = bool_at(d, 2, "newPage")?;
    let replace_dead = bool_at(d, 3, "replaceDead")?;
    let nulls = bool_at(d, 4, "storesNulls")?;
    let parent = u16_at(d, 6, "offnumParent")?;
    let node_i = u16_at(d, 8, "nodeI")?;
    let st = state_at(d, 12)?;
    let n_insert = if replace_dead { 1 } else { n_moves + 1 };
    let mut c = Cursor::at(d, 20);
    let to_delete = c.offsets(n_moves, "the deleted offsets")?;
    let to_insert = c.offsets(n_insert, "the inserted offsets")?;
    let last_insert = *to_insert.last().unwrap_or(&0);
    match id {
        1 => {
            if new_page {
                init_page(p, leaf_flags(nulls));
            }
            for &off in &to_insert {
                let t = c.leaf_tuple()?;
                add_or_replace(p, t, off)?;
            }
            Ok(true)
        }
        0 => {
            let dst = other_blkno(rec, 1)?;
            let first = if st.is_build { PLACEHOLDER } else { REDIRECT };
            multi_delete_to_dead(p, &to_delete, first, PLACEHOLDER, (dst, last_insert), st)?;
            Ok(true)
        }
        2 => {
            let dst = other_blkno(rec, 1)?;
            update_node_link(p, parent, node_i, dst, last_insert)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// `spgxlogAddNode` (20 bytes) + the new inner tuple. Block 0: the original page, 1: the
/// page the tuple moves to (absent when replaced in place), 2: the parent if elsewhere.
fn add_node(rec: &DecodedRecord, d: &[u8], id: u8, p: &mut Page) -> PResult<bool> {
    let off = u16_at(d, 0, "offnum")?;
    let off_new = u16_at(d, 2, "offnumNew")?;
    let new_page = bool_at(d, 4, "newPage")?;
    let parent_blk = d.get(5).map(|b| *b as i8);
    let parent = u16_at(d, 6, "offnumParent")?;
    let node_i = u16_at(d, 8, "nodeI")?;
    let st = state_at(d, 12)?;
    let tuple = Cursor::at(d, 20).inner_tuple()?;
    let Some(new_blk) = rec.block(1).map(|b| b.blkno) else {
        if id != 0 {
            return Ok(false);
        }
        replace_at(p, tuple, off)?;
        return Ok(true);
    };
    match id {
        1 => {
            if new_page {
                init_page(p, 0);
            }
            add_or_replace(p, tuple, off_new)?;
            if parent_blk == Some(1) {
                update_node_link(p, parent, node_i, new_blk, off_new)?;
            }
            Ok(true)
        }
        0 => {
            let dt = if st.is_build {
                dead_tuple(PLACEHOLDER, INVALID_BLOCK, 0, st)
            } else {
                dead_tuple(REDIRECT, new_blk, off_new, st)
            };
            replace_at(p, &dt, off)?;
            let counter = if st.is_build {
                N_PLACEHOLDER
            } else {
                N_REDIRECTION
            };
            bump(p, counter, 1)?;
            if parent_blk == Some(0) {
                update_node_link(p, parent, node_i, new_blk, off_new)?;
            }
            Ok(true)
        }
        2 if parent_blk == Some(2) => {
            update_node_link(p, parent, node_i, new_blk, off_new)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// `spgxlogSplitTuple` (6 bytes), prefix then postfix inner tuple. Block 0: the prefix's page,
/// 1: the postfix's page unless it is the same.
fn split_tuple(d: &[u8], id: u8, p: &mut Page) -> PResult<bool> {
    let off_prefix = u16_at(d, 0, "offnumPrefix")?;
    let off_postfix = u16_at(d, 2, "offnumPostfix")?;
    let new_page = bool_at(d, 4, "newPage")?;
    let same = bool_at(d, 5, "postfixBlkSame")?;
    let mut c = Cursor::at(d, 6);
    let prefix = c.inner_tuple()?;
    let postfix = c.inner_tuple()?;
    match id {
        1 if !same => {
            if new_page {
                init_page(p, 0);
            }
            add_or_replace(p, postfix, off_postfix)?;
            Ok(true)
        }
        0 => {
            replace_at(p, prefix, off_prefix)?;
            if same {
                add_or_replace(p, postfix, off_postfix)?;
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// `spgxlogPickSplit` (28 bytes), offsets, page selectors, the inner tuple, leaf tuples.
/// Block 0: the source leaf page (absent for a root split), 1: the destination leaf page,
/// 2: the page of the new inner tuple, 3: the parent unless it is the inner page.
fn pick_split(rec: &DecodedRecord, d: &[u8], id: u8, p: &mut Page) -> PResult<bool> {
    let root_split = bool_at(d, 0, "isRootSplit")?;
    let n_delete = u16_at(d, 2, "nDelete")? as usize;
    let n_insert = u16_at(d, 4, "nInsert")? as usize;
    let init_src = bool_at(d, 6, "initSrc")?;
    let init_dest = bool_at(d, 7, "initDest")?;
    let off_inner = u16_at(d, 8, "offnumInner")?;
    let init_inner = bool_at(d, 10, "initInner")?;
    let nulls = bool_at(d, 11, "storesNulls")?;
    let inner_is_parent = bool_at(d, 12, "innerIsParent")?;
    let parent = u16_at(d, 14, "offnumParent")?;
    let node_i = u16_at(d, 16, "nodeI")?;
    let st = state_at(d, 20)?;
    let mut c = Cursor::at(d, 28);
    let to_delete = c.offsets(n_delete, "the deleted offsets")?;
    let to_insert = c.offsets(n_insert, "the inserted offsets")?;
    let select = c.bytes(n_insert, "the leaf page selectors")?;
    let inner = c.inner_tuple()?;
    let inner_blk = other_blkno(rec, 2)?;

    // The leaf tuples go to the source (selector 0) or the destination page.
    let mut leaves_for = |p: &mut Page, dest: bool| -> PResult<()> {
        for (i, &off) in to_insert.iter().enumerate() {
            let t = c.leaf_tuple()?;
            if (select[i] != 0) == dest {
                add_or_replace(p, t, off)?;
            }
        }
        Ok(())
    };
    match id {
        0 if !root_split => {
            if init_src {
                init_page(p, leaf_flags(nulls));
            } else if st.is_build {
                multi_delete_to_dead(
                    p,
                    &to_delete,
                    PLACEHOLDER,
                    PLACEHOLDER,
                    (INVALID_BLOCK, 0),
                    st,
                )?;
            } else {
                multi_delete_to_dead(
                    p,
                    &to_delete,
                    REDIRECT,
                    PLACEHOLDER,
                    (inner_blk, off_inner),
                    st,
                )?;
            }
            leaves_for(p, false)?;
            Ok(true)
        }
        1 => {
            if init_dest {
                init_page(p, leaf_flags(nulls));
            }
            leaves_for(p, true)?;
            Ok(true)
        }
        2 => {
            if init_inner {
                init_page(p, if nulls { SPGIST_NULLS } else { 0 });
            }
            add_or_replace(p, inner, off_inner)?;
            if inner_is_parent {
                update_node_link(p, parent, node_i, inner_blk, off_inner)?;
            }
            Ok(true)
        }
        3 => {
            update_node_link(p, parent, node_i, inner_blk, off_inner)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// `spgxlogVacuumLeaf` (16 bytes) and six offset arrays. Block 0 only.
fn vacuum_leaf(d: &[u8], id: u8, p: &mut Page) -> PResult<bool> {
    if id != 0 {
        return Ok(false);
    }
    let n_dead = u16_at(d, 0, "nDead")? as usize;
    let n_placeholder = u16_at(d, 2, "nPlaceholder")? as usize;
    let n_move = u16_at(d, 4, "nMove")? as usize;
    let n_chain = u16_at(d, 6, "nChain")? as usize;
    let st = state_at(d, 8)?;
    let mut c = Cursor::at(d, 16);
    let to_dead = c.offsets(n_dead, "the offsets to make dead")?;
    let to_placeholder = c.offsets(n_placeholder, "the offsets to make placeholders")?;
    let move_src = c.offsets(n_move, "the move sources")?;
    let move_dest = c.offsets(n_move, "the move destinations")?;
    let chain_src = c.offsets(n_chain, "the chain sources")?;
    let chain_dest = c.offsets(n_chain, "the chain destinations")?;
    let none = (INVALID_BLOCK, 0);

    multi_delete_to_dead(p, &to_dead, DEAD, DEAD, none, st)?;
    multi_delete_to_dead(p, &to_placeholder, PLACEHOLDER, PLACEHOLDER, none, st)?;
    // A live tuple moves into a chain's earlier slot by swapping line pointers; the slot it
    // left becomes a placeholder.
    for (&s, &t) in move_src.iter().zip(&move_dest) {
        let a = page::item_id(p, s as usize)?;
        let b = page::item_id(p, t as usize)?;
        page::set_item_id(p, s as usize, b)?;
        page::set_item_id(p, t as usize, a)?;
    }
    multi_delete_to_dead(p, &move_src, PLACEHOLDER, PLACEHOLDER, none, st)?;
    for (&s, &next) in chain_src.iter().zip(&chain_dest) {
        set_next_offset(p, s, next)?;
    }
    Ok(true)
}

/// `spgxlogVacuumRoot` (12 bytes) + sorted offsets to delete from a root leaf page.
fn vacuum_root(d: &[u8], id: u8, p: &mut Page) -> PResult<bool> {
    if id != 0 {
        return Ok(false);
    }
    let n = u16_at(d, 0, "nDelete")? as usize;
    let to_delete = Cursor::at(d, 12).offsets(n, "the offsets to delete")?;
    page::index_multi_delete(p, &to_delete)?;
    Ok(true)
}

/// `spgxlogVacuumRedirect` (8 bytes) + offsets of redirects that become placeholders; then
/// the placeholders from `firstPlaceholder` to the end of the page go.
fn vacuum_redirect(d: &[u8], id: u8, p: &mut Page) -> PResult<bool> {
    if id != 0 {
        return Ok(false);
    }
    let n = u16_at(d, 0, "nToPlaceholder")? as usize;
    let first = u16_at(d, 2, "firstPlaceholder")? as usize;
    let items = Cursor::at(d, 8).offsets(n, "the redirect offsets")?;
    for &off in &items {
        let t = item_mut(p, off, SGDTSIZE)?;
        t[0] = (t[0] & !3) | PLACEHOLDER;
        set_item_pointer(&mut t[6..12], INVALID_BLOCK, 0);
    }
    bump(p, N_REDIRECTION, -(n as i32))?;
    bump(p, N_PLACEHOLDER, n as i32)?;
    if first != 0 {
        let max = page::max_offset(p);
        if first > max + 1 {
            return perr!("first placeholder {first} beyond the last item {max}");
        }
        let to_delete: Vec<u16> = (first..=max).map(|o| o as u16).collect();
        bump(p, N_PLACEHOLDER, -(to_delete.len() as i32))?;
        page::index_multi_delete(p, &to_delete)?;
    }
    Ok(true)
}

/// `spg_mask`: LSN and checksum, hint bits, and the hole when pd_lower looks set.
pub fn mask(p: &mut Page) {
    super::mask::mask_page_lsn_and_checksum(p);
    super::mask::mask_page_hint_bits(p);
    if page::lower(p) >= page::SIZE_OF_PAGE_HEADER {
        super::mask::mask_unused_space(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(len: usize, fill: u8) -> Vec<u8> {
        let mut t = vec![fill; len];
        t[0..4].copy_from_slice(&((len as u32) << 2).to_le_bytes());
        t[4..6].copy_from_slice(&0u16.to_le_bytes());
        t
    }

    #[test]
    fn placeholders_are_reused_and_counted() {
        let mut p = Box::new([0u8; BLCKSZ]);
        init_page(&mut p, SPGIST_LEAF);
        assert_eq!(&p[BLCKSZ - 2..], &SPGIST_PAGE_ID.to_le_bytes());
        for i in 1..=4u16 {
            add_or_replace(&mut p, &leaf(24, i as u8), i).unwrap();
        }
        let st = XlState {
            my_xid: 77,
            is_build: false,
        };
        multi_delete_to_dead(&mut p, &[3, 2], REDIRECT, PLACEHOLDER, (9, 5), st).unwrap();
        let s = page::special(&p);
        assert_eq!(page::get_u16(&p[..], s + 2).unwrap(), 1);
        assert_eq!(page::get_u16(&p[..], s + 4).unwrap(), 1);
        let r = page::item_range(&p, 3).unwrap();
        assert_eq!(p[r.start] & 3, REDIRECT);
        assert_eq!(page::get_u32(&p[..], r.start + 12).unwrap(), 77);
        // Offset 2 is a placeholder: a new tuple replaces it.
        add_or_replace(&mut p, &leaf(32, 9), 2).unwrap();
        assert_eq!(page::get_u16(&p[..], s + 4).unwrap(), 0);
        assert_eq!(page::item_range(&p, 2).unwrap().len(), 32);
        // Not a placeholder: refused, not a panic.
        assert!(add_or_replace(&mut p, &leaf(16, 1), 1).is_err());
        assert!(update_node_link(&mut p, 9, 0, 1, 1).is_err());
    }

    #[test]
    fn node_links_and_redirect_cleanup() {
        let mut p = Box::new([0u8; BLCKSZ]);
        init_page(&mut p, 0);
        // An inner tuple with an 8-byte prefix and three 8-byte nodes.
        let mut inner = vec![0u8; 40];
        inner[0..4].copy_from_slice(&((3u32 << 3) | (8u32 << 16)).to_le_bytes());
        inner[4..6].copy_from_slice(&40u16.to_le_bytes());
        for n in 0..3 {
            inner[16 + n * 8 + 6] = 8;
        }
        add_or_replace(&mut p, &inner, 1).unwrap();
        update_node_link(&mut p, 1, 2, 0x0001_0002, 7).unwrap();
        let r = page::item_range(&p, 1).unwrap();
        assert_eq!(&p[r.start + 32..r.start + 38], &[1, 0, 2, 0, 7, 0]);
        assert!(update_node_link(&mut p, 1, 3, 1, 1).is_err());

        let mut p = Box::new([0u8; BLCKSZ]);
        init_page(&mut p, SPGIST_LEAF);
        for i in 1..=3u16 {
            add_or_replace(&mut p, &leaf(24, i as u8), i).unwrap();
        }
        let st = XlState {
            my_xid: 5,
            is_build: false,
        };
        multi_delete_to_dead(&mut p, &[2, 3], REDIRECT, PLACEHOLDER, (9, 5), st).unwrap();
        let s = page::special(&p);
        assert_eq!(page::get_u16(&p[..], s + 2).unwrap(), 1);
        assert_eq!(page::get_u16(&p[..], s + 4).unwrap(), 1);
        vacuum_redirect(&[1, 0, 2, 0, 5, 0, 0, 0, 2, 0], 0, &mut p).unwrap();
        assert_eq!(page::max_offset(&p), 1);
        assert_eq!(page::get_u16(&p[..], s + 2).unwrap(), 0);
        assert_eq!(page::get_u16(&p[..], s + 4).unwrap(), 0);
        assert_eq!(page::item_range(&p, 1).unwrap().len(), 24);
    }

    #[test]
    fn short_records_are_errors() {
        let mut p = Box::new([0u8; BLCKSZ]);
        init_page(&mut p, 0);
        assert!(add_leaf_short(&mut p).is_err());
        assert!(vacuum_leaf(&[1, 0, 0, 0], 0, &mut p).is_err());
        assert!(vacuum_redirect(&[5, 0, 0, 0, 0, 0, 0, 0], 0, &mut p).is_err());
        assert!(split_tuple(&[1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF], 0, &mut p).is_err());
    }

    fn add_leaf_short(p: &mut Page) -> PResult<()> {
        let mut c = Cursor::at(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0], 0);
        let t = c.leaf_tuple()?;
        add_or_replace(p, t, 1)
    }
}
