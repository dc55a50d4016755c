//! Bounds-checked little-endian field reads of a record's main or block data: a read past
//! the end is a [`PageError`](super::page::PageError) naming what was being read, never a
//! panic.

use super::page::{self, perr, PResult};

/// Bounds-checked little-endian reads of a record's main or block data.
pub struct Fields<'a> {
    pub data: &'a [u8],
    /// What the bytes are, for errors (`"main data"`, `"block 0 data"`).
    pub what: &'static str,
}

impl Fields<'_> {
    pub fn need(&self, len: usize) -> PResult<()> {
        if self.data.len() < len {
            return perr!("{} of {} bytes, need {len}", self.what, self.data.len());
        }
        Ok(())
    }
    pub fn u8(&self, off: usize) -> PResult<u8> {
        self.need(off + 1)?;
        Ok(self.data[off])
    }
    pub fn flag(&self, off: usize) -> PResult<bool> {
        Ok(self.u8(off)? != 0)
    }
    pub fn u16(&self, off: usize) -> PResult<u16> {
        self.need(off + 2)?;
        page::get_u16(self.data, off)
    }
    pub fn u32(&self, off: usize) -> PResult<u32> {
        self.need(off + 4)?;
        page::get_u32(self.data, off)
    }
    pub fn f64(&self, off: usize) -> PResult<f64> {
        self.need(off + 8)?;
        Ok(f64::from_le_bytes(
            self.data[off..off + 8].try_into().unwrap(),
        ))
    }
}
