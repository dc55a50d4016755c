//! `LsnForTimestamp` over gRPC with times no commit can have: `i64::MIN` and a time before
//! Postgres's first representable timestamp are INVALID_ARGUMENT naming the range, inclusive
//! or not (`i64::MIN` used to answer the latest LSN, or panic in a debug build); a plausible
//! time on a timeline without commits stays OUT_OF_RANGE.

mod service_support;

use std::time::Duration;

use anyhow::{Context, Result};
use service_support::Pageserver;
use strata_tests::{InitOptions, PgCluster};
use tonic::Code;
use walproto::proto::pageserver as pb;

const TENANT: &str = "0123456789abcdef0123456789abcdef";
const TIMELINE: &str = "11111111111111111111111111111111";
/// No call may take longer.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_timestamps_are_invalid_arguments() -> Result<()> {
    let pg = PgCluster::init(&InitOptions::default())?;
    let base = pg.copy_data_dir("base")?;
    let scratch = tempfile::tempdir()?;
    let ps = Pageserver::start(&scratch.path().join("ps"))?;
    let mut c = tokio::time::timeout(CALL_DEADLINE, ps.client())
        .await
        .context("connecting to the pageserver")??;
    let tenant = pb::CreateTenantRequest {
        tenant_id: TENANT.into(),
        config_toml: String::new(),
    };
    let import = pb::ImportTimelineRequest {
        tenant_id: TENANT.into(),
        timeline_id: TIMELINE.into(),
        datadir: base.display().to_string(),
        lsn: 0,
        safekeepers: vec![],
    };
    tokio::time::timeout(CALL_DEADLINE, async {
        c.create_tenant(tenant).await?;
        c.import_timeline(import).await
    })
    .await
    .context("creating the tenant and importing the initdb'd directory")??;

    let ask = |micros: i64, inclusive: bool| {
        let mut c = c.clone();
        async move {
            tokio::time::timeout(
                CALL_DEADLINE,
                c.lsn_for_timestamp(pb::LsnForTimestampRequest {
                    tenant_id: TENANT.into(),
                    timeline_id: TIMELINE.into(),
                    timestamp_micros: micros,
                    inclusive,
                }),
            )
            .await
            .with_context(|| format!("LsnForTimestamp({micros}, inclusive {inclusive})"))
        }
    };
    // 10,000 years before the Unix epoch: before 4714 BC.
    let before_pg_range = -10_000 * 365 * 86_400 * 1_000_000i64;
    for micros in [i64::MIN, i64::MIN + 1, before_pg_range] {
        for inclusive in [true, false] {
            let s = ask(micros, inclusive)
                .await?
                .expect_err("an absurd time must be refused");
            assert_eq!(s.code(), Code::InvalidArgument, "{micros}: {s:?}");
            assert!(
                s.message().contains("outside PostgreSQL's timestamp range"),
                "{micros}: {}",
                s.message()
            );
        }
    }
    // 2026-01-01: a real time, but the imported timeline has no commit yet.
    let s = ask(1_767_225_600_000_000, true)
        .await?
        .expect_err("no commit yet");
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    assert!(s.message().contains("no commits yet"), "{}", s.message());
    drop(ps);
    Ok(())
}
