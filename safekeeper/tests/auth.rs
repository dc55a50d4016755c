//! The real `safekeeper` binary with `--auth-public-key`: every RPC of the service, from a
//! table, and the replication port refuse a caller without a token, with a forged one, or
//! with one of another scope or tenant, and serve one with a `safekeeper` (or `admin`) token.
//! The replication port is tried with the real `psql` and `pg_receivewal`, the token as the
//! password.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{append, Safekeeper, Session, TIMELINE};
use strata_auth::{
    client_interceptor, generate_key_pair, rpc_names, BearerInterceptor, Claims, Scope,
    TokenIssuer, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE,
};
use strata_tests::waldump::wal_end_after_clean_stop;
use strata_tests::{InitOptions, PgCluster, StopMode};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::pgclient::{ConnConfig, PgConnection, PgError};
use walproto::proto::safekeeper as pb;
use walproto::proto::safekeeper::acceptor_message::Msg as Out;
use walproto::proto::safekeeper::proposer_message::Msg as In;
use walproto::Lsn;

const TENANT: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const OTHER_TENANT: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
/// Every call, and every answer awaited, gives up after this.
const DEADLINE: Duration = Duration::from_secs(20);

/// Every RPC of `strata.safekeeper.v1.Safekeeper`.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    Propose,
    TimelineStatus,
    DeleteTimeline,
}

const ALL: [Rpc; 3] = [Rpc::Propose, Rpc::TimelineStatus, Rpc::DeleteTimeline];
/// The RPCs a `safekeeper` token (for its tenant) may call; the rest need `admin`.
const SAFEKEEPER_RPCS: [Rpc; 2] = [Rpc::Propose, Rpc::TimelineStatus];

type Client =
    pb::safekeeper_client::SafekeeperClient<InterceptedService<Channel, BearerInterceptor>>;

async fn client(addr: &str, token: Option<&str>) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(DEADLINE)
        .connect()
        .await
        .unwrap();
    pb::safekeeper_client::SafekeeperClient::with_interceptor(
        channel,
        client_interceptor(token.map(str::to_string)),
    )
    .max_decoding_message_size(64 << 20)
}

fn greeting(tenant: &str, system_id: u64) -> In {
    In::Greeting(pb::Greeting {
        tenant_id: tenant.into(),
        timeline_id: TIMELINE.into(),
        proposer_id: "auth-test".into(),
        system_id,
        pg_timeline: 1,
        wal_seg_size: WAL_SEGMENT_SIZE as u32,
        acceptor_id: 0,
        create_timeline: true,
    })
}

/// Opens a proposer session (greeting sent) with `token`; the session and its greeting answer.
async fn open_session(
    addr: &str,
    token: Option<&str>,
    tenant: &str,
    system_id: u64,
) -> Result<(Session, pb::GreetingResponse), Status> {
    let mut c = client(addr, token).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tx.send(pb::ProposerMessage {
        msg: Some(greeting(tenant, system_id)),
    })
    .await
    .map_err(|_| Status::internal("session channel closed"))?;
    let rx = c.propose(ReceiverStream::new(rx)).await?.into_inner();
    let mut s = Session { tx, rx };
    match s.next().await? {
        Out::GreetingResponse(g) => Ok((s, g)),
        other => Err(Status::internal(format!(
            "expected GreetingResponse, got {other:?}"
        ))),
    }
}

/// Calls `rpc` on `tenant`'s timeline once; a stream's first answer counts.
async fn call(addr: &str, token: Option<&str>, rpc: Rpc, tenant: &str) -> Result<(), Status> {
    let once = async {
        match rpc {
            Rpc::Propose => open_session(addr, token, tenant, SYSID).await.map(drop),
            Rpc::TimelineStatus => client(addr, token)
                .await
                .timeline_status(pb::TimelineStatusRequest {
                    tenant_id: tenant.into(),
                    timeline_id: TIMELINE.into(),
                })
                .await
                .map(drop),
            Rpc::DeleteTimeline => client(addr, token)
                .await
                .delete_timeline(pb::DeleteTimelineRequest {
                    tenant_id: tenant.into(),
                    timeline_id: TIMELINE.into(),
                })
                .await
                .map(drop),
        }
    };
    tokio::time::timeout(DEADLINE, once)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded(format!("{rpc:?}: no answer"))))
}

const SYSID: u64 = 7_300_000_000_000_000_021;

struct Tokens {
    admin: String,
    safekeeper: String,
    safekeeper_for_tenant: String,
    safekeeper_for_other: String,
    tenant: String,
    forged: String,
}

fn tokens(keys: &Path, other_keys: &Path) -> Tokens {
    let issuer = TokenIssuer::from_private_key_file(&keys.join(PRIVATE_KEY_FILE)).unwrap();
    let forger = TokenIssuer::from_private_key_file(&other_keys.join(PRIVATE_KEY_FILE)).unwrap();
    let limited = |t: &str| Claims {
        tenant_id: Some(t.into()),
        ..Claims::new(Scope::Safekeeper)
    };
    Tokens {
        admin: issuer.issue(&Claims::new(Scope::Admin)).unwrap(),
        safekeeper: issuer.issue(&Claims::new(Scope::Safekeeper)).unwrap(),
        safekeeper_for_tenant: issuer.issue(&limited(TENANT)).unwrap(),
        safekeeper_for_other: issuer.issue(&limited(OTHER_TENANT)).unwrap(),
        tenant: issuer
            .issue(&Claims::new(Scope::Tenant(TENANT.into())))
            .unwrap(),
        forged: forger.issue(&Claims::new(Scope::Safekeeper)).unwrap(),
    }
}

/// Starts safekeeper 1 under `base` with auth on and a replication port; returns it and
/// that port's address.
fn start(base: &Path, public_key: &Path) -> (Safekeeper, String) {
    let mut sk = Safekeeper::new(base, 1).unwrap();
    sk.replication = true;
    sk.args = vec!["--auth-public-key".into(), public_key.display().to_string()];
    sk.start().unwrap();
    let pg_addr = sk.pg_addr();
    (sk, pg_addr)
}

#[test]
fn the_table_covers_every_rpc_of_the_proto() {
    let proto = include_str!("../../walproto/proto/safekeeper.proto");
    let mut in_table: Vec<String> = ALL.iter().map(|r| format!("{r:?}")).collect();
    in_table.sort();
    assert_eq!(in_table, rpc_names(proto), "add the new RPC to the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_a_safekeeper_or_admin_token_for_its_tenant() {
    let scratch = tempfile::tempdir().unwrap();
    let (tok, sk, _) = setup(scratch.path());

    let mut failures = Vec::new();
    for rpc in SAFEKEEPER_RPCS {
        let refused: [(Option<&str>, &str, Code, &str); 5] = [
            (None, "no token", Code::Unauthenticated, "requires a token"),
            (
                Some("garbage"),
                "a garbled token",
                Code::Unauthenticated,
                "not valid",
            ),
            (
                Some(tok.forged.as_str()),
                "another key's token",
                Code::Unauthenticated,
                "not valid",
            ),
            (
                Some(tok.tenant.as_str()),
                "a tenant token",
                Code::PermissionDenied,
                "this call needs scope safekeeper or admin for tenant aaaa",
            ),
            (
                Some(tok.safekeeper_for_other.as_str()),
                "another tenant's safekeeper token",
                Code::PermissionDenied,
                "the token has safekeeper (for tenant bbbb",
            ),
        ];
        for (token, who, code, says) in refused {
            match call(&sk.addr(), token, rpc, TENANT).await {
                Err(s) if s.code() == code && s.message().contains(says) => {}
                other => failures.push(format!(
                    "{rpc:?} with {who}: expected {code:?} saying {says:?}, got {other:?}"
                )),
            }
        }
        // Propose (first in the table) creates the timeline TimelineStatus then reads.
        for (token, who) in [
            (&tok.safekeeper, "a safekeeper token"),
            (&tok.safekeeper_for_tenant, "the tenant's safekeeper token"),
            (&tok.admin, "the admin token"),
        ] {
            if let Err(s) = call(&sk.addr(), Some(token.as_str()), rpc, TENANT).await {
                failures.push(format!("{rpc:?} with {who}: {s:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing was created for the refused callers.
    assert!(!sk.datadir.join(OTHER_TENANT).exists());
}

/// Real WAL: the first segment of a new cluster (initdb's WAL, then a little DDL and data),
/// ending in a clean shutdown. Returns (cluster, system id, segment start, its WAL bytes).
fn real_wal() -> (PgCluster, u64, Lsn, Vec<u8>) {
    let pg = PgCluster::init(&InitOptions::default()).unwrap();
    pg.start().unwrap();
    pg.psql("create table t (i int); insert into t select generate_series(1, 1000);")
        .unwrap();
    let segment = pg.current_wal_lsn().unwrap().segment_start();
    pg.stop(StopMode::Fast).unwrap();
    let end = wal_end_after_clean_stop(&pg).unwrap();
    assert_eq!(end.segment_start(), segment, "the WAL must fit one segment");
    let sysid: u64 = pg.controldata().unwrap()["Database system identifier"]
        .parse()
        .unwrap();
    let name = segment.segment_file_name(1);
    let bytes = std::fs::read(pg.wal_dir().join(name)).unwrap();
    (
        pg,
        sysid,
        segment,
        bytes[..(end.0 - segment.0) as usize].to_vec(),
    )
}

/// Elects a proposer (with `token`) and appends `wal` from `start`, committing all of it.
async fn replicate(addr: &str, token: &str, sysid: u64, start: Lsn, wal: &[u8]) {
    let (mut p, _) = open_session(addr, Some(token), TENANT, sysid)
        .await
        .unwrap();
    assert!(p.vote(1).await.vote_granted);
    p.elect(1, &[(1, start)], start).await.unwrap();
    let end = Lsn(start.0 + wal.len() as u64);
    p.send(append(1, start, wal.to_vec(), end)).await;
    let committed = async {
        loop {
            match p.next().await.unwrap() {
                Out::AppendResponse(r) if r.commit_lsn >= end.0 => break,
                Out::AppendResponse(r) if r.flush_lsn >= end.0 => {
                    p.send(append(1, end, vec![], end)).await
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, committed)
        .await
        .expect("the WAL committed within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_port_takes_a_token_as_the_password() {
    let (pg, sysid, start, wal) = real_wal();
    let scratch = tempfile::tempdir().unwrap();
    let (tok, sk, pg_addr) = setup(scratch.path());
    replicate(&sk.addr(), &tok.safekeeper, sysid, start, &wal).await;
    let end = Lsn(start.0 + wal.len() as u64);

    // The SQLSTATEs, as a Postgres client library sees them.
    let (host, port) = pg_addr.rsplit_once(':').unwrap();
    let options = format!("-c tenant_id={TENANT} -c timeline_id={TIMELINE}");
    let conn = |password: Option<&str>| ConnConfig {
        host: host.into(),
        port: port.parse().unwrap(),
        user: "pageserver".into(),
        password: password.map(str::to_string),
        options: Some(options.clone()),
        replication: true,
        ..ConnConfig::default()
    };
    let code_of = |r: Result<PgConnection, PgError>| match r {
        Ok(_) => "connected".to_string(),
        Err(PgError::Server { code, .. }) => code,
        Err(e) => format!("{e}"),
    };
    let connect = |password: Option<&str>| {
        let cfg = conn(password);
        async move {
            tokio::time::timeout(DEADLINE, PgConnection::connect(&cfg))
                .await
                .expect("an answer within the deadline")
        }
    };
    assert_eq!(code_of(connect(Some("garbage")).await), "28P01");
    assert_eq!(code_of(connect(Some(tok.forged.as_str())).await), "28P01");
    assert_eq!(code_of(connect(Some(tok.tenant.as_str())).await), "28000");
    assert_eq!(
        code_of(connect(Some(tok.safekeeper_for_other.as_str())).await),
        "28000"
    );
    let no_password = code_of(connect(None).await);
    assert!(
        no_password.contains("asks user pageserver for a password"),
        "{no_password}"
    );
    for good in [&tok.safekeeper, &tok.safekeeper_for_tenant, &tok.admin] {
        assert_eq!(code_of(connect(Some(good.as_str())).await), "connected");
    }

    // The real psql: refused without the right token, IDENTIFY_SYSTEM with it.
    let connstr =
        format!("host={host} port={port} user=postgres replication=true options='{options}'");
    let psql = |password: Option<&str>| {
        let mut cmd = pg.command("psql");
        cmd.args(["-X", "-w", "-At", "-d", &connstr, "-c", "IDENTIFY_SYSTEM"]);
        let out = run_with_password(cmd, password);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = psql(None);
    assert!(!ok && err.contains("no password supplied"), "{err}");
    let (ok, _, err) = psql(Some("garbage"));
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    let (ok, _, err) = psql(Some(tok.tenant.as_str()));
    assert!(
        !ok && err.contains("needs scope safekeeper or admin for tenant"),
        "{err}"
    );
    let (ok, out, err) = psql(Some(tok.safekeeper.as_str()));
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("{sysid}|1|{end}|")), "{out}");

    // The real pg_receivewal streams the WAL with the token, and is refused without it.
    let endpos = Lsn(end.0 - 1).to_string();
    let receive = |dir: &str, password: Option<&str>| {
        let out_dir = pg.make_postgres_dir(dir).unwrap();
        let mut cmd = pg.command("pg_receivewal");
        cmd.arg("-D").arg(&out_dir).args([
            "-w",
            "-d",
            &connstr,
            "--no-loop",
            "-E",
            &endpos,
            "--no-sync",
        ]);
        let out = run_with_password(cmd, password);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out_dir,
        )
    };
    let (ok, err, _) = receive("refused", Some(tok.tenant.as_str()));
    assert!(!ok && err.contains("needs scope"), "{err}");
    let (ok, err, out_dir) = receive("received", Some(tok.safekeeper.as_str()));
    assert!(ok, "pg_receivewal failed: {err}");
    let name = start.segment_file_name(1);
    let received = std::fs::read(out_dir.join(format!("{name}.partial")))
        .or_else(|_| std::fs::read(out_dir.join(&name)))
        .unwrap();
    assert_eq!(&received[..wal.len()], &wal[..], "received WAL differs");
}

/// Two key pairs (the cluster's and a forger's), the tokens, and a safekeeper checking the
/// cluster's tokens; returns its replication address too.
fn setup(scratch: &Path) -> (Tokens, Safekeeper, String) {
    let (keys, other_keys) = (scratch.join("keys"), scratch.join("other"));
    for d in [&keys, &other_keys] {
        std::fs::create_dir(d).unwrap();
        generate_key_pair(d).unwrap();
    }
    let tok = tokens(&keys, &other_keys);
    let (sk, pg_addr) = start(&scratch.join("sk"), &keys.join(PUBLIC_KEY_FILE));
    (tok, sk, pg_addr)
}

/// Runs a Postgres client with `password` (none: without one; `-w` keeps it from prompting).
fn run_with_password(mut cmd: Command, password: Option<&str>) -> std::process::Output {
    cmd.env_remove("PGPASSWORD");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_timeline_needs_an_admin_token() {
    let scratch = tempfile::tempdir().unwrap();
    let (tok, sk, _) = setup(scratch.path());
    let rpc = Rpc::DeleteTimeline;
    let refused: [(Option<&str>, Code, &str); 3] = [
        (None, Code::Unauthenticated, "requires a token"),
        (
            Some(tok.safekeeper.as_str()),
            Code::PermissionDenied,
            "this call needs scope admin",
        ),
        (
            Some(tok.tenant.as_str()),
            Code::PermissionDenied,
            "this call needs scope admin",
        ),
    ];
    for (token, code, says) in refused {
        match call(&sk.addr(), token, rpc, TENANT).await {
            Err(s) if s.code() == code && s.message().contains(says) => {}
            other => panic!("expected {code:?} saying {says:?}, got {other:?}"),
        }
    }
    // The admin token passes the check (the timeline does not exist: nothing to delete).
    call(&sk.addr(), Some(tok.admin.as_str()), rpc, TENANT)
        .await
        .expect("an admin may delete a timeline");
}
