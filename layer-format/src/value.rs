//! `Value`: what a layer stores for one (key, LSN): a page image or a WAL record.
//!
//! Encoding (version 1). The first byte is a tag that names both the variant and the encoding
//! version, so a later format adds new tags and readers keep decoding the old ones.
//!
//! | tag  | layout after the tag                                   | meaning                          |
//! |------|--------------------------------------------------------|----------------------------------|
//! | 0x01 | page bytes (rest of the value)                         | page image (always `will_init`)  |
//! | 0x02 | flags u8, then the record bytes                        | raw PostgreSQL WAL record        |
//! | 0x03 | flags u8, kind u8, then the payload bytes              | Strata-specific record           |
//!
//! `flags` bit 0 is `will_init`; every other bit must be zero. The length is not stored: a
//! value is always framed by its container (a layer index entry).

use bytes::Bytes;

const TAG_IMAGE: u8 = 0x01;
const TAG_PG_RECORD: u8 = 0x02;
const TAG_STRATA_RECORD: u8 = 0x03;
const FLAG_WILL_INIT: u8 = 0x01;

/// A page image or a WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// The full contents of the key (for relation blocks, an 8 KiB page).
    Image(Bytes),
    /// A record to apply on top of the previous version.
    WalRecord(WalRecord),
}

/// A record stored in a delta layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    /// The record starts the key's history: redo needs no older version.
    pub will_init: bool,
    pub payload: RecordPayload,
}

/// The contents of a [`WalRecord`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordPayload {
    /// A raw PostgreSQL WAL record, as it appeared in the WAL.
    Postgres(Bytes),
    /// A small record Strata synthesizes; the pageserver defines `kind` and `data`.
    Strata { kind: u8, data: Bytes },
}

/// Why bytes are not a `Value`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("empty value")]
    Empty,
    #[error("unknown value tag 0x{0:02X} (written by a newer version?)")]
    UnknownTag(u8),
    #[error("value with tag 0x{tag:02X} is truncated: {len} bytes")]
    Truncated { tag: u8, len: usize },
    #[error("value with tag 0x{tag:02X} has unknown flag bits 0x{flags:02X}")]
    UnknownFlags { tag: u8, flags: u8 },
}

impl Value {
    /// A page image value.
    pub fn image(page: impl Into<Bytes>) -> Value {
        Value::Image(page.into())
    }

    /// A raw Postgres WAL record value.
    pub fn pg_record(will_init: bool, rec: impl Into<Bytes>) -> Value {
        Value::WalRecord(WalRecord {
            will_init,
            payload: RecordPayload::Postgres(rec.into()),
        })
    }

    /// A Strata-specific record value.
    pub fn strata_record(will_init: bool, kind: u8, data: impl Into<Bytes>) -> Value {
        Value::WalRecord(WalRecord {
            will_init,
            payload: RecordPayload::Strata {
                kind,
                data: data.into(),
            },
        })
    }

    /// True if the value does not need any older version: an image, or a `will_init` record.
    pub fn will_init(&self) -> bool {
        match self {
            Value::Image(_) => true,
            Value::WalRecord(rec) => rec.will_init,
        }
    }

    /// True for a page image.
    pub fn is_image(&self) -> bool {
        matches!(self, Value::Image(_))
    }

    /// Length of [`Value::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Image(page) => 1 + page.len(),
            Value::WalRecord(WalRecord { payload, .. }) => match payload {
                RecordPayload::Postgres(rec) => Value::pg_record_encoded_len(rec.len()),
                RecordPayload::Strata { data, .. } => 3 + data.len(),
            },
        }
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        match self {
            Value::Image(page) => {
                out.push(TAG_IMAGE);
                out.extend_from_slice(page);
            }
            Value::WalRecord(WalRecord { will_init, payload }) => {
                let flags = if *will_init { FLAG_WILL_INIT } else { 0 };
                match payload {
                    RecordPayload::Postgres(rec) => Value::encode_pg_record(*will_init, rec, out),
                    RecordPayload::Strata { kind, data } => {
                        out.extend_from_slice(&[TAG_STRATA_RECORD, flags, *kind]);
                        out.extend_from_slice(data);
                    }
                }
            }
        }
    }

    /// Length of the encoding of a raw Postgres record value of `rec_len` bytes.
    pub fn pg_record_encoded_len(rec_len: usize) -> usize {
        2 + rec_len
    }

    /// Appends the encoding of `Value::pg_record(will_init, rec)` without building the value
    /// (ingest stores a record's bytes under several keys straight from the decoded record).
    pub fn encode_pg_record(will_init: bool, rec: &[u8], out: &mut Vec<u8>) {
        let flags = if will_init { FLAG_WILL_INIT } else { 0 };
        out.extend_from_slice(&[TAG_PG_RECORD, flags]);
        out.extend_from_slice(rec);
    }

    /// Checks the tag and flags of an encoded value without decoding (copying) it; returns
    /// (`will_init`, is an image). The payload itself is not checked: it is opaque bytes.
    pub fn check_encoded(buf: &[u8]) -> Result<(bool, bool), ValueError> {
        let (&tag, rest) = buf.split_first().ok_or(ValueError::Empty)?;
        let min = match tag {
            TAG_IMAGE => return Ok((true, true)),
            TAG_PG_RECORD => 1,
            TAG_STRATA_RECORD => 2,
            other => return Err(ValueError::UnknownTag(other)),
        };
        if rest.len() < min {
            return Err(ValueError::Truncated {
                tag,
                len: buf.len(),
            });
        }
        let flags = rest[0];
        if flags & !FLAG_WILL_INIT != 0 {
            return Err(ValueError::UnknownFlags { tag, flags });
        }
        Ok((flags & FLAG_WILL_INIT != 0, false))
    }

    /// Decodes a value written by [`Value::encode`] (copies the payload).
    pub fn decode(buf: &[u8]) -> Result<Value, ValueError> {
        let (&tag, rest) = buf.split_first().ok_or(ValueError::Empty)?;
        let truncated = || ValueError::Truncated {
            tag,
            len: buf.len(),
        };
        let flags = |rest: &[u8]| -> Result<bool, ValueError> {
            let flags = *rest.first().ok_or_else(truncated)?;
            if flags & !FLAG_WILL_INIT != 0 {
                return Err(ValueError::UnknownFlags { tag, flags });
            }
            Ok(flags & FLAG_WILL_INIT != 0)
        };
        match tag {
            TAG_IMAGE => Ok(Value::Image(Bytes::copy_from_slice(rest))),
            TAG_PG_RECORD => {
                let will_init = flags(rest)?;
                Ok(Value::pg_record(
                    will_init,
                    Bytes::copy_from_slice(&rest[1..]),
                ))
            }
            TAG_STRATA_RECORD => {
                let will_init = flags(rest)?;
                let kind = *rest.get(1).ok_or_else(truncated)?;
                Ok(Value::strata_record(
                    will_init,
                    kind,
                    Bytes::copy_from_slice(&rest[2..]),
                ))
            }
            other => Err(ValueError::UnknownTag(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let values = [
            Value::image(vec![7u8; 8192]),
            Value::image(Vec::new()),
            Value::pg_record(true, vec![1, 2, 3]),
            Value::pg_record(false, Vec::new()),
            Value::strata_record(false, 9, vec![4, 5]),
            Value::strata_record(true, 0, Vec::new()),
        ];
        for v in values {
            let mut buf = Vec::new();
            v.encode(&mut buf);
            assert_eq!(buf.len(), v.encoded_len());
            assert_eq!(Value::decode(&buf).unwrap(), v);
            assert_eq!(
                Value::check_encoded(&buf).unwrap(),
                (v.will_init(), v.is_image())
            );
        }
        assert!(Value::image(Bytes::new()).will_init());
        assert!(!Value::pg_record(false, Bytes::new()).will_init());
    }

    #[test]
    fn decode_errors() {
        assert_eq!(Value::decode(&[]), Err(ValueError::Empty));
        assert_eq!(Value::decode(&[0x7F, 1]), Err(ValueError::UnknownTag(0x7F)));
        assert!(matches!(
            Value::decode(&[TAG_PG_RECORD]),
            Err(ValueError::Truncated { .. })
        ));
        assert!(matches!(
            Value::decode(&[TAG_STRATA_RECORD, 0]),
            Err(ValueError::Truncated { .. })
        ));
        assert!(matches!(
            Value::decode(&[TAG_PG_RECORD, 0x80]),
            Err(ValueError::UnknownFlags { .. })
        ));
        for bad in [
            &[][..],
            &[0x7F, 1],
            &[TAG_PG_RECORD],
            &[TAG_STRATA_RECORD, 0],
            &[TAG_PG_RECORD, 0x80],
        ] {
            assert_eq!(
                Value::check_encoded(bad).unwrap_err(),
                Value::decode(bad).unwrap_err()
            );
        }
    }
}
