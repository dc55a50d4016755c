//! `strata demo`: the whole story in one command. A cluster starts, a tenant is created, pgbench
//! runs through a compute, a table is dropped by mistake, the moment before the drop is found by
//! time and by restore point, a branch is made there, and a compute on the branch shows the
//! table back. Every step prints how long it took; the exit status is 0 only if the table came
//! back intact.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;

use strata::cluster::ClusterConfig;
use strata::computes::{self, StartRequest};
use strata::lsn::resolve_lsn;
use strata::mgmt::Pageserver;
use strata::names::Names;
use strata::output::Output;
use strata::target::{format_time, parse_time, Target};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// pgbench scale factor (about 15 MB of data per unit).
    #[arg(long, default_value_t = 5)]
    pub scale: u32,
    /// Seconds of pgbench load before and after the mistake.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Keep the cluster running at the end (to look around with psql).
    #[arg(long)]
    pub keep: bool,
}

struct Steps {
    started: Instant,
    n: usize,
}

impl Steps {
    fn run<T>(&mut self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.n += 1;
        eprintln!("[{:>2}] {what} …", self.n);
        let t0 = Instant::now();
        let r = f().with_context(|| format!("step {}: {what}", self.n))?;
        println!(
            "[{:>2}] {what}: {:.2} s  (total {:.1} s)",
            self.n,
            t0.elapsed().as_secs_f64(),
            self.started.elapsed().as_secs_f64()
        );
        Ok(r)
    }
}

pub fn run(dir_arg: Option<PathBuf>, a: DemoArgs, out: &Output) -> Result<()> {
    let (dir, _tmp) = match dir_arg {
        Some(d) => (d, None),
        None => {
            // Postgres (run as the postgres user when we are root) must reach its data
            // directories: a world-traversable scratch directory.
            let t = tempfile::Builder::new()
                .prefix("strata-demo-")
                .tempdir_in("/tmp")?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let dir = dir.as_path();
    // Its own cluster: the CLI's clients present that cluster's admin token.
    strata::auth_setup::use_cluster(dir);
    let mut steps = Steps {
        started: Instant::now(),
        n: 0,
    };
    let result = story(dir, &a, out, &mut steps);
    if a.keep && result.is_ok() {
        println!(
            "the cluster keeps running in {}: `strata --dir {} status`, `strata --dir {} stop`",
            dir.display(),
            dir.display(),
            dir.display()
        );
        if let Some(t) = _tmp {
            let _ = t.keep();
        }
    } else {
        let _ = strata::lifecycle::stop(dir);
    }
    match &result {
        Ok(()) => println!(
            "demo passed in {:.1} s: the dropped table came back intact",
            steps.started.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!("demo FAILED: {e:#}\n(logs in {}/logs)", dir.display()),
    }
    result
}

fn story(dir: &Path, a: &DemoArgs, out: &Output, steps: &mut Steps) -> Result<()> {
    steps.run(
        "strata init (3 safekeepers, a pageserver, a local object store)",
        || {
            strata::lifecycle::init(
                dir,
                &strata::lifecycle::InitOptions {
                    safekeepers: 3,
                    remote_storage: None,
                    pg_bin: "/usr/lib/postgresql/15/bin".into(),
                    no_auth: false,
                    listen: None,
                    tls: false,
                    no_metrics: false,
                },
            )
        },
    )?;
    steps.run("strata start", || strata::lifecycle::start(dir))?;
    steps.run("strata tenant create shop", || {
        super::tenant::run(
            dir,
            super::tenant::TenantCommand::Create(super::tenant::CreateArgs {
                name: Some("shop".into()),
            }),
            out,
        )
    })?;
    let main = steps.run("strata compute start main", || {
        computes::start(dir, start_req("main", None, false), out)
    })?;
    let cfg = ClusterConfig::load(dir)?;
    let node = computes::node(dir, &cfg, &main.name)?;
    let sql = |q: &str| node.psql(main.port, "postgres", q);
    let pgbench = |args: &[&str]| -> Result<String> {
        let port = main.port.to_string();
        let sock = node.socket_dir.display().to_string();
        let mut all = vec!["-h", sock.as_str(), "-p", port.as_str(), "-U", "postgres"];
        all.extend_from_slice(args);
        all.push("postgres");
        let o = node.pg.run("pgbench", &all)?;
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let scale = a.scale.to_string();
    steps.run(&format!("pgbench -i -s {scale}"), || {
        pgbench(&["-i", "-q", "-s", &scale]).map(|_| ())
    })?;
    let secs = a.seconds.to_string();
    let tps = steps.run(&format!("pgbench -c 4 -T {secs}"), || {
        pgbench(&["-c", "4", "-j", "2", "-T", &secs])
    })?;
    if let Some(l) = tps.lines().find(|l| l.starts_with("tps")) {
        println!("      {l}");
    }
    steps.run("create the table we will lose: orders (10,000 rows)", || {
        sql("CREATE TABLE orders(id int PRIMARY KEY, customer text, amount numeric);
             INSERT INTO orders SELECT g, 'customer ' || g % 97, g * 1.25 FROM generate_series(1, 10000) g;")
            .map(|_| ())
    })?;
    let fingerprint = "SELECT count(*) || ' rows, md5 ' || md5(string_agg(id || ':' || customer || ':' || amount, ',' ORDER BY id)) FROM orders";
    let before = sql(fingerprint)?;
    println!("      orders: {before}");
    sql("SELECT pg_create_restore_point('before-drop')")?;
    // The moment just before the mistake, by the compute's clock.
    let t_before =
        sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")?;
    std::thread::sleep(std::time::Duration::from_millis(50));
    steps.run("the mistake: DROP TABLE orders, then more pgbench", || {
        sql("DROP TABLE orders")?;
        pgbench(&["-c", "4", "-j", "2", "-T", &secs]).map(|_| ())
    })?;
    ensure!(
        sql("SELECT to_regclass('orders') IS NULL")? == "t",
        "orders should be gone on main"
    );

    let names = Names::load(dir)?;
    let (_, tenant_id) = names.tenant(Some("shop"))?;
    let main_tl = names.timeline("shop", "main")?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    steps.run(
        "wait until the pageserver has every committed record",
        || {
            strata::lsn::wait_for_committed_wal(&cfg, &mut ps, &tenant_id, &main_tl, false, out)
                .map(|_| ())
        },
    )?;
    let t_us = parse_time(&t_before)?;
    let by_time = steps.run(
        &format!(
            "find the moment before the drop by time ({})",
            format_time(t_us)
        ),
        || resolve_lsn(&mut ps, &tenant_id, &main_tl, &Target::Time(t_us), true),
    )?;
    let by_point = steps.run("find it by restore point 'before-drop'", || {
        resolve_lsn(
            &mut ps,
            &tenant_id,
            &main_tl,
            &Target::RestorePoint("before-drop".into()),
            true,
        )
    })?;
    println!("      by time: {by_time}, by restore point: {by_point}");
    steps.run(
        &format!(
            "strata branch create before-drop --at '{}'",
            format_time(t_us)
        ),
        || {
            super::branch::create(
                dir,
                &super::branch::CreateArgs {
                    name: "before-drop".into(),
                    from: "main".into(),
                    at: Some(format_time(t_us)),
                    exclusive: false,
                    tenant: super::branch::TenantArg {
                        tenant: Some("shop".into()),
                    },
                },
                out,
            )
        },
    )?;
    let restored = steps.run("strata compute start before-drop", || {
        computes::start(dir, start_req("before-drop", None, false), out)
    })?;
    let rnode = computes::node(dir, &cfg, &restored.name)?;
    let after = steps.run("check the table on the branch", || {
        rnode.psql(restored.port, "postgres", fingerprint)
    })?;
    println!("      orders on before-drop: {after}");
    if after != before {
        bail!("the table on the branch differs: {after} (expected {before})");
    }
    let at_point = steps.run(
        "time travel: strata query --at before-drop (restore point)",
        || {
            let rec = computes::start(
                dir,
                start_req(
                    "main",
                    Some(Target::RestorePoint("before-drop".into())),
                    true,
                ),
                out,
            )?;
            let n = computes::node(dir, &cfg, &rec.name)?;
            let r = n.psql(rec.port, "postgres", fingerprint);
            computes::remove(dir, &cfg, &rec.name)?;
            r
        },
    )?;
    println!("      orders as of restore point before-drop: {at_point}");
    if at_point != before {
        bail!("time travel to the restore point shows {at_point} (expected {before})");
    }
    steps.run("writes on the branch", || {
        rnode
            .psql(
                restored.port,
                "postgres",
                "INSERT INTO orders VALUES (10001, 'after restore', 1)",
            )
            .map(|_| ())
    })?;
    Ok(())
}

fn start_req(branch: &str, at: Option<Target>, read_only: bool) -> StartRequest<'_> {
    StartRequest {
        branch,
        tenant: Some("shop"),
        at,
        read_only,
        name: None,
        ttl_secs: None,
        full_copy: false,
        settings: &[],
    }
}
