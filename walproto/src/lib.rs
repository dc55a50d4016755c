//! Every format that travels between Strata's parts: LSNs, PostgreSQL 15 WAL (pages, records,
//! block references, full-page images, per-resource-manager records), Postgres's physical
//! replication protocol (messages in [`replication`], the server side in [`pgwire`], a client
//! in [`pgclient`]), term histories, tenant and timeline ids ([`ids`]), and the gRPC services
//! ([`proto`]).

pub mod consts;
pub mod crc;
pub mod decoder;
pub mod encoder;
pub mod ids;
pub mod image;
pub mod lsn;
pub mod pgclient;
pub mod pglz;
pub mod pgwire;
pub mod proto;
pub mod record;
pub mod replication;
pub mod rmgr;
pub mod term_history;
pub mod walfiles;

pub use decoder::{DecodeError, Decoded, WalStreamDecoder};
pub use lsn::Lsn;
pub use record::{BlockRef, DecodedRecord, RelFileNode, XLogRecordHeader};
