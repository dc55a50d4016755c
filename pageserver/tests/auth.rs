//! The real `pageserver` binary with `--auth-public-key`: every RPC of the service, from a
//! table, is refused without a token (UNAUTHENTICATED), with a forged or expired one
//! (UNAUTHENTICATED), with a token of another tenant or scope (PERMISSION_DENIED naming the
//! scope needed), and reaches the service with the right one. A tenant's token reads its
//! tenant's pages and basebackup and cannot read another tenant's.

mod service_support;

use std::path::Path;

use anyhow::{Context, Result};
use pageserver::service::{needed_scope, Rpc};
use service_support::Pageserver;
use strata_auth::{
    client_interceptor, generate_key_pair, rpc_names, BearerInterceptor, Claims, Scope,
    TokenIssuer, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE,
};
use strata_tests::{InitOptions, PgCluster};
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use walproto::proto::pageserver as pb;
use walproto::proto::pageserver::pageserver_client::PageserverClient;

/// The tenant with data, another tenant, and one the table's calls create and delete.
const TENANT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TENANT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const TENANT_C: &str = "cccccccccccccccccccccccccccccccc";
const TIMELINE: &str = "11111111111111111111111111111111";
/// The table's calls name a timeline that does not exist: nothing real is changed.
const NO_TIMELINE: &str = "99999999999999999999999999999999";

type Client = PageserverClient<InterceptedService<Channel, BearerInterceptor>>;

async fn client(addr: &str, token: Option<&str>) -> Result<Client> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(PageserverClient::with_interceptor(
        channel,
        client_interceptor(token.map(str::to_string)),
    ))
}

fn timeline_req(tenant: &str) -> pb::TimelineRequest {
    pb::TimelineRequest {
        tenant_id: tenant.into(),
        timeline_id: NO_TIMELINE.into(),
    }
}

/// Calls `rpc` once for `tenant` (a timeline that does not exist) and says how it ended; a
/// stream's first answer counts.
async fn call(c: &mut Client, rpc: Rpc, tenant: &str) -> Result<(), Status> {
    tokio::time::timeout(CALL_TIMEOUT, call_once(c, rpc, tenant))
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "{rpc:?}: no answer within {CALL_TIMEOUT:?}"
            )))
        })
}

const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

async fn call_once(c: &mut Client, rpc: Rpc, tenant: &str) -> Result<(), Status> {
    let t = || tenant.to_string();
    let tl = || NO_TIMELINE.to_string();
    match rpc {
        Rpc::CreateTenant => c
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: t(),
                config_toml: String::new(),
            })
            .await
            .map(drop),
        Rpc::ListTenants => c.list_tenants(pb::ListTenantsRequest {}).await.map(drop),
        Rpc::ImportTimeline => c
            .import_timeline(pb::ImportTimelineRequest {
                tenant_id: t(),
                timeline_id: tl(),
                datadir: "/nonexistent".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::CreateBranch => c
            .create_branch(pb::CreateBranchRequest {
                tenant_id: t(),
                parent_timeline_id: tl(),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::ListTimelines => c
            .list_timelines(pb::ListTimelinesRequest { tenant_id: t() })
            .await
            .map(drop),
        Rpc::TimelineStatus => c.timeline_status(timeline_req(tenant)).await.map(drop),
        Rpc::DeleteTimeline => c.delete_timeline(timeline_req(tenant)).await.map(drop),
        Rpc::SetSafekeepers => c
            .set_safekeepers(pb::SetSafekeepersRequest {
                tenant_id: t(),
                timeline_id: tl(),
                safekeepers: vec!["127.0.0.1:1".into()],
            })
            .await
            .map(drop),
        Rpc::LsnForTimestamp => c
            .lsn_for_timestamp(pb::LsnForTimestampRequest {
                tenant_id: t(),
                timeline_id: tl(),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::ListRestorePoints => c.list_restore_points(timeline_req(tenant)).await.map(drop),
        Rpc::Compact => c.compact(timeline_req(tenant)).await.map(drop),
        Rpc::Flush => c.flush(timeline_req(tenant)).await.map(drop),
        Rpc::Basebackup => {
            let mut s = c
                .basebackup(pb::BasebackupRequest {
                    tenant_id: t(),
                    timeline_id: tl(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            s.message().await.map(drop)
        }
        Rpc::GetPage => c
            .get_page(pb::GetPageRequest {
                tenant_id: t(),
                timeline_id: tl(),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::Gc => c
            .gc(pb::GcRequest {
                tenant_id: t(),
                timeline_id: tl(),
            })
            .await
            .map(drop),
        Rpc::CreateLease => c
            .create_lease(pb::CreateLeaseRequest {
                tenant_id: t(),
                timeline_id: tl(),
                lsn: 0x100_0000,
                ttl_seconds: 60,
                owner: String::new(),
            })
            .await
            .map(drop),
        Rpc::RelSize => c.rel_size(rel_req(tenant)).await.map(drop),
        Rpc::RelExists => c.rel_exists(rel_req(tenant)).await.map(drop),
        Rpc::DbSize => c
            .db_size(pb::DbSizeRequest {
                tenant_id: t(),
                timeline_id: tl(),
                dbnode: 1,
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::SlruSegment => c
            .slru_segment(pb::SlruSegmentRequest {
                tenant_id: t(),
                timeline_id: tl(),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::ResumeIngest => c.resume_ingest(timeline_req(tenant)).await.map(drop),
        Rpc::ListRelations => c
            .list_relations(pb::ListRelationsRequest {
                tenant_id: t(),
                timeline_id: tl(),
                lsn: 0,
            })
            .await
            .map(drop),
        Rpc::GetPages => {
            let first = get_pages(c, tenant, TIMELINE, 1, 0).await?;
            match first.error {
                Some(e) => Err(Status::new(Code::from(e.code), e.message)),
                None => Ok(()),
            }
        }
        Rpc::DeleteTenant => c
            .delete_tenant(pb::DeleteTenantRequest { tenant_id: t() })
            .await
            .map(drop),
        Rpc::ListLeases => c.list_leases(timeline_req(tenant)).await.map(drop),
        Rpc::RevokeLease => c
            .revoke_lease(pb::RevokeLeaseRequest {
                tenant_id: t(),
                timeline_id: tl(),
                lsn: 0x100_0000,
                owner: String::new(),
            })
            .await
            .map(drop),
        Rpc::GetTenantConfig => c
            .get_tenant_config(pb::GetTenantConfigRequest { tenant_id: t() })
            .await
            .map(drop),
        Rpc::SetTenantConfig => c
            .set_tenant_config(pb::SetTenantConfigRequest {
                tenant_id: t(),
                settings: vec![pb::TenantConfigSetting {
                    key: "pitr_interval".into(),
                    value: "7d".into(),
                }],
            })
            .await
            .map(drop),
    }
}

fn rel_req(tenant: &str) -> pb::RelRequest {
    pb::RelRequest {
        tenant_id: tenant.into(),
        timeline_id: NO_TIMELINE.into(),
        dbnode: 1,
        relnode: 1259,
        ..Default::default()
    }
}

/// Opens a GetPages stream, sends one request for block `blkno` of pg_class in template1
/// and returns the first answer (or the status ending the stream).
async fn get_pages(
    c: &mut Client,
    tenant: &str,
    timeline: &str,
    request_id: u64,
    blkno: u32,
) -> Result<pb::GetPagesResponse, Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // The stream opens before its first request, as the page filesystem's does.
    let mut answers = c
        .get_pages(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    tx.send(pb::GetPagesRequest {
        tenant_id: tenant.into(),
        timeline_id: timeline.into(),
        request_id,
        lsn: 0,
        blocks: vec![pb::RelBlock {
            spc: 1663,
            db: 1,
            rel: 1259,
            fork: 0,
            blkno,
        }],
    })
    .await
    .map_err(|_| Status::internal("the GetPages stream closed before its request"))?;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), answers.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no GetPages answer within 20 s"))??;
    answer.ok_or_else(|| Status::internal("the GetPages stream ended without an answer"))
}

fn is_auth_error(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

struct Tokens {
    admin: String,
    tenant_a: String,
    tenant_b: String,
    tenant_c: String,
    safekeeper: String,
    forged: String,
    expired: String,
}

fn tokens(keys: &Path, other_keys: &Path) -> Result<Tokens> {
    let issuer = TokenIssuer::from_private_key_file(&keys.join(PRIVATE_KEY_FILE))?;
    let forger = TokenIssuer::from_private_key_file(&other_keys.join(PRIVATE_KEY_FILE))?;
    let tenant = |t: &str| issuer.issue(&Claims::new(Scope::Tenant(t.into())));
    let now = Claims::new(Scope::Admin).iat;
    Ok(Tokens {
        admin: issuer.issue(&Claims::new(Scope::Admin))?,
        tenant_a: tenant(TENANT_A)?,
        tenant_b: tenant(TENANT_B)?,
        tenant_c: tenant(TENANT_C)?,
        safekeeper: issuer.issue(&Claims::new(Scope::Safekeeper))?,
        forged: forger.issue(&Claims::new(Scope::Admin))?,
        expired: issuer.issue(&Claims {
            exp: Some(now - 600),
            ..Claims::new(Scope::Admin)
        })?,
    })
}

#[test]
fn the_table_covers_every_rpc_of_the_proto() {
    let proto = include_str!("../../walproto/proto/pageserver.proto");
    let mut in_table: Vec<String> = Rpc::ALL.iter().map(|r| r.name()).collect();
    in_table.sort();
    assert_eq!(in_table, rpc_names(proto), "add the new RPC to the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_a_token_of_the_right_scope() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let (keys, other_keys) = (scratch.path().join("keys"), scratch.path().join("other"));
    for d in [&keys, &other_keys] {
        std::fs::create_dir(d)?;
        generate_key_pair(d)?;
    }
    let tok = tokens(&keys, &other_keys)?;
    let public_key = keys.join(PUBLIC_KEY_FILE);
    let ps = Pageserver::start_with(
        &scratch.path().join("ps"),
        &[
            "--auth-public-key",
            public_key.to_str().context("key path")?,
        ],
    )?;

    // Tenant A with a timeline imported from a fresh initdb (set up with the admin token).
    let pg = PgCluster::init(&InitOptions::default())?;
    let datadir = pg.copy_data_dir("base")?;
    let mut admin = client(&ps.addr, Some(&tok.admin)).await?;
    for tenant in [TENANT_A, TENANT_B] {
        admin
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: tenant.into(),
                config_toml: String::new(),
            })
            .await?;
    }
    admin
        .import_timeline(pb::ImportTimelineRequest {
            tenant_id: TENANT_A.into(),
            timeline_id: TIMELINE.into(),
            datadir: datadir.display().to_string(),
            ..Default::default()
        })
        .await?;

    let mut failures = Vec::new();
    let mut expect =
        |rpc: Rpc, who: &str, got: Result<(), Status>, want: Code, says: &str| match got {
            Err(s) if s.code() == want && s.message().contains(says) => {}
            other => failures.push(format!(
                "{rpc:?} with {who}: expected {want:?} saying {says:?}, got {other:?}"
            )),
        };
    let mut anonymous = client(&ps.addr, None).await?;
    let mut garbled = client(&ps.addr, Some("not.a.token")).await?;
    let mut forged = client(&ps.addr, Some(&tok.forged)).await?;
    let mut expired = client(&ps.addr, Some(&tok.expired)).await?;
    let mut tenant_b = client(&ps.addr, Some(&tok.tenant_b)).await?;
    let mut safekeeper = client(&ps.addr, Some(&tok.safekeeper)).await?;
    for rpc in Rpc::ALL {
        let unauthenticated = Code::Unauthenticated;
        let got = call(&mut anonymous, rpc, TENANT_A).await;
        expect(rpc, "no token", got, unauthenticated, "requires a token");
        let got = call(&mut garbled, rpc, TENANT_A).await;
        expect(rpc, "a garbled token", got, unauthenticated, "not valid");
        let got = call(&mut forged, rpc, TENANT_A).await;
        expect(
            rpc,
            "another key's token",
            got,
            unauthenticated,
            "not valid",
        );
        let got = call(&mut expired, rpc, TENANT_A).await;
        expect(rpc, "an expired token", got, unauthenticated, "expired");
        let needed = needed_scope(rpc, TENANT_A);
        let says = match &needed {
            Scope::Admin => "this call needs scope admin; the token has tenant:".to_string(),
            scope => format!("this call needs scope {scope} or admin; the token has tenant:"),
        };
        let got = call(&mut tenant_b, rpc, TENANT_A).await;
        expect(rpc, "tenant B's token", got, Code::PermissionDenied, &says);
        let got = call(&mut safekeeper, rpc, TENANT_A).await;
        expect(
            rpc,
            "a safekeeper token",
            got,
            Code::PermissionDenied,
            "needs scope",
        );
    }

    // The right token reaches the service (tenant C: the table's calls create and delete it).
    let mut tenant_c = client(&ps.addr, Some(&tok.tenant_c)).await?;
    for rpc in Rpc::ALL {
        let (c, who) = match needed_scope(rpc, TENANT_C) {
            Scope::Admin => (&mut admin, "the admin token"),
            _ => (&mut tenant_c, "tenant C's token"),
        };
        if let Err(s) = call(c, rpc, TENANT_C).await {
            if is_auth_error(s.code()) {
                failures.push(format!("{rpc:?} with {who}: refused: {s:?}"));
            }
        }
        // Admin may do everything.
        if let Err(s) = call(&mut admin, rpc, TENANT_C).await {
            if is_auth_error(s.code()) {
                failures.push(format!("{rpc:?} with the admin token: refused: {s:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Tenant A's token reads tenant A's pages: the data file's block, over GetPage and GetPages.
    let file = std::fs::read(datadir.join("base/1/1259"))?;
    let mut tenant_a = client(&ps.addr, Some(&tok.tenant_a)).await?;
    let page = tenant_a
        .get_page(pb::GetPageRequest {
            tenant_id: TENANT_A.into(),
            timeline_id: TIMELINE.into(),
            lsn: 0,
            target: Some(pb::get_page_request::Target::RelBlock(pb::RelBlock {
                spc: 1663,
                db: 1,
                rel: 1259,
                fork: 0,
                blkno: 0,
            })),
        })
        .await?
        .into_inner();
    assert!(page.exists);
    assert_eq!(&page.page[..], &file[..8192]);
    let pages = get_pages(&mut tenant_a, TENANT_A, TIMELINE, 7, 0).await?;
    assert_eq!(pages.error, None);
    assert_eq!(pages.request_id, 7);
    assert_eq!(&pages.pages[0][..], &file[..8192]);
    let mut tar = tenant_a
        .basebackup(pb::BasebackupRequest {
            tenant_id: TENANT_A.into(),
            timeline_id: TIMELINE.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let first = tar.message().await?.context("an empty basebackup")?;
    assert!(!first.data.is_empty());

    // Tenant B's token cannot read tenant A, whatever way it asks; nor can tenant A's ask
    // tenant B's timelines on a stream it opened for itself.
    let refused = get_pages(&mut tenant_b, TENANT_A, TIMELINE, 1, 0).await;
    let s = refused.expect_err("tenant B read tenant A's pages");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains(&format!("tenant:{TENANT_A}")), "{s:?}");
    let refused = tenant_b
        .basebackup(pb::BasebackupRequest {
            tenant_id: TENANT_A.into(),
            timeline_id: TIMELINE.into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(Code::PermissionDenied)
    );
    let s = get_pages(&mut tenant_a, TENANT_B, TIMELINE, 2, 0)
        .await
        .expect_err("tenant A's stream read tenant B");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // A tenant may branch, but where the new branch streams WAL from is the admin's choice.
    let elsewhere = pb::CreateBranchRequest {
        tenant_id: TENANT_A.into(),
        parent_timeline_id: TIMELINE.into(),
        safekeepers: vec!["127.0.0.1:1".into()],
        ..Default::default()
    };
    let s = tenant_a
        .create_branch(elsewhere.clone())
        .await
        .expect_err("a tenant token named a branch's safekeepers");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains("naming a new branch's safekeepers"),
        "{s:?}"
    );
    admin.create_branch(elsewhere).await?;
    drop(pg);
    Ok(())
}

#[test]
fn a_listener_beyond_loopback_needs_auth_or_no_auth() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let pageserver = |dir: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pageserver"));
        cmd.arg("--data-dir")
            .arg(scratch.path().join(dir))
            .args(["--listen", "0.0.0.0:0"]);
        cmd
    };
    let out = pageserver("refused").output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on 0.0.0.0 with auth off");
    assert!(
        stderr.contains("not a loopback address and auth is off"),
        "{stderr}"
    );
    // Asked for explicitly, it serves (in clear too: tests/tests/tls.rs checks that rule).
    let mut open = pageserver("open")
        .args(["--no-auth", "--no-tls"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut line = String::new();
    let stdout = open.stdout.take().context("stdout")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    open.kill()?;
    open.wait()?;
    assert!(
        line.starts_with("pageserver listening on 0.0.0.0:"),
        "{line:?}"
    );
    Ok(())
}
