//! gRPC messages and services generated from `walproto/proto/*.proto` (see `build.rs`).

/// The proposer ↔ safekeeper protocol and the safekeeper's status service
/// (`proto/safekeeper.proto`).
pub mod safekeeper {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("strata.safekeeper.v1");
}

/// The pageserver's management and read service (`proto/pageserver.proto`).
pub mod pageserver {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("strata.pageserver.v1");
}
