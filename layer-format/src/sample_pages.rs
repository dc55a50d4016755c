//! Synthetic but realistically filled PostgreSQL 15 pages, for tests and benchmarks (notably the
//! measurements behind the compression decision in [`crate::compress`]).
//!
//! The layouts follow Postgres's: a 24-byte page header, 4-byte line pointers, tuples from the
//! end of the page downwards, MAXALIGN 8, native (little-endian) byte order.

/// Postgres block size.
pub const PAGE_SIZE: usize = 8192;

/// A tiny deterministic PRNG (splitmix64), so pages are reproducible.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn put_u16(p: &mut [u8], at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(p: &mut [u8], at: usize, v: u32) {
    p[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn page_header(p: &mut [u8], lsn: u64, lower: usize, upper: usize, special: usize) {
    put_u32(p, 0, (lsn >> 32) as u32);
    put_u32(p, 4, lsn as u32);
    put_u16(p, 8, 0); // pd_checksum
    put_u16(p, 10, 0); // pd_flags
    put_u16(p, 12, lower as u16);
    put_u16(p, 14, upper as u16);
    put_u16(p, 16, special as u16);
    put_u16(p, 18, (PAGE_SIZE as u16) | 4); // pd_pagesize_version
    put_u32(p, 20, 0); // pd_prune_xid
}

fn line_pointer(p: &mut [u8], index: usize, off: usize, len: usize) {
    const LP_NORMAL: u32 = 1;
    put_u32(
        p,
        24 + 4 * index,
        off as u32 | (LP_NORMAL << 15) | ((len as u32) << 17),
    );
}

/// Tuples per pgbench_accounts heap page (fillfactor 100): 121-byte tuples, MAXALIGNed to 128.
pub const ACCOUNTS_PER_PAGE: usize = 61;

/// A pgbench_accounts heap page as `pgbench -i` leaves it: 61 frozen tuples
/// `(aid int4, bid int4, abalance int4, filler char(84))` with blank-padded fillers.
/// `updated_fraction` (0..=1) of the tuples get a random xmin, xmax and balance, as after a
/// pgbench run.
pub fn pgbench_accounts_page(blkno: u32, seed: u64, updated_fraction: f64) -> Vec<u8> {
    let mut rng = SplitMix::new(seed ^ (u64::from(blkno) << 20));
    let mut p = vec![0u8; PAGE_SIZE];
    let tuple_len = 24 + 12 + 85;
    let aligned = (tuple_len + 7) & !7;
    let upper = PAGE_SIZE - aligned * ACCOUNTS_PER_PAGE;
    page_header(
        &mut p,
        0x1_6B37_4C28 + u64::from(blkno) * 0x2000,
        24 + 4 * ACCOUNTS_PER_PAGE,
        upper,
        PAGE_SIZE,
    );
    for i in 0..ACCOUNTS_PER_PAGE {
        let off = PAGE_SIZE - aligned * (i + 1);
        line_pointer(&mut p, i, off, tuple_len);
        let aid = blkno as usize * ACCOUNTS_PER_PAGE + i + 1;
        let updated = (rng.next_u64() % 1000) as f64 / 1000.0 < updated_fraction;
        let t = &mut p[off..off + tuple_len];
        let (xmin, xmax, infomask, balance) = if updated {
            let xmin = 1000 + (rng.next_u64() % 500_000) as u32;
            let balance = (rng.next_u64() % 20_001) as i32 - 10_000;
            let xmax = if rng.next_u64().is_multiple_of(4) {
                xmin + 7
            } else {
                0
            };
            // HEAP_XMIN_COMMITTED | HEAP_XMAX_INVALID (or a live xmax), HEAP_UPDATED
            let infomask = if xmax == 0 { 0x2900 } else { 0x2100 };
            (xmin, xmax, infomask, balance)
        } else {
            // Loaded by COPY FREEZE: HEAP_XMIN_FROZEN | HEAP_XMAX_INVALID.
            (731, 0, 0x0B00, 0)
        };
        t[0..4].copy_from_slice(&xmin.to_le_bytes());
        t[4..8].copy_from_slice(&xmax.to_le_bytes());
        // t_cid = 0; t_ctid = (blkno, i + 1)
        t[12..14].copy_from_slice(&((blkno >> 16) as u16).to_le_bytes());
        t[14..16].copy_from_slice(&(blkno as u16).to_le_bytes());
        t[16..18].copy_from_slice(&((i + 1) as u16).to_le_bytes());
        t[18..20].copy_from_slice(&4u16.to_le_bytes()); // t_infomask2: natts
        t[20..22].copy_from_slice(&(infomask as u16).to_le_bytes());
        t[22] = 24; // t_hoff
        t[24..28].copy_from_slice(&(aid as u32).to_le_bytes());
        let bid = (aid - 1) / 100_000 + 1;
        t[28..32].copy_from_slice(&(bid as u32).to_le_bytes());
        t[32..36].copy_from_slice(&balance.to_le_bytes());
        t[36] = (85 << 1) | 1; // 1-byte varlena header: 84 chars + header
        t[37..121].fill(b' ');
    }
    p
}

/// A freshly loaded pgbench_accounts heap page (no updates).
pub fn pgbench_accounts_heap_page(blkno: u32, seed: u64) -> Vec<u8> {
    pgbench_accounts_page(blkno, seed, 0.0)
}

/// A b-tree leaf page of an int4 primary key (pgbench_accounts_pkey after `pgbench -i`):
/// a high key and ~367 index tuples (leaf fillfactor 90), each `(tid, int4)` in 16 bytes.
pub fn btree_int4_leaf_page(blkno: u32) -> Vec<u8> {
    const ITEMS: usize = 367;
    const SPECIAL: usize = 16;
    let mut p = vec![0u8; PAGE_SIZE];
    let special = PAGE_SIZE - SPECIAL;
    let upper = special - 16 * (ITEMS + 1);
    page_header(
        &mut p,
        0x1_7000_0000 + u64::from(blkno) * 0x100,
        24 + 4 * (ITEMS + 1),
        upper,
        special,
    );
    let first_key = (blkno as usize - 1) * ITEMS + 1;
    // Item 1 is the high key (the first key of the next page), the rest the data items.
    for i in 0..=ITEMS {
        let off = special - 16 * (i + 1);
        line_pointer(&mut p, i, off, 16);
        let key = if i == 0 {
            first_key + ITEMS
        } else {
            first_key + i - 1
        };
        let heap_block = (key - 1) / ACCOUNTS_PER_PAGE;
        let heap_off = (key - 1) % ACCOUNTS_PER_PAGE + 1;
        let t = &mut p[off..off + 16];
        if i != 0 {
            t[0..2].copy_from_slice(&((heap_block >> 16) as u16).to_le_bytes());
            t[2..4].copy_from_slice(&(heap_block as u16).to_le_bytes());
            t[4..6].copy_from_slice(&(heap_off as u16).to_le_bytes());
        }
        t[6..8].copy_from_slice(&16u16.to_le_bytes()); // t_info: size
        t[8..12].copy_from_slice(&(key as u32).to_le_bytes());
    }
    let s = &mut p[special..];
    s[0..4].copy_from_slice(&blkno.saturating_sub(1).to_le_bytes()); // btpo_prev
    s[4..8].copy_from_slice(&(blkno + 1).to_le_bytes()); // btpo_next
    s[14..16].copy_from_slice(&1u16.to_le_bytes()); // BTP_LEAF
    p
}

/// A heap page with only a few tuples: mostly free space (zeros).
pub fn sparse_heap_page(blkno: u32) -> Vec<u8> {
    let mut p = pgbench_accounts_heap_page(blkno, 1);
    let keep = 5;
    let aligned = 128;
    let upper = PAGE_SIZE - aligned * ACCOUNTS_PER_PAGE;
    p[24 + 4 * keep..PAGE_SIZE - aligned * keep].fill(0);
    put_u16(&mut p, 12, (24 + 4 * keep) as u16);
    put_u16(
        &mut p,
        14,
        (upper + aligned * (ACCOUNTS_PER_PAGE - keep)) as u16,
    );
    p
}

/// A page of random bytes: the incompressible worst case (e.g. compressed TOAST data).
pub fn random_page(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix::new(seed);
    let mut p = Vec::with_capacity(PAGE_SIZE);
    while p.len() < PAGE_SIZE {
        p.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    p
}
