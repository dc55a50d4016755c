//! The WAL the proposer has received from Postgres and not yet trimmed: the source each
//! acceptor's stream reads from, at its own position.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use walproto::Lsn;

/// Contiguous WAL `[start, end)` kept as the chunks Postgres sent (XLogData messages end where
/// Postgres had flushed, usually on record boundaries, so appends are cut only there).
#[derive(Debug)]
pub struct WalBuffer {
    start: Lsn,
    end: Lsn,
    chunks: VecDeque<(Lsn, Bytes)>,
}

/// A read below what the buffer still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("WAL at {wanted} is no longer buffered (the buffer starts at {start})")]
pub struct TooOld {
    pub wanted: Lsn,
    pub start: Lsn,
}

impl WalBuffer {
    pub fn new(start: Lsn) -> WalBuffer {
        WalBuffer {
            start,
            end: start,
            chunks: VecDeque::new(),
        }
    }

    pub fn start(&self) -> Lsn {
        self.start
    }

    pub fn end(&self) -> Lsn {
        self.end
    }

    /// Buffered bytes.
    pub fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the chunk that starts at the current end.
    pub fn push(&mut self, begin: Lsn, data: Bytes) -> Result<(), String> {
        if begin != self.end {
            return Err(format!(
                "WAL from Postgres is not contiguous: got {begin}, expected {}",
                self.end
            ));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.end = Lsn(self.end.0 + data.len() as u64);
        self.chunks.push_back((begin, data));
        Ok(())
    }

    /// Drops whole chunks that end at or below `lsn`.
    pub fn trim(&mut self, lsn: Lsn) {
        while let Some((begin, data)) = self.chunks.front() {
            let end = Lsn(begin.0 + data.len() as u64);
            if end > lsn {
                break;
            }
            self.start = end;
            self.chunks.pop_front();
        }
    }

    /// Up to `max` bytes starting at `at` (more than `max` only if `at` lies in a chunk larger
    /// than that), ending at a chunk end; `None` when `at` is the end.
    pub fn read(&self, at: Lsn, max: usize) -> Result<Option<Bytes>, TooOld> {
        if at < self.start {
            return Err(TooOld {
                wanted: at,
                start: self.start,
            });
        }
        if at >= self.end {
            return Ok(None);
        }
        // The chunk containing `at`.
        let idx = self
            .chunks
            .partition_point(|(b, d)| b.0 + d.len() as u64 <= at.0);
        let (begin, data) = &self.chunks[idx];
        let first = data.slice((at.0 - begin.0) as usize..);
        let mut total = first.len();
        let mut n = 1;
        while let Some((_, d)) = self.chunks.get(idx + n) {
            if total + d.len() > max {
                break;
            }
            total += d.len();
            n += 1;
        }
        if n == 1 {
            return Ok(Some(first));
        }
        let mut out = BytesMut::with_capacity(total);
        out.extend_from_slice(&first);
        for (_, d) in self.chunks.range(idx + 1..idx + n) {
            out.extend_from_slice(d);
        }
        Ok(Some(out.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_read_trim() {
        let mut b = WalBuffer::new(Lsn(100));
        assert_eq!(b.read(Lsn(100), 10), Ok(None));
        b.push(Lsn(100), Bytes::from_static(b"abcd")).unwrap();
        b.push(Lsn(104), Bytes::from_static(b"efgh")).unwrap();
        b.push(Lsn(108), Bytes::from_static(b"ijklmnop")).unwrap();
        assert!(b.push(Lsn(50), Bytes::from_static(b"x")).is_err());
        assert_eq!(b.end(), Lsn(116));
        assert_eq!(
            b.read(Lsn(100), 100).unwrap().unwrap(),
            &b"abcdefghijklmnop"[..]
        );
        assert_eq!(b.read(Lsn(102), 6).unwrap().unwrap(), &b"cdefgh"[..]);
        assert_eq!(b.read(Lsn(102), 3).unwrap().unwrap(), &b"cd"[..]);
        assert_eq!(b.read(Lsn(109), 3).unwrap().unwrap(), &b"jklmnop"[..]);
        assert_eq!(b.read(Lsn(116), 3), Ok(None));
        b.trim(Lsn(105));
        assert_eq!(b.start(), Lsn(104));
        assert_eq!(
            b.read(Lsn(103), 3),
            Err(TooOld {
                wanted: Lsn(103),
                start: Lsn(104)
            })
        );
        assert_eq!(
            b.read(Lsn(104), 100).unwrap().unwrap(),
            &b"efghijklmnop"[..]
        );
        b.trim(Lsn(116));
        assert!(b.is_empty());
        assert_eq!(b.read(Lsn(116), 3), Ok(None));
    }
}
