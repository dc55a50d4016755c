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
        // The defaults, and a tenant config through the variants' syntax.
        variants: vec![
            served::Variant::parse("")?,
            served::Variant::parse("small: freeze_mib = 1")?,
        ],
    };
    let rep = served::run(&opts).await?;
    let text = rep.render();
    println!("{text}");
    assert!(rep.wal_bytes > 1_000_000, "{text}");
    assert!(rep.records > 1_000, "{text}");
    assert_eq!(rep.postgres.len(), 1);
    let names: Vec<&str> = rep.strata.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["default", "small"]);
    for (i, (name, runs)) in rep.strata.iter().enumerate() {
        let ratio = rep.ratio(i);
        assert!(ratio.is_finite() && ratio > 0.0, "{text}");
        assert_eq!(runs.len(), 1, "{text}");
        assert!(runs[0].cpu_secs > 0.0, "{text}");
        assert!(runs[0].caught_up_secs <= runs[0].secs, "{text}");
        assert!(
            text.contains(&format!("Strata ({name}) / Postgres")),
            "{text}"
        );
    }
    assert!(
        served::Variant::parse("x:bogus")
            .unwrap_err()
            .to_string()
            .contains("not key=value"),
        "a setting without = is refused"
    );
    Ok(())
}
