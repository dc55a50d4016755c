//! Writer misuse, lookups outside the range, temporary files, and layer file names.

use layer_format::{
    DeltaLayerReader, DeltaLayerWriter, ImageLayerReader, ImageLayerWriter, Key, LayerDesc,
    LayerError, LayerKind, Lsn, RelFileNode, Value,
};

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

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn is_invalid(r: Result<(), LayerError>) -> String {
    match r {
        Err(e @ LayerError::InvalidInput { .. }) => e.to_string(),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn delta_writer_rejects_bad_input_and_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DeltaLayerWriter::new(dir.path(), key(10)..key(20), Lsn(100)..Lsn(200)).unwrap();
    let v = Value::pg_record(false, vec![1, 2, 3]);
    w.put(key(12), Lsn(150), &v).unwrap();
    let msg = is_invalid(w.put(key(12), Lsn(150), &v));
    assert!(msg.contains("out of order"), "{msg}");
    is_invalid(w.put(key(12), Lsn(149), &v));
    is_invalid(w.put(key(11), Lsn(199), &v));
    let msg = is_invalid(w.put(key(20), Lsn(150), &v));
    assert!(msg.contains("outside the layer's key range"), "{msg}");
    is_invalid(w.put(key(9), Lsn(150), &v));
    let msg = is_invalid(w.put(key(13), Lsn(200), &v));
    assert!(msg.contains("outside the layer's LSN range"), "{msg}");
    is_invalid(w.put(key(13), Lsn(99), &v));
    w.put(key(12), Lsn(151), &v).unwrap();
    w.put(key(19), Lsn(100), &v).unwrap();
    let written = w.finish().unwrap();
    assert_eq!(files(dir.path()), vec![written.desc.file_name()]);
    let r = DeltaLayerReader::open(&written.path).unwrap();
    assert_eq!(r.verify().unwrap(), 3);

    // Lookups outside the key range are errors; below the LSN range, empty.
    assert!(r.versions(key(20), Lsn(150)).is_err());
    assert!(r.versions(key(9), Lsn(150)).is_err());
    assert_eq!(r.versions(key(12), Lsn(99)).unwrap().count(), 0);
    assert_eq!(r.versions(key(12), Lsn(u64::MAX)).unwrap().count(), 2);
}

#[test]
fn image_writer_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ImageLayerWriter::new(dir.path(), key(10)..key(20), Lsn(100)).unwrap();
    w.put(key(11), &[1; 100]).unwrap();
    is_invalid(w.put(key(11), &[1; 100]));
    is_invalid(w.put(key(10), &[1; 100]));
    is_invalid(w.put(key(20), &[1; 100]));
    w.put(key(12), &[2; 100]).unwrap();
    let r = ImageLayerReader::open(&w.finish().unwrap().path).unwrap();
    assert_eq!(r.get(key(12)).unwrap().unwrap()[..], [2; 100]);
    assert_eq!(r.get(key(13)).unwrap(), None);
    assert_eq!(r.get(key(10)).unwrap(), None);
    assert!(r.get(key(20)).is_err());
    assert!(r.get(key(5)).is_err());
    let keys: Vec<Key> = r.keys().collect::<Result<_, _>>().unwrap();
    assert_eq!(keys, vec![key(11), key(12)]);
}

#[test]
fn bad_ranges_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    assert!(DeltaLayerWriter::new(dir.path(), key(5)..key(5), Lsn(1)..Lsn(2)).is_err());
    assert!(DeltaLayerWriter::new(dir.path(), key(5)..key(6), Lsn(2)..Lsn(2)).is_err());
    assert!(ImageLayerWriter::new(dir.path(), key(6)..key(5), Lsn(2)).is_err());
    assert!(ImageLayerWriter::new(dir.path(), key(5)..key(6), Lsn::MAX).is_err());
    assert!(files(dir.path()).is_empty());
}

#[test]
fn unfinished_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DeltaLayerWriter::new(dir.path(), key(0)..key(9), Lsn(1)..Lsn(9)).unwrap();
    w.put(key(1), Lsn(1), &Value::image(vec![0; 8192])).unwrap();
    let names = files(dir.path());
    assert_eq!(names.len(), 1);
    assert!(names[0].ends_with(".tmp"), "{names:?}");
    assert!(LayerDesc::parse(&names[0]).is_err());
    drop(w);
    assert!(files(dir.path()).is_empty());
}

#[test]
fn layer_names_round_trip() {
    let d = LayerDesc::delta(Key::MIN..Key::MAX, Lsn(0x16B374C28)..Lsn(0x16B3FFFF0));
    let name = d.file_name();
    assert_eq!(
        name,
        "000000000000000000000000000000000000-FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF__000000016B374C28-000000016B3FFFF0.delta"
    );
    assert_eq!(LayerDesc::parse(&name).unwrap(), d);
    assert_eq!(name.parse::<LayerDesc>().unwrap(), d);

    let i = LayerDesc::image(key(1)..key(2).next(), Lsn(0x1000));
    let name = i.to_string();
    assert!(name.ends_with("__0000000000001000.image"), "{name}");
    let parsed = LayerDesc::parse(&name).unwrap();
    assert_eq!(parsed, i);
    assert_eq!(parsed.kind, LayerKind::Image);
    assert_eq!(parsed.image_lsn(), Lsn(0x1000));
    assert_eq!(parsed.lsn_range, Lsn(0x1000)..Lsn(0x1001));
}

#[test]
fn layer_names_rejected() {
    let k0 = "010000067F0000000500004000000000000";
    let good_delta = format!("{k0}0-{k0}1__0000000000000001-0000000000000002.delta");
    assert!(LayerDesc::parse(&good_delta).is_ok());
    let bad = [
        String::new(),
        "foo.delta".into(),
        format!("{k0}0-{k0}1__0000000000000001-0000000000000002.delta.tmp"),
        format!("{k0}0-{k0}1__0000000000000001-0000000000000002.layer"),
        format!("{k0}0-{k0}1__0000000000000001-0000000000000002"),
        format!("{k0}0-{k0}1_0000000000000001-0000000000000002.delta"),
        format!("{k0}0{k0}1__0000000000000001-0000000000000002.delta"),
        // lower-case hex is not the canonical spelling
        format!("{k0}0-{k0}1__000000000000000a-0000000000000fff.delta"),
        format!(
            "{}0-{k0}1__0000000000000001-0000000000000002.delta",
            k0.to_lowercase()
        ),
        // wrong widths, signs, junk
        format!("{k0}-{k0}1__0000000000000001-0000000000000002.delta"),
        format!("{k0}0-{k0}1__000000000000001-0000000000000002.delta"),
        format!("{k0}0-{k0}1__+000000000000001-0000000000000002.delta"),
        format!("{k0}0-{k0}1__00000000000000010-000000000000002.delta"),
        format!("{k0}0-{k0}1__0000000000000001-0000000000000002-0000000000000003.delta"),
        format!("{k0}0-{k0}1-{k0}2__0000000000000001-0000000000000002.delta"),
        // empty or reversed ranges
        format!("{k0}1-{k0}1__0000000000000001-0000000000000002.delta"),
        format!("{k0}2-{k0}1__0000000000000001-0000000000000002.delta"),
        format!("{k0}0-{k0}1__0000000000000002-0000000000000002.delta"),
        format!("{k0}0-{k0}1__0000000000000003-0000000000000002.delta"),
        // image layers: one LSN
        format!("{k0}0-{k0}1__0000000000000001-0000000000000002.image"),
        format!("{k0}0-{k0}1__FFFFFFFFFFFFFFFF.image"),
        format!("{k0}0-{k0}1__0000000000000001.delta"),
    ];
    for name in bad {
        assert!(LayerDesc::parse(&name).is_err(), "accepted {name:?}");
    }
    assert!(LayerDesc::parse(&format!("{k0}0-{k0}1__0000000000000001.image")).is_ok());
}

#[test]
fn a_key_range_narrowed_at_finish_is_in_the_header_and_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let v = Value::pg_record(false, vec![1, 2, 3]);
    let open = |dir: &std::path::Path| {
        let mut w = DeltaLayerWriter::new(dir, key(10)..Key::MAX, Lsn(100)..Lsn(200)).unwrap();
        w.put(key(12), Lsn(150), &v).unwrap();
        w.put(key(14), Lsn(160), &v).unwrap();
        w
    };
    // The end must lie past the last key written and within the range; a refused writer
    // leaves no file behind.
    for end in [key(14), key(13), key(10)] {
        let e = open(dir.path()).finish_at_key_end(end).unwrap_err();
        assert!(
            matches!(e, LayerError::InvalidInput { .. }) && e.to_string().contains("cannot end"),
            "{e}"
        );
        assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    }
    let mut w = DeltaLayerWriter::new(dir.path(), key(10)..key(20), Lsn(100)..Lsn(200)).unwrap();
    w.put(key(12), Lsn(150), &v).unwrap();
    assert!(
        w.finish_at_key_end(key(21)).is_err(),
        "beyond the range's end"
    );

    let written = open(dir.path()).finish_at_key_end(key(15)).unwrap();
    assert_eq!(written.desc.key_range, key(10)..key(15));
    assert_eq!(files(dir.path()), vec![written.desc.file_name()]);
    // The reader checks the header (and its checksum) against the name it was opened by.
    let r = DeltaLayerReader::open(&written.path).unwrap();
    assert_eq!(r.desc().key_range, key(10)..key(15));
    assert_eq!(r.verify().unwrap(), 2);
    assert!(
        r.versions(key(15), Lsn(199)).is_err(),
        "outside the narrowed range"
    );
}
