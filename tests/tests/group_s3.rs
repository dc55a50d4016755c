//! A group's cuts in an S3 object store: a cluster whose `remote_storage` is a bucket of a
//! real S3 server (s3s-fs) stores its group and cuts there as objects; with the cluster
//! directory's copy (`<dir>/groups`) gone, the cut is listed and restored from the bucket,
//! and the restore settles a transfer that was committed on one member and only prepared on
//! the other at the cut.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use strata_tests::cluster::{on_new_cluster_init, psql, scratch_dir, StrataCli};
use strata_tests::procs::S3Server;

mod group_bank;
use group_bank::{prepare, start_member};

const BUCKET: &str = "strata";
/// The object store's prefix in the bucket.
const PREFIX: &str = "cluster1";
const MEMBERS: [&str; 2] = ["shard-a", "shard-b"];
const GID: &str = "move-1";

#[test]
fn group_cuts_in_s3_restore_without_the_cluster_directory_copy() -> Result<()> {
    let s3_dir = scratch_dir("strata-group-s3-store-")?;
    let s3_root = s3_dir.path().join("s3");
    let server = S3Server::start(&s3_root, BUCKET)?;
    // `strata` and the services it starts find the S3 server through the environment. This
    // file holds one test, and no other thread runs yet.
    for (k, v) in server.env() {
        std::env::set_var(k, v);
    }
    let url = format!("s3://{BUCKET}/{PREFIX}");
    let result = on_new_cluster_init("strata-group-s3-", &["--remote-storage", &url], |s| {
        scenario(s, &s3_root)
    });
    drop(server);
    result
}

fn scenario(s: &StrataCli, s3_root: &Path) -> Result<()> {
    s.run(&["start"])?;
    let ports = MEMBERS
        .iter()
        .map(|m| start_member(s, m))
        .collect::<Result<Vec<u16>>>()?;
    s.json(&[
        "group",
        "create",
        "shards",
        "--tenants",
        &MEMBERS.join(","),
        "--every",
        "0",
    ])?;
    // A transfer by 2PC, cut between its two COMMIT PREPAREDs.
    prepare(ports[0], GID, -250)?;
    prepare(ports[1], GID, 250)?;
    psql(ports[0], &format!("COMMIT PREPARED '{GID}'"))?;
    let cut = s.json(&["group", "restore-point", "create", "shards", "half"])?;
    psql(ports[1], &format!("COMMIT PREPARED '{GID}'"))?;

    // The group and the cut are objects in the bucket (s3s-fs keeps an object as a file).
    let groups = s3_root.join(BUCKET).join(PREFIX).join("groups/shards");
    ensure!(
        groups.join("group.json").is_file(),
        "no group object in the bucket under {}",
        groups.display()
    );
    let cut_key = format!(
        "{:020}-half",
        cut["time_us"].as_i64().context("the cut's time")?
    );
    ensure!(
        groups.join("cuts").join(&cut_key).is_file(),
        "no object {cut_key} under {}",
        groups.join("cuts").display()
    );

    std::fs::remove_dir_all(s.dir.join("groups"))?;
    let listed = s.json(&["group", "restore-point", "list", "shards"])?;
    ensure!(
        listed
            .as_array()
            .is_some_and(|c| c.len() == 1 && c[0]["name"] == "half" && c[0]["lsns"] == cut["lsns"]),
        "the cuts listed from the bucket: {listed} (taken: {cut})"
    );
    let t0 = std::time::Instant::now();
    let r = s.json(&[
        "group", "branch", "shards", "--at", "half", "--as", "restored",
    ])?;
    eprintln!(
        "group branch from the bucket took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let settled = r["settled"].as_array().context("settled")?;
    ensure!(
        settled.len() == 1
            && settled[0]["gid"] == GID
            && settled[0]["tenant"] == MEMBERS[1]
            && settled[0]["action"] == "COMMIT PREPARED",
        "the restore settled: {r}"
    );
    let mut amounts = Vec::new();
    for m in r["members"].as_array().context("members")? {
        let port = m["port"].as_u64().context("port")? as u16;
        ensure!(
            psql(port, "SELECT count(*) FROM pg_prepared_xacts")? == "0",
            "a prepared transaction is left on {m}"
        );
        amounts.push(psql(
            port,
            &format!(
                "SELECT sum(amount) FILTER (WHERE gid = '{GID}') || ' ' || sum(amount) FROM ledger"
            ),
        )?);
    }
    ensure!(
        amounts == ["-250 750", "250 1250"],
        "the members after the restore (transfer, balance): {amounts:?}"
    );
    Ok(())
}
