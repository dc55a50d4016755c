//! Relation mapper records (`utils/relmapper.h`).

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::Reader;
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;

pub const XLOG_RELMAP_UPDATE: u8 = 0x00;

pub fn identify(info: u8) -> Option<&'static str> {
    match info & !XLR_INFO_MASK {
        XLOG_RELMAP_UPDATE => Some("UPDATE"),
        _ => None,
    }
}

/// `xl_relmap_update`: the new contents of a `pg_filenode.map` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelMapUpdate {
    /// 0 for the shared map (`global/pg_filenode.map`).
    pub dbid: u32,
    pub tsid: u32,
    pub nbytes: i32,
    /// `nbytes` bytes of file contents.
    pub data: Bytes,
}

impl RelMapUpdate {
    pub fn parse(info: u8, data: &Bytes) -> Result<RelMapUpdate, RmgrError> {
        if info & !XLR_INFO_MASK != XLOG_RELMAP_UPDATE {
            return Err(RmgrError::UnknownInfo {
                rmgr: "RelMap",
                info,
            });
        }
        let mut r = Reader::new(data, "RelMap/UPDATE");
        let dbid = r.u32("dbid")?;
        let tsid = r.u32("tsid")?;
        let nbytes = r.i32("nbytes")?;
        let len = usize::try_from(nbytes).map_err(|_| r.invalid(format!("nbytes {nbytes}")))?;
        Ok(RelMapUpdate {
            dbid,
            tsid,
            nbytes,
            data: r.bytes(len, "relmap file data")?,
        })
    }

    /// `relmap_desc`.
    pub fn describe(&self, out: &mut String) {
        let _ = write!(
            out,
            "database {} tablespace {} size {}",
            self.dbid, self.tsid, self.nbytes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::Buf;

    #[test]
    fn update() {
        let file: Vec<u8> = (0..=255u8).cycle().take(512).collect();
        let data = Buf::new()
            .u32(16394)
            .u32(1663)
            .i32(512)
            .bytes(&file)
            .build();
        let rec = RelMapUpdate::parse(XLOG_RELMAP_UPDATE, &data).unwrap();
        assert_eq!((rec.dbid, rec.tsid, rec.nbytes), (16394, 1663, 512));
        assert_eq!(&rec.data[..], &file[..]);
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(s, "database 16394 tablespace 1663 size 512");
        let err = RelMapUpdate::parse(0, &data.slice(..100)).unwrap_err();
        assert!(matches!(
            err,
            RmgrError::Truncated {
                record: "RelMap/UPDATE",
                what: "relmap file data",
                need: 524,
                have: 100
            }
        ));
        let neg = Buf::new().u32(0).u32(1664).i32(-4).build();
        assert!(matches!(
            RelMapUpdate::parse(0, &neg),
            Err(RmgrError::Invalid { .. })
        ));
        assert_eq!(identify(0x00), Some("UPDATE"));
        assert_eq!(identify(0x10), None);
    }
}
