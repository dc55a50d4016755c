//! Log sequence numbers and the WAL's segment and page arithmetic.

use std::fmt;
use std::str::FromStr;

use crate::consts::{WAL_PAGE_SIZE, WAL_SEGMENT_SIZE};

/// A byte position in the write-ahead log, as Postgres prints it: `X/XXXXXXXX`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Why a string is not an LSN.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {input:?}: expected two hex numbers as X/XXXXXXXX")]
pub struct ParseLsnError {
    input: String,
}

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);
    pub const MAX: Lsn = Lsn(u64::MAX);

    /// Number of the 16 MiB segment holding this LSN.
    pub fn segment_number(self) -> u64 {
        self.0 / WAL_SEGMENT_SIZE
    }

    /// Offset of this LSN inside its segment.
    pub fn segment_offset(self) -> u64 {
        self.0 % WAL_SEGMENT_SIZE
    }

    /// Offset of this LSN inside its 8 KiB WAL page.
    pub fn page_offset(self) -> u64 {
        self.0 % WAL_PAGE_SIZE
    }

    /// Start of the WAL page holding this LSN.
    pub fn page_start(self) -> Lsn {
        Lsn(self.0 - self.page_offset())
    }

    /// Start of the segment holding this LSN.
    pub fn segment_start(self) -> Lsn {
        Lsn(self.0 - self.segment_offset())
    }

    pub fn is_page_start(self) -> bool {
        self.page_offset() == 0
    }

    pub fn is_segment_start(self) -> bool {
        self.segment_offset() == 0
    }

    /// Rounds up to the next multiple of 8, Postgres's MAXALIGN on 64-bit machines.
    pub fn align(self) -> Lsn {
        Lsn((self.0 + 7) & !7)
    }

    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    /// WAL segment file name (`TTTTTTTTXXXXXXXXYYYYYYYY`) of the segment holding this LSN.
    pub fn segment_file_name(self, timeline: u32) -> String {
        segment_file_name(timeline, self.segment_number())
    }
}

/// Segments per "xlogid": the high and middle parts of a segment file name.
const SEGMENTS_PER_XLOGID: u64 = 0x1_0000_0000 / WAL_SEGMENT_SIZE;

/// The file name Postgres gives WAL segment `segno` of `timeline`.
pub fn segment_file_name(timeline: u32, segno: u64) -> String {
    format!(
        "{:08X}{:08X}{:08X}",
        timeline,
        segno / SEGMENTS_PER_XLOGID,
        segno % SEGMENTS_PER_XLOGID
    )
}

/// Parses a segment file name, optionally ending in `.partial`, into (timeline, segment number).
pub fn parse_segment_file_name(name: &str) -> Option<(u32, u64)> {
    let name = name.strip_suffix(".partial").unwrap_or(name);
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&name[16..24], 16).ok()?;
    if lo >= SEGMENTS_PER_XLOGID {
        return None;
    }
    Some((tli, hi * SEGMENTS_PER_XLOGID + lo))
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:08X}", self.0 >> 32, self.0 as u32)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError {
            input: s.to_string(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0x1_0000_0001).to_string(), "1/00000001");
        for bad in ["", "/", "1/", "/1", "x/1", "1/2/3", "123456789/0", "1-2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn segment_names() {
        let lsn: Lsn = "1/2A000028".parse().unwrap();
        assert_eq!(lsn.segment_file_name(1), "00000001000000010000002A");
        assert_eq!(
            parse_segment_file_name("00000001000000010000002A"),
            Some((1, lsn.segment_number()))
        );
        assert_eq!(
            parse_segment_file_name("00000001000000010000002A.partial"),
            Some((1, lsn.segment_number()))
        );
        assert_eq!(parse_segment_file_name("000000010000000100000100"), None);
        assert_eq!(parse_segment_file_name("history"), None);
    }

    #[test]
    fn page_arithmetic() {
        let lsn = Lsn(0x0100_2005);
        assert_eq!(lsn.page_start(), Lsn(0x0100_2000));
        assert_eq!(lsn.segment_start(), Lsn(0x0100_0000));
        assert_eq!(lsn.align(), Lsn(0x0100_2008));
        assert_eq!(Lsn(0x0100_2008).align(), Lsn(0x0100_2008));
        assert!(Lsn(0x0100_0000).is_segment_start());
    }
}
