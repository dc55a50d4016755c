//! Replication origin progress (`replication/logical/origin.c`), kept as a standby replaying
//! the WAL keeps it, so a basebackup can write `pg_logical/replorigin_checkpoint`.
//!
//! Postgres holds the progress in a shared-memory array of slots; `ReplicationOrigin/SET`
//! (`pg_replication_origin_advance`), a commit or abort made with a session origin, and
//! `ReplicationOrigin/DROP` change it (`replorigin_redo`, `replorigin_advance`), and each
//! checkpoint writes the occupied slots to the file. The origins' names are catalog rows
//! (`pg_replication_origin`), i.e. ordinary pages.
//!
//! The file keeps only each origin's remote LSN: a server started from it (the primary after
//! a restart as much as a compute from a basebackup) reports the local LSN as 0/0 until its
//! next commit for that origin.

use bytes::Bytes;
use layer_format::Lsn;

use super::keys;
use crate::timeline::{Timeline, TimelineError};

/// `DoNotReplicateId`: never tracked.
const DO_NOT_REPLICATE: u16 = u16::MAX;
/// `REPLICATION_STATE_MAGIC`.
const MAGIC: u32 = 0x1257_DADE;

/// One slot of `replication_states`; `id` 0 is a free slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginSlot {
    pub id: u16,
    pub remote_lsn: u64,
    pub local_lsn: u64,
}

/// The slots in Postgres's order (a freed slot is reused first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origins {
    pub slots: Vec<OriginSlot>,
}

impl Origins {
    /// `replorigin_advance` without WAL: the origin's slot (or the first free one) moves its
    /// remote LSN forward (any way with `backward`), and its local LSN to `local` if later.
    pub fn advance(&mut self, id: u16, remote: u64, local: u64, backward: bool) {
        if id == 0 || id == DO_NOT_REPLICATE {
            return;
        }
        let i = match self.slots.iter().position(|s| s.id == id) {
            Some(i) => i,
            None => match self.slots.iter().position(|s| s.id == 0) {
                Some(free) => {
                    self.slots[free] = OriginSlot {
                        id,
                        ..Default::default()
                    };
                    free
                }
                None => {
                    self.slots.push(OriginSlot {
                        id,
                        ..Default::default()
                    });
                    self.slots.len() - 1
                }
            },
        };
        let s = &mut self.slots[i];
        if backward || s.remote_lsn < remote {
            s.remote_lsn = remote;
        }
        if local != 0 && (backward || s.local_lsn < local) {
            s.local_lsn = local;
        }
    }

    /// `XLOG_REPLORIGIN_DROP`: the origin's slot becomes free.
    pub fn drop_origin(&mut self, id: u16) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.id == id) {
            *s = OriginSlot::default();
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut v = Vec::with_capacity(18 * self.slots.len());
        for s in &self.slots {
            v.extend_from_slice(&s.id.to_le_bytes());
            v.extend_from_slice(&s.remote_lsn.to_le_bytes());
            v.extend_from_slice(&s.local_lsn.to_le_bytes());
        }
        Bytes::from(v)
    }

    pub fn decode(b: &[u8]) -> Result<Origins, String> {
        if !b.len().is_multiple_of(18) {
            return Err(format!("replication origins of {} bytes", b.len()));
        }
        let u64_at = |c: &[u8], at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&c[at..at + 8]);
            u64::from_le_bytes(x)
        };
        Ok(Origins {
            slots: b
                .chunks_exact(18)
                .map(|c| OriginSlot {
                    id: u16::from_le_bytes([c[0], c[1]]),
                    remote_lsn: u64_at(c, 2),
                    local_lsn: u64_at(c, 10),
                })
                .collect(),
        })
    }

    /// `pg_logical/replorigin_checkpoint` as `CheckPointReplicationOrigin` writes it: the
    /// magic, a `ReplicationStateOnDisk` (id, 6 bytes of zero padding, remote LSN) per
    /// occupied slot, then the CRC-32C of all that.
    pub fn checkpoint_file(&self) -> Vec<u8> {
        let mut v = MAGIC.to_le_bytes().to_vec();
        for s in self.slots.iter().filter(|s| s.id != 0) {
            v.extend_from_slice(&s.id.to_le_bytes());
            v.extend_from_slice(&[0u8; 6]);
            v.extend_from_slice(&s.remote_lsn.to_le_bytes());
        }
        let crc = crc32c::crc32c(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    /// Occupied slots.
    pub fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.id != 0).count()
    }
}

/// The replication origins at `lsn` (none if no record changed them).
pub fn origins_at(tl: &Timeline, lsn: Lsn) -> Result<Origins, TimelineError> {
    let key = keys::replication_origins();
    match tl.get_image_value(key, lsn)? {
        Some(b) => {
            Origins::decode(&b).map_err(|reason| TimelineError::Reconstruct { key, lsn, reason })
        }
        None => Ok(Origins::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_like_postgres() {
        let mut o = Origins::default();
        o.advance(1, 100, 0, false);
        o.advance(2, 200, 5000, false);
        o.advance(1, 50, 0, false);
        assert_eq!(o.slots[0].remote_lsn, 100);
        o.advance(1, 50, 0, true);
        assert_eq!(o.slots[0].remote_lsn, 50);
        o.drop_origin(1);
        o.advance(3, 7, 0, false);
        assert_eq!(o.slots[0].id, 3);
        assert_eq!(o.live(), 2);
        assert_eq!(Origins::decode(&o.encode()).unwrap(), o);
        let f = o.checkpoint_file();
        assert_eq!(f.len(), 4 + 2 * 16 + 4);
        assert_eq!(&f[..4], &[0xDE, 0xDA, 0x57, 0x12]);
    }
}
