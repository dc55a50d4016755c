//! MultiXact records (`access/multixact.h`).

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::Reader;
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;

pub const XLOG_MULTIXACT_ZERO_OFF_PAGE: u8 = 0x00;
pub const XLOG_MULTIXACT_ZERO_MEM_PAGE: u8 = 0x10;
pub const XLOG_MULTIXACT_CREATE_ID: u8 = 0x20;
pub const XLOG_MULTIXACT_TRUNCATE_ID: u8 = 0x30;

/// `MultiXactStatus` values.
pub const MULTIXACT_STATUS_FOR_KEY_SHARE: u32 = 0x00;
pub const MULTIXACT_STATUS_FOR_SHARE: u32 = 0x01;
pub const MULTIXACT_STATUS_FOR_NO_KEY_UPDATE: u32 = 0x02;
pub const MULTIXACT_STATUS_FOR_UPDATE: u32 = 0x03;
pub const MULTIXACT_STATUS_NO_KEY_UPDATE: u32 = 0x04;
pub const MULTIXACT_STATUS_UPDATE: u32 = 0x05;

pub fn identify(info: u8) -> Option<&'static str> {
    match info & !XLR_INFO_MASK {
        XLOG_MULTIXACT_ZERO_OFF_PAGE => Some("ZERO_OFF_PAGE"),
        XLOG_MULTIXACT_ZERO_MEM_PAGE => Some("ZERO_MEM_PAGE"),
        XLOG_MULTIXACT_CREATE_ID => Some("CREATE_ID"),
        XLOG_MULTIXACT_TRUNCATE_ID => Some("TRUNCATE_ID"),
        _ => None,
    }
}

/// `MultiXactMember`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiXactMember {
    pub xid: u32,
    /// A `MultiXactStatus`.
    pub status: u32,
}

/// `xl_multixact_truncate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiXactTruncate {
    pub oldest_multi_db: u32,
    pub start_trunc_off: u32,
    pub end_trunc_off: u32,
    pub start_trunc_memb: u32,
    pub end_trunc_memb: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultiXactRecord {
    ZeroOffPage {
        pageno: i32,
    },
    ZeroMemPage {
        pageno: i32,
    },
    /// `xl_multixact_create`.
    CreateId {
        mid: u32,
        moff: u32,
        members: Vec<MultiXactMember>,
    },
    TruncateId(MultiXactTruncate),
}

impl MultiXactRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<MultiXactRecord, RmgrError> {
        match info & !XLR_INFO_MASK {
            XLOG_MULTIXACT_ZERO_OFF_PAGE => {
                let mut r = Reader::new(data, "MultiXact/ZERO_OFF_PAGE");
                Ok(MultiXactRecord::ZeroOffPage {
                    pageno: r.i32("pageno")?,
                })
            }
            XLOG_MULTIXACT_ZERO_MEM_PAGE => {
                let mut r = Reader::new(data, "MultiXact/ZERO_MEM_PAGE");
                Ok(MultiXactRecord::ZeroMemPage {
                    pageno: r.i32("pageno")?,
                })
            }
            XLOG_MULTIXACT_CREATE_ID => {
                let mut r = Reader::new(data, "MultiXact/CREATE_ID");
                let mid = r.u32("mid")?;
                let moff = r.u32("moff")?;
                let n = r.count("nmembers")?;
                r.ensure_items(n, 8, "members")?;
                let members = (0..n)
                    .map(|_| {
                        Ok(MultiXactMember {
                            xid: r.u32("member xid")?,
                            status: r.u32("member status")?,
                        })
                    })
                    .collect::<Result<_, RmgrError>>()?;
                Ok(MultiXactRecord::CreateId { mid, moff, members })
            }
            XLOG_MULTIXACT_TRUNCATE_ID => {
                let mut r = Reader::new(data, "MultiXact/TRUNCATE_ID");
                Ok(MultiXactRecord::TruncateId(MultiXactTruncate {
                    oldest_multi_db: r.u32("oldestMultiDB")?,
                    start_trunc_off: r.u32("startTruncOff")?,
                    end_trunc_off: r.u32("endTruncOff")?,
                    start_trunc_memb: r.u32("startTruncMemb")?,
                    end_trunc_memb: r.u32("endTruncMemb")?,
                }))
            }
            _ => Err(RmgrError::UnknownInfo {
                rmgr: "MultiXact",
                info,
            }),
        }
    }

    /// `multixact_desc`.
    pub fn describe(&self, out: &mut String) {
        let _ = match self {
            MultiXactRecord::ZeroOffPage { pageno } | MultiXactRecord::ZeroMemPage { pageno } => {
                write!(out, "{pageno}")
            }
            MultiXactRecord::CreateId { mid, moff, members } => {
                let _ = write!(out, "{} offset {} nmembers {}: ", mid, moff, members.len());
                for m in members {
                    let status = match m.status {
                        MULTIXACT_STATUS_FOR_KEY_SHARE => "keysh",
                        MULTIXACT_STATUS_FOR_SHARE => "sh",
                        MULTIXACT_STATUS_FOR_NO_KEY_UPDATE => "fornokeyupd",
                        MULTIXACT_STATUS_FOR_UPDATE => "forupd",
                        MULTIXACT_STATUS_NO_KEY_UPDATE => "nokeyupd",
                        MULTIXACT_STATUS_UPDATE => "upd",
                        _ => "unk",
                    };
                    let _ = write!(out, "{} ({}) ", m.xid, status);
                }
                Ok(())
            }
            MultiXactRecord::TruncateId(t) => write!(
                out,
                "offsets [{}, {}), members [{}, {})",
                t.start_trunc_off, t.end_trunc_off, t.start_trunc_memb, t.end_trunc_memb
            ),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::Buf;

    fn desc(r: &MultiXactRecord) -> String {
        let mut s = String::new();
        r.describe(&mut s);
        s
    }

    #[test]
    fn all_records() {
        let rec = MultiXactRecord::parse(0x00, &Buf::new().i32(1).build()).unwrap();
        assert_eq!(rec, MultiXactRecord::ZeroOffPage { pageno: 1 });
        assert_eq!(desc(&rec), "1");
        let rec = MultiXactRecord::parse(0x10, &Buf::new().i32(7).build()).unwrap();
        assert_eq!(rec, MultiXactRecord::ZeroMemPage { pageno: 7 });

        let data = Buf::new()
            .u32(2)
            .u32(3)
            .i32(2)
            .u32(760)
            .u32(MULTIXACT_STATUS_FOR_SHARE)
            .u32(761)
            .u32(MULTIXACT_STATUS_NO_KEY_UPDATE)
            .build();
        let rec = MultiXactRecord::parse(XLOG_MULTIXACT_CREATE_ID, &data).unwrap();
        let MultiXactRecord::CreateId { mid, moff, members } = &rec else {
            panic!()
        };
        assert_eq!((*mid, *moff), (2, 3));
        assert_eq!(
            members[1],
            MultiXactMember {
                xid: 761,
                status: MULTIXACT_STATUS_NO_KEY_UPDATE
            }
        );
        assert_eq!(
            desc(&rec),
            "2 offset 3 nmembers 2: 760 (sh) 761 (nokeyupd) "
        );
        let err = MultiXactRecord::parse(XLOG_MULTIXACT_CREATE_ID, &data.slice(..20)).unwrap_err();
        assert!(err.to_string().contains("CREATE_ID"), "{err}");

        let data = Buf::new().u32(1).u32(1).u32(5).u32(0).u32(10).build();
        let rec = MultiXactRecord::parse(XLOG_MULTIXACT_TRUNCATE_ID, &data).unwrap();
        assert_eq!(
            rec,
            MultiXactRecord::TruncateId(MultiXactTruncate {
                oldest_multi_db: 1,
                start_trunc_off: 1,
                end_trunc_off: 5,
                start_trunc_memb: 0,
                end_trunc_memb: 10
            })
        );
        assert_eq!(desc(&rec), "offsets [1, 5), members [0, 10)");
        assert_eq!(identify(0x30), Some("TRUNCATE_ID"));
        assert_eq!(identify(0x40), None);
    }
}
