//! The full workload really produces the record types decoders must handle: run it on a
//! fresh cluster, dump the WAL with pg_waldump, and check each required (rmgr, type) pair.

use std::collections::BTreeMap;
use std::time::Instant;

use strata_tests::waldump::{self, record_type_counts, DumpRecord};
use strata_tests::workload::{promote_in_place, run_full_workload, workload_settings};
use strata_tests::{InitOptions, PgCluster, StopMode};

/// (rmgr, record types) that must each appear at least once.
const REQUIRED: &[(&str, &[&str])] = &[
    (
        "XLOG",
        &[
            "CHECKPOINT_SHUTDOWN",
            "CHECKPOINT_ONLINE",
            "FPI",
            "FPI_FOR_HINT",
            "RESTORE_POINT",
            "SWITCH",
            "NEXTOID",
            "PARAMETER_CHANGE",
            "BACKUP_END",
        ],
    ),
    (
        "Transaction",
        &[
            "COMMIT",
            "ABORT",
            "PREPARE",
            "COMMIT_PREPARED",
            "ABORT_PREPARED",
            "ASSIGNMENT",
            "INVALIDATION",
        ],
    ),
    ("Storage", &["CREATE", "TRUNCATE"]),
    ("CLOG", &["ZEROPAGE"]),
    ("CommitTs", &["ZEROPAGE"]),
    (
        "MultiXact",
        &["ZERO_OFF_PAGE", "ZERO_MEM_PAGE", "CREATE_ID"],
    ),
    ("RelMap", &["UPDATE"]),
    ("Standby", &["RUNNING_XACTS", "LOCK", "INVALIDATIONS"]),
    ("Database", &["CREATE_FILE_COPY", "CREATE_WAL_LOG", "DROP"]),
    ("Tablespace", &["CREATE", "DROP"]),
    ("ReplicationOrigin", &["SET", "DROP"]),
    (
        "Heap",
        &[
            "INSERT",
            "INSERT+INIT",
            "DELETE",
            "UPDATE",
            "HOT_UPDATE",
            "LOCK",
            "INPLACE",
            "HEAP_CONFIRM",
            "TRUNCATE",
        ],
    ),
    (
        "Heap2",
        &[
            "PRUNE",
            "VACUUM",
            "FREEZE_PAGE",
            "VISIBLE",
            "MULTI_INSERT",
            "MULTI_INSERT+INIT",
            "NEW_CID",
            "REWRITE",
        ],
    ),
    (
        "Btree",
        &[
            "INSERT_LEAF",
            "INSERT_UPPER",
            "SPLIT_L",
            "SPLIT_R",
            "NEWROOT",
            "VACUUM",
            "DELETE",
            "MARK_PAGE_HALFDEAD",
            "UNLINK_PAGE",
            "META_CLEANUP",
            "DEDUP",
            "INSERT_POST",
            "REUSE_PAGE",
        ],
    ),
    ("Sequence", &["LOG"]),
    (
        "Gin",
        &[
            "CREATE_PTREE",
            "INSERT",
            "SPLIT",
            "VACUUM_PAGE",
            "DELETE_PAGE",
        ],
    ),
    (
        "SPGist",
        &["ADD_LEAF", "PICKSPLIT", "VACUUM_LEAF", "VACUUM_ROOT"],
    ),
    (
        "BRIN",
        &[
            "CREATE_INDEX",
            "INSERT",
            "UPDATE",
            "SAMEPAGE_UPDATE",
            "DESUMMARIZE",
        ],
    ),
    ("Hash", &["INSERT", "SPLIT_PAGE", "ADD_OVFL_PAGE", "DELETE"]),
    (
        "Gist",
        &["PAGE_UPDATE", "PAGE_SPLIT", "PAGE_DELETE", "PAGE_REUSE"],
    ),
    ("LogicalMessage", &["MESSAGE"]),
];

/// Resource managers of which any record will do.
const REQUIRED_ANY: &[&str] = &["Hash", "Gin", "Gist", "SPGist", "BRIN", "Generic"];

fn missing(counts: &BTreeMap<(String, String), usize>) -> Vec<String> {
    let mut missing = Vec::new();
    for (rmgr, types) in REQUIRED {
        for ty in *types {
            if !counts.contains_key(&(rmgr.to_string(), ty.to_string())) {
                missing.push(format!("{rmgr} {ty}"));
            }
        }
    }
    for rmgr in REQUIRED_ANY {
        if !counts.keys().any(|(r, _)| r == rmgr) {
            missing.push(format!("{rmgr} (any)"));
        }
    }
    missing
}

#[test]
fn workload_covers_record_types() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let pg = PgCluster::init(&InitOptions {
        settings: workload_settings(),
        ..Default::default()
    })?;
    let report = run_full_workload(&pg)?;
    pg.stop(StopMode::Fast)?;
    let end = waldump::wal_end_after_clean_stop(&pg)?;
    let text = waldump::run_pg_waldump(&pg.wal_dir(), report.start, end, &[])?;
    let records = waldump::parse_dump(&text)?;
    let counts = record_type_counts(&records);

    println!(
        "workload: {:.1}s, {} records, {} MiB of WAL ({} .. {end})",
        report.elapsed.as_secs_f64(),
        records.len(),
        (end.0 - report.start.0) >> 20,
        report.start
    );
    for ((rmgr, ty), n) in &counts {
        println!("  {rmgr:<14} {ty:<24} {n}");
    }

    // The dump covers exactly the workload's WAL and is one unbroken chain.
    let first = records.first().expect("records");
    assert_eq!(
        first.lsn, report.start,
        "dump must start at pg_resetwal's checkpoint"
    );
    assert_eq!(first.record_type(), "CHECKPOINT_SHUTDOWN");
    let last: &DumpRecord = records.last().expect("records");
    assert_eq!(last.lsn, pg.latest_checkpoint()?);
    for w in records.windows(2) {
        assert_eq!(w[1].prev, w[0].lsn, "broken prev chain at {}", w[1].line);
    }
    for (label, lsn) in &report.marks {
        assert!(
            report.start < *lsn && *lsn <= end,
            "mark {label} at {lsn} outside the WAL"
        );
    }
    assert!(
        records.len() > 10_000,
        "only {} records: workload too small to be meaningful",
        records.len()
    );

    let missing = missing(&counts);
    assert!(missing.is_empty(), "record types not produced: {missing:?}");

    // XLOG END_OF_RECOVERY: promote the cluster as a standby of its own WAL.
    let t1 = Instant::now();
    let tl2_segment = promote_in_place(&pg)?;
    let tl2_end = waldump::wal_end_after_clean_stop(&pg)?;
    let tl2_text = {
        let out = std::process::Command::new(strata_tests::pg::pg_bin_dir().join("pg_waldump"))
            .arg("-p")
            .arg(pg.wal_dir())
            .arg("-e")
            .arg(tl2_end.to_string())
            .arg(&tl2_segment)
            .output()?;
        assert!(
            out.status.success(),
            "pg_waldump on timeline 2: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)?
    };
    let tl2 = waldump::parse_dump(&tl2_text)?;
    assert!(
        tl2.iter()
            .any(|r| r.rmgr == "XLOG" && r.record_type() == "END_OF_RECOVERY"),
        "no END_OF_RECOVERY after promotion in {tl2_segment}"
    );
    println!(
        "promotion: {:.1}s; total {:.1}s",
        t1.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
