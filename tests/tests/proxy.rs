//! The Postgres-protocol proxy (issue 19) on a real cluster, with real clients: psql and
//! pgbench (libpq) and tokio-postgres (which shows each error's SQLSTATE). One cluster runs
//! every scenario in turn, with short idle times so that stops can be watched.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use strata_tests::cluster::{on_new_cluster, read_pid, scratch_dir, wait_for, StrataCli};
use strata_tests::pg::pg_bin_dir;
use tokio_postgres::{Client, NoTls};

const PASSWORD: &str = "correct horse";
/// A read-write compute the proxy started stops after this long without connections.
const IDLE_STOP_SECS: u64 = 4;
/// A time travel compute stops this long after its last connection.
const EPHEMERAL_IDLE_SECS: u64 = 3;
/// How long any one client call may take (a compute start included).
const CLIENT_LIMIT: Duration = Duration::from_secs(120);

/// The proxy's address and the cluster, as the scenarios use them.
struct Proxy<'a> {
    s: &'a StrataCli,
    port: u16,
    rt: tokio::runtime::Runtime,
}

/// How a connection names its target.
#[derive(Clone, Default)]
struct Target<'a> {
    user: &'a str,
    password: &'a str,
    database: &'a str,
    options: &'a str,
}

impl<'a> Target<'a> {
    fn db(database: &'a str) -> Target<'a> {
        Target {
            user: "alice",
            password: PASSWORD,
            database,
            options: "",
        }
    }
}

impl Proxy<'_> {
    /// One SQL command through psql (libpq); unaligned output, trimmed.
    fn psql(&self, t: &Target, sql: &str) -> Result<String> {
        let mut cmd = Command::new(pg_bin_dir().join("psql"));
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", t.user, "-d", t.database, "-c", sql])
            .env("PGPASSWORD", t.password)
            .env("PGCONNECT_TIMEOUT", "120")
            .env("PGOPTIONS", t.options)
            .stdin(Stdio::null());
        let out = run_within(cmd, CLIENT_LIMIT)?;
        ensure!(
            out.status.success(),
            "psql {sql:?} on {:?}: {}",
            t.database,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A tokio-postgres connection (its connection task runs on the test's runtime), or the
    /// refusal; an error if it hangs.
    fn try_connect(&self, t: &Target) -> Result<Result<Client, tokio_postgres::Error>> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user(t.user)
            .password(t.password)
            .dbname(t.database)
            .connect_timeout(CLIENT_LIMIT);
        if !t.options.is_empty() {
            cfg.options(t.options);
        }
        let connecting = self
            .rt
            .block_on(async { tokio::time::timeout(CLIENT_LIMIT, cfg.connect(NoTls)).await });
        let Ok(connected) = connecting else {
            bail!(
                "connecting to {:?} through the proxy hung for {CLIENT_LIMIT:?}",
                t.database
            );
        };
        Ok(connected.map(|(client, conn)| {
            self.rt.spawn(conn);
            client
        }))
    }

    fn connect(&self, t: &Target) -> Result<Client> {
        Ok(self.try_connect(t)??)
    }

    /// The SQLSTATE of a refused connection (fails if it is accepted).
    fn refused(&self, t: &Target) -> Result<String> {
        let started = Instant::now();
        match self.try_connect(t)? {
            Ok(_) => bail!("{:?} with options {:?} was accepted", t.database, t.options),
            Err(e) => {
                ensure!(
                    started.elapsed() < Duration::from_secs(60),
                    "the refusal took {:?}",
                    started.elapsed()
                );
                e.as_db_error()
                    .map(|d| d.code().code().to_string())
                    .with_context(|| format!("not an ErrorResponse: {e}"))
            }
        }
    }

    fn query_one(&self, c: &Client, sql: &str) -> Result<String> {
        self.rt.block_on(async {
            let rows = c.simple_query(sql).await?;
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .context("no row")
        })
    }

    /// `strata compute list --json`.
    fn computes(&self) -> Result<Vec<Value>> {
        Ok(self
            .s
            .json(&["compute", "list"])?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    fn running(&self) -> Result<Vec<String>> {
        Ok(self
            .computes()?
            .iter()
            .filter(|c| c["running"] == true)
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect())
    }
}

/// Runs `cmd` to its end, killing it after `limit`.
fn run_within(mut cmd: Command, limit: Duration) -> Result<std::process::Output> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    finish_within(child, &format!("{:?}", cmd.get_program()), limit)
}

/// Waits for `child` (`what`) to end, killing it after `limit`.
fn finish_within(
    child: std::process::Child,
    what: &str,
    limit: Duration,
) -> Result<std::process::Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            bail!("{what} hung: no end within {limit:?}")
        }
    }
}

/// psql (libpq) on a connection string `conninfo`: its output, whatever the outcome.
fn psql_conninfo(conninfo: &str, password: &str, sql: &str) -> Result<std::process::Output> {
    run_within(psql_command(conninfo, password, &[sql]), CLIENT_LIMIT)
}

/// psql on `conninfo` running each of `commands` (`-c`), not started yet.
fn psql_command(conninfo: &str, password: &str, commands: &[&str]) -> Command {
    let mut cmd = Command::new(pg_bin_dir().join("psql"));
    cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "120")
        .stdin(Stdio::null());
    cmd
}

/// The lines a child writes to `stream`, as they come (the channel closes at its end).
fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stream)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`: true when seen, false when the stream ended
/// without it; an error after `limit`.
fn line_with(
    lines: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    limit: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Ok(true),
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(false),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                bail!("no line with {needle:?} within {limit:?}")
            }
        }
    }
}

/// Makes the idle times short before the proxy starts.
fn shorten_idle_times(s: &StrataCli) -> Result<()> {
    let path = s.dir.join("strata.toml");
    let text = std::fs::read_to_string(&path)?;
    ensure!(
        text.contains("idle_stop_secs = 300"),
        "no [proxy] in {text}"
    );
    let text = text
        .replace(
            "idle_stop_secs = 300",
            &format!("idle_stop_secs = {IDLE_STOP_SECS}"),
        )
        .replace(
            "ephemeral_idle_secs = 30",
            &format!("ephemeral_idle_secs = {EPHEMERAL_IDLE_SECS}"),
        );
    std::fs::write(&path, text)?;
    Ok(())
}

/// `strata status --json`, whatever its exit code (3 says a problem; the JSON is there).
fn status_json(s: &StrataCli) -> Result<Value> {
    let mut cmd = Command::new(&s.bin);
    cmd.arg("--dir").arg(&s.dir).args(["--json", "status"]);
    let out = run_within(cmd, CLIENT_LIMIT)?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "status printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn setup(s: &StrataCli) -> Result<u16> {
    shorten_idle_times(s)?;
    s.run(&["start"])?;
    s.run(&["tenant", "create", "shop"])?;
    s.run(&["tenant", "create", "blog"])?;
    let pw = s.dir.join("alice.pw");
    std::fs::write(&pw, format!("{PASSWORD}\n"))?;
    let create = |role: &str, tenant: &str, file: Option<&str>| {
        let mut args = vec![
            "role",
            "create",
            role,
            "--tenant",
            tenant,
            "--password-file",
        ];
        args.extend(file);
        s.run(&args)
    };
    create("alice", "shop", None)
        .err()
        .context("--password-file without a file must fail")?;
    let pw = pw.to_str().context("path")?;
    create("alice", "shop", Some(pw))?;
    create("bob", "blog", Some(pw))?;
    let roles = s.json(&["role", "list"])?;
    ensure!(roles.as_array().map(Vec::len) == Some(2), "roles: {roles}");
    let status = status_json(s)?;
    let addr = status["proxy"]["addr"]
        .as_str()
        .with_context(|| format!("no proxy in status: {status}"))?;
    let port = addr.rsplit(':').next().context("port")?.parse()?;
    Ok(port)
}

/// The cluster set up ([`setup`]) and its proxy's clients.
fn proxy_for(s: &StrataCli) -> Result<Proxy<'_>> {
    let port = setup(s)?;
    Ok(Proxy {
        s,
        port,
        // A worker thread drives the connections while the test waits elsewhere.
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?,
    })
}

#[test]
fn proxy_routes_authenticates_starts_stops_and_travels_in_time() -> Result<()> {
    let t0 = Instant::now();
    on_new_cluster("strata-proxy", |s| {
        let p = proxy_for(s)?;
        let port = p.port;
        eprintln!(
            "[{:>5.1} s] cluster up, proxy on {port}",
            t0.elapsed().as_secs_f64()
        );
        authentication(&p)?;
        let (before_delete, rp) = compute_on_connect_and_branches(&p)?;
        eprintln!("[{:>5.1} s] routing done", t0.elapsed().as_secs_f64());
        bad_inputs(&p)?;
        time_travel(&p, &before_delete, &rp)?;
        eprintln!("[{:>5.1} s] time travel done", t0.elapsed().as_secs_f64());
        cancel(&p)?;
        idle_stop_and_restart(&p)?;
        a_restarted_proxy_keeps_its_computes(&p)?;
        eprintln!("[{:>5.1} s] idle stop done", t0.elapsed().as_secs_f64());
        hand_started_computes_are_used_not_stopped(&p)?;
        pgbench(&p)?;
        eprintln!("[{:>5.1} s] all done", t0.elapsed().as_secs_f64());
        Ok(())
    })
}

/// SCRAM: the right password gets in (libpq and tokio-postgres), a wrong one or an unknown
/// role gets 28P01; no compute is started for a refused client.
fn authentication(p: &Proxy) -> Result<()> {
    let wrong = Target {
        password: "wrong",
        ..Target::db("postgres")
    };
    ensure!(p.refused(&wrong)? == "28P01");
    let mut psql = Command::new(pg_bin_dir().join("psql"));
    psql.args([
        "-X",
        "-h",
        "127.0.0.1",
        "-p",
        &p.port.to_string(),
        "-U",
        "alice",
    ])
    .args(["-d", "postgres", "-c", "select 1"])
    .env("PGPASSWORD", "wrong")
    .stdin(Stdio::null());
    let out = run_within(psql, CLIENT_LIMIT)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("password authentication failed for user \"alice\""),
        "psql with a wrong password: {err}"
    );
    // A proxy without a certificate refuses TLS, and libpq says so in its own words.
    let required = format!(
        "host=127.0.0.1 port={} user=alice dbname=postgres sslmode=require",
        p.port
    );
    let out = psql_conninfo(&required, PASSWORD, "select 1")?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("server does not support SSL, but SSL was required"),
        "psql with sslmode=require: {err}"
    );
    let nobody = Target {
        user: "mallory",
        ..Target::db("postgres")
    };
    ensure!(p.refused(&nobody)? == "28P01");
    ensure!(
        p.running()?.is_empty(),
        "a refused client started a compute"
    );
    Ok(())
}

/// A compute starts on the first connection; two branches of a tenant and another tenant
/// are routed by the database name and the options. Returns a time before a DELETE and the
/// name of a restore point made before it.
fn compute_on_connect_and_branches(p: &Proxy) -> Result<(String, String)> {
    let main = Target::db("postgres");
    let started = Instant::now();
    p.psql(
        &main,
        "CREATE TABLE items(id int); INSERT INTO items SELECT generate_series(1, 100)",
    )?;
    eprintln!(
        "  first connection (compute start included): {:?}",
        started.elapsed()
    );
    let running = p.running()?;
    ensure!(
        running == ["main"],
        "computes after the first connection: {running:?}"
    );
    let status = p.s.json(&["compute", "list"])?;
    ensure!(status[0]["read_only"] == false, "{status}");
    p.s.run(&["branch", "create", "dev", "--tenant", "shop"])?;
    p.psql(&main, "INSERT INTO items SELECT generate_series(101, 150)")?;
    ensure!(p.psql(&Target::db("postgres@dev"), "SELECT count(*) FROM items")? == "100");
    let by_option = Target {
        options: "-c strata.branch=dev",
        ..Target::db("postgres")
    };
    ensure!(p.psql(&by_option, "SELECT count(*) FROM items")? == "100");
    ensure!(p.psql(&main, "SELECT count(*) FROM items")? == "150");
    // Another tenant: bob's role is in blog, which has no table items.
    let bob = Target {
        user: "bob",
        ..Target::db("postgres")
    };
    ensure!(
        p.psql(
            &bob,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'items'"
        )? == "0"
    );
    // A moment before the DELETE: a time and a restore point (flushed by the commit after it).
    let before = p.psql(&main, "SELECT now()")?;
    p.psql(&main, "SELECT pg_create_restore_point('before_delete')")?;
    std::thread::sleep(Duration::from_millis(20));
    p.psql(&main, "DELETE FROM items WHERE id > 10")?;
    ensure!(p.psql(&main, "SELECT count(*) FROM items")? == "10");
    Ok((before, "before_delete".into()))
}

/// Unknown tenant, branch, restore point; a time in the future or before the first commit;
/// options that make no sense: each an ErrorResponse with its SQLSTATE, quickly.
fn bad_inputs(p: &Proxy) -> Result<()> {
    let cases: [(Target, &str); 7] = [
        (
            Target {
                options: "-c strata.tenant=nope",
                ..Target::db("postgres")
            },
            "3D000",
        ),
        (Target::db("postgres@nope"), "3D000"),
        (Target::db("postgres@main@no_such_point"), "42704"),
        (Target::db("postgres@main@2999-01-01 00:00:00+00"), "22023"),
        (Target::db("postgres@main@2001-01-01"), "22023"),
        (
            Target {
                options: "-c strata.colour=blue",
                ..Target::db("postgres")
            },
            "22023",
        ),
        (Target::db("nosuchdb"), "3D000"),
    ];
    for (t, want) in cases {
        let got = p.refused(&t)?;
        ensure!(
            got == want,
            "{:?} with options {:?}: SQLSTATE {got}, expected {want}",
            t.database,
            t.options
        );
    }
    Ok(())
}

/// `strata.at` and `dbname@branch@at` see the state before the DELETE; two connections at
/// one moment share one read-only compute, which stops after its idle time.
fn time_travel(p: &Proxy, before: &str, restore_point: &str) -> Result<()> {
    let options = format!("-c strata.at={}", before.replace(' ', "\\ "));
    let at_time = Target {
        options: &options,
        ..Target::db("postgres")
    };
    let db_at_point = format!("postgres@main@{restore_point}");
    let a = p.connect(&at_time)?;
    let b = p.connect(&at_time)?;
    ensure!(p.query_one(&a, "SELECT count(*) FROM items")? == "150");
    ensure!(p.query_one(&b, "SELECT count(*) FROM items")? == "150");
    ensure!(p.query_one(&a, "SELECT pg_is_in_recovery()::text")? == "true");
    let at_point = p.psql(&Target::db(&db_at_point), "SELECT count(*) FROM items")?;
    ensure!(at_point == "150", "at the restore point: {at_point}");
    let ports_a = p.query_one(&a, "SELECT inet_server_port()")?;
    let ports_b = p.query_one(&b, "SELECT inet_server_port()")?;
    ensure!(
        ports_a == ports_b,
        "two connections at one moment: ports {ports_a} and {ports_b}"
    );
    let read_only: Vec<Value> = p
        .computes()?
        .into_iter()
        .filter(|c| c["read_only"] == true && c["running"] == true)
        .collect();
    let at_time_compute = read_only
        .iter()
        .find(|c| c["port"].as_u64().map(|p| p.to_string()).as_deref() == Some(ports_a.as_str()))
        .with_context(|| format!("no compute on port {ports_a}: {read_only:?}"))?
        .clone();
    // The latest state is unchanged meanwhile.
    ensure!(p.psql(&Target::db("postgres"), "SELECT count(*) FROM items")? == "10");
    let name = at_time_compute["name"]
        .as_str()
        .context("name")?
        .to_string();
    // Held open: not stopped however long it idles.
    std::thread::sleep(Duration::from_secs(EPHEMERAL_IDLE_SECS + 2));
    ensure!(
        p.running()?.contains(&name),
        "{name} stopped under open connections"
    );
    drop(a);
    drop(b);
    wait_for(
        "the time travel computes to stop after their idle time",
        Duration::from_secs(EPHEMERAL_IDLE_SECS + 30),
        || {
            let running = p.running()?;
            Ok((!running.iter().any(|n| n.contains("-at-"))).then_some(()))
        },
    )?;
    Ok(())
}

/// A CancelRequest sent to the proxy reaches the compute and cancels pg_sleep.
fn cancel(p: &Proxy) -> Result<()> {
    let c = p.connect(&Target::db("postgres"))?;
    let token = c.cancel_token();
    let started = Instant::now();
    let result = p.rt.block_on(async {
        let sleep = c.simple_query("SELECT pg_sleep(60)");
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            token.cancel_query(NoTls).await
        };
        let (r, cancelled) =
            tokio::join!(tokio::time::timeout(Duration::from_secs(30), sleep), cancel);
        cancelled?;
        Ok::<_, anyhow::Error>(r)
    })?;
    let err = match result {
        Err(_) => bail!("pg_sleep(60) was not cancelled within 30 s"),
        Ok(Ok(_)) => bail!("pg_sleep(60) finished"),
        Ok(Err(e)) => e,
    };
    let code = err.as_db_error().map(|d| d.code().code().to_string());
    ensure!(code.as_deref() == Some("57014"), "cancel gave {err}");
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        started.elapsed()
    );
    // The session goes on after a cancel.
    ensure!(p.query_one(&c, "SELECT 1")? == "1");
    Ok(())
}

/// With no connection for the idle time, the proxy's read-write computes stop; the next
/// connection starts them again, with every committed row.
fn idle_stop_and_restart(p: &Proxy) -> Result<()> {
    wait_for(
        "the proxy's idle read-write computes to stop",
        Duration::from_secs(IDLE_STOP_SECS + 40),
        || Ok(p.running()?.is_empty().then_some(())),
    )?;
    let status = p.s.json(&["compute", "list"])?;
    ensure!(
        status
            .as_array()
            .is_some_and(|a| a.iter().all(|c| c["running"] == false)),
        "{status}"
    );
    let started = Instant::now();
    ensure!(p.psql(&Target::db("postgres"), "SELECT count(*) FROM items")? == "10");
    eprintln!(
        "  connection to a scaled-to-zero branch: {:?}",
        started.elapsed()
    );
    ensure!(p.psql(&Target::db("postgres@dev"), "SELECT count(*) FROM items")? == "100");
    Ok(())
}

/// The proxy SIGKILLed: the supervisor restarts it, it serves again, and it still stops the
/// computes it started before (dev, not connected to since, included).
fn a_restarted_proxy_keeps_its_computes(p: &Proxy) -> Result<()> {
    // Sessions held open, so that neither compute idles out before the kill however slow
    // the other's start was (they end with the proxy).
    let held = [
        p.connect(&Target::db("postgres"))?,
        p.connect(&Target::db("postgres@dev"))?,
    ];
    let running = p.running()?;
    ensure!(
        running.contains(&"main".to_string()) && running.contains(&"dev".to_string()),
        "main and dev should run after the reconnects: {running:?}"
    );
    let pid = read_pid(&p.s.dir.join("run/proxy.pid"))?;
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    ensure!(killed.success(), "kill -9 {pid}");
    drop(held);
    let main = Target::db("postgres");
    wait_for(
        "the supervisor to restart the proxy",
        Duration::from_secs(30),
        || {
            let new_pid = read_pid(&p.s.dir.join("run/proxy.pid"))?;
            Ok(
                (new_pid != pid && p.psql(&main, "SELECT count(*) FROM items")? == "10")
                    .then_some(()),
            )
        },
    )?;
    wait_for(
        "the restarted proxy to stop the idle computes it started before",
        Duration::from_secs(IDLE_STOP_SECS + 40),
        || Ok(p.running()?.is_empty().then_some(())),
    )?;
    Ok(())
}

/// A compute started by hand serves its branch through the proxy and is never stopped by it.
fn hand_started_computes_are_used_not_stopped(p: &Proxy) -> Result<()> {
    let c = p.s.json(&[
        "compute", "start", "main", "--tenant", "blog", "--name", "blogmain",
    ])?;
    let port = c["port"].as_u64().context("port")?.to_string();
    let bob = Target {
        user: "bob",
        ..Target::db("postgres")
    };
    ensure!(p.psql(&bob, "SELECT inet_server_port()")? == port);
    std::thread::sleep(Duration::from_secs(IDLE_STOP_SECS + 3));
    ensure!(
        p.running()?.contains(&"blogmain".to_string()),
        "the proxy stopped a compute it did not start"
    );
    let status = status_json(p.s)?;
    let started = status["proxy"]["started_computes"].to_string();
    ensure!(
        !started.contains("blogmain"),
        "status counts blogmain as the proxy's: {started}"
    );
    Ok(())
}

/// pgbench through the proxy (its own connections and SCRAM each time).
fn pgbench(p: &Proxy) -> Result<()> {
    let base = |args: &[&str]| {
        let mut cmd = Command::new(pg_bin_dir().join("pgbench"));
        cmd.args(["-h", "127.0.0.1", "-p", &p.port.to_string(), "-U", "alice"])
            .args(args)
            .arg("postgres")
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::null());
        cmd
    };
    let out = run_within(base(&["-i", "-s", "1", "-q"]), CLIENT_LIMIT)?;
    ensure!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_within(base(&["-S", "-c", "2", "-T", "3", "-C"]), CLIENT_LIMIT)?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "pgbench -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = text
        .lines()
        .find(|l| l.contains("number of failed transactions"))
        .unwrap_or_default();
    ensure!(
        failed.contains(": 0 "),
        "pgbench -S -C through the proxy: {text}"
    );
    eprintln!(
        "  pgbench -S -C through the proxy: {}",
        text.lines()
            .filter(|l| l.starts_with("tps"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(())
}

#[test]
fn restore_in_place_and_query_at_through_the_proxy() -> Result<()> {
    on_new_cluster("strata-proxy-restore", |s| {
        let p = proxy_for(s)?;
        restore_in_place(&p)?;
        query_at_shares_the_proxys_compute(&p)?;
        restore_refuses_bad_inputs(&p)?;
        restore_a_child_branch(&p)?;
        a_compute_start_racing_a_restore(&p)?;
        Ok(())
    })
}

/// `branch restore main --at <time>` with a client connected: the client's session ends, the
/// same connection string then reaches the restored state (read-write), the backup branch
/// holds what main was, and main's branch stays a child of that backup.
fn restore_in_place(p: &Proxy) -> Result<()> {
    let main = Target::db("postgres");
    p.psql(
        &main,
        "CREATE TABLE items(id int); INSERT INTO items SELECT generate_series(1, 100)",
    )?;
    p.s.run(&["branch", "create", "dev", "--tenant", "shop"])?;
    let before = p.psql(&main, "SELECT now()")?;
    std::thread::sleep(Duration::from_millis(20));
    p.psql(&main, "DELETE FROM items WHERE id > 10")?;
    let held = p.connect(&main)?;
    ensure!(p.query_one(&held, "SELECT count(*) FROM items")? == "10");

    let r = p.s.json(&[
        "branch", "restore", "main", "--tenant", "shop", "--at", &before,
    ])?;
    let backup = r["backup_branch"].as_str().context("backup_branch")?;
    ensure!(backup.starts_with("main_old_"), "{r}");
    ensure!(
        r["computes_stopped"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c == "main")),
        "main's compute was not stopped: {r}"
    );
    ensure!(
        p.query_one(&held, "SELECT count(*) FROM items").is_err(),
        "a session on the old state goes on after the restore"
    );
    // The same connection string: the restored state, writable.
    ensure!(p.psql(&main, "SELECT count(*) FROM items")? == "100");
    p.psql(&main, "INSERT INTO items VALUES (101)")?;
    ensure!(p.psql(&main, "SELECT count(*) FROM items")? == "101");
    let backup_db = format!("postgres@{backup}");
    let old = p.psql(&Target::db(&backup_db), "SELECT count(*) FROM items")?;
    ensure!(old == "10", "the backup branch {backup} has {old} rows");

    let branches = p.s.json(&["branch", "list", "--tenant", "shop"])?;
    let parent_of = |name: &str| {
        branches
            .as_array()
            .and_then(|a| a.iter().find(|b| b["branch"] == name))
            .map(|b| b["parent_timeline_id"].clone())
    };
    for child in ["main", "dev"] {
        ensure!(
            parent_of(child) == Some(r["backup_timeline_id"].clone()),
            "{child} is not a branch of the backup {backup}: {branches}"
        );
    }
    Ok(())
}

/// `strata query --at` runs on the proxy's compute for that moment (a second query reuses
/// it); rows as a table, `-t` as values, `--json` as typed objects.
fn query_at_shares_the_proxys_compute(p: &Proxy) -> Result<()> {
    let main = Target::db("postgres");
    let mark = p.psql(&main, "SELECT pg_current_wal_insert_lsn()")?;
    p.psql(&main, "DELETE FROM items WHERE id > 2")?;
    let sql = "SELECT id, id::text AS label, NULL::int AS nothing, id % 2 = 0 AS even \
               FROM items ORDER BY id LIMIT 2";
    let q = |args: &[&str]| {
        let mut all = vec!["query", "--tenant", "shop", "--at", mark.as_str()];
        all.extend_from_slice(args);
        p.s.run(&all)
    };
    let j =
        p.s.json(&["query", "--tenant", "shop", "--at", &mark, sql])?;
    ensure!(
        j["rows"]
            == serde_json::json!([
                {"id": 1, "label": "1", "nothing": null, "even": false},
                {"id": 2, "label": "2", "nothing": null, "even": true},
            ]),
        "query --json: {j}"
    );
    ensure!(
        j["via"].as_str().is_some_and(|v| v.starts_with("proxy")),
        "{j}"
    );
    let moments = || -> Result<Vec<String>> {
        Ok(p.running()?
            .into_iter()
            .filter(|n| n.contains("-at-"))
            .collect())
    };
    let first = moments()?;
    ensure!(first.len() == 1, "computes at the moment: {first:?}");
    let count = "SELECT count(*) AS n FROM items";
    ensure!(q(&["-t", count])? == "101");
    let table = q(&[count])?;
    let lines: Vec<&str> = table.lines().map(str::trim).collect();
    ensure!(
        lines == ["n", "-----", "101", "(1 row)"],
        "table: {table:?}"
    );
    ensure!(
        moments()? == first,
        "a second query started another compute"
    );
    // The latest state is another moment: the writer's state, 2 rows.
    ensure!(p.psql(&main, "SELECT count(*) FROM items")? == "2");
    let err = p.s.refused_within(
        &["query", "--tenant", "shop", "--at", &mark, "SELECT nope"],
        CLIENT_LIMIT,
    )?;
    ensure!(err.contains("nope") && err.contains("42703"), "{err}");
    Ok(())
}

/// A time in the future, an unknown restore point, an unknown branch: clear errors, and
/// nothing changes (names, computes).
fn restore_refuses_bad_inputs(p: &Proxy) -> Result<()> {
    let names = std::fs::read(p.s.dir.join("names.toml"))?;
    let running = p.running()?;
    for (args, says) in [
        (
            vec!["main", "--at", "2999-01-01 00:00:00+00"],
            "in the future",
        ),
        (vec!["main", "--at", "no_such_point"], "no_such_point"),
        (vec!["nope", "--at", "0/1000000"], "nope"),
    ] {
        let mut all = vec!["branch", "restore", "--tenant", "shop"];
        all.extend(args);
        let err = p.s.refused_within(&all, CLIENT_LIMIT)?;
        ensure!(err.contains(says), "{all:?}: {err}");
    }
    ensure!(
        std::fs::read(p.s.dir.join("names.toml"))? == names,
        "a refused restore changed names.toml"
    );
    ensure!(
        p.running()? == running,
        "a refused restore stopped computes"
    );
    Ok(())
}

/// A branch that is not a root (dev, a child of main's backup now), restored to a restore
/// point through the proxy's routing.
fn restore_a_child_branch(p: &Proxy) -> Result<()> {
    let dev = Target::db("postgres@dev");
    ensure!(p.psql(&dev, "SELECT count(*) FROM items")? == "100");
    p.psql(&dev, "SELECT pg_create_restore_point('dev_full')")?;
    p.psql(&dev, "DELETE FROM items")?;
    ensure!(p.psql(&dev, "SELECT count(*) FROM items")? == "0");
    let r = p.s.json(&[
        "branch", "restore", "dev", "--tenant", "shop", "--at", "dev_full",
    ])?;
    let backup = r["backup_branch"].as_str().context("backup_branch")?;
    ensure!(backup.starts_with("dev_old_"), "{r}");
    ensure!(p.psql(&dev, "SELECT count(*) FROM items")? == "100");
    let old = p.psql(
        &Target::db(&format!("postgres@{backup}")),
        "SELECT count(*) FROM items",
    )?;
    ensure!(old == "0", "the backup {backup} has {old} rows");
    Ok(())
}

/// A `compute start` that resolved main to its timeline just before `branch restore main`
/// moved the name (held right there by a failpoint): the restore waits for it (the cluster
/// lock) and then stops its compute with main's other old ones, so no compute is left
/// running on the backup. Without the lock the restore would finish first and the start
/// would then run its compute on the backup.
fn a_compute_start_racing_a_restore(p: &Proxy) -> Result<()> {
    let main = Target::db("postgres");
    let mark = p.psql(&main, "SELECT pg_current_wal_insert_lsn()")?;
    let at_mark = p.psql(&main, "SELECT count(*) FROM items")?;
    p.psql(&main, "INSERT INTO items VALUES (1000)")?;
    let hold = p.s.dir.join("hold-compute-start");
    std::fs::write(&hold, "")?;
    let strata = |args: &[&str]| {
        let mut cmd = Command::new(&p.s.bin);
        cmd.arg("--dir")
            .arg(&p.s.dir)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let mut start = strata(&[
        "compute",
        "start",
        "main",
        "--tenant",
        "shop",
        "--read-only",
        "--name",
        "racer",
    ])
    .env("STRATA_FAILPOINT_PAUSE_AT", "compute-start-resolved")
    .env("STRATA_FAILPOINT_PAUSE_WHILE", &hold)
    .spawn()?;
    let start_err = lines_of(start.stderr.take().context("stderr")?);
    let paused = line_with(&start_err, "failpoint compute-start-resolved", CLIENT_LIMIT)?;
    ensure!(paused, "the compute start ended before its failpoint");

    let mut restore = strata(&[
        "branch", "restore", "main", "--tenant", "shop", "--at", &mark,
    ])
    .spawn()?;
    let restore_err = lines_of(restore.stderr.take().context("stderr")?);
    // With the lock the restore waits for the start (and says so); without it, it ends.
    let waited = line_with(&restore_err, "waiting for compute starts", CLIENT_LIMIT)?;
    std::fs::remove_file(&hold)?;
    let started = finish_within(start, "compute start", CLIENT_LIMIT)?;
    ensure!(
        started.status.success(),
        "compute start: {}",
        start_err.try_iter().collect::<Vec<_>>().join("\n")
    );
    let restored = finish_within(restore, "branch restore", CLIENT_LIMIT)?;
    ensure!(
        restored.status.success(),
        "branch restore: {}",
        restore_err.try_iter().collect::<Vec<_>>().join("\n")
    );
    let r: Value = serde_json::from_slice(&restored.stdout)?;
    let backup_timeline = r["backup_timeline_id"].clone();
    let on_backup: Vec<Value> = p
        .computes()?
        .into_iter()
        .filter(|c| c["timeline_id"] == backup_timeline)
        .collect();
    ensure!(
        on_backup.is_empty(),
        "computes left on the backup {} (the restore waited: {waited}): {on_backup:?}",
        r["backup_branch"]
    );
    ensure!(waited, "the restore did not wait for the compute start");
    ensure!(
        r["computes_stopped"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c == "racer")),
        "the racing compute was not stopped by the restore: {r}"
    );
    ensure!(p.psql(&main, "SELECT count(*) FROM items")? == at_mark);
    Ok(())
}

/// TLS on the proxy (a cluster made with `strata init --listen IP` on this machine's first
/// address beyond loopback, or `--tls` on 127.0.0.1 without one): psql with
/// `sslmode=verify-full` and the cluster's CA gets rows on the proxy's address (and on
/// localhost when that is 127.0.0.1), over TLS; another CA is refused by libpq; a query in a TLS session can be
/// cancelled; a client on this host may still connect in clear; `strata status` names the
/// CA. The proxy binary refuses an address beyond loopback without a certificate unless told
/// `--no-tls`.
#[test]
fn proxy_over_tls() -> Result<()> {
    let tmp = scratch_dir("strata-proxy-tls-")?;
    let s = StrataCli::new(&tmp.path().join("cluster"))?;
    // No `hostname -I` (or no address beyond loopback): TLS on 127.0.0.1.
    let addresses = Command::new("hostname").arg("-I").output();
    let beyond_loopback = String::from_utf8_lossy(&addresses.map(|o| o.stdout).unwrap_or_default())
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|a| !a.is_loopback());
    match beyond_loopback {
        Some(ip) => s.run(&["init", "--listen", &ip.to_string()])?,
        None => s.run(&["init", "--tls"])?,
    };
    let result = tls_scenario(&s, tmp.path());
    let _ = s.run(&["stop"]);
    result
}

fn tls_scenario(s: &StrataCli, scratch: &std::path::Path) -> Result<()> {
    let port = setup(s)?;
    let ca = s.dir.join("tls").join("ca.pem");
    let status = status_json(s)?;
    let addr = status["proxy"]["addr"].as_str().context("proxy address")?;
    let (host, _) = addr.rsplit_once(':').context("host:port")?;
    ensure!(
        status["proxy"]["tls"] == true
            && status["proxy"]["ca_file"] == ca.display().to_string().as_str(),
        "status: {status}"
    );
    let conninfo =
        |host: &str, ssl: &str| format!("host={host} port={port} user=alice dbname=postgres {ssl}");
    let verified = format!("sslmode=verify-full sslrootcert={}", ca.display());
    let out = psql_conninfo(
        &conninfo(host, &verified),
        PASSWORD,
        "CREATE TABLE t AS SELECT generate_series(1, 3) AS x",
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `localhost` is in the certificate too; the proxy is there when it is on loopback.
    let names: &[&str] = if host == "127.0.0.1" {
        &[host, "localhost"]
    } else {
        &[host]
    };
    for host in names {
        let cmd = psql_command(
            &conninfo(host, &verified),
            PASSWORD,
            &["SELECT sum(x) FROM t", "\\conninfo"],
        );
        let out = run_within(cmd, CLIENT_LIMIT)?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success()
                && text.starts_with("6\n")
                && text.contains("SSL connection (protocol: TLS"),
            "psql verify-full on {host}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let foreign = scratch.join("foreign-ca");
    std::fs::create_dir_all(&foreign)?;
    strata_auth::ClusterCa::create(&foreign, "not the cluster's CA")?;
    let other_ca = format!(
        "sslmode=verify-full sslrootcert={}",
        foreign.join("ca.pem").display()
    );
    let out = psql_conninfo(&conninfo(host, &other_ca), PASSWORD, "SELECT 1")?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("certificate verify failed"),
        "psql trusting another CA: {err}"
    );

    let clear = psql_conninfo(&conninfo(host, "sslmode=disable"), PASSWORD, "SELECT 7")?;
    ensure!(
        clear.status.success() && String::from_utf8_lossy(&clear.stdout).trim() == "7",
        "a client on this host in clear: {}",
        String::from_utf8_lossy(&clear.stderr)
    );

    cancel_over_tls(&conninfo(host, &verified))?;
    proxy_binary_and_addresses_beyond_loopback(s)
}

/// psql's Ctrl-C (SIGINT) in a TLS session: libpq sends the cancel request, the proxy
/// forwards it, and the statement ends with Postgres's "canceling statement".
fn cancel_over_tls(conninfo: &str) -> Result<()> {
    let mut cmd = psql_command(conninfo, PASSWORD, &["SELECT pg_sleep(60)"]);
    let sleeper = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    wait_for("pg_sleep to run in the TLS session", CLIENT_LIMIT, || {
        let out = psql_conninfo(
            conninfo,
            PASSWORD,
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
        )?;
        Ok((String::from_utf8_lossy(&out.stdout).trim() == "1").then_some(()))
    })?;
    let pid = sleeper.id().to_string();
    ensure!(Command::new("kill")
        .args(["-INT", &pid])
        .status()?
        .success());
    let out = finish_within(
        sleeper,
        "psql running pg_sleep(60)",
        Duration::from_secs(30),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("canceling statement due to user request"),
        "psql after SIGINT: {err}"
    );
    Ok(())
}

/// `strata-proxy` by hand on 0.0.0.0: refused without a certificate, started with the
/// cluster's or with `--no-tls`.
fn proxy_binary_and_addresses_beyond_loopback(s: &StrataCli) -> Result<()> {
    let bin = s.bin.with_file_name("strata-proxy");
    let tls = s.dir.join("tls");
    let run = |extra: &[&str]| -> Result<(bool, String)> {
        let mut cmd = Command::new(&bin);
        cmd.arg("--dir")
            .arg(&s.dir)
            .args(["--listen", "0.0.0.0:0"])
            .args(extra)
            .env("STRATA_BIN", &s.bin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let out = lines_of(child.stdout.take().context("stdout")?);
        let ready = line_with(&out, "strata-proxy listening on", CLIENT_LIMIT)?;
        let _ = child.kill();
        let done = finish_within(child, "strata-proxy", CLIENT_LIMIT)?;
        Ok((ready, String::from_utf8_lossy(&done.stderr).into_owned()))
    };
    let (ready, err) = run(&[])?;
    ensure!(
        !ready && err.contains("--no-tls") && err.contains("not a loopback address"),
        "strata-proxy on 0.0.0.0 without a certificate: {err}"
    );
    let (ready, err) = run(&["--no-tls"])?;
    ensure!(ready, "strata-proxy --no-tls on 0.0.0.0: {err}");
    let cert = tls.join("proxy.pem");
    let key = tls.join("proxy.key");
    let (ready, err) = run(&[
        "--tls-cert",
        cert.to_str().context("path")?,
        "--tls-key",
        key.to_str().context("path")?,
    ])?;
    ensure!(
        ready,
        "strata-proxy with the cluster's certificate on 0.0.0.0: {err}"
    );
    Ok(())
}
