//! Keys of the non-page state that has no key kind of its own in `layer-format`.
//!
//! They reuse the relmapper key kind (0x05) with tablespace 0, which is `InvalidOid`: no
//! tablespace has it, so no real relmapper file is ever stored there. Field 2 (the database)
//! selects what the key holds:
//!
//! | db field                 | value (always an image)                                   |
//! |--------------------------|-----------------------------------------------------------|
//! | `0 ..= MAX_COMMIT_ENTRY` | commit-time index entry `n` ([`super::index`])            |
//! | `0xFFFF_FFF0 + slru`     | directory of an SLRU's segments ([`super::slru`])         |
//! | `0xFFFF_FFF9`            | the record crossing into WAL page `(f3 << 32) \| f5`: its  |
//! |                          | start and end ([`crate::timeline::boundary`])             |
//! | `0xFFFF_FFFA`            | tablespaces created by the WAL and not dropped            |
//! | `0xFFFF_FFFB`            | commit timestamp limits ([`super::commit_ts`])            |
//! | `0xFFFF_FFFC`            | replication origin progress ([`super::origins`])          |
//! | `0xFFFF_FFFD`            | live prepared transactions ([`super::twophase`])           |
//! | `0xFFFF_FFFE`            | commit-time index entries, every 1024 ([`super::index`])   |
//! | `0xFFFF_FFFF`            | restore points                                             |
//!
//! The record-crossing keys alone use fields 3 and 5 (the WAL page number), so
//! `Key::kind()` names none of them.
//!
//! A reader enumerating relmapper files must take them from the database directory (as a
//! basebackup does), never from a key-range scan of kind 0x05, or it would see these.

use layer_format::{Key, SlruKind};

/// The tablespace field value reserved for Strata's own non-page state.
pub const RESERVED_SPC: u32 = 0;
/// The largest commit-time index entry number (4,294,967,279 commits).
pub const MAX_COMMIT_ENTRY: u32 = 0xFFFF_FFEF;

/// Restore points: name, LSN and time of every `XLOG/RESTORE_POINT`.
pub fn restore_points() -> Key {
    Key::relmap(RESERVED_SPC, 0xFFFF_FFFF)
}

/// How many commit-time index entries exist, stored when the count reaches a multiple of
/// [`super::index::COUNT_STRIDE`] (the exact count: [`super::read::commit_count_at`]).
pub fn commit_count() -> Key {
    Key::relmap(RESERVED_SPC, 0xFFFF_FFFE)
}

/// The xids that are prepared (PREPARE seen, no COMMIT/ABORT PREPARED yet).
pub fn twophase_dir() -> Key {
    Key::relmap(RESERVED_SPC, 0xFFFF_FFFD)
}

/// The segments of one SLRU (segment number and pages).
pub fn slru_dir(slru: SlruKind) -> Key {
    let code = match slru {
        SlruKind::Clog => 0,
        SlruKind::MultiXactOffsets => 1,
        SlruKind::MultiXactMembers => 2,
        SlruKind::CommitTs => 3,
    };
    Key::relmap(RESERVED_SPC, 0xFFFF_FFF0 + code)
}

/// Commit-time index entry `n`, if `n` is in range.
pub fn commit_entry(n: u64) -> Option<Key> {
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_COMMIT_ENTRY)
        .map(|n| Key::relmap(RESERVED_SPC, n))
}

/// The tablespaces `Tablespace/CREATE` made and no `Tablespace/DROP` removed.
pub fn tablespaces() -> Key {
    Key::relmap(RESERVED_SPC, 0xFFFF_FFFA)
}

/// Whether commit timestamps are kept, and the xid range they are kept for.
pub fn commit_ts_state() -> Key {
    Key::relmap(RESERVED_SPC, 0xFFFF_FFFB)
}

/// The replication origins' progress slots.
pub fn replication_origins() -> Key {
    Key::relmap(RESERVED_SPC, 0xFFFF_FFFC)
}

/// The record that continues onto WAL page number `page` (LSN / 8 KiB): its start and end
/// LSNs ([`crate::timeline::boundary`]).
pub fn record_crossing(page: u64) -> Key {
    let mut b = [0u8; layer_format::KEY_SIZE];
    b.copy_from_slice(Key::relmap(RESERVED_SPC, 0xFFFF_FFF9).as_bytes());
    b[9..13].copy_from_slice(&((page >> 32) as u32).to_be_bytes());
    b[14..18].copy_from_slice(&(page as u32).to_be_bytes());
    Key::from_bytes(b)
}
