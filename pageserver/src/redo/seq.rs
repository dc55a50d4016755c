//! Redo of Sequence LOG records (`seq_redo` in `commands/sequence.c`): the sequence's only
//! page is rebuilt from scratch each time.

use walproto::record::DecodedRecord;
use walproto::rmgr::seq::SeqRecord;

use super::page::{self, AddItem, PResult, Page};

/// `SEQ_MAGIC` in the page's special space (`sequence_magic`, 4 bytes, MAXALIGNed to 8).
const SEQ_MAGIC: u32 = 0x1717;

/// Block 0 becomes an initialized page holding the logged tuple at offset 1.
pub fn redo(rec: &DecodedRecord, p: &mut Page) -> PResult<()> {
    let seq = SeqRecord::parse(rec.header.info, &rec.main_data_bytes())
        .map_err(|e| page::PageError(e.to_string()))?;
    page::init(p, 4);
    let special = page::special(p);
    page::put_u32(p, special, SEQ_MAGIC)?;
    page::add_item(p, &seq.tuple, 1, AddItem::default())?;
    page::set_lsn(p, rec.end_lsn.0);
    Ok(())
}
