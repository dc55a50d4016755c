//! Decompression of PostgreSQL's pglz format (`common/pg_lzcompress.c`), used by
//! `wal_compression = pglz`.
//!
//! The stream is a sequence of groups: a control byte, then up to eight items, one per control
//! bit from the lowest. A clear bit is one literal byte. A set bit is a back reference of two
//! bytes (three when the length is 18 or more): length = (b0 & 0x0f) + 3, plus a third byte when
//! that nibble is 0x0f; offset = ((b0 & 0xf0) << 4) | b1. References may overlap their output.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PglzError {
    #[error("compressed data ends inside a back reference")]
    Truncated,
    #[error("back reference at output byte {at} points {offset} bytes back")]
    BadOffset { at: usize, offset: usize },
    #[error("output would exceed {0} bytes")]
    Overflow(usize),
}

/// Decompresses `src` into `dst`, returning how many bytes were written. Like Postgres with
/// `check_complete`, the whole input must be consumed and the output filled exactly.
pub fn decompress(src: &[u8], dst: &mut [u8]) -> Result<usize, PglzError> {
    let mut sp = 0;
    let mut dp = 0;
    while sp < src.len() && dp < dst.len() {
        let ctrl = src[sp];
        sp += 1;
        for bit in 0..8 {
            if sp >= src.len() || dp >= dst.len() {
                break;
            }
            if ctrl & (1 << bit) != 0 {
                if sp + 1 >= src.len() {
                    return Err(PglzError::Truncated);
                }
                let mut len = (src[sp] & 0x0f) as usize + 3;
                let offset = (((src[sp] & 0xf0) as usize) << 4) | src[sp + 1] as usize;
                sp += 2;
                if len == 18 {
                    let Some(&extra) = src.get(sp) else {
                        return Err(PglzError::Truncated);
                    };
                    len += extra as usize;
                    sp += 1;
                }
                if offset == 0 || offset > dp {
                    return Err(PglzError::BadOffset { at: dp, offset });
                }
                // Postgres stops quietly at the end of the output buffer.
                let len = len.min(dst.len() - dp);
                if offset >= len {
                    dst.copy_within(dp - offset..dp - offset + len, dp);
                } else {
                    for i in 0..len {
                        dst[dp + i] = dst[dp + i - offset];
                    }
                }
                dp += len;
            } else {
                dst[dp] = src[sp];
                sp += 1;
                dp += 1;
            }
        }
    }
    if sp != src.len() {
        return Err(PglzError::Overflow(dst.len()));
    }
    Ok(dp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_references() {
        // "abcabcabcX": 3 literals, a reference (len 6, offset 3), a literal.
        let src = [0b0000_1000, b'a', b'b', b'c', 0x03, 0x03, b'X'];
        let mut dst = [0u8; 10];
        assert_eq!(decompress(&src, &mut dst), Ok(10));
        assert_eq!(&dst, b"abcabcabcX");
    }

    #[test]
    fn long_reference() {
        // One literal then a reference of 18 + 100 bytes at offset 1.
        let src = [0b0000_0010, b'z', 0x0f, 0x01, 100];
        let mut dst = [0u8; 119];
        assert_eq!(decompress(&src, &mut dst), Ok(119));
        assert!(dst.iter().all(|&b| b == b'z'));
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut dst = [0u8; 16];
        assert!(decompress(&[0x01, 0x03, 0x05], &mut dst).is_err());
        assert!(decompress(&[0x01, 0x03], &mut dst).is_err());
        assert!(decompress(
            &[0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
            &mut dst
        )
        .is_err());
    }
}
