//! Damaged files: every single-byte corruption, every truncation, wrong magic and version.

use std::path::{Path, PathBuf};

use layer_format::sample_pages::pgbench_accounts_page;
use layer_format::{
    DeltaLayerReader, DeltaLayerWriter, ImageLayerReader, ImageLayerWriter, Key, LayerError, Lsn,
    RelFileNode, Value,
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

/// A delta layer with two index blocks, small records and one compressed page image.
fn small_delta(dir: &Path) -> PathBuf {
    let mut w = DeltaLayerWriter::new(dir, key(0)..key(1000), Lsn(10)..Lsn(1000)).unwrap();
    w.put(
        key(1),
        Lsn(10),
        &Value::image(pgbench_accounts_page(1, 1, 0.0)),
    )
    .unwrap();
    for i in 0..110u32 {
        let v = if i % 9 == 0 {
            Value::strata_record(true, 2, vec![i as u8; 2])
        } else {
            Value::pg_record(false, vec![i as u8; 3])
        };
        w.put(key(2 + i / 4), Lsn(20 + u64::from(i)), &v).unwrap();
    }
    w.finish().unwrap().path
}

/// An image layer with two images (one compressed) and one empty image.
fn small_image(dir: &Path) -> PathBuf {
    let mut w = ImageLayerWriter::new(dir, key(0)..key(1000), Lsn(77)).unwrap();
    w.put(key(3), &pgbench_accounts_page(3, 1, 0.0)).unwrap();
    w.put(key(4), &[1, 2, 3, 4, 5]).unwrap();
    w.put(key(9), &[]).unwrap();
    w.finish().unwrap().path
}

fn open_and_scan_delta(path: &Path) -> Result<u64, LayerError> {
    DeltaLayerReader::open(path)?.verify()
}

fn open_and_scan_image(path: &Path) -> Result<u64, LayerError> {
    ImageLayerReader::open(path)?.verify()
}

/// Flips bits of every byte of a copy of the file in place (one `pwrite` per flip and one to
/// undo it) and checks that open + a full scan reports corruption, naming the file.
fn every_byte_flip(path: &Path, scan: fn(&Path) -> Result<u64, LayerError>) {
    use std::os::unix::fs::FileExt;
    let good = std::fs::read(path).unwrap();
    assert!(scan(path).is_ok());
    let damaged = path.with_file_name("damaged.layer");
    std::fs::write(&damaged, &good).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&damaged)
        .unwrap();
    for offset in 0..good.len() {
        for mask in [0x01u8, 0x80, 0xFF] {
            file.write_at(&[good[offset] ^ mask], offset as u64)
                .unwrap();
            match scan(&damaged) {
                Ok(n) => panic!("flip 0x{mask:02X} at offset {offset} not detected ({n} entries)"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains("damaged.layer"), "{msg}");
                    assert!(e.is_corruption(), "{msg}");
                }
            }
        }
        file.write_at(&good[offset..offset + 1], offset as u64)
            .unwrap();
    }
    assert!(scan(&damaged).is_ok());
}

#[test]
fn delta_every_single_byte_corruption_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_delta(dir.path());
    assert_eq!(
        DeltaLayerReader::open(&path).unwrap().index_block_count(),
        2
    );
    every_byte_flip(&path, open_and_scan_delta);
}

#[test]
fn image_every_single_byte_corruption_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_image(dir.path());
    every_byte_flip(&path, open_and_scan_image);
}

#[test]
fn truncations_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    for (path, scan) in [
        (
            small_delta(dir.path()),
            open_and_scan_delta as fn(&Path) -> _,
        ),
        (small_image(dir.path()), open_and_scan_image),
    ] {
        let good = std::fs::read(&path).unwrap();
        let cut = path.with_file_name("cut.layer");
        std::fs::write(&cut, &good).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
        for len in (0..good.len()).rev() {
            file.set_len(len as u64).unwrap();
            let err = scan(&cut).expect_err(&format!("truncation to {len} bytes not detected"));
            assert!(err.is_corruption(), "{err}");
        }
        // Appended garbage is detected too.
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&cut, &longer).unwrap();
        assert!(scan(&cut).is_err());
    }
}

fn rewrite_header_crc(bytes: &mut [u8]) {
    let crc = crc32c::crc32c(&bytes[..64]);
    bytes[64..68].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn wrong_magic_version_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_delta(dir.path());
    let good = std::fs::read(&path).unwrap();
    let other = dir.path().join("other.layer");

    let mut bytes = good.clone();
    bytes[0..8].copy_from_slice(b"NOTLAYER");
    std::fs::write(&other, &bytes).unwrap();
    let msg = DeltaLayerReader::open(&other).err().unwrap().to_string();
    assert!(
        msg.contains("bad magic") && msg.contains("offset 0"),
        "{msg}"
    );

    let mut bytes = good.clone();
    bytes[8..10].copy_from_slice(&2u16.to_be_bytes());
    rewrite_header_crc(&mut bytes);
    std::fs::write(&other, &bytes).unwrap();
    let msg = DeltaLayerReader::open(&other).err().unwrap().to_string();
    assert!(msg.contains("unsupported format version 2"), "{msg}");

    let mut bytes = good.clone();
    let at = bytes.len() - 12;
    bytes[at] ^= 1;
    std::fs::write(&other, &bytes).unwrap();
    let msg = DeltaLayerReader::open(&other).err().unwrap().to_string();
    assert!(msg.contains("footer magic"), "{msg}");

    // A delta file opened as an image layer, and vice versa.
    let msg = ImageLayerReader::open(&path).err().unwrap().to_string();
    assert!(msg.contains("expected a Image layer"), "{msg}");
    let image = small_image(dir.path());
    assert!(DeltaLayerReader::open(&image).is_err());

    // A file whose name disagrees with its header.
    let renamed = dir
        .path()
        .join(layer_format::LayerDesc::delta(key(0)..key(999), Lsn(10)..Lsn(1000)).file_name());
    std::fs::copy(&path, &renamed).unwrap();
    let msg = DeltaLayerReader::open(&renamed).err().unwrap().to_string();
    assert!(msg.contains("file name does not match"), "{msg}");

    // Missing file: an I/O error naming the path.
    let err = DeltaLayerReader::open(&dir.path().join("missing"))
        .err()
        .unwrap();
    assert!(!err.is_corruption() && err.to_string().contains("missing"));
}

/// A handle from another layer (or a forged one) gives an error, never a panic.
#[test]
fn foreign_handles_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let big = {
        let mut w =
            DeltaLayerWriter::new(dir.path(), key(0)..key(1000), Lsn(1)..Lsn(1000)).unwrap();
        w.put(key(5), Lsn(5), &Value::pg_record(true, vec![9; 50_000]))
            .unwrap();
        w.finish().unwrap().path
    };
    let small = small_delta(dir.path());
    let big = DeltaLayerReader::open(&big).unwrap();
    let small = DeltaLayerReader::open(&small).unwrap();
    let mut chain = Vec::new();
    big.collect_chain(key(5), Lsn(5), &mut chain).unwrap();
    assert!(small.read_value(&chain[0].handle).is_err());
    let mut chain2 = Vec::new();
    small.collect_chain(key(2), Lsn(999), &mut chain2).unwrap();
    assert!(big.read_value(&chain2[0].handle).is_err());
}
