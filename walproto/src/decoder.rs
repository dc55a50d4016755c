//! Streaming WAL decoder: fed bytes from any LSN in chunks of any size, yields whole records.
use crate::lsn::Lsn;
use crate::record::DecodedRecord;

/// What the decoder found next.
#[derive(Debug)]
pub enum Decoded {
    Record(DecodedRecord),
    /// All input so far is consumed; feed more.
    NeedMore,
    /// The WAL ends normally here (zeroed space, or a recycled segment's old pages).
    EndOfWal { lsn: Lsn, reason: String },
}

/// The WAL is corrupt at `lsn`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("corrupt WAL at {lsn}: {reason}")]
pub struct DecodeError {
    pub lsn: Lsn,
    pub reason: String,
}

pub struct WalStreamDecoder {}

impl WalStreamDecoder {
    pub fn new(start: Lsn) -> Self {
        let _ = start;
        todo!()
    }
    pub fn feed(&mut self, data: &[u8]) {
        let _ = data;
        todo!()
    }
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Decoded, DecodeError> {
        todo!()
    }
}
