//! Constants of the PostgreSQL 15 WAL format (from `access/xlog_internal.h`, `access/xlogrecord.h`).

/// Size of a WAL page, XLOG_BLCKSZ.
pub const WAL_PAGE_SIZE: u64 = 8192;
/// Size of a WAL segment file; Strata supports Postgres's default of 16 MiB.
pub const WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;
/// Size of a relation data page, BLCKSZ.
pub const BLCKSZ: usize = 8192;

/// `XLOG_PAGE_MAGIC` of PostgreSQL 15.
pub const XLOG_PAGE_MAGIC: u16 = 0xD110;

/// Page header flags (`xlp_info`).
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub const XLP_LONG_HEADER: u16 = 0x0002;
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// Short page header, MAXALIGNed.
pub const SIZE_OF_SHORT_PAGE_HEADER: usize = 24;
/// Long page header (first page of a segment), MAXALIGNed.
pub const SIZE_OF_LONG_PAGE_HEADER: usize = 40;

/// Size of the fixed `XLogRecord` header.
pub const SIZE_OF_XLOG_RECORD: usize = 24;
/// Largest record we accept; Postgres cannot allocate one larger than 1 GiB.
pub const MAX_RECORD_LEN: u32 = 1024 * 1024 * 1024 - 1;

/// Bits of `xl_info` reserved for the record machinery; the rest are the rmgr's.
pub const XLR_INFO_MASK: u8 = 0x0F;
pub const XLR_RMGR_INFO_MASK: u8 = 0xF0;
pub const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;
pub const XLR_CHECK_CONSISTENCY: u8 = 0x02;

/// Block ids and special ids in the record body.
pub const XLR_MAX_BLOCK_ID: u8 = 32;
pub const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
pub const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
pub const XLR_BLOCK_ID_ORIGIN: u8 = 253;
pub const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

/// `fork_flags` of a block reference.
pub const BKPBLOCK_FORK_MASK: u8 = 0x0F;
pub const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
pub const BKPBLOCK_HAS_DATA: u8 = 0x20;
pub const BKPBLOCK_WILL_INIT: u8 = 0x40;
pub const BKPBLOCK_SAME_REL: u8 = 0x80;

/// `bimg_info` of a block image.
pub const BKPIMAGE_HAS_HOLE: u8 = 0x01;
pub const BKPIMAGE_APPLY: u8 = 0x02;
pub const BKPIMAGE_COMPRESS_PGLZ: u8 = 0x04;
pub const BKPIMAGE_COMPRESS_LZ4: u8 = 0x08;
pub const BKPIMAGE_COMPRESS_ZSTD: u8 = 0x10;
pub const BKPIMAGE_COMPRESSED_MASK: u8 =
    BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD;

/// Fork numbers and the names pg_waldump prints for them.
pub const MAIN_FORKNUM: u8 = 0;
pub const FSM_FORKNUM: u8 = 1;
pub const VISIBILITYMAP_FORKNUM: u8 = 2;
pub const INIT_FORKNUM: u8 = 3;
pub const MAX_FORKNUM: u8 = INIT_FORKNUM;
pub const FORK_NAMES: [&str; 4] = ["main", "fsm", "vm", "init"];

/// Name of a fork number, or `None` if Postgres has no such fork.
pub fn fork_name(fork: u8) -> Option<&'static str> {
    FORK_NAMES.get(fork as usize).copied()
}
