//! Round trips of delta and image layers against in-memory models.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use layer_format::sample_pages::{btree_int4_leaf_page, pgbench_accounts_page, random_page};
use layer_format::{
    Compression, DeltaEntry, DeltaLayerReader, DeltaLayerWriter, ImageLayerReader,
    ImageLayerWriter, Key, LayerDesc, Lsn, RelFileNode, Value,
};
use proptest::prelude::*;

fn rel() -> RelFileNode {
    RelFileNode {
        spc: 1663,
        db: 5,
        rel: 16384,
    }
}

fn key(blk: u32) -> Key {
    Key::rel_block(rel(), 0, blk)
}

fn full_range() -> std::ops::Range<Key> {
    Key::rel_block(rel(), 0, 0)..Key::rel_size(rel(), 0)
}

type Model = BTreeMap<(Key, Lsn), Value>;

fn write_delta(dir: &Path, model: &Model, compression: Compression) -> DeltaLayerReader {
    let mut w =
        DeltaLayerWriter::with_compression(dir, full_range(), Lsn(1)..Lsn(100_000), compression)
            .unwrap();
    for ((k, lsn), v) in model {
        w.put(*k, *lsn, v).unwrap();
    }
    let written = w.finish().unwrap();
    assert_eq!(written.entry_count, model.len() as u64);
    assert_eq!(
        written.path.file_name().unwrap().to_str().unwrap(),
        written.desc.file_name()
    );
    let r = DeltaLayerReader::open(&written.path).unwrap();
    assert_eq!(r.file_size(), written.file_size);
    r
}

fn expected_versions(model: &Model, k: Key, lsn: Lsn) -> Vec<(Lsn, bool)> {
    model
        .range((k, Lsn(0))..=(k, lsn))
        .rev()
        .map(|((_, l), v)| (*l, v.will_init()))
        .collect()
}

fn check_delta(r: &DeltaLayerReader, model: &Model, queries: &[(u32, u64)]) {
    // Full scan equals the model.
    let scanned: Vec<_> = r.iter().collect::<Result<_, _>>().unwrap();
    let expected: Vec<_> = model
        .iter()
        .map(|((k, l), v)| (*k, *l, v.clone()))
        .collect();
    assert_eq!(scanned, expected);
    assert_eq!(r.entry_count(), model.len() as u64);

    for &(blk, lsn) in queries {
        let (k, lsn) = (key(blk), Lsn(lsn));
        let want = expected_versions(model, k, lsn);
        let got: Vec<DeltaEntry> = r
            .versions(k, lsn)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let got_pairs: Vec<_> = got.iter().map(|e| (e.lsn, e.will_init)).collect();
        assert_eq!(got_pairs, want, "versions of {k} at {lsn}");
        for e in &got {
            assert_eq!(e.key, k);
            assert_eq!(&r.read_value(&e.handle).unwrap(), &model[&(k, e.lsn)]);
        }
        let mut chain = Vec::new();
        let complete = r.collect_chain(k, lsn, &mut chain).unwrap();
        let cut = want.iter().position(|(_, wi)| *wi);
        assert_eq!(complete, cut.is_some());
        let want_chain = &want[..cut.map_or(want.len(), |c| c + 1)];
        let got_chain: Vec<_> = chain.iter().map(|e| (e.lsn, e.will_init)).collect();
        assert_eq!(got_chain, want_chain);
    }
}

fn value_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(wi, b)| Value::pg_record(wi, b)),
        1 => (any::<bool>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(wi, k, b)| Value::strata_record(wi, k, b)),
        1 => (0u32..1000, any::<u64>(), 0u32..3).prop_map(|(blk, seed, which)| {
            Value::image(match which {
                0 => pgbench_accounts_page(blk, seed, 0.3),
                1 => btree_int4_leaf_page(blk + 1),
                _ => random_page(seed),
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn delta_round_trip(
        entries in prop::collection::vec((0u32..60, 1u64..2000, value_strategy()), 0..400),
        queries in prop::collection::vec((0u32..62, 0u64..2100), 40),
        compress in any::<bool>(),
    ) {
        let model: Model = entries.into_iter().map(|(b, l, v)| ((key(b), Lsn(l)), v)).collect();
        let dir = tempfile::tempdir().unwrap();
        let compression = if compress { Compression::Lz4 } else { Compression::None };
        let r = write_delta(dir.path(), &model, compression);
        check_delta(&r, &model, &queries);
        // Every existing (key, lsn) as a query, too.
        let exact: Vec<_> = model.keys().map(|(k, l)| {
            let blk = match k.kind() { Some(layer_format::KeyKind::RelBlock { blkno, .. }) => blkno, _ => unreachable!() };
            (blk, l.0)
        }).take(50).collect();
        check_delta(&r, &model, &exact);
    }

    #[test]
    fn image_round_trip(
        blocks in prop::collection::btree_map(0u32..3000, (any::<u64>(), 0u32..4), 0..120),
        queries in prop::collection::vec(0u32..3001, 40),
        compress in any::<bool>(),
    ) {
        let model: BTreeMap<Key, Vec<u8>> = blocks.into_iter().map(|(b, (seed, which))| {
            let page = match which {
                0 => pgbench_accounts_page(b, seed, 0.5),
                1 => btree_int4_leaf_page(b + 1),
                2 => random_page(seed),
                _ => vec![(seed % 256) as u8; (seed % 100) as usize],
            };
            (key(b), page)
        }).collect();
        let dir = tempfile::tempdir().unwrap();
        let compression = if compress { Compression::Lz4 } else { Compression::None };
        let mut w = ImageLayerWriter::with_compression(dir.path(), full_range(), Lsn(0x1234), compression).unwrap();
        for (k, page) in &model {
            w.put(*k, page).unwrap();
        }
        let written = w.finish().unwrap();
        prop_assert_eq!(&written.desc, &LayerDesc::image(full_range(), Lsn(0x1234)));
        let r = ImageLayerReader::open(&written.path).unwrap();
        prop_assert_eq!(r.lsn(), Lsn(0x1234));
        let scanned: Vec<(Key, Bytes)> = r.iter().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(scanned.len(), model.len());
        for ((k, img), (mk, mimg)) in scanned.iter().zip(&model) {
            prop_assert_eq!(k, mk);
            prop_assert_eq!(&img[..], &mimg[..]);
        }
        for b in queries {
            let got = r.get(key(b)).unwrap();
            prop_assert_eq!(got.as_deref(), model.get(&key(b)).map(|v| &v[..]));
        }
    }
}

#[test]
fn empty_layers() {
    let dir = tempfile::tempdir().unwrap();
    let r = write_delta(dir.path(), &Model::new(), Compression::Lz4);
    assert_eq!(r.entry_count(), 0);
    assert_eq!(r.index_block_count(), 0);
    assert_eq!(r.iter().count(), 0);
    assert_eq!(r.versions(key(3), Lsn(50)).unwrap().count(), 0);
    let mut chain = Vec::new();
    assert!(!r.collect_chain(key(3), Lsn(50), &mut chain).unwrap());
    assert!(chain.is_empty());

    let w = ImageLayerWriter::new(dir.path(), full_range(), Lsn(7)).unwrap();
    let written = w.finish().unwrap();
    let r = ImageLayerReader::open(&written.path).unwrap();
    assert_eq!(r.entry_count(), 0);
    assert_eq!(r.get(key(0)).unwrap(), None);
    assert_eq!(r.iter().count(), 0);
}

#[test]
fn large_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    let big: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let zeros = vec![0u8; 1 << 20];
    model.insert((key(1), Lsn(10)), Value::image(big.clone()));
    model.insert((key(1), Lsn(11)), Value::pg_record(false, zeros.clone()));
    model.insert(
        (key(2), Lsn(10)),
        Value::strata_record(true, 3, big.clone()),
    );
    let r = write_delta(dir.path(), &model, Compression::Lz4);
    check_delta(&r, &model, &[(1, 11), (1, 10), (2, 99), (0, 99)]);

    let mut w = ImageLayerWriter::new(dir.path(), full_range(), Lsn(5)).unwrap();
    w.put(key(1), &big).unwrap();
    w.put(key(2), &zeros).unwrap();
    let r = ImageLayerReader::open(&w.finish().unwrap().path).unwrap();
    assert_eq!(&r.get(key(1)).unwrap().unwrap()[..], &big[..]);
    assert_eq!(&r.get(key(2)).unwrap().unwrap()[..], &zeros[..]);
    assert_eq!(r.get(key(3)).unwrap(), None);
}

/// Versions of one key spanning several index blocks.
#[test]
fn long_history_across_index_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    for lsn in 1..=500u64 {
        model.insert(
            (key(7), Lsn(lsn * 2)),
            Value::pg_record(lsn % 97 == 0, vec![lsn as u8; 5]),
        );
    }
    model.insert((key(6), Lsn(3)), Value::pg_record(true, vec![1]));
    model.insert((key(8), Lsn(3)), Value::pg_record(false, vec![1]));
    let r = write_delta(dir.path(), &model, Compression::None);
    assert!(r.index_block_count() >= 5);
    let queries: Vec<_> = (0..1010)
        .step_by(7)
        .map(|l| (7, l))
        .chain([(6, 99_999), (8, 2)])
        .collect();
    check_delta(&r, &model, &queries);
}

#[test]
fn compression_is_used_when_it_pays() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ImageLayerWriter::new(dir.path(), full_range(), Lsn(5)).unwrap();
    for b in 0..100 {
        w.put(key(b), &pgbench_accounts_page(b, 1, 0.0)).unwrap();
    }
    let compressed = w.finish().unwrap().file_size;
    let dir2 = tempfile::tempdir().unwrap();
    let mut w =
        ImageLayerWriter::with_compression(dir2.path(), full_range(), Lsn(5), Compression::None)
            .unwrap();
    for b in 0..100 {
        w.put(key(b), &pgbench_accounts_page(b, 1, 0.0)).unwrap();
    }
    let raw = w.finish().unwrap().file_size;
    assert!(compressed * 2 < raw, "{compressed} vs {raw}");
}

/// A merge split between threads reads the layer in key slices: slices cut at the layer's
/// split keys (or anywhere) together give every entry once, in order, also where one key's
/// versions span index blocks.
#[test]
fn key_slices_cover_the_layer_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    for blk in 0..3000u32 {
        let versions = if blk == 1500 { 400 } else { 1 + blk as u64 % 3 };
        for v in 0..versions {
            model.insert(
                (key(blk), Lsn(10 + v)),
                Value::pg_record(v == 0, vec![blk as u8; 3]),
            );
        }
    }
    let r = write_delta(dir.path(), &model, Compression::None);
    let all: Vec<(Key, Lsn)> = model.keys().copied().collect();
    let sliced = |cuts: &[Key]| -> Vec<(Key, Lsn)> {
        let mut bounds = vec![Key::MIN];
        bounds.extend_from_slice(cuts);
        bounds.push(Key::MAX);
        bounds
            .windows(2)
            .flat_map(|w| {
                r.entries_in(w[0]..w[1])
                    .map(|e| e.map(|e| (e.key, e.lsn)).unwrap())
            })
            .collect()
    };
    for parts in [1, 2, 3, 4, 16] {
        let cuts = r.split_keys(parts);
        assert!(cuts.len() < parts.max(1), "{parts}: {cuts:?}");
        assert!(cuts.windows(2).all(|w| w[0] < w[1]), "{cuts:?}");
        assert_eq!(sliced(&cuts), all, "{parts} parts");
    }
    assert_eq!(r.split_keys(2).len(), 1);
    // Cuts that fall inside a long history, between blocks, past the end, before the start.
    for cuts in [
        vec![key(1500)],
        vec![key(1501)],
        vec![key(0), key(1), key(2999)],
        vec![key(10), key(1500), key(1501), key(4000)],
    ] {
        assert_eq!(sliced(&cuts), all, "{cuts:?}");
    }
    let mid: Vec<(Key, Lsn)> = r
        .entries_in(key(1500)..key(1501))
        .map(|e| e.map(|e| (e.key, e.lsn)).unwrap())
        .collect();
    assert_eq!(mid.len(), 400);
    assert_eq!(r.entries_in(key(3000)..Key::MAX).count(), 0);
}
