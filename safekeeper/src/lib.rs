//! The safekeeper: a Paxos acceptor that keeps WAL durable on disk and serves it.
