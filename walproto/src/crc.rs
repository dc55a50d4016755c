//! CRC-32C (Castagnoli), the checksum of WAL records and of layer files.
//!
//! The `crc32c` crate does the work, except for short inputs on x86-64 with SSE 4.2: most WAL
//! records and stored values are under a few hundred bytes, and for those the crate spends as
//! many instructions on the unaligned bytes before and after its 8-byte-aligned middle (one
//! `crc32` instruction per byte, each waiting ~3 cycles for the previous one) as on the
//! middle. Here every 8 bytes take one instruction from an unaligned load, and the last 0–7
//! bytes at most three (4, 2, 1 bytes). From 768 bytes on, the crate's three interleaved
//! streams are faster, so it takes over.

/// Inputs at least this long go to the `crc32c` crate (its 3-way interleaved loop starts at
/// 3 × 256 bytes).
const SHORT_MAX: usize = 768;

/// The CRC-32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// The CRC-32C of the bytes whose CRC is `crc` followed by `data` (`crc` = 0 to start).
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if data.len() < SHORT_MAX && std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2, checked just above.
        return unsafe { short_sse42(crc, data) };
    }
    crc32c::crc32c_append(crc, data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn short_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
    let mut c = u64::from(!crc);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        c = _mm_crc32_u64(c, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let mut c = c as u32;
    let mut rest = words.remainder();
    if let Some((w, r)) = rest.split_first_chunk::<4>() {
        c = _mm_crc32_u32(c, u32::from_le_bytes(*w));
        rest = r;
    }
    if let Some((w, r)) = rest.split_first_chunk::<2>() {
        c = _mm_crc32_u16(c, u16::from_le_bytes(*w));
        rest = r;
    }
    if let Some(&b) = rest.first() {
        c = _mm_crc32_u8(c, b);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_crc32c_crate_at_every_length_and_alignment() {
        let data: Vec<u8> = (0..2048u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..8 {
            for len in (0..1100).chain([1500, 2040]) {
                let d = &data[start..start + len];
                assert_eq!(crc32c(d), crc32c::crc32c(d), "start {start} len {len}");
                for seed in [0, 0xDEAD_BEEF] {
                    assert_eq!(
                        crc32c_append(seed, d),
                        crc32c::crc32c_append(seed, d),
                        "seed {seed:#x} start {start} len {len}"
                    );
                }
            }
        }
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
