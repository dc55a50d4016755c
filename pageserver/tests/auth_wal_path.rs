//! The whole WAL path with auth on, real processes: Postgres 15 → `compute walproposer`
//! (`--safekeeper-token-file`) → a `safekeeper` checking tokens → the `pageserver`'s
//! walreceiver (`--safekeeper-token-file` as the replication password), which ingests what
//! Postgres committed. A walproposer with a token of the wrong scope stops at once, naming
//! the refusal.
//!
//! Needs the `safekeeper` and `compute` binaries of this workspace built (`cargo build
//! --bins`); `strata_tests::procs` finds them in the target directory.

mod service_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use service_support::Pageserver;
use strata_auth::{
    client_interceptor, generate_key_pair, Claims, Scope, TokenIssuer, PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
};
use strata_tests::procs::{Safekeeper, Walproposer};
use strata_tests::{InitOptions, PgCluster};
use tonic::transport::Channel;
use walproto::proto::pageserver as pb;
use walproto::proto::pageserver::pageserver_client::PageserverClient;
use walproto::Lsn;

const TENANT: &str = "abcdefabcdefabcdefabcdefabcdef11";
const TIMELINE: &str = "abcdefabcdefabcdefabcdefabcdef12";
const DEADLINE: Duration = Duration::from_secs(60);

/// A walproposer streaming `pg` to the safekeeper at gRPC address `sk` with the token in
/// `token_file`.
fn walproposer(pg: &PgCluster, sk: &str, token_file: &Path, log: &Path) -> Result<Walproposer> {
    let token_file = token_file.to_str().context("token file path")?;
    Walproposer::start_for(
        pg,
        &[sk.to_string()],
        (TENANT, TIMELINE),
        log,
        &["--safekeeper-token-file", token_file],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_flows_with_tokens_everywhere() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path();
    generate_key_pair(dir)?;
    let issuer = TokenIssuer::from_private_key_file(&dir.join(PRIVATE_KEY_FILE))?;
    let write_token = |name: &str, scope: Scope| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, issuer.issue(&Claims::new(scope))? + "\n")?;
        Ok(path)
    };
    let sk_token = write_token("safekeeper.token", Scope::Safekeeper)?;
    let wrong_token = write_token("tenant.token", Scope::Tenant(TENANT.into()))?;
    let admin = issuer.issue(&Claims::new(Scope::Admin))?;
    let public_key = dir.join(PUBLIC_KEY_FILE);

    let opts = InitOptions::default()
        .set("synchronous_standby_names", "strata")
        .set("synchronous_commit", "on")
        .set("max_wal_senders", "10")
        .set("fsync", "off");
    let pg = PgCluster::init(&opts)?;
    let base = pg.copy_data_dir("base")?;
    pg.start()?;

    let mut sk = Safekeeper::new(dir, 1)?;
    sk.replication = true;
    sk.args = vec!["--auth-public-key".into(), public_key.display().to_string()];
    sk.start()?;
    let (sk_grpc, sk_pg) = (sk.addr(), sk.pg_addr());

    // A tenant token is not a safekeeper token: the walproposer stops, saying why.
    let mut refused = walproposer(&pg, &sk_grpc, &wrong_token, &dir.join("wp-refused.log"))?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = refused.child.try_wait()? {
            break s;
        }
        if t0.elapsed() > DEADLINE {
            refused.kill();
            bail!("a walproposer with a tenant token kept running for {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(dir.join("wp-refused.log"))?;
    assert!(!status.success());
    assert!(log.contains("needs scope safekeeper or admin"), "{log}");

    let _wp = walproposer(&pg, &sk_grpc, &sk_token, &dir.join("wp.log"))?;
    let ps = Pageserver::start_with(
        &dir.join("ps"),
        &[
            "--auth-public-key",
            public_key.to_str().context("path")?,
            "--safekeeper-token-file",
            sk_token.to_str().context("path")?,
        ],
    )?;
    let channel = Channel::from_shared(format!("http://{}", ps.addr))?
        .connect()
        .await?;
    let mut c = PageserverClient::with_interceptor(channel, client_interceptor(Some(admin)));
    c.create_tenant(pb::CreateTenantRequest {
        tenant_id: TENANT.into(),
        config_toml: String::new(),
    })
    .await?;
    c.import_timeline(pb::ImportTimelineRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
        datadir: base.display().to_string(),
        lsn: 0,
        safekeepers: vec![sk_pg],
    })
    .await?;

    // Commits wait for the safekeeper: they return only if the walproposer's token works.
    pg.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 5000);")?;
    let target: Lsn = pg.psql("SELECT pg_current_wal_lsn()")?.trim().parse()?;
    let req = pb::TimelineRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
    };
    let t0 = Instant::now();
    loop {
        let st = c.timeline_status(req.clone()).await?.into_inner();
        if Lsn(st.last_record_end) >= target {
            break;
        }
        if t0.elapsed() > DEADLINE {
            bail!(
                "the pageserver ingested only up to {} of {target} ({st:?}); logs in {}",
                Lsn(st.last_record_end),
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
