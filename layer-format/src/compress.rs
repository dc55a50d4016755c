//! Per-value compression of stored layer values.
//!
//! Codec: **lz4 block format** (`lz4_flex`), one value at a time, so a point lookup
//! decompresses exactly one page. The decoder is lz4_flex's safe one (it reads stored bytes,
//! which may be damaged); the encoder is its `unsafe` one (it reads only values this process
//! made): on the served ingest path it took ~13% less of the pageserver's CPU than the safe
//! encoder (`docs/benchmarks.md`, "18:00–18:05 UTC"), and its blocks are the same format. A
//! compressed value is stored as
//!
//! | offset | size | field                                  |
//! |--------|------|----------------------------------------|
//! | 0      | 4    | uncompressed length (u32, big-endian)  |
//! | 4      | ..   | lz4 block                              |
//!
//! and its index entry carries the lz4 flag; otherwise the bytes are stored as they are.
//! A value is tried only if it is at least [`MIN_COMPRESS_LEN`] bytes (WAL records of a few
//! hundred bytes are not worth it) and is kept compressed only if that saves at least
//! 1/[`MIN_SAVING_DIVISOR`] of its size; incompressible pages (already-compressed TOAST
//! data, random bytes) are stored raw and cost nothing at read time.
//!
//! Why lz4 — measured with `cargo bench -p strata-benches --bench layers -- codec` on pages
//! from [`crate::sample_pages`] (2-core VM, per 8 KiB page):
//!
//! | page                                    | lz4 size | lz4 compress | lz4 decompress | zstd-1 size | zstd-1 compress | zstd-1 decompress |
//! |-----------------------------------------|----------|--------------|----------------|-------------|-----------------|-------------------|
//! | pgbench_accounts heap, after `-i`       | 10.6 %   | 1.5 µs       | 0.7 µs         | 5.5 %       | 36 µs           | 9.3 µs            |
//! | pgbench_accounts heap, all rows updated | 20.8 %   | 4.1 µs       | 1.1 µs         | 12.0 %      |                 |                   |
//! | b-tree leaf, int4 primary key           | 51.1 %   | 10 µs        | 3.5 µs         | 25.2 %      | 28 µs           | 11 µs             |
//! | heap page with 5 tuples (mostly free)   | 2.0 %    | 1.0 µs       | 9.7 µs (*)     | 1.4 %       |                 |                   |
//! | random bytes (incompressible)           | 100.5 %  | 1.4 µs       | stored raw     | 100.1 %     |                 |                   |
//!
//! (*) long runs of zeros are the slow case for `lz4_flex`'s safe decoder (the workspace
//! builds it with `safe-decode`; its unsafe decoder has not been measured here).
//!
//! For comparison, copying a page costs ~0.08 µs and its crc32c ~0.36 µs, and a warm image
//! point lookup is ~1.4 µs raw vs ~2.1 µs with lz4. Postgres pages shrink 2–10× under lz4,
//! which cuts local disk, page cache and object-store bytes (and download time) by as much,
//! for about 0.7–4 µs per GetPage (10 µs for nearly empty pages), small next to a network
//! round trip. zstd roughly halves lz4's sizes again but decodes 3–13× and encodes 3–25× slower; that trade belongs in a
//! colder tier (object store archives), not the per-GetPage path. So: lz4 per value, kept
//! only when it saves ≥ 12.5 %, so incompressible pages cost nothing at read time.

/// Values shorter than this are never compressed.
pub const MIN_COMPRESS_LEN: usize = 512;
/// A value is kept compressed only if that saves at least `len / MIN_SAVING_DIVISOR` bytes.
pub const MIN_SAVING_DIVISOR: usize = 8;

/// Whether a writer tries to compress values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Store every value as it is.
    None,
    /// lz4 for values that shrink enough (the default).
    #[default]
    Lz4,
    /// lz4 for page images that shrink enough; records are stored as they are. For L0 delta
    /// layers: ingest does not spend its time compressing WAL records, which compaction
    /// rewrites (compressed) into L1 layers anyway.
    Lz4Images,
}

impl Compression {
    /// Whether a value of this kind is tried.
    pub(crate) fn tries(self, is_image: bool) -> bool {
        match self {
            Compression::None => false,
            Compression::Lz4 => true,
            Compression::Lz4Images => is_image,
        }
    }
}

/// Compresses `input` into the first bytes of `out` if it is worth it; returns how many.
///
/// `out` keeps its largest length between calls and is never cleared: `lz4_flex`'s safe
/// encoder writes into an initialised slice, and zeroing a fresh ~9 KiB one for every value
/// was work for nothing. (The encoder still zeroes its own 8 KiB hash table per call: 0.11
/// has no block API that reuses one.)
pub(crate) fn try_compress(input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    if input.len() < MIN_COMPRESS_LEN || input.len() > u32::MAX as usize {
        return None;
    }
    let end = 4 + lz4_flex::block::get_maximum_output_size(input.len());
    if out.len() < end {
        out.resize(end, 0);
    }
    out[..4].copy_from_slice(&(input.len() as u32).to_be_bytes());
    let n = lz4_flex::block::compress_into(input, &mut out[4..end]).ok()?;
    let len = 4 + n;
    (len + input.len() / MIN_SAVING_DIVISOR <= input.len()).then_some(len)
}

/// Decompresses a value stored by [`try_compress`]; the error says what is wrong.
pub(crate) fn decompress(stored: &[u8]) -> Result<Vec<u8>, String> {
    if stored.len() < 4 {
        return Err(format!(
            "compressed value of {} bytes has no length prefix",
            stored.len()
        ));
    }
    let len = u32::from_be_bytes([stored[0], stored[1], stored[2], stored[3]]) as usize;
    let block = &stored[4..];
    // lz4 cannot expand more than ~255x; refuse to allocate for an impossible length.
    if len > block.len().saturating_mul(255).saturating_add(16) {
        return Err(format!(
            "compressed value claims {len} bytes from a {}-byte lz4 block",
            block.len()
        ));
    }
    let mut out = vec![0u8; len];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(n) if n == len => Ok(out),
        Ok(n) => Err(format!("lz4 block decoded to {n} bytes, expected {len}")),
        Err(e) => Err(format!("lz4 decompression failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_policy() {
        let page = crate::sample_pages::pgbench_accounts_heap_page(3, 1);
        let mut out = Vec::new();
        let n = try_compress(&page, &mut out).unwrap();
        assert!(n < page.len() / 2, "{n}");
        assert_eq!(decompress(&out[..n]).unwrap(), page);

        let random = crate::sample_pages::random_page(7);
        assert_eq!(try_compress(&random, &mut out), None);
        assert_eq!(try_compress(&[0u8; 100], &mut out), None);

        // The buffer is reused as it is: a smaller value after a larger one, and the larger
        // one's leftover bytes, change nothing.
        let small = crate::sample_pages::pgbench_accounts_heap_page(1, 1);
        let small = &small[..4096];
        let n = try_compress(small, &mut out).unwrap();
        assert_eq!(decompress(&out[..n]).unwrap(), small);
        let n = try_compress(&page, &mut out).unwrap();
        assert_eq!(decompress(&out[..n]).unwrap(), page);

        assert!(decompress(&[0, 0]).is_err());
        assert!(decompress(&[0xFF, 0xFF, 0xFF, 0xFF, 0]).is_err());
        assert!(decompress(&[0, 0, 0, 10, 0xF0]).is_err());
    }
}
