//! WAL ingest as a running pageserver does it, beside Postgres's own recovery (see
//! `ingest_served/served.rs` for what is timed).
//!
//! `cargo bench -p pageserver --bench ingest_served` (needs `cargo build --release --bins`
//! for the pageserver, safekeeper and compute binaries; `STRATA_PAGESERVER_BIN` and the like
//! run other builds, e.g. a baseline's pageserver beside a change's). Environment: `STRATA_BENCH_WORKLOAD=indexes`
//! (index-heavy, `STRATA_BENCH_ROWS`, default 300,000) or pgbench (`STRATA_BENCH_SCALE`,
//! default 40, `STRATA_BENCH_SECONDS`, default 300: about 1 GB of WAL);
//! `STRATA_BENCH_RUNS` rounds (default 3); `STRATA_BENCH_VARIANTS` times several pageservers
//! side by side in every round on the same WAL, `;`-separated `name:key=value,…` with tenant
//! config keys and `bin=PATH` (e.g. `base:;big:freeze_mib=256`).

// The pageserver binary's allocator, as in the other benches.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "ingest_served/served.rs"]
mod served;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let workload = if std::env::var("STRATA_BENCH_WORKLOAD").is_ok_and(|w| w == "indexes") {
        served::Workload::Indexes {
            rows: env_u64("STRATA_BENCH_ROWS", 300_000),
        }
    } else {
        served::Workload::Pgbench {
            scale: env_u64("STRATA_BENCH_SCALE", 40) as u32,
            seconds: env_u64("STRATA_BENCH_SECONDS", 300) as u32,
        }
    };
    let variants = std::env::var("STRATA_BENCH_VARIANTS").unwrap_or_default();
    let opts = served::Opts {
        workload,
        rounds: env_u64("STRATA_BENCH_RUNS", 3) as usize,
        variants: variants
            .split(';')
            .map(served::Variant::parse)
            .collect::<anyhow::Result<_>>()?,
    };
    let rep = served::run(&opts).await?;
    println!("{}", rep.render());
    Ok(())
}
