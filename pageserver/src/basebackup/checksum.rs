//! PostgreSQL's data page checksum (`pg_checksum_page`, storage/checksum_impl.h): FNV-1a
//! style mixing over the page as 32 parallel columns of 32-bit words, folded, mixed with the
//! block number, reduced to 16 bits plus one. Pages Strata reconstructs by redo carry whatever
//! checksum their last image had, so a basebackup of a checksummed cluster recomputes it.

use walproto::consts::BLCKSZ;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16777619;
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];
/// Where `pd_checksum` is in the page header.
const CHECKSUM_OFFSET: usize = 8;

fn comp(sum: &mut u32, value: u32) {
    let tmp = *sum ^ value;
    *sum = tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17);
}

/// The checksum of `page` as block `blkno` of its fork (the stored checksum is ignored).
pub fn page_checksum(page: &[u8; BLCKSZ], blkno: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    let word = |i: usize| {
        if (CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4).contains(&(i * 4)) {
            // The word holding pd_checksum (and pd_flags) with the checksum zeroed.
            let mut w = [
                page[i * 4],
                page[i * 4 + 1],
                page[i * 4 + 2],
                page[i * 4 + 3],
            ];
            w[0] = 0;
            w[1] = 0;
            u32::from_le_bytes(w)
        } else {
            u32::from_le_bytes(page[i * 4..i * 4 + 4].try_into().unwrap())
        }
    };
    for row in 0..BLCKSZ / (4 * N_SUMS) {
        for (j, s) in sums.iter_mut().enumerate() {
            comp(s, word(row * N_SUMS + j));
        }
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            comp(s, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// Stores the page's checksum in `pd_checksum`.
pub fn set_page_checksum(page: &mut [u8; BLCKSZ], blkno: u32) {
    let c = page_checksum(page, blkno);
    page[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2].copy_from_slice(&c.to_le_bytes());
}
