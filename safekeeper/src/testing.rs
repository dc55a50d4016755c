//! Helpers for tests and benchmarks: real-looking WAL made with walproto's encoder, so that
//! end-of-WAL recovery decodes what the tests wrote.

use walproto::encoder::{build_record, WalWriter};
use walproto::Lsn;

/// Generates consecutive WAL chunks of whole records.
pub struct WalGen {
    system_id: u64,
    pg_timeline: u32,
    next: Lsn,
    prev: Lsn,
    seed: u32,
}

impl WalGen {
    /// WAL starting at `start`, a record boundary or page start.
    pub fn new(system_id: u64, pg_timeline: u32, start: Lsn) -> Self {
        WalGen {
            system_id,
            pg_timeline,
            next: start,
            prev: Lsn(0),
            seed: 0,
        }
    }

    /// Where the next chunk begins.
    pub fn next_lsn(&self) -> Lsn {
        self.next
    }

    /// `n` records with `size` bytes of main data each; returns the chunk's bytes (starting at
    /// the previous [`WalGen::next_lsn`]) and each record's end LSN.
    pub fn records(&mut self, n: usize, size: usize) -> (Vec<u8>, Vec<Lsn>) {
        let mut w = WalWriter::new(self.system_id, self.pg_timeline, self.next, self.prev);
        let mut ends = Vec::with_capacity(n);
        for _ in 0..n {
            self.seed = self.seed.wrapping_add(1);
            let s = self.seed;
            let data: Vec<u8> = (0..size)
                .map(|i| (i as u32).wrapping_mul(31).wrapping_add(s) as u8)
                .collect();
            // rmgr 10 (heap) with main data only: a valid record for the decoder.
            let rec = build_record(10, 0x00, 1000 + s, Lsn(0), &[], &data);
            ends.push(w.append(&rec).1);
        }
        self.next = w.next_lsn();
        self.prev = w.prev_lsn();
        (w.into_bytes(), ends)
    }
}
