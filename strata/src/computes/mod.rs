//! Computes of the local cluster: each is a vanilla Postgres 15 in
//! `<cluster dir>/computes/<name>/`, started from a pageserver basebackup, plus (read-write
//! computes) a walproposer streaming its WAL to the safekeepers. One file per job: the record,
//! starting, stopping, the ports they claim, the basebackup stream, the walproposer, spare data directories, lazy
//! computes' page filesystems, the computes' own Postgres settings.

mod basebackup;
pub mod lazy;
mod ports;
mod record;
pub mod settings;
mod spares;
mod start;
mod stop;
mod walproposer;

pub(crate) use basebackup::stream_basebackup;
pub use basebackup::Streamed;
pub(crate) use record::computes_dir;
pub use record::{
    compute_dir, control_file, log_file, node, postgres_service, walproposer_daemon, ComputeRecord,
};
pub(crate) use start::{compute_spec, port_free};
pub use start::{start, StartRequest};
pub use stop::{reap_expired, remove, stop_all};
pub(crate) use walproposer::{fence_args as walproposer_fence_args, start_walproposer};
// What group cuts (`crate::group::cut`) call through this module.
pub(crate) use crate::lsn::{committed_on_safekeepers, wait_for_committed_wal};
