//! `global/pg_control` of PostgreSQL 15 (`ControlFileData`, pg_control.h): parsing what an
//! import needs and generating the file a basebackup starts from.
//!
//! Layout on x86-64 (offsets in bytes; the struct is 296 bytes, the file 8192, zero-padded):
//!
//! | off | field | off | field |
//! |-----|-------|-----|-------|
//! | 0   | system_identifier u64 | 168 | backupEndRequired bool |
//! | 8   | pg_control_version u32 | 172 | wal_level i32 |
//! | 12  | catalog_version_no u32 | 176 | wal_log_hints bool |
//! | 16  | state u32 | 180 | MaxConnections i32 |
//! | 24  | time i64 | 184 | max_worker_processes i32 |
//! | 32  | checkPoint u64 | 188 | max_wal_senders i32 |
//! | 40  | checkPointCopy (CheckPoint, 88) | 192 | max_prepared_xacts i32 |
//! | 128 | unloggedLSN u64 | 196 | max_locks_per_xact i32 |
//! | 136 | minRecoveryPoint u64 | 200 | track_commit_timestamp bool |
//! | 144 | minRecoveryPointTLI u32 | 204.. | maxAlign, floatFormat, block sizes, ... |
//! | 152 | backupStartPoint u64 | 252 | data_checksum_version u32 |
//! | 160 | backupEndPoint u64 | 288 | crc (CRC-32C of bytes 0..288) |

use bytes::Bytes;
use layer_format::Lsn;
use walproto::rmgr::xlog::CheckPoint;

/// `sizeof(ControlFileData)`.
pub const CONTROL_DATA_SIZE: usize = 296;
/// `PG_CONTROL_FILE_SIZE`: the file is padded to this.
pub const CONTROL_FILE_SIZE: usize = 8192;
/// `PG_CONTROL_VERSION` of PostgreSQL 15.
pub const PG_CONTROL_VERSION: u32 = 1300;
const CRC_OFFSET: usize = 288;

/// `DBState` values.
pub const DB_SHUTDOWNED: u32 = 1;
pub const DB_SHUTDOWNED_IN_RECOVERY: u32 = 2;
pub const DB_IN_PRODUCTION: u32 = 6;

/// `FirstNormalUnloggedLSN`.
const FIRST_NORMAL_UNLOGGED_LSN: u64 = 1000;

/// A parsed (and checked) control file; `raw` keeps every field, so a generated file carries
/// the cluster's compile-time constants and settings unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlFile {
    raw: [u8; CONTROL_DATA_SIZE],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl ControlFile {
    /// Parses the file's bytes, checking size, version and CRC.
    pub fn parse(b: &[u8]) -> Result<ControlFile, String> {
        if b.len() < CONTROL_DATA_SIZE {
            return Err(format!(
                "{} bytes, a PostgreSQL 15 control file has at least {CONTROL_DATA_SIZE}",
                b.len()
            ));
        }
        let version = u32_at(b, 8);
        if version != PG_CONTROL_VERSION {
            return Err(format!(
                "pg_control_version {version}: not PostgreSQL 15 (which has {PG_CONTROL_VERSION})"
            ));
        }
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        let stored = u32_at(b, CRC_OFFSET);
        if crc != stored {
            return Err(format!(
                "CRC mismatch: stored {stored:08x}, computed {crc:08x}"
            ));
        }
        let mut raw = [0u8; CONTROL_DATA_SIZE];
        raw.copy_from_slice(&b[..CONTROL_DATA_SIZE]);
        Ok(ControlFile { raw })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    pub fn system_identifier(&self) -> u64 {
        u64_at(&self.raw, 0)
    }

    pub fn catalog_version(&self) -> u32 {
        u32_at(&self.raw, 12)
    }

    pub fn state(&self) -> u32 {
        u32_at(&self.raw, 16)
    }

    /// `checkPoint`: the last checkpoint record's LSN.
    pub fn checkpoint_lsn(&self) -> Lsn {
        Lsn(u64_at(&self.raw, 32))
    }

    /// `checkPointCopy`.
    pub fn checkpoint(&self) -> Result<CheckPoint, String> {
        CheckPoint::decode(&Bytes::copy_from_slice(&self.raw[40..128])).map_err(|e| e.to_string())
    }

    pub fn min_recovery_point(&self) -> Lsn {
        Lsn(u64_at(&self.raw, 136))
    }

    /// `wal_level`, `MaxConnections`, `max_worker_processes`, `max_wal_senders`,
    /// `max_prepared_xacts`, `max_locks_per_xact`: what a hot standby must at least match.
    pub fn settings(&self) -> ControlSettings {
        let i = |at| u32_at(&self.raw, at) as i32;
        ControlSettings {
            wal_level: i(172),
            max_connections: i(180),
            max_worker_processes: i(184),
            max_wal_senders: i(188),
            max_prepared_xacts: i(192),
            max_locks_per_xact: i(196),
            track_commit_timestamp: self.raw[200] != 0,
        }
    }

    /// Whether the cluster has data checksums.
    pub fn data_checksums(&self) -> bool {
        u32_at(&self.raw, 252) != 0
    }

    /// The control file of a cleanly shut down cluster whose last checkpoint is `cp`, written
    /// at `checkpoint_lsn` (a shutdown checkpoint: `cp.redo == checkpoint_lsn`): no recovery
    /// point, no backup in progress. Returns the whole 8 KiB file.
    pub fn shut_down_at(&self, checkpoint_lsn: Lsn, cp: &CheckPoint) -> Vec<u8> {
        let mut b = vec![0u8; CONTROL_FILE_SIZE];
        b[..CONTROL_DATA_SIZE].copy_from_slice(&self.raw);
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(16, &DB_SHUTDOWNED.to_le_bytes());
        put(24, &cp.time.to_le_bytes());
        put(32, &checkpoint_lsn.0.to_le_bytes());
        put(40, &cp.encode());
        let unlogged = u64_at(&self.raw, 128).max(FIRST_NORMAL_UNLOGGED_LSN);
        put(128, &unlogged.to_le_bytes());
        // minRecoveryPoint, its TLI, backupStartPoint, backupEndPoint, backupEndRequired.
        put(136, &[0u8; 8]);
        put(144, &[0u8; 4]);
        put(152, &[0u8; 8]);
        put(160, &[0u8; 8]);
        put(168, &[0u8; 1]);
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// The settings recorded in the control file that a server replaying the WAL must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlSettings {
    pub wal_level: i32,
    pub max_connections: i32,
    pub max_worker_processes: i32,
    pub max_wal_senders: i32,
    pub max_prepared_xacts: i32,
    pub max_locks_per_xact: i32,
    pub track_commit_timestamp: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = vec![0u8; CONTROL_FILE_SIZE];
        b[0..8].copy_from_slice(&7u64.to_le_bytes());
        b[8..12].copy_from_slice(&PG_CONTROL_VERSION.to_le_bytes());
        b[16..20].copy_from_slice(&DB_IN_PRODUCTION.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn parse_checks_version_and_crc() {
        let b = sample();
        let c = ControlFile::parse(&b).unwrap();
        assert_eq!(c.system_identifier(), 7);
        let mut bad = b.clone();
        bad[0] ^= 1;
        assert!(ControlFile::parse(&bad).unwrap_err().contains("CRC"));
        let mut old = b.clone();
        old[8..12].copy_from_slice(&1201u32.to_le_bytes());
        assert!(ControlFile::parse(&old)
            .unwrap_err()
            .contains("not PostgreSQL 15"));
        assert!(ControlFile::parse(&b[..10]).is_err());
    }

    #[test]
    fn shut_down_file_is_valid() {
        let c = ControlFile::parse(&sample()).unwrap();
        let cp = CheckPoint {
            redo: Lsn(0x0100_0028),
            next_oid: 16384,
            ..Default::default()
        };
        let out = ControlFile::parse(&c.shut_down_at(Lsn(0x0100_0028), &cp)).unwrap();
        assert_eq!(out.state(), DB_SHUTDOWNED);
        assert_eq!(out.checkpoint_lsn(), Lsn(0x0100_0028));
        assert_eq!(out.checkpoint().unwrap(), cp);
    }
}
