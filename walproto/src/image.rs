//! Full-page images carried by block references: hole, compression, restore.

use bytes::Bytes;

use crate::consts::*;
use crate::pglz;

/// How a block image was compressed by `wal_compression`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageCompression {
    Pglz,
    Lz4,
    Zstd,
}

impl ImageCompression {
    pub fn name(self) -> &'static str {
        match self {
            ImageCompression::Pglz => "pglz",
            ImageCompression::Lz4 => "lz4",
            ImageCompression::Zstd => "zstd",
        }
    }
}

/// A block image as stored in the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockImage {
    pub bimg_info: u8,
    pub hole_offset: u16,
    pub hole_length: u16,
    /// The stored bytes: the page without its hole, possibly compressed.
    pub stored: Bytes,
}

/// Why an image cannot be restored into a page.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("{method} decompression of a block image failed: {reason}")]
    Decompress {
        method: &'static str,
        reason: String,
    },
    #[error("block image has {got} bytes without its hole, expected {expected}")]
    WrongLength { got: usize, expected: usize },
    #[error("block image uses an unknown compression method (bimg_info {0:#04x})")]
    UnknownCompression(u8),
}

impl BlockImage {
    pub fn new(bimg_info: u8, hole_offset: u16, hole_length: u16, stored: Bytes) -> BlockImage {
        BlockImage {
            bimg_info,
            hole_offset,
            hole_length,
            stored,
        }
    }

    /// Redo must restore this image (`BKPIMAGE_APPLY`); otherwise it exists only so that
    /// `wal_consistency_checking` can compare the page redo produced.
    pub fn apply(&self) -> bool {
        self.bimg_info & BKPIMAGE_APPLY != 0
    }

    pub fn stored_len(&self) -> usize {
        self.stored.len()
    }

    pub fn compression(&self) -> Result<Option<ImageCompression>, ImageError> {
        match self.bimg_info & BKPIMAGE_COMPRESSED_MASK {
            0 => Ok(None),
            BKPIMAGE_COMPRESS_PGLZ => Ok(Some(ImageCompression::Pglz)),
            BKPIMAGE_COMPRESS_LZ4 => Ok(Some(ImageCompression::Lz4)),
            BKPIMAGE_COMPRESS_ZSTD => Ok(Some(ImageCompression::Zstd)),
            _ => Err(ImageError::UnknownCompression(self.bimg_info)),
        }
    }

    /// Rebuilds the full 8 KiB page: decompresses, then reinserts the zeroed hole.
    pub fn restore(&self) -> Result<Box<[u8; BLCKSZ]>, ImageError> {
        let mut page = Box::new([0u8; BLCKSZ]);
        self.restore_into(&mut page)?;
        Ok(page)
    }

    pub fn restore_into(&self, page: &mut [u8; BLCKSZ]) -> Result<(), ImageError> {
        let hole_offset = self.hole_offset as usize;
        let hole_length = self.hole_length as usize;
        let expected = BLCKSZ - hole_length;
        let mut tmp = [0u8; BLCKSZ];
        let body: &[u8] = match self.compression()? {
            None => &self.stored,
            Some(method) => {
                let n = decompress(method, &self.stored, &mut tmp[..expected])?;
                if n != expected {
                    return Err(ImageError::WrongLength { got: n, expected });
                }
                &tmp[..expected]
            }
        };
        if body.len() != expected {
            return Err(ImageError::WrongLength {
                got: body.len(),
                expected,
            });
        }
        page[..hole_offset].copy_from_slice(&body[..hole_offset]);
        page[hole_offset..hole_offset + hole_length].fill(0);
        page[hole_offset + hole_length..].copy_from_slice(&body[hole_offset..]);
        Ok(())
    }
}

fn decompress(method: ImageCompression, src: &[u8], dst: &mut [u8]) -> Result<usize, ImageError> {
    let fail = |reason: String| ImageError::Decompress {
        method: method.name(),
        reason,
    };
    match method {
        ImageCompression::Pglz => pglz::decompress(src, dst).map_err(|e| fail(e.to_string())),
        ImageCompression::Lz4 => {
            lz4_flex::block::decompress_into(src, dst).map_err(|e| fail(e.to_string()))
        }
        ImageCompression::Zstd => {
            zstd::bulk::decompress_to_buffer(src, dst).map_err(|e| fail(e.to_string()))
        }
    }
}
