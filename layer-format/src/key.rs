//! `Key`: the fixed-width, big-endian name of one thing a pageserver stores.
//!
//! A key is 18 bytes. Every integer is big-endian, so comparing the raw bytes gives the sort
//! order, and the order keeps one relation fork's blocks (and its size) together.
//!
//! | bytes  | field | meaning                                                    |
//! |--------|-------|------------------------------------------------------------|
//! | 0      | kind  | what the key names (table below)                           |
//! | 1..5   | f1    | u32, kind-specific                                         |
//! | 5..9   | f2    | u32, kind-specific                                         |
//! | 9..13  | f3    | u32, kind-specific                                         |
//! | 13     | f4    | u8, kind-specific                                          |
//! | 14..18 | f5    | u32, kind-specific                                         |
//!
//! | kind | name          | f1        | f2    | f3  | f4   | f5                              |
//! |------|---------------|-----------|-------|-----|------|---------------------------------|
//! | 0x01 | relation data | spcnode   | dbnode| relnode | fork | block number; `u32::MAX` = the fork's size |
//! | 0x02 | SLRU          | SLRU kind (0 pg_xact, 1 multixact offsets, 2 multixact members, 3 pg_commit_ts) | segment number | 0 | 0 | block in segment; `u32::MAX` = segment size/existence |
//! | 0x03 | database directory (list of databases) | 0 | 0 | 0 | 0 | 0 |
//! | 0x04 | relation directory of a database | spcnode | dbnode | 0 | 0 | 0 |
//! | 0x05 | relmapper file (`pg_filenode.map`) | spcnode | dbnode (global map: spc 1664, db 0) | 0 | 0 | 0 |
//! | 0x06 | two-phase state file | xid | 0 | 0 | 0 | 0 |
//! | 0x07 | checkpoint (the counters the WAL implies) | 0 | 0 | 0 | 0 | 0 |
//! | 0x08 | control file data | 0 | 0 | 0 | 0 | 0 |
//!
//! Block number `u32::MAX` is Postgres's `InvalidBlockNumber`, so no real block collides with
//! the size key, and the size key sorts right after the fork's last possible block.
//! `Key::MIN` (all zero) and `Key::MAX` (all `0xFF`) are range bounds, not names of anything.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use walproto::RelFileNode;

/// Width of a key in bytes.
pub const KEY_SIZE: usize = 18;

const KIND_REL: u8 = 0x01;
const KIND_SLRU: u8 = 0x02;
const KIND_DB_DIR: u8 = 0x03;
const KIND_REL_DIR: u8 = 0x04;
const KIND_REL_MAP: u8 = 0x05;
const KIND_TWO_PHASE: u8 = 0x06;
const KIND_CHECKPOINT: u8 = 0x07;
const KIND_CONTROL_FILE: u8 = 0x08;

/// Block number used for "size of this relation fork / SLRU segment" keys.
pub const SIZE_BLKNO: u32 = u32::MAX;

/// OID of the `pg_global` tablespace, which holds the shared relmapper file.
pub const GLOBAL_TABLESPACE_OID: u32 = 1664;

/// A fixed-width key; see the module documentation for the layout. Keys order like their
/// bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; KEY_SIZE]);

impl Ord for Key {
    /// The bytes' order, compared as two integers ([`Key::ordinal`]): a derived order would
    /// call `memcmp` for every comparison, which showed up in layer writing and sorting.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.ordinal().cmp(&other.ordinal())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Which SLRU an SLRU key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlruKind {
    /// `pg_xact` (CLOG).
    Clog,
    /// `pg_multixact/offsets`.
    MultiXactOffsets,
    /// `pg_multixact/members`.
    MultiXactMembers,
    /// `pg_commit_ts` (commit timestamps, kept when `track_commit_timestamp` is on).
    CommitTs,
}

impl SlruKind {
    fn code(self) -> u32 {
        match self {
            SlruKind::Clog => 0,
            SlruKind::MultiXactOffsets => 1,
            SlruKind::MultiXactMembers => 2,
            SlruKind::CommitTs => 3,
        }
    }

    fn from_code(code: u32) -> Option<SlruKind> {
        match code {
            0 => Some(SlruKind::Clog),
            1 => Some(SlruKind::MultiXactOffsets),
            2 => Some(SlruKind::MultiXactMembers),
            3 => Some(SlruKind::CommitTs),
            _ => None,
        }
    }

    /// The directory of this SLRU inside a Postgres data directory.
    pub fn dir_name(self) -> &'static str {
        match self {
            SlruKind::Clog => "pg_xact",
            SlruKind::MultiXactOffsets => "pg_multixact/offsets",
            SlruKind::MultiXactMembers => "pg_multixact/members",
            SlruKind::CommitTs => "pg_commit_ts",
        }
    }
}

/// What a key names: the decoded form of a [`Key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// One 8 KiB block of a relation fork.
    RelBlock {
        rel: RelFileNode,
        fork: u8,
        blkno: u32,
    },
    /// The size (in blocks) of a relation fork; sorts right after the fork's blocks.
    RelSize { rel: RelFileNode, fork: u8 },
    /// One 8 KiB page of an SLRU segment.
    SlruBlock {
        slru: SlruKind,
        segno: u32,
        blkno: u32,
    },
    /// The existence and size of an SLRU segment; sorts right after the segment's pages.
    SlruSegmentSize { slru: SlruKind, segno: u32 },
    /// The list of databases.
    DbDir,
    /// The list of relations of one database.
    RelDir { spc: u32, db: u32 },
    /// The relmapper file (`pg_filenode.map`) of a database, or the global one
    /// (spc [`GLOBAL_TABLESPACE_OID`], db 0).
    RelMap { spc: u32, db: u32 },
    /// The state file of a prepared (two-phase) transaction.
    TwoPhase { xid: u32 },
    /// The checkpoint counters the WAL implies.
    Checkpoint,
    /// The control file data.
    ControlFile,
}

impl Key {
    /// The smallest key; a lower bound, names nothing.
    pub const MIN: Key = Key([0; KEY_SIZE]);
    /// The largest key; an (exclusive) upper bound, names nothing.
    pub const MAX: Key = Key([0xFF; KEY_SIZE]);

    fn from_fields(kind: u8, f1: u32, f2: u32, f3: u32, f4: u8, f5: u32) -> Key {
        let mut b = [0u8; KEY_SIZE];
        b[0] = kind;
        b[1..5].copy_from_slice(&f1.to_be_bytes());
        b[5..9].copy_from_slice(&f2.to_be_bytes());
        b[9..13].copy_from_slice(&f3.to_be_bytes());
        b[13] = f4;
        b[14..18].copy_from_slice(&f5.to_be_bytes());
        Key(b)
    }

    fn field(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }

    /// Block `blkno` of fork `fork` of relation `rel`. `blkno` must not be `u32::MAX`
    /// (`InvalidBlockNumber`), which is the size key.
    pub fn rel_block(rel: RelFileNode, fork: u8, blkno: u32) -> Key {
        Key::from_fields(KIND_REL, rel.spc, rel.db, rel.rel, fork, blkno)
    }

    /// The size of fork `fork` of relation `rel`.
    pub fn rel_size(rel: RelFileNode, fork: u8) -> Key {
        Key::from_fields(KIND_REL, rel.spc, rel.db, rel.rel, fork, SIZE_BLKNO)
    }

    /// All keys of one relation fork: its blocks and its size key.
    pub fn rel_fork_range(rel: RelFileNode, fork: u8) -> Range<Key> {
        Key::rel_block(rel, fork, 0)..Key::rel_size(rel, fork).next()
    }

    /// Page `blkno` of SLRU segment `segno`.
    pub fn slru_block(slru: SlruKind, segno: u32, blkno: u32) -> Key {
        Key::from_fields(KIND_SLRU, slru.code(), segno, 0, 0, blkno)
    }

    /// The existence/size key of SLRU segment `segno`.
    pub fn slru_segment_size(slru: SlruKind, segno: u32) -> Key {
        Key::from_fields(KIND_SLRU, slru.code(), segno, 0, 0, SIZE_BLKNO)
    }

    /// All keys of one SLRU (every segment's pages and size keys).
    pub fn slru_range(slru: SlruKind) -> Range<Key> {
        Key::from_fields(KIND_SLRU, slru.code(), 0, 0, 0, 0)
            ..Key::from_fields(KIND_SLRU, slru.code() + 1, 0, 0, 0, 0)
    }

    /// The list of databases.
    pub fn db_dir() -> Key {
        Key::from_fields(KIND_DB_DIR, 0, 0, 0, 0, 0)
    }

    /// The list of relations of database `db` in tablespace `spc`.
    pub fn rel_dir(spc: u32, db: u32) -> Key {
        Key::from_fields(KIND_REL_DIR, spc, db, 0, 0, 0)
    }

    /// The relmapper file of database `db` in tablespace `spc`.
    pub fn relmap(spc: u32, db: u32) -> Key {
        Key::from_fields(KIND_REL_MAP, spc, db, 0, 0, 0)
    }

    /// The global relmapper file (`global/pg_filenode.map`).
    pub fn global_relmap() -> Key {
        Key::relmap(GLOBAL_TABLESPACE_OID, 0)
    }

    /// The state file of prepared transaction `xid`.
    pub fn two_phase(xid: u32) -> Key {
        Key::from_fields(KIND_TWO_PHASE, xid, 0, 0, 0, 0)
    }

    /// All two-phase state file keys.
    pub fn two_phase_range() -> Range<Key> {
        Key::from_fields(KIND_TWO_PHASE, 0, 0, 0, 0, 0)
            ..Key::from_fields(KIND_TWO_PHASE + 1, 0, 0, 0, 0, 0)
    }

    /// The checkpoint counters.
    pub fn checkpoint() -> Key {
        Key::from_fields(KIND_CHECKPOINT, 0, 0, 0, 0, 0)
    }

    /// The control file data.
    pub fn control_file() -> Key {
        Key::from_fields(KIND_CONTROL_FILE, 0, 0, 0, 0, 0)
    }

    /// The key a [`KeyKind`] describes.
    pub fn from_kind(kind: KeyKind) -> Key {
        match kind {
            KeyKind::RelBlock { rel, fork, blkno } => Key::rel_block(rel, fork, blkno),
            KeyKind::RelSize { rel, fork } => Key::rel_size(rel, fork),
            KeyKind::SlruBlock { slru, segno, blkno } => Key::slru_block(slru, segno, blkno),
            KeyKind::SlruSegmentSize { slru, segno } => Key::slru_segment_size(slru, segno),
            KeyKind::DbDir => Key::db_dir(),
            KeyKind::RelDir { spc, db } => Key::rel_dir(spc, db),
            KeyKind::RelMap { spc, db } => Key::relmap(spc, db),
            KeyKind::TwoPhase { xid } => Key::two_phase(xid),
            KeyKind::Checkpoint => Key::checkpoint(),
            KeyKind::ControlFile => Key::control_file(),
        }
    }

    /// What this key names, or `None` for a key no constructor produces (such as `Key::MIN`,
    /// `Key::MAX`, or a range bound made with [`Key::next`]).
    pub fn kind(&self) -> Option<KeyKind> {
        let (f1, f2, f3, f4, f5) = (
            self.field(1),
            self.field(5),
            self.field(9),
            self.0[13],
            self.field(14),
        );
        let only_kind = f1 == 0 && f2 == 0 && f3 == 0 && f4 == 0 && f5 == 0;
        let two_fields = f3 == 0 && f4 == 0 && f5 == 0;
        match self.0[0] {
            KIND_REL => {
                let rel = RelFileNode {
                    spc: f1,
                    db: f2,
                    rel: f3,
                };
                Some(if f5 == SIZE_BLKNO {
                    KeyKind::RelSize { rel, fork: f4 }
                } else {
                    KeyKind::RelBlock {
                        rel,
                        fork: f4,
                        blkno: f5,
                    }
                })
            }
            KIND_SLRU if f3 == 0 && f4 == 0 => {
                let slru = SlruKind::from_code(f1)?;
                Some(if f5 == SIZE_BLKNO {
                    KeyKind::SlruSegmentSize { slru, segno: f2 }
                } else {
                    KeyKind::SlruBlock {
                        slru,
                        segno: f2,
                        blkno: f5,
                    }
                })
            }
            KIND_DB_DIR if only_kind => Some(KeyKind::DbDir),
            KIND_REL_DIR if two_fields => Some(KeyKind::RelDir { spc: f1, db: f2 }),
            KIND_REL_MAP if two_fields => Some(KeyKind::RelMap { spc: f1, db: f2 }),
            KIND_TWO_PHASE if f2 == 0 && two_fields => Some(KeyKind::TwoPhase { xid: f1 }),
            KIND_CHECKPOINT if only_kind => Some(KeyKind::Checkpoint),
            KIND_CONTROL_FILE if only_kind => Some(KeyKind::ControlFile),
            _ => None,
        }
    }

    /// True for a relation block key (not a relation size key).
    pub fn is_rel_block(&self) -> bool {
        self.0[0] == KIND_REL && self.field(14) != SIZE_BLKNO
    }

    /// The next key in sort order (the key as a 144-bit integer, plus one). Saturates:
    /// `Key::MAX.next() == Key::MAX`.
    pub fn next(&self) -> Key {
        let mut b = self.0;
        for byte in b.iter_mut().rev() {
            if *byte == 0xFF {
                *byte = 0;
            } else {
                *byte += 1;
                return Key(b);
            }
        }
        Key::MAX
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_SIZE] {
        &self.0
    }

    /// A key from raw bytes; every byte string is a valid key (it may name nothing).
    pub fn from_bytes(bytes: [u8; KEY_SIZE]) -> Key {
        Key(bytes)
    }

    /// The key as two big-endian integers (first 16 bytes, last 2): they compare like the
    /// bytes, without a `memcmp` call (sorts and order checks on hot paths).
    pub fn ordinal(&self) -> (u128, u16) {
        let mut hi = [0u8; 16];
        hi.copy_from_slice(&self.0[..16]);
        (
            u128::from_be_bytes(hi),
            u16::from_be_bytes([self.0[16], self.0[17]]),
        )
    }

    /// The inverse of [`Key::ordinal`].
    pub fn from_ordinal((hi, lo): (u128, u16)) -> Key {
        let mut b = [0u8; KEY_SIZE];
        b[..16].copy_from_slice(&hi.to_be_bytes());
        b[16..].copy_from_slice(&lo.to_be_bytes());
        Key(b)
    }
}

impl From<KeyKind> for Key {
    fn from(kind: KeyKind) -> Key {
        Key::from_kind(kind)
    }
}

impl fmt::Display for Key {
    /// 36 upper-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            Some(kind) => write!(f, "Key({self} {kind:?})"),
            None => write!(f, "Key({self})"),
        }
    }
}

/// Why a string is not a key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid key {input:?}: expected {} hex digits", KEY_SIZE * 2)]
pub struct ParseKeyError {
    input: String,
}

impl FromStr for Key {
    type Err = ParseKeyError;

    /// Parses exactly 36 hex digits (either case).
    fn from_str(s: &str) -> Result<Key, ParseKeyError> {
        let err = || ParseKeyError {
            input: s.chars().take(80).collect(),
        };
        let digits = s.as_bytes();
        if digits.len() != KEY_SIZE * 2 {
            return Err(err());
        }
        let mut b = [0u8; KEY_SIZE];
        for (i, out) in b.iter_mut().enumerate() {
            let hi = hex_digit(digits[2 * i]).ok_or_else(err)?;
            let lo = hex_digit(digits[2 * i + 1]).ok_or_else(err)?;
            *out = (hi << 4) | lo;
        }
        Ok(Key(b))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinal_orders_like_the_bytes_and_round_trips() {
        let keys = [
            Key::MIN,
            Key::rel_block(rel(1663, 5, 7), 0, 1),
            Key::rel_block(rel(1663, 5, 7), 0, 256),
            Key::rel_block(rel(1663, 5, 7), 1, 0),
            Key::rel_block(rel(1663, 6, 1), 0, 0),
            Key::checkpoint(),
            Key::from_bytes({
                let mut b = [0xFF; KEY_SIZE];
                b[KEY_SIZE - 1] = 0;
                b
            }),
            // Differs from `Key::MIN` only in the last two bytes.
            Key::from_bytes({
                let mut b = [0u8; KEY_SIZE];
                b[16] = 1;
                b
            }),
            Key::MAX,
        ];
        for a in keys {
            assert_eq!(Key::from_ordinal(a.ordinal()), a);
            for b in keys {
                // `Ord` is defined through the ordinal: check both against the bytes.
                assert_eq!(a.ordinal().cmp(&b.ordinal()), a.0.cmp(&b.0), "{a} vs {b}");
                assert_eq!(a.cmp(&b), a.0.cmp(&b.0), "{a} vs {b}");
            }
        }
    }

    fn rel(spc: u32, db: u32, rel: u32) -> RelFileNode {
        RelFileNode { spc, db, rel }
    }

    #[test]
    fn kinds_round_trip() {
        let kinds = [
            KeyKind::RelBlock {
                rel: rel(1663, 5, 16384),
                fork: 0,
                blkno: 7,
            },
            KeyKind::RelSize {
                rel: rel(1663, 5, 16384),
                fork: 2,
            },
            KeyKind::SlruBlock {
                slru: SlruKind::Clog,
                segno: 3,
                blkno: 31,
            },
            KeyKind::SlruSegmentSize {
                slru: SlruKind::MultiXactMembers,
                segno: 9,
            },
            KeyKind::DbDir,
            KeyKind::RelDir { spc: 1663, db: 5 },
            KeyKind::RelMap { spc: 1664, db: 0 },
            KeyKind::TwoPhase { xid: 12345 },
            KeyKind::Checkpoint,
            KeyKind::ControlFile,
        ];
        for kind in kinds {
            let key = Key::from(kind);
            assert_eq!(key.kind(), Some(kind), "{key}");
            let parsed: Key = key.to_string().parse().unwrap();
            assert_eq!(parsed, key);
            assert_eq!(key.to_string().to_lowercase().parse::<Key>().unwrap(), key);
        }
        assert_eq!(Key::MIN.kind(), None);
        assert_eq!(Key::MAX.kind(), None);
        assert_eq!(
            Key::global_relmap().kind(),
            Some(KeyKind::RelMap { spc: 1664, db: 0 })
        );
    }

    #[test]
    fn relation_order() {
        let r = rel(1663, 5, 16384);
        let b0 = Key::rel_block(r, 0, 0);
        let b1 = Key::rel_block(r, 0, 1);
        let bmax = Key::rel_block(r, 0, u32::MAX - 1);
        let size = Key::rel_size(r, 0);
        let fsm0 = Key::rel_block(r, 1, 0);
        let other = Key::rel_block(rel(1663, 5, 16385), 0, 0);
        assert!(b0 < b1 && b1 < bmax && bmax < size && size < fsm0 && fsm0 < other);
        assert!(b0.is_rel_block() && !size.is_rel_block() && !Key::db_dir().is_rel_block());
        assert_eq!(bmax.next(), size);
        let range = Key::rel_fork_range(r, 0);
        assert!(range.contains(&b0) && range.contains(&size) && !range.contains(&fsm0));
        let clog = Key::slru_range(SlruKind::Clog);
        assert!(clog.contains(&Key::slru_segment_size(SlruKind::Clog, u32::MAX)));
        assert!(!clog.contains(&Key::slru_block(SlruKind::MultiXactOffsets, 0, 0)));
        assert!(Key::two_phase_range().contains(&Key::two_phase(u32::MAX)));
    }

    #[test]
    fn next_and_parse_errors() {
        assert_eq!(Key::MAX.next(), Key::MAX);
        let k = Key::from_bytes([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF]);
        assert_eq!(
            k.next().as_bytes(),
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
        assert!("".parse::<Key>().is_err());
        assert!("00".parse::<Key>().is_err());
        assert!("G00000000000000000000000000000000000"
            .parse::<Key>()
            .is_err());
        assert!("+00000000000000000000000000000000000"
            .parse::<Key>()
            .is_err());
        assert!("é0000000000000000000000000000000000"
            .parse::<Key>()
            .is_err());
    }
}
