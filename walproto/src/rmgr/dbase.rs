//! Database records (`commands/dbcommands_xlog.h`).

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::Reader;
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;

pub const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
pub const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
pub const XLOG_DBASE_DROP: u8 = 0x20;

pub fn identify(info: u8) -> Option<&'static str> {
    match info & !XLR_INFO_MASK {
        XLOG_DBASE_CREATE_FILE_COPY => Some("CREATE_FILE_COPY"),
        XLOG_DBASE_CREATE_WAL_LOG => Some("CREATE_WAL_LOG"),
        XLOG_DBASE_DROP => Some("DROP"),
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbaseRecord {
    /// `xl_dbase_create_file_copy_rec`: copy the source database directory.
    CreateFileCopy {
        db_id: u32,
        tablespace_id: u32,
        src_db_id: u32,
        src_tablespace_id: u32,
    },
    /// `xl_dbase_create_wal_log_rec`: create the directory; contents follow as WAL.
    CreateWalLog { db_id: u32, tablespace_id: u32 },
    /// `xl_dbase_drop_rec`.
    Drop {
        db_id: u32,
        tablespace_ids: Vec<u32>,
    },
}

impl DbaseRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<DbaseRecord, RmgrError> {
        match info & !XLR_INFO_MASK {
            XLOG_DBASE_CREATE_FILE_COPY => {
                let mut r = Reader::new(data, "Database/CREATE_FILE_COPY");
                Ok(DbaseRecord::CreateFileCopy {
                    db_id: r.u32("db_id")?,
                    tablespace_id: r.u32("tablespace_id")?,
                    src_db_id: r.u32("src_db_id")?,
                    src_tablespace_id: r.u32("src_tablespace_id")?,
                })
            }
            XLOG_DBASE_CREATE_WAL_LOG => {
                let mut r = Reader::new(data, "Database/CREATE_WAL_LOG");
                Ok(DbaseRecord::CreateWalLog {
                    db_id: r.u32("db_id")?,
                    tablespace_id: r.u32("tablespace_id")?,
                })
            }
            XLOG_DBASE_DROP => {
                let mut r = Reader::new(data, "Database/DROP");
                let db_id = r.u32("db_id")?;
                let n = r.count("ntablespaces")?;
                Ok(DbaseRecord::Drop {
                    db_id,
                    tablespace_ids: r.u32_array(n, "tablespace_ids")?,
                })
            }
            _ => Err(RmgrError::UnknownInfo {
                rmgr: "Database",
                info,
            }),
        }
    }

    /// `dbase_desc`.
    pub fn describe(&self, out: &mut String) {
        match self {
            DbaseRecord::CreateFileCopy {
                db_id,
                tablespace_id,
                src_db_id,
                src_tablespace_id,
            } => {
                let _ = write!(
                    out,
                    "copy dir {src_tablespace_id}/{src_db_id} to {tablespace_id}/{db_id}"
                );
            }
            DbaseRecord::CreateWalLog {
                db_id,
                tablespace_id,
            } => {
                let _ = write!(out, "create dir {tablespace_id}/{db_id}");
            }
            DbaseRecord::Drop {
                db_id,
                tablespace_ids,
            } => {
                out.push_str("dir");
                for ts in tablespace_ids {
                    let _ = write!(out, " {ts}/{db_id}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::Buf;

    fn desc(r: &DbaseRecord) -> String {
        let mut s = String::new();
        r.describe(&mut s);
        s
    }

    #[test]
    fn all_records() {
        let data = Buf::new().u32(16395).u32(1663).u32(1).u32(1663).build();
        let rec = DbaseRecord::parse(XLOG_DBASE_CREATE_FILE_COPY, &data).unwrap();
        assert_eq!(
            rec,
            DbaseRecord::CreateFileCopy {
                db_id: 16395,
                tablespace_id: 1663,
                src_db_id: 1,
                src_tablespace_id: 1663
            }
        );
        assert_eq!(desc(&rec), "copy dir 1663/1 to 1663/16395");

        let data = Buf::new().u32(16394).u32(1663).build();
        let rec = DbaseRecord::parse(XLOG_DBASE_CREATE_WAL_LOG, &data).unwrap();
        assert_eq!(desc(&rec), "create dir 1663/16394");

        let data = Buf::new().u32(16395).i32(2).u32(1663).u32(16500).build();
        let rec = DbaseRecord::parse(XLOG_DBASE_DROP, &data).unwrap();
        assert_eq!(
            rec,
            DbaseRecord::Drop {
                db_id: 16395,
                tablespace_ids: vec![1663, 16500]
            }
        );
        assert_eq!(desc(&rec), "dir 1663/16395 16500/16395");
        let err = DbaseRecord::parse(XLOG_DBASE_DROP, &data.slice(..12)).unwrap_err();
        assert!(err.to_string().contains("Database/DROP"), "{err}");
        assert!(err.to_string().contains("tablespace_ids"), "{err}");
        assert_eq!(identify(0x20), Some("DROP"));
        assert_eq!(identify(0x30), None);
    }
}
