//! Fuzzes the streaming WAL decoder: any bytes, fed in chunks whose sizes the input chooses,
//! starting at a segment start or mid-page, must give records, an end of WAL or an error, never
//! a panic. Decoded records' images are restored too, exercising the decompressors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walproto::{Decoded, Lsn, WalStreamDecoder};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // The first bytes choose the start position and the chunk size. Mode 0 starts where the
    // first page header says it is, so that seeds cut from real segments decode.
    let wal = &data[3..];
    let chunk = 1 + data[2] as usize * 37;
    let start = match data[0] % 3 {
        0 if wal.len() >= 16 => {
            let addr = u64::from_le_bytes(wal[8..16].try_into().unwrap());
            Lsn(addr - addr % 8192)
        }
        1 => Lsn(0x0100_2000),
        _ => Lsn(0x0100_2000 + 8 * (data[1] as u64 % 64)),
    };
    let mut decoder = WalStreamDecoder::new(start);
    let mut chunks = wal.chunks(chunk);
    loop {
        match decoder.next() {
            Ok(Decoded::Record(rec)) => {
                for block in &rec.blocks {
                    if let Some(image) = &block.image {
                        let _ = image.restore();
                    }
                }
                let _ = walproto::rmgr::describe(&rec);
            }
            Ok(Decoded::NeedMore) => match chunks.next() {
                Some(c) => decoder.feed(c),
                None => return,
            },
            Ok(Decoded::EndOfWal { .. }) | Err(_) => return,
        }
    }
});
