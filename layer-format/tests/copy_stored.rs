//! Copying values between delta layers as they are stored (`read_stored` / `put_stored`, what
//! an L0 → L1 merge does): the copy reads back equal to the source, compressed values keep
//! their bytes, raw ones follow the destination's compression policy.

use std::collections::BTreeMap;

use layer_format::sample_pages::{pgbench_accounts_page, random_page};
use layer_format::{Compression, DeltaLayerReader, DeltaLayerWriter, Key, Lsn, RelFileNode, Value};

fn key(blk: u32) -> Key {
    Key::rel_block(
        RelFileNode {
            spc: 1663,
            db: 5,
            rel: 16384,
        },
        0,
        blk,
    )
}

#[test]
fn copy_stored_values() {
    let dir = tempfile::tempdir().unwrap();
    let range = key(0)..key(1000);
    let mut model: BTreeMap<(Key, Lsn), Value> = BTreeMap::new();
    for blk in 0..50u32 {
        let page = if blk % 7 == 0 {
            random_page(blk as u64)
        } else {
            pgbench_accounts_page(blk, 1, 0.0)
        };
        model.insert((key(blk), Lsn(10)), Value::image(page));
        // A long, compressible record and a short one.
        let rec = vec![(blk % 5) as u8; 2000 + blk as usize];
        model.insert((key(blk), Lsn(20)), Value::pg_record(false, rec));
        model.insert(
            (key(blk), Lsn(30)),
            Value::pg_record(blk % 2 == 0, vec![blk as u8; 40]),
        );
    }
    // The source: images compressed, records raw (an L0 layer).
    let mut w = DeltaLayerWriter::with_compression(
        dir.path(),
        range.clone(),
        Lsn(1)..Lsn(100),
        Compression::Lz4Images,
    )
    .unwrap();
    for ((k, lsn), v) in &model {
        w.put(*k, *lsn, v).unwrap();
    }
    let src = DeltaLayerReader::open(&w.finish().unwrap().path).unwrap();

    let copy_dir = tempfile::tempdir().unwrap();
    let mut w = DeltaLayerWriter::new(copy_dir.path(), range, Lsn(1)..Lsn(100)).unwrap();
    let mut compressed = 0;
    for e in src.entries() {
        let e = e.unwrap();
        let stored = src.read_stored(&e.handle).unwrap();
        compressed += e.handle.is_compressed() as usize;
        w.put_stored(e.key, e.lsn, &e.handle, stored).unwrap();
    }
    let copy = DeltaLayerReader::open(&w.finish().unwrap().path).unwrap();
    assert!(
        compressed > 30,
        "only {compressed} compressed source values"
    );

    let got: Vec<_> = copy.iter().collect::<Result<_, _>>().unwrap();
    let want: Vec<_> = model
        .iter()
        .map(|((k, l), v)| (*k, *l, v.clone()))
        .collect();
    assert_eq!(got, want);
    // Compressed images kept their bytes; long records got compressed on the way.
    let (mut same, mut newly) = (0, 0);
    for (a, b) in src.entries().zip(copy.entries()) {
        let (a, b) = (a.unwrap(), b.unwrap());
        if a.handle.is_compressed() {
            assert_eq!(
                src.read_stored(&a.handle).unwrap(),
                copy.read_stored(&b.handle).unwrap()
            );
            same += 1;
        } else if b.handle.is_compressed() {
            newly += 1;
        }
    }
    assert_eq!(same, compressed);
    assert!(newly >= 40, "only {newly} records compressed by the copy");
    copy.verify().unwrap();
}
