//! Tablespace records (`commands/tablespace.h`).

use bytes::Bytes;

use super::util::Reader;
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;

pub const XLOG_TBLSPC_CREATE: u8 = 0x00;
pub const XLOG_TBLSPC_DROP: u8 = 0x10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TblspcRecord {
    /// `xl_tblspc_create_rec`: the tablespace and its location (empty for an in-place one).
    Create { ts_id: u32, path: String },
    /// `xl_tblspc_drop_rec`.
    Drop { ts_id: u32 },
}

impl TblspcRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<TblspcRecord, RmgrError> {
        match info & !XLR_INFO_MASK {
            XLOG_TBLSPC_CREATE => {
                let mut r = Reader::new(data, "Tablespace/CREATE");
                Ok(TblspcRecord::Create {
                    ts_id: r.u32("ts_id")?,
                    path: r.cstring("ts_path")?,
                })
            }
            XLOG_TBLSPC_DROP => {
                let mut r = Reader::new(data, "Tablespace/DROP");
                Ok(TblspcRecord::Drop {
                    ts_id: r.u32("ts_id")?,
                })
            }
            _ => Err(RmgrError::UnknownInfo {
                rmgr: "Tablespace",
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
        let mut data = Buf::new().u32(16390).build().to_vec();
        data.extend_from_slice(b"/srv/ts\0");
        assert_eq!(
            TblspcRecord::parse(0x00, &Bytes::from(data)).unwrap(),
            TblspcRecord::Create {
                ts_id: 16390,
                path: "/srv/ts".into()
            }
        );
        let d = TblspcRecord::parse(0x10, &Buf::new().u32(16390).build()).unwrap();
        assert_eq!(d, TblspcRecord::Drop { ts_id: 16390 });
        assert!(TblspcRecord::parse(0x10, &Bytes::new()).is_err());
    }
}
