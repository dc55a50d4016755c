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
    // The first bytes choose the start position and the chunk size.
    let start = match data[0] % 3 {
        0 => Lsn(0x0100_0000),
        1 => Lsn(0x0100_2000),
        _ => Lsn(0x0100_2000 + 8 * (data[1] as u64 % 64)),
    };
    let chunk = 1 + data[2] as usize * 37;
    let wal = &data[3..];
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
