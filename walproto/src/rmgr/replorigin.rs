//! Replication origin records (`replication/origin.h`).

use bytes::Bytes;

use super::util::Reader;
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;

pub const XLOG_REPLORIGIN_SET: u8 = 0x00;
pub const XLOG_REPLORIGIN_DROP: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplOriginRecord {
    /// `xl_replorigin_set` (`pg_replication_origin_advance`): `force` lets the remote LSN
    /// move backwards.
    Set {
        remote_lsn: u64,
        node_id: u16,
        force: bool,
    },
    /// `xl_replorigin_drop`.
    Drop { node_id: u16 },
}

impl ReplOriginRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<ReplOriginRecord, RmgrError> {
        match info & !XLR_INFO_MASK {
            XLOG_REPLORIGIN_SET => {
                let mut r = Reader::new(data, "ReplicationOrigin/SET");
                Ok(ReplOriginRecord::Set {
                    remote_lsn: r.u64("remote_lsn")?,
                    node_id: r.u16("node_id")?,
                    force: r.bool("force")?,
                })
            }
            XLOG_REPLORIGIN_DROP => {
                let mut r = Reader::new(data, "ReplicationOrigin/DROP");
                Ok(ReplOriginRecord::Drop {
                    node_id: r.u16("node_id")?,
                })
            }
            _ => Err(RmgrError::UnknownInfo {
                rmgr: "ReplicationOrigin",
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
        let data = Buf::new().u64(0x1_0000_0028).u16(3).u8(1).build();
        assert_eq!(
            ReplOriginRecord::parse(0x00, &data).unwrap(),
            ReplOriginRecord::Set {
                remote_lsn: 0x1_0000_0028,
                node_id: 3,
                force: true
            }
        );
        assert!(ReplOriginRecord::parse(0x00, &data.slice(..9)).is_err());
        let d = ReplOriginRecord::parse(0x10, &Buf::new().u16(2).build()).unwrap();
        assert_eq!(d, ReplOriginRecord::Drop { node_id: 2 });
        assert!(ReplOriginRecord::parse(0x30, &data).is_err());
    }
}
