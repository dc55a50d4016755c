//! The `ingest_served` bench at a tiny size, so that it cannot rot: a pgbench at scale 1
//! through a real walproposer and safekeeper into a real pageserver, one round beside
//! Postgres's recovery of the same WAL, and the report it prints.
//!
//! Needs the `safekeeper` and `compute` binaries of this workspace built (`cargo build
//! --bins`).

#[allow(dead_code)] // the bench's own options (index workload) are not used here
#[path = "../benches/ingest_served/served.rs"]
mod served;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_served_bench_runs_at_a_tiny_size() -> anyhow::Result<()> {
    let opts = served::Opts {
        workload: served::Workload::Pgbench {
            scale: 1,
            seconds: 3,
        },
        rounds: 1,
    };
    let rep = served::run(&opts).await?;
    let text = rep.render();
    println!("{text}");
    assert!(rep.wal_bytes > 1_000_000, "{text}");
    assert!(rep.records > 1_000, "{text}");
    assert_eq!((rep.strata.len(), rep.postgres.len()), (1, 1));
    let ratio = rep.ratio();
    assert!(ratio.is_finite() && ratio > 0.0, "{text}");
    assert!(rep.strata[0].cpu_secs > 0.0, "{text}");
    assert!(text.contains("Strata / Postgres"), "{text}");
    Ok(())
}
