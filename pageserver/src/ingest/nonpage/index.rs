//! Restore points and the LSN↔commit-time index.
//!
//! Restore points are few: one image lists them all and is rewritten by each one.
//!
//! Commits are many, so each commit gets its own small image (entry `n`, [`CommitEntry`]), and
//! the count of entries is stored only every [`COUNT_STRIDE`] commits: a reader finds the exact
//! count at an LSN from the stored one plus a binary search over the next entries' existence
//! ([`super::read::commit_count_at`]), so a commit costs two values (its CLOG update and its
//! entry) instead of three. [`super::read::lsn_for_timestamp`] binary-searches entries by point
//! reads. Commit
//! timestamps are taken before the commit record is inserted, so concurrent commits can appear
//! in the WAL slightly out of time order; each entry therefore also keeps the largest commit
//! time up to it (`max_time`), which is monotonic in LSN and is what the search orders by.

use std::collections::BTreeSet;

use bytes::Bytes;
use layer_format::Lsn;

/// An `XLOG/RESTORE_POINT`: its name, the record's end LSN (where recovery to it stops) and
/// its time (Postgres microseconds since 2000-01-01).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePoint {
    pub name: String,
    pub lsn: Lsn,
    pub time: i64,
}

/// One commit: its record's end LSN, its time and the largest commit time up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitEntry {
    pub lsn: Lsn,
    pub time: i64,
    pub max_time: i64,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl CommitEntry {
    pub fn encode(&self) -> Bytes {
        let mut v = Vec::with_capacity(24);
        v.extend_from_slice(&self.lsn.0.to_le_bytes());
        v.extend_from_slice(&self.time.to_le_bytes());
        v.extend_from_slice(&self.max_time.to_le_bytes());
        Bytes::from(v)
    }

    pub fn decode(b: &[u8]) -> Result<CommitEntry, String> {
        if b.len() != 24 {
            return Err(format!(
                "commit-time entry of {} bytes, expected 24",
                b.len()
            ));
        }
        Ok(CommitEntry {
            lsn: Lsn(u64_at(b, 0)),
            time: u64_at(b, 8) as i64,
            max_time: u64_at(b, 16) as i64,
        })
    }
}

/// The stored entry count is rewritten when the count reaches a multiple of this, so the exact
/// count at any LSN lies in `[stored, stored + COUNT_STRIDE)`. (Timelines written when every
/// commit stored the count hold exact counts that are not multiples; the same bound holds.)
pub const COUNT_STRIDE: u64 = 1024;

/// The commit-time index's entry count and largest time.
pub fn encode_commit_count(n: u64, max_time: i64) -> Bytes {
    let mut v = n.to_le_bytes().to_vec();
    v.extend_from_slice(&max_time.to_le_bytes());
    Bytes::from(v)
}

pub fn decode_commit_count(b: &[u8]) -> Result<(u64, i64), String> {
    if b.len() != 16 {
        return Err(format!("commit count of {} bytes, expected 16", b.len()));
    }
    Ok((u64_at(b, 0), u64_at(b, 8) as i64))
}

/// Restore points: per point, LSN `u64`, time `i64`, name length `u16`, name (UTF-8).
pub fn encode_restore_points(points: &[RestorePoint]) -> Bytes {
    let mut v = Vec::new();
    for p in points {
        let name = p.name.as_bytes();
        let name = &name[..name.len().min(u16::MAX as usize)];
        v.extend_from_slice(&p.lsn.0.to_le_bytes());
        v.extend_from_slice(&p.time.to_le_bytes());
        v.extend_from_slice(&(name.len() as u16).to_le_bytes());
        v.extend_from_slice(name);
    }
    Bytes::from(v)
}

pub fn decode_restore_points(b: &[u8]) -> Result<Vec<RestorePoint>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        if b.len() - at < 18 {
            return Err(format!("restore point list truncated at byte {at}"));
        }
        let lsn = Lsn(u64_at(b, at));
        let time = u64_at(b, at + 8) as i64;
        let n = u16::from_le_bytes([b[at + 16], b[at + 17]]) as usize;
        at += 18;
        let name = b
            .get(at..at + n)
            .ok_or_else(|| format!("restore point name truncated at byte {at}"))?;
        out.push(RestorePoint {
            name: String::from_utf8_lossy(name).into_owned(),
            lsn,
            time,
        });
        at += n;
    }
    Ok(out)
}

/// A set of xids: sorted `u32` LE.
pub fn encode_u32_set(s: &BTreeSet<u32>) -> Bytes {
    Bytes::from(s.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

pub fn decode_u32_set(b: &[u8]) -> Result<Vec<u32>, String> {
    if !b.len().is_multiple_of(4) {
        return Err(format!("xid list of {} bytes", b.len()));
    }
    Ok(b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_and_bad_input() {
        let pts = vec![
            RestorePoint {
                name: "a".into(),
                lsn: Lsn(5),
                time: 7,
            },
            RestorePoint {
                name: "before drop".into(),
                lsn: Lsn(9),
                time: -1,
            },
        ];
        let b = encode_restore_points(&pts);
        assert_eq!(decode_restore_points(&b).unwrap(), pts);
        assert!(decode_restore_points(&b[..b.len() - 1]).is_err());
        let e = CommitEntry {
            lsn: Lsn(1),
            time: 2,
            max_time: 3,
        };
        assert_eq!(CommitEntry::decode(&e.encode()).unwrap(), e);
        assert!(CommitEntry::decode(&[0; 5]).is_err());
        assert!(decode_u32_set(&[1, 2, 3]).is_err());
    }
}
