//! Time travel through the `strata` CLI with the real binaries: rows deleted and updated on a
//! branch are seen as they were with `strata query --at` a time, an LSN and a restore point,
//! and as they are now; the ephemeral computes (the proxy's, shared by the queries at one
//! moment) leave nothing behind once idle; and the mistakes a user
//! makes (`--at` before the first commit, beyond the end, a malformed LSN or time, an unknown
//! branch or restore point, a second writer) are refused with a message naming the problem.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use strata_tests::cluster::{on_new_cluster, psql, wait_for, StrataCli};

const ROWS: u32 = 200;

/// The table as first written: `id|qty|note`, ordered by id.
fn written(id: u32) -> String {
    format!("{id}|{id}|n{id}")
}

fn state(deleted: bool, updated: bool) -> String {
    (1..=ROWS)
        .filter(|id| !(deleted && id % 4 == 0))
        .map(|id| {
            if updated && id % 4 == 1 {
                format!("{id}|{}|updated", id * 10)
            } else {
                written(id)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const SELECT_ALL: &str = "SELECT id, qty, note FROM items ORDER BY id";

#[test]
fn time_travel_before_a_delete_shows_the_deleted_rows() -> Result<()> {
    on_new_cluster("strata-timetravel-", scenario)
}

/// A failed `strata` run: its exit status was not success; stdout and stderr.
struct Failure {
    stdout: String,
    stderr: String,
}

/// Runs `strata args…` expecting it to fail without a panic and with a message containing
/// every one of `needles`.
fn refused(s: &StrataCli, args: &[&str], needles: &[&str]) -> Result<Failure> {
    let out = Command::new(&s.bin)
        .arg("--dir")
        .arg(&s.dir)
        .args(args)
        .output()?;
    let f = Failure {
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    };
    ensure!(
        !out.status.success(),
        "strata {} succeeded but should have failed:\n{}{}",
        args.join(" "),
        f.stdout,
        f.stderr
    );
    ensure!(
        !f.stderr.contains("panicked") && !f.stdout.contains("panicked"),
        "strata {} panicked:\n{}",
        args.join(" "),
        f.stderr
    );
    let error_line = f
        .stderr
        .lines()
        .find(|l| l.starts_with("strata: error:"))
        .with_context(|| {
            format!(
                "strata {}: no `strata: error:` line:\n{}",
                args.join(" "),
                f.stderr
            )
        })?;
    for n in needles {
        ensure!(
            error_line.contains(n),
            "strata {}: the error does not mention {n:?}: {error_line}",
            args.join(" ")
        );
    }
    Ok(f)
}

/// `strata query --at AT SQL` (values only, as psql -At prints them).
fn query(s: &StrataCli, at: &str, sql: &str) -> Result<String> {
    s.run(&["query", "-t", "--at", at, sql])
}

/// How long the proxy keeps an unused time travel compute here.
const EPHEMERAL_IDLE_SECS: u64 = 2;

/// The proxy's time travel computes (what `strata query` runs on) stopped after their idle
/// time: only `main` is left in `strata status`.
fn wait_for_only_main(s: &StrataCli) -> Result<()> {
    wait_for(
        "the proxy to stop its idle time travel computes",
        Duration::from_secs(EPHEMERAL_IDLE_SECS + 60),
        || {
            let st = s.json(&["status"])?;
            let n = st["computes"].as_array().map_or(0, Vec::len);
            Ok((n == 1).then_some(()))
        },
    )
}

/// Postmasters whose data directory is below `dir` (from /proc/*/cmdline).
fn postmasters_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("/postgres"))
            && args.iter().any(|a| a.starts_with(&needle))
        {
            found.push(args.join(" "));
        }
    }
    found
}

/// After time travel only the `main` compute remains: in `strata status`, on disk and as
/// processes; removed data directories kept as spares hold no running server.
fn only_main_compute_left(s: &StrataCli) -> Result<()> {
    wait_for_only_main(s)?;
    let st = s.json(&["status"])?;
    let names: Vec<&str> = st["computes"]
        .as_array()
        .context("status computes")?
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    ensure!(names == ["main"], "computes after time travel: {names:?}");
    let computes = s.dir.join("computes");
    let mut dirs: Vec<String> = std::fs::read_dir(&computes)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    dirs.sort();
    ensure!(
        // `.spare` (a prepared data directory) and `.ports` (compute port claims) are the
        // cluster's own bookkeeping, not computes.
        dirs.iter()
            .all(|d| d == "main" || d == ".spare" || d == ".ports"),
        "compute directories left: {dirs:?}"
    );
    if let Ok(spares) = std::fs::read_dir(computes.join(".spare")) {
        let spares: Vec<_> = spares.flatten().collect();
        ensure!(spares.len() <= 2, "{} spare data directories", spares.len());
        for sp in spares {
            ensure!(
                !sp.path().join("postmaster.pid").exists(),
                "a spare data directory {} has a postmaster.pid",
                sp.path().display()
            );
        }
    }
    let pms = postmasters_under(&s.dir);
    ensure!(
        pms.len() == 1 && pms[0].contains("computes/main/data"),
        "postgres servers of this cluster: {pms:#?}"
    );
    Ok(())
}

/// "0/1769E60" and "0/01769E60" are the same LSN.
fn lsn(s: &str) -> Result<u64> {
    let (hi, lo) = s.trim().split_once('/').context("an LSN has a /")?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

fn scenario(s: &StrataCli) -> Result<()> {
    let config = s.dir.join("strata.toml");
    let text = std::fs::read_to_string(&config)?.replace(
        "ephemeral_idle_secs = 30",
        &format!("ephemeral_idle_secs = {EPHEMERAL_IDLE_SECS}"),
    );
    std::fs::write(&config, text)?;
    s.run(&["start"])?;
    s.run(&["tenant", "create", "shop"])?;
    let c = s.json(&["compute", "start", "main"])?;
    let port = c["port"].as_u64().context("port")? as u16;

    psql(
        port,
        &format!(
            "CREATE TABLE items(id int PRIMARY KEY, qty int NOT NULL, note text NOT NULL);
             INSERT INTO items SELECT g, g, 'n' || g FROM generate_series(1, {ROWS}) g"
        ),
    )?;
    let original = state(false, false);
    ensure!(psql(port, SELECT_ALL)? == original, "the table as written");
    // Everything committed so far ends at or before this LSN; `now()` of a later transaction
    // is after the INSERT's commit time and before the DELETE's (one clock, later starts).
    let lsn1 = psql(port, "SELECT pg_current_wal_insert_lsn()")?;
    let t1 = psql(port, "SELECT now()")?;
    psql(port, "SELECT pg_create_restore_point('before-delete')")?;
    std::thread::sleep(Duration::from_millis(20));

    psql(port, "DELETE FROM items WHERE id % 4 = 0")?;
    let t2 = psql(port, "SELECT now()")?;
    std::thread::sleep(Duration::from_millis(20));
    psql(
        port,
        "UPDATE items SET qty = qty * 10, note = 'updated' WHERE id % 4 = 1",
    )?;
    let current = state(true, true);
    ensure!(psql(port, SELECT_ALL)? == current, "the table now");
    let t3 = psql(port, "SELECT now()")?;

    // Before the DELETE, by time, LSN and restore point: every row, with its old values.
    for at in [t1.as_str(), lsn1.as_str(), "before-delete"] {
        let got = query(s, at, SELECT_ALL)?;
        ensure!(
            got == original,
            "query --at {at:?} should show the table before the DELETE; got:\n{got}"
        );
    }
    // Between the DELETE and the UPDATE.
    let got = query(s, &t2, SELECT_ALL)?;
    ensure!(
        got == state(true, false),
        "query --at {t2:?} (after the DELETE, before the UPDATE):\n{got}"
    );
    // Now: the current state.
    let got = query(s, &t3, SELECT_ALL)?;
    ensure!(got == current, "query --at {t3:?} (now):\n{got}");
    // The deleted rows, by themselves, several statements in one query.
    let got = query(
        s,
        &t1,
        "SELECT count(*) FROM items WHERE id % 4 = 0; SELECT sum(qty) FROM items",
    )?;
    let sum: u32 = (1..=ROWS).sum();
    ensure!(got == format!("{}\n{sum}", ROWS / 4), "deleted rows: {got}");

    // --json: one value, the rows and the LSN the time resolved to (lsn-at agrees).
    let j = s.json(&["query", "--at", &t1, SELECT_ALL])?;
    ensure!(j["output"].as_str() == Some(original.as_str()), "json: {j}");
    let resolved = j["lsn"].as_str().context("json lsn")?;
    let lsn_at = s.json(&["lsn-at", &t1])?;
    ensure!(
        lsn(lsn_at["lsn"].as_str().context("lsn-at lsn")?)? == lsn(resolved)?,
        "lsn-at {t1} = {lsn_at}, but the query ran at {resolved}"
    );
    ensure!(
        lsn(resolved)? <= lsn(&lsn1)?,
        "time {t1} resolved to {resolved}, after {lsn1}"
    );
    let rp = s.json(&["restore-points"])?;
    ensure!(
        rp.as_array().is_some_and(|a| a.len() == 1
            && a[0]["name"] == "before-delete"
            && lsn(a[0]["lsn"].as_str().unwrap_or("")).is_ok()),
        "restore-points: {rp}"
    );

    // --ttl keeps a compute of the query's own; the next command after it expired removes it.
    wait_for_only_main(s)?;
    let j = s.json(&[
        "query",
        "--at",
        &t2,
        "--ttl",
        "1",
        "SELECT count(*) FROM items",
    ])?;
    ensure!(
        j["output"].as_str() == Some(&(ROWS - ROWS / 4).to_string()),
        "{j}"
    );
    let kept = s.json(&["status"])?["computes"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    // The status command itself may already have reaped it if a second passed.
    ensure!(kept <= 2, "{kept} computes after a --ttl query");
    std::thread::sleep(Duration::from_millis(2100));
    only_main_compute_left(s)?;

    errors(s, &t1)?;
    // A failed time-travel query leaves nothing behind either.
    only_main_compute_left(s)?;
    // And the branch is untouched by all of it.
    ensure!(
        psql(port, SELECT_ALL)? == current,
        "the table after time travel"
    );
    Ok(())
}

/// The mistakes a user meets, each refused with a message naming the problem.
fn errors(s: &StrataCli, t1: &str) -> Result<()> {
    let sql = "SELECT count(*) FROM items";
    // Before the first commit of the branch.
    refused(
        s,
        &["query", "--at", "2000-01-01 00:00:00+00", sql],
        &["2000-01-01", "first commit"],
    )?;
    refused(
        s,
        &["lsn-at", "2000-01-01 00:00:00+00"],
        &["2000-01-01", "first commit"],
    )?;
    // Beyond the end of the branch.
    refused(s, &["query", "--at", "FF/0", sql], &["FF/0", "beyond"])?;
    // A time in the future is not an error: the state after every commit at or before it
    // is the latest one (the query's LSN says where that was).
    let j = s.json(&["query", "--at", "2999-01-01 00:00:00+00", SELECT_ALL])?;
    ensure!(
        j["output"].as_str() == Some(state(true, true).as_str()),
        "--at a future time should show the latest state: {j}"
    );
    // Names that do not exist.
    refused(
        s,
        &["query", "--branch", "nope", "--at", t1, sql],
        &["no branch named \"nope\"", "main"],
    )?;
    refused(
        s,
        &["query", "--at", "no-such-point", sql],
        &["no restore point named \"no-such-point\"", "before-delete"],
    )?;
    refused(
        s,
        &["query", "--tenant", "nobody", "--at", t1, sql],
        &["no tenant named \"nobody\"", "shop"],
    )?;
    // Malformed LSNs and times.
    refused(
        s,
        &["query", "--at", "0/XYZ", sql],
        &["0/XYZ", "not a valid LSN"],
    )?;
    refused(
        s,
        &["query", "--at", "1/123456789", sql],
        &["1/123456789", "not a valid LSN"],
    )?;
    refused(
        s,
        &["query", "--at", "2026-13-45 10:00:00", sql],
        &["2026-13-45", "not a time"],
    )?;
    refused(
        s,
        &["query", "--at", "2026-11-21 25:61:00+00", sql],
        &["not a time"],
    )?;
    refused(s, &["lsn-at", "yesterday"], &["yesterday", "not a time"])?;
    // SQL that fails: the error from Postgres is shown.
    let f = refused(
        s,
        &["query", "--at", t1, "SELECT * FROM no_such_table"],
        &[],
    )?;
    ensure!(
        f.stderr.contains("no_such_table"),
        "the SQL error is not shown: {}",
        f.stderr
    );
    // One writer per branch.
    refused(
        s,
        &["compute", "start", "main"],
        &["already has a read-write compute", "main"],
    )?;
    Ok(())
}
