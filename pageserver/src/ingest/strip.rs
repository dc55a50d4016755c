//! Removes the `wal_consistency_checking` images (images without `BKPIMAGE_APPLY`) from a raw
//! record, so that what a timeline stores for a natively redone record is what Postgres writes
//! without consistency checking. The images only check redo; keeping them would multiply the
//! stored bytes (every block of every record carries an 8 KiB page) and could never change a
//! page. The result is a valid record: lengths, `XLR_CHECK_CONSISTENCY` and the CRC are
//! rewritten ([`DecodedRecord::raw_without_check_images`]).

use bytes::Bytes;
use walproto::record::DecodedRecord;

/// The record without its consistency-check images, or `None` if it has none.
pub fn strip_check_images(rec: &DecodedRecord) -> Result<Option<Bytes>, String> {
    rec.raw_without_check_images().map_err(|e| e.to_string())
}
