//! Authentication of a real local cluster (issue 21, item 1), on by default in `strata init`:
//! the whole lifecycle works with it (tenants, computes logged into with the cluster's
//! password, a branch, a lazy compute's page reads), a client without a token is refused by
//! the pageserver, a safekeeper and a safekeeper's replication port, psql without the
//! password is refused, a `tenant:A` token from `strata token issue` reads A's pages and not
//! B's, and a `--no-auth` cluster works without any of it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use strata_tests::cluster::{bearer_request, on_new_cluster, psql, StrataCli};
use strata_tests::pg::pg_bin_dir;
use tonic::transport::Channel;
use walproto::pgclient::{ConnConfig, PgConnection};
use walproto::proto::pageserver as ps;
use walproto::proto::pageserver::pageserver_client::PageserverClient;
use walproto::proto::safekeeper as sk;
use walproto::proto::safekeeper::safekeeper_client::SafekeeperClient;

/// Deadline of one gRPC or replication call.
const CALL_LIMIT: Duration = Duration::from_secs(20);

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn channel(addr: &str) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// The gRPC code of a call's outcome (`Ok` for success).
fn code_of<T>(r: Result<tonic::Response<T>, tonic::Status>) -> (tonic::Code, String) {
    match r {
        Ok(_) => (tonic::Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// What the pageserver answers to ListTenants, GetPage (block 0 of pg_class of database
/// `postgres`) and Basebackup (its first chunk) of `(tenant, timeline)` for `token`.
fn pageserver_codes(
    addr: &str,
    token: Option<&str>,
    tenant: &str,
    timeline: &str,
) -> Result<[(tonic::Code, String); 3]> {
    runtime()?.block_on(async {
        let mut c = PageserverClient::new(channel(addr).await?);
        let list = tokio::time::timeout(
            CALL_LIMIT,
            c.list_tenants(bearer_request(ps::ListTenantsRequest {}, token)?),
        )
        .await?;
        let page = ps::GetPageRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
            lsn: 0,
            target: Some(ps::get_page_request::Target::RelBlock(ps::RelBlock {
                spc: 1663,
                db: 5,
                rel: 1259,
                fork: 0,
                blkno: 0,
            })),
        };
        let page =
            tokio::time::timeout(CALL_LIMIT, c.get_page(bearer_request(page, token)?)).await?;
        let bb = ps::BasebackupRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
            ..Default::default()
        };
        let bb = match tokio::time::timeout(CALL_LIMIT, c.basebackup(bearer_request(bb, token)?))
            .await?
        {
            Ok(stream) => {
                let first = tokio::time::timeout(CALL_LIMIT, stream.into_inner().message()).await?;
                match first {
                    Ok(Some(_)) => (tonic::Code::Ok, String::new()),
                    Ok(None) => (tonic::Code::Internal, "an empty basebackup".into()),
                    Err(s) => (s.code(), s.message().to_string()),
                }
            }
            Err(s) => (s.code(), s.message().to_string()),
        };
        Ok([code_of(list), code_of(page), bb])
    })
}

/// What a safekeeper answers to TimelineStatus for `token`.
fn safekeeper_code(
    addr: &str,
    token: Option<&str>,
    tenant: &str,
    timeline: &str,
) -> Result<(tonic::Code, String)> {
    runtime()?.block_on(async {
        let mut c = SafekeeperClient::new(channel(addr).await?);
        let req = sk::TimelineStatusRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
        };
        let r = tokio::time::timeout(CALL_LIMIT, c.timeline_status(bearer_request(req, token)?))
            .await?;
        Ok(code_of(r))
    })
}

/// Whether a replication connection to a safekeeper's Postgres-protocol port for timeline
/// `(tenant, timeline)`, with `password` (a token) if given, is accepted; the refusal's text
/// otherwise.
fn replication_login(
    addr: &str,
    tenant: &str,
    timeline: &str,
    password: Option<&str>,
) -> Result<Result<(), String>> {
    let (host, port) = addr.rsplit_once(':').context("host:port")?;
    let mut conn = format!(
        "host={host} port={port} user=strata replication=true \
         options='-c tenant_id={tenant} -c timeline_id={timeline}'"
    );
    if let Some(p) = password {
        conn.push_str(&format!(" password={p}"));
    }
    let cfg = ConnConfig::parse(&conn)?;
    runtime()?.block_on(async {
        match tokio::time::timeout(CALL_LIMIT, PgConnection::connect(&cfg)).await? {
            Ok(_) => Ok(Ok(())),
            Err(e) => Ok(Err(e.to_string())),
        }
    })
}

/// psql to a compute with exactly the environment given (no password file unless named).
fn psql_with(port: u16, env: &[(&str, &str)]) -> Result<std::process::Output> {
    let mut cmd = Command::new(pg_bin_dir().join("psql"));
    cmd.args(["-X", "-At", "-w", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &port.to_string(), "-d", "postgres", "-c", "SELECT 1"])
        .env_remove("PGPASSFILE")
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "10");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

fn port_of(v: &Value) -> Result<u16> {
    Ok(v["port"]
        .as_u64()
        .context("compute start printed no port")? as u16)
}

fn text(v: &Value, key: &str) -> Result<String> {
    v[key]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no {key:?} in {v}"))
}

fn mode_of(p: &Path) -> Result<u32> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("{} missing", p.display()))?
        .permissions()
        .mode()
        & 0o777)
}

#[test]
fn auth_is_on_by_default_and_refuses_whoever_lacks_the_token_or_password() -> Result<()> {
    on_new_cluster("strata-auth-", |s: &StrataCli| {
        let auth = s.dir.join("auth");
        for f in [
            "private_key.pem",
            "admin.token",
            "pageserver.token",
            "safekeeper.token",
            "compute_password",
            "pgpass",
        ] {
            ensure!(mode_of(&auth.join(f))? == 0o600, "{f} is not mode 0600");
        }
        let started = s.json(&["start"])?;
        ensure!(started["auth"] == true, "start --json: {started}");
        let a = s.json(&["tenant", "create", "a"])?;
        let b = s.json(&["tenant", "create", "b"])?;
        let (a_id, a_tl) = (text(&a, "tenant_id")?, text(&a, "timeline_id")?);
        let (b_id, b_tl) = (text(&b, "tenant_id")?, text(&b, "timeline_id")?);

        // A compute: its connection string and password; the harness logs in with the
        // cluster's password file, and without a password Postgres refuses.
        let main = s.json(&["compute", "start", "main", "--tenant", "a"])?;
        let port = port_of(&main)?;
        let password = std::fs::read_to_string(auth.join("compute_password"))?;
        ensure!(
            main["password"] == password.trim() && main["pgpass_file"].is_string(),
            "compute start --json names the password: {main}"
        );
        psql(
            port,
            "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 1000) g",
        )?;
        let refused = psql_with(port, &[])?;
        let err = String::from_utf8_lossy(&refused.stderr);
        ensure!(
            !refused.status.success() && err.contains("password"),
            "psql without a password was not refused: {err}"
        );
        let wrong = psql_with(port, &[("PGPASSWORD", "not-the-password")])?;
        let err = String::from_utf8_lossy(&wrong.stderr);
        ensure!(
            !wrong.status.success() && err.contains("password authentication failed"),
            "psql with a wrong password was not refused: {err}"
        );
        let right = psql_with(port, &[("PGPASSWORD", password.trim())])?;
        ensure!(
            right.status.success(),
            "psql with the password: {}",
            String::from_utf8_lossy(&right.stderr)
        );

        // A branch and a lazy compute on it: its page filesystem reads with its token.
        s.run(&["branch", "create", "dev", "--from", "main", "--tenant", "a"])?;
        let dev = s.json(&["compute", "start", "dev", "--tenant", "a"])?;
        ensure!(dev["lazy"] == true, "a lazy compute: {dev}");
        let sum = psql(port_of(&dev)?, "SELECT sum(x) FROM t")?;
        ensure!(sum == "500500", "the lazy compute read {sum:?}");

        // The services: no token is UNAUTHENTICATED, the CLI's admin token passes.
        let cfg = s.json(&["status"])?;
        ensure!(
            cfg["auth"] == true && cfg["healthy"] == true,
            "status: {cfg}"
        );
        let init = std::fs::read_to_string(s.dir.join("strata.toml"))?;
        ensure!(init.contains("auth = true"), "strata.toml: {init}");
        let ps_addr = text(&started["pageserver"], "grpc_addr")?;
        let sk_grpc = text(&started["safekeepers"][0], "grpc_addr")?;
        let sk_pg = text(&started["safekeepers"][0], "pg_addr")?;
        let admin = s.admin_token()?;
        for (code, msg) in pageserver_codes(&ps_addr, None, &a_id, &a_tl)? {
            ensure!(
                code == tonic::Code::Unauthenticated,
                "the pageserver answered a call without a token with {code:?}: {msg}"
            );
        }
        for (code, msg) in pageserver_codes(&ps_addr, Some(admin.trim()), &a_id, &a_tl)? {
            ensure!(code == tonic::Code::Ok, "admin token: {code:?} {msg}");
        }
        let (code, msg) = safekeeper_code(&sk_grpc, None, &a_id, &a_tl)?;
        ensure!(
            code == tonic::Code::Unauthenticated,
            "a safekeeper answered a call without a token with {code:?}: {msg}"
        );
        let (code, msg) = safekeeper_code(&sk_grpc, Some(admin.trim()), &a_id, &a_tl)?;
        ensure!(
            matches!(code, tonic::Code::Ok | tonic::Code::NotFound),
            "admin token on a safekeeper: {code:?} {msg}"
        );
        match replication_login(&sk_pg, &a_id, &a_tl, None)? {
            Ok(()) => bail!("the replication port let a client in without a token"),
            Err(e) => ensure!(e.contains("password"), "refusal: {e}"),
        }
        let ps_token = std::fs::read_to_string(auth.join("pageserver.token"))?;
        replication_login(&sk_pg, &a_id, &a_tl, Some(ps_token.trim()))?
            .map_err(|e| anyhow::anyhow!("the pageserver's token on the replication port: {e}"))?;

        // A compute's walproposer token serves its own tenant only.
        let wp = std::fs::read_to_string(s.dir.join("computes/main/walproposer.token"))?;
        let (code, msg) = safekeeper_code(&sk_grpc, Some(wp.trim()), &a_id, &a_tl)?;
        ensure!(
            code == tonic::Code::Ok,
            "walproposer token, own tenant: {code:?} {msg}"
        );
        let (code, msg) = safekeeper_code(&sk_grpc, Some(wp.trim()), &b_id, &b_tl)?;
        ensure!(
            code == tonic::Code::PermissionDenied,
            "walproposer token of tenant a on tenant b: {code:?} {msg}"
        );

        // `strata token issue`: a tenant:a token reads a's pages, not b's; it is not admin.
        let issued = s.json(&["token", "issue", "--scope", "tenant:a", "--ttl", "1h"])?;
        let tenant_a = text(&issued, "token")?;
        ensure!(issued["scope"] == format!("tenant:{a_id}"), "{issued}");
        ensure!(issued["expires_at"].is_u64(), "{issued}");
        let [list, page, bb] = pageserver_codes(&ps_addr, Some(&tenant_a), &a_id, &a_tl)?;
        ensure!(
            list.0 == tonic::Code::PermissionDenied && list.1.contains("admin"),
            "ListTenants with a tenant token: {list:?}"
        );
        ensure!(page.0 == tonic::Code::Ok, "GetPage of its tenant: {page:?}");
        ensure!(bb.0 == tonic::Code::Ok, "Basebackup of its tenant: {bb:?}");
        // The CLI presents $STRATA_TOKEN instead of the admin token.
        let as_tenant_a = |args: &[&str]| {
            Command::new(&s.bin)
                .arg("--dir")
                .arg(&s.dir)
                .args(args)
                .env("STRATA_TOKEN", &tenant_a)
                .output()
        };
        let listed = as_tenant_a(&["branch", "list", "--tenant", "a"])?;
        ensure!(
            listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains("dev"),
            "branch list with a tenant:a token: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let gc = as_tenant_a(&["gc", "--tenant", "a"])?;
        let err = String::from_utf8_lossy(&gc.stderr);
        ensure!(
            !gc.status.success() && err.contains("needs scope admin"),
            "gc with a tenant:a token: {err}"
        );
        let [_, page, bb] = pageserver_codes(&ps_addr, Some(&tenant_a), &b_id, &b_tl)?;
        for (what, (code, msg)) in [("GetPage", page), ("Basebackup", bb)] {
            ensure!(
                code == tonic::Code::PermissionDenied && msg.contains(&format!("tenant:{b_id}")),
                "{what} of another tenant with a tenant:a token: {code:?} {msg}"
            );
        }
        Ok(())
    })
}

#[test]
fn a_no_auth_cluster_needs_no_token_and_no_password() -> Result<()> {
    let tmp = strata_tests::cluster::scratch_dir("strata-noauth-")?;
    let s = StrataCli::new(&tmp.path().join("cluster"))?;
    let init = s.json(&["init", "--no-auth"])?;
    ensure!(init["auth"] == false, "init --json: {init}");
    let result = (|| -> Result<()> {
        ensure!(
            !s.dir.join("auth").exists(),
            "--no-auth made an auth directory"
        );
        let started = s.json(&["start"])?;
        let ps_addr = text(&started["pageserver"], "grpc_addr")?;
        let t = s.json(&["tenant", "create"])?;
        let c = s.json(&["compute", "start", "main"])?;
        ensure!(c["password"].is_null(), "no password: {c}");
        let port = port_of(&c)?;
        let ok = psql_with(port, &[])?;
        ensure!(
            ok.status.success(),
            "psql without a password: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let (id, tl) = (text(&t, "tenant_id")?, text(&t, "timeline_id")?);
        for (code, msg) in pageserver_codes(&ps_addr, None, &id, &tl)? {
            ensure!(
                code == tonic::Code::Ok,
                "no token, auth off: {code:?} {msg}"
            );
        }
        let status = s.run(&["status"])?;
        ensure!(
            status.contains("auth: off"),
            "status says auth is off: {status}"
        );
        let refused = Command::new(&s.bin)
            .arg("--dir")
            .arg(&s.dir)
            .args(["token", "issue", "--scope", "admin"])
            .output()?;
        ensure!(
            !refused.status.success()
                && String::from_utf8_lossy(&refused.stderr).contains("no authentication"),
            "token issue in a --no-auth cluster"
        );
        Ok(())
    })();
    let _ = s.run(&["stop"]);
    result
}
