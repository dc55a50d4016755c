//! Sequence records (`commands/sequence.h`).

use std::fmt::Write as _;

use bytes::Bytes;

use super::util::Reader;
use super::RmgrError;
use crate::consts::XLR_INFO_MASK;
use crate::record::RelFileNode;

pub const XLOG_SEQ_LOG: u8 = 0x00;

pub fn identify(info: u8) -> Option<&'static str> {
    match info & !XLR_INFO_MASK {
        XLOG_SEQ_LOG => Some("LOG"),
        _ => None,
    }
}

/// `xl_seq_rec` followed by the sequence's heap tuple (`HeapTupleHeader` and data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqRecord {
    pub node: RelFileNode,
    pub tuple: Bytes,
}

impl SeqRecord {
    pub fn parse(info: u8, data: &Bytes) -> Result<SeqRecord, RmgrError> {
        if info & !XLR_INFO_MASK != XLOG_SEQ_LOG {
            return Err(RmgrError::UnknownInfo {
                rmgr: "Sequence",
                info,
            });
        }
        let mut r = Reader::new(data, "Sequence/LOG");
        let node = r.rel("node")?;
        Ok(SeqRecord {
            node,
            tuple: r.rest(),
        })
    }

    /// `seq_desc`.
    pub fn describe(&self, out: &mut String) {
        let _ = write!(
            out,
            "rel {}/{}/{}",
            self.node.spc, self.node.db, self.node.rel
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rmgr::testutil::Buf;

    #[test]
    fn log() {
        let data = Buf::new().rel(1663, 5, 16393).bytes(&[1, 2, 3, 4]).build();
        let rec = SeqRecord::parse(XLOG_SEQ_LOG, &data).unwrap();
        assert_eq!(
            rec.node,
            RelFileNode {
                spc: 1663,
                db: 5,
                rel: 16393
            }
        );
        assert_eq!(&rec.tuple[..], &[1, 2, 3, 4]);
        let mut s = String::new();
        rec.describe(&mut s);
        assert_eq!(s, "rel 1663/5/16393");
        let err = SeqRecord::parse(XLOG_SEQ_LOG, &data.slice(..11)).unwrap_err();
        assert!(err.to_string().contains("Sequence/LOG"), "{err}");
        assert_eq!(identify(0x00), Some("LOG"));
        assert_eq!(identify(0x10), None);
    }
}
