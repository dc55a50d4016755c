//! The bank the group tests share: each member a tenant with a compute, a `ledger` of
//! amounts (the money it holds is their sum) and the settlement's evidence table.

use anyhow::{Context, Result};
use strata_tests::cluster::{psql, StrataCli};

/// The money each member starts with.
pub const INITIAL: i64 = 1000;

/// Tenant `member` with a compute of the same name on `main`, holding [`INITIAL`]: its port.
pub fn start_member(s: &StrataCli, member: &str) -> Result<u16> {
    s.run(&["tenant", "create", member])?;
    let c = s.json(&[
        "compute", "start", "main", "--tenant", member, "--name", member,
    ])?;
    let port = c["port"].as_u64().context("port")? as u16;
    psql(
        port,
        &format!(
            "CREATE TABLE ledger(gid text NOT NULL, amount bigint NOT NULL); \
             CREATE TABLE strata_2pc_gids(gid text PRIMARY KEY); \
             INSERT INTO ledger VALUES ('initial', {INITIAL})"
        ),
    )?;
    Ok(port)
}

/// One participant's part of transfer `gid`: its ledger row and its gid (the settlement's
/// evidence of commit), prepared.
pub fn prepare(port: u16, gid: &str, amount: i64) -> Result<()> {
    psql(
        port,
        &format!(
            "BEGIN; INSERT INTO ledger VALUES ('{gid}', {amount}); \
             INSERT INTO strata_2pc_gids VALUES ('{gid}'); PREPARE TRANSACTION '{gid}'"
        ),
    )?;
    Ok(())
}
