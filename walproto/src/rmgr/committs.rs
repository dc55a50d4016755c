//! Commit timestamp (`pg_commit_ts`) records (`access/commit_ts.h`).

use bytes::Bytes;

use super::util::Reader;
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;

pub const COMMIT_TS_ZEROPAGE: u8 = 0x00;
pub const COMMIT_TS_TRUNCATE: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitTsRecord {
    /// A fresh page of the SLRU (`ExtendCommitTs`).
    ZeroPage { pageno: i32 },
    /// `xl_commit_ts_truncate`: segments before `pageno`'s go, and nothing older than
    /// `oldest_xid` is asked for any more.
    Truncate { pageno: i32, oldest_xid: u32 },
}

impl CommitTsRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<CommitTsRecord, RmgrError> {
        match info & !XLR_INFO_MASK {
            COMMIT_TS_ZEROPAGE => {
                let mut r = Reader::new(data, "CommitTs/ZEROPAGE");
                Ok(CommitTsRecord::ZeroPage {
                    pageno: r.i32("pageno")?,
                })
            }
            COMMIT_TS_TRUNCATE => {
                let mut r = Reader::new(data, "CommitTs/TRUNCATE");
                Ok(CommitTsRecord::Truncate {
                    pageno: r.i32("pageno")?,
                    oldest_xid: r.u32("oldestXid")?,
                })
            }
            _ => Err(RmgrError::UnknownInfo {
                rmgr: "CommitTs",
                info,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::Buf;

    #[test]
    fn parse_both() {
        let z = CommitTsRecord::parse(0x00, &Buf::new().i32(7).build()).unwrap();
        assert_eq!(z, CommitTsRecord::ZeroPage { pageno: 7 });
        let data = Buf::new().i32(3).u32(5000).build();
        let t = CommitTsRecord::parse(0x10, &data).unwrap();
        assert_eq!(
            t,
            CommitTsRecord::Truncate {
                pageno: 3,
                oldest_xid: 5000
            }
        );
        assert!(CommitTsRecord::parse(0x10, &data.slice(..6)).is_err());
        assert!(CommitTsRecord::parse(0x20, &data).is_err());
    }
}
