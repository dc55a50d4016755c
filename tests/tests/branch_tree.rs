//! A branch of a branch through the `strata` CLI with the real binaries: main → b1 at a point
//! of main → b2 at a later point of b1 (after writes on b1 through its own read-write
//! compute). Each branch's compute sees exactly its own rows plus what it inherited at its
//! branch point; `branch list` shows the tree; a cluster restart changes nothing.

use anyhow::{ensure, Context, Result};
use strata_tests::cluster::{on_new_cluster, psql, StrataCli};

const SELECT_ALL: &str = "SELECT branch || ':' || n FROM log ORDER BY branch, n";

/// The rows `branch:n` for n in `range`, in the order SELECT_ALL gives them.
fn rows(branch: &str, range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| format!("{branch}:{n}")).collect()
}

fn expect(parts: &[Vec<String>]) -> String {
    let mut all: Vec<String> = parts.concat();
    // ORDER BY branch, n: branch names sort as text, n as numbers.
    all.sort_by_key(|r| {
        let (b, n) = r.split_once(':').unwrap();
        (b.to_string(), n.parse::<u32>().unwrap())
    });
    all.join("\n")
}

fn insert(port: u16, branch: &str, range: std::ops::RangeInclusive<u32>) -> Result<()> {
    psql(
        port,
        &format!(
            "INSERT INTO log SELECT '{branch}', g FROM generate_series({}, {}) g",
            range.start(),
            range.end()
        ),
    )?;
    Ok(())
}

fn lsn(s: &str) -> Result<u64> {
    let (hi, lo) = s.trim().split_once('/').context("an LSN has a /")?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

fn port_of(v: &serde_json::Value) -> Result<u16> {
    Ok(v["port"].as_u64().context("port")? as u16)
}

#[test]
fn a_branch_of_a_branch_sees_exactly_its_own_history() -> Result<()> {
    on_new_cluster("strata-branchtree-", scenario)
}

fn scenario(s: &StrataCli) -> Result<()> {
    s.run(&["start"])?;
    s.run(&["tenant", "create", "tree"])?;
    let main = port_of(&s.json(&["compute", "start", "main"])?)?;
    psql(
        main,
        "CREATE TABLE log(branch text NOT NULL, n int NOT NULL)",
    )?;
    insert(main, "main", 1..=10)?;
    let at_a = psql(main, "SELECT pg_current_wal_insert_lsn()")?;
    insert(main, "main", 11..=20)?;

    // b1 at A: main's first ten rows, not the next ten.
    let b1 = s.json(&["branch", "create", "b1", "--from", "main", "--at", &at_a])?;
    ensure!(
        b1["parent"] == "main" && lsn(b1["lsn"].as_str().unwrap_or(""))? == lsn(&at_a)?,
        "branch create b1: {b1}"
    );
    let b1_port = port_of(&s.json(&["compute", "start", "b1"])?)?;
    ensure!(
        psql(b1_port, SELECT_ALL)? == expect(&[rows("main", 1..=10)]),
        "b1 at its start"
    );
    insert(b1_port, "b1", 1..=10)?;
    let at_b = psql(b1_port, "SELECT pg_current_wal_insert_lsn()")?;
    insert(b1_port, "b1", 11..=15)?;

    // b2 from b1 at B: main's first ten and b1's first ten.
    let b2 = s.json(&["branch", "create", "b2", "--from", "b1", "--at", &at_b])?;
    ensure!(
        b2["parent"] == "b1" && lsn(b2["lsn"].as_str().unwrap_or(""))? == lsn(&at_b)?,
        "branch create b2: {b2}"
    );
    let b2_port = port_of(&s.json(&["compute", "start", "b2"])?)?;
    insert(b2_port, "b2", 1..=5)?;
    // Main goes on after both branches exist.
    insert(main, "main", 21..=25)?;
    // And b1 after b2 exists.
    insert(b1_port, "b1", 16..=18)?;

    let want_main = expect(&[rows("main", 1..=25)]);
    let want_b1 = expect(&[rows("main", 1..=10), rows("b1", 1..=18)]);
    let want_b2 = expect(&[rows("main", 1..=10), rows("b1", 1..=10), rows("b2", 1..=5)]);
    for (name, port, want) in [
        ("main", main, &want_main),
        ("b1", b1_port, &want_b1),
        ("b2", b2_port, &want_b2),
    ] {
        let got = psql(port, SELECT_ALL)?;
        ensure!(&got == want, "{name} shows:\n{got}\nexpected:\n{want}");
    }

    // The tree, as text: main at the root, b1 under it at A, b2 under b1 at B.
    let text = s.run(&["branch", "list"])?;
    let line = |name: &str| -> Result<(usize, String)> {
        text.lines()
            .enumerate()
            .find(|(_, l)| l.contains(&format!("└─ {name} ")))
            .map(|(i, l)| (i, l.to_string()))
            .with_context(|| format!("branch list has no line for {name}:\n{text}"))
    };
    let (im, lm) = line("main")?;
    let (i1, l1) = line("b1")?;
    let (i2, l2) = line("b2")?;
    let indent = |l: &str| l.find('└').unwrap_or(0);
    ensure!(
        im < i1 && i1 < i2 && indent(&lm) < indent(&l1) && indent(&l1) < indent(&l2),
        "branch list is not the tree main > b1 > b2:\n{text}"
    );
    let at_of = |l: &str| -> Result<u64> {
        let w = l
            .split(" at ")
            .nth(1)
            .and_then(|r| r.split([',', ' ']).next())
            .with_context(|| format!("no `at LSN` in {l:?}"))?;
        lsn(w)
    };
    ensure!(
        at_of(&l1)? == lsn(&at_a)? && at_of(&l2)? == lsn(&at_b)?,
        "branch points in the list:\n{text}\n(expected b1 at {at_a}, b2 at {at_b})"
    );

    // As JSON: the parent fields name the parent's timeline.
    let list = s.json(&["branch", "list"])?;
    let items = list.as_array().context("branch list --json is an array")?;
    ensure!(items.len() == 3, "branch list --json: {list}");
    let find = |name: &str| {
        items
            .iter()
            .find(|i| i["branch"] == name)
            .with_context(|| format!("no {name} in {list}"))
    };
    let (jm, j1, j2) = (find("main")?, find("b1")?, find("b2")?);
    ensure!(
        jm["parent_timeline_id"] == ""
            && j1["parent_timeline_id"] == jm["timeline_id"]
            && j2["parent_timeline_id"] == j1["timeline_id"]
            && j1["timeline_id"] == b1["timeline_id"]
            && j2["timeline_id"] == b2["timeline_id"],
        "parents in branch list --json: {list}"
    );
    ensure!(
        lsn(j1["branch_lsn"].as_str().unwrap_or(""))? == lsn(&at_a)?
            && lsn(j2["branch_lsn"].as_str().unwrap_or(""))? == lsn(&at_b)?,
        "branch LSNs in branch list --json: {list}"
    );

    // Branch mistakes: each refused naming the problem, nothing created.
    for (args, needle) in [
        (
            vec!["branch", "create", "x", "--from", "nope"],
            "no branch named \"nope\"",
        ),
        (
            vec!["branch", "create", "b1", "--from", "b2"],
            "already has a branch named \"b1\"",
        ),
        (
            vec!["branch", "create", "x", "--from", "b2", "--at", "FF/0"],
            "beyond",
        ),
        // Before b2's branch point: that history is b1's (and main's).
        (
            vec!["branch", "create", "x", "--from", "b2", "--at", &at_a],
            "below",
        ),
        (
            vec!["branch", "create", "x", "--from", "b1", "--at", "0/XYZ"],
            "not a valid LSN",
        ),
        (
            vec!["branch", "create", "x", "--at", "no-such-point"],
            "no-such-point",
        ),
    ] {
        let out = std::process::Command::new(&s.bin)
            .arg("--dir")
            .arg(&s.dir)
            .args(&args)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains(needle) && !err.contains("panicked"),
            "strata {}: {} {err}",
            args.join(" "),
            out.status
        );
    }

    let after = s.json(&["branch", "list"])?;
    ensure!(
        after.as_array().map(|a| a.len()) == Some(3),
        "a refused branch create left a branch: {after}"
    );

    // A time-travel read of b2 at its own branch point: b1's first ten, nothing of b2's.
    let got = s.run(&["query", "-t", "--branch", "b2", "--at", &at_b, SELECT_ALL])?;
    let want = expect(&[rows("main", 1..=10), rows("b1", 1..=10)]);
    ensure!(got == want, "b2 at its branch point:\n{got}");

    // Restart: every branch reads the same (b2 and b1 read-write again, main read-only).
    s.run(&["stop"])?;
    s.run(&["start"])?;
    // `strata stop` stops the computes but keeps their records; `strata start` does not
    // start them again: status says so, and the next `compute start` forgets them (a stale
    // record must not keep a branch's writer slot).
    let st = s.json(&["status"])?;
    let computes = st["computes"].as_array().context("status computes")?;
    ensure!(
        computes.len() == 3 && computes.iter().all(|c| c["running"] == false),
        "computes after a restart: {st}"
    );
    let b2_port = port_of(&s.json(&["compute", "start", "b2"])?)?;
    let got = psql(b2_port, SELECT_ALL)?;
    ensure!(got == want_b2, "b2 after a restart:\n{got}");
    insert(b2_port, "b2", 6..=6)?;
    let b1_port = port_of(&s.json(&["compute", "start", "b1"])?)?;
    ensure!(
        psql(b1_port, SELECT_ALL)? == want_b1,
        "b1 after a restart (and a write on b2)"
    );
    let main = port_of(&s.json(&["compute", "start", "main", "--read-only"])?)?;
    ensure!(psql(main, SELECT_ALL)? == want_main, "main after a restart");
    let got = psql(b2_port, SELECT_ALL)?;
    let want = expect(&[rows("main", 1..=10), rows("b1", 1..=10), rows("b2", 1..=6)]);
    ensure!(got == want, "b2 after its write:\n{got}");
    branches_created_at_once_are_all_kept(s)
}

/// Four `strata branch create` processes at once: each rewrites names.toml whole, so without
/// the names lock (`cluster::lock`) some of them would be lost.
fn branches_created_at_once_are_all_kept(s: &StrataCli) -> Result<()> {
    let names: Vec<String> = (1..=4).map(|i| format!("at_once_{i}")).collect();
    std::thread::scope(|sc| -> Result<()> {
        let made: Vec<_> = names
            .iter()
            .map(|n| sc.spawn(move || s.run(&["branch", "create", n, "--from", "main"])))
            .collect();
        for h in made {
            h.join().expect("a branch create thread panicked")?;
        }
        Ok(())
    })?;
    let list = s.json(&["branch", "list"])?;
    let items = list.as_array().context("branch list --json is an array")?;
    for n in &names {
        ensure!(
            items.iter().any(|i| i["branch"] == n.as_str()),
            "branch {n} was created but is not listed: {list}"
        );
    }
    Ok(())
}
