//! An offloaded WAL segment in a local directory store is durable when its upload returns (the
//! safekeeper deletes local WAL once it counts as offloaded): a real upload, traced with
//! `strace`, fsyncs the object's file before it is renamed into place, and then its directory.
//!
//! Needs `strace`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use safekeeper::ids::TenantTimeline;
use safekeeper::remote_storage::{RemoteStorage, S3Options};

const DIR_VAR: &str = "STRATA_OFFLOAD_FSYNC_STORE";
const SEGMENT: &str = "000000010000000000000002";
/// How long the traced upload may take.
const UPLOAD: Duration = Duration::from_secs(60);

fn id() -> TenantTimeline {
    TenantTimeline {
        tenant: "00112233445566778899aabbccddeeff".parse().unwrap(),
        timeline: "ffeeddccbbaa99887766554433221100".parse().unwrap(),
    }
}

/// Run by the test below under strace: uploads one segment into the store `$DIR_VAR`.
#[test]
#[ignore = "run under strace by local_offload_fsyncs_the_object_and_its_directory"]
fn upload_one_segment() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("file://{}", Path::new(&dir).display());
        let rs = RemoteStorage::parse(&url, &S3Options::default()).unwrap();
        rs.put_wal(&id(), SEGMENT, Bytes::from(vec![5u8; 1 << 20]))
            .await
            .unwrap();
    });
}

#[test]
fn local_offload_fsyncs_the_object_and_its_directory() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = tmp.path().join("store");
    let trace = tmp.path().join("strace.log");
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-y", "-e"])
        .arg("trace=fsync,fdatasync,rename,renameat,renameat2")
        .arg("-o")
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "upload_one_segment",
            "--test-threads",
            "1",
        ])
        .env(DIR_VAR, &store)
        .spawn()
        .expect("run strace (is it installed?)");
    let deadline = Instant::now() + UPLOAD;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the traced upload did not finish within {UPLOAD:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the traced upload failed: {status}");
    let log = std::fs::read_to_string(&trace).unwrap();
    let object_dir = store
        .join("wal/00112233445566778899aabbccddeeff/ffeeddccbbaa99887766554433221100")
        .display()
        .to_string();
    let object = format!("{object_dir}/{SEGMENT}");
    let lines: Vec<&str> = log.lines().collect();
    let renamed = lines
        .iter()
        .position(|l| l.contains("rename") && l.contains(&format!("\"{object}\"")))
        .unwrap_or_else(|| panic!("no rename of {object} into place in the trace:\n{log}"));
    let file_synced = lines[..renamed].iter().any(|l| {
        (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains(&format!("<{object}"))
    });
    assert!(
        file_synced,
        "{object} was renamed into place without an fsync of its data:\n{log}"
    );
    let dir_synced = lines[renamed..]
        .iter()
        .any(|l| l.contains("fsync(") && l.contains(&format!("<{object_dir}>")));
    assert!(
        dir_synced,
        "the directory {object_dir} was not fsynced after the rename:\n{log}"
    );
}
