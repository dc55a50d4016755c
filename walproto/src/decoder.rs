//! Streaming WAL decoder: fed bytes from any LSN in chunks of any size, it yields whole records.
//!
//! The WAL is a sequence of 8 KiB pages, each opening with a page header (a long one at the
//! start of every 16 MiB segment). Records start MAXALIGNed (8 bytes) and may continue over any
//! number of pages; a page whose first bytes continue a record says so with
//! `XLP_FIRST_IS_CONTRECORD` and the number of bytes still to come (`xlp_rem_len`).
//!
//! The decoder tells the normal end of the WAL from corruption:
//! - end of WAL ([`Decoded::EndOfWal`]): a zero record length where a record should start, a
//!   zeroed page, or a page of a recycled segment (valid magic, but an older page address);
//! - corruption ([`DecodeError`]): bad magic, an impossible page address, bad flags, a record
//!   length below the header size or above 1 GiB, a wrong `xl_prev`, an invalid rmgr id, a CRC
//!   mismatch, a missing or wrong continuation, or a record body whose block references do not
//!   add up.
//!
//! Both are sticky: once reached, `next` keeps returning the same answer.

use bytes::{Bytes, BytesMut};

use crate::consts::*;
use crate::lsn::Lsn;
use crate::record::{decode_record_body, record_crc, DecodedRecord, XLogRecordHeader};
use crate::rmgr::{rmid_is_valid, RM_XLOG_ID};

/// `XLOG_SWITCH` in the XLOG rmgr's info bits.
const XLOG_SWITCH: u8 = 0x40;

/// What the decoder found next.
#[derive(Debug)]
pub enum Decoded {
    Record(DecodedRecord),
    /// All input so far is consumed; feed more.
    NeedMore,
    /// The WAL ends normally at `lsn`: nothing was ever written there (or only a torn tail).
    EndOfWal {
        lsn: Lsn,
        reason: String,
    },
}

/// The WAL is corrupt at `lsn`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("corrupt WAL at {lsn}: {reason}")]
pub struct DecodeError {
    pub lsn: Lsn,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next byte after any padding starts a record.
    RecordStart,
    /// Assembling the record that started at `record_start`, `record_len` bytes long.
    InRecord,
    /// Discarding the tail of a record that began before the decoder's start LSN.
    SkipContinuation { remaining: u32 },
}

/// How the decoder ended, remembered so that it keeps answering the same.
#[derive(Debug, Clone)]
enum Finished {
    EndOfWal { lsn: Lsn, reason: String },
    Corrupt(DecodeError),
}

/// Page size as usize, for slicing.
const PAGE: usize = WAL_PAGE_SIZE as usize;
/// New arena chunks for records assembled across pages: many share one allocation.
const ARENA_CHUNK: usize = 256 * 1024;

pub struct WalStreamDecoder {
    /// Input not yet consumed; its first byte is at LSN `pos`. Records lying whole in it are
    /// split off without a copy.
    input: Bytes,
    pos: Lsn,
    /// Where decoding began: a continuation found on this page belongs to an earlier record.
    start: Lsn,
    state: State,
    /// Bytes before this LSN are padding (or the unused rest of a segment after XLOG_SWITCH)
    /// and are dropped without looking at them.
    skip_to: Lsn,
    /// The current page's header has been read (the one holding `pos`).
    header_read_for_page: Option<Lsn>,
    record_start: Lsn,
    record_len: u32,
    record_header_checked: bool,
    arena: BytesMut,
    /// Start of the previous record, which the next one's `xl_prev` must name.
    prev_record: Option<Lsn>,
    system_id: Option<u64>,
    last_timeline: u32,
    finished: Option<Finished>,
}

impl WalStreamDecoder {
    /// A decoder whose first fed byte is at `start`. `start` must be a record boundary, or the
    /// start of a page (then a continuation at the top of the page is skipped).
    pub fn new(start: Lsn) -> Self {
        WalStreamDecoder {
            input: Bytes::new(),
            pos: start,
            start,
            state: State::RecordStart,
            skip_to: start,
            header_read_for_page: None,
            record_start: start,
            record_len: 0,
            record_header_checked: false,
            arena: BytesMut::new(),
            prev_record: None,
            system_id: None,
            last_timeline: 0,
            finished: None,
        }
    }

    /// The first record's `xl_prev` must be `prev` (otherwise it is not checked).
    pub fn expect_prev(mut self, prev: Lsn) -> Self {
        self.prev_record = Some(prev);
        self
    }

    /// The LSN of the next byte `feed` expects.
    pub fn input_lsn(&self) -> Lsn {
        Lsn(self.pos.0 + self.input.len() as u64)
    }

    /// Where the record being assembled (or the next one) starts.
    pub fn record_lsn(&self) -> Lsn {
        match self.state {
            State::InRecord => self.record_start,
            _ => self.skip_to.max(self.pos),
        }
    }

    /// The decoder is in the middle of a record.
    pub fn in_record(&self) -> bool {
        self.state == State::InRecord
    }

    /// Appends the next bytes of the WAL (copied).
    pub fn feed(&mut self, data: &[u8]) {
        if self.input.is_empty() {
            self.input = Bytes::copy_from_slice(data);
        } else {
            self.append_copy(data);
        }
    }

    /// Appends the next bytes of the WAL, keeping `data` itself (records lying whole in it
    /// share its buffer) when all earlier input is consumed, as it is when the input comes in
    /// whole WAL pages; otherwise like [`WalStreamDecoder::feed`].
    pub fn feed_bytes(&mut self, data: Bytes) {
        if self.input.is_empty() {
            self.input = data;
        } else {
            self.append_copy(&data);
        }
    }

    /// The unconsumed input followed by `data`, in a new buffer: the records already split off
    /// keep the old one.
    fn append_copy(&mut self, data: &[u8]) {
        let mut joined = BytesMut::with_capacity(self.input.len() + data.len());
        joined.extend_from_slice(&self.input);
        joined.extend_from_slice(data);
        self.input = joined.freeze();
    }

    fn available(&self) -> &[u8] {
        &self.input
    }

    fn advance(&mut self, n: usize) {
        bytes::Buf::advance(&mut self.input, n);
        self.pos = Lsn(self.pos.0 + n as u64);
    }

    fn corrupt(&mut self, lsn: Lsn, reason: String) -> Result<Decoded, DecodeError> {
        let err = DecodeError { lsn, reason };
        self.finished = Some(Finished::Corrupt(err.clone()));
        Err(err)
    }

    fn end_of_wal(&mut self, lsn: Lsn, reason: String) -> Result<Decoded, DecodeError> {
        self.finished = Some(Finished::EndOfWal {
            lsn,
            reason: reason.clone(),
        });
        Ok(Decoded::EndOfWal { lsn, reason })
    }

    /// Decodes the next record, or says why there is none yet.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Decoded, DecodeError> {
        if let Some(finished) = &self.finished {
            return match finished.clone() {
                Finished::EndOfWal { lsn, reason } => Ok(Decoded::EndOfWal { lsn, reason }),
                Finished::Corrupt(e) => Err(e),
            };
        }
        loop {
            // Padding, or the rest of a switched segment.
            if self.pos < self.skip_to {
                let n = ((self.skip_to.0 - self.pos.0) as usize).min(self.available().len());
                if n == 0 {
                    return Ok(Decoded::NeedMore);
                }
                self.advance(n);
                continue;
            }
            if self.pos.is_page_start() && self.header_read_for_page != Some(self.pos) {
                match self.read_page_header()? {
                    Some(Decoded::NeedMore) => return Ok(Decoded::NeedMore),
                    Some(other) => return Ok(other),
                    None => continue,
                }
            }
            let page_left = PAGE - self.pos.page_offset() as usize;
            match self.state {
                State::SkipContinuation { remaining } => {
                    let n = (remaining as usize)
                        .min(page_left)
                        .min(self.available().len());
                    if n == 0 {
                        return Ok(Decoded::NeedMore);
                    }
                    self.advance(n);
                    let remaining = remaining - n as u32;
                    if remaining == 0 {
                        self.state = State::RecordStart;
                        self.skip_to = self.pos.align();
                    } else {
                        self.state = State::SkipContinuation { remaining };
                    }
                }
                State::RecordStart => {
                    if let Some(done) = self.start_record(page_left)? {
                        return Ok(done);
                    }
                }
                State::InRecord => {
                    let have = self.arena.len();
                    let need = self.record_len as usize - have;
                    let n = need.min(page_left).min(self.available().len());
                    if n == 0 {
                        return Ok(Decoded::NeedMore);
                    }
                    self.arena.extend_from_slice(&self.input[..n]);
                    self.advance(n);
                    if !self.record_header_checked && self.arena.len() >= SIZE_OF_XLOG_RECORD {
                        let header = XLogRecordHeader::parse(&self.arena[..SIZE_OF_XLOG_RECORD]);
                        self.check_header(&header)?;
                    }
                    if self.arena.len() == self.record_len as usize {
                        let raw = self.arena.split().freeze();
                        return self.finish_record(raw).map(Decoded::Record);
                    }
                }
            }
        }
    }

    /// At a record boundary inside a page: starts the next record, decoding it at once when it
    /// lies whole in the input. Returns `Some` when the caller must return.
    fn start_record(&mut self, page_left: usize) -> Result<Option<Decoded>, DecodeError> {
        let avail = self.available();
        // Records are MAXALIGNed and pages end on a multiple of 8, so xl_tot_len and xl_xid are
        // always on the record's first page.
        if avail.len() < 4 {
            return Ok(Some(Decoded::NeedMore));
        }
        let tot_len = u32::from_le_bytes(avail[0..4].try_into().unwrap());
        let lsn = self.pos;
        if tot_len == 0 {
            return self
                .end_of_wal(lsn, format!("zero record length at {lsn}"))
                .map(Some);
        }
        if (tot_len as usize) < SIZE_OF_XLOG_RECORD {
            return self
                .corrupt(
                    lsn,
                    format!("invalid record length: wanted at least {SIZE_OF_XLOG_RECORD}, got {tot_len}"),
                )
                .map(Some);
        }
        if tot_len > MAX_RECORD_LEN {
            return self
                .corrupt(lsn, format!("record length {tot_len} is larger than 1 GiB"))
                .map(Some);
        }
        self.record_start = lsn;
        self.record_len = tot_len;
        self.record_header_checked = false;
        self.arena.clear();
        if page_left >= SIZE_OF_XLOG_RECORD {
            if self.available().len() < SIZE_OF_XLOG_RECORD {
                return Ok(Some(Decoded::NeedMore));
            }
            let header = XLogRecordHeader::parse(&self.available()[..SIZE_OF_XLOG_RECORD]);
            self.check_header(&header)?;
        }
        let len = tot_len as usize;
        if len <= page_left && self.available().len() >= len {
            // Fast path: the whole record is on this page and in the input: no copy.
            let raw = self.input.split_to(len);
            self.pos = Lsn(self.pos.0 + len as u64);
            return self.finish_record(raw).map(|r| Some(Decoded::Record(r)));
        }
        if self.arena.capacity() < len {
            self.arena.reserve(len.max(ARENA_CHUNK));
        }
        self.state = State::InRecord;
        Ok(None)
    }

    fn check_header(&mut self, header: &XLogRecordHeader) -> Result<(), DecodeError> {
        let lsn = self.record_start;
        if !rmid_is_valid(header.rmid) {
            return self
                .corrupt(lsn, format!("invalid resource manager ID {}", header.rmid))
                .map(|_| ());
        }
        if let Some(prev) = self.prev_record {
            if header.prev != prev {
                return self
                    .corrupt(
                        lsn,
                        format!(
                            "record with incorrect prev-link {} (expected {prev})",
                            header.prev
                        ),
                    )
                    .map(|_| ());
            }
        }
        self.record_header_checked = true;
        Ok(())
    }

    /// The record's bytes are all in `raw`: check its CRC, decode it, move past it.
    fn finish_record(&mut self, raw: Bytes) -> Result<DecodedRecord, DecodeError> {
        let lsn = self.record_start;
        self.state = State::RecordStart;
        let crc = record_crc(&raw);
        let header = XLogRecordHeader::parse(&raw);
        if crc != header.crc {
            let err = DecodeError {
                lsn,
                reason: format!(
                    "incorrect resource manager data checksum in record (computed {crc:08X}, stored {:08X})",
                    header.crc
                ),
            };
            self.finished = Some(Finished::Corrupt(err.clone()));
            return Err(err);
        }
        let is_switch = header.rmid == RM_XLOG_ID && header.rmgr_info() == XLOG_SWITCH;
        let end_lsn = if is_switch {
            // The rest of the segment is unused; the next record starts the next segment.
            let aligned = self.pos.align();
            if aligned.is_segment_start() {
                aligned
            } else {
                Lsn(aligned.segment_start().0 + WAL_SEGMENT_SIZE)
            }
        } else {
            self.pos.align()
        };
        self.skip_to = end_lsn;
        self.prev_record = Some(lsn);
        decode_record_body(lsn, end_lsn, raw).map_err(|e| {
            let err = DecodeError {
                lsn,
                reason: format!("invalid record body: {e}"),
            };
            self.finished = Some(Finished::Corrupt(err.clone()));
            err
        })
    }

    /// Reads and checks the header of the page starting at `pos`. `Ok(None)` means go on.
    fn read_page_header(&mut self) -> Result<Option<Decoded>, DecodeError> {
        let page = self.pos;
        let long = page.is_segment_start();
        let size = if long {
            SIZE_OF_LONG_PAGE_HEADER
        } else {
            SIZE_OF_SHORT_PAGE_HEADER
        };
        let avail = self.available();
        if avail.len() < size {
            return Ok(Some(Decoded::NeedMore));
        }
        let h = &avail[..size];
        let magic = u16::from_le_bytes([h[0], h[1]]);
        let info = u16::from_le_bytes([h[2], h[3]]);
        let tli = u32::from_le_bytes(h[4..8].try_into().unwrap());
        let pageaddr = Lsn(u64::from_le_bytes(h[8..16].try_into().unwrap()));
        let rem_len = u32::from_le_bytes(h[16..20].try_into().unwrap());
        // Where an unfinished record, if any, began: the end of WAL is reported there.
        let end_at = if self.state == State::InRecord {
            self.record_start
        } else {
            page
        };
        if h.iter().all(|&b| b == 0) {
            return self
                .end_of_wal(
                    end_at,
                    format!("WAL page at {page} was never written (zeroed)"),
                )
                .map(Some);
        }
        if magic != XLOG_PAGE_MAGIC {
            return self
                .corrupt(
                    page,
                    format!("invalid magic number {magic:04X} in WAL page header"),
                )
                .map(Some);
        }
        if info & !XLP_ALL_FLAGS != 0 {
            return self
                .corrupt(
                    page,
                    format!("invalid info bits {info:04X} in WAL page header"),
                )
                .map(Some);
        }
        if pageaddr != page {
            if pageaddr < page && pageaddr.is_page_start() && pageaddr.page_offset() == 0 {
                return self
                    .end_of_wal(
                        end_at,
                        format!("WAL page at {page} belongs to a recycled segment (page address {pageaddr})"),
                    )
                    .map(Some);
            }
            return self
                .corrupt(
                    page,
                    format!("unexpected page address {pageaddr} in WAL page header"),
                )
                .map(Some);
        }
        if long != (info & XLP_LONG_HEADER != 0) {
            return self
                .corrupt(
                    page,
                    if long {
                        "segment's first page lacks a long header".to_string()
                    } else {
                        "long page header in the middle of a segment".to_string()
                    },
                )
                .map(Some);
        }
        if long {
            let sysid = u64::from_le_bytes(h[24..32].try_into().unwrap());
            let seg_size = u32::from_le_bytes(h[32..36].try_into().unwrap());
            let blcksz = u32::from_le_bytes(h[36..40].try_into().unwrap());
            if seg_size as u64 != WAL_SEGMENT_SIZE || blcksz as u64 != WAL_PAGE_SIZE {
                return self
                    .corrupt(
                        page,
                        format!("segment size {seg_size} or page size {blcksz} differs from 16 MiB / 8 KiB"),
                    )
                    .map(Some);
            }
            match self.system_id {
                Some(id) if id != sysid => {
                    return self
                        .corrupt(
                            page,
                            format!("WAL file is from a different database system: system id {sysid}, expected {id}"),
                        )
                        .map(Some)
                }
                _ => self.system_id = Some(sysid),
            }
        }
        if tli < self.last_timeline {
            return self
                .corrupt(
                    page,
                    format!(
                        "out-of-sequence timeline ID {tli} (after {})",
                        self.last_timeline
                    ),
                )
                .map(Some);
        }
        self.last_timeline = tli;

        let contrecord = info & XLP_FIRST_IS_CONTRECORD != 0;
        match self.state {
            State::InRecord => {
                if !contrecord {
                    if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                        // The record was never finished; Postgres wrote over its tail.
                        self.arena.clear();
                        self.state = State::RecordStart;
                    } else {
                        return self
                            .corrupt(
                                page,
                                format!(
                                    "there is no contrecord flag (record at {} unfinished)",
                                    self.record_start
                                ),
                            )
                            .map(Some);
                    }
                } else {
                    let remaining = self.record_len as usize - self.arena.len();
                    if rem_len as usize != remaining {
                        return self
                            .corrupt(
                                page,
                                format!("invalid contrecord length {rem_len}, expected {remaining} (record at {})", self.record_start),
                            )
                            .map(Some);
                    }
                }
            }
            State::RecordStart | State::SkipContinuation { .. } => {
                if contrecord {
                    if page == self.start.page_start()
                        || matches!(self.state, State::SkipContinuation { .. })
                    {
                        self.state = if rem_len == 0 {
                            State::RecordStart
                        } else {
                            State::SkipContinuation { remaining: rem_len }
                        };
                    } else {
                        return self
                            .corrupt(
                                page,
                                "page continues a record, but the previous record ended"
                                    .to_string(),
                            )
                            .map(Some);
                    }
                } else if let State::SkipContinuation { remaining } = self.state {
                    return self
                        .corrupt(page, format!("there is no contrecord flag ({remaining} bytes of a record missing)"))
                        .map(Some);
                }
            }
        }
        self.header_read_for_page = Some(page);
        self.advance(size);
        if self.state == State::RecordStart {
            self.skip_to = self.pos.align();
        }
        Ok(None)
    }
}
