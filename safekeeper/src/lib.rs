//! The safekeeper: a Paxos acceptor that keeps WAL durable on disk and serves it.
//!
//! - [`control_file`]: the acceptor's persisted state (term, term history, LSNs), atomically
//!   replaced and checksummed;
//! - [`wal_storage`]: 16 MiB WAL segment files, truncation, end-of-WAL recovery;
//! - [`group_commit`]: the writer thread that batches fsyncs;
//! - [`acceptor`]: the Paxos rules for one timeline;
//! - [`timeline`]: one open timeline (its acceptor, durability channel, offload status);
//! - [`timelines`]: the set of timelines and their lifecycle (open, verify, quarantine,
//!   recover, delete), configured by [`config`];
//! - `session`: a proposer's `Propose` stream (greeting, vote, election, appends);
//! - [`service`]: the thin gRPC adapter (`strata.safekeeper.v1.Safekeeper`) over the set;
//! - [`conn_threads`]: gRPC connections served each on its own thread;
//! - [`replication_server`]: the Postgres replication protocol over the committed WAL;
//! - [`remote_storage`]: the object store WAL is offloaded to;
//! - [`peers`]: the other safekeepers and the offloader choice;
//! - [`offload`]: uploads, shared offload/consumer LSNs, local WAL removal;
//! - [`recovery`]: rebuilding a timeline lost from disk from the peers and the object store;
//! - [`quarantine`]: verifying a timeline before it is opened (control file, every WAL record
//!   up to the flush LSN), moving a damaged one aside and having it recovered from the peers.

pub mod acceptor;
pub mod config;
pub mod conn_threads;
pub mod control_file;
mod convert;
mod delete;
pub mod group_commit;
pub mod ids;
pub mod metrics;
pub mod offload;
pub mod peers;
pub mod quarantine;
mod recovery;
pub mod remote_storage;
pub mod replication_server;
pub mod service;
mod session;
pub mod term_history;
#[doc(hidden)]
pub mod testing;
pub mod timeline;
pub mod timelines;
pub mod wal_storage;
