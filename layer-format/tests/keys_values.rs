//! Properties of keys and values.

use layer_format::{Key, KeyKind, RelFileNode, SlruKind, Value};
use proptest::prelude::*;

fn rel_strategy() -> impl Strategy<Value = (u32, u32, u32, u8, u32)> {
    (
        0u32..4,
        0u32..4,
        0u32..4,
        0u8..4,
        prop_oneof![0u32..8, Just(u32::MAX - 1)],
    )
}

proptest! {
    #[test]
    fn rel_key_order_matches_field_order(a in rel_strategy(), b in rel_strategy()) {
        let k = |(spc, db, rel, fork, blk): (u32, u32, u32, u8, u32)| {
            Key::rel_block(RelFileNode { spc, db, rel }, fork, blk)
        };
        prop_assert_eq!(k(a).cmp(&k(b)), a.cmp(&b));
        // A fork's size key sorts after all its blocks and before the next fork.
        let (spc, db, rel, fork, _) = a;
        let node = RelFileNode { spc, db, rel };
        let size = Key::rel_size(node, fork);
        let next_fork = Key::rel_block(node, fork + 1, 0);
        prop_assert!(k(a) < size);
        prop_assert!(size < next_fork);
    }

    #[test]
    fn key_text_round_trip(bytes in any::<[u8; 18]>()) {
        let key = Key::from_bytes(bytes);
        let text = key.to_string();
        prop_assert_eq!(text.len(), 36);
        prop_assert_eq!(text.parse::<Key>().unwrap(), key);
        if let Some(kind) = key.kind() {
            prop_assert_eq!(Key::from_kind(kind), key);
        }
        prop_assert!(key.next() >= key);
    }

    #[test]
    fn slru_keys(segno in any::<u32>(), blk in 0u32..32) {
        for slru in [SlruKind::Clog, SlruKind::MultiXactOffsets, SlruKind::MultiXactMembers] {
            let k = Key::slru_block(slru, segno, blk);
            prop_assert_eq!(k.kind(), Some(KeyKind::SlruBlock { slru, segno, blkno: blk }));
            prop_assert!(k < Key::slru_segment_size(slru, segno));
            prop_assert!(!k.is_rel_block());
        }
    }

    #[test]
    fn value_round_trip(which in 0u8..3, will_init in any::<bool>(), kind in any::<u8>(),
                        body in prop::collection::vec(any::<u8>(), 0..600)) {
        let v = match which {
            0 => Value::image(body),
            1 => Value::pg_record(will_init, body),
            _ => Value::strata_record(will_init, kind, body),
        };
        let mut buf = vec![0xAA];
        v.encode(&mut buf);
        prop_assert_eq!(Value::decode(&buf[1..]).unwrap(), v);
    }

    #[test]
    fn value_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        let _ = Value::decode(&bytes);
    }
}
