//! Writing WAL: the few records Strata synthesizes itself (such as the shutdown checkpoint at
//! the end of a basebackup's `pg_wal` segment), laid out in pages exactly as Postgres would.

use crate::consts::*;
use crate::lsn::Lsn;
use crate::record::record_crc;

/// Builds the bytes of one record: header, optional block-reference headers and payloads
/// already encoded by the caller (`body`), then main data; with its CRC.
pub fn build_record(
    rmid: u8,
    info: u8,
    xid: u32,
    prev: Lsn,
    body: &[u8],
    main_data: &[u8],
) -> Vec<u8> {
    let mut rec = vec![0u8; SIZE_OF_XLOG_RECORD];
    rec.extend_from_slice(body);
    if !main_data.is_empty() {
        if main_data.len() <= u8::MAX as usize {
            rec.push(XLR_BLOCK_ID_DATA_SHORT);
            rec.push(main_data.len() as u8);
        } else {
            rec.push(XLR_BLOCK_ID_DATA_LONG);
            rec.extend_from_slice(&(main_data.len() as u32).to_le_bytes());
        }
        rec.extend_from_slice(main_data);
    }
    let tot_len = rec.len() as u32;
    rec[0..4].copy_from_slice(&tot_len.to_le_bytes());
    rec[4..8].copy_from_slice(&xid.to_le_bytes());
    rec[8..16].copy_from_slice(&prev.0.to_le_bytes());
    rec[16] = info;
    rec[17] = rmid;
    let crc = record_crc(&rec);
    rec[20..24].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// Lays records out into WAL pages from a start LSN (a record boundary), writing page headers
/// and continuation headers as Postgres does.
pub struct WalWriter {
    system_id: u64,
    timeline: u32,
    /// The WAL bytes from `start` to `pos`.
    out: Vec<u8>,
    start: Lsn,
    pos: Lsn,
    prev: Lsn,
}

impl WalWriter {
    /// Starts writing at `start`; if `start` is a page start, the page header is written first.
    pub fn new(system_id: u64, timeline: u32, start: Lsn, prev: Lsn) -> Self {
        WalWriter {
            system_id,
            timeline,
            out: Vec::new(),
            start,
            pos: start,
            prev,
        }
    }

    /// Where the next record will start.
    pub fn next_lsn(&self) -> Lsn {
        self.pos
    }

    /// Start LSN of the last record appended (what the next record's `xl_prev` names).
    pub fn prev_lsn(&self) -> Lsn {
        self.prev
    }

    pub fn start_lsn(&self) -> Lsn {
        self.start
    }

    /// Everything written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    fn page_header(&mut self, rem_len: u32) {
        let long = self.pos.is_segment_start();
        let mut info = if rem_len > 0 {
            XLP_FIRST_IS_CONTRECORD
        } else {
            0
        };
        if long {
            info |= XLP_LONG_HEADER;
        }
        self.out.extend_from_slice(&XLOG_PAGE_MAGIC.to_le_bytes());
        self.out.extend_from_slice(&info.to_le_bytes());
        self.out.extend_from_slice(&self.timeline.to_le_bytes());
        self.out.extend_from_slice(&self.pos.0.to_le_bytes());
        self.out.extend_from_slice(&rem_len.to_le_bytes());
        self.out.extend_from_slice(&[0; 4]);
        if long {
            self.out.extend_from_slice(&self.system_id.to_le_bytes());
            self.out
                .extend_from_slice(&(WAL_SEGMENT_SIZE as u32).to_le_bytes());
            self.out
                .extend_from_slice(&(WAL_PAGE_SIZE as u32).to_le_bytes());
        }
        let size = if long {
            SIZE_OF_LONG_PAGE_HEADER
        } else {
            SIZE_OF_SHORT_PAGE_HEADER
        };
        self.pos = Lsn(self.pos.0 + size as u64);
    }

    /// Appends a record built by [`build_record`] with any `xl_prev`; the writer sets `xl_prev`
    /// and recomputes the CRC. Returns (start LSN, end LSN) as Postgres reports them.
    pub fn append(&mut self, record: &[u8]) -> (Lsn, Lsn) {
        let mut rec = record.to_vec();
        rec[8..16].copy_from_slice(&self.prev.0.to_le_bytes());
        let crc = record_crc(&rec);
        rec[20..24].copy_from_slice(&crc.to_le_bytes());
        if self.pos.is_page_start() {
            self.page_header(0);
        }
        let start = self.pos;
        let mut left = &rec[..];
        loop {
            let page_left = (WAL_PAGE_SIZE - self.pos.page_offset()) as usize;
            let n = page_left.min(left.len());
            self.out.extend_from_slice(&left[..n]);
            self.pos = Lsn(self.pos.0 + n as u64);
            left = &left[n..];
            if left.is_empty() {
                break;
            }
            self.page_header(left.len() as u32);
        }
        let end = self.pos.align();
        self.pad_to(end);
        self.prev = start;
        (start, end)
    }

    /// Zero-fills up to `lsn` (which must not be behind the current position).
    pub fn pad_to(&mut self, lsn: Lsn) {
        let n = (lsn.0 - self.pos.0) as usize;
        self.out.resize(self.out.len() + n, 0);
        self.pos = lsn;
    }
}
