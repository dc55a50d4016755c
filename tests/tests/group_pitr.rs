//! Distributed point-in-time recovery of a group of tenants with the real binaries, real
//! computes and real two-phase commit: a bank whose money moves between three members with
//! PREPARE TRANSACTION / COMMIT PREPARED (and some aborted, some left prepared, some plain
//! local transactions) while the automatic cutter cuts every second and the safekeepers are
//! killed one after another. Each of 20 group restores at a cut (two at a time, each
//! restoring its members in parallel) conserves the money over the members after
//! settlement, leaves no prepared transaction, and holds every transfer acknowledged before
//! the cut's time. A naive restore of every member at one wall-clock time, a time when a
//! transfer was committed on one member and not yet on the other, destroys money: the cuts
//! are needed. A walproposer's fence blocks commits
//! until lifted and lifts itself at its deadline; a member that does not answer makes a cut
//! fail with every other member unfenced. The fence routes refuse callers without an admin
//! token. The cuts live in the object store: the cluster directory's `groups/` is removed
//! before they are restored. A member whose compute is stopped is cut and restored, and so is
//! a tenant imported from a running Postgres (its walproposer's fence holds the source's
//! commits; the settlement commits a transfer's half on it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::cluster::{on_new_cluster, psql, read_pid, StrataCli};
use strata_tests::pg::pg_bin_dir;
use strata_tests::{InitOptions, PgCluster};

mod group_bank;
use group_bank::{prepare, start_member};

const MEMBERS: [&str; 3] = ["bank-a", "bank-b", "bank-c"];
/// How long the clients move money while cuts are taken (one a second).
const WORKLOAD: Duration = Duration::from_secs(24);
/// Transfers committed before the clients stop.
const MIN_TRANSFERS: usize = 12;
/// Cuts restored (each: a branch and a compute per member, then settlement).
const RESTORES: usize = 20;
/// Group restores run at once (each starts a compute per member).
const RESTORES_AT_ONCE: usize = 4;

#[test]
fn group_cuts_restore_a_2pc_bank_consistently() -> Result<()> {
    on_new_cluster("strata-group-", scenario)
}

fn port_of(v: &serde_json::Value) -> Result<u16> {
    Ok(v["port"].as_u64().context("port")? as u16)
}

fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A transfer the clients saw acknowledged: its gid and when both commits had returned.
#[derive(Clone, Debug)]
struct Acked {
    gid: String,
    at_us: i64,
    /// A slow coordinator's pause: from when the first COMMIT PREPARED had returned to
    /// before the second was sent (committed on one member only, all along).
    half_committed_us: Option<(i64, i64)>,
}

fn scenario(s: &StrataCli) -> Result<()> {
    s.run(&["start"])?;
    let ports = MEMBERS
        .iter()
        .map(|m| start_member(s, m))
        .collect::<Result<Vec<u16>>>()?;
    let g = s.json(&[
        "group",
        "create",
        "bank",
        "--tenants",
        &MEMBERS.join(","),
        "--every",
        "1s",
    ])?;
    ensure!(g["every_ms"] == 1000, "group create: {g}");
    let listed = s.json(&["group", "list"])?;
    ensure!(
        listed[0]["group"] == "bank" && listed[0]["cutter"] == "running",
        "group list: {listed}"
    );

    // The clients, while the cutter cuts; one safekeeper is killed halfway.
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let workload_start = unix_micros();
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (acked, stop, ports) = (acked.clone(), stop.clone(), ports.clone());
            std::thread::spawn(move || transfers(c, &ports, &acked, &stop))
        })
        .collect();
    // Each safekeeper in turn is killed (the supervisor starts it again; one at a time keeps
    // the quorum).
    let t0 = Instant::now();
    for id in 1..=3 {
        std::thread::sleep(WORKLOAD / 4);
        kill_safekeeper(s, id)?;
    }
    // At least WORKLOAD, and until MIN_TRANSFERS committed and RESTORES cuts taken (on a
    // loaded machine a cut can take longer than its period, and the cutter skips a beat).
    while t0.elapsed() < WORKLOAD
        || ((acked.lock().expect("acked").len() < MIN_TRANSFERS
            || cuts_since(s, workload_start)? < RESTORES)
            && t0.elapsed() < Duration::from_secs(120))
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let workload_end = unix_micros();
    let mut transfers_done = 0;
    for c in clients {
        transfers_done += c.join().expect("client thread")?;
    }
    let acked = acked.lock().expect("acked").clone();
    ensure!(
        transfers_done >= MIN_TRANSFERS,
        "only {transfers_done} transfers committed in {:?}",
        t0.elapsed()
    );

    committed_on_one_member_is_committed_on_all(s, &ports)?;
    fence_blocks_commits_until_lifted(s, ports[0])?;
    member_down_fails_the_cut_cleanly(s, &ports)?;

    // The cluster directory's copy of the groups is only a cache: the group and its cuts are
    // in the object store (`<dir>/remote` here), and come back from there.
    let stored = std::fs::read_dir(s.dir.join("remote/groups/bank/cuts"))?.count();
    ensure!(stored >= 20, "{stored} objects of cuts in the object store");
    std::fs::remove_dir_all(s.dir.join("groups"))?;
    // Restore at cuts spread over the workload.
    let cuts = s.json(&["group", "restore-point", "list", "bank"])?;
    // Those taken while the clients ran.
    let cuts: Vec<serde_json::Value> = cuts
        .as_array()
        .context("cuts")?
        .iter()
        .filter(|c| {
            c["time_us"]
                .as_i64()
                .is_some_and(|t| (workload_start..workload_end).contains(&t))
        })
        .cloned()
        .collect();
    ensure!(
        cuts.len() >= RESTORES,
        "{} cuts taken in {WORKLOAD:?}, {RESTORES} wanted",
        cuts.len()
    );
    let pauses: Vec<f64> = cuts.iter().filter_map(|c| c["pause_ms"].as_f64()).collect();
    eprintln!(
        "{} cuts; pause (fence to unfence) max {:.1} ms",
        cuts.len(),
        pauses.iter().cloned().fold(0.0, f64::max)
    );
    let t_restores = Instant::now();
    let chosen: Vec<&serde_json::Value> = (0..RESTORES)
        .map(|i| &cuts[i * cuts.len() / RESTORES])
        .collect();
    // RESTORES_AT_ONCE workers take the next cut as soon as they are done with one.
    let next = std::sync::atomic::AtomicUsize::new(0);
    thread::scope(|sc| -> Result<()> {
        let workers: Vec<_> = (0..RESTORES_AT_ONCE)
            .map(|_| {
                let (next, chosen, acked) = (&next, &chosen, &acked);
                sc.spawn(move || -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(cut) = chosen.get(i) else {
                            return Ok(());
                        };
                        restore_at_cut(s, cut, &format!("r{i}"), acked)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("restore worker")?;
        }
        Ok(())
    })?;
    eprintln!(
        "{RESTORES} group restores, {RESTORES_AT_ONCE} at a time, took {:.1} s",
        t_restores.elapsed().as_secs_f64()
    );
    naive_restore_breaks_the_sum(s, &chosen, &acked)?;
    member_without_compute_restores(s, &acked)?;
    imported_source_is_a_member(s, ports[0])
}

/// How many cuts of group bank the object store holds from `since_us` on (a cut's key starts
/// with its time in µs, 20 digits).
fn cuts_since(s: &StrataCli, since_us: i64) -> Result<usize> {
    let cuts = s.dir.join("remote/groups/bank/cuts");
    let mut n = 0;
    for e in std::fs::read_dir(&cuts).with_context(|| format!("listing {}", cuts.display()))? {
        let key = e?.file_name().to_string_lossy().into_owned();
        let time_us = key.get(..20).and_then(|t| t.parse::<i64>().ok());
        if !key.ends_with(".crc32c") && time_us.is_some_and(|t| t >= since_us) {
            n += 1;
        }
    }
    Ok(n)
}

/// Kills safekeeper `id` once the one killed before it runs again (so two are always up).
fn kill_safekeeper(s: &StrataCli, id: u32) -> Result<()> {
    if id > 1 {
        let before = s.dir.join(format!("run/safekeeper-{}.pid", id - 1));
        let deadline = Instant::now() + Duration::from_secs(30);
        // SAFETY: kill(2) with signal 0 only asks whether the process exists.
        while !read_pid(&before).is_ok_and(|p| unsafe { libc::kill(p, 0) } == 0) {
            ensure!(
                Instant::now() < deadline,
                "safekeeper {} was not started again within 30 s",
                id - 1
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    let pid = read_pid(&s.dir.join(format!("run/safekeeper-{id}.pid")))?;
    // SAFETY: kill(2) on a pid the cluster recorded.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    Ok(())
}

/// `group branch` at `cut` as `branch`: the sum, no prepared transaction left, every
/// transfer acknowledged before the cut present; then the members' computes are stopped.
fn restore_at_cut(
    s: &StrataCli,
    cut: &serde_json::Value,
    branch: &str,
    acked: &[Acked],
) -> Result<()> {
    let name = cut["name"].as_str().context("cut name")?;
    let time_us = cut["time_us"].as_i64().context("cut time")?;
    let t0 = Instant::now();
    let r = s.json(&["group", "branch", "bank", "--at", name, "--as", branch])?;
    eprintln!(
        "restored at {name} in {:.1} s: settled {}",
        t0.elapsed().as_secs_f64(),
        r["settled"].as_array().map_or(0, |a| a.len())
    );
    let sum = check_restore(&r, time_us, acked)?;
    ensure!(
        sum == 3000,
        "restore at cut {name}: the members hold {sum}, not 3000: {r}"
    );
    stop_computes(s, &r)
}

/// Every member restored on its own to the same wall-clock time (no cut, no settlement),
/// at a time when a transfer was committed on one member and not yet on the other: the
/// first member's commit is before that time and the second's after, so the money it
/// moved is gone. The time is a restored cut's if one fell in such a pause.
fn naive_restore_breaks_the_sum(
    s: &StrataCli,
    restored: &[&serde_json::Value],
    acked: &[Acked],
) -> Result<()> {
    let pauses: Vec<(i64, i64)> = acked.iter().filter_map(|a| a.half_committed_us).collect();
    let inside = |t: i64| pauses.iter().any(|&(from, to)| from < t && t < to);
    let at_us = restored
        .iter()
        .filter_map(|c| c["time_us"].as_i64())
        .find(|&t| inside(t))
        .or_else(|| pauses.first().map(|&(from, to)| from + (to - from) / 2))
        .context("no transfer was committed with a slow coordinator")?;
    let naive = s.json(&[
        "group",
        "branch",
        "bank",
        "--naive",
        "--at",
        &format!("@{}", at_us as f64 / 1e6),
        "--as",
        "naive",
    ])?;
    let sum = member_sum(&naive)?;
    eprintln!(
        "naive restore at @{}: the members hold {sum}",
        at_us as f64 / 1e6
    );
    ensure!(
        sum < 3000,
        "a naive restore inside a transfer's commit hold {sum}, not less than 3000: {naive}"
    );
    stop_computes(s, &naive)
}

/// A member whose compute is stopped is cut where its committed WAL ends, and restores.
fn member_without_compute_restores(s: &StrataCli, acked: &[Acked]) -> Result<()> {
    s.run(&["compute", "stop", MEMBERS[2]])?;
    let c = s.json(&["group", "restore-point", "create", "bank", "c-stopped"])?;
    let r = s.json(&[
        "group",
        "branch",
        "bank",
        "--at",
        "c-stopped",
        "--as",
        "down",
    ])?;
    let cut_us = c["time_us"].as_i64().context("time_us")?;
    let sum = check_restore(&r, cut_us, acked)?;
    ensure!(
        sum == 3000,
        "restore with a member stopped: the members hold {sum}, not 3000: {r}"
    );
    stop_computes(s, &r)
}

/// A tenant imported from a running Postgres is a member like any other: its walproposer's
/// fence holds back the source's commits, and a cut between a transfer's two COMMIT
/// PREPAREDs restores with the source's side committed by the settlement.
fn imported_source_is_a_member(s: &StrataCli, a_port: u16) -> Result<()> {
    let src = PgCluster::init(&InitOptions::default().set("max_prepared_transactions", "10"))?;
    src.start()?;
    src.psql(
        "CREATE TABLE ledger(gid text NOT NULL, amount bigint NOT NULL); \
         CREATE TABLE strata_2pc_gids(gid text PRIMARY KEY)",
    )?;
    s.json(&[
        "tenant",
        "import",
        "--from",
        &src.connstr("postgres"),
        "--name",
        "shop",
        "--configure-sync",
    ])?;
    s.json(&[
        "group",
        "create",
        "mixed",
        "--tenants",
        &format!("{},shop", MEMBERS[0]),
        "--every",
        "0",
    ])?;
    let prepare_src = |gid: &str, amount: i64| {
        src.psql(&format!(
            "BEGIN; INSERT INTO ledger VALUES ('{gid}', {amount}); \
             INSERT INTO strata_2pc_gids VALUES ('{gid}'); PREPARE TRANSACTION '{gid}'"
        ))
    };
    let connstr = src.connstr("postgres");
    fence_holds_commits(s, "import-shop", || {
        let connstr = connstr.clone();
        in_background(move || {
            let out = Command::new(pg_bin_dir().join("psql"))
                .args(["-X", "-q", "-d", &connstr, "-c"])
                .arg("INSERT INTO ledger VALUES ('fence-probe', 0)")
                .output()?;
            ensure!(
                out.status.success(),
                "psql: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        })
    })?;
    let gid = "imported-mid-commit";
    prepare(a_port, gid, -100)?;
    prepare_src(gid, 100)?;
    psql(a_port, &format!("COMMIT PREPARED '{gid}'"))?;
    s.run(&["group", "restore-point", "create", "mixed", "half"])?;
    src.psql(&format!("COMMIT PREPARED '{gid}'"))?;
    let r = s.json(&[
        "group", "branch", "mixed", "--at", "half", "--as", "mixed-r",
    ])?;
    let settled = r["settled"].as_array().context("settled")?;
    ensure!(
        settled
            .iter()
            .any(|x| x["gid"] == gid && x["tenant"] == "shop" && x["action"] == "COMMIT PREPARED"),
        "the restore did not commit {gid} on the imported member: {r}"
    );
    let ports = restored_ports(&r)?;
    let amounts: Vec<String> = ports
        .iter()
        .map(|&p| psql(p, &format!("SELECT amount FROM ledger WHERE gid = '{gid}'")))
        .collect::<Result<_>>()?;
    ensure!(
        amounts == ["-100", "100"],
        "the transfer on the members: {amounts:?}"
    );
    stop_computes(s, &r)
}

/// Transfers numbered up to this may be left prepared (every 6th): three per client, so with
/// two clients a member never holds more than its `max_prepared_transactions` (10).
const LEFT_PREPARED_UNTIL: usize = 18;

/// One client: transfers between two members by 2PC until `stop`; every 5th is rolled back,
/// every 6th of the first [`LEFT_PREPARED_UNTIL`] left prepared, every 3rd has a slow coordinator (300 ms between its two
/// commits); every 4th is followed by a local (non-2PC) transaction. Returns how many
/// transfers it committed.
fn transfers(
    client: usize,
    ports: &[u16],
    acked: &Mutex<Vec<Acked>>,
    stop: &AtomicBool,
) -> Result<usize> {
    let mut done = 0;
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let from = (client + n) % ports.len();
        let to = (from + 1 + n % 2) % ports.len();
        let gid = format!("t{client}-{n}");
        let amount = 1 + (n % 50) as i64;
        prepare(ports[from], &gid, -amount)?;
        prepare(ports[to], &gid, amount)?;
        // Only the first few: each stays prepared for good, and a member allows 10.
        if n.is_multiple_of(6) && n <= LEFT_PREPARED_UNTIL {
            continue;
        }
        let decision = if n.is_multiple_of(5) {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        psql(ports[from], &format!("{decision} PREPARED '{gid}'"))?;
        // Now and then a slow coordinator: cuts land between the two commits.
        let slow = n.is_multiple_of(3);
        let half_from = unix_micros();
        if slow {
            std::thread::sleep(Duration::from_millis(300));
        }
        let half_to = unix_micros();
        psql(ports[to], &format!("{decision} PREPARED '{gid}'"))?;
        if decision == "COMMIT" {
            done += 1;
            acked.lock().expect("acked").push(Acked {
                gid,
                at_us: unix_micros(),
                half_committed_us: slow.then_some((half_from, half_to)),
            });
        }
        if n.is_multiple_of(4) {
            psql(
                ports[from],
                &format!(
                    "INSERT INTO ledger VALUES ('local{client}-{n}', 7), ('local{client}-{n}', -7)"
                ),
            )?;
        }
    }
    Ok(done)
}

/// A cut between a transfer's two COMMIT PREPAREDs: the restore commits the second.
fn committed_on_one_member_is_committed_on_all(s: &StrataCli, ports: &[u16]) -> Result<()> {
    let gid = "mid-commit";
    prepare(ports[0], gid, -500)?;
    prepare(ports[1], gid, 500)?;
    psql(ports[0], &format!("COMMIT PREPARED '{gid}'"))?;
    s.run(&[
        "group",
        "restore-point",
        "create",
        "bank",
        "between-commits",
    ])?;
    psql(ports[1], &format!("COMMIT PREPARED '{gid}'"))?;
    // Time travel at the cut, unsettled: committed on a, still in doubt (invisible) on b.
    let q = s.json(&[
        "group",
        "query",
        "bank",
        "--at",
        "between-commits",
        &format!("SELECT count(*) FROM ledger WHERE gid = '{gid}'"),
    ])?;
    let counts: Vec<&str> = q["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| m["output"].as_str().unwrap_or("?").trim())
        .collect();
    ensure!(counts == ["1", "0", "0"], "group query at the cut: {q}");
    let r = s.json(&[
        "group",
        "branch",
        "bank",
        "--at",
        "between-commits",
        "--as",
        "mid",
    ])?;
    let settled = r["settled"].as_array().context("settled")?;
    ensure!(
        settled.iter().any(|x| x["gid"] == gid
            && x["tenant"] == MEMBERS[1]
            && x["action"] == "COMMIT PREPARED"),
        "the restore did not commit {gid} on {}: {r}",
        MEMBERS[1]
    );
    let sum = check_restore(&r, 0, &[])?;
    ensure!(sum == 3000, "the members hold {sum}, not 3000: {r}");
    let b = restored_ports(&r)?[1];
    ensure!(
        psql(b, &format!("SELECT amount FROM ledger WHERE gid = '{gid}'"))? == "500",
        "member b lacks the transfer's credit"
    );
    stop_computes(s, &r)
}

fn restored_ports(r: &serde_json::Value) -> Result<Vec<u16>> {
    r["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(port_of)
        .collect()
}

fn member_sum(r: &serde_json::Value) -> Result<i64> {
    let mut sum = 0;
    for port in restored_ports(r)? {
        sum += psql(port, "SELECT coalesce(sum(amount), 0) FROM ledger")?.parse::<i64>()?;
    }
    Ok(sum)
}

/// The restored members: no prepared transaction left, every transfer acknowledged before
/// the cut on both of its members; returns the money they hold.
fn check_restore(r: &serde_json::Value, cut_us: i64, acked: &[Acked]) -> Result<i64> {
    let ports = restored_ports(r)?;
    for &port in &ports {
        let left = psql(port, "SELECT count(*) FROM pg_prepared_xacts")?;
        ensure!(
            left == "0",
            "{left} prepared transactions left after settlement: {r}"
        );
    }
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for &port in &ports {
        for gid in psql(port, "SELECT gid FROM strata_2pc_gids")?.lines() {
            *seen.entry(gid.to_string()).or_default() += 1;
        }
    }
    for a in acked.iter().filter(|a| a.at_us < cut_us) {
        ensure!(
            seen.get(&a.gid) == Some(&2),
            "transfer {} was acknowledged {} µs before the cut but is on {} members",
            a.gid,
            cut_us - a.at_us,
            seen.get(&a.gid).copied().unwrap_or(0)
        );
    }
    member_sum(r)
}

fn stop_computes(s: &StrataCli, r: &serde_json::Value) -> Result<()> {
    for m in r["members"].as_array().context("members")? {
        s.run(&["compute", "stop", m["compute"].as_str().context("compute")?])?;
    }
    Ok(())
}

fn control_addr(s: &StrataCli, compute: &str) -> Result<String> {
    let p = s
        .dir
        .join("computes")
        .join(compute)
        .join("walproposer.addr");
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

/// POSTs to the walproposer's control endpoint with `token` (if any): its whole answer.
fn post_raw(addr: &str, path: &str, token: Option<&str>) -> Result<String> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    c.read_to_string(&mut answer)?;
    Ok(answer)
}

/// POSTs to the walproposer's control endpoint with the admin token; the body of its 200.
fn post(s: &StrataCli, addr: &str, path: &str) -> Result<String> {
    let answer = post_raw(addr, path, Some(&s.admin_token()?))?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "POST {path}: {answer}");
    Ok(answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .trim()
        .to_string())
}

/// The fence routes refuse a caller without a token (401) and one whose token is not admin
/// (403), naming the scope needed, and take no fence for them.
fn fence_needs_an_admin_token(s: &StrataCli, addr: &str) -> Result<()> {
    let none = post_raw(addr, "/fence?ttl_ms=30000", None)?;
    ensure!(
        none.starts_with("HTTP/1.1 401") && none.contains("scope admin"),
        "a fence without a token: {none}"
    );
    let tenant = s.run(&[
        "token",
        "issue",
        "--scope",
        &format!("tenant:{}", MEMBERS[0]),
    ])?;
    let wrong = post_raw(addr, "/fence?ttl_ms=30000", Some(&tenant))?;
    ensure!(
        wrong.starts_with("HTTP/1.1 403") && wrong.contains("needs scope admin"),
        "a fence with a tenant token: {wrong}"
    );
    let unfence = post_raw(addr, "/unfence?token=1", Some(&tenant))?;
    ensure!(unfence.starts_with("HTTP/1.1 403"), "unfence: {unfence}");
    Ok(())
}

/// Runs `commit` in a thread; returns a handle telling when it returned.
fn in_background(
    commit: impl FnOnce() -> Result<()> + Send + 'static,
) -> std::thread::JoinHandle<Result<Instant>> {
    std::thread::spawn(move || {
        commit()?;
        Ok(Instant::now())
    })
}

/// Runs an INSERT on `port` in a thread; returns a handle telling when it committed.
fn commit_in_background(port: u16) -> std::thread::JoinHandle<Result<Instant>> {
    in_background(move || psql(port, "INSERT INTO ledger VALUES ('fence-probe', 0)").map(drop))
}

fn finished_within(h: &std::thread::JoinHandle<Result<Instant>>, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if h.is_finished() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    h.is_finished()
}

/// How long a commit held back by a fence may take to return once the fence is lifted.
const UNFENCED_COMMIT_DEADLINE: Duration = Duration::from_secs(30);

/// A fence of compute `compute` holds back the commits `probe` starts until lifted.
fn fence_holds_commits(
    s: &StrataCli,
    compute: &str,
    probe: impl Fn() -> std::thread::JoinHandle<Result<Instant>>,
) -> Result<()> {
    let addr = control_addr(s, compute)?;
    fence_needs_an_admin_token(s, &addr)?;
    let f: serde_json::Value = serde_json::from_str(&post(s, &addr, "/fence?ttl_ms=30000")?)?;
    let token = f["token"].as_u64().context("token")?;
    let probe = probe();
    ensure!(
        !finished_within(&probe, Duration::from_secs(1)),
        "a commit returned while fenced"
    );
    let lifted = post(s, &addr, &format!("/unfence?token={token}"))?;
    ensure!(lifted == "{\"held\":true}", "unfence: {lifted}");
    // A deadline, not a timing: on a loaded machine the imported source's commit (a psql
    // process, the source's walsender, the walproposer) took over 5 s twice.
    ensure!(
        finished_within(&probe, UNFENCED_COMMIT_DEADLINE),
        "the commit did not return within {UNFENCED_COMMIT_DEADLINE:?} after unfence"
    );
    probe.join().expect("probe")?;
    Ok(())
}

fn fence_blocks_commits_until_lifted(s: &StrataCli, port: u16) -> Result<()> {
    // Lifted by the coordinator.
    fence_holds_commits(s, MEMBERS[0], || commit_in_background(port))?;
    let addr = control_addr(s, MEMBERS[0])?;

    // Never lifted: it lifts itself at its deadline.
    let t0 = Instant::now();
    post(s, &addr, "/fence?ttl_ms=2000")?;
    let probe = commit_in_background(port);
    ensure!(
        !finished_within(&probe, Duration::from_secs(1)),
        "a commit returned while fenced"
    );
    ensure!(
        finished_within(&probe, Duration::from_secs(10)),
        "the commit did not return after the fence's deadline"
    );
    let done = probe.join().expect("probe")?;
    ensure!(
        done - t0 >= Duration::from_millis(1900),
        "returned after {:?}",
        done - t0
    );
    Ok(())
}

fn member_down_fails_the_cut_cleanly(s: &StrataCli, ports: &[u16]) -> Result<()> {
    let wp = read_pid(
        &s.dir
            .join(format!("run/compute-{}-walproposer.pid", MEMBERS[2])),
    )?;
    // A walproposer that does not answer (stopped): its fence request times out.
    // SAFETY: kill(2) on a pid the cluster recorded.
    unsafe { libc::kill(wp, libc::SIGSTOP) };
    let r = Command::new(&s.bin)
        .arg("--dir")
        .arg(&s.dir)
        .args(["group", "restore-point", "create", "bank", "while-down"])
        .output();
    unsafe { libc::kill(wp, libc::SIGCONT) };
    let r = r?;
    let err = String::from_utf8_lossy(&r.stderr);
    ensure!(
        !r.status.success() && err.contains("no cut taken") && err.contains(MEMBERS[2]),
        "a cut with a member down: {err}"
    );
    // The others were unfenced: their commits return at once.
    for &port in &ports[..2] {
        let probe = commit_in_background(port);
        ensure!(
            finished_within(&probe, Duration::from_secs(3)),
            "a member stayed fenced after the failed cut"
        );
        probe.join().expect("probe")?;
    }
    let cuts = s.json(&["group", "restore-point", "list", "bank"])?;
    if cuts
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["name"] == "while-down"))
    {
        bail!("the failed cut was stored");
    }
    Ok(())
}
