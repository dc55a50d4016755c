//! CLOG (pg_xact) records (`access/clog.h`).

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::Reader;
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;

pub const CLOG_ZEROPAGE: u8 = 0x00;
pub const CLOG_TRUNCATE: u8 = 0x10;

pub fn identify(info: u8) -> Option<&'static str> {
    match info & !XLR_INFO_MASK {
        CLOG_ZEROPAGE => Some("ZEROPAGE"),
        CLOG_TRUNCATE => Some("TRUNCATE"),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClogRecord {
    ZeroPage {
        pageno: i32,
    },
    /// `xl_clog_truncate`.
    Truncate {
        pageno: i32,
        oldest_xact: u32,
        oldest_xact_db: u32,
    },
}

impl ClogRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<ClogRecord, RmgrError> {
        match info & !XLR_INFO_MASK {
            CLOG_ZEROPAGE => {
                let mut r = Reader::new(data, "CLOG/ZEROPAGE");
                Ok(ClogRecord::ZeroPage {
                    pageno: r.i32("pageno")?,
                })
            }
            CLOG_TRUNCATE => {
                let mut r = Reader::new(data, "CLOG/TRUNCATE");
                Ok(ClogRecord::Truncate {
                    pageno: r.i32("pageno")?,
                    oldest_xact: r.u32("oldestXact")?,
                    oldest_xact_db: r.u32("oldestXactDb")?,
                })
            }
            _ => Err(RmgrError::UnknownInfo { rmgr: "CLOG", info }),
        }
    }

    /// `clog_desc`.
    pub fn describe(&self, out: &mut String) {
        let _ = match self {
            ClogRecord::ZeroPage { pageno } => write!(out, "page {pageno}"),
            ClogRecord::Truncate {
                pageno,
                oldest_xact,
                ..
            } => write!(out, "page {pageno}; oldestXact {oldest_xact}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::Buf;

    #[test]
    fn zeropage_and_truncate() {
        let rec = ClogRecord::parse(CLOG_ZEROPAGE, &Buf::new().i32(3).build()).unwrap();
        assert_eq!(rec, ClogRecord::ZeroPage { pageno: 3 });
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(s, "page 3");

        let data = Buf::new().i32(2).u32(70000).u32(1).build();
        let rec = ClogRecord::parse(CLOG_TRUNCATE, &data).unwrap();
        assert_eq!(
            rec,
            ClogRecord::Truncate {
                pageno: 2,
                oldest_xact: 70000,
                oldest_xact_db: 1
            }
        );
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(s, "page 2; oldestXact 70000");
        assert!(ClogRecord::parse(CLOG_TRUNCATE, &data.slice(..8)).is_err());
        assert!(ClogRecord::parse(CLOG_ZEROPAGE, &Bytes::new()).is_err());
        assert_eq!(identify(0x10), Some("TRUNCATE"));
        assert_eq!(identify(0x20), None);
    }
}
