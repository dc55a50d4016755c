//! The messages of PostgreSQL's physical streaming replication, carried inside CopyData once
//! `START_REPLICATION` has switched the connection to COPY BOTH mode. All integers are
//! big-endian (network order); times are microseconds since 2000-01-01 UTC.
//!
//! | tag | direction | fields |
//! | --- | --- | --- |
//! | `w` XLogData | server → client | WAL start u64, server's WAL end u64, send time i64, WAL bytes |
//! | `k` keepalive | server → client | server's WAL end u64, send time i64, reply requested u8 |
//! | `r` standby status | client → server | written u64, flushed u64, applied u64, send time i64, reply requested u8 |
//! | `h` hot standby feedback | client → server | send time i64, xmin u32, xmin epoch u32, catalog xmin u32, catalog xmin epoch u32 |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::lsn::Lsn;

/// Seconds from the Unix epoch to Postgres's epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// Microseconds since 2000-01-01 UTC, Postgres's `TimestampTz`.
pub fn pg_timestamp(t: SystemTime) -> i64 {
    let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    match t.duration_since(pg_epoch) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// The current time as a Postgres `TimestampTz`.
pub fn pg_now() -> i64 {
    pg_timestamp(SystemTime::now())
}

/// One replication message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData {
        start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
    StandbyStatus {
        written: Lsn,
        flushed: Lsn,
        applied: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
    HotStandbyFeedback {
        send_time: i64,
        xmin: u32,
        xmin_epoch: u32,
        catalog_xmin: u32,
        catalog_xmin_epoch: u32,
    },
}

/// A CopyData payload that is not a replication message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplicationMessageError {
    #[error("empty replication message")]
    Empty,
    #[error("unknown replication message tag {0:?}")]
    UnknownTag(char),
    #[error("replication message {tag:?} has {got} bytes, expected {expected}")]
    WrongLength {
        tag: char,
        got: usize,
        expected: usize,
    },
}

const XLOGDATA_HEADER: usize = 24;
const KEEPALIVE_LEN: usize = 17;
const STANDBY_STATUS_LEN: usize = 33;
const FEEDBACK_LEN: usize = 24;

impl ReplicationMessage {
    /// Parses a CopyData payload. XLogData's WAL bytes share `payload`'s buffer.
    pub fn parse(mut payload: Bytes) -> Result<Self, ReplicationMessageError> {
        if payload.is_empty() {
            return Err(ReplicationMessageError::Empty);
        }
        let tag = payload.get_u8();
        let check = |expected: usize, exact: bool, got: usize| {
            if got < expected || (exact && got != expected) {
                Err(ReplicationMessageError::WrongLength {
                    tag: tag as char,
                    got,
                    expected,
                })
            } else {
                Ok(())
            }
        };
        match tag {
            b'w' => {
                check(XLOGDATA_HEADER, false, payload.len())?;
                Ok(ReplicationMessage::XLogData {
                    start: Lsn(payload.get_u64()),
                    wal_end: Lsn(payload.get_u64()),
                    send_time: payload.get_i64(),
                    data: payload,
                })
            }
            b'k' => {
                check(KEEPALIVE_LEN, true, payload.len())?;
                Ok(ReplicationMessage::Keepalive {
                    wal_end: Lsn(payload.get_u64()),
                    send_time: payload.get_i64(),
                    reply_requested: payload.get_u8() != 0,
                })
            }
            b'r' => {
                check(STANDBY_STATUS_LEN, true, payload.len())?;
                Ok(ReplicationMessage::StandbyStatus {
                    written: Lsn(payload.get_u64()),
                    flushed: Lsn(payload.get_u64()),
                    applied: Lsn(payload.get_u64()),
                    send_time: payload.get_i64(),
                    reply_requested: payload.get_u8() != 0,
                })
            }
            b'h' => {
                check(FEEDBACK_LEN, true, payload.len())?;
                Ok(ReplicationMessage::HotStandbyFeedback {
                    send_time: payload.get_i64(),
                    xmin: payload.get_u32(),
                    xmin_epoch: payload.get_u32(),
                    catalog_xmin: payload.get_u32(),
                    catalog_xmin_epoch: payload.get_u32(),
                })
            }
            other => Err(ReplicationMessageError::UnknownTag(other as char)),
        }
    }

    /// Appends the CopyData payload of this message.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            ReplicationMessage::XLogData {
                start,
                wal_end,
                send_time,
                data,
            } => {
                out.reserve(1 + XLOGDATA_HEADER + data.len());
                out.put_u8(b'w');
                out.put_u64(start.0);
                out.put_u64(wal_end.0);
                out.put_i64(*send_time);
                out.put_slice(data);
            }
            ReplicationMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            } => {
                out.put_u8(b'k');
                out.put_u64(wal_end.0);
                out.put_i64(*send_time);
                out.put_u8(*reply_requested as u8);
            }
            ReplicationMessage::StandbyStatus {
                written,
                flushed,
                applied,
                send_time,
                reply_requested,
            } => {
                out.put_u8(b'r');
                out.put_u64(written.0);
                out.put_u64(flushed.0);
                out.put_u64(applied.0);
                out.put_i64(*send_time);
                out.put_u8(*reply_requested as u8);
            }
            ReplicationMessage::HotStandbyFeedback {
                send_time,
                xmin,
                xmin_epoch,
                catalog_xmin,
                catalog_xmin_epoch,
            } => {
                out.put_u8(b'h');
                out.put_i64(*send_time);
                out.put_u32(*xmin);
                out.put_u32(*xmin_epoch);
                out.put_u32(*catalog_xmin);
                out.put_u32(*catalog_xmin_epoch);
            }
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let msgs = [
            ReplicationMessage::XLogData {
                start: Lsn(0x0100_0028),
                wal_end: Lsn(0x0200_0000),
                send_time: 7,
                data: Bytes::from_static(b"wal bytes"),
            },
            ReplicationMessage::Keepalive {
                wal_end: Lsn(5),
                send_time: -3,
                reply_requested: true,
            },
            ReplicationMessage::StandbyStatus {
                written: Lsn(1),
                flushed: Lsn(2),
                applied: Lsn(0),
                send_time: 9,
                reply_requested: false,
            },
            ReplicationMessage::HotStandbyFeedback {
                send_time: 1,
                xmin: 2,
                xmin_epoch: 3,
                catalog_xmin: 4,
                catalog_xmin_epoch: 5,
            },
        ];
        for m in msgs {
            assert_eq!(ReplicationMessage::parse(m.to_bytes()), Ok(m));
        }
    }

    #[test]
    fn wire_layout_is_big_endian() {
        let m = ReplicationMessage::Keepalive {
            wal_end: Lsn(0x0102_0304_0506_0708),
            send_time: 1,
            reply_requested: true,
        };
        assert_eq!(
            &m.to_bytes()[..],
            &[b'k', 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 1, 1]
        );
    }

    #[test]
    fn bad_messages_are_errors() {
        assert_eq!(
            ReplicationMessage::parse(Bytes::new()),
            Err(ReplicationMessageError::Empty)
        );
        assert_eq!(
            ReplicationMessage::parse(Bytes::from_static(b"x")),
            Err(ReplicationMessageError::UnknownTag('x'))
        );
        assert!(ReplicationMessage::parse(Bytes::from_static(b"k\x00\x01")).is_err());
        assert!(ReplicationMessage::parse(Bytes::from_static(b"w\x00")).is_err());
        let mut long = ReplicationMessage::Keepalive {
            wal_end: Lsn(0),
            send_time: 0,
            reply_requested: false,
        }
        .to_bytes()
        .to_vec();
        long.push(0);
        assert!(ReplicationMessage::parse(Bytes::from(long)).is_err());
    }

    #[test]
    fn timestamps_count_from_2000() {
        let t = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS + 2);
        assert_eq!(pg_timestamp(t), 2_000_000);
        assert_eq!(
            pg_timestamp(UNIX_EPOCH),
            -(PG_EPOCH_UNIX_SECS as i64) * 1_000_000
        );
    }
}
